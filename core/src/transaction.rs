//! The reboot transaction, top to bottom.
//!
//! ```text
//!  plan ──> load kernel ──> guard units ──> checkpoint unit 1..n ──> manifest ──> kexec
//!           (undo: unload)  (undo: remove   (undo: restore each        (undo:        │
//!                            drop-ins)       checkpointed unit in place) remove dir) point of
//!                                                                                   no return
//! ```
//!
//! Each step that changes the system pushes its undo onto a log before the
//! next step starts; when a step fails, the log is unwound in reverse and the
//! caller gets the cause together with anything that could not be undone.
//! Failing to load the kernel freezes nothing; a failed checkpoint restores
//! the units already checkpointed on the running kernel. Only the request to
//! systemd to kexec is final.
//!
//! The log is kept on disk as well ([`journal`]): if this process dies
//! halfway, or systemd drops the kexec job without a kexec after the
//! hand-over, a replay of the journal does what the rollback would have
//! done.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::inventory::UnitInventory;
use crate::kexec::{InitrdImage, KernelImage};
use crate::manifest::{Manifest, UnitSnapshot, compute_digests};
use crate::platform::{Platform, UnitStatus};
use journal::{Undo, UndoLog};
pub use problem::PlanProblem;
use seamless_reboot_config::UnitPolicy;
use std::collections::BTreeMap;
pub use step::{ProgressPercent, Step};

pub mod journal;
pub mod problem;
pub mod step;
pub use journal::{KexecWatch, Recovery, recover, watch_kexec};

/// The runtime drop-in that stops systemd from restarting a unit whose
/// process CRIU has just checkpointed (and so killed).
pub const HOLD_DROPIN: &str = "50-seamless-reboot-checkpoint.conf";

/// The guard [`HOLD_DROPIN`] puts on a unit about to be checkpointed. The
/// dump ends its processes, and systemd then stops the unit as it stops one
/// whose processes died: nothing may restart it, and its own stop commands
/// must not run against the state the restore needs (Debian's
/// `pg_ctlcluster stop` removes the data directory's `postmaster.pid`, and
/// the restored PostgreSQL shuts itself down when it finds it gone). Nor
/// may anyone else start it afresh meanwhile (an operator, or a target
/// started again after a cancelled kexec): that would throw its
/// checkpointed state away, so a start is skipped, saying why, until the
/// restore (in place, or in the next boot, where the guard is gone with
/// `/run`) takes the guard off.
pub const GUARD_DROPIN: &str = "[Service]\nRestart=no\nExecStop=\nExecStopPost=\n\
    ExecCondition=/bin/sh -c \"echo 'checkpointed by seamless-reboot: it comes back from its \
    checkpoint, not started afresh' >&2; exit 1\"\n";
/// The runtime drop-in that makes a unit restore itself from its snapshot.
pub const RESTORE_DROPIN: &str = "50-seamless-reboot-restore.conf";
pub use crate::layout::{HOLD_RULES_FILE, UNIT_SNAPSHOT_FILE, unit_dir_name};
/// Where a unit's images go inside its snapshot directory.
pub const IMAGES_SUBDIR: &str = "images";

/// A unit the plan will checkpoint.
#[derive(Debug, Clone)]
pub struct PlannedUnit {
    /// The name the caller gave (an alias, or without its suffix, maybe);
    /// `status.unit` is the unit's canonical name, which everything else uses.
    pub requested: String,
    pub status: UnitStatus,
    pub inventory: UnitInventory,
}

/// Everything decided before anything is changed.
#[derive(Debug)]
pub struct Plan {
    pub transaction_id: String,
    pub transaction_dir: PathBuf,
    pub kernel: KernelImage,
    pub initrd: Option<InitrdImage>,
    pub cmdline: String,
    pub source_boot_id: String,
    pub source_kernel: String,
    pub units: Vec<PlannedUnit>,
    /// Units the update leaves to the next boot, by their policy.
    pub left_out: Vec<LeftOut>,
    /// Path of the `seamless-reboot` binary the restore drop-ins run.
    pub restore_binary: PathBuf,
}

/// A requested unit the update does not checkpoint, by its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// Its canonical name (as given if systemd does not know it).
    pub unit: String,
    /// [`UnitPolicy::Restart`]: the next boot starts it; [`UnitPolicy::Skip`]:
    /// it starts again only if enabled.
    pub policy: UnitPolicy,
    /// Why it is not preserved.
    pub reason: String,
}

/// What a finished (handed over) transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointed {
    pub unit: String,
    pub frozen: Duration,
    pub connections: usize,
}

/// Progress callbacks, for the CLI and D-Bus.
pub trait Progress {
    fn step(&mut self, step: &Step);
}

