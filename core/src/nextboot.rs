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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::criu::{CgroupMode, InheritFd, Notification, RestoreOptions, scripts};
use crate::inventory::shared_memory::{SHM_ARCHIVE, SHM_DIR};
use crate::kexec::marker_from_cmdline;
use crate::layout::TransactionDir;
use crate::manifest::{
    Manifest, OutcomeKind, UnitOutcome, UnitSnapshot, read_claim, read_outcomes, verify_digests,
};
use crate::netqueue::Verdict;
use crate::transaction::{pid_file, restore_dropin};

pub mod hold;
pub mod system;

use hold::Request;
pub use system::{LinuxNextBoot, NextBootSystem};

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
        /// The snapshot could not be read yet (its filesystem is mounted
        /// later in the boot, as `/var` on its own filesystem is): the
        /// units are those the command line names, and the hold checks the
        /// snapshot once it is mounted.
        unverified: bool,
    },
}

/// Decides what this boot restores, in milliseconds: it reads the
/// command line and, when it can, the manifest (no image is hashed here;
/// the restore verifies its own images). Pure apart from reading the
/// transaction directory, so it is tested on temp dirs.
pub fn decide(cmdline: &str, image_root: &Path, boot_id: &str, release: &str) -> Decision {
    let Some(id) = marker_from_cmdline(cmdline) else {
        return Decision::NoMarker;
    };
    let Ok(valid_id) = crate::kexec::TransactionId::new(&id) else {
        return Decision::Refused(format!("{id:?} is not a transaction id"));
    };
    let layout = TransactionDir::in_store(image_root, &valid_id);
    let dir = layout.path().to_path_buf();
    if !layout.manifest_file().exists() {
        // Generators run before the filesystems of /etc/fstab are mounted.
        let units = crate::kexec::units_from_cmdline(cmdline);
        if units.is_empty() {
            return Decision::Refused(format!(
                "{} has no manifest and the command line names no unit",
                dir.display()
            ));
        }
        return Decision::Restore {
            transaction_dir: dir,
            units,
            restart_units: Vec::new(),
            unverified: true,
        };
    }
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
        unverified: false,
    }
}

/// Where the finishing unit notes, for the rest of the boot, which
/// transaction it finished (see [`generator_decision`]).
pub const FINISHED_FILE: &str = "restore-finished";

