//! The undo log, kept on disk as well as in memory.
//!
//! Between the first checkpoint and the hand-over, the checkpointed services
//! exist only as images, and the undo log is what brings them back. Kept
//! only in the daemon's memory it would die with the daemon (a crash, the
//! OOM killer, a SIGKILL) and leave those services down, with their guard
//! drop-ins, CRIU's lock tables and a staged kernel behind. So the
//! transaction keeps it in its directory too ([`JOURNAL_FILE`], replaced
//! atomically and fsynced after every change): an undo step is on disk
//! before the step after it starts, and leaves the journal once undone.
//! [`recover`] replays what a dead transaction left, exactly as its own
//! rollback would have; the daemon calls it when it starts (systemd
//! restarts it after a crash), and so does `seamless-reboot recover`.
//!
//! Right before the hand-over the transaction also starts a watcher
//! ([`watch_kexec`]) in a unit the shutdown does not stop: systemd may still
//! drop its kexec job without a kexec (cancelled, or a unit it needed
//! failed), and by then the daemon has been stopped with everything else.
//!
//! A running transaction holds a lock on its directory, so a replay never
//! runs beside it. A journal written in an earlier boot is stale (that boot
//! ended, by the kexec or otherwise, and the units started again as the new
//! boot decided) and is removed unread. While systemd has a kexec job, the
//! machine is going down as planned, and nothing is replayed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// The journal's file name in the transaction directory.
pub const JOURNAL_FILE: &str = "undo.json";

/// Version of the journal's format; a journal of another version is not
/// replayed (it is reported instead).
const JOURNAL_FORMAT: u32 = 1;

/// One thing to undo, in the order the transaction did them (undone in
/// reverse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub(crate) enum Undo {
    UnloadKernel,
    RemoveDropin {
        unit: String,
        name: String,
    },
    RestoreInPlace {
        unit: String,
        snapshot_dir: PathBuf,
    },
    /// Before each checkpoint: whatever happened to it (CRIU killed or
    /// failing halfway), the unit ends running and no lock table of CRIU's
    /// is left behind (`lock_tables_before`: the CRIU tables there were).
    KeepRunning {
        unit: String,
        lock_tables_before: Vec<String>,
    },
    /// Removes the transaction directory, but for CRIU's logs, unless an
    /// undo step failed (the images may be the only copy of a unit's state).
    RemoveDir {
        dir: PathBuf,
    },
}

/// What the journal file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalFile {
    format_version: u32,
    transaction_id: String,
    /// The boot the transaction ran in; only that boot replays it.
    boot_id: String,
    /// The `seamless-reboot` binary the in-place restores run.
    restore_binary: PathBuf,
    /// systemd accepted the kexec request.
    handed_over: bool,
    /// An undo step failed: the snapshot stays (it may be the only copy of
    /// a unit's state).
    keep_snapshot: bool,
    /// What remains to undo, oldest first.
    steps: Vec<Undo>,
}

/// The undo log of one transaction, mirrored to its journal file, with the
/// transaction directory locked for as long as it lives.
#[derive(Debug)]
pub(crate) struct UndoLog {
    dir: PathBuf,
    file: JournalFile,
    /// Whether the journal file is to be kept up to date (false once a
    /// write failed: the error was reported, and the log goes on in memory).
    journal_ok: bool,
    _lock: Flock<File>,
}

impl UndoLog {
    /// Creates `dir` and its journal, whose first step removes `dir` again,
    /// and locks it. Nothing else is changed yet.
    pub(crate) fn create(
        dir: &Path,
        transaction_id: &str,
        boot_id: &str,
        restore_binary: &Path,
    ) -> Result<Self> {
        // Private from creation: the snapshots hold the services' memory.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let lock = lock_dir(dir)?
            .with_context(|| format!("{} is in use by another update", dir.display()))?;
        let log = UndoLog {
            dir: dir.to_owned(),
            file: JournalFile {
                format_version: JOURNAL_FORMAT,
                transaction_id: transaction_id.to_owned(),
                boot_id: boot_id.to_owned(),
                restore_binary: restore_binary.to_owned(),
                handed_over: false,
                keep_snapshot: false,
                steps: vec![Undo::RemoveDir {
                    dir: dir.to_owned(),
                }],
            },
            journal_ok: true,
            _lock: lock,
        };
        if let Err(e) = log.write() {
            let _ = fs::remove_dir_all(dir);
            return Err(e);
        }
        Ok(log)
    }

    /// Adds a step to undo; it is on disk when this returns `Ok`.
    pub(crate) fn push(&mut self, step: Undo) -> Result<()> {
        self.file.steps.push(step);
        self.write()
    }

    /// Records that systemd accepted the kexec request.
    pub(crate) fn handed_over(&mut self) -> Result<()> {
        self.file.handed_over = true;
        self.write()
    }

    /// The `seamless-reboot` binary the in-place restores run.
    pub(crate) fn restore_binary(&self) -> &Path {
        &self.file.restore_binary
    }

