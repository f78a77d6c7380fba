//! The steps of an update, as everything that reports them sees them.
//!
//! The transaction announces each step; the daemon publishes it on D-Bus
//! (`Operation`, and `Progress` as a percentage), the CLI prints it, the
//! simulated engine plays the same steps in its tests. One enum for all of
//! them, so that a step cannot be renamed or added on one side only: the
//! percentage is an exhaustive match, and a step without one does not
//! compile.

use std::fmt;

use serde::Serialize;

/// One step of an update, in the order they happen.
///
/// As JSON: `{"step": "checkpointing", "unit": "a.service", "index": 0,
/// "of": 2}`, the tag being [`Step::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Checking the request against the system (nothing changes).
    Planning,
    /// Loading the new kernel with `kexec_file_load`.
    LoadingKernel,
    /// Keeping systemd from restarting the units while they are frozen.
    GuardingUnits,
    /// Checkpointing unit number `index` (from 0) of `of`.
    Checkpointing {
        unit: String,
        index: usize,
        of: usize,
    },
    /// Binding the snapshot to this boot and the loaded kernel.
    WritingManifest,
    /// Asking systemd to stop everything and kexec.
    HandingOver,
    /// Undoing what was done, after a failure.
    Undoing,
}

impl Step {
    /// Every step a successful update over `units` announces, in order:
    /// what the transaction and the simulated engine play, and so what
    /// D-Bus publishes.
    pub fn sequence(units: &[String]) -> Vec<Step> {
        let mut steps = vec![Step::Planning, Step::LoadingKernel, Step::GuardingUnits];
        steps.extend(
            units
                .iter()
                .enumerate()
                .map(|(index, unit)| Step::Checkpointing {
                    unit: unit.clone(),
                    index,
                    of: units.len(),
                }),
        );
        steps.extend([Step::WritingManifest, Step::HandingOver]);
        steps
    }

    /// A stable machine name (kebab-case), for JSON output; the unit of a
    /// checkpoint is not part of it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Step::Planning => "planning",
            Step::LoadingKernel => "loading-kernel",
            Step::GuardingUnits => "guarding-units",
            Step::Checkpointing { .. } => "checkpointing",
            Step::WritingManifest => "writing-manifest",
            Step::HandingOver => "handing-over",
            Step::Undoing => "undoing",
        }
    }

    /// How far the update is at the start of this step, 0 to 100; `None`
    /// for a step that does not move it (an undo keeps the last value).
    ///
    /// | step | % |
    /// | --- | --- |
    /// | planning | 2 |
    /// | loading kernel | 10 |
    /// | guarding units | 20 |
    /// | checkpointing unit i of n | 25 + 60 i / n |
    /// | writing manifest | 88 |
    /// | handing over | 95 |
    pub fn percent(&self) -> Option<i32> {
        match self {
            Step::Planning => Some(2),
            Step::LoadingKernel => Some(10),
            Step::GuardingUnits => Some(20),
            Step::Checkpointing { index, of, .. } => {
                let of = (*of).max(1);
                let index = (*index).min(of - 1);
                // index < of, so this is below 85.
                Some(25 + i32::try_from(60 * index / of).unwrap_or(59))
            }
            Step::WritingManifest => Some(88),
            Step::HandingOver => Some(95),
            Step::Undoing => None,
        }
    }
}

/// What an operator reads: "checkpointing nginx.service", "undoing".
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Planning => f.write_str("planning"),
            Step::LoadingKernel => f.write_str("loading kernel"),
            Step::GuardingUnits => f.write_str("guarding units"),
            Step::Checkpointing { unit, .. } => write!(f, "checkpointing {unit}"),
            Step::WritingManifest => f.write_str("writing manifest"),
            Step::HandingOver => f.write_str("handing over to systemd kexec"),
            Step::Undoing => f.write_str("undoing"),
        }
    }
}

/// Turns steps into a percentage that never goes back (an undo, or a unit
/// checkpointed again, keeps the last value).
#[derive(Debug, Clone, Default)]
pub struct ProgressPercent {
    last: i32,
}

