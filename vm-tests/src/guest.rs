//! The control channel into a running guest: ssh as root over a forwarded port.
//!
//! ssh survives the guest's kexec unchanged (the same forwarded port reaches
//! the new kernel's sshd), so "the guest is back" is judged by what the guest
//! says about itself, its boot id, never by how long we slept.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Finished, poll, run, wrapped_command};

/// Default bound for one guest command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What a guest says about its current boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    pub boot_id: String,
    pub kernel: String,
}

/// A guest reachable by ssh on 127.0.0.1:`port`.
#[derive(Debug, Clone)]
pub struct Guest {
    pub port: u16,
    key: PathBuf,
    /// Prefix for ssh, e.g. `ip netns exec NS` when QEMU runs in a namespace.
    wrapper: Vec<String>,
}

impl Guest {
    pub fn new(port: u16, key: &Path) -> Guest {
        Guest {
            port,
            key: key.to_path_buf(),
            wrapper: Vec::new(),
        }
    }

    /// The same guest, reached from inside a namespace (`wrapper` prefix).
    pub fn with_wrapper(mut self, wrapper: Vec<String>) -> Guest {
        self.wrapper = wrapper;
        self
    }

    fn ssh(&self, script: &str) -> Command {
        let mut cmd = wrapped_command(&self.wrapper, "ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("root@127.0.0.1")
            .arg(script);
        cmd
    }

    /// Runs a shell script in the guest, whatever its exit status.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<Finished> {
        run(&mut self.ssh(script), timeout)
    }

    /// Runs a shell script in the guest; it must exit 0. Returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        Ok(self
            .run(script, COMMAND_TIMEOUT)?
            .ok(&format!("guest command `{script}`"))?
            .stdout)
    }

    /// [`Guest::sh`] for a script that only reads (safe to run twice): ssh's
    /// own failures (exit 255, e.g. a login racing the end of the user's
    /// previous session right after a boot) are retried a few times.
    pub fn query(&self, script: &str) -> Result<String> {
        let mut attempt = 0;
        loop {
            let done = self.run(script, COMMAND_TIMEOUT)?;
            attempt += 1;
            if done.status.code() == Some(SSH_FAILED) && attempt < 4 {
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            return Ok(done.ok(&format!("guest command `{script}`"))?.stdout);
        }
    }

    /// Runs a script with a local file as its standard input.
    pub fn sh_with_input(&self, script: &str, input: &Path, timeout: Duration) -> Result<String> {
        let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
        let mut cmd = self.ssh(script);
        cmd.stdin(Stdio::from(file));
        let done = crate::process::run_with_stdin(&mut cmd, timeout)?;
        Ok(done.ok(&format!("guest command `{script}`"))?.stdout)
    }

    /// The guest's current boot id and kernel release, in one round trip.
    pub fn boot_info(&self) -> Result<BootInfo> {
        let done = self.run(
            "cat /proc/sys/kernel/random/boot_id; uname -r",
            Duration::from_secs(20),
        )?;
        if !done.status.success() {
            bail!("ssh: {}", done.stderr.trim());
        }
        parse_boot_info(&done.stdout)
    }

    /// Waits until the guest answers ssh, and, when `not_boot` is given, until
    /// it answers from a boot other than that one.
    pub fn wait_up(&self, timeout: Duration, not_boot: Option<&str>) -> Result<BootInfo> {
        let what = match not_boot {
            Some(old) => format!("the guest to answer from a boot other than {old}"),
            None => "the guest to answer ssh".to_string(),
        };
        poll(&what, timeout, Duration::from_millis(500), || {
            let info = self.boot_info()?;
            Ok((Some(info.boot_id.as_str()) != not_boot).then_some(info))
        })
    }
}

/// ssh's exit status for its own failures (connection, login).
const SSH_FAILED: i32 = 255;

/// Parses the output of `cat boot_id; uname -r`.
pub fn parse_boot_info(stdout: &str) -> Result<BootInfo> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next(), lines.next()) {
        (Some(boot_id), Some(kernel), None)
            if boot_id.len() == 36
                && boot_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') =>
        {
            Ok(BootInfo {
                boot_id: boot_id.to_string(),
                kernel: kernel.to_string(),
            })
        }
        _ => bail!("unexpected answer to the boot probe: {stdout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_parses() {
        let info = parse_boot_info("4b796f62-2ace-4ba2-88b6-aad747cccad2\n6.12.117+deb13-amd64\n")
            .expect("parses");
        assert_eq!(info.kernel, "6.12.117+deb13-amd64");
        assert_eq!(info.boot_id, "4b796f62-2ace-4ba2-88b6-aad747cccad2");
    }

    #[test]
    fn boot_info_rejects_garbage() {
        assert!(parse_boot_info("").is_err());
        assert!(parse_boot_info("not-a-uuid\n6.12\n").is_err());
        assert!(parse_boot_info("4b796f62-2ace-4ba2-88b6-aad747cccad2\n6.12\nextra\n").is_err());
    }
}
