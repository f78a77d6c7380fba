//! The next boot: decide whether this boot restores a snapshot, hold the
//! checkpointed connections before any interface comes up, and restore each
//! unit as itself.
//!
//! Why this shape (each point was a failure in a prototype on these hosts):
//! - The new kernel answers a peer's retransmission for a connection it does
//!   not know yet with RST. So a hold unit ordered before
//!   `network-pre.target` puts every checkpointed connection on hold (see
//!   [`hold`]: the peers' packets are queued, not answered) and each unit's
//!   restore helper releases its own connections right after its restore,
//!   re-injecting what the peers sent meanwhile so traffic resumes at once.
//! - CRIU restores the original pids; the hold reserves them early in the
//!   boot and frees them just before CRIU forks the restored processes.
//! - A restore from a separate unit leaves the unit inactive and systemd later
//!   kills the "stray" process. So the unit restores itself: a drop-in makes
//!   it `Type=forking` with our restore helper as a privileged (`+`)
//!   `ExecStart` and the restored pid in its `PIDFile`; it ends active with
//!   the restored process as main pid in its own cgroup. The helper runs
//!   outside the unit's `User=` and sandbox (CRIU needs root, the images are
//!   root's); the restored processes get back the credentials, capabilities
//!   and seccomp filter CRIU saved.
//! - The helper never starts the unit's command itself: as root and outside
//!   the sandbox that would be the wrong process. When a restore fails, the
//!   unit's start fails, and a finishing unit ordered after every restored
//!   unit reloads systemd (the generator then leaves out every unit with an
//!   outcome, so their drop-ins are gone and later restarts run the units'
//!   own commands with their own restart policy) and starts each unit that is
//!   not running with its own configuration: a cold start exactly as a
//!   plain boot would do it.
//! - Peers that did not negotiate window scaling would see a window of a few
//!   bytes after a restore with scaling on; the helper turns it off around
//!   the restore when configured.
//! - A unit with a mount namespace of its own (systemd's sandbox options) is
//!   rebuilt by CRIU on `/`, its mounts bound again from the host; its
//!   private `/tmp` and `/var/tmp` are this start's new private directories
//!   (systemd makes them for the unit even though the helper itself runs
//!   outside the sandbox), filled with the contents saved at the dump.
//! - `/dev/shm` is empty in a new boot, and CRIU saves which shared memory
//!   file a process maps, not its contents: the unit's files there, saved at
//!   the dump, are put back before CRIU runs.
//! - Nothing may restore twice: the hold unit claims the snapshot for this
//!   boot before anything is restored, and the generator only acts for the
//!   exact transition the manifest names.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::criu::{CgroupMode, Criu, InheritFd, Notification, RestoreOptions, scripts};
use crate::inventory::shared_memory::{SHM_ARCHIVE, SHM_DIR};
use crate::kexec::marker_from_cmdline;
use crate::manifest::{
    Manifest, OutcomeKind, UnitOutcome, UnitSnapshot, read_claim, read_outcomes, verify_digests,
    write_outcome,
};
use crate::netqueue::Verdict;
use crate::pid_reserve::pid_in_use;
use crate::transaction::{
    HOLD_RULES_FILE, UNIT_SNAPSHOT_FILE, pid_file, restore_dropin, unit_dir_name,
};

pub mod hold;

use hold::HoldClient;

/// The unit that holds checkpointed connections in the next boot.
pub const HOLD_UNIT: &str = "seamless-reboot-hold.service";
/// The unit that, once every restore has ended, reloads systemd and
/// cold-starts the units that were not restored.
pub const FINISH_UNIT: &str = "seamless-reboot-finish.service";
/// Name of the restore drop-in the generator writes.
pub const GENERATED_DROPIN: &str = "99-seamless-reboot-restore.conf";

/// What the generator decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No marker on the command line: an ordinary boot.
    NoMarker,
    /// A marker, but no usable snapshot for this boot (the reason).
    Refused(String),
    /// Units to restore in this boot, from this transaction directory, and
    /// units to start with their own configuration (left out by their
    /// `restart` policy).
    Restore {
        transaction_dir: PathBuf,
        units: Vec<String>,
        restart_units: Vec<String>,
    },
}

/// Decides what this boot restores. Pure apart from reading the
/// transaction directory, so it is tested on temp dirs.
pub fn decide(cmdline: &str, image_root: &Path, boot_id: &str, release: &str) -> Decision {
    let Some(id) = marker_from_cmdline(cmdline) else {
        return Decision::NoMarker;
    };
    let dir = image_root.join(&id);
    let manifest = match Manifest::read_from(&dir) {
        Ok(m) => m,
        Err(e) => return Decision::Refused(format!("{e}")),
    };
    if manifest.transaction_id != id {
        return Decision::Refused(format!(
            "{} holds transaction {}, the command line names {id}",
            dir.display(),
            manifest.transaction_id
        ));
    }
    if let Err(e) = manifest.check_transition(boot_id, release) {
        return Decision::Refused(format!("{e}"));
    }
    match read_claim(&dir) {
        Ok(Some(c)) if c.boot_id != boot_id => {
            return Decision::Refused(format!(
                "the snapshot was already consumed by boot {}",
                c.boot_id
            ));
        }
        Ok(_) => {}
        Err(e) => return Decision::Refused(format!("{e}")),
    }
    let done: Vec<String> = read_outcomes(&dir)
        .map(|o| o.into_iter().map(|o| o.unit).collect())
        .unwrap_or_default();
    let units = manifest
        .units
        .iter()
        .map(|u| u.unit.clone())
        .filter(|u| !done.contains(u))
        .collect();
    Decision::Restore {
        transaction_dir: dir,
        units,
        restart_units: manifest.restart_units,
    }
}

