//! A recording [`NextBootSystem`] for tests: every effect is a line in
//! [`FakeNextBoot::calls`], any of them can be made to fail, and the
//! outcome records are written for real into the test's transaction
//! directory (they are what the next call reads).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::criu::{Notification, NotifyFn, RestoreOptions, scripts};
use crate::manifest::{UnitOutcome, write_outcome};

use super::NextBootSystem;
use super::hold::Request;

pub(super) struct FakeNextBoot {
    pub boot_id: String,
    /// Whether a hold process answers.
    pub hold: bool,
    /// What the hold answers to `holds UNIT`.
    pub hold_holds: bool,
    /// Pids some process of this boot already has.
    pub pids_in_use: Vec<i32>,
    /// The pid CRIU restores.
    pub restored_pid: i32,
    /// nftables tables that exist.
    pub tables: Vec<String>,
    /// `ActiveState` per unit; `start` makes a unit active.
    pub states: RefCell<BTreeMap<String, String>>,
    /// Calls starting with one of these fail.
    pub failing: Vec<String>,
    calls: RefCell<Vec<String>>,
}

impl FakeNextBoot {
    /// The boot `boot_id`, with a hold that holds every unit, no pid taken.
    pub fn new(boot_id: &str) -> Self {
        FakeNextBoot {
            boot_id: boot_id.to_string(),
            hold: true,
            hold_holds: true,
            pids_in_use: Vec::new(),
            restored_pid: 550,
            tables: Vec::new(),
            states: RefCell::new(BTreeMap::new()),
            failing: Vec::new(),
            calls: RefCell::new(Vec::new()),
        }
    }

    /// Makes every call starting with `prefix` fail.
    pub fn failing(mut self, prefix: &str) -> Self {
        self.failing.push(prefix.to_string());
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Whether a call starting with `prefix` was made.
    pub fn called(&self, prefix: &str) -> bool {
        self.calls.borrow().iter().any(|c| c.starts_with(prefix))
    }

    pub fn set_state(&self, unit: &str, state: &str) {
        self.states
            .borrow_mut()
            .insert(unit.to_string(), state.to_string());
    }

    /// Records `call`; fails if it was told to.
    fn call(&self, call: String) -> Result<()> {
        self.calls.borrow_mut().push(call.clone());
        if self.failing.iter().any(|f| call.starts_with(f)) {
            return Err(anyhow!("injected failure: {call}"));
        }
        Ok(())
    }
}

impl NextBootSystem for FakeNextBoot {
    fn boot_id(&self) -> Result<String> {
        Ok(self.boot_id.clone())
    }

    fn hold_running(&self) -> bool {
        self.hold
    }

    fn ask_hold(&self, request: &Request) -> Result<String> {
        self.call(format!("hold {}", request.to_line()))?;
        Ok(match request {
            Request::FreePids(_) => "freed=550,551 missing=".to_string(),
            Request::Holds(_) => if self.hold_holds { "yes" } else { "no" }.to_string(),
            Request::Release(..) => "packets=0".to_string(),
        })
    }

    fn pid_in_use(&self, pid: i32) -> bool {
        self.pids_in_use.contains(&pid)
    }

    fn criu_restore(
        &self,
        _options: &RestoreOptions<'_>,
        _timeout: Duration,
        notify: &mut NotifyFn<'_>,
    ) -> Result<i32> {
        self.call("criu restore".to_string())?;
        // CRIU stops at the first hook that fails.
        notify(Notification {
            script: scripts::PRE_RESTORE,
            pid: None,
        })?;
        Ok(self.restored_pid)
    }

    fn with_window_scaling_off(&self, restore: &mut dyn FnMut() -> Result<i32>) -> Result<i32> {
        self.call("window-scaling off".to_string())?;
        let restored = restore();
        self.calls
            .borrow_mut()
            .push("window-scaling back".to_string());
        restored
    }

    fn extract_archive(&self, archive: &Path, target: &Path, _extra: &[&str]) -> Result<()> {
        self.call(format!(
            "extract {} into {}",
            archive.display(),
            target.display()
        ))
    }

    fn write_pid_file(&self, path: &Path, pid: i32) -> Result<()> {
        self.call(format!("pid-file {} {pid}", path.display()))
    }

    fn write_outcome(&self, transaction_dir: &Path, outcome: &UnitOutcome) -> Result<()> {
        self.call(format!(
            "outcome {} {}",
            outcome.unit,
            outcome.outcome.as_str()
        ))?;
        write_outcome(transaction_dir, outcome)?;
        Ok(())
    }

    fn nft_apply(&self, rules: &str) -> Result<()> {
        self.call(format!("nft {}", rules.trim().replace('\n', "; ")))
    }

    fn nft_table_exists(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t == name)
    }

    fn nft_delete_table(&self, name: &str) -> Result<()> {
        self.call(format!("nft delete table {name}"))
    }

    fn unit_active_state(&self, unit: &str) -> String {
        self.states.borrow().get(unit).cloned().unwrap_or_default()
    }

    fn mark_finished(&self, transaction_dir: &Path) -> Result<()> {
        self.call(format!("mark-finished {}", transaction_dir.display()))
    }

    fn daemon_reload(&self) -> Result<()> {
        self.call("daemon-reload".to_string())
    }

    fn start_unit(&self, unit: &str) -> Result<()> {
        self.call(format!("start {unit}"))?;
        self.set_state(unit, "active");
        Ok(())
    }
}
