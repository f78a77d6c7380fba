//! Host-side traffic clients, each a `lab-client` process.
//!
//! A client is a separate process (not a thread of the test) so that it can
//! run inside another network namespace, so that a stuck socket can never
//! hang the test, and so that what it measured arrives as one JSON report
//! the test only parses. Closing its standard input tells it to stop.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::layer::required_binary;
use crate::process::{run, wait_deadline, wrapped_command};
use crate::traffic::{ClientReport, StateReply};

/// What kind of traffic a client runs.
#[derive(Debug, Clone)]
pub enum ClientSpec {
    /// Numbered lines every `interval_ms`, each reply checked.
    Lines { interval_ms: u64 },
    /// `bytes` of a checksummed stream echoed back, paced at `rate` bytes/s.
    Bulk { bytes: u64, rate: Option<u64> },
}

/// A running `lab-client`.
#[derive(Debug)]
pub struct RunningClient {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<String>>,
    pub log: PathBuf,
}

impl RunningClient {
    /// Starts a client against `target` (host:port), its progress logged to
    /// `log_dir/client-<name>.log`. `wrapper` prefixes the command, e.g.
    /// `["ip", "netns", "exec", "peer"]`.
    pub fn start(
        bin_dir: &Path,
        name: &str,
        spec: &ClientSpec,
        target: &str,
        log_dir: &Path,
        wrapper: &[String],
    ) -> Result<RunningClient> {
        let binary = required_binary(bin_dir, "lab-client")?;
        let mut cmd = wrapped_command(wrapper, &binary);
        match spec {
            ClientSpec::Lines { interval_ms } => {
                cmd.args(["lines", "--interval-ms", &interval_ms.to_string()]);
            }
            ClientSpec::Bulk { bytes, rate } => {
                cmd.args(["bulk", "--bytes", &bytes.to_string()]);
                if let Some(rate) = rate {
                    cmd.args(["--rate", &rate.to_string()]);
                }
            }
        }
        cmd.args([
            "--connect",
            target,
            "--progress",
            "--stall-timeout-s",
            "300",
        ]);
        let log = log_dir.join(format!("client-{name}.log"));
        let log_file = File::create(&log)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start client {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        Ok(RunningClient {
            name: name.to_string(),
            child,
            stdin,
            stdout,
            log,
        })
    }

    /// Has the client already ended (its connection broke, or bulk completed)?
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Asks the client to stop, waits up to `timeout` and returns its report.
    pub fn stop(mut self, timeout: Duration) -> Result<ClientReport> {
        drop(self.stdin.take());
        let status = wait_deadline(&mut self.child, timeout)?;
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match status {
            None => bail!(
                "client {} did not stop within {timeout:?}; its log:\n{}",
                self.name,
                crate::process::tail(&log, 20)
            ),
            Some(status) if !status.success() => bail!(
                "client {} failed ({status}); its log:\n{}",
                self.name,
                crate::process::tail(&log, 20)
            ),
            Some(_) => parse_client_report(&stdout)
                .with_context(|| format!("client {}: log {}", self.name, self.log.display())),
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the one JSON line a client prints when it exits.
pub fn parse_client_report(stdout: &str) -> Result<ClientReport> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the client printed no report")?;
    serde_json::from_str(line)
        .with_context(|| format!("the client's report does not parse: {line}"))
}

/// Asks the service at `target` for its state (one short connection).
pub fn probe_state(bin_dir: &Path, target: &str, wrapper: &[String]) -> Result<StateReply> {
    let binary = required_binary(bin_dir, "lab-client")?;
    let mut cmd = wrapped_command(wrapper, binary);
    let done = run(
        cmd.args(["state", "--connect", target, "--connect-timeout-s", "5"]),
        Duration::from_secs(20),
    )?
    .ok("lab-client state")?;
    serde_json::from_str(done.stdout.trim())
        .with_context(|| format!("cannot parse the state reply {:?}", done.stdout))
}