/// For `status`, when no unit of the snapshot in `transaction_dir` has an
/// outcome yet: why, in an operator's words, or `None` when the snapshot is
/// this boot's to restore (its restores are under way).
pub fn not_restored_reason(
    transaction_dir: &Path,
    manifest: &Manifest,
    cmdline: &str,
    boot_id: &str,
    release: &str,
) -> Option<String> {
    if manifest.source_boot_id == boot_id {
        return Some(format!(
            "checkpointed in this boot for a kexec into {}, which has not happened (yet)",
            manifest.target_kernel
        ));
    }
    let image_root = transaction_dir.parent()?;
    match decide(cmdline, image_root, boot_id, release) {
        Decision::NoMarker => Some(format!(
            "this boot (kernel {release}) was not started by the update's kexec: its command line \
             has no {}= (a cold boot, or a reset after the new kernel failed to boot); its units \
             started as in a plain boot, and this snapshot is never restored",
            crate::kexec::cmdline::MARKER_KEY
        )),
        Decision::Refused(why) => Some(format!("not restored in this boot: {why}")),
        Decision::Restore {
            transaction_dir: restoring,
            ..
        } if restoring == transaction_dir => None,
        Decision::Restore {
            transaction_dir: restoring,
            ..
        } => Some(format!(
            "this boot restores another update's snapshot ({})",
            restoring.display()
        )),
    }
}

/// Writes the generator's output for `decision` into `out_dir` (the
/// generator's "normal" directory): the hold unit, and for each unit a
/// restore drop-in and a wants link so it starts in this boot.
pub fn write_generated(out_dir: &Path, decision: &Decision, binary: &Path) -> Result<()> {
    let Decision::Restore {
        transaction_dir,
        units,
        restart_units,
    } = decision
    else {
        return Ok(());
    };
    // Started as if enabled: a cold start, as a plain reboot would do it.
    for unit in restart_units {
        link_wants(out_dir, "multi-user.target", unit)?;
    }
    if units.is_empty() {
        return Ok(());
    }
    let hold = format!(
        "# Generated by seamless-reboot-generator.\n\
         [Unit]\n\
         Description=seamless-reboot: hold checkpointed connections until their services are restored\n\
         DefaultDependencies=no\n\
         # After whatever loads a firewall (which may flush every table) and\n\
         # after sysctl (pid_max), before any interface comes up.\n\
         After=local-fs.target systemd-sysctl.service nftables.service firewalld.service\n\
         Before=network-pre.target shutdown.target\n\
         Wants=network-pre.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         # Stays active when done, so restarting a restored unit (which wants\n\
         # this one) does not start the hold again.\n\
         RemainAfterExit=yes\n\
         # One placeholder process per reserved pid.\n\
         TasksMax=infinity\n\
         TimeoutStartSec=120\n\
         ExecStart={} hold {}\n",
        binary.display(),
        transaction_dir.display()
    );
    fs::write(out_dir.join(HOLD_UNIT), hold)?;
    link_wants(out_dir, "sysinit.target", HOLD_UNIT)?;
    for unit in units {
        let dropin_dir = out_dir.join(format!("{unit}.d"));
        fs::create_dir_all(&dropin_dir)?;
        let snapshot_dir = transaction_dir.join(unit_dir_name(unit));
        fs::write(
            dropin_dir.join(GENERATED_DROPIN),
            restore_dropin(binary, &snapshot_dir, unit, Some(HOLD_UNIT)),
        )?;
        link_wants(out_dir, "multi-user.target", unit)?;
    }
    let finish = format!(
        "# Generated by seamless-reboot-generator.\n\
         [Unit]\n\
         Description=seamless-reboot: hand restored units back to their own configuration, cold-start the others\n\
         # After each restored unit's start job, whatever its result.\n\
         After={HOLD_UNIT} {}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         TimeoutStartSec=infinity\n\
         ExecStart={} finish-restore {}\n",
        units.join(" "),
        binary.display(),
        transaction_dir.display()
    );
    fs::write(out_dir.join(FINISH_UNIT), finish)?;
    link_wants(out_dir, "multi-user.target", FINISH_UNIT)?;
    Ok(())
}