impl ProgressPercent {
    /// The percentage at the start of `step`.
    pub fn at(&mut self, step: &Step) -> i32 {
        if let Some(value) = step.percent() {
            self.last = self.last.max(value);
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpointing(index: usize, of: usize) -> Step {
        Step::Checkpointing {
            unit: format!("u{index}.service"),
            index,
            of,
        }
    }

    #[test]
    fn an_update_moves_forward_step_by_step() {
        let steps = [
            Step::Planning,
            Step::LoadingKernel,
            Step::GuardingUnits,
            checkpointing(0, 2),
            checkpointing(1, 2),
            Step::WritingManifest,
            Step::HandingOver,
        ];
        let mut percent = ProgressPercent::default();
        let seen: Vec<i32> = steps.iter().map(|s| percent.at(s)).collect();
        assert_eq!(seen, vec![2, 10, 20, 25, 55, 88, 95]);
        // D-Bus's Operation and the CLI's progress lines (the lab matches
        // "handing over to systemd kexec"): a change here is one there.
        assert_eq!(
            steps.iter().map(Step::to_string).collect::<Vec<_>>(),
            vec![
                "planning",
                "loading kernel",
                "guarding units",
                "checkpointing u0.service",
                "checkpointing u1.service",
                "writing manifest",
                "handing over to systemd kexec",
            ]
        );
    }

    #[test]
    fn an_undo_or_a_step_out_of_range_never_moves_progress_back() {
        let mut percent = ProgressPercent::default();
        assert_eq!(percent.at(&Step::GuardingUnits), 20);
        assert_eq!(percent.at(&checkpointing(0, 1)), 25);
        assert_eq!(percent.at(&Step::Undoing), 25);
        assert_eq!(percent.at(&checkpointing(5, 1)), 25);
        assert_eq!(checkpointing(0, 0).percent(), Some(25));
        assert!(checkpointing(99, 100).percent() < Step::WritingManifest.percent());
    }

    /// Every variant once, by an exhaustive match: a new step does not
    /// compile until it is here, and then the tests below name it.
    fn variant_index(step: &Step) -> usize {
        match step {
            Step::Planning => 0,
            Step::LoadingKernel => 1,
            Step::GuardingUnits => 2,
            Step::Checkpointing { .. } => 3,
            Step::WritingManifest => 4,
            Step::HandingOver => 5,
            Step::Undoing => 6,
        }
    }

    /// One step of each variant.
    fn every_step() -> Vec<Step> {
        let mut steps = Step::sequence(&["a.service".to_string()]);
        steps.push(Step::Undoing);
        steps
    }

    #[test]
    fn machine_names_are_stable_distinct_and_the_json_tag() {
        let steps = every_step();
        let indices: Vec<usize> = steps.iter().map(variant_index).collect();
        assert_eq!(indices, (0..steps.len()).collect::<Vec<_>>());
        // Tooling matches on these: a rename is a breaking change.
        let names: Vec<&str> = steps.iter().map(Step::as_str).collect();
        assert_eq!(
            names,
            vec![
                "planning",
                "loading-kernel",
                "guarding-units",
                "checkpointing",
                "writing-manifest",
                "handing-over",
                "undoing",
            ]
        );
        for step in &steps {
            let json = serde_json::to_value(step).expect("serializes");
            assert_eq!(json["step"], step.as_str(), "{json}");
        }
        assert_eq!(
            serde_json::to_value(&steps[3]).expect("serializes"),
            serde_json::json!({"step": "checkpointing", "unit": "a.service", "index": 0, "of": 1})
        );
    }

    #[test]
    fn a_run_announces_every_step_but_the_undo_and_moves_forward() {
        let units = ["a.service".to_string(), "b.service".to_string()];
        let steps = Step::sequence(&units);
        let mut seen: Vec<usize> = steps.iter().map(variant_index).collect();
        seen.dedup();
        assert_eq!(
            seen,
            vec![0, 1, 2, 3, 4, 5],
            "in order, each variant but the undo"
        );
        assert_eq!(Step::Undoing.percent(), None);
        let mut percent = ProgressPercent::default();
        let values: Vec<i32> = steps.iter().map(|s| percent.at(s)).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert!(values.iter().all(|v| (1..100).contains(v)), "{values:?}");
    }
}
