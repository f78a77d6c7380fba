//! What the plan finds wrong, typed: each problem has its message (what the
//! operator reads, on the terminal and over D-Bus) and a stable kind (what
//! tooling matches on, in JSON), so neither has to parse the other.

use std::path::PathBuf;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::kexec::{CmdlineError, InitrdError, KernelFileError};

/// One problem found by [`super::plan`]. Every problem is reported, not just
/// the first, and nothing has been changed on the system.
#[derive(Debug, thiserror::Error)]
pub enum PlanProblem {
    /// The kernel file is missing, not a kernel, or not safe to load.
    #[error(transparent)]
    Kernel(#[from] KernelFileError),
    /// No usable initrd for the kernel.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// The running kernel's release or this boot's id cannot be read.
    #[error("{message}")]
    RunningSystem { message: String },
    /// The new kernel is older than the running one.
    #[error(
        "the new kernel {new} is older than the running kernel {running}: an update into an \
         older kernel may reopen what a newer one fixed; pass --allow-downgrade if that is \
         what you want"
    )]
    Downgrade { new: String, running: String },
    /// The next boot's command line cannot be built.
    #[error(transparent)]
    CommandLine(#[from] CmdlineError),
    /// The request names no unit.
    #[error("no units to preserve: name them with --unit or in the configuration")]
    NoUnits,
    /// systemd has no unit of the requested name (`unit` as requested).
    #[error("{unit}: no such unit (LoadState={load_state})")]
    NoSuchUnit { unit: String, load_state: String },
    /// A unit's state, processes or sockets cannot be read; `message`
    /// names the unit.
    #[error("{message}")]
    UnitUnreadable { unit: String, message: String },
    /// The unit is not running: there is nothing to checkpoint.
    #[error(
        "{}: not running (ActiveState={active_state}, MainPID={main_pid}); only running units \
         can be preserved",
        named(.requested, .unit)
    )]
    NotRunning {
        requested: String,
        unit: String,
        active_state: String,
        main_pid: i32,
    },
    /// The unit runs as something the update must not or cannot
    /// checkpoint; `reason` is what the operator reads after the unit's
    /// name, remedy included.
    #[error("{}: {reason}", named(.requested, .unit))]
    CannotPreserve {
        requested: String,
        unit: String,
        reason: String,
    },
    /// Two names of the request are the same unit.
    #[error(
        "{requested}: names {unit}, which is already in the update (as {first}); name each unit \
         once"
    )]
    Duplicate {
        requested: String,
        unit: String,
        first: String,
    },
    /// Every unit was left out by its policy.
    #[error(
        "none of the units would be preserved ({left_out} left to the next boot by their \
         policy), so a seamless update would be a plain reboot"
    )]
    NothingPreserved { left_out: usize },
    /// The image store lacks room for the images.
    #[error(
        "not enough free space for the checkpoint in {store}: the units hold about {resident_mib} \
         MiB of memory, so the images need about {need_mib} MiB, and {free_mib} MiB are free",
        store = .store.display()
    )]
    NoSpace {
        store: PathBuf,
        resident_mib: u64,
        need_mib: u64,
        free_mib: u64,
    },
    /// The image store's free space or permissions cannot be read.
    #[error("{message}")]
    Store { message: String },
    /// The image store can be read by others than root.
    #[error(
        "the image store {store} is not private (owner uid {uid}, mode {mode:04o}): the \
         snapshots hold the services' memory (keys, passwords, sessions), so it must be \
         owned by root with no access for group or others (chown root: {store}; chmod 0700 \
         {store})",
        store = .store.display()
    )]
    StoreNotPrivate { store: PathBuf, uid: u32, mode: u32 },
    /// The image store is on a filesystem the configuration forbids.
    #[error(
        "the image store {store} is on a {fstype} filesystem, which the configuration forbids \
         (image_dir_forbidden_filesystems): the snapshots hold the services' memory; choose \
         another image_dir",
        store = .store.display()
    )]
    StoreFilesystemForbidden { store: PathBuf, fstype: String },
}

/// A unit as the operator named it, with systemd's name when that differs
/// (`db (postgresql.service)`).
pub(super) fn named(requested: &str, unit: &str) -> String {
    if requested == unit {
        unit.to_string()
    } else {
        format!("{requested} ({unit})")
    }
}