/// Makes `target` want `unit` in this boot. systemd takes the unit's name
/// from the link's name and finds the unit by that name, so the link points
/// to where a generated unit would be (`../NAME`) whether or not it is one.
fn link_wants(out_dir: &Path, target: &str, unit: &str) -> Result<()> {
    let wants = out_dir.join(format!("{target}.wants"));
    fs::create_dir_all(&wants)?;
    let link = wants.join(unit);
    if link.symlink_metadata().is_err() {
        symlink(format!("../{unit}"), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

/// Names of the nftables tables in a saved rules file.
pub fn tables_in_rules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Options of the restore helper.
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    pub disable_window_scaling: bool,
    pub criu_timeout: std::time::Duration,
    /// An undo's restore on the kernel the snapshot was taken on, not the
    /// next boot's: its outcome record serves nothing afterwards (the undo
    /// removes the transaction directory), so failing to write it, as in
    /// an image store that filled up, does not fail a restore that worked.
    /// In the next boot the record is what keeps a later start of the unit
    /// from restoring the same snapshot twice, so there it must be written.
    pub in_place: bool,
}

/// The restore helper, run by systemd (privileged) as the unit's forking
/// `ExecStart`: restores the unit's snapshot, writes the main pid for
/// systemd and exits. When the restore is impossible it records why and
/// fails, so the unit's start fails; the unit is then started with its own
/// configuration by [`finish_restore`] (or, for an in-place restore on the
/// old kernel, by the transaction's undo).
pub fn restore_unit(snapshot_dir: &Path, unit: &str, settings: &RestoreSettings) -> Result<()> {
    let transaction_dir = snapshot_dir
        .parent()
        .context("the snapshot directory has no parent")?;
    let started = Instant::now();
    let snapshot = load_snapshot(transaction_dir, snapshot_dir, unit)?;
    let hold = HoldClient::find();
    let already = read_outcomes(transaction_dir)
        .unwrap_or_default()
        .into_iter()
        .any(|o| o.unit == unit);
    if already {
        // A restart before systemd was reloaded: the snapshot is used up
        // and this drop-in is stale.
        bail!(
            "{unit} already has an outcome from this snapshot in this boot; its restore \
             drop-in is stale: run `systemctl daemon-reload`, then start it again"
        );
    }
    let attempt = restore_with_criu(transaction_dir, &snapshot, settings, hold.as_ref());
    // Restored or not, the unit's connections leave the hold now: the held
    // packets go to the restored socket, or, with no socket for them, this
    // kernel answers them with a reset so the peers learn at once.
    release_connections(transaction_dir, snapshot_dir, unit, hold.as_ref());
    match attempt {
        Ok(pid) => {
            write_pid_file(&pid_file(unit), pid)?;
            // The unit's own pid file, which its reload and stop commands
            // may read, is gone with the old boot's /run.
            if let Some(own) = &snapshot.pid_file {
                write_pid_file(Path::new(own), pid)?;
            }
            let recorded = record(
                transaction_dir,
                unit,
                OutcomeKind::Restored,
                format!("restored pid {pid}"),
                started,
                &snapshot,
            );
            match recorded {
                Err(e) if settings.in_place => {
                    tracing::warn!(
                        "{unit}: restored in place as pid {pid}; its outcome could not be \
                         recorded: {e:#}"
                    );
                    Ok(())
                }
                recorded => recorded,
            }
        }
        Err(error) => {
            // Recorded before the start fails, so that the reload leaves
            // this unit's drop-in out and the cold start runs the unit's own
            // command; the finishing unit confirms or corrects the record.
            record(
                transaction_dir,
                unit,
                OutcomeKind::ColdStarted,
                format!("{error:#}"),
                started,
                &snapshot,
            )?;
            Err(error.context(format!(
                "{unit} could not be restored; it will be started with its own command"
            )))
        }
    }
}

/// Writes `pid` to `path` as a pid file, making its directory if needed.
fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, format!("{pid}\n")).with_context(|| format!("cannot write {}", path.display()))
}

