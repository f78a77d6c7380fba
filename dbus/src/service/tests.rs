//! The interface's rules against the simulated engine and a listed
//! authorizer: no bus, no root.

use std::sync::{Arc, Mutex, PoisonError};

use seamless_reboot_core::transaction::ProgressPercent;

use super::*;
use crate::auth::ListAuthorizer;
use crate::engine::PlanSummary;
use crate::simulated::SimulatedEngine;

/// [`Events`] that keeps everything, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Recorded>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Changed(Vec<(&'static str, PropertyValue)>, Vec<&'static str>),
    Completed(bool, String),
}

impl Recorder {
    pub fn events(&self) -> Vec<Recorded> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Events for Recorder {
    fn properties_changed(
        &self,
        changed: &[(&'static str, PropertyValue)],
        invalidated: &[&'static str],
    ) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Recorded::Changed(changed.to_vec(), invalidated.to_vec()));
    }

    fn completed(&self, success: bool, message: &str) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Recorded::Completed(success, message.to_string()));
    }
}

const CALLER: &str = ":1.42";
const KERNEL: &str = "/boot/vmlinuz-6.12.0";

struct Fixture {
    engine: Arc<SimulatedEngine>,
    auth: Arc<ListAuthorizer>,
    events: Arc<Recorder>,
    service: Service,
}

fn fixture(auth: ListAuthorizer) -> Fixture {
    let engine = Arc::new(SimulatedEngine::new());
    let auth = Arc::new(auth);
    let events = Arc::new(Recorder::default());
    let service = Service::new(engine.clone(), auth.clone(), events.clone());
    Fixture {
        engine,
        auth,
        events,
        service,
    }
}

fn allowed() -> Fixture {
    fixture(ListAuthorizer::allowing([CALLER]))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

fn check(f: &Fixture, sender: Option<&str>) -> Result<(String, Vec<String>), ServiceError> {
    zbus::block_on(f.service.check(
        sender,
        CallArgs {
            kernel: KERNEL.into(),
            append: strings(&["quiet"]),
            units: strings(&["a.service"]),
            ..CallArgs::default()
        },
    ))
}

fn start(f: &Fixture, sender: Option<&str>, units: &[&str]) -> Result<(), ServiceError> {
    zbus::block_on(f.service.start(
        sender,
        CallArgs {
            kernel: KERNEL.into(),
            units: strings(units),
            ..CallArgs::default()
        },
    ))
}

fn completions(events: &[Recorded]) -> Vec<(bool, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Recorded::Completed(ok, m) => Some((*ok, m.clone())),
            Recorded::Changed(..) => None,
        })
        .collect()
}

/// Every value `Operation` was announced with, in order.
fn operations(events: &[Recorded]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Recorded::Changed(changed, _) => changed.iter().find_map(|(n, v)| match (n, v) {
                (&PROP_OPERATION, PropertyValue::Str(s)) => Some(s.clone()),
                _ => None,
            }),
            Recorded::Completed(..) => None,
        })
        .collect()
}

fn progresses(events: &[Recorded]) -> Vec<i32> {
    events
        .iter()
        .filter_map(|e| match e {
            Recorded::Changed(changed, _) => changed.iter().find_map(|(n, v)| match (n, v) {
                (&PROP_PROGRESS, PropertyValue::Int(p)) => Some(*p),
                _ => None,
            }),
            Recorded::Completed(..) => None,
        })
        .collect()
}

#[test]
fn starts_idle() {
    let f = allowed();
    assert_eq!(f.service.operation(), "idle");
    assert_eq!(f.service.progress(), 0);
    assert_eq!(f.service.last_error(), "");
    assert_eq!(f.service.last_report(), "");
    assert_eq!(f.service.phase(), Phase::Idle);
}

#[test]
fn check_returns_the_plan_as_json() {
    let f = allowed();
    let (plan, problems) = check(&f, Some(CALLER)).expect("allowed");
    assert!(problems.is_empty(), "{problems:?}");
    let plan: PlanSummary = serde_json::from_str(&plan).expect("json");
    assert_eq!(plan.kernel, KERNEL);
    assert_eq!(plan.target_kernel, "6.12.0");
    assert_eq!(plan.units[0].unit, "a.service");
    let checks = f.engine.checks();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].initrd, None);
    assert_eq!(checks[0].append, strings(&["quiet"]));
    // A dry run changes nothing and announces nothing.
    assert_eq!(f.service.operation(), "idle");
    assert!(f.events.events().is_empty());
    assert!(f.engine.starts().is_empty());
}

#[test]
fn check_returns_every_problem() {
    let f = allowed();
    f.engine
        .fail_check(&["kernel: not a bzImage", "b.service: not running"]);
    let (plan, problems) = check(&f, Some(CALLER)).expect("allowed");
    assert_eq!(plan, "");
    assert_eq!(
        problems,
        strings(&["kernel: not a bzImage", "b.service: not running"])
    );
}