impl PlanProblem {
    /// A stable machine name (kebab-case) for JSON output; the message may
    /// be reworded, the kind is not.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanProblem::Kernel(_) => "kernel",
            PlanProblem::Initrd(_) => "initrd",
            PlanProblem::RunningSystem { .. } => "running-system",
            PlanProblem::Downgrade { .. } => "downgrade",
            PlanProblem::CommandLine(_) => "command-line",
            PlanProblem::NoUnits => "no-units",
            PlanProblem::NoSuchUnit { .. } => "no-such-unit",
            PlanProblem::UnitUnreadable { .. } => "unit-unreadable",
            PlanProblem::NotRunning { .. } => "not-running",
            PlanProblem::CannotPreserve { .. } => "cannot-preserve",
            PlanProblem::Duplicate { .. } => "duplicate-unit",
            PlanProblem::NothingPreserved { .. } => "nothing-preserved",
            PlanProblem::NoSpace { .. } => "no-space",
            PlanProblem::Store { .. } => "store",
            PlanProblem::StoreNotPrivate { .. } => "store-not-private",
            PlanProblem::StoreFilesystemForbidden { .. } => "store-filesystem-forbidden",
        }
    }

    /// The unit the problem is about (systemd's name when it is known, else
    /// as requested), if it is about one.
    pub fn unit(&self) -> Option<&str> {
        match self {
            PlanProblem::NoSuchUnit { unit, .. }
            | PlanProblem::UnitUnreadable { unit, .. }
            | PlanProblem::NotRunning { unit, .. }
            | PlanProblem::CannotPreserve { unit, .. }
            | PlanProblem::Duplicate { unit, .. } => Some(unit),
            _ => None,
        }
    }
}

