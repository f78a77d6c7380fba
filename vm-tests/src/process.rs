//! Running host commands with a deadline.
//!
//! Every wait in the lab is bounded: a hung ssh, a QEMU that never boots or a
//! mmdebstrap that stalls must fail the test with what the command printed,
//! not hang CI until its own time limit.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// `program` run through `wrapper` (e.g. `ip netns exec NS`), or directly
/// when the wrapper is empty.
pub fn wrapped_command(wrapper: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// What a finished command printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Its standard output followed by its standard error.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails with the command's output when it did not exit 0.
    pub fn ok(self, what: &str) -> Result<Finished> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!(
                "{what} failed ({}):\n{}{}",
                self.status,
                tail(&self.stdout, 40),
                tail(&self.stderr, 40)
            )
        }
    }
}

/// The last `lines` lines of `text`, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Runs `cmd` with stdin closed, collecting its output, and kills it when it
/// has not finished within `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    cmd.stdin(Stdio::null());
    run_with_stdin(cmd, timeout)
}

/// Like [`run`], but with whatever standard input the caller set on `cmd`.
pub fn run_with_stdin(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let described = format!("{cmd:?}");
    // Its own process group, so that a timeout ends the command's children
    // too (mmdebstrap's apt, a shell's sleep) and no orphan keeps the output
    // pipes open.
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {described}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status =
        wait_deadline(&mut child, timeout).with_context(|| format!("waiting for {described}"))?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{described} did not finish within {timeout:?}; killed. Output so far:\n{}{}",
            tail(&stdout, 20),
            tail(&stderr, 20)
        ),
    }
}

/// Waits for `child` until `timeout`; kills and reaps it on expiry and
/// returns `None` then.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // The child may have exited between try_wait and kill; both are
            // fine. Its group exists only if it was started as a group leader.
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Polls `probe` every `every` until it returns `Some`, or fails after
/// `timeout` naming `what` and the last error the probe gave.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_collects_output_and_status() {
        let done = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");
        let err = done.ok("the probe").expect_err("exit 3 is a failure");
        assert!(format!("{err}").contains("the probe failed"), "{err}");
    }

    #[test]
    fn run_kills_on_timeout() {
        let started = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            Duration::from_millis(300),
        )
        .expect_err("must time out");
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = format!("{err}");
        assert!(text.contains("did not finish"), "{text}");
    }

    #[test]
    fn poll_reports_last_error() {
        let mut calls = 0;
        let err = poll(
            "nothing",
            Duration::from_millis(200),
            Duration::from_millis(20),
            || {
                calls += 1;
                anyhow::bail!("attempt {calls}")
            },
        )
        .map(|(): ()| ())
        .expect_err("never succeeds");
        assert!(format!("{err}").contains("last error: attempt"), "{err}");
        let got = poll("third", Duration::from_secs(5), Duration::from_millis(1), {
            let mut n = 0;
            move || {
                n += 1;
                Ok((n == 3).then_some(n))
            }
        })
        .expect("succeeds on third call");
        assert_eq!(got, 3);
    }

    #[test]
    fn wrapped_command_prefixes_only_when_asked() {
        let direct = wrapped_command(&[], "ssh");
        assert_eq!(direct.get_program(), "ssh");
        assert_eq!(direct.get_args().count(), 0);
        let wrapper: Vec<String> = ["ip", "netns", "exec", "ns1"].map(String::from).to_vec();
        let wrapped = wrapped_command(&wrapper, "ssh");
        assert_eq!(wrapped.get_program(), "ip");
        let args: Vec<_> = wrapped.get_args().collect();
        assert_eq!(args, ["netns", "exec", "ns1", "ssh"]);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("", 2), "");
    }
}