#[test]
fn check_requires_authorization() {
    let f = fixture(ListAuthorizer::deny_all());
    let err = check(&f, Some(CALLER)).expect_err("denied");
    assert!(matches!(err, ServiceError::AccessDenied(_)), "{err:?}");
    assert_eq!(err.error_name(), "org.freedesktop.DBus.Error.AccessDenied");
    assert!(f.engine.checks().is_empty());
    assert_eq!(f.auth.asked(), vec![CALLER]);
}

#[test]
fn a_call_without_sender_is_denied_without_asking() {
    let f = fixture(ListAuthorizer::allow_all());
    let err = check(&f, None).expect_err("denied");
    assert!(matches!(err, ServiceError::AccessDenied(_)), "{err:?}");
    let err = start(&f, None, &[]).expect_err("denied");
    assert!(matches!(err, ServiceError::AccessDenied(_)), "{err:?}");
    assert!(f.auth.asked().is_empty());
}

#[test]
fn invalid_arguments_fail_before_authorization() {
    let f = allowed();
    let relative = CallArgs {
        kernel: "vmlinuz".into(),
        ..CallArgs::default()
    };
    let err = zbus::block_on(f.service.check(Some(CALLER), relative)).expect_err("relative path");
    assert!(matches!(err, ServiceError::InvalidArgs(_)), "{err:?}");
    let relative = CallArgs {
        kernel: KERNEL.into(),
        initrd: "initrd".into(),
        ..CallArgs::default()
    };
    let err = zbus::block_on(f.service.start(Some(CALLER), relative)).expect_err("relative path");
    assert!(matches!(err, ServiceError::InvalidArgs(_)), "{err:?}");
    assert!(f.auth.asked().is_empty());
    assert_eq!(f.service.phase(), Phase::Idle);
}

#[test]
fn start_runs_to_the_handover_and_reports_each_step() {
    let f = allowed();
    start(&f, Some(CALLER), &["a.service", "b.service"]).expect("started");
    f.service.wait_for_worker();
    let events = f.events.events();
    // Operation and Progress are the core's steps and percentages: Start's
    // claim (planning, 0), each step of the run, then the hand-over.
    let steps = Step::sequence(&strings(&["a.service", "b.service"]));
    let mut want = vec![Step::Planning.to_string()];
    want.extend(steps.iter().map(Step::to_string));
    want.push(OPERATION_REBOOTING.to_string());
    assert_eq!(operations(&events), want);
    let mut percent = ProgressPercent::default();
    let mut want = vec![0];
    want.extend(steps.iter().map(|s| percent.at(s)));
    want.push(100);
    let progress = progresses(&events);
    assert_eq!(progress, want);
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // The last change invalidates LastError and LastReport (their values
    // depend on who reads them), then Completed follows.
    let n = events.len();
    assert!(
        matches!(&events[n - 2], Recorded::Changed(_, inv)
            if inv == &vec![PROP_LAST_ERROR, PROP_LAST_REPORT]),
        "{events:?}"
    );
    assert_eq!(
        completions(&events),
        vec![(
            true,
            "handed over to systemd: the machine now kexecs into 6.12.0; checkpointed \
             a.service (frozen 1 ms, 2 connections), b.service (frozen 1 ms, 2 connections)"
                .to_string()
        )]
    );
    assert_eq!(f.service.phase(), Phase::HandedOver);
    assert_eq!(f.service.operation(), "rebooting");
    assert_eq!(f.service.progress(), 100);
    assert_eq!(f.service.last_error(), "");
    let report: serde_json::Value = serde_json::from_str(&f.service.last_report()).expect("json");
    assert_eq!(report["kind"], "checkpoint");
    assert_eq!(report["units"][1]["unit"], "b.service");
    assert_eq!(
        f.engine.starts()[0].units,
        strings(&["a.service", "b.service"])
    );

    // The machine is about to kexec: no second transaction.
    let err = start(&f, Some(CALLER), &[]).expect_err("busy");
    assert!(matches!(err, ServiceError::Busy(_)), "{err:?}");
    assert_eq!(err.error_name(), "org.seamlessreboot.Reboot1.Error.Busy");
    assert!(!f.service.idle_for(Duration::ZERO));
}

#[test]
fn start_while_running_is_busy() {
    let f = allowed();
    let release = f.engine.hold();
    start(&f, Some(CALLER), &["a.service"]).expect("started");
    assert_eq!(f.service.phase(), Phase::Running);
    assert!(!f.service.idle_for(Duration::ZERO));
    let err = start(&f, Some(CALLER), &["a.service"]).expect_err("busy");
    match &err {
        ServiceError::Busy(m) => assert!(m.contains("already running (planning)"), "{m}"),
        other => panic!("not busy: {other:?}"),
    }
    // Check is a dry run: allowed while an update runs.
    check(&f, Some(CALLER)).expect("check while running");
    release.send(()).expect("release");
    f.service.wait_for_worker();
    assert_eq!(f.engine.starts().len(), 1);
    assert_eq!(completions(&f.events.events()).len(), 1);
}

