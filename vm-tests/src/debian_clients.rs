//! Real clients from Debian packages (psql, mosquitto_pub, mosquitto_sub,
//! curl), run on the host where the guest's QEMU runs, usually in the lab's
//! network namespace as the guest's Linux TCP peer.
//!
//! A service's claim is only proven by its own client: the lab's client
//! speaks the lab's protocol, not PostgreSQL's or MQTT's. These wrappers only
//! feed the clients their input and keep what they print; the checks read
//! the clients' own output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{wait_deadline, wrapped_command};

/// How a client is started: the program, its arguments and environment, run
/// through `wrapper` (`ip netns exec NS`), printing into `log`.
#[derive(Debug)]
pub struct ClientCommand<'a> {
    pub wrapper: Vec<String>,
    pub program: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, &'a str)>,
    pub log: PathBuf,
}

impl ClientCommand<'_> {
    fn spawn(&self) -> Result<Child> {
        let out = std::fs::File::create(&self.log)
            .with_context(|| format!("cannot create {}", self.log.display()))?;
        let mut cmd = wrapped_command(&self.wrapper, self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.spawn()
            .with_context(|| format!("cannot start {}", self.program))
    }
}

/// A client fed one numbered line (1, 2, ...) every interval by a thread,
/// over its one connection, until it is finished.
#[derive(Debug)]
pub struct FedClient {
    child: Child,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<u64>>,
    log: PathBuf,
}

impl FedClient {
    /// Starts the client and its feeder; `line(n)` is the n-th line.
    pub fn start(
        command: &ClientCommand<'_>,
        interval: Duration,
        line: impl Fn(u64) -> String + Send + 'static,
    ) -> Result<FedClient> {
        let mut child = command.spawn()?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let feeder = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let next = line(sent + 1);
                if stdin
                    .write_all(next.as_bytes())
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
                sent += 1;
                std::thread::sleep(interval);
            }
            sent
        });
        Ok(FedClient {
            child,
            stop,
            feeder: Some(feeder),
            log: command.log.clone(),
        })
    }

    /// Whether the client is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops feeding, closes its input and waits (up to `timeout`) for the
    /// client to finish what it was given. Returns the lines fed, how it
    /// ended (`None`: killed at the deadline) and what it printed.
    pub fn finish(mut self, timeout: Duration) -> Result<(u64, Option<ExitStatus>, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .feeder
            .take()
            .map(|f| f.join().unwrap_or(0))
            .unwrap_or(0);
        let status = wait_deadline(&mut self.child, timeout)?;
        let printed = std::fs::read_to_string(&self.log).unwrap_or_default();
        Ok((sent, status, printed))
    }
}

/// A client whose input is written at chosen moments (a psql session that
/// opens a transaction before the update and commits it after).
#[derive(Debug)]
pub struct ScriptedClient {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl ScriptedClient {
    pub fn start(command: &ClientCommand<'_>) -> Result<ScriptedClient> {
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        Ok(ScriptedClient {
            child,
            stdin,
            log: command.log.clone(),
        })
    }

    /// Writes `text` to the client's input.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the client's input is closed")?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// What it printed so far.
    pub fn printed(&self) -> String {
        read_log(&self.log)
    }

    /// Closes its input and waits (up to `timeout`) for it to end; returns
    /// how it ended (`None`: killed at the deadline) and what it printed.
    pub fn finish(mut self, timeout: Duration) -> Result<(Option<ExitStatus>, String)> {
        drop(self.stdin.take());
        let status = wait_deadline(&mut self.child, timeout)?;
        Ok((status, read_log(&self.log)))
    }

    /// Ends it with SIGTERM (a subscriber that never ends by itself);
    /// returns what it printed.
    pub fn terminate(mut self) -> Result<String> {
        drop(self.stdin.take());
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        // The wrapper (`ip netns exec`) execs the client: same pid.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_deadline(&mut self.child, Duration::from_secs(20))?;
        Ok(read_log(&self.log))
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