/// `{"kind": "cannot-preserve", "unit": "db.service", "message": "..."}`;
/// `unit` only for a problem about one.
impl Serialize for PlanProblem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let unit = self.unit();
        let mut map = serializer.serialize_map(Some(2 + usize::from(unit.is_some())))?;
        map.serialize_entry("kind", self.kind())?;
        if let Some(unit) = unit {
            map.serialize_entry("unit", unit)?;
        }
        map.serialize_entry("message", &self.to_string())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kexec::BootFileKind;

    /// One of each kind. The index is an exhaustive match: a new variant
    /// does not compile until it has one, and the test below fails until
    /// it is in [`samples`].
    fn variant_index(problem: &PlanProblem) -> usize {
        match problem {
            PlanProblem::Kernel(_) => 0,
            PlanProblem::Initrd(_) => 1,
            PlanProblem::RunningSystem { .. } => 2,
            PlanProblem::Downgrade { .. } => 3,
            PlanProblem::CommandLine(_) => 4,
            PlanProblem::NoUnits => 5,
            PlanProblem::NoSuchUnit { .. } => 6,
            PlanProblem::UnitUnreadable { .. } => 7,
            PlanProblem::NotRunning { .. } => 8,
            PlanProblem::CannotPreserve { .. } => 9,
            PlanProblem::Duplicate { .. } => 10,
            PlanProblem::NothingPreserved { .. } => 11,
            PlanProblem::NoSpace { .. } => 12,
            PlanProblem::Store { .. } => 13,
            PlanProblem::StoreNotPrivate { .. } => 14,
            PlanProblem::StoreFilesystemForbidden { .. } => 15,
        }
    }

    fn samples() -> Vec<PlanProblem> {
        vec![
            PlanProblem::Kernel(KernelFileError::Truncated {
                path: "/boot/vmlinuz".into(),
                size: 10,
                expected: 20,
            }),
            PlanProblem::Initrd(InitrdError::NotFound {
                release: "6.12.0".into(),
                candidates: vec!["/boot/initrd.img-6.12.0".into()],
            }),
            PlanProblem::RunningSystem {
                message: "cannot read /proc/sys/kernel/random/boot_id".into(),
            },
            PlanProblem::Downgrade {
                new: "6.1.0".into(),
                running: "6.12.0".into(),
            },
            PlanProblem::CommandLine(CmdlineError::TooLong {
                len: 3000,
                max: 2016,
            }),
            PlanProblem::NoUnits,
            PlanProblem::NoSuchUnit {
                unit: "nope.service".into(),
                load_state: "not-found".into(),
            },
            PlanProblem::UnitUnreadable {
                unit: "a.service".into(),
                message: "a.service: cannot list its processes and sockets: gone".into(),
            },
            PlanProblem::NotRunning {
                requested: "a".into(),
                unit: "a.service".into(),
                active_state: "inactive".into(),
                main_pid: 0,
            },
            PlanProblem::CannotPreserve {
                requested: "postgresql.service".into(),
                unit: "postgresql.service".into(),
                reason: "cannot be preserved as it runs: process 7 has System V shared memory \
                         (segment 3) of the host's IPC namespace; give the unit one (a drop-in \
                         with `PrivateIPC=yes`)"
                    .into(),
            },
            PlanProblem::Duplicate {
                requested: "a".into(),
                unit: "a.service".into(),
                first: "a.service".into(),
            },
            PlanProblem::NothingPreserved { left_out: 2 },
            PlanProblem::NoSpace {
                store: "/var/lib/x".into(),
                resident_mib: 10,
                need_mib: 27,
                free_mib: 5,
            },
            PlanProblem::Store {
                message: "cannot stat /var/lib/x".into(),
            },
            PlanProblem::StoreNotPrivate {
                store: "/var/lib/x".into(),
                uid: 1000,
                mode: 0o755,
            },
            PlanProblem::StoreFilesystemForbidden {
                store: "/var/lib/x".into(),
                fstype: "nfs4".into(),
            },
        ]
    }

    #[test]
    fn every_variant_has_its_own_kind() {
        let problems = samples();
        let mut indices: Vec<usize> = problems.iter().map(variant_index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(
            indices,
            (0..problems.len()).collect::<Vec<_>>(),
            "one sample per variant"
        );
        let mut kinds: Vec<&str> = problems.iter().map(PlanProblem::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), problems.len(), "{kinds:?}");
        for kind in kinds {
            assert!(
                !kind.is_empty()
                    && kind.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    && !kind.starts_with('-')
                    && !kind.ends_with('-'),
                "{kind} is not kebab-case"
            );
        }
    }

    #[test]
    fn messages_read_as_the_plan_wrote_them() {
        let problems = samples();
        let text = |i: usize| problems[i].to_string();
        assert_eq!(
            text(0),
            "kernel /boot/vmlinuz is truncated: 10 bytes, but its header describes at least 20"
        );
        assert_eq!(
            text(4),
            CmdlineError::TooLong {
                len: 3000,
                max: 2016
            }
            .to_string()
        );
        assert_eq!(
            text(5),
            "no units to preserve: name them with --unit or in the configuration"
        );
        assert_eq!(text(6), "nope.service: no such unit (LoadState=not-found)");
        assert_eq!(
            text(8),
            "a (a.service): not running (ActiveState=inactive, MainPID=0); only running units \
             can be preserved"
        );
        assert!(
            text(9).starts_with("postgresql.service: cannot be preserved as it runs: ")
                && text(9).contains("PrivateIPC=yes"),
            "{}",
            text(9)
        );
        assert_eq!(
            text(10),
            "a: names a.service, which is already in the update (as a.service); name each unit once"
        );
        assert_eq!(
            text(11),
            "none of the units would be preserved (2 left to the next boot by their policy), so \
             a seamless update would be a plain reboot"
        );
        assert_eq!(
            text(12),
            "not enough free space for the checkpoint in /var/lib/x: the units hold about 10 MiB \
             of memory, so the images need about 27 MiB, and 5 MiB are free"
        );
        assert!(text(3).contains("--allow-downgrade"));
    }

    #[test]
    fn json_carries_kind_unit_and_message() {
        let problems = samples();
        let json = serde_json::to_value(&problems[9]).expect("serializes");
        assert_eq!(json["kind"], "cannot-preserve");
        assert_eq!(json["unit"], "postgresql.service");
        assert_eq!(json["message"], problems[9].to_string());
        let json = serde_json::to_value(&problems[5]).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "no-units",
                "message": "no units to preserve: name them with --unit or in the configuration",
            })
        );
        assert_eq!(problems[8].unit(), Some("a.service"));
        // A refused file keeps its typed cause.
        let file = PlanProblem::Kernel(KernelFileError::File(crate::kexec::BootFileError::Open {
            kind: BootFileKind::Kernel,
            path: "/boot/vmlinuz".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
        assert_eq!(file.kind(), "kernel");
        assert!(
            file.to_string()
                .starts_with("cannot open kernel /boot/vmlinuz")
        );
    }
}
