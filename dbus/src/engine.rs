//! What the daemon does when asked: plan a transaction, or run one.
//!
//! [`Engine`] is the seam between the D-Bus layer and the system. The real
//! [`LinuxEngine`] wraps `seamless_reboot_core::transaction` with
//! [`LinuxPlatform`]; [`crate::simulated::SimulatedEngine`] stands in for it
//! in tests.

use std::path::{Path, PathBuf};

use seamless_reboot_config::Config;
use seamless_reboot_core::platform::LinuxPlatform;
use seamless_reboot_core::transaction::{self, Plan, ProgressPercent, Step, UpdateRequest};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::report::{Report, restore_report};

/// The plan of a transaction, as `Check` returns it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub transaction_id: String,
    /// Where the snapshot would be written.
    pub transaction_dir: String,
    pub kernel: String,
    /// The initrd chosen (explicit or found next to the kernel), if any.
    pub initrd: Option<String>,
    pub source_kernel: String,
    pub target_kernel: String,
    /// The next kernel's full command line.
    pub cmdline: String,
    pub units: Vec<PlannedUnitSummary>,
    /// Units left to the next boot by their policy.
    #[serde(default)]
    pub left_out: Vec<LeftOutSummary>,
}

/// A unit of a [`PlanSummary`] that the update does not checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOutSummary {
    pub unit: String,
    /// `restart` or `skip`.
    pub policy: String,
    pub reason: String,
}

/// One unit of a [`PlanSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedUnitSummary {
    pub unit: String,
    pub main_pid: i32,
    pub processes: usize,
    pub connections: usize,
    /// The namespaces of its own the restore builds again, in an operator's
    /// words; empty for a unit without any.
    #[serde(default)]
    pub sandbox: String,
}

impl PlanSummary {
    /// The summary of a core [`Plan`].
    pub fn from_plan(plan: &Plan) -> Self {
        PlanSummary {
            transaction_id: plan.transaction_id.clone(),
            transaction_dir: plan.transaction_dir.display().to_string(),
            kernel: plan.kernel.path().display().to_string(),
            initrd: plan.initrd.as_ref().map(|i| i.path().display().to_string()),
            source_kernel: plan.source_kernel.clone(),
            target_kernel: plan.kernel.release().to_string(),
            cmdline: plan.cmdline.clone(),
            units: plan
                .units
                .iter()
                .map(|u| PlannedUnitSummary {
                    unit: u.status.unit.clone(),
                    main_pid: u.status.main_pid,
                    processes: u.inventory.pids.len(),
                    connections: u.inventory.established.len(),
                    sandbox: transaction::sandbox_summary(&u.inventory).unwrap_or_default(),
                })
                .collect(),
            left_out: plan
                .left_out
                .iter()
                .map(|l| LeftOutSummary {
                    unit: l.unit.clone(),
                    policy: l.policy.to_string(),
                    reason: l.reason.clone(),
                })
                .collect(),
        }
    }
}

/// What a transaction that handed over to systemd's kexec did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub transaction_id: String,
    pub target_kernel: String,
    pub units: Vec<CheckpointedUnit>,
}

/// One checkpointed unit of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointedUnit {
    pub unit: String,
    /// How long the unit was frozen by its checkpoint, in milliseconds.
    pub frozen_ms: u64,
    /// Its established TCP connections, carried over.
    pub connections: usize,
}

/// The progress of a running transaction: the step it starts, and how far
/// the update is ([`ProgressPercent`]).
pub type ProgressFn<'a> = dyn FnMut(&Step, i32) + 'a;

/// Plans and runs transactions. Shared between the bus's executor and the
/// worker thread, hence `Send + Sync`.
pub trait Engine: Send + Sync {
    /// Plans without changing anything; every problem found, not just the
    /// first.
    fn check(&self, request: &UpdateRequest) -> Result<PlanSummary, Vec<String>>;

    /// Plans and runs the transaction to the kexec hand-over, reporting
    /// each step. `Ok` means systemd accepted the kexec request; `Err` is
    /// the failure, including what could not be undone.
    fn start(
        &self,
        request: &UpdateRequest,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Summary, String>;

    /// What the restore in this boot recorded for the newest transaction,
    /// or `None` when there is no transaction to report on.
    fn restore_report(&self) -> Option<Report>;
}

/// Builds the core's request from the D-Bus arguments: `initrd` empty means
/// "find it next to the kernel". Paths must be absolute: the daemon's
/// working directory is not the caller's.
/// The arguments of `Check` and `Start` as they come over the bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallArgs {
    /// Absolute path of the new kernel.
    pub kernel: String,
    /// Absolute path of its initrd; "" finds the one next to the kernel.
    pub initrd: String,
    /// Kernel arguments added to the current command line.
    pub append: Vec<String>,
    /// Units to preserve; [] takes the configured ones.
    pub units: Vec<String>,
    /// Options by name: [`crate::FLAG_ALLOW_DOWNGRADE`].
    pub flags: Vec<String>,
}