/// `finish-restore`, run once every restored unit's start job has ended:
/// gives each unit an outcome, reloads systemd (so the generator leaves out
/// the restore drop-ins: later restarts run the units' own commands with
/// their own restart policy), then starts with its own configuration every
/// unit that is not running. Fails if any unit could not be started.
pub fn finish_restore(transaction_dir: &Path) -> Result<()> {
    let manifest = Manifest::read_from(transaction_dir)?;
    let outcomes = read_outcomes(transaction_dir).unwrap_or_default();
    let mut cold = Vec::new();
    for snapshot in &manifest.units {
        let unit = &snapshot.unit;
        let state = active_state(unit);
        let outcome = outcomes.iter().find(|o| &o.unit == unit);
        if state == "active" {
            if outcome.is_none() {
                tracing::warn!("{unit} is active but its restore recorded nothing");
            }
            continue;
        }
        let detail = match outcome {
            Some(outcome) => outcome.detail.clone(),
            None => {
                let detail = format!("its restore did not finish (the unit is {state})");
                record(
                    transaction_dir,
                    unit,
                    OutcomeKind::ColdStarted,
                    detail.clone(),
                    Instant::now(),
                    snapshot,
                )?;
                detail
            }
        };
        cold.push((snapshot, detail));
    }
    systemctl(&["daemon-reload"])?;
    let mut failed = Vec::new();
    for (snapshot, detail) in cold {
        let unit = &snapshot.unit;
        let started = Instant::now();
        match systemctl(&["start", "--", unit]) {
            Ok(()) => {
                tracing::info!("{unit}: started with its own command ({detail})");
                record(
                    transaction_dir,
                    unit,
                    OutcomeKind::ColdStarted,
                    detail,
                    started,
                    snapshot,
                )?;
            }
            Err(e) => {
                record(
                    transaction_dir,
                    unit,
                    OutcomeKind::Failed,
                    format!("{detail}; cold start: {e:#}"),
                    started,
                    snapshot,
                )?;
                failed.push(format!("{unit}: {e:#}"));
            }
        }
    }
    // The old boot's undo journal is obsolete: this boot took the units
    // over. The images hold the services' memory (keys, passwords,
    // sessions): once a unit is restored or started afresh they serve
    // nothing more.
    crate::transaction::journal::remove_journal(transaction_dir)?;
    wipe_images(transaction_dir, &manifest)?;
    if !failed.is_empty() {
        bail!("could not start {}", failed.join("; "));
    }
    Ok(())
}

/// Removes the images (not CRIU's logs) of every unit of `manifest` that
/// was restored or cold-started; a unit that failed keeps its snapshot, the
/// only copy of its state.
fn wipe_images(transaction_dir: &Path, manifest: &Manifest) -> Result<()> {
    let outcomes = read_outcomes(transaction_dir)?;
    for snapshot in &manifest.units {
        let done = outcomes.iter().any(|o| {
            o.unit == snapshot.unit
                && matches!(o.outcome, OutcomeKind::Restored | OutcomeKind::ColdStarted)
        });
        if done {
            crate::transaction::remove_all_but_logs(&snapshot.images_path(transaction_dir))
                .with_context(|| format!("cannot remove the images of {}", snapshot.unit))?;
        }
    }
    Ok(())
}

fn active_state(unit: &str) -> String {
    crate::platform::command(
        "systemctl",
        &["show", "--property=ActiveState", "--value", "--", unit],
    )
    .map(|state| state.trim().to_string())
    .unwrap_or_default()
}

fn systemctl(args: &[&str]) -> Result<()> {
    crate::platform::command("systemctl", args).map(drop)
}

fn load_snapshot(transaction_dir: &Path, snapshot_dir: &Path, unit: &str) -> Result<UnitSnapshot> {
    // The manifest (checksummed) when it exists; the unit's own record when
    // undoing a transaction that failed before its manifest was written.
    if transaction_dir
        .join(crate::manifest::MANIFEST_FILE)
        .exists()
    {
        let manifest = Manifest::read_from(transaction_dir)?;
        return manifest
            .units
            .into_iter()
            .find(|u| u.unit == unit)
            .with_context(|| {
                format!(
                    "{unit} is not in the manifest of {}",
                    transaction_dir.display()
                )
            });
    }
    let path = snapshot_dir.join(UNIT_SNAPSHOT_FILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not parse", path.display()))
}

fn restore_with_criu(
    transaction_dir: &Path,
    snapshot: &UnitSnapshot,
    settings: &RestoreSettings,
    hold: Option<&HoldClient>,
) -> Result<i32> {
    let images = snapshot.images_path(transaction_dir);
    verify_digests(&images, &snapshot.images)?;
    let dir =
        fs::File::open(&images).with_context(|| format!("cannot open {}", images.display()))?;
    // The unit's journal stream is our stdout: CRIU puts it where the
    // checkpointed process had its own stream (fds above 2 for CRIU).
    let journal = std::io::stdout().as_fd().try_clone_to_owned()?;
    let journal = if journal.as_raw_fd() <= 2 {
        let again = journal.try_clone()?;
        drop(journal);
        again
    } else {
        journal
    };
    // Files the unit held outside its mount namespace, opened afresh; they
    // must outlive `options`, which lends them to CRIU.
    let mut outside_files = Vec::new();
    let mut mount_externals = Vec::new();
    if !snapshot.shm_files.is_empty() {
        unpack_shm_files(&images.join(SHM_ARCHIVE))?;
    }
    if let Some(sandbox) = &snapshot.mount_sandbox {
        for private in &sandbox.private_dirs {
            let target = this_boot_private_dir(Path::new(&private.mountpoint), &snapshot.unit)?;
            unpack_private_dir(&images.join(private.archive_name()), &target)?;
            mount_externals.push(private.restore_external(&target));
        }
        for file in &sandbox.outside_files {
            let opened = fs::OpenOptions::new()
                .read(true)
                .write(file.writable)
                .open(&file.path)
                .with_context(|| {
                    format!(
                        "cannot open {} for the restored processes",
                        file.path.display()
                    )
                })?;
            outside_files.push((file.key(), opened));
        }
        // systemd makes it when it starts a unit with a mount namespace; the
        // namespace's `/run/systemd/incoming` is bound from it.
        let propagate = Path::new("/run/systemd/propagate").join(&snapshot.unit);
        fs::create_dir_all(&propagate)
            .with_context(|| format!("cannot create {}", propagate.display()))?;
    }
    let mut options = RestoreOptions::new(dir.as_fd());
    options.manage_cgroups_mode = Some(CgroupMode::Ignore);
    if snapshot.mount_sandbox.is_some() {
        options.mount_namespace_root = Some("/".into());
        options.external = mount_externals;
        for (key, file) in &outside_files {
            options.inherit_fds.push(InheritFd {
                key: key.clone(),
                fd: file.as_fd(),
            });
        }
    }
    for inode in &snapshot.journal_socket_inodes {
        let inode = u32::try_from(*inode).context("socket inode out of range")?;
        options
            .inherit_fds
            .push(InheritFd::unix_socket(inode, journal.as_fd()));
    }
    let _scaling = if settings.disable_window_scaling {
        Some(WindowScalingOff::new()?)
    } else {
        None
    };
    let criu = Criu::new().with_timeout(Some(settings.criu_timeout));
    // Right before CRIU forks the restored processes: free their pids, and
    // refuse (cold start) if another process of this boot has one.
    let mut refused: Option<anyhow::Error> = None;
    let mut notify = |n: Notification<'_>| -> Result<()> {
        if n.script != scripts::PRE_RESTORE {
            return Ok(());
        }
        let free = || -> Result<()> {
            // A hold that is gone took its placeholders with it (they die
            // with their parent); whatever still has a pid is checked next.
            if let Some(hold) = hold
                && let Err(e) = hold.free_pids(&snapshot.unit)
            {
                tracing::warn!("{e:#}");
            }
            let taken: Vec<String> = hold::needed_pids(snapshot)
                .into_iter()
                .filter(|&pid| pid_in_use(pid))
                .map(hold::process_name)
                .collect();
            if !taken.is_empty() {
                bail!(
                    "pid collision: {} already in use in this boot",
                    taken.join(", ")
                );
            }
            Ok(())
        };
        free().inspect_err(|e| refused = Some(anyhow::anyhow!("{e:#}")))
    };
    let restored = criu.restore(&options, &mut notify);
    if let Some(cause) = refused {
        return Err(cause);
    }
    let restored = restored.with_context(|| {
        format!(
            "CRIU could not restore (log: {}/restore.log)",
            images.display()
        )
    })?;
    Ok(restored.pid)
}