    /// The newest step still to undo.
    pub(crate) fn last(&self) -> Option<&Undo> {
        self.file.steps.last()
    }

    /// Whether the snapshot must be kept (an undo step failed).
    pub(crate) fn keep_snapshot(&self) -> bool {
        self.file.keep_snapshot
    }

    /// Marks that an undo step failed, so the snapshot is kept.
    pub(crate) fn set_keep_snapshot(&mut self) {
        self.file.keep_snapshot = true;
    }

    /// Drops the newest step, undone (or tried). With nothing left to
    /// undo, the journal file goes.
    pub(crate) fn pop(&mut self) -> Result<()> {
        self.file.steps.pop();
        if self.file.steps.is_empty() {
            return remove_journal(&self.dir);
        }
        self.write()
    }

    fn write(&self) -> Result<()> {
        if !self.journal_ok {
            return Ok(());
        }
        let bytes =
            serde_json::to_vec_pretty(&self.file).context("cannot encode the undo journal")?;
        crate::manifest::atomic::write_atomic(
            &self.dir,
            JOURNAL_FILE,
            &format!("{JOURNAL_FILE}.tmp"),
            &bytes,
        )
        .map_err(|(path, what, source)| {
            anyhow::anyhow!(
                "cannot record the undo journal: {what} {}: {source}",
                path.display()
            )
        })
    }

    /// Stops mirroring to disk after a failed write (the failure was
    /// reported; a retry would only repeat it).
    pub(crate) fn stop_journal(&mut self) {
        self.journal_ok = false;
    }
}

/// Locks `dir` for this process; `None` if another holds it.
fn lock_dir(dir: &Path) -> Result<Option<Flock<File>>> {
    let handle = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(anyhow::anyhow!("cannot lock {}: {errno}", dir.display())),
    }
}

/// What [`recover`] did with one transaction directory holding a journal.
#[derive(Debug)]
pub enum Recovery {
    /// The journal was replayed: `errors` is what could not be undone
    /// (empty: everything was).
    Replayed {
        transaction_dir: PathBuf,
        transaction_id: String,
        handed_over: bool,
        errors: Vec<anyhow::Error>,
    },
    /// The journal was written in another boot and was removed unread.
    Stale { transaction_dir: PathBuf },
    /// A running update holds the directory: left to it.
    InUse { transaction_dir: PathBuf },
    /// The journal could not be read or replayed.
    Unreadable {
        transaction_dir: PathBuf,
        error: anyhow::Error,
    },
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Replayed {
                transaction_dir,
                transaction_id,
                handed_over,
                errors,
            } => {
                let why = if *handed_over {
                    "it had handed over to systemd, but the kexec job ended without a kexec"
                } else {
                    "its daemon stopped before it finished"
                };
                write!(
                    f,
                    "update {transaction_id} ({}) was undone because {why}",
                    transaction_dir.display()
                )?;
                if errors.is_empty() {
                    write!(f, ": everything was undone")
                } else {
                    let list: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
                    write!(f, ", but undoing it failed: {}", list.join("; "))
                }
            }
            Recovery::Stale { transaction_dir } => write!(
                f,
                "{}: the undo journal of an earlier boot was removed",
                transaction_dir.display()
            ),
            Recovery::InUse { transaction_dir } => write!(
                f,
                "{}: in use by a running update, left to it",
                transaction_dir.display()
            ),
            Recovery::Unreadable {
                transaction_dir,
                error,
            } => write!(
                f,
                "{}: cannot replay its undo journal ({error:#}); the units it names may be down: \
                 check them with systemctl",
                transaction_dir.display()
            ),
        }
    }
}

impl Recovery {
    /// Whether this needs the operator (something could not be undone or
    /// read).
    pub fn is_failure(&self) -> bool {
        match self {
            Recovery::Replayed { errors, .. } => !errors.is_empty(),
            Recovery::Unreadable { .. } => true,
            Recovery::Stale { .. } | Recovery::InUse { .. } => false,
        }
    }
}

/// Replays the undo journals that updates of this boot left in `image_dir`
/// (their daemon died, or the kexec did not happen), newest last. Does
/// nothing while systemd has a kexec job: the machine is then going down as
/// planned.
pub fn recover(platform: &dyn Platform, image_dir: &Path) -> Result<Vec<Recovery>> {
    let mut dirs: Vec<PathBuf> = match fs::read_dir(image_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(JOURNAL_FILE).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list {}", image_dir.display()));
        }
    };
    if dirs.is_empty() || kexec_under_way(platform)? {
        return Ok(Vec::new());
    }
    dirs.sort();
    let (boot_id, _) = platform.boot_id_and_release()?;
    Ok(dirs
        .iter()
        .map(|dir| recover_one(platform, dir, &boot_id))
        .collect())
}

fn kexec_under_way(platform: &dyn Platform) -> Result<bool> {
    let pending = platform.kexec_pending()?;
    if pending {
        tracing::info!("systemd is kexecing as an update asked: no undo journal is replayed");
    }
    Ok(pending)
}