impl CallArgs {
    /// What the administrator is shown when polkit asks them to
    /// authenticate `Start`.
    pub fn polkit_details(&self) -> Vec<(&'static str, String)> {
        let or = |list: &[String], empty: &str| {
            if list.is_empty() {
                empty.to_string()
            } else {
                list.join(" ")
            }
        };
        vec![
            ("kernel", self.kernel.clone()),
            (
                "initrd",
                if self.initrd.is_empty() {
                    "the one next to the kernel".to_string()
                } else {
                    self.initrd.clone()
                },
            ),
            ("append", or(&self.append, "(none)")),
            ("units", or(&self.units, "those in the configuration")),
            ("flags", or(&self.flags, "(none)")),
        ]
    }
}

pub fn request_from_args(args: CallArgs) -> Result<UpdateRequest, ServiceError> {
    let CallArgs {
        kernel,
        initrd,
        append,
        units,
        flags,
    } = args;
    let (kernel, initrd) = (kernel.as_str(), initrd.as_str());
    let absolute = |what: &str, path: &str| -> Result<PathBuf, ServiceError> {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(ServiceError::InvalidArgs(format!(
                "{what} must be an absolute path, got {path:?}"
            )))
        }
    };
    let kernel = absolute("kernel", kernel)?;
    let initrd = match initrd {
        "" => None,
        path => Some(absolute("initrd", path)?),
    };
    if let Some(bad) = append.iter().find(|a| a.is_empty() || a.contains('\0')) {
        return Err(ServiceError::InvalidArgs(format!(
            "kernel command line argument {bad:?} is empty or contains NUL"
        )));
    }
    if let Some(bad) = units.iter().find(|u| u.is_empty() || u.contains('/')) {
        return Err(ServiceError::InvalidArgs(format!(
            "{bad:?} is not a unit name"
        )));
    }
    let mut allow_downgrade = false;
    for flag in &flags {
        match flag.as_str() {
            crate::FLAG_ALLOW_DOWNGRADE => allow_downgrade = true,
            // dbus-send cannot send an empty array: `array:string:` is [""].
            "" => {}
            other => {
                return Err(ServiceError::InvalidArgs(format!(
                    "unknown flag {other:?}; known: {}",
                    crate::FLAG_ALLOW_DOWNGRADE
                )));
            }
        }
    }
    Ok(UpdateRequest {
        kernel,
        initrd,
        append,
        units,
        allow_downgrade,
        ..Default::default()
    })
}

/// The real engine: the core transaction on the running system, with the
/// configuration read afresh for every request (so an edit in `/etc` needs
/// no daemon restart).
#[derive(Debug, Clone)]
pub struct LinuxEngine {
    /// Root under which the configuration is searched (`/` on a system).
    config_root: PathBuf,
    /// The `seamless-reboot` binary the restore drop-ins run.
    restore_binary: PathBuf,
}

impl LinuxEngine {
    /// An engine reading the configuration under `/` and naming
    /// `restore_binary` in the restore drop-ins.
    pub fn new(restore_binary: PathBuf) -> Self {
        LinuxEngine {
            config_root: PathBuf::from("/"),
            restore_binary,
        }
    }

    /// The same, with the configuration searched under another root.
    pub fn with_config_root(mut self, root: &Path) -> Self {
        self.config_root = root.to_path_buf();
        self
    }

    fn config(&self) -> Result<Config, String> {
        Config::load_from_root(&self.config_root)
            .map(|loaded| loaded.config)
            .map_err(|e| format!("configuration: {e}"))
    }
}

/// The request with the configuration's defaults applied, as the command
/// line applies them: the configured units when none are named, the
/// configured kernel arguments after the caller's, and the units' policies.
pub fn with_config_defaults(request: &UpdateRequest, config: &Config) -> UpdateRequest {
    let mut request = request.clone();
    if request.units.is_empty() {
        request.units = config.units.clone();
    }
    request.append.extend(config.kernel.append.iter().cloned());
    request.policy = config.policy.clone();
    request
        .forbidden_store_filesystems
        .clone_from(&config.image_dir_forbidden_filesystems);
    request
}