/// The private directory systemd made for `unit` below `parent` (`/tmp` or
/// `/var/tmp`) in this boot: `<parent>/systemd-private-<boot id>-<unit>-*/tmp`,
/// the newest if an earlier start's is still there.
fn this_boot_private_dir(parent: &Path, unit: &str) -> Result<PathBuf> {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("cannot read this boot's id")?;
    private_dir_of(parent, boot_id.trim(), unit)
}

/// [`this_boot_private_dir`] for the boot `boot_id` (as the kernel shows it,
/// with dashes).
fn private_dir_of(parent: &Path, boot_id: &str, unit: &str) -> Result<PathBuf> {
    let boot_id = boot_id.replace('-', "");
    let prefix = format!("systemd-private-{boot_id}-{unit}-");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in
        fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?
    {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let dir = entry.path().join("tmp");
        if let Ok(meta) = fs::metadata(&dir) {
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), dir));
        }
    }
    found.sort();
    found.pop().map(|(_, dir)| dir).with_context(|| {
        format!(
            "systemd made no private directory {}/{prefix}* for {unit} in this boot",
            parent.display()
        )
    })
}

/// Puts the saved contents of a private directory into `target`.
fn unpack_private_dir(archive: &Path, target: &Path) -> Result<()> {
    crate::platform::extract_archive(archive, target, &[]).with_context(|| {
        format!(
            "cannot fill {} from {}",
            target.display(),
            archive.display()
        )
    })
}

/// Puts the unit's saved POSIX shared memory files back into `/dev/shm`,
/// refusing to overwrite a file this boot made under the same name.
fn unpack_shm_files(archive: &Path) -> Result<()> {
    crate::platform::extract_archive(archive, Path::new(SHM_DIR), &["--keep-old-files"])
        .with_context(|| format!("cannot put the unit's files back into {SHM_DIR}"))
}

/// Turns `net.ipv4.tcp_window_scaling` off until dropped, under a lock so
/// concurrent restores agree on when to turn it back on.
struct WindowScalingOff {
    previous: String,
    _lock: nix::fcntl::Flock<fs::File>,
}

const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";

impl WindowScalingOff {
    fn new() -> Result<Self> {
        fs::create_dir_all("/run/seamless-reboot")?;
        let lock = fs::File::create("/run/seamless-reboot/restore.lock")?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("cannot lock /run/seamless-reboot/restore.lock")?;
        let previous = fs::read_to_string(WINDOW_SCALING)?.trim().to_string();
        fs::write(WINDOW_SCALING, "0").context("cannot turn window scaling off")?;
        Ok(WindowScalingOff {
            previous,
            _lock: lock,
        })
    }
}