impl<F: FnMut(&Step)> Progress for F {
    fn step(&mut self, step: &Step) {
        self(step)
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// The new kernel (a bzImage).
    pub kernel: PathBuf,
    /// Its initrd; found next to the kernel when not given.
    pub initrd: Option<PathBuf>,
    /// Kernel command line arguments added to (or replacing those of) the current one.
    pub append: Vec<String>,
    /// The units to preserve.
    pub units: Vec<String>,
    /// Accept a kernel older than the running one.
    pub allow_downgrade: bool,
    /// Filesystem types the image store must not be on (`fuse` also
    /// matches `fuse.sshfs`).
    pub forbidden_store_filesystems: Vec<String>,
    /// What to do with a unit (by canonical name) that cannot be preserved;
    /// [`UnitPolicy::Preserve`] for units not listed.
    pub policy: BTreeMap<String, UnitPolicy>,
}

/// Checks everything that can be checked before the system is touched and
/// decides the transaction. Returns every problem found, not just the first,
/// so a dry run tells the operator all that is wrong at once.
pub fn plan(
    platform: &dyn Platform,
    request: &UpdateRequest,
    image_root: &Path,
    restore_binary: &Path,
) -> Result<Plan, Vec<PlanProblem>> {
    let mut problems = Vec::new();
    let kernel = match crate::kexec::check_kernel_file(&request.kernel) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(e.into());
            None
        }
    };
    let initrd = kernel.as_ref().and_then(|k| {
        let choice = match &request.initrd {
            Some(path) => crate::kexec::InitrdChoice::Explicit(path.clone()),
            None => crate::kexec::InitrdChoice::Auto,
        };
        let boot_dir = request.kernel.parent().unwrap_or(Path::new("/boot"));
        match crate::kexec::resolve_initrd(k, &choice, boot_dir, crate::kexec::OwnerPolicy::ROOT) {
            Ok(i) => i,
            Err(e) => {
                problems.push(e.into());
                None
            }
        }
    });
    let (source_boot_id, source_kernel) = match platform.boot_id_and_release() {
        Ok(pair) => pair,
        Err(e) => {
            problems.push(PlanProblem::RunningSystem {
                message: format!("{e:#}"),
            });
            Default::default()
        }
    };
    if let Some(k) = &kernel {
        problems.extend(downgrade_problem(
            k.release(),
            &source_kernel,
            request.allow_downgrade,
        ));
    }
    let transaction_id = new_transaction_id();
    if request.units.is_empty() {
        problems.push(PlanProblem::NoUnits);
    }
    let (units, left_out) = plan_units(platform, &request.units, &request.policy, &mut problems);
    // The next boot learns from its command line which transaction it
    // completes and which units it restores.
    let cmdline = kernel.as_ref().and_then(|k| {
        let id = crate::kexec::TransactionId::new(&transaction_id).ok()?;
        let names: Vec<String> = units.iter().map(|u| u.status.unit.clone()).collect();
        let current = crate::kexec::cmdline::read_current_cmdline(Path::new("/proc/cmdline"))
            .map_err(|e| problems.push(e.into()))
            .ok()?;
        crate::kexec::BootMarker::new(id, &names)
            .and_then(|marker| {
                crate::kexec::build_next_cmdline(
                    &current,
                    &request.append,
                    &marker,
                    k.info().max_cmdline_len(),
                )
            })
            .map_err(|e| problems.push(e.into()))
            .ok()
    });
    if units.is_empty() && !left_out.is_empty() {
        problems.push(PlanProblem::NothingPreserved {
            left_out: left_out.len(),
        });
    }
    // The snapshots hold the services' memory: the store is root's alone.
    // (Missing, it is made 0700 with the first transaction.)
    match platform.owner_and_mode(image_root) {
        Ok(Some((uid, mode))) if uid != 0 || mode & 0o077 != 0 => {
            problems.push(PlanProblem::StoreNotPrivate {
                store: image_root.to_path_buf(),
                uid,
                mode,
            });
        }
        Ok(_) => {}
        Err(e) => problems.push(PlanProblem::Store {
            message: format!("{e:#}"),
        }),
    }
    if !request.forbidden_store_filesystems.is_empty() {
        match platform.filesystem_type(image_root) {
            Ok(fstype)
                if request.forbidden_store_filesystems.iter().any(|f| {
                    fstype == *f
                        || fstype
                            .strip_prefix(f.as_str())
                            .is_some_and(|r| r.starts_with('.'))
                }) =>
            {
                problems.push(PlanProblem::StoreFilesystemForbidden {
                    store: image_root.to_path_buf(),
                    fstype,
                });
            }
            Ok(_) => {}
            Err(e) => problems.push(PlanProblem::Store {
                message: format!("{e:#}"),
            }),
        }
    }
    if let Some(problem) = free_space_problem(platform, image_root, &units) {
        problems.push(problem);
    }
    match (kernel, cmdline, problems.is_empty()) {
        (Some(kernel), Some(cmdline), true) => Ok(Plan {
            transaction_dir: image_root.join(&transaction_id),
            transaction_id,
            kernel,
            initrd,
            cmdline,
            source_boot_id,
            source_kernel,
            units,
            left_out,
            restore_binary: restore_binary.to_path_buf(),
        }),
        _ => Err(problems),
    }
}