/// The generator's decision in a boot whose runtime directory
/// (`/run/seamless-reboot`) is `run_dir`: [`decide`], unless the finishing
/// unit already ran for this transaction in this boot. A reload after it
/// (its own, or any later one) then generates nothing: every unit runs
/// with its own configuration, whether or not this boot restored anything.
pub fn generator_decision(
    cmdline: &str,
    image_root: &Path,
    boot_id: &str,
    release: &str,
    run_dir: &Path,
) -> Decision {
    let finished = fs::read_to_string(run_dir.join(FINISHED_FILE)).unwrap_or_default();
    match marker_from_cmdline(cmdline) {
        Some(id) if finished.trim() == id => Decision::Refused(format!(
            "transaction {id} was finished earlier in this boot"
        )),
        _ => decide(cmdline, image_root, boot_id, release),
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
        ..
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
         # The snapshot may be on a filesystem of its own (/var).\n\
         RequiresMountsFor={}\n\
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
        transaction_dir.display(),
        binary.display(),
        transaction_dir.display()
    );
    fs::write(out_dir.join(HOLD_UNIT), hold)?;
    link_wants(out_dir, "sysinit.target", HOLD_UNIT)?;
    for unit in units {
        let dropin_dir = out_dir.join(format!("{unit}.d"));
        fs::create_dir_all(&dropin_dir)?;
        let snapshot_dir = TransactionDir::at(transaction_dir)?.unit_dir(unit);
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
         RequiresMountsFor={}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         TimeoutStartSec=infinity\n\
         ExecStart={} finish-restore {}\n",
        units.join(" "),
        transaction_dir.display(),
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
    /// next boot's: no hold claimed the snapshot, and its outcome record
    /// serves nothing afterwards (the undo removes the transaction
    /// directory), so failing to write it, as in an image store that filled
    /// up, does not fail a restore that worked. In the next boot the record
    /// is what keeps a later start of the unit from restoring the same
    /// snapshot twice, so there it must be written.
    pub in_place: bool,
}

/// Whether this boot may restore from `transaction_dir`: the hold claims the
/// snapshot for this boot once it has checked it (see [`hold::run`]); a
/// snapshot it did not claim (it refused it, or it could not run, or
/// another boot consumed the snapshot) is never restored here.
pub fn claimed_by_this_boot(transaction_dir: &Path, boot_id: &str) -> Result<()> {
    match read_claim(transaction_dir)? {
        Some(claim) if claim.boot_id == boot_id => Ok(()),
        Some(claim) => bail!("the snapshot was consumed by boot {}", claim.boot_id),
        None => bail!(
            "the hold did not claim the snapshot for this boot (`journalctl -b -u {HOLD_UNIT}` \
             says why)"
        ),
    }
}

/// The restore helper, run by systemd (privileged) as the unit's forking
/// `ExecStart`: restores the unit's snapshot, writes the main pid for
/// systemd and exits. When the restore is impossible it records why and
/// fails, so the unit's start fails; the unit is then started with its own
/// configuration by [`finish_restore`] (or, for an in-place restore on the
/// old kernel, by the transaction's undo).
pub fn restore_unit(
    system: &dyn NextBootSystem,
    snapshot_dir: &Path,
    unit: &str,
    settings: &RestoreSettings,
) -> Result<()> {
    let layout = TransactionDir::of_snapshot(snapshot_dir)?;
    let transaction_dir = layout.path();
    let started = Instant::now();
    let snapshot = load_snapshot(&layout, unit)?;
    let earlier = read_outcomes(transaction_dir)
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.unit == unit);
    if let Some(earlier) = earlier {
        // A restart before systemd was reloaded: the snapshot is used up
        // and this drop-in is stale.
        bail!(
            "{unit} already has an outcome from this snapshot in this boot ({}: {}); its \
             restore drop-in is stale: run `systemctl daemon-reload`, then start it again",
            earlier.outcome.as_str(),
            earlier.detail
        );
    }
    if !settings.in_place {
        // Nothing is recorded: the snapshot may be another boot's.
        claimed_by_this_boot(transaction_dir, &system.boot_id()?)
            .with_context(|| format!("{unit} is not restored"))?;
    }
    let hold = system.hold_running();
    let attempt = restore_with_criu(system, transaction_dir, &snapshot, settings, hold);
    // Restored or not, the unit's connections leave the hold now: the held
    // packets go to the restored socket, or, with no socket for them, this
    // kernel answers them with a reset so the peers learn at once.
    release_connections(system, &layout, unit, hold);
    match attempt {
        Ok(pid) => {
            system.write_pid_file(&pid_file(unit), pid)?;
            // The unit's own pid file, which its reload and stop commands
            // may read, is gone with the old boot's /run.
            if let Some(own) = &snapshot.pid_file {
                system.write_pid_file(Path::new(own), pid)?;
            }
            let recorded = record(
                system,
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
                system,
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

/// `finish-restore`, run once every restored unit's start job has ended:
/// gives each unit an outcome, reloads systemd (so the generator leaves out
/// the restore drop-ins: later restarts run the units' own commands with
/// their own restart policy), then starts with its own configuration every
/// unit that is not running, and the units the update left to this boot
/// (their policy: restart). Fails if any unit could not be started.
///
/// A snapshot this boot did not claim is left as it is (no record, no
/// wipe: it may be another boot's); its units are only started.
pub fn finish_restore(system: &dyn NextBootSystem, transaction_dir: &Path) -> Result<()> {
    let manifest = Manifest::read_from(transaction_dir)?;
    let claimed = claimed_by_this_boot(transaction_dir, &system.boot_id()?);
    if let Err(why) = &claimed {
        tracing::warn!(
            "nothing was restored from {}: {why:#}",
            transaction_dir.display()
        );
    }
    let outcomes = read_outcomes(transaction_dir).unwrap_or_default();
    let mut cold = Vec::new();
    for snapshot in &manifest.units {
        let unit = &snapshot.unit;
        let state = system.unit_active_state(unit);
        let outcome = outcomes.iter().find(|o| &o.unit == unit);
        if state == "active" {
            if outcome.is_none() && claimed.is_ok() {
                tracing::warn!("{unit} is active but its restore recorded nothing");
            }
            continue;
        }
        let detail = match (outcome, &claimed) {
            (_, Err(why)) => format!("not restored: {why:#}"),
            (Some(outcome), Ok(())) => outcome.detail.clone(),
            (None, Ok(())) => {
                let detail = format!("its restore did not finish (the unit is {state})");
                record(
                    system,
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
    system.mark_finished(transaction_dir)?;
    system.daemon_reload()?;
    let mut failed = Vec::new();
    for (snapshot, detail) in cold {
        let unit = &snapshot.unit;
        let started = Instant::now();
        let (outcome, detail) = match system.start_unit(unit) {
            Ok(()) => {
                tracing::info!("{unit}: started with its own command ({detail})");
                (OutcomeKind::ColdStarted, detail)
            }
            Err(e) => {
                failed.push(format!("{unit}: {e:#}"));
                (OutcomeKind::Failed, format!("{detail}; cold start: {e:#}"))
            }
        };
        if claimed.is_ok() {
            record(
                system,
                transaction_dir,
                unit,
                outcome,
                detail,
                started,
                snapshot,
            )?;
        }
    }
    // Left to this boot by their policy; the generator made them wanted,
    // unless it could not read the manifest then (its filesystem was not
    // mounted yet).
    for unit in &manifest.restart_units {
        if system.unit_active_state(unit) != "active"
            && let Err(e) = system.start_unit(unit)
        {
            failed.push(format!("{unit}: {e:#}"));
        }
    }
    if claimed.is_ok() {
        // The old boot's undo journal is obsolete: this boot took the units
        // over. The images hold the services' memory (keys, passwords,
        // sessions): once a unit is restored or started afresh they serve
        // nothing more.
        crate::transaction::journal::remove_journal(transaction_dir)?;
        wipe_images(transaction_dir, &manifest)?;
    }
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

fn load_snapshot(layout: &TransactionDir, unit: &str) -> Result<UnitSnapshot> {
    // The manifest (checksummed) when it exists; the unit's own record when
    // undoing a transaction that failed before its manifest was written.
    if layout.manifest_file().exists() {
        let manifest = Manifest::read_from(layout.path())?;
        return manifest
            .units
            .into_iter()
            .find(|u| u.unit == unit)
            .with_context(|| {
                format!(
                    "{unit} is not in the manifest of {}",
                    layout.path().display()
                )
            });
    }
    let path = layout.unit_record(unit);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not parse", path.display()))
}

fn restore_with_criu(
    system: &dyn NextBootSystem,
    transaction_dir: &Path,
    snapshot: &UnitSnapshot,
    settings: &RestoreSettings,
    hold: bool,
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
        // Refusing to overwrite a file this boot made under the same name.
        system
            .extract_archive(
                &images.join(SHM_ARCHIVE),
                Path::new(SHM_DIR),
                &["--keep-old-files"],
            )
            .with_context(|| format!("cannot put the unit's files back into {SHM_DIR}"))?;
    }
    if let Some(sandbox) = &snapshot.mount_sandbox {
        let boot_id = system.boot_id()?;
        for private in &sandbox.private_dirs {
            let target = private_dir_of(Path::new(&private.mountpoint), &boot_id, &snapshot.unit)?;
            let archive = images.join(private.archive_name());
            system
                .extract_archive(&archive, &target, &[])
                .with_context(|| {
                    format!(
                        "cannot fill {} from {}",
                        target.display(),
                        archive.display()
                    )
                })?;
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
            if hold && let Err(e) = system.ask_hold(&Request::FreePids(snapshot.unit.clone())) {
                tracing::warn!("{e:#}");
            }
            let taken: Vec<String> = hold::needed_pids(snapshot)
                .into_iter()
                .filter(|&pid| system.pid_in_use(pid))
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
    let mut restore = || system.criu_restore(&options, settings.criu_timeout, &mut notify);
    let restored = if settings.disable_window_scaling {
        system.with_window_scaling_off(&mut restore)
    } else {
        restore()
    };
    if let Some(cause) = refused {
        return Err(cause);
    }
    restored.with_context(|| {
        format!(
            "CRIU could not restore (log: {}/restore.log)",
            images.display()
        )
    })
}

/// The private directory systemd made for `unit` below `parent` (`/tmp` or
/// `/var/tmp`) in the boot `boot_id` (as the kernel shows it, with dashes):
/// `<parent>/systemd-private-<boot id>-<unit>-*/tmp`, the newest if an
/// earlier start's is still there.
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

/// `release-unit`, run when the unit stops (or its start failed): makes
/// sure the hold no longer holds its connections. Normally the restore
/// helper released them already, and this finds nothing to do.
pub fn release_unit(system: &dyn NextBootSystem, snapshot_dir: &Path, unit: &str) -> Result<()> {
    let layout = TransactionDir::of_snapshot(snapshot_dir)?;
    let hold = system.hold_running();
    if hold
        && system
            .ask_hold(&Request::Holds(unit.to_string()))
            .is_ok_and(|reply| reply == "no")
    {
        return Ok(());
    }
    release_connections(system, &layout, unit, hold);
    Ok(())
}

/// Gives the unit's connections to this kernel: through the hold process
/// when there is one (which re-injects or drops what it queued), else by
/// deleting the tables that hold them (the hold's, if it died, and CRIU's
/// own lock of an in-place restore), so that nothing stays blocked.
fn release_connections(
    system: &dyn NextBootSystem,
    layout: &TransactionDir,
    unit: &str,
    hold: bool,
) {
    if hold {
        match system.ask_hold(&Request::Release(unit.to_string(), Verdict::Accept)) {
            Ok(reply) => {
                tracing::info!("{unit}: connections released ({reply})");
                return;
            }
            Err(e) => tracing::warn!("{unit}: {e:#}; deleting its hold rules instead"),
        }
    }
    if let Ok(manifest) = Manifest::read_from(layout.path())
        && let Some(index) = manifest.units.iter().position(|u| u.unit == unit)
        && system.nft_table_exists(hold::HOLD_TABLE)
        && let Err(e) = system.nft_apply(&hold::release_rules(index))
    {
        tracing::warn!("{unit}: cannot release its connections: {e:#}");
    }
    // This unit's CRIU lock tables: its peers get a prompt reset instead of
    // waiting for a connection that will not come back.
    let text = fs::read_to_string(layout.hold_rules(unit)).unwrap_or_default();
    for table in tables_in_rules(&text) {
        if system.nft_table_exists(&table)
            && let Err(e) = system.nft_delete_table(&table)
        {
            tracing::warn!("{unit}: cannot delete CRIU's lock table {table}: {e:#}");
        }
    }
}

fn record(
    system: &dyn NextBootSystem,
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
    system.write_outcome(
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
    )
}

#[cfg(test)]
mod branch_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
pub(crate) mod tests;