impl Drop for WindowScalingOff {
    fn drop(&mut self) {
        if let Err(e) = fs::write(WINDOW_SCALING, &self.previous) {
            tracing::warn!(
                "cannot restore tcp_window_scaling to {}: {e}",
                self.previous
            );
        }
    }
}

/// `release-unit`, run when the unit stops (or its start failed): makes
/// sure the hold no longer holds its connections. Normally the restore
/// helper released them already, and this finds nothing to do.
pub fn release_unit(snapshot_dir: &Path, unit: &str) -> Result<()> {
    let transaction_dir = snapshot_dir
        .parent()
        .context("the snapshot directory has no parent")?;
    let hold = HoldClient::find();
    if let Some(hold) = &hold
        && !hold.holds(unit)
    {
        return Ok(());
    }
    release_connections(transaction_dir, snapshot_dir, unit, hold.as_ref());
    Ok(())
}

/// Gives the unit's connections to this kernel: through the hold process
/// when there is one (which re-injects or drops what it queued), else by
/// deleting the tables that hold them (the hold's, if it died, and CRIU's
/// own lock of an in-place restore), so that nothing stays blocked.
fn release_connections(
    transaction_dir: &Path,
    snapshot_dir: &Path,
    unit: &str,
    hold: Option<&HoldClient>,
) {
    if let Some(hold) = hold {
        match hold.release(unit, Verdict::Accept) {
            Ok(reply) => {
                tracing::info!("{unit}: connections released ({reply})");
                return;
            }
            Err(e) => tracing::warn!("{unit}: {e:#}; deleting its hold rules instead"),
        }
    }
    if let Ok(manifest) = Manifest::read_from(transaction_dir)
        && let Some(index) = manifest.units.iter().position(|u| u.unit == unit)
        && table_exists(hold::HOLD_TABLE)
        && let Err(e) = hold::release_without_hold(index)
    {
        tracing::warn!("{unit}: cannot release its connections: {e:#}");
    }
    release_hold(snapshot_dir);
}

fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes this unit's CRIU lock tables, so its peers get a prompt reset
/// instead of waiting for a connection that will not come back.
fn release_hold(snapshot_dir: &Path) {
    let text = fs::read_to_string(snapshot_dir.join(HOLD_RULES_FILE)).unwrap_or_default();
    for table in tables_in_rules(&text) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .output();
    }
}