impl Engine for LinuxEngine {
    fn check(&self, request: &UpdateRequest) -> Result<PlanSummary, Vec<String>> {
        let config = self.config().map_err(|e| vec![e])?;
        let request = with_config_defaults(request, &config);
        let platform = LinuxPlatform::new(config.timeouts.checkpoint());
        transaction::plan(&platform, &request, &config.image_dir, &self.restore_binary)
            .map(|plan| PlanSummary::from_plan(&plan))
            .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    fn start(
        &self,
        request: &UpdateRequest,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Summary, String> {
        let mut percent = ProgressPercent::default();
        progress(&Step::Planning, percent.at(&Step::Planning));
        let config = self.config()?;
        let request = with_config_defaults(request, &config);
        let platform = LinuxPlatform::new(config.timeouts.checkpoint());
        let plan = transaction::plan(&platform, &request, &config.image_dir, &self.restore_binary)
            .map_err(|problems| {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!("cannot update: {}", problems.join("; "))
            })?;
        let mut step = |step: &Step| {
            let at = percent.at(step);
            progress(step, at);
        };
        let done = transaction::run(&platform, &plan, &mut step)
            .map_err(|e| format!("update failed: {e}"))?;
        Ok(Summary {
            transaction_id: plan.transaction_id.clone(),
            target_kernel: plan.kernel.release().to_string(),
            units: done
                .into_iter()
                .map(|c| CheckpointedUnit {
                    unit: c.unit,
                    frozen_ms: u64::try_from(c.frozen.as_millis()).unwrap_or(u64::MAX),
                    connections: c.connections,
                })
                .collect(),
        })
    }

    fn restore_report(&self) -> Option<Report> {
        match self.config() {
            Ok(config) => restore_report(&config.image_dir),
            Err(e) => {
                tracing::warn!("cannot find the restore records: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn request_from_args_checks_paths_and_names() {
        let args = |kernel: &str, initrd: &str, append, units, flags| CallArgs {
            kernel: kernel.into(),
            initrd: initrd.into(),
            append,
            units,
            flags,
        };
        let r = request_from_args(args(
            "/boot/vmlinuz-6.12",
            "",
            strings(&["quiet"]),
            strings(&["a.service"]),
            vec![],
        ))
        .expect("valid");
        assert!(!r.allow_downgrade);
        assert_eq!(r.kernel, PathBuf::from("/boot/vmlinuz-6.12"));
        assert_eq!(r.initrd, None);
        assert_eq!(r.append, strings(&["quiet"]));
        assert_eq!(r.units, strings(&["a.service"]));

        let r = request_from_args(args(
            "/k",
            "/boot/initrd.img",
            vec![],
            vec![],
            strings(&["allow-downgrade"]),
        ))
        .expect("valid");
        assert_eq!(r.initrd, Some(PathBuf::from("/boot/initrd.img")));
        assert!(r.allow_downgrade);

        for (kernel, initrd, append, units, flags) in [
            ("vmlinuz", "", vec![], vec![], vec![]),
            ("", "", vec![], vec![], vec![]),
            ("/k", "initrd.img", vec![], vec![], vec![]),
            ("/k", "", strings(&[""]), vec![], vec![]),
            ("/k", "", vec![], strings(&["../etc/passwd"]), vec![]),
            ("/k", "", vec![], strings(&[""]), vec![]),
            ("/k", "", vec![], vec![], strings(&["force"])),
        ] {
            let err =
                request_from_args(args(kernel, initrd, append, units, flags)).expect_err("invalid");
            assert!(matches!(err, ServiceError::InvalidArgs(_)), "{err:?}");
        }
    }

    #[test]
    fn config_defaults_apply_like_the_command_line() {
        let config = Config {
            units: strings(&["configured.service"]),
            kernel: seamless_reboot_config::Kernel {
                append: strings(&["from-config"]),
            },
            ..Config::default()
        };
        let request = UpdateRequest {
            kernel: "/k".into(),
            append: strings(&["from-caller"]),
            ..Default::default()
        };
        let r = with_config_defaults(&request, &config);
        assert_eq!(r.units, strings(&["configured.service"]));
        assert_eq!(r.append, strings(&["from-caller", "from-config"]));

        let named = UpdateRequest {
            units: strings(&["named.service"]),
            ..request
        };
        assert_eq!(
            with_config_defaults(&named, &config).units,
            strings(&["named.service"])
        );
    }

    #[test]
    fn linux_engine_reports_configuration_errors_as_problems() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("etc/seamless-reboot");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.toml"), "no_such_key = 1\n").expect("write");
        let engine =
            LinuxEngine::new("/usr/bin/seamless-reboot".into()).with_config_root(root.path());
        let request = UpdateRequest {
            kernel: "/nonexistent".into(),
            ..Default::default()
        };
        let problems = engine.check(&request).expect_err("bad config");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("configuration: "), "{problems:?}");
        let mut steps = Vec::new();
        let err = engine
            .start(&request, &mut |s: &Step, p: i32| steps.push((s.clone(), p)))
            .expect_err("bad config");
        assert!(err.starts_with("configuration: "), "{err}");
        assert_eq!(steps, vec![(Step::Planning, 2)]);
    }
}