/// How [`watch_kexec`] waits.
#[derive(Debug, Clone, Copy)]
pub struct KexecWatch {
    /// How often systemd's jobs are looked at.
    pub poll: Duration,
    /// How long the kexec job must have been gone, the machine still up,
    /// before the hand-over counts as failed.
    pub settle: Duration,
    /// How long the kexec job may take to appear at all (the
    /// configuration's `timeouts.kexec_s`).
    pub appear: Duration,
}

/// Watches one transaction's hand-over, from a unit started just before it
/// that the shutdown does not stop: while systemd has a kexec job the
/// machine is going down as planned, and this process ends with it. If the
/// job goes away and the machine stays up (the job was cancelled, or a
/// unit it needed failed), or never appears, the transaction's journal is
/// replayed, so its units run again. Returns `None` when the journal went
/// away first (the transaction was undone in the daemon).
pub fn watch_kexec(
    platform: &dyn Platform,
    transaction_dir: &Path,
    watch: KexecWatch,
) -> Result<Option<Recovery>> {
    let started = Instant::now();
    let mut seen = false;
    let mut gone_since: Option<Instant> = None;
    loop {
        if !transaction_dir.join(JOURNAL_FILE).exists() {
            return Ok(None);
        }
        let pending = match platform.kexec_pending() {
            Ok(pending) => pending,
            // Unknown is not "gone" (PID 1 stops answering near the end
            // of a shutdown): never undo on a guess.
            Err(e) => {
                tracing::warn!("cannot list systemd's jobs: {e:#}");
                gone_since = None;
                std::thread::sleep(watch.poll);
                continue;
            }
        };
        if pending {
            if !seen {
                tracing::info!("systemd's kexec job is there: the machine is going down");
            }
            seen = true;
            gone_since = None;
        } else {
            let since = *gone_since.get_or_insert_with(Instant::now);
            let failed = if seen {
                since.elapsed() >= watch.settle
            } else {
                started.elapsed() >= watch.appear
            };
            if failed {
                let (boot_id, _) = platform.boot_id_and_release()?;
                match recover_one(platform, transaction_dir, &boot_id) {
                    // The daemon is undoing it itself (the hand-over
                    // failed there): wait for the journal to go.
                    Recovery::InUse { .. } => {}
                    recovery => return Ok(Some(recovery)),
                }
            }
        }
        std::thread::sleep(watch.poll);
    }
}

fn recover_one(platform: &dyn Platform, dir: &Path, boot_id: &str) -> Recovery {
    let lock = match lock_dir(dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Recovery::InUse {
                transaction_dir: dir.to_owned(),
            };
        }
        Err(error) => {
            return Recovery::Unreadable {
                transaction_dir: dir.to_owned(),
                error,
            };
        }
    };
    let file = match read_journal(dir) {
        Ok(file) => file,
        Err(error) => {
            return Recovery::Unreadable {
                transaction_dir: dir.to_owned(),
                error,
            };
        }
    };
    if file.boot_id != boot_id {
        return match remove_journal(dir) {
            Ok(()) => Recovery::Stale {
                transaction_dir: dir.to_owned(),
            },
            Err(error) => Recovery::Unreadable {
                transaction_dir: dir.to_owned(),
                error,
            },
        };
    }
    let transaction_id = file.transaction_id.clone();
    let handed_over = file.handed_over;
    let mut log = UndoLog {
        dir: dir.to_owned(),
        file,
        journal_ok: true,
        _lock: lock,
    };
    let errors = super::rollback(platform, &mut log);
    Recovery::Replayed {
        transaction_dir: dir.to_owned(),
        transaction_id,
        handed_over,
        errors,
    }
}

fn read_journal(dir: &Path) -> Result<JournalFile> {
    let path = dir.join(JOURNAL_FILE);
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: JournalFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not an undo journal", path.display()))?;
    if file.format_version != JOURNAL_FORMAT {
        bail!(
            "{} has format version {}, this program reads {JOURNAL_FORMAT}",
            path.display(),
            file.format_version
        );
    }
    // Every path it names must be inside the transaction directory: the
    // replay removes and restores from them.
    for step in &file.steps {
        let named = match step {
            Undo::RestoreInPlace { snapshot_dir, .. } => Some(snapshot_dir),
            Undo::RemoveDir { dir: path } => Some(path),
            _ => None,
        };
        if let Some(named) = named
            && !named.starts_with(dir)
        {
            bail!(
                "{} names {}, outside its transaction directory",
                path.display(),
                named.display()
            );
        }
    }
    Ok(file)
}

/// Removes a transaction's journal if it has one: once nothing is left to
/// undo, when it is stale, and when the next boot took the transaction over
/// (its units are restored or started by that boot; nothing of the old
/// boot's undo applies any more).
pub fn remove_journal(transaction_dir: &Path) -> Result<()> {
    let path = transaction_dir.join(JOURNAL_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}