#[test]
fn a_failed_start_sets_last_error_and_frees_the_daemon() {
    let f = allowed();
    f.engine.fail_start("CRIU could not checkpoint pid 7");
    start(&f, Some(CALLER), &["a.service"]).expect("started");
    f.service.wait_for_worker();
    let events = f.events.events();
    let done = completions(&events);
    assert_eq!(done.len(), 1);
    assert!(!done[0].0);
    assert!(
        done[0].1.contains("CRIU could not checkpoint pid 7"),
        "{}",
        done[0].1
    );
    assert!(operations(&events).contains(&Step::Undoing.to_string()));
    assert_eq!(
        operations(&events).last().map(String::as_str),
        Some(OPERATION_IDLE)
    );
    assert_eq!(f.service.phase(), Phase::Idle);
    assert_eq!(f.service.operation(), "idle");
    assert_eq!(f.service.progress(), 0);
    assert_eq!(f.service.last_error(), done[0].1);
    let report: serde_json::Value = serde_json::from_str(&f.service.last_report()).expect("json");
    assert_eq!(report["kind"], "failed");
    // A failure waiting to be read keeps the daemon from its idle exit.
    assert!(!f.service.idle_for(Duration::ZERO));

    // The next Start may go, and clears LastError as it claims the daemon.
    let release = f.engine.hold();
    start(&f, Some(CALLER), &["a.service"]).expect("started again");
    assert_eq!(f.service.last_error(), "");
    drop(release);
    f.service.wait_for_worker();
}

#[test]
fn start_requires_authorization_and_starts_nothing_when_denied() {
    let f = fixture(ListAuthorizer::allowing([":1.1"]));
    let err = start(&f, Some(CALLER), &["a.service"]).expect_err("denied");
    match &err {
        ServiceError::AccessDenied(m) => assert!(m.contains(CALLER), "{m}"),
        other => panic!("not denied: {other:?}"),
    }
    f.service.wait_for_worker();
    assert!(f.engine.starts().is_empty());
    assert!(f.events.events().is_empty());
    assert_eq!(f.service.phase(), Phase::Idle);
}

#[test]
fn last_report_falls_back_to_the_restore_records() {
    let f = allowed();
    f.engine
        .set_restore_report(Some(crate::report::Report::Restore {
            transaction_dir: "/var/lib/seamless-reboot/images/t1-1".into(),
            units: Vec::new(),
            error: None,
        }));
    let report: serde_json::Value = serde_json::from_str(&f.service.last_report()).expect("json");
    assert_eq!(report["kind"], "restore");
    assert_eq!(
        report["transaction_dir"],
        "/var/lib/seamless-reboot/images/t1-1"
    );
}

#[test]
fn stopping_refuses_new_starts() {
    let f = allowed();
    assert!(!f.service.begin_stopping());
    let err = start(&f, Some(CALLER), &[]).expect_err("stopping");
    assert!(matches!(err, ServiceError::Busy(_)), "{err:?}");
    assert!(f.engine.starts().is_empty());
}

#[test]
fn stopping_while_running_says_so_and_the_worker_finishes() {
    let f = allowed();
    let release = f.engine.hold();
    start(&f, Some(CALLER), &["a.service"]).expect("started");
    assert!(f.service.begin_stopping());
    drop(release);
    f.service.wait_for_worker();
    assert_eq!(f.service.phase(), Phase::HandedOver);
}

#[test]
fn idle_needs_the_quiet_period() {
    let f = allowed();
    assert!(f.service.idle_for(Duration::ZERO));
    f.service.note_activity();
    assert!(!f.service.idle_for(Duration::from_secs(3600)));
}

#[test]
fn check_and_start_ask_for_their_own_actions_and_start_shows_what_it_does() {
    let f = allowed();
    check(&f, Some(CALLER)).expect("checks");
    start(&f, Some(CALLER), &["a.service", "b.service"]).expect("starts");
    let actions = f.auth.actions();
    assert_eq!(actions[0].id, crate::POLKIT_ACTION_CHECK);
    assert_eq!(actions[1].id, crate::POLKIT_ACTION_START);
    let detail = |key: &str| {
        actions[1]
            .details
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(detail("kernel").as_deref(), Some(KERNEL));
    assert_eq!(detail("units").as_deref(), Some("a.service b.service"));
    assert_eq!(detail("flags").as_deref(), Some("(none)"));
}
