//! The interface's state and rules, without zbus.
//!
//! * One operation at a time: `Start` while one runs replies `Busy`; so does
//!   `Start` after a transaction handed the machine over to kexec (the new
//!   kernel is loaded and the units are checkpointed: a second transaction
//!   would be wrong, the machine is about to go down).
//! * Every caller is authorized before anything is planned or started;
//!   arguments are validated first (it costs nothing and spares a password
//!   prompt for a call that would fail anyway).
//! * `Start` returns as soon as the operation is claimed; the transaction
//!   runs on a worker thread, which reports each step through [`Events`]
//!   (`PropertiesChanged` on the bus) and ends with `Completed`.
//! * `Check` runs the engine's plan on a thread of its own, so the bus stays
//!   responsive while `systemctl` and `/proc` are read.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seamless_reboot_core::transaction::{Step, UpdateRequest};

use crate::auth::Action;
use crate::auth::Authorizer;
use crate::engine::{CallArgs, Engine, request_from_args};
use crate::error::ServiceError;
use crate::report::Report;

/// Property names, as on the bus.
pub const PROP_OPERATION: &str = "Operation";
pub const PROP_PROGRESS: &str = "Progress";
pub const PROP_LAST_ERROR: &str = "LastError";
pub const PROP_LAST_REPORT: &str = "LastReport";

/// `Operation` when nothing runs.
pub const OPERATION_IDLE: &str = "idle";
/// `Operation` after a transaction handed over to systemd's kexec.
pub const OPERATION_REBOOTING: &str = "rebooting";

/// The value of a changed property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Str(String),
    Int(i32),
}