/// A kernel older than the running one, unless allowed. An unreadable
/// running release is reported on its own.
fn downgrade_problem(new: &str, running: &str, allowed: bool) -> Option<PlanProblem> {
    (!allowed && !running.is_empty() && crate::kexec::compare_releases(new, running).is_lt()).then(
        || PlanProblem::Downgrade {
            new: new.to_string(),
            running: running.to_string(),
        },
    )
}

/// What the images may need beyond the units' resident memory: CRIU's own
/// metadata and logs.
const IMAGE_OVERHEAD_BYTES: u64 = 16 << 20;

/// Whether the filesystem of `image_root` lacks room for the units'
/// images, estimated from their resident memory with a tenth and
/// [`IMAGE_OVERHEAD_BYTES`] to spare. A dump that runs out of space halfway
/// has frozen and stopped services for nothing, so this is checked first.
fn free_space_problem(
    platform: &dyn Platform,
    image_root: &Path,
    units: &[PlannedUnit],
) -> Option<PlanProblem> {
    let resident: u64 = units.iter().map(|u| u.inventory.resident_bytes).sum();
    let need = resident
        .saturating_add(resident / 10)
        .saturating_add(IMAGE_OVERHEAD_BYTES);
    let mib = |b: u64| b.div_ceil(1 << 20);
    match platform.free_bytes(image_root) {
        Ok(free) if free >= need => None,
        Ok(free) => Some(PlanProblem::NoSpace {
            store: image_root.to_path_buf(),
            resident_mib: mib(resident),
            need_mib: mib(need),
            free_mib: free >> 20,
        }),
        Err(e) => Some(PlanProblem::Store {
            message: format!("{e:#}"),
        }),
    }
}

