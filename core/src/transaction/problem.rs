//! What the plan finds wrong, typed: each problem has its message (what the
//! operator reads, on the terminal and over D-Bus) and a stable kind (what
//! tooling matches on, in JSON), so neither has to parse the other.

use std::path::PathBuf;

use crate::kexec::CmdlineError;

/// One problem found by [`super::plan`]. Every problem is reported, not just
/// the first, and nothing has been changed on the system.
#[derive(Debug, thiserror::Error)]
pub enum PlanProblem {
    /// The kernel file is missing, not a kernel, or not safe to load.
    #[error("{message}")]
    Kernel { path: PathBuf, message: String },
    /// No usable initrd for the kernel.
    #[error("{message}")]
    Initrd { message: String },
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
    #[error("{0}")]
    CommandLine(#[from] CmdlineError),
    /// The request names no unit.
    #[error("no units to preserve: name them with --unit or in the configuration")]
    NoUnits,
    /// A unit cannot be preserved (or does not exist), and its policy does
    /// not leave it to the next boot.
    #[error("{message}")]
    Unit { unit: String, message: String },
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
    /// The image store's free space cannot be read.
    #[error("{message}")]
    Store { message: String },
}

impl PlanProblem {
    /// A stable machine name (kebab-case) for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanProblem::Kernel { .. } => "kernel",
            PlanProblem::Initrd { .. } => "initrd",
            PlanProblem::RunningSystem { .. } => "running-system",
            PlanProblem::Downgrade { .. } => "downgrade",
            PlanProblem::CommandLine(_) => "command-line",
            PlanProblem::NoUnits => "no-units",
            PlanProblem::Unit { .. } => "unit",
            PlanProblem::Duplicate { .. } => "duplicate-unit",
            PlanProblem::NothingPreserved { .. } => "nothing-preserved",
            PlanProblem::NoSpace { .. } => "no-space",
            PlanProblem::Store { .. } => "store",
        }
    }

    /// The unit the problem is about, if it is about one.
    pub fn unit(&self) -> Option<&str> {
        match self {
            PlanProblem::Unit { unit, .. } | PlanProblem::Duplicate { unit, .. } => Some(unit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_messages_read_as_before() {
        let problems = [
            PlanProblem::Kernel {
                path: "/k".into(),
                message: "k".into(),
            },
            PlanProblem::Initrd {
                message: "i".into(),
            },
            PlanProblem::RunningSystem {
                message: "r".into(),
            },
            PlanProblem::Downgrade {
                new: "6.1".into(),
                running: "6.12".into(),
            },
            PlanProblem::CommandLine(CmdlineError::TooLong {
                len: 3000,
                max: 2016,
            }),
            PlanProblem::NoUnits,
            PlanProblem::Unit {
                unit: "a.service".into(),
                message: "a.service: no such unit".into(),
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
                message: "s".into(),
            },
        ];
        let mut kinds: Vec<&str> = problems.iter().map(PlanProblem::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), problems.len());
        assert_eq!(
            problems[7].to_string(),
            "a: names a.service, which is already in the update (as a.service); name each unit once"
        );
        assert_eq!(
            problems[9].to_string(),
            "not enough free space for the checkpoint in /var/lib/x: the units hold about 10 MiB \
             of memory, so the images need about 27 MiB, and 5 MiB are free"
        );
        assert!(problems[3].to_string().contains("--allow-downgrade"));
        assert_eq!(problems[6].unit(), Some("a.service"));
    }
}
