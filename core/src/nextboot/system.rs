//! Every contact the next boot has with the running system, behind one
//! trait.
//!
//! The next boot runs unattended and decides whether a service comes back,
//! so each of its branches (already restored, digest mismatch, pid taken,
//! hold gone, claim lost, cold start failing) must be tested, and a VM run
//! per branch costs minutes. [`NextBootSystem`] is what the restore helper,
//! the release and the finishing unit do to the system; the files of the
//! transaction directory stay plain files (tests give a temp dir). Tests use
//! a recording fake that can fail any call, as the old boot's transaction
//! does with its `Platform`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::criu::{Criu, NotifyFn, RestoreOptions};
use crate::manifest::{UnitOutcome, write_outcome};
use crate::pid_reserve::pid_in_use;

use super::hold::{HOLD_SOCKET, HoldClient, Request};

/// The next boot's system, as the restore helper and the finishing unit
/// see it.
pub trait NextBootSystem {
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    fn boot_id(&self) -> Result<String>;
    /// Whether this boot's hold process is there to ask.
    fn hold_running(&self) -> bool;
    /// Sends one request to the hold; the reply's text after `ok`.
    fn ask_hold(&self, request: &Request) -> Result<String>;
    /// Whether a process or thread of this boot has `pid`.
    fn pid_in_use(&self, pid: i32) -> bool;
    /// Restores the images `options` names with CRIU (its RPC), answering
    /// its notifications with `notify`; the restored root task's pid.
    fn criu_restore(
        &self,
        options: &RestoreOptions<'_>,
        timeout: Duration,
        notify: &mut NotifyFn<'_>,
    ) -> Result<i32>;
    /// Runs `restore` with `net.ipv4.tcp_window_scaling` off, under a lock
    /// so concurrent restores agree on when to turn it back on.
    fn with_window_scaling_off(&self, restore: &mut dyn FnMut() -> Result<i32>) -> Result<i32>;
    /// Unpacks a tar `archive` into `target` (`extra`: tar options).
    fn extract_archive(&self, archive: &Path, target: &Path, extra: &[&str]) -> Result<()>;
    /// Writes `pid` as a pid file at `path`, making its directory.
    fn write_pid_file(&self, path: &Path, pid: i32) -> Result<()>;
    /// Records a unit's outcome in the transaction directory.
    fn write_outcome(&self, transaction_dir: &Path, outcome: &UnitOutcome) -> Result<()>;
    /// Applies an nftables ruleset given as text.
    fn nft_apply(&self, rules: &str) -> Result<()>;
    /// Whether the `inet` table `name` exists.
    fn nft_table_exists(&self, name: &str) -> bool;
    /// Deletes the `inet` table `name`.
    fn nft_delete_table(&self, name: &str) -> Result<()>;
    /// systemd's `ActiveState` of `unit` (empty when it cannot be read).
    fn unit_active_state(&self, unit: &str) -> String;
    /// Notes for the rest of the boot that the transaction of
    /// `transaction_dir` is finished, so the generator leaves it alone.
    fn mark_finished(&self, transaction_dir: &Path) -> Result<()>;
    fn daemon_reload(&self) -> Result<()>;
    /// `systemctl start UNIT`, waiting for the start job.
    fn start_unit(&self, unit: &str) -> Result<()>;
}

/// The real system.
#[derive(Debug, Default)]
pub struct LinuxNextBoot;

/// `net.ipv4.tcp_window_scaling`.
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";
/// The next boot's runtime directory.
pub const RUN_DIR: &str = "/run/seamless-reboot";
/// Serializes the restores' window scaling changes.
const RESTORE_LOCK: &str = "/run/seamless-reboot/restore.lock";

impl NextBootSystem for LinuxNextBoot {
    fn boot_id(&self) -> Result<String> {
        Ok(crate::manifest::read_boot_id(Path::new("/"))?)
    }

    fn hold_running(&self) -> bool {
        Path::new(HOLD_SOCKET).exists()
    }

    fn ask_hold(&self, request: &Request) -> Result<String> {
        HoldClient::new(HOLD_SOCKET).ask(request)
    }

    fn pid_in_use(&self, pid: i32) -> bool {
        pid_in_use(pid)
    }

    fn criu_restore(
        &self,
        options: &RestoreOptions<'_>,
        timeout: Duration,
        notify: &mut NotifyFn<'_>,
    ) -> Result<i32> {
        let criu = Criu::new().with_timeout(Some(timeout));
        Ok(criu.restore(options, notify)?.pid)
    }

    fn with_window_scaling_off(&self, restore: &mut dyn FnMut() -> Result<i32>) -> Result<i32> {
        fs::create_dir_all(RUN_DIR)?;
        let lock = fs::File::create(RESTORE_LOCK)?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {RESTORE_LOCK}"))?;
        let previous = fs::read_to_string(WINDOW_SCALING)?.trim().to_string();
        fs::write(WINDOW_SCALING, "0").context("cannot turn window scaling off")?;
        let restored = restore();
        if let Err(e) = fs::write(WINDOW_SCALING, &previous) {
            tracing::warn!("cannot restore tcp_window_scaling to {previous}: {e}");
        }
        restored
    }

    fn extract_archive(&self, archive: &Path, target: &Path, extra: &[&str]) -> Result<()> {
        crate::platform::extract_archive(archive, target, extra)
    }

    fn write_pid_file(&self, path: &Path, pid: i32) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(path, format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn write_outcome(&self, transaction_dir: &Path, outcome: &UnitOutcome) -> Result<()> {
        write_outcome(transaction_dir, outcome)?;
        Ok(())
    }

    fn nft_apply(&self, rules: &str) -> Result<()> {
        super::hold::nft_apply(rules)
    }

    fn nft_table_exists(&self, name: &str) -> bool {
        Command::new("nft")
            .args(["list", "table", "inet", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn nft_delete_table(&self, name: &str) -> Result<()> {
        crate::platform::command("nft", &["delete", "table", "inet", name]).map(drop)
    }

    fn unit_active_state(&self, unit: &str) -> String {
        crate::platform::command(
            "systemctl",
            &["show", "--property=ActiveState", "--value", "--", unit],
        )
        .map(|state| state.trim().to_string())
        .unwrap_or_default()
    }

    fn mark_finished(&self, transaction_dir: &Path) -> Result<()> {
        let id = transaction_dir
            .file_name()
            .context("the transaction directory has no name")?;
        let path = Path::new(RUN_DIR).join(super::FINISHED_FILE);
        fs::create_dir_all(RUN_DIR).with_context(|| format!("cannot create {RUN_DIR}"))?;
        fs::write(&path, id.as_encoded_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn daemon_reload(&self) -> Result<()> {
        crate::platform::command("systemctl", &["daemon-reload"]).map(drop)
    }

    fn start_unit(&self, unit: &str) -> Result<()> {
        crate::platform::command("systemctl", &["start", "--", unit]).map(drop)
    }
}