/// Plans each requested unit, adding what is wrong to `problems`: a unit
/// named twice (by an alias, or with and without its suffix) counts once; a
/// unit that cannot be preserved is a problem unless its policy (looked up
/// by its canonical name) leaves it to the next boot. Returns the units to
/// checkpoint and those left out.
fn plan_units(
    platform: &dyn Platform,
    requested: &[String],
    policies: &BTreeMap<String, UnitPolicy>,
    problems: &mut Vec<PlanProblem>,
) -> (Vec<PlannedUnit>, Vec<LeftOut>) {
    let mut units: Vec<PlannedUnit> = Vec::new();
    let mut left_out: Vec<LeftOut> = Vec::new();
    for unit in requested {
        let status = platform
            .unit_status(unit)
            .map_err(|e| PlanProblem::UnitUnreadable {
                unit: unit.clone(),
                message: format!("{e:#}"),
            });
        let canonical = status
            .as_ref()
            .map_or_else(|_| unit.clone(), |s| s.unit.clone());
        let policy = policies
            .get(&canonical)
            .or_else(|| policies.get(unit))
            .copied()
            .unwrap_or_default();
        if left_out.iter().any(|l| l.unit == canonical) {
            continue;
        }
        if policy == UnitPolicy::Skip {
            left_out.push(LeftOut {
                unit: canonical,
                policy,
                reason: "its policy is skip".into(),
            });
            continue;
        }
        match status.and_then(|status| plan_unit(platform, unit, status)) {
            Err(problem) if policy == UnitPolicy::Restart => left_out.push(LeftOut {
                unit: canonical,
                policy,
                reason: problem.to_string(),
            }),
            Ok(planned) => {
                let name = &planned.status.unit;
                if let Some(first) = units.iter().find(|u| &u.status.unit == name) {
                    problems.push(PlanProblem::Duplicate {
                        requested: unit.clone(),
                        unit: name.clone(),
                        first: first.requested.clone(),
                    });
                } else {
                    units.push(planned);
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    (units, left_out)
}

/// Plans one unit, requested as `requested`, from its `status`.
fn plan_unit(
    platform: &dyn Platform,
    requested: &str,
    status: UnitStatus,
) -> Result<PlannedUnit, PlanProblem> {
    if status.load_state != "loaded" {
        return Err(PlanProblem::NoSuchUnit {
            unit: requested.to_string(),
            load_state: status.load_state,
        });
    }
    // From here on the unit is named as systemd names it: drop-ins, the
    // snapshot and the next boot all go by the canonical name; messages
    // name it as requested too when that differs.
    let refuse = |reason: String| PlanProblem::CannotPreserve {
        requested: requested.to_string(),
        unit: status.unit.clone(),
        reason,
    };
    if let Some(why) = never_preserved(&status.unit) {
        return Err(refuse(format!("cannot be preserved: {why}")));
    }
    if status.active_state != "active" || status.main_pid <= 0 {
        return Err(PlanProblem::NotRunning {
            requested: requested.to_string(),
            unit: status.unit.clone(),
            active_state: status.active_state.clone(),
            main_pid: status.main_pid,
        });
    }
    let inventory = platform
        .inventory(&status)
        .map_err(|e| PlanProblem::UnitUnreadable {
            unit: status.unit.clone(),
            message: format!(
                "{}: cannot list its processes and sockets: {e:#}",
                problem::named(requested, &status.unit)
            ),
        })?;
    if !inventory.outside_main_tree.is_empty() {
        let (list, one) = processes(
            inventory
                .outside_main_tree
                .iter()
                .map(|p| format!("{} (`{}`, parent {})", p.pid, p.comm, p.ppid)),
        );
        return Err(refuse(format!(
            "{list} not under its main process {}; CRIU saves only the main \
             process and its descendants, so {} would be lost",
            status.main_pid,
            if one { "it" } else { "they" }
        )));
    }
    if !inventory.descendants_elsewhere.is_empty() {
        let (list, one) = processes(
            inventory
                .descendants_elsewhere
                .iter()
                .map(|d| format!("{} (`{}`, in {})", d.pid, d.comm, d.cgroup)),
        );
        return Err(refuse(format!(
            "cannot be preserved while {list} {} outside the unit (login sessions, \
             for sshd): descendants of its main process {}, CRIU would take them along and \
             the restore would put them into the unit; sessions are not preserved, end them \
             first",
            if one { "runs" } else { "run" },
            status.main_pid
        )));
    }
    if !inventory.unsupported_files.is_empty() {
        let list: Vec<String> = inventory
            .unsupported_files
            .iter()
            .map(|f| format!("process {} holds {} (fd {})", f.pid, f.kind, f.fd))
            .collect();
        return Err(refuse(format!(
            "cannot be preserved: {}, which CRIU cannot checkpoint",
            list.join(", ")
        )));
    }
    let shared = &inventory.shared_memory;
    if !shared.host_sysv.is_empty() {
        let mut pids: Vec<i32> = shared.host_sysv.iter().map(|a| a.pid).collect();
        let mut segments: Vec<u64> = shared.host_sysv.iter().map(|a| a.shmid).collect();
        pids.dedup();
        segments.sort_unstable();
        segments.dedup();
        let (list, one) = processes(pids.iter().map(i32::to_string));
        let segments: Vec<String> = segments.iter().map(u64::to_string).collect();
        return Err(refuse(format!(
            "cannot be preserved as it runs: {list} {} System V shared memory \
             (segment {}) of the host's IPC namespace, which CRIU saves only with an IPC \
             namespace of the unit's own; give the unit one (a drop-in with `PrivateIPC=yes`, \
             then restart it once) or the `restart` policy",
            if one { "has" } else { "have" },
            segments.join(", ")
        )));
    }
    if !shared.private_shm_files.is_empty() {
        let list: Vec<String> = shared
            .private_shm_files
            .iter()
            .map(|(pid, name)| format!("{pid} (/dev/shm/{name})"))
            .collect();
        return Err(refuse(format!(
            "cannot be preserved: processes {} use POSIX shared memory in a private \
             /dev/shm, whose contents the update does not carry",
            list.join(", ")
        )));
    }
    let foreign: Vec<String> = inventory
        .foreign_namespaces
        .iter()
        .filter(|ns| !PRESERVED_NAMESPACES.contains(&ns.kind.as_str()))
        .map(|ns| {
            format!(
                "its own {} namespace (process {}; {})",
                namespace_name(&ns.kind),
                ns.pid,
                namespace_options(&ns.kind)
            )
        })
        .collect();
    if !foreign.is_empty() {
        return Err(refuse(format!(
            "cannot be preserved: it runs in {}; CRIU can checkpoint a unit's own \
             mount, hostname, IPC and time namespaces, not these",
            foreign.join(", ")
        )));
    }
    // After the namespaces: a unit in a network namespace of its own is
    // refused for that, whatever its connections.
    if !inventory.outside_unix_peers.is_empty() {
        let peers: Vec<String> = inventory
            .outside_unix_peers
            .iter()
            .map(|p| match &p.peer_holder {
                Some(holder) => format!("process {} with {holder}", p.pid),
                None => format!("process {} with a socket no process holds", p.pid),
            })
            .collect();
        return Err(refuse(format!(
            "cannot be preserved while it has unix connections to processes outside \
             it ({}): CRIU saves a unix connection only with both of its ends; end those \
             connections first (local clients of the service, another service connected to \
             it; a datagram socket kept connected to syslog's /dev/log is one too), or give the \
             unit the `restart` policy",
            peers.join(", ")
        )));
    }
    Ok(PlannedUnit {
        requested: requested.to_string(),
        status,
        inventory,
    })
}

/// `process A` or `processes A, B`, and whether it is one.
fn processes(items: impl Iterator<Item = String>) -> (String, bool) {
    let items: Vec<String> = items.collect();
    match items.as_slice() {
        [one] => (format!("process {one}"), true),
        _ => (format!("processes {}", items.join(", ")), false),
    }
}

/// Why the update must never freeze `unit` (a canonical name), if so: the
/// system bus, systemd's own services and this product's run the update
/// itself or the next boot's restore, and only services can be preserved.
pub fn never_preserved(unit: &str) -> Option<&'static str> {
    if !unit.ends_with(".service") {
        return Some("only services (*.service units) can be preserved");
    }
    match unit {
        "dbus.service" | "dbus-broker.service" => {
            Some("it is the system bus, which systemd, polkit and this update depend on")
        }
        "polkit.service" => Some("it authorizes the update itself"),
        u if u.starts_with("seamless-reboot") => Some("it is part of seamless-reboot"),
        u if u.starts_with("systemd-") => {
            Some("it is part of systemd, which the update and the next boot depend on")
        }
        _ => None,
    }
}

/// The kinds of namespace (`/proc/<pid>/ns/<kind>`) a unit may have of its
/// own and still be preserved: CRIU saves them and builds them again (the
/// mount namespace on `/`, with the host's mounts bound again). A time
/// namespace is what CRIU's restore itself gives the processes, so that
/// their monotonic clocks go on from where they were: a unit preserved once
/// has one, and must be preservable again.
pub const PRESERVED_NAMESPACES: [&str; 4] = ["mnt", "uts", "ipc", "time"];

/// What a planned unit's sandbox holds that the restore builds again, in an
/// operator's words, e.g. `its own mount namespace (private /tmp and
/// /var/tmp) and hostname (UTS) namespace`; `None` for a unit without
/// namespaces of its own.
pub fn sandbox_summary(inventory: &UnitInventory) -> Option<String> {
    let kinds: Vec<String> = inventory
        .foreign_namespaces
        .iter()
        .filter(|ns| PRESERVED_NAMESPACES.contains(&ns.kind.as_str()))
        .map(|ns| {
            let private: Vec<&str> = match (&inventory.mount_sandbox, ns.kind.as_str()) {
                (Some(sandbox), "mnt") => sandbox
                    .private_dirs
                    .iter()
                    .map(|d| d.mountpoint.as_str())
                    .collect(),
                _ => Vec::new(),
            };
            if private.is_empty() {
                namespace_name(&ns.kind).to_string()
            } else {
                format!(
                    "{} (private {})",
                    namespace_name(&ns.kind),
                    private.join(" and ")
                )
            }
        })
        .collect();
    match kinds.as_slice() {
        [] => None,
        [one] => Some(format!("its own {one} namespace")),
        [rest @ .., last] => Some(format!("its own {} and {last} namespaces", rest.join(", "))),
    }
}

/// An operator's name for a kind of namespace (`/proc/<pid>/ns/<kind>`).
fn namespace_name(kind: &str) -> &str {
    match kind {
        "mnt" => "mount",
        "uts" => "hostname (UTS)",
        "ipc" => "IPC",
        "net" => "network",
        "pid" => "PID",
        "user" => "user",
        "cgroup" => "cgroup",
        "time" => "time (clock offsets, from an earlier restore)",
        other => other,
    }
}

/// The unit options that give a service a namespace of this kind.
fn namespace_options(kind: &str) -> &str {
    match kind {
        "mnt" => {
            "made by PrivateTmp=, ProtectSystem=, ProtectHome=, PrivateDevices=, \
             ProtectKernel*=, ProtectControlGroups=, ReadWritePaths=, DynamicUser= or \
             similar options of its unit"
        }
        "uts" => "made by ProtectHostname= of its unit",
        "ipc" => "made by PrivateIPC= of its unit",
        "net" => "made by PrivateNetwork= or NetworkNamespacePath= of its unit",
        "pid" => "made by PrivatePIDs= of its unit",
        "user" => {
            "made by PrivateUsers= of its unit; systemd creates that namespace after the \
             others, so they belong to the host's user namespace while the service sits in \
             its own, a layout CRIU refuses to checkpoint; give the unit the `restart` policy, \
             or a drop-in with PrivateUsers=no"
        }
        "cgroup" => "made by ProtectControlGroups= of its unit",
        _ => "made by its unit's sandbox options or by the service itself",
    }
}

/// A fresh transaction id: the time and the pid, `[a-z0-9-]`.
pub fn new_transaction_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("t{}-{}", now.as_millis(), std::process::id())
}

/// Failure of a transaction: the cause, and whatever could not be undone.
#[derive(Debug, thiserror::Error)]
#[error("{cause:#}{}", rollback_text(.rollback_errors))]
pub struct TransactionError {
    pub cause: anyhow::Error,
    pub rollback_errors: Vec<anyhow::Error>,
}

fn rollback_text(errors: &[anyhow::Error]) -> String {
    if errors.is_empty() {
        "; everything was undone".to_string()
    } else {
        let list: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        format!("; and undoing it failed: {}", list.join("; "))
    }
}

/// Runs the transaction from a plan to the kexec. Returns only when the
/// system did not go down: `Ok` after systemd accepted the kexec request.
pub fn run(
    platform: &dyn Platform,
    plan: &Plan,
    progress: &mut dyn Progress,
) -> Result<Vec<Checkpointed>, TransactionError> {
    // 0. The transaction's directory and its undo journal, locked: from
    //    here on, whatever happens to this process, what was done can be
    //    undone (see the journal module).
    let mut undo = UndoLog::create(
        &plan.transaction_dir,
        &plan.transaction_id,
        &plan.source_boot_id,
        &plan.restore_binary,
    )
    .map_err(|cause| TransactionError {
        cause,
        rollback_errors: Vec::new(),
    })?;
    match forward(platform, plan, progress, &mut undo) {
        Ok(done) => Ok(done),
        Err(cause) => {
            progress.step(&Step::Undoing);
            let rollback_errors = rollback(platform, &mut undo);
            Err(TransactionError {
                cause,
                rollback_errors,
            })
        }
    }
}

fn forward(
    platform: &dyn Platform,
    plan: &Plan,
    progress: &mut dyn Progress,
    undo: &mut UndoLog,
) -> Result<Vec<Checkpointed>> {
    // 1. Load the kernel. Nothing is frozen yet; a bad kernel stops here.
    progress.step(&Step::LoadingKernel);
    platform.load_kernel(&plan.kernel, plan.initrd.as_ref(), &plan.cmdline)?;
    undo.push(Undo::UnloadKernel)?;

    // 2. Guard: nothing may restart a checkpointed unit, and nothing may
    //    flush the lock rules before the kexec (Debian's nftables.service
    //    flushes the ruleset when it stops).
    progress.step(&Step::GuardingUnits);
    for unit in &plan.units {
        undo.push(Undo::RemoveDropin {
            unit: unit.status.unit.clone(),
            name: HOLD_DROPIN.into(),
        })?;
        platform.write_runtime_dropin(&unit.status.unit, HOLD_DROPIN, GUARD_DROPIN)?;
    }
    undo.push(Undo::RemoveDropin {
        unit: "nftables.service".into(),
        name: HOLD_DROPIN.into(),
    })?;
    platform.write_runtime_dropin("nftables.service", HOLD_DROPIN, "[Service]\nExecStop=\n")?;
    platform.daemon_reload()?;

    // 3. Checkpoint each unit. From here on, a failure restores the units
    //    already checkpointed, in place, on this kernel.
    let mut snapshots = Vec::new();
    let mut done = Vec::new();
    for (index, unit) in plan.units.iter().enumerate() {
        let name = &unit.status.unit;
        progress.step(&Step::Checkpointing {
            unit: name.clone(),
            index,
            of: plan.units.len(),
        });
        let snapshot_dir = plan.transaction_dir.join(unit_dir_name(name));
        let images = snapshot_dir.join(IMAGES_SUBDIR);
        let tables_before = platform.nft_tables()?;
        undo.push(Undo::KeepRunning {
            unit: name.clone(),
            lock_tables_before: tables_before.clone(),
        })?;
        let stats = platform
            .criu_dump(&unit.status, &unit.inventory, &images)
            .with_context(|| format!("checkpoint of {name} failed"))?;
        undo.push(Undo::RestoreInPlace {
            unit: name.clone(),
            snapshot_dir: snapshot_dir.clone(),
        })?;
        // The unit's record comes first: it is what the in-place restore of
        // an undo reads, so nothing that can fail goes before it. The pids
        // and thread ids the next boot keeps free are the ones CRIU saved,
        // not the plan's (a thread may have started or ended since); if the
        // saved tree cannot be read, the record keeps the plan's for the
        // in-place restore and the checkpoint fails.
        let tree = crate::criu::images::read_process_tree(&images);
        let (pids, thread_ids) = match &tree {
            Ok(tree) => (tree.pids(), tree.thread_ids()),
            Err(_) => (
                unit.inventory.pids.clone(),
                unit.inventory.thread_ids.clone(),
            ),
        };
        let snapshot = UnitSnapshot {
            unit: name.clone(),
            images_dir: format!("{}/{IMAGES_SUBDIR}", unit_dir_name(name)),
            main_pid: unit.status.main_pid,
            pids,
            thread_ids,
            exec_start: unit.status.exec_start.clone(),
            connections: unit.inventory.established.clone(),
            journal_socket_inodes: unit.inventory.stdio_socket_inodes.clone(),
            pid_file: Some(unit.status.pid_file.clone()).filter(|p| !p.is_empty()),
            mount_sandbox: unit.inventory.mount_sandbox.clone(),
            shm_files: unit.inventory.shared_memory.shm_files.clone(),
            frozen_ms: stats.frozen.as_millis() as u64,
            images: compute_digests(&images)?,
        };
        write_file(
            &snapshot_dir.join(UNIT_SNAPSHOT_FILE),
            serde_json::to_string_pretty(&snapshot)?.as_bytes(),
        )?;
        let tree =
            tree.with_context(|| format!("cannot read the process tree CRIU saved for {name}"))?;
        if tree.root_pid() != unit.status.main_pid {
            bail!(
                "CRIU saved a process tree of {name} rooted at pid {}, not at its main pid {}",
                tree.root_pid(),
                unit.status.main_pid
            );
        }
        let mut rules = String::new();
        for table in &lock_tables_since(platform, &tables_before)? {
            rules.push_str(&platform.nft_list_table(table)?);
        }
        write_file(&snapshot_dir.join(HOLD_RULES_FILE), rules.as_bytes())?;
        done.push(Checkpointed {
            unit: name.clone(),
            frozen: stats.frozen,
            connections: snapshot.connections.len(),
        });
        snapshots.push(snapshot);
    }

    // 4. The manifest binds the snapshot to this boot and the loaded kernel.
    progress.step(&Step::WritingManifest);
    let manifest = Manifest {
        format_version: crate::manifest::FORMAT_VERSION,
        transaction_id: plan.transaction_id.clone(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source_boot_id: plan.source_boot_id.clone(),
        source_kernel: plan.source_kernel.clone(),
        target_kernel: plan.kernel.release().to_string(),
        units: snapshots,
        restart_units: plan
            .left_out
            .iter()
            .filter(|l| l.policy == UnitPolicy::Restart)
            .map(|l| l.unit.clone())
            .collect(),
    };
    manifest.write_in(&plan.transaction_dir)?;

    // 5. Point of no return: systemd stops everything and kexecs.
    progress.step(&Step::HandingOver);
    platform.start_kexec_watch(&plan.transaction_dir, &plan.restore_binary)?;
    platform.kexec()?;
    // The journal stays: should systemd drop the kexec job without a
    // kexec, a replay (`recover`) still brings the units back.
    if let Err(e) = undo.handed_over() {
        tracing::warn!("{e:#}");
    }
    Ok(done)
}

/// Unwinds the undo log in reverse, keeping its journal in step; returns
/// what could not be undone.
pub(crate) fn rollback(platform: &dyn Platform, undo: &mut UndoLog) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let mut need_reload = false;
    while let Some(step) = undo.last().cloned() {
        let result = match &step {
            Undo::UnloadKernel => platform.unload_kernel(),
            Undo::RemoveDropin { unit, name } => {
                need_reload = true;
                platform.remove_runtime_dropin(unit, name)
            }
            Undo::RestoreInPlace { unit, snapshot_dir } => {
                restore_in_place(platform, undo.restore_binary(), unit, snapshot_dir)
            }
            Undo::KeepRunning {
                unit,
                lock_tables_before,
            } => keep_running(platform, unit, lock_tables_before),
            Undo::RemoveDir { dir } => {
                // Keep the snapshot if a unit could not be brought back: it
                // is the only copy of that unit's state. Otherwise drop the
                // images but keep CRIU's logs, which the error points to.
                if undo.keep_snapshot() {
                    Ok(())
                } else {
                    remove_all_but_logs(dir)
                }
            }
        };
        if let Err(e) = result {
            errors.push(e.context(format!("undo {step:?}")));
            undo.set_keep_snapshot();
        }
        // The journal only matters if this process dies before the end; a
        // stale one left then is harmless to replay (every step checks
        // first), and the last step removes it. So a journal that cannot be
        // updated (a full image store) does not stop the undo.
        if let Err(e) = undo.pop() {
            tracing::warn!("{e:#}; undoing goes on without it");
            undo.stop_journal();
        }
    }
    if need_reload && let Err(e) = platform.daemon_reload() {
        errors.push(e);
    }
    errors
}

/// CRIU's network-lock tables (`inet CRIU-*`) that exist now and were not
/// among `before`: the ones a dump since made.
fn lock_tables_since(platform: &dyn Platform, before: &[String]) -> Result<Vec<String>> {
    Ok(platform
        .nft_tables()?
        .into_iter()
        .filter(|t| t.starts_with("CRIU-") && !before.contains(t))
        .collect())
}

/// After a checkpoint that did not happen (or was undone): removes the lock
/// tables CRIU made since `lock_tables_before` and did not remove (a CRIU
/// killed halfway leaves its table, which would keep blocking the unit's
/// connections), and starts `unit` with its own command if it is no longer
/// active (a dump killed halfway may take the service with it), saying so.
fn keep_running(platform: &dyn Platform, unit: &str, lock_tables_before: &[String]) -> Result<()> {
    for table in lock_tables_since(platform, lock_tables_before)? {
        platform.nft_delete_table(&table)?;
    }
    let status = platform.unit_status(unit)?;
    if status.active_state == "active" {
        return Ok(());
    }
    let was = status.active_state;
    // Its guard would skip the start.
    platform.remove_runtime_dropin(unit, HOLD_DROPIN)?;
    platform.daemon_reload()?;
    match platform.start_unit(unit) {
        Ok(()) => bail!(
            "{unit} was {was} after its checkpoint failed; it was started again with its own \
             command (its state is lost)"
        ),
        Err(e) => Err(e.context(format!(
            "{unit} was {was} after its checkpoint failed, and starting it with its own command \
             failed"
        ))),
    }
}

/// Brings a checkpointed unit back on the running kernel: the unit restores
/// itself through the same helper the next boot uses, then the drop-in goes.
/// If that fails, the unit is started with its own configuration (its state
/// is lost, but it runs), and the error says so.
fn restore_in_place(
    platform: &dyn Platform,
    restore_binary: &Path,
    unit: &str,
    snapshot_dir: &Path,
) -> Result<()> {
    // Running already means started afresh by something else (before its
    // guard was there, or with the guard taken off): restoring would be a
    // no-op that hides that the checkpointed state was thrown away.
    let before = platform.unit_status(unit)?;
    if before.active_state == "active" {
        bail!(
            "{unit} was started afresh by something else while it was checkpointed (main pid {}); \
             its checkpointed state is not used, the snapshot is kept in {}",
            before.main_pid,
            snapshot_dir.display()
        );
    }
    platform.write_runtime_dropin(
        unit,
        RESTORE_DROPIN,
        &restore_dropin(restore_binary, snapshot_dir, unit, None),
    )?;
    platform.remove_runtime_dropin(unit, HOLD_DROPIN)?;
    platform.daemon_reload()?;
    let started = platform.start_unit(unit);
    platform.remove_runtime_dropin(unit, RESTORE_DROPIN)?;
    platform.daemon_reload()?;
    if let Err(error) = started {
        let cold = platform.start_unit(unit);
        return Err(match cold {
            Ok(()) => error.context(format!(
                "{unit} could not be restored in place; it was started with its own command \
                 (its state is lost; the snapshot is kept in {})",
                snapshot_dir.display()
            )),
            Err(cold) => error.context(format!(
                "{unit} could not be restored in place, and starting it with its own command \
                 failed too ({cold:#}); the snapshot is kept in {}",
                snapshot_dir.display()
            )),
        });
    }
    let status = platform.unit_status(unit)?;
    if status.active_state != "active" {
        bail!(
            "{unit} is {} after its in-place restore",
            status.active_state
        );
    }
    Ok(())
}

/// The drop-in that makes `unit` restore itself from `snapshot_dir`: systemd
/// runs the restore helper as a forking `ExecStart` and adopts the restored
/// process from the pid file, so the unit ends active with the restored
/// process as its main pid, in its own cgroup. The helper runs privileged
/// (`+`): outside the unit's `User=` and sandbox, which CRIU restores for
/// the processes themselves from what it saved. `after` orders it after the
/// next boot's hold unit.
pub fn restore_dropin(
    binary: &Path,
    snapshot_dir: &Path,
    unit: &str,
    after: Option<&str>,
) -> String {
    let mut text =
        String::from("# Generated by seamless-reboot: restore this unit from its checkpoint.\n");
    if let Some(after) = after {
        text.push_str(&format!("[Unit]\nAfter={after}\nWants={after}\n\n"));
    }
    // Without `after`, the restore is an undo's, in place on this kernel.
    let in_place = if after.is_none() { " --in-place" } else { "" };
    text.push_str(&format!(
        "[Service]\nType=forking\nPIDFile={}\nExecStart=\nExecStart=+{} restore-unit{in_place} {} {}\nRestart=no\nTimeoutStartSec=300\n",
        pid_file(unit).display(),
        binary.display(),
        snapshot_dir.display(),
        unit
    ));
    if after.is_some() {
        // However the start ends (the helper killed by the timeout, say),
        // the unit's connections must not stay on hold.
        text.push_str(&format!(
            "ExecStopPost=-+{} release-unit {} {}\n",
            binary.display(),
            snapshot_dir.display(),
            unit
        ));
    }
    text
}

/// Where the restore helper writes the restored main pid for systemd.
pub fn pid_file(unit: &str) -> PathBuf {
    PathBuf::from(format!("/run/seamless-reboot/{unit}.pid"))
}

/// Removes every file under `dir` except CRIU's `*.log` files, and the
/// directories left empty.
pub(crate) fn remove_all_but_logs(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            remove_all_but_logs(&path)?;
        } else if path.extension().is_none_or(|e| e != "log") {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    // Fails while logs remain in it, which is what we want.
    let _ = fs::remove_dir(dir);
    Ok(())
}

/// Writes a file the next boot reads, the way the manifest is written
/// (temporary name, fsync, rename, fsync of the directory).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a snapshot file has a directory")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a snapshot file has a UTF-8 name")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::manifest::atomic::write_atomic(dir, name, &format!("{name}.tmp"), bytes)
        .map_err(|(path, what, source)| anyhow::anyhow!("{what} {}: {source}", path.display()))
}

#[cfg(test)]
mod tests;