fn record(
    transaction_dir: &Path,
    unit: &str,
    outcome: OutcomeKind,
    detail: String,
    started: Instant,
    snapshot: &UnitSnapshot,
) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let manifest_created = Manifest::read_from(transaction_dir)
        .map(|m| m.created_unix)
        .ok();
    write_outcome(
        transaction_dir,
        &UnitOutcome {
            unit: unit.to_string(),
            outcome,
            detail,
            recorded_unix: now.as_secs(),
            duration_ms: started.elapsed().as_millis() as u64,
            downtime_ms: manifest_created.map(|created| {
                now.as_millis().saturating_sub(u128::from(created) * 1000) as u64
                    + snapshot.frozen_ms
            }),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FORMAT_VERSION, UnitSnapshot};

    const BOOT_A: &str = "11111111-1111-1111-1111-111111111111";
    const BOOT_B: &str = "22222222-2222-2222-2222-222222222222";
    const TARGET: &str = "6.12.95+deb12-amd64";

    /// A transaction directory with a valid manifest for one unit.
    fn transaction(root: &Path, id: &str, units: &[&str]) -> PathBuf {
        let dir = root.join(id);
        let snapshots = units
            .iter()
            .map(|unit| {
                let images = dir.join(unit_dir_name(unit)).join("images");
                fs::create_dir_all(&images).expect("mkdir");
                fs::write(images.join("core-1.img"), "image").expect("write");
                UnitSnapshot {
                    unit: (*unit).to_string(),
                    images_dir: format!("{}/images", unit_dir_name(unit)),
                    main_pid: 550,
                    pids: vec![550],
                    thread_ids: vec![551],
                    exec_start: vec!["/bin/true".into()],
                    connections: vec![],
                    journal_socket_inodes: vec![],
                    pid_file: None,
                    mount_sandbox: None,
                    shm_files: vec![],
                    frozen_ms: 1,
                    images: crate::manifest::compute_digests(&images).expect("digests"),
                }
            })
            .collect();
        Manifest {
            format_version: FORMAT_VERSION,
            transaction_id: id.into(),
            created_unix: 1,
            source_boot_id: BOOT_A.into(),
            source_kernel: "6.12.117+deb13-amd64".into(),
            target_kernel: TARGET.into(),
            units: snapshots,
            restart_units: vec![],
        }
        .write_in(&dir)
        .expect("manifest");
        dir
    }

    fn cmdline(id: &str) -> String {
        format!("root=/dev/vda rw seamless_reboot.transaction={id}")
    }

    #[test]
    fn an_ordinary_boot_restores_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        transaction(tmp.path(), "t1-1", &["a.service"]);
        assert_eq!(
            decide("root=/dev/vda rw", tmp.path(), BOOT_B, TARGET),
            Decision::NoMarker
        );
    }

    #[test]
    fn the_named_transition_restores_its_units() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service"]);
        assert_eq!(
            decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
            Decision::Restore {
                transaction_dir: dir,
                units: vec!["a.service".into(), "b.service".into()],
                restart_units: vec![],
            }
        );
    }

    #[test]
    fn units_left_to_a_restart_are_started_without_a_restore() {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("generator");
        fs::create_dir_all(&out).expect("mkdir");
        let decision = Decision::Restore {
            transaction_dir: tmp.path().join("t1-1"),
            units: vec!["a.service".into()],
            restart_units: vec!["r.service".into()],
        };
        write_generated(&out, &decision, Path::new("/usr/bin/seamless-reboot")).expect("writes");
        assert!(
            out.join("multi-user.target.wants/r.service")
                .symlink_metadata()
                .is_ok()
        );
        assert!(!out.join("r.service.d").exists(), "no restore drop-in");
        assert!(out.join("a.service.d").join(GENERATED_DROPIN).exists());
    }

    #[test]
    fn wrong_kernel_same_boot_missing_or_corrupt_snapshots_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
        let refused = |d: Decision| match d {
            Decision::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let why = refused(decide(
            &cmdline("t1-1"),
            tmp.path(),
            BOOT_B,
            "6.12.117+deb13-amd64",
        ));
        assert!(why.contains(TARGET), "{why}");
        refused(decide(&cmdline("t1-1"), tmp.path(), BOOT_A, TARGET));
        refused(decide(&cmdline("t9-9"), tmp.path(), BOOT_B, TARGET));
        let manifest = dir.join(crate::manifest::MANIFEST_FILE);
        let mut bytes = fs::read(&manifest).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&manifest, bytes).expect("write");
        let why = refused(decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET));
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn status_says_why_a_snapshot_was_not_restored() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
        let manifest = Manifest::read_from(&dir).expect("manifest");
        let reason = |cmdline: &str, boot: &str, release: &str| {
            not_restored_reason(&dir, &manifest, cmdline, boot, release)
        };
        // A cold boot, or the reset after a kernel that did not boot.
        let cold = reason("root=/dev/vda ro", BOOT_B, "6.12.117+deb13-amd64").expect("cold");
        assert!(
            cold.contains("was not started by the update's kexec")
                && cold.contains("kernel 6.12.117+deb13-amd64")
                && cold.contains("never restored"),
            "{cold}"
        );
        // Still the boot that checkpointed it.
        let same = reason("root=/dev/vda", BOOT_A, "6.12.117+deb13-amd64").expect("same boot");
        assert!(same.contains("has not happened"), "{same}");
        // The kexec, but into another kernel than planned.
        let wrong = reason(&cmdline("t1-1"), BOOT_B, "6.1.0").expect("wrong kernel");
        assert!(wrong.starts_with("not restored in this boot:"), "{wrong}");
        assert!(wrong.contains(TARGET), "{wrong}");
        // The update's own kexec: its restores are under way.
        assert_eq!(reason(&cmdline("t1-1"), BOOT_B, TARGET), None);
    }

    #[test]
    fn a_snapshot_claimed_by_another_boot_never_restores_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
        crate::manifest::claim(&dir, BOOT_B).expect("first claim");
        // The claiming boot itself still restores (e.g. a daemon-reload).
        assert!(matches!(
            decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
            Decision::Restore { .. }
        ));
        let later = "33333333-3333-3333-3333-333333333333";
        assert!(matches!(
            decide(&cmdline("t1-1"), tmp.path(), later, TARGET),
            Decision::Refused(why) if why.contains("already consumed")
        ));
    }

    #[test]
    fn units_with_an_outcome_are_not_generated_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service"]);
        write_outcome(
            &dir,
            &UnitOutcome {
                unit: "a.service".into(),
                outcome: OutcomeKind::Restored,
                detail: String::new(),
                recorded_unix: 2,
                duration_ms: 1,
                downtime_ms: None,
            },
        )
        .expect("outcome");
        assert!(matches!(
            decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
            Decision::Restore { units, .. } if units == vec!["b.service".to_string()]
        ));
    }

    #[test]
    fn generated_files_hold_before_the_network_and_restore_each_unit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
        let out = tmp.path().join("generator");
        fs::create_dir_all(&out).expect("mkdir");
        let decision = decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET);
        write_generated(&out, &decision, Path::new("/usr/bin/seamless-reboot")).expect("writes");
        let hold = fs::read_to_string(out.join(HOLD_UNIT)).expect("hold unit");
        assert!(hold.contains("Before=network-pre.target"), "{hold}");
        assert!(hold.contains("DefaultDependencies=no"), "{hold}");
        // Ready only once every connection is on hold and the pids reserved.
        assert!(hold.contains("Type=notify"), "{hold}");
        assert!(hold.contains("RemainAfterExit=yes"), "{hold}");
        assert!(
            hold.contains("After=local-fs.target systemd-sysctl.service nftables.service"),
            "{hold}"
        );
        assert!(
            hold.contains(&format!(
                "ExecStart=/usr/bin/seamless-reboot hold {}",
                dir.display()
            )),
            "{hold}"
        );
        assert!(
            out.join("sysinit.target.wants")
                .join(HOLD_UNIT)
                .symlink_metadata()
                .is_ok()
        );
        let dropin =
            fs::read_to_string(out.join("a.service.d").join(GENERATED_DROPIN)).expect("drop-in");
        assert!(dropin.contains("Type=forking"), "{dropin}");
        assert!(dropin.contains(&format!("After={HOLD_UNIT}")), "{dropin}");
        assert!(
            out.join("multi-user.target.wants/a.service")
                .symlink_metadata()
                .is_ok()
        );
        // After every restore, whatever its result: hand the units back to
        // their own configuration and cold-start those not restored.
        let finish = fs::read_to_string(out.join(FINISH_UNIT)).expect("finish unit");
        assert!(
            finish.contains(&format!("After={HOLD_UNIT} a.service\n")),
            "{finish}"
        );
        assert!(finish.contains("Type=oneshot"), "{finish}");
        assert!(
            finish.contains(&format!(
                "ExecStart=/usr/bin/seamless-reboot finish-restore {}",
                dir.display()
            )),
            "{finish}"
        );
        assert!(
            out.join("multi-user.target.wants")
                .join(FINISH_UNIT)
                .symlink_metadata()
                .is_ok()
        );

        let empty = tmp.path().join("ordinary");
        fs::create_dir_all(&empty).expect("mkdir");
        write_generated(
            &empty,
            &Decision::NoMarker,
            Path::new("/usr/bin/seamless-reboot"),
        )
        .expect("writes");
        assert_eq!(
            fs::read_dir(&empty).expect("list").count(),
            0,
            "an ordinary boot gets nothing"
        );
    }

    #[test]
    fn finds_the_private_directory_systemd_made_for_the_unit_in_this_boot() {
        let tmp = tempfile::tempdir().expect("tmp");
        let boot = "d08f7635-f321-4e1f-9ac8-2a04c1601810";
        let this = "systemd-private-d08f7635f3214e1f9ac82a04c1601810";
        for dir in [
            format!("{this}-memcached.service-AAAAAA/tmp"),
            format!("{this}-memcached.service.d-BBBBBB/tmp"),
            "systemd-private-0123456789abcdef0123456789abcdef-memcached.service-CCCCCC/tmp"
                .to_string(),
            format!("{this}-other.service-DDDDDD/tmp"),
        ] {
            fs::create_dir_all(tmp.path().join(dir)).expect("mkdir");
        }
        assert_eq!(
            private_dir_of(tmp.path(), boot, "memcached.service").expect("found"),
            tmp.path()
                .join(format!("{this}-memcached.service-AAAAAA/tmp"))
        );
        let err = private_dir_of(tmp.path(), boot, "redis.service").expect_err("none");
        assert!(
            format!("{err:#}").contains("made no private directory"),
            "{err:#}"
        );
    }

    #[test]
    fn images_are_wiped_once_a_unit_is_restored_or_cold_started_but_kept_when_it_failed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service", "c.service"]);
        let manifest = Manifest::read_from(&dir).expect("manifest");
        for (unit, outcome) in [
            ("a.service", OutcomeKind::Restored),
            ("b.service", OutcomeKind::ColdStarted),
            ("c.service", OutcomeKind::Failed),
        ] {
            fs::write(
                dir.join(unit_dir_name(unit)).join("images/restore.log"),
                "criu said things",
            )
            .expect("log");
            write_outcome(
                &dir,
                &UnitOutcome {
                    unit: unit.into(),
                    outcome,
                    detail: String::new(),
                    recorded_unix: 2,
                    duration_ms: 1,
                    downtime_ms: None,
                },
            )
            .expect("outcome");
        }
        wipe_images(&dir, &manifest).expect("wipes");
        let left = |unit: &str| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir.join(unit_dir_name(unit)).join("images"))
                .expect("images dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(left("a.service"), vec!["restore.log"]);
        assert_eq!(left("b.service"), vec!["restore.log"]);
        assert_eq!(left("c.service"), vec!["core-1.img", "restore.log"]);
        // The manifest and the outcomes stay for `status`.
        assert!(Manifest::read_from(&dir).is_ok());
        assert_eq!(read_outcomes(&dir).expect("outcomes").len(), 3);
    }

    #[test]
    fn hold_rule_tables_are_found() {
        let rules = "table inet CRIU-c05e4813-1efc-452d-83 {\n\tset conns4 {\n\t}\n}\ntable inet CRIU-x {\n}\n";
        assert_eq!(
            tables_in_rules(rules),
            vec!["CRIU-c05e4813-1efc-452d-83", "CRIU-x"]
        );
    }
}