/// Where the worker's news goes: the bus in the daemon, a list in tests.
/// Called only from the worker thread, never from the bus's executor.
pub trait Events: Send + Sync {
    /// These properties changed: `changed` with their new values,
    /// `invalidated` without (the client reads them if it cares).
    fn properties_changed(
        &self,
        changed: &[(&'static str, PropertyValue)],
        invalidated: &[&'static str],
    );
    /// The operation ended.
    fn completed(&self, success: bool, message: &str);
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing runs; `Start` may start.
    Idle,
    /// A transaction runs on the worker thread.
    Running,
    /// A transaction handed the machine over to systemd's kexec.
    HandedOver,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    operation: String,
    progress: i32,
    last_error: String,
    /// The report of this daemon's own last transaction; `None` until one
    /// ends, and then `LastReport` comes from the restore records on disk.
    last_report: Option<Report>,
    last_activity: Instant,
    /// The daemon is stopping: no new operation may start.
    stopping: bool,
}

struct Inner {
    engine: Arc<dyn Engine>,
    authorizer: Arc<dyn Authorizer>,
    events: Arc<dyn Events>,
    state: Mutex<State>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// The interface's logic. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("state", &*self.state())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; go on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Service {
    pub fn new(
        engine: Arc<dyn Engine>,
        authorizer: Arc<dyn Authorizer>,
        events: Arc<dyn Events>,
    ) -> Self {
        Service {
            inner: Arc::new(Inner {
                engine,
                authorizer,
                events,
                state: Mutex::new(State {
                    phase: Phase::Idle,
                    operation: OPERATION_IDLE.into(),
                    progress: 0,
                    last_error: String::new(),
                    last_report: None,
                    last_activity: Instant::now(),
                    stopping: false,
                }),
                worker: Mutex::new(None),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn touch(&self) {
        self.state().last_activity = Instant::now();
    }

    async fn authorize(
        &self,
        method: &str,
        sender: Option<&str>,
        action: &Action,
    ) -> Result<(), ServiceError> {
        let Some(sender) = sender else {
            return Err(ServiceError::AccessDenied(
                "the call has no sender: only callers on the system bus can be authorized".into(),
            ));
        };
        match self.inner.authorizer.authorize(sender, action).await {
            Ok(who) => {
                tracing::info!("{method} by {sender}, {}", who.who);
                Ok(())
            }
            Err(why) => {
                tracing::warn!("{method} by {sender} refused: {why}");
                Err(ServiceError::AccessDenied(why))
            }
        }
    }

    fn busy_error(state: &State) -> Option<ServiceError> {
        let operation = &state.operation;
        match state.phase {
            Phase::Idle if state.stopping => Some(ServiceError::Busy(
                "the daemon is stopping; call again to start it anew".into(),
            )),
            Phase::Idle => None,
            Phase::Running => Some(ServiceError::Busy(format!(
                "an update is already running ({operation}); wait for its Completed signal"
            ))),
            Phase::HandedOver => Some(ServiceError::Busy(
                "an update has handed the machine over to kexec; it is about to reboot".into(),
            )),
        }
    }

    /// `Check`: the plan as JSON and no problems, or `""` and every
    /// problem found. Changes nothing.
    pub async fn check(
        &self,
        sender: Option<&str>,
        args: CallArgs,
    ) -> Result<(String, Vec<String>), ServiceError> {
        self.touch();
        let request = request_from_args(args)?;
        let action = Action {
            id: crate::POLKIT_ACTION_CHECK,
            details: Vec::new(),
        };
        self.authorize("Check", sender, &action).await?;
        let engine = self.inner.engine.clone();
        let planned =
            crate::unblock::unblock("seamless-reboot-check", move || engine.check(&request))
                .await
                .ok_or_else(|| {
                    ServiceError::Failed("planning failed unexpectedly (see the journal)".into())
                })?;
        self.touch();
        match planned {
            Ok(plan) => serde_json::to_string(&plan)
                .map(|json| (json, Vec::new()))
                .map_err(|e| ServiceError::Failed(format!("cannot serialize the plan: {e}"))),
            Err(problems) => Ok((String::new(), problems)),
        }
    }

    /// `Start`: claims the daemon and starts the transaction on the worker
    /// thread; returns at once.
    pub async fn start(&self, sender: Option<&str>, args: CallArgs) -> Result<(), ServiceError> {
        self.touch();
        let action = Action {
            id: crate::POLKIT_ACTION_START,
            details: args.polkit_details(),
        };
        let request = request_from_args(args)?;
        {
            let state = self.state();
            if let Some(busy) = Self::busy_error(&state) {
                return Err(busy);
            }
        }
        self.authorize("Start", sender, &action).await?;
        // Claim: another Start may have claimed it while polkit was asked.
        {
            let mut state = self.state();
            if let Some(busy) = Self::busy_error(&state) {
                return Err(busy);
            }
            state.phase = Phase::Running;
            state.operation = Step::Planning.to_string();
            state.progress = 0;
            state.last_error.clear();
            state.last_activity = Instant::now();
        }
        tracing::info!(
            "starting an update to {} (units: {})",
            request.kernel.display(),
            if request.units.is_empty() {
                "from the configuration".to_string()
            } else {
                request.units.join(", ")
            }
        );
        let service = self.clone();
        // Held while spawning, so wait_for_worker never misses the thread.
        let mut worker = lock(&self.inner.worker);
        let spawned = std::thread::Builder::new()
            .name("seamless-reboot-transaction".into())
            .spawn(move || service.work(&request));
        match spawned {
            Ok(handle) => {
                *worker = Some(handle);
                Ok(())
            }
            Err(e) => {
                let mut state = self.state();
                state.phase = Phase::Idle;
                state.operation = OPERATION_IDLE.into();
                Err(ServiceError::Failed(format!(
                    "cannot start the worker thread: {e}"
                )))
            }
        }
    }

    /// The worker thread: runs the engine, publishes each step, ends with
    /// `Completed`.
    fn work(&self, request: &UpdateRequest) {
        let events = self.inner.events.clone();
        events.properties_changed(
            &self.values(&[PROP_OPERATION, PROP_PROGRESS]),
            &[PROP_LAST_ERROR],
        );
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.inner.engine.start(request, &mut |step: &Step, percent: i32| {
                tracing::info!("update: {step} ({percent}%)");
                {
                    let mut state = self.state();
                    state.operation = step.to_string();
                    state.progress = percent.clamp(0, 100);
                    state.last_activity = Instant::now();
                }
                events.properties_changed(&self.values(&[PROP_OPERATION, PROP_PROGRESS]), &[]);
            })
        }))
        .unwrap_or_else(|_| Err("internal error: the transaction panicked (see the journal); check the units it was checkpointing".into()));
        let (success, message) = {
            let mut state = self.state();
            state.last_activity = Instant::now();
            match result {
                Ok(summary) => {
                    let units: Vec<String> = summary
                        .units
                        .iter()
                        .map(|u| {
                            format!(
                                "{} (frozen {} ms, {} connections)",
                                u.unit, u.frozen_ms, u.connections
                            )
                        })
                        .collect();
                    let message = format!(
                        "handed over to systemd: the machine now kexecs into {}; checkpointed {}",
                        summary.target_kernel,
                        units.join(", ")
                    );
                    state.phase = Phase::HandedOver;
                    state.operation = OPERATION_REBOOTING.into();
                    state.progress = 100;
                    state.last_report = Some(Report::Checkpoint(summary));
                    (true, message)
                }
                Err(error) => {
                    state.phase = Phase::Idle;
                    state.operation = OPERATION_IDLE.into();
                    state.progress = 0;
                    state.last_error = error.clone();
                    state.last_report = Some(Report::Failed {
                        error: error.clone(),
                    });
                    (false, error)
                }
            }
        };
        if success {
            tracing::info!("{message}");
        } else {
            tracing::error!("{message}");
        }
        events.properties_changed(
            &self.values(&[PROP_OPERATION, PROP_PROGRESS]),
            &[PROP_LAST_ERROR, PROP_LAST_REPORT],
        );
        events.completed(success, &message);
    }

    fn values(&self, names: &[&'static str]) -> Vec<(&'static str, PropertyValue)> {
        names
            .iter()
            .filter_map(|name| {
                let value = match *name {
                    PROP_OPERATION => PropertyValue::Str(self.operation()),
                    PROP_PROGRESS => PropertyValue::Int(self.progress()),
                    PROP_LAST_ERROR => PropertyValue::Str(self.last_error()),
                    PROP_LAST_REPORT => PropertyValue::Str(self.last_report()),
                    _ => return None,
                };
                Some((*name, value))
            })
            .collect()
    }

    /// `Operation`.
    pub fn operation(&self) -> String {
        self.state().operation.clone()
    }

    /// `Progress`, 0 to 100.
    pub fn progress(&self) -> i32 {
        self.state().progress
    }

    /// `LastError`, empty when the last operation did not fail.
    pub fn last_error(&self) -> String {
        self.state().last_error.clone()
    }

    /// `LastError` for a caller other than root: whether the last
    /// operation failed, not why (the reason names processes and paths).
    pub fn last_error_unprivileged(&self) -> String {
        if self.last_error().is_empty() {
            String::new()
        } else {
            crate::report::WITHHELD.to_string()
        }
    }

    /// `LastReport` for a caller other than root
    /// ([`Report::for_unprivileged`]).
    pub fn last_report_unprivileged(&self) -> String {
        let own = self.state().last_report.clone();
        own.or_else(|| self.inner.engine.restore_report())
            .map(|r| r.for_unprivileged().to_json())
            .unwrap_or_default()
    }

    /// `LastReport`: this daemon's own last transaction, or else the
    /// restore outcomes recorded on disk (read at each call: the next
    /// boot's restore may still be writing them), or `""`.
    pub fn last_report(&self) -> String {
        let own = self.state().last_report.clone();
        own.or_else(|| self.inner.engine.restore_report())
            .map(|r| r.to_json())
            .unwrap_or_default()
    }

    /// Where the daemon is.
    pub fn phase(&self) -> Phase {
        self.state().phase
    }

    /// Marks a client's interest (a property read), for the idle exit.
    pub fn note_activity(&self) {
        self.touch();
    }

    /// Whether the daemon may exit for being idle: nothing runs or has
    /// been handed over, no failure is waiting to be read, and no caller
    /// came for `after`.
    pub fn idle_for(&self, after: Duration) -> bool {
        let state = self.state();
        state.phase == Phase::Idle
            && state.last_error.is_empty()
            && state.last_activity.elapsed() >= after
    }

    /// Refuses every later `Start` (the daemon is stopping); returns
    /// whether an operation is running now.
    pub fn begin_stopping(&self) -> bool {
        let mut state = self.state();
        state.stopping = true;
        state.phase == Phase::Running
    }

    /// Waits for the worker thread, if one was started, to end.
    pub fn wait_for_worker(&self) {
        let handle = lock(&self.inner.worker).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the transaction thread panicked");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
