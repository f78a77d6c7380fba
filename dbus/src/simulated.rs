//! An engine that touches nothing: for tests of the D-Bus layer without
//! root, CRIU or a kernel to kexec.
//!
//! It records every request, plays the real transaction's steps
//! ([`Step::sequence`], so the progress percentages are exercised too),
//! and can be told to fail the plan, to fail the run after the first
//! checkpoint (with the rollback's [`Step::Undoing`]), or to hold after
//! planning until released, so a test can look at the daemon while an
//! operation runs.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard, PoisonError};

use seamless_reboot_core::transaction::{ProgressPercent, Step, UpdateRequest};

use crate::engine::{
    CheckpointedUnit, Engine, PlanSummary, PlannedUnitSummary, ProgressFn, Summary,
};
use crate::report::Report;

#[derive(Debug, Default)]
struct Script {
    checks: Vec<UpdateRequest>,
    starts: Vec<UpdateRequest>,
    check_problems: Option<Vec<String>>,
    start_failure: Option<String>,
    restore: Option<Report>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SimulatedEngine {
    script: Mutex<Script>,
    gate: Mutex<Option<Receiver<()>>>,
}

/// The units a request names, or the one the simulation pretends is
/// configured.
fn units_of(request: &UpdateRequest) -> Vec<String> {
    if request.units.is_empty() {
        vec!["configured.service".into()]
    } else {
        request.units.clone()
    }
}

/// `vmlinuz-6.12.0` -> `6.12.0`.
fn release_of(request: &UpdateRequest) -> String {
    let name = request
        .kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("vmlinuz-").unwrap_or(&name).to_string()
}

impl SimulatedEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `check` (and the plan inside `start`) will report these problems.
    pub fn fail_check(&self, problems: &[&str]) {
        self.script().check_problems = Some(problems.iter().map(|p| (*p).to_string()).collect());
    }

    /// `start` will fail after its first checkpoint with this error.
    pub fn fail_start(&self, error: &str) {
        self.script().start_failure = Some(error.to_string());
    }

    /// What `restore_report` answers.
    pub fn set_restore_report(&self, report: Option<Report>) {
        self.script().restore = report;
    }

    /// The next `start` waits after planning until the returned sender
    /// sends or is dropped.
    pub fn hold(&self) -> Sender<()> {
        let (tx, rx) = channel();
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
        tx
    }

    /// Every request `check` got.
    pub fn checks(&self) -> Vec<UpdateRequest> {
        self.script().checks.clone()
    }

    /// Every request `start` got.
    pub fn starts(&self) -> Vec<UpdateRequest> {
        self.script().starts.clone()
    }

    fn plan(&self, request: &UpdateRequest) -> Result<PlanSummary, Vec<String>> {
        if let Some(problems) = self.script().check_problems.clone() {
            return Err(problems);
        }
        Ok(PlanSummary {
            transaction_id: "t0-simulated".into(),
            transaction_dir: "/var/lib/seamless-reboot/images/t0-simulated".into(),
            kernel: request.kernel.display().to_string(),
            initrd: request.initrd.as_ref().map(|p| p.display().to_string()),
            source_kernel: "simulated-source".into(),
            target_kernel: release_of(request),
            cmdline: request.append.join(" "),
            units: units_of(request)
                .into_iter()
                .map(|unit| PlannedUnitSummary {
                    unit,
                    main_pid: 4242,
                    processes: 1,
                    connections: 2,
                    sandbox: String::new(),
                })
                .collect(),
            left_out: Vec::new(),
        })
    }
}

impl Engine for SimulatedEngine {
    fn check(&self, request: &UpdateRequest) -> Result<PlanSummary, Vec<String>> {
        self.script().checks.push(request.clone());
        self.plan(request)
    }

    fn start(
        &self,
        request: &UpdateRequest,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Summary, String> {
        self.script().starts.push(request.clone());
        let units = units_of(request);
        let mut percent = ProgressPercent::default();
        let mut step = |step: Step| {
            let at = percent.at(&step);
            progress(&step, at);
        };
        // The real transaction's steps, as core lists them: a step added
        // or renamed there is played here too.
        let mut plan = None;
        let mut done = Vec::new();
        for next in Step::sequence(&units) {
            step(next.clone());
            match next {
                Step::Planning => {
                    plan =
                        Some(self.plan(request).map_err(|problems| {
                            format!("cannot update: {}", problems.join("; "))
                        })?);
                    let gate = self
                        .gate
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if let Some(gate) = gate {
                        // A message or a dropped sender both release it.
                        let _ = gate.recv();
                    }
                }
                Step::Checkpointing { unit, .. } => {
                    // Read as the step comes: a test may set it while
                    // the run waits at the gate.
                    let failure = self.script().start_failure.clone();
                    if let Some(error) = failure {
                        step(Step::Undoing);
                        return Err(format!("update failed: {error}; everything was undone"));
                    }
                    done.push(CheckpointedUnit {
                        unit,
                        frozen_ms: 1,
                        connections: 2,
                    });
                }
                _ => {}
            }
        }
        let plan = plan.ok_or("internal error: the simulated run skipped planning")?;
        Ok(Summary {
            transaction_id: plan.transaction_id,
            target_kernel: plan.target_kernel,
            units: done,
        })
    }

    fn restore_report(&self) -> Option<Report> {
        self.script().restore.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_every_step_of_the_transaction_with_its_percentage() {
        let engine = SimulatedEngine::new();
        let request = UpdateRequest {
            kernel: "/boot/vmlinuz-6.12.0".into(),
            units: vec!["a.service".into(), "b.service".into()],
            ..Default::default()
        };
        let mut steps = Vec::new();
        let summary = engine
            .start(&request, &mut |s: &Step, p: i32| steps.push((s.clone(), p)))
            .expect("succeeds");
        let mut percent = ProgressPercent::default();
        let want: Vec<(Step, i32)> = Step::sequence(&request.units)
            .into_iter()
            .map(|s| {
                let p = percent.at(&s);
                (s, p)
            })
            .collect();
        assert_eq!(steps, want);
        assert_eq!(steps[0], (Step::Planning, 2));
        assert_eq!(summary.target_kernel, "6.12.0");
        assert_eq!(summary.units.len(), 2);
        assert_eq!(engine.starts().len(), 1);
    }

    #[test]
    fn fails_after_the_first_checkpoint_when_told() {
        let engine = SimulatedEngine::new();
        engine.fail_start("CRIU said no");
        let mut steps = Vec::new();
        let err = engine
            .start(&UpdateRequest::default(), &mut |s: &Step, _: i32| {
                steps.push(s.clone())
            })
            .expect_err("fails");
        assert!(err.contains("CRIU said no"), "{err}");
        assert_eq!(steps.last(), Some(&Step::Undoing));
    }
}
