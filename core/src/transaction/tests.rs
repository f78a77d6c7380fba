//! The transaction's order of steps and every undo path, on a recording
//! fake of the system that can be told to fail any step.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use super::*;
use crate::criu::images::{PSTREE_IMAGE, SavedProcess, encode_process_tree};
use crate::inventory::{SocketCounts, UnitInventory};
use crate::kexec::boot_file::tests::{me, write_file};
use crate::kexec::bzimage::check_kernel_file_with;
use crate::kexec::bzimage::tests::{TEST_VERSION, synthetic_kernel};
use crate::kexec::{InitrdImage, KernelImage};
use crate::platform::{DumpStats, Platform, UnitStatus};

#[derive(Default)]
struct FakePlatform {
    calls: RefCell<Vec<String>>,
    fail: Vec<String>,
    tables: RefCell<Vec<String>>,
    /// Units whose dump leaves no readable process tree.
    no_tree: Vec<String>,
    /// Processes the inventory finds outside each unit's main tree.
    outside: Vec<crate::inventory::OutsideProcess>,
    /// Namespaces the inventory finds that are not PID 1's.
    namespaces: Vec<crate::inventory::ForeignNamespace>,
    /// Units whose failed dump kills them and leaves CRIU's lock table (a
    /// CRIU killed halfway).
    dies_in_failed_dump: Vec<String>,
    /// Units systemd shows as inactive.
    inactive: RefCell<Vec<String>>,
    /// The lock table each dump made: (unit, table).
    dump_tables: RefCell<Vec<(String, String)>>,
    /// Files the inventory finds that CRIU cannot checkpoint.
    unsupported: Vec<crate::inventory::UnsupportedFile>,
    /// Descendants of the main process the inventory finds in other cgroups.
    elsewhere: Vec<crate::inventory::DescendantElsewhere>,
    /// The mount sandbox the inventory finds.
    sandbox: Option<crate::inventory::sandbox::MountSandbox>,
    /// The shared memory the inventory finds.
    shared_memory: crate::inventory::shared_memory::SharedMemory,
    /// Unix connections to processes outside the unit the inventory finds.
    outside_unix: Vec<crate::inventory::OutsideUnixPeer>,
    /// Units whose dump was told about a mount sandbox.
    dumped_with_sandbox: RefCell<Vec<String>>,
    /// Other names of units: (alias, canonical name).
    aliases: Vec<(String, String)>,
    /// Free bytes where the images go (`None`: plenty).
    free: Option<u64>,
    /// The image store's owner and mode; `None`: not made yet.
    store_mode: Option<(u32, u32)>,
    /// The image store's filesystem type; `None`: ext4.
    store_fstype: Option<String>,
    /// The snapshot directory each unit's restore drop-in names.
    restore_from: RefCell<Vec<(String, PathBuf)>>,
    /// Units whose restore drop-in is in place now.
    restoring: RefCell<Vec<String>>,
    /// Units whose start fails while their restore drop-in is in place
    /// (a failed restore), though their own command would start.
    failing_restore: Vec<String>,
    /// Whether systemd has a kexec job now.
    kexec_job: std::cell::Cell<bool>,
    /// What the next answers about the kexec job are (then `kexec_job`).
    kexec_jobs: RefCell<Vec<bool>>,
    /// Units with the guard drop-in (a start of their own is skipped).
    guarded: RefCell<Vec<String>>,
}

impl FakePlatform {
    fn failing(steps: &[&str]) -> Self {
        FakePlatform {
            fail: steps.iter().map(|s| (*s).to_string()).collect(),
            ..Default::default()
        }
    }
    fn record(&self, call: String) -> Result<()> {
        let fails = self.fail.contains(&call);
        self.calls.borrow_mut().push(call.clone());
        if fails {
            bail!("injected failure: {call}");
        }
        Ok(())
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
    /// The calls after the first `call`.
    fn calls_after(&self, call: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .skip_while(|c| c != call)
            .skip(1)
            .collect()
    }
}

impl Platform for FakePlatform {
    fn unit_status(&self, unit: &str) -> Result<UnitStatus> {
        // Like systemd: a name without a suffix is a service's.
        let unit = if unit.contains('.') {
            unit.to_string()
        } else {
            format!("{unit}.service")
        };
        let unit = self
            .aliases
            .iter()
            .find(|(alias, _)| *alias == unit)
            .map_or(unit.clone(), |(_, id)| id.clone());
        let unit = unit.as_str();
        let active_state = if self.inactive.borrow().iter().any(|u| u == unit) {
            "inactive"
        } else {
            "active"
        };
        Ok(UnitStatus {
            unit: unit.into(),
            active_state: active_state.into(),
            sub_state: "running".into(),
            main_pid: 100,
            control_group: format!("/system.slice/{unit}"),
            exec_start: vec!["/bin/true".into()],
            fragment_path: String::new(),
            load_state: "loaded".into(),
            pid_file: format!("/run/{unit}.pid"),
        })
    }
    fn inventory(&self, status: &UnitStatus) -> Result<UnitInventory> {
        Ok(UnitInventory {
            outside_main_tree: self.outside.clone(),
            foreign_namespaces: self.namespaces.clone(),
            unsupported_files: self.unsupported.clone(),
            descendants_elsewhere: self.elsewhere.clone(),
            mount_sandbox: self.sandbox.clone(),
            shared_memory: self.shared_memory.clone(),
            outside_unix_peers: self.outside_unix.clone(),
            ..inventory(&status.unit)
        })
    }
    fn boot_id_and_release(&self) -> Result<(String, String)> {
        Ok(("boot-a".into(), "6.1.0".into()))
    }
    fn free_bytes(&self, _: &Path) -> Result<u64> {
        Ok(self.free.unwrap_or(u64::MAX))
    }
    fn owner_and_mode(&self, _: &Path) -> Result<Option<(u32, u32)>> {
        Ok(self.store_mode)
    }
    fn filesystem_type(&self, _: &Path) -> Result<String> {
        Ok(self.store_fstype.clone().unwrap_or_else(|| "ext4".into()))
    }
    fn write_runtime_dropin(&self, unit: &str, name: &str, text: &str) -> Result<()> {
        if let Some(rest) = text.split("restore-unit ").nth(1)
            && let Some(dir) = rest.split_whitespace().find(|w| !w.starts_with("--"))
        {
            self.restore_from
                .borrow_mut()
                .push((unit.to_string(), PathBuf::from(dir)));
            self.restoring.borrow_mut().push(unit.to_string());
        }
        if text.contains("ExecCondition=") {
            self.guarded.borrow_mut().push(unit.to_string());
        }
        self.record(format!("dropin+ {unit} {name}"))
    }
    fn remove_runtime_dropin(&self, unit: &str, name: &str) -> Result<()> {
        if name == RESTORE_DROPIN {
            self.restoring.borrow_mut().retain(|u| u != unit);
        }
        if name == HOLD_DROPIN {
            self.guarded.borrow_mut().retain(|u| u != unit);
        }
        self.record(format!("dropin- {unit} {name}"))
    }
    fn daemon_reload(&self) -> Result<()> {
        self.record("daemon-reload".into())
    }
    fn start_unit(&self, unit: &str) -> Result<()> {
        self.record(format!("start {unit}"))?;
        if !self.restoring.borrow().iter().any(|u| u == unit) {
            // Like systemd: the guard's ExecCondition= skips the start, and
            // systemctl says nothing.
            if self.guarded.borrow().iter().any(|u| u == unit) {
                return Ok(());
            }
            // The unit's own command.
            self.inactive.borrow_mut().retain(|u| u != unit);
            return Ok(());
        }
        if self.failing_restore.iter().any(|u| u == unit) {
            bail!("injected failure: restore of {unit}");
        }
        // Like the real restore helper: no record, no restore.
        let from = self.restore_from.borrow();
        if let Some((_, dir)) = from.iter().rev().find(|(u, _)| u == unit)
            && !dir.join(UNIT_SNAPSHOT_FILE).exists()
        {
            bail!("{unit}: no {UNIT_SNAPSHOT_FILE} to restore from");
        }
        // CRIU's restore removes the dump's lock table.
        if let Some((_, table)) = self.dump_tables.borrow().iter().find(|(u, _)| u == unit) {
            self.tables.borrow_mut().retain(|t| t != table);
        }
        self.inactive.borrow_mut().retain(|u| u != unit);
        Ok(())
    }
    fn nft_tables(&self) -> Result<Vec<String>> {
        Ok(self.tables.borrow().clone())
    }
    fn nft_list_table(&self, name: &str) -> Result<String> {
        Ok(format!("table inet {name} {{\n}}\n"))
    }
    fn nft_delete_table(&self, name: &str) -> Result<()> {
        self.record(format!("nft-delete {name}"))?;
        self.tables.borrow_mut().retain(|t| t != name);
        Ok(())
    }
    fn criu_dump(
        &self,
        status: &UnitStatus,
        inventory: &UnitInventory,
        images_dir: &Path,
    ) -> Result<DumpStats> {
        let (unit, pid) = (status.unit.clone(), status.main_pid);
        if let Err(e) = self.record(format!("dump {unit}")) {
            if self.dies_in_failed_dump.contains(&unit) {
                self.inactive.borrow_mut().push(unit.clone());
                self.tables.borrow_mut().push(format!("CRIU-{unit}"));
            }
            return Err(e);
        }
        if inventory.mount_sandbox.is_some() {
            self.dumped_with_sandbox.borrow_mut().push(unit.clone());
        }
        std::fs::create_dir_all(images_dir)?;
        std::fs::write(images_dir.join("core-1.img"), format!("pid {pid}"))?;
        if !self.no_tree.contains(&unit) {
            // The main process with one more thread, and a child: not what
            // the plan's inventory listed (pid 100, thread 120).
            let tree = [
                SavedProcess {
                    pid,
                    ppid: 1,
                    threads: vec![pid, pid + 30],
                },
                SavedProcess {
                    pid: pid + 1,
                    ppid: pid,
                    threads: vec![pid + 1, pid + 31],
                },
            ];
            std::fs::write(images_dir.join(PSTREE_IMAGE), encode_process_tree(&tree))?;
        }
        std::fs::write(images_dir.join("dump.log"), "criu said things")?;
        // The dump ends the tree: systemd sees the unit's processes die.
        self.inactive.borrow_mut().push(unit.clone());
        let n = self.dump_tables.borrow().len();
        self.tables.borrow_mut().push(format!("CRIU-{n}"));
        self.dump_tables
            .borrow_mut()
            .push((unit.clone(), format!("CRIU-{n}")));
        Ok(DumpStats {
            frozen: Duration::from_millis(300),
        })
    }
    fn load_kernel(&self, _: &KernelImage, _: Option<&InitrdImage>, _: &str) -> Result<()> {
        self.record("load-kernel".into())
    }
    fn unload_kernel(&self) -> Result<()> {
        self.record("unload-kernel".into())
    }
    fn kexec(&self) -> Result<()> {
        self.record("kexec".into())
    }
    fn kexec_pending(&self) -> Result<bool> {
        self.record("kexec-pending?".into())?;
        let mut script = self.kexec_jobs.borrow_mut();
        if !script.is_empty() {
            self.kexec_job.set(script.remove(0));
        }
        Ok(self.kexec_job.get())
    }
    fn start_kexec_watch(&self, dir: &Path, _: &Path) -> Result<()> {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        self.record(format!("kexec-watch {}", id.unwrap_or_default()))
    }
}

fn inventory(unit: &str) -> UnitInventory {
    UnitInventory {
        unit: unit.into(),
        cgroup: format!("/system.slice/{unit}"),
        pids: vec![100],
        thread_ids: vec![120],
        main_pid: 100,
        outside_main_tree: vec![],
        foreign_namespaces: vec![],
        descendants_elsewhere: vec![],
        unsupported_files: vec![],
        mount_sandbox: None,
        outside_unix_peers: vec![],
        shared_memory: Default::default(),
        resident_bytes: 300 << 20,
        listening: vec![],
        established: vec![],
        stdio_socket_inodes: vec![4607],
        other_sockets: SocketCounts::default(),
    }
}

fn plan_for(dir: &Path, platform: &FakePlatform, units: &[&str]) -> Plan {
    let kernel_path = write_file(
        dir,
        "vmlinuz-6.12.57+deb13-amd64",
        &synthetic_kernel(TEST_VERSION, 600 * 1024),
        0o644,
    );
    let kernel = check_kernel_file_with(&kernel_path, me()).expect("synthetic kernel passes");
    Plan {
        transaction_id: "t1-1".into(),
        transaction_dir: dir.join("images/t1-1"),
        kernel,
        initrd: None,
        cmdline: "root=/dev/vda seamless_reboot.transaction=t1-1".into(),
        source_boot_id: "boot-a".into(),
        source_kernel: "6.1.0".into(),
        units: units
            .iter()
            .map(|u| {
                let status = platform.unit_status(u).expect("status");
                PlannedUnit {
                    requested: (*u).to_string(),
                    inventory: platform.inventory(&status).expect("inventory"),
                    status,
                }
            })
            .collect(),
        left_out: vec![],
        restore_binary: PathBuf::from("/usr/bin/seamless-reboot"),
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Plans one unit as the plan does: its status, then the unit.
fn plan_one(platform: &FakePlatform, unit: &str) -> Result<PlannedUnit, PlanProblem> {
    let status = platform
        .unit_status(unit)
        .expect("the fake knows every unit");
    plan_unit(platform, unit, status)
}

/// The undo of a transaction over a.service and b.service that failed at
/// b's dump: a restored in place, the guards off, the kernel unloaded.
fn undo_of_a_checkpointed_and_b_not() -> Vec<String> {
    vec![
        format!("dropin+ a.service {RESTORE_DROPIN}"),
        format!("dropin- a.service {HOLD_DROPIN}"),
        "daemon-reload".into(),
        "start a.service".into(),
        format!("dropin- a.service {RESTORE_DROPIN}"),
        "daemon-reload".into(),
        format!("dropin- nftables.service {HOLD_DROPIN}"),
        format!("dropin- b.service {HOLD_DROPIN}"),
        format!("dropin- a.service {HOLD_DROPIN}"),
        "unload-kernel".into(),
        "daemon-reload".into(),
    ]
}

fn no_progress() -> impl FnMut(&Step) {
    |_: &Step| {}
}

#[test]
fn the_steps_are_announced_in_order_with_their_units() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut seen = vec![Step::Planning];
    run(&platform, &plan, &mut |step: &Step| seen.push(step.clone())).expect("succeeds");
    // What the simulated engine plays and D-Bus publishes (after the
    // engine's own planning step).
    assert_eq!(
        seen,
        Step::sequence(&["a.service".into(), "b.service".into()])
    );
    let failing = FakePlatform::failing(&["dump b.service"]);
    let plan = plan_for(tmp.path(), &failing, &["a.service", "b.service"]);
    let mut seen = Vec::new();
    run(&failing, &plan, &mut |step: &Step| seen.push(step.clone())).expect_err("fails");
    assert_eq!(seen.last(), Some(&Step::Undoing));
}

#[test]
fn happy_path_runs_in_order_and_ends_with_kexec() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let done = run(&platform, &plan, &mut progress).expect("succeeds");
    assert_eq!(done.len(), 2);
    assert_eq!(
        platform.calls(),
        vec![
            "load-kernel",
            &format!("dropin+ a.service {HOLD_DROPIN}"),
            &format!("dropin+ b.service {HOLD_DROPIN}"),
            &format!("dropin+ nftables.service {HOLD_DROPIN}"),
            "daemon-reload",
            "dump a.service",
            "dump b.service",
            "kexec-watch t1-1",
            "kexec",
        ]
    );
    let manifest =
        crate::manifest::Manifest::read_from(&plan.transaction_dir).expect("manifest written");
    assert_eq!(manifest.units.len(), 2);
    assert_eq!(manifest.target_kernel, "6.12.57+deb13-amd64");
    assert_eq!(manifest.units[0].journal_socket_inodes, vec![4607]);
    let rules = std::fs::read_to_string(
        plan.transaction_dir
            .join("unit-b.service")
            .join(HOLD_RULES_FILE),
    )
    .expect("rules");
    assert!(
        rules.contains("table inet CRIU-1"),
        "only b's own lock table: {rules}"
    );
    assert!(!rules.contains("CRIU-0"), "{rules}");
}

#[test]
fn a_units_mount_sandbox_goes_to_its_dump_and_to_the_snapshot_the_next_boot_restores() {
    use crate::inventory::sandbox::{MountSandbox, OutsideFile, PrivateDir};
    let tmp = tempfile::tempdir().expect("tmp");
    let sandbox = MountSandbox {
        private_dirs: vec![PrivateDir {
            mountpoint: "/tmp".into(),
            host_path: "/tmp/systemd-private-x-a.service-y/tmp".into(),
        }],
        outside_files: vec![OutsideFile {
            mnt_id: 25,
            inode: 4,
            path: "/dev/null".into(),
            writable: false,
        }],
        skipped_mounts: vec!["/run/user/0".into()],
    };
    let platform = FakePlatform {
        namespaces: vec![crate::inventory::ForeignNamespace {
            kind: "mnt".into(),
            pid: 100,
        }],
        sandbox: Some(sandbox.clone()),
        ..Default::default()
    };
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("succeeds");
    assert_eq!(*platform.dumped_with_sandbox.borrow(), vec!["a.service"]);
    let manifest =
        crate::manifest::Manifest::read_from(&plan.transaction_dir).expect("manifest written");
    assert_eq!(manifest.units[0].mount_sandbox, Some(sandbox));
}

#[test]
fn the_snapshot_keeps_the_pids_and_threads_criu_saved_not_the_plans() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    assert_eq!(plan.units[0].inventory.thread_ids, vec![120]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("succeeds");
    let manifest =
        crate::manifest::Manifest::read_from(&plan.transaction_dir).expect("manifest written");
    assert_eq!(manifest.units[0].pids, vec![100, 101]);
    assert_eq!(manifest.units[0].thread_ids, vec![130, 131]);
    // The unit's own pid file, which the restore writes again.
    assert_eq!(
        manifest.units[0].pid_file.as_deref(),
        Some("/run/a.service.pid")
    );
}

#[test]
fn an_unreadable_saved_tree_fails_the_checkpoint_and_restores_the_unit_in_place() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform {
        no_tree: vec!["b.service".into()],
        ..Default::default()
    };
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    let text = format!("{err}");
    assert!(
        text.contains("cannot read the process tree CRIU saved for b.service"),
        "{text}"
    );
    assert!(text.contains("pstree.img"), "{text}");
    assert!(text.contains("everything was undone"), "{text}");
    let calls = platform.calls();
    let starts: Vec<&String> = calls.iter().filter(|c| c.starts_with("start ")).collect();
    assert_eq!(starts, vec!["start b.service", "start a.service"]);
    assert!(!calls.contains(&"kexec".to_string()));
    // The fake's start fails without b's record: it was written before the
    // failure, for the in-place restore.
    assert!(err.rollback_errors.is_empty(), "{err}");
}

#[test]
fn failed_kernel_load_freezes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["load-kernel"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    assert_eq!(platform.calls(), vec!["load-kernel"]);
    assert!(err.rollback_errors.is_empty());
    assert!(
        format!("{err}").contains("injected failure: load-kernel"),
        "{err}"
    );
}

#[test]
fn a_unit_a_failed_checkpoint_took_down_is_started_again_and_criu_leftovers_removed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform {
        dies_in_failed_dump: vec!["b.service".into()],
        ..FakePlatform::failing(&["dump b.service"])
    };
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    let after_failure = platform.calls_after("dump b.service");
    // b first (the last step done), while a's snapshot and lock table stay
    // for its in-place restore; then a.
    // Its guard comes off first: with it, systemd would skip the start.
    assert_eq!(
        after_failure[..4],
        [
            "nft-delete CRIU-b.service",
            &format!("dropin- b.service {HOLD_DROPIN}"),
            "daemon-reload",
            "start b.service"
        ]
    );
    assert!(
        after_failure.contains(&"start a.service".to_string()),
        "{after_failure:?}"
    );
    assert!(platform.tables.borrow().is_empty(), "{:?}", platform.tables);
    assert!(platform.inactive.borrow().is_empty());
    let text = format!("{err}");
    assert!(
        text.contains(
            "b.service was inactive after its checkpoint failed; it was started again with its \
             own command (its state is lost)"
        ),
        "{text}"
    );
}

#[test]
fn failed_second_checkpoint_restores_the_first_in_place_and_unloads() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["dump b.service"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    let after_failure = platform.calls_after("dump b.service");
    assert_eq!(after_failure, undo_of_a_checkpointed_and_b_not());
    assert!(!platform.calls().contains(&"kexec".to_string()));
    assert!(err.rollback_errors.is_empty(), "{err}");
    let text = format!("{err}");
    assert!(text.contains("checkpoint of b.service failed"), "{text}");
    assert!(text.contains("everything was undone"), "{text}");
    let left: Vec<_> = walk(&plan.transaction_dir);
    assert!(!left.is_empty(), "a.service's dump.log is kept");
    assert!(
        left.iter()
            .all(|p| p.extension().is_some_and(|e| e == "log")),
        "only CRIU's logs are kept: {left:?}"
    );
}

#[test]
fn failed_handover_restores_every_unit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["kexec"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect_err("fails");
    let calls = platform.calls();
    let starts: Vec<&String> = calls.iter().filter(|c| c.starts_with("start ")).collect();
    assert_eq!(
        starts,
        vec!["start b.service", "start a.service"],
        "reverse order"
    );
    assert!(calls.contains(&"unload-kernel".to_string()));
}

#[test]
fn a_unit_that_cannot_come_back_is_reported_and_its_snapshot_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["dump b.service", "start a.service"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    // Its in-place restore, then the start its checkpoint's own undo tries.
    assert_eq!(err.rollback_errors.len(), 2, "{err}");
    let text = format!("{err}");
    assert!(text.contains("undoing it failed"), "{text}");
    assert!(
        text.contains("a.service could not be restored in place"),
        "{text}"
    );
    assert!(
        plan.transaction_dir
            .join("unit-a.service")
            .join(UNIT_SNAPSHOT_FILE)
            .exists(),
        "the only copy of a.service's state is kept"
    );
    // The rest was still undone.
    assert!(platform.calls().contains(&"unload-kernel".to_string()));
}

#[test]
fn a_failed_in_place_restore_starts_the_unit_with_its_own_command() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform {
        fail: vec!["dump b.service".into()],
        failing_restore: vec!["a.service".into()],
        ..Default::default()
    };
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    let err = run(&platform, &plan, &mut progress).expect_err("fails");
    let calls = platform.calls();
    let restore = calls
        .iter()
        .position(|c| c == "start a.service")
        .expect("restore attempted");
    let dropin_gone = calls
        .iter()
        .position(|c| c == &format!("dropin- a.service {RESTORE_DROPIN}"))
        .expect("restore drop-in removed");
    let cold = calls
        .iter()
        .rposition(|c| c == "start a.service")
        .expect("cold start");
    assert!(
        restore < dropin_gone && dropin_gone < cold,
        "the cold start runs without the restore drop-in: {calls:?}"
    );
    assert_eq!(err.rollback_errors.len(), 1, "{err}");
    let text = format!("{err}");
    assert!(
        text.contains("started with its own command (its state is lost"),
        "{text}"
    );
    assert!(
        plan.transaction_dir
            .join("unit-a.service")
            .join(UNIT_SNAPSHOT_FILE)
            .exists(),
        "the snapshot is kept"
    );
}

#[test]
fn restore_dropin_makes_the_unit_adopt_the_restored_pid() {
    let text = restore_dropin(
        Path::new("/usr/bin/seamless-reboot"),
        Path::new("/var/lib/seamless-reboot/images/t1/unit-a.service"),
        "a.service",
        Some("seamless-reboot-hold.service"),
    );
    assert!(text.contains("Type=forking\n"), "{text}");
    assert!(
        text.contains("PIDFile=/run/seamless-reboot/a.service.pid\n"),
        "{text}"
    );
    // Privileged: outside the unit's User= and sandbox, which CRIU gives
    // back to the restored processes.
    assert!(text.contains("ExecStart=\nExecStart=+/usr/bin/seamless-reboot restore-unit /var/lib/seamless-reboot/images/t1/unit-a.service a.service\n"), "{text}");
    assert!(
        text.contains("After=seamless-reboot-hold.service\n"),
        "{text}"
    );
    // However its start ends, the unit's connections leave the hold.
    assert!(text.contains("ExecStopPost=-+/usr/bin/seamless-reboot release-unit /var/lib/seamless-reboot/images/t1/unit-a.service a.service\n"), "{text}");
    // An in-place restore (no hold) has nothing to release.
    let in_place = restore_dropin(
        Path::new("/usr/bin/seamless-reboot"),
        Path::new("/var/lib/seamless-reboot/images/t1/unit-a.service"),
        "a.service",
        None,
    );
    assert!(!in_place.contains("ExecStopPost"), "{in_place}");
    // It says so to the helper, which then does not fail a restore that
    // worked for want of room for its outcome record.
    assert!(in_place.contains("ExecStart=+/usr/bin/seamless-reboot restore-unit --in-place /var/lib/seamless-reboot/images/t1/unit-a.service a.service\n"), "{in_place}");
}

#[test]
fn a_unit_with_processes_outside_its_main_tree_is_refused_by_the_plan() {
    let mut platform = FakePlatform::default();
    assert!(plan_one(&platform, "a.service").is_ok());
    platform.outside = vec![crate::inventory::OutsideProcess {
        pid: 140,
        ppid: 1,
        comm: "sleep".into(),
    }];
    let err = plan_one(&platform, "a.service").expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("a.service: process 140 (`sleep`, parent 1) not under its main process 100"),
        "{text}"
    );
    assert!(text.contains("would be lost"), "{text}");
}

#[test]
fn a_unit_with_its_own_user_or_network_namespace_is_refused_with_the_options_that_made_them() {
    let platform = FakePlatform {
        namespaces: vec![
            crate::inventory::ForeignNamespace {
                kind: "mnt".into(),
                pid: 100,
            },
            crate::inventory::ForeignNamespace {
                kind: "net".into(),
                pid: 100,
            },
            crate::inventory::ForeignNamespace {
                kind: "user".into(),
                pid: 101,
            },
        ],
        ..Default::default()
    };
    let err = plan_one(&platform, "a.service").expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.starts_with(
            "a.service: cannot be preserved: it runs in its own network namespace (process 100; \
             made by PrivateNetwork="
        ),
        "{text}"
    );
    assert!(
        text.contains("its own user namespace (process 101; made by PrivateUsers="),
        "{text}"
    );
    assert!(text.contains("`restart` policy"), "{text}");
    // The mount namespace is not what stops it.
    assert!(!text.contains("mount namespace"), "{text}");
}

#[test]
fn a_unit_whose_main_process_has_descendants_in_session_scopes_is_refused_by_the_plan() {
    let platform = FakePlatform {
        elsewhere: vec![crate::inventory::DescendantElsewhere {
            pid: 812,
            comm: "sshd-session".into(),
            cgroup: "/user.slice/user-0.slice/session-4.scope".into(),
        }],
        ..Default::default()
    };
    let err = plan_one(&platform, "ssh.service").expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.starts_with(
            "ssh.service: cannot be preserved while process 812 (`sshd-session`, in \
             /user.slice/user-0.slice/session-4.scope) runs outside the unit"
        ),
        "{text}"
    );
    assert!(text.contains("sessions are not preserved"), "{text}");

    let session = |pid: i32, comm: &str| crate::inventory::DescendantElsewhere {
        pid,
        comm: comm.into(),
        cgroup: "/user.slice/user-0.slice/session-4.scope".into(),
    };
    let platform = FakePlatform {
        elsewhere: vec![session(812, "sshd-session"), session(815, "bash")],
        ..Default::default()
    };
    let text = format!(
        "{:#}",
        plan_one(&platform, "ssh.service").expect_err("refused")
    );
    assert!(
        text.contains("while processes 812 (`sshd-session`, in ") && text.contains("run outside"),
        "{text}"
    );
}

#[test]
fn a_unit_holding_a_file_criu_cannot_checkpoint_is_refused_by_the_plan() {
    let platform = FakePlatform {
        unsupported: vec![crate::inventory::UnsupportedFile {
            pid: 101,
            fd: 7,
            kind: "an io_uring instance".into(),
        }],
        ..Default::default()
    };
    let err = plan_one(&platform, "a.service").expect_err("refused");
    assert_eq!(
        format!("{err:#}"),
        "a.service: cannot be preserved: process 101 holds an io_uring instance (fd 7), \
         which CRIU cannot checkpoint"
    );
}

#[test]
fn a_unit_with_system_v_memory_of_the_hosts_ipc_namespace_is_refused_with_the_remedy() {
    let platform = FakePlatform {
        shared_memory: crate::inventory::shared_memory::SharedMemory {
            host_sysv: vec![crate::inventory::shared_memory::SysvAttachment { pid: 492, shmid: 0 }],
            ..Default::default()
        },
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        plan_one(&platform, "pg.service").expect_err("refused")
    );
    assert!(
        err.starts_with(
            "pg.service: cannot be preserved as it runs: process 492 has System V shared \
             memory (segment 0) of the host's IPC namespace"
        ) && err.contains("`PrivateIPC=yes`")
            && err.contains("`restart` policy"),
        "{err}"
    );
}

#[test]
fn a_unit_with_a_unix_connection_to_a_process_outside_it_is_refused_naming_that_process() {
    let platform = FakePlatform {
        outside_unix: vec![crate::inventory::OutsideUnixPeer {
            pid: 935,
            inode: 7001,
            peer_holder: Some("1200 (`psql`)".into()),
        }],
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        plan_one(&platform, "pg.service").expect_err("refused")
    );
    assert!(
        err.starts_with(
            "pg.service: cannot be preserved while it has unix connections to processes \
             outside it (process 935 with 1200 (`psql`))"
        ) && err.contains("both of its ends"),
        "{err}"
    );
}

#[test]
fn a_unit_in_its_own_network_namespace_is_refused_for_that_before_its_unix_connections() {
    let platform = FakePlatform {
        namespaces: vec![crate::inventory::ForeignNamespace {
            kind: "net".into(),
            pid: 100,
        }],
        outside_unix: vec![crate::inventory::OutsideUnixPeer {
            pid: 100,
            inode: 7001,
            peer_holder: Some("1 (`systemd`)".into()),
        }],
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        plan_one(&platform, "a.service").expect_err("refused")
    );
    assert!(err.contains("its own network namespace"), "{err}");
    assert!(!err.contains("unix connections"), "{err}");
}

#[test]
fn the_shm_files_the_inventory_finds_go_to_the_snapshot_the_next_boot_restores() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform {
        shared_memory: crate::inventory::shared_memory::SharedMemory {
            shm_files: vec!["PostgreSQL.1".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let plan = plan_for(tmp.path(), &platform, &["pg.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("succeeds");
    let manifest =
        crate::manifest::Manifest::read_from(&plan.transaction_dir).expect("manifest written");
    assert_eq!(
        manifest.units[0].shm_files,
        vec!["PostgreSQL.1".to_string()]
    );
}

#[test]
fn a_unit_with_its_own_mount_hostname_ipc_and_time_namespaces_is_planned() {
    let platform = FakePlatform {
        namespaces: ["mnt", "uts", "ipc", "time"]
            .into_iter()
            .map(|kind| crate::inventory::ForeignNamespace {
                kind: kind.into(),
                pid: 100,
            })
            .collect(),
        ..Default::default()
    };
    let planned = plan_one(&platform, "a.service").expect("preservable");
    assert_eq!(planned.status.unit, "a.service");
}

#[test]
fn units_are_planned_by_their_canonical_names_and_only_once() {
    let platform = FakePlatform {
        aliases: vec![("db.service".into(), "postgresql.service".into())],
        ..Default::default()
    };
    let mut problems = Vec::new();
    let (units, _) = plan_units(
        &platform,
        &[
            "a".into(),
            "db.service".into(),
            "a.service".into(),
            "postgresql.service".into(),
        ],
        &BTreeMap::new(),
        &mut problems,
    );
    let names: Vec<&str> = units.iter().map(|u| u.status.unit.as_str()).collect();
    assert_eq!(names, vec!["a.service", "postgresql.service"]);
    assert_eq!(units[0].requested, "a");
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec![
            "a.service: names a.service, which is already in the update (as a); name each unit once",
            "postgresql.service: names postgresql.service, which is already in the update (as db.service); name each unit once",
        ]
    );
}

#[test]
fn the_bus_systemd_and_seamless_reboot_itself_are_never_frozen() {
    let platform = FakePlatform::default();
    for (unit, why) in [
        ("dbus.service", "system bus"),
        ("systemd-journald.service", "part of systemd"),
        ("seamless-reboot.service", "part of seamless-reboot"),
        ("polkit.service", "authorizes the update"),
        ("sshd.socket", "only services"),
    ] {
        let err = plan_one(&platform, unit).expect_err(unit);
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("{unit}: cannot be preserved: ")) && text.contains(why),
            "{text}"
        );
    }
    // Refused by the canonical name, whatever it was called.
    let platform = FakePlatform {
        aliases: vec![("messagebus.service".into(), "dbus.service".into())],
        ..Default::default()
    };
    let text = format!(
        "{:#}",
        plan_one(&platform, "messagebus").expect_err("an alias of the bus")
    );
    assert!(
        text.starts_with("messagebus (dbus.service): cannot be preserved"),
        "{text}"
    );
    assert!(plan_one(&platform, "nginx").is_ok());
}

#[test]
fn the_plan_refuses_when_the_images_would_not_fit() {
    let mut problems = Vec::new();
    let platform = FakePlatform {
        free: Some(700 << 20),
        ..Default::default()
    };
    let (units, _) = plan_units(
        &platform,
        &["a.service".into(), "b.service".into()],
        &BTreeMap::new(),
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    // Two units of 300 MiB: 600 + 60 + 16 MiB needed.
    assert!(free_space_problem(&platform, Path::new("/var/x"), &units).is_none());
    let platform = FakePlatform {
        free: Some(650 << 20),
        ..Default::default()
    };
    let problem =
        free_space_problem(&platform, Path::new("/var/x"), &units).expect("not enough room");
    assert_eq!(problem.kind(), "no-space");
    assert_eq!(
        problem.to_string(),
        "not enough free space for the checkpoint in /var/x: the units hold about 600 MiB of \
         memory, so the images need about 676 MiB, and 650 MiB are free"
    );
}

#[test]
fn a_unit_that_cannot_be_preserved_is_left_to_the_next_boot_by_its_policy() {
    let platform = FakePlatform {
        namespaces: vec![crate::inventory::ForeignNamespace {
            kind: "user".into(),
            pid: 100,
        }],
        ..Default::default()
    };
    let policies: BTreeMap<String, UnitPolicy> = [
        ("r.service".to_string(), UnitPolicy::Restart),
        ("s.service".to_string(), UnitPolicy::Skip),
    ]
    .into_iter()
    .collect();
    let mut problems = Vec::new();
    let (units, left_out) = plan_units(
        &platform,
        &["r".into(), "s.service".into(), "p.service".into()],
        &policies,
        &mut problems,
    );
    // The default policy (preserve) makes the namespaced unit a problem.
    assert!(units.is_empty());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .starts_with("p.service: cannot be preserved: it runs in its own user")
            && problems[0].unit() == Some("p.service"),
        "{problems:?}"
    );
    assert_eq!(left_out.len(), 2);
    assert_eq!(left_out[0].unit, "r.service");
    assert_eq!(left_out[0].policy, UnitPolicy::Restart);
    assert!(
        left_out[0].reason.contains("its own user namespace"),
        "{left_out:?}"
    );
    assert_eq!(
        left_out[1],
        LeftOut {
            unit: "s.service".into(),
            policy: UnitPolicy::Skip,
            reason: "its policy is skip".into(),
        }
    );
    // A restart unit that can be preserved is preserved.
    let platform = FakePlatform::default();
    let mut problems = Vec::new();
    let (units, left_out) = plan_units(&platform, &["r.service".into()], &policies, &mut problems);
    assert_eq!(units.len(), 1);
    assert!(left_out.is_empty() && problems.is_empty());
}

#[test]
fn units_left_to_a_restart_are_named_in_the_manifest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let mut plan = plan_for(tmp.path(), &platform, &["a.service"]);
    plan.left_out = vec![
        LeftOut {
            unit: "r.service".into(),
            policy: UnitPolicy::Restart,
            reason: "x".into(),
        },
        LeftOut {
            unit: "s.service".into(),
            policy: UnitPolicy::Skip,
            reason: "y".into(),
        },
    ];
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("succeeds");
    let manifest =
        crate::manifest::Manifest::read_from(&plan.transaction_dir).expect("manifest written");
    assert_eq!(manifest.restart_units, vec!["r.service"]);
}

#[test]
fn the_sandbox_the_restore_builds_again_is_summed_up_for_the_operator() {
    use crate::inventory::sandbox::{MountSandbox, PrivateDir};
    let mut unit = inventory("a.service");
    assert_eq!(sandbox_summary(&unit), None);
    unit.foreign_namespaces = ["mnt", "uts"]
        .into_iter()
        .map(|kind| crate::inventory::ForeignNamespace {
            kind: kind.into(),
            pid: 100,
        })
        .collect();
    assert_eq!(
        sandbox_summary(&unit).as_deref(),
        Some("its own mount and hostname (UTS) namespaces")
    );
    unit.mount_sandbox = Some(MountSandbox {
        private_dirs: ["/tmp", "/var/tmp"]
            .into_iter()
            .map(|m| PrivateDir {
                mountpoint: m.into(),
                host_path: format!("/x{m}").into(),
            })
            .collect(),
        ..MountSandbox::default()
    });
    unit.foreign_namespaces.truncate(1);
    assert_eq!(
        sandbox_summary(&unit).as_deref(),
        Some("its own mount (private /tmp and /var/tmp) namespace")
    );
}

/// The transaction as a daemon killed at `dump <unit>` leaves it: every step
/// before done, its undo on disk, nothing undone.
fn killed_at(platform: &FakePlatform, plan: &Plan) -> Vec<String> {
    let mut undo = UndoLog::create(
        &plan.transaction_dir,
        &plan.transaction_id,
        &plan.source_boot_id,
        &plan.restore_binary,
    )
    .expect("journal");
    let mut progress = no_progress();
    forward(platform, plan, &mut progress, &mut undo).expect_err("killed");
    drop(undo);
    platform.calls()
}

fn image_dir(plan: &Plan) -> &Path {
    plan.transaction_dir.parent().expect("image dir")
}

#[test]
fn the_undo_journal_follows_every_step_and_stays_after_the_handover() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("succeeds");
    // Private from creation, the store that holds it too.
    for dir in [
        plan.transaction_dir.as_path(),
        tmp.path().join("images").as_path(),
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir).expect("made").permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }
    let text = std::fs::read_to_string(plan.transaction_dir.join(journal::JOURNAL_FILE))
        .expect("journal kept after the hand-over");
    let journal: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(journal["handed_over"], true, "{text}");
    assert_eq!(journal["boot_id"], "boot-a");
    let steps: Vec<String> = journal["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["step"].as_str().unwrap_or(""),
                s["unit"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "remove-dir ",
            "unload-kernel ",
            "remove-dropin a.service",
            "remove-dropin b.service",
            "remove-dropin nftables.service",
            "keep-running a.service",
            "restore-in-place a.service",
            "keep-running b.service",
            "restore-in-place b.service",
        ]
    );
}

/// The daemon killed while CRIU dumps the second unit: a replay of its
/// journal does what its rollback would have done, and leaves no journal.
#[test]
fn a_transaction_whose_daemon_died_is_undone_by_replaying_its_journal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["dump b.service"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service", "b.service"]);
    let before = killed_at(&platform, &plan);
    assert_eq!(before.last().map(String::as_str), Some("dump b.service"));
    assert!(plan.transaction_dir.join(journal::JOURNAL_FILE).exists());

    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let text = recovered[0].to_string();
    assert!(!recovered[0].is_failure(), "{text}");
    assert!(
        text.contains("its daemon stopped before it finished"),
        "{text}"
    );
    assert!(text.contains("everything was undone"), "{text}");
    let replay = platform.calls_after("dump b.service");
    // b is still running (its dump never finished); a is restored in
    // place from its snapshot, as the rollback would have done.
    assert_eq!(replay[0], "kexec-pending?");
    assert_eq!(replay[1..], undo_of_a_checkpointed_and_b_not());
    assert!(
        walk(&plan.transaction_dir)
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "log")),
        "only CRIU's logs are left: {:?}",
        walk(&plan.transaction_dir)
    );
    // Replayed once: a second recovery finds nothing.
    assert!(
        recover(&platform, image_dir(&plan))
            .expect("again")
            .is_empty()
    );
}

#[test]
fn nothing_is_replayed_while_systemd_kexecs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("handed over");
    platform.kexec_job.set(true);
    assert!(
        recover(&platform, image_dir(&plan))
            .expect("recover")
            .is_empty()
    );
    assert_eq!(platform.calls_after("kexec"), vec!["kexec-pending?"]);
    assert!(plan.transaction_dir.join(journal::JOURNAL_FILE).exists());

    // The kexec job gone and the machine still up: the hand-over failed.
    platform.kexec_job.set(false);
    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    let text = recovered[0].to_string();
    assert!(
        text.contains("it had handed over to systemd, but the kexec job ended without a kexec"),
        "{text}"
    );
    assert!(
        platform
            .calls_after("kexec")
            .contains(&"start a.service".to_string())
    );
    assert!(
        platform
            .calls()
            .ends_with(&["unload-kernel".to_string(), "daemon-reload".to_string()])
    );
}

#[test]
fn a_journal_of_an_earlier_boot_is_removed_unread() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let mut plan = plan_for(tmp.path(), &platform, &["a.service"]);
    plan.source_boot_id = "boot-before".into();
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("handed over");
    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    assert!(
        matches!(recovered[..], [Recovery::Stale { .. }]),
        "{recovered:?}"
    );
    assert_eq!(platform.calls_after("kexec"), vec!["kexec-pending?"]);
    assert!(!plan.transaction_dir.join(journal::JOURNAL_FILE).exists());
    assert!(
        crate::manifest::Manifest::read_from(&plan.transaction_dir).is_ok(),
        "the snapshot itself is the next boot's business"
    );
}

#[test]
fn a_running_transactions_journal_is_left_to_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let _running = UndoLog::create(
        &plan.transaction_dir,
        &plan.transaction_id,
        &plan.source_boot_id,
        &plan.restore_binary,
    )
    .expect("journal");
    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    assert!(
        matches!(recovered[..], [Recovery::InUse { .. }]),
        "{recovered:?}"
    );
    assert_eq!(platform.calls(), vec!["kexec-pending?"]);
    assert!(
        UndoLog::create(
            &plan.transaction_dir,
            &plan.transaction_id,
            &plan.source_boot_id,
            &plan.restore_binary,
        )
        .is_err(),
        "a second transaction cannot take the same directory"
    );
}

#[test]
fn a_journal_naming_paths_outside_its_directory_or_garbled_is_not_replayed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let journal_path = plan.transaction_dir.join(journal::JOURNAL_FILE);
    drop(
        UndoLog::create(
            &plan.transaction_dir,
            &plan.transaction_id,
            &plan.source_boot_id,
            &plan.restore_binary,
        )
        .expect("journal"),
    );
    let text = std::fs::read_to_string(&journal_path).expect("journal");
    let outside = text.replace(
        &plan.transaction_dir.display().to_string(),
        &tmp.path().display().to_string(),
    );
    std::fs::write(&journal_path, outside).expect("write");
    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    assert!(recovered[0].is_failure(), "{recovered:?}");
    assert!(
        recovered[0]
            .to_string()
            .contains("outside its transaction directory"),
        "{}",
        recovered[0]
    );
    std::fs::write(&journal_path, "{\"format_version\": 1").expect("write");
    let recovered = recover(&platform, image_dir(&plan)).expect("recover");
    assert!(
        recovered[0].to_string().contains("is not an undo journal"),
        "{}",
        recovered[0]
    );
    assert!(tmp.path().exists(), "nothing was removed");
    assert!(journal_path.exists(), "the journal stays for the operator");
}

fn quick_watch() -> KexecWatch {
    KexecWatch {
        poll: Duration::from_millis(1),
        settle: Duration::from_millis(20),
        appear: Duration::from_millis(50),
    }
}

/// systemd takes the kexec job, then drops it without a kexec: the watcher
/// replays the journal once the job has stayed gone for a while, and only
/// then.
#[test]
fn a_kexec_job_that_ends_without_a_kexec_has_the_watcher_undo_the_update() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("handed over");
    // Not there yet, there for a while, gone once, back (a job being
    // replaced), then gone for good.
    *platform.kexec_jobs.borrow_mut() = vec![false, true, true, true, false, true, true, false];
    let recovery = watch_kexec(&platform, &plan.transaction_dir, quick_watch())
        .expect("watch")
        .expect("replayed");
    assert!(!recovery.is_failure(), "{recovery}");
    assert!(
        recovery
            .to_string()
            .contains("it had handed over to systemd, but the kexec job ended without a kexec"),
        "{recovery}"
    );
    let after = platform.calls_after("kexec");
    let first_restore = after
        .iter()
        .position(|c| c == "start a.service")
        .expect("a.service restored in place");
    assert!(
        after[..first_restore]
            .iter()
            .filter(|c| *c == "kexec-pending?")
            .count()
            > 7,
        "the job stayed gone for a while first: {after:?}"
    );
    assert!(!plan.transaction_dir.join(journal::JOURNAL_FILE).exists());
}

/// The kexec job never shows up (systemctl said yes, then nothing): the
/// watcher undoes the update once `appear` has passed.
#[test]
fn a_kexec_job_that_never_appears_has_the_watcher_undo_the_update() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::default();
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect("handed over");
    let started = std::time::Instant::now();
    let recovery = watch_kexec(&platform, &plan.transaction_dir, quick_watch())
        .expect("watch")
        .expect("replayed");
    assert!(started.elapsed() >= quick_watch().appear);
    assert!(!recovery.is_failure(), "{recovery}");
    assert!(
        platform
            .calls()
            .ends_with(&["unload-kernel".to_string(), "daemon-reload".to_string()])
    );
}

/// The hand-over failed in the daemon, which undid everything itself: the
/// watcher finds no journal and leaves.
#[test]
fn the_watcher_leaves_when_the_daemon_undid_the_update_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["kexec"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut progress = no_progress();
    run(&platform, &plan, &mut progress).expect_err("hand-over refused");
    let calls = platform.calls().len();
    let recovery = watch_kexec(&platform, &plan.transaction_dir, quick_watch()).expect("watch");
    assert!(recovery.is_none(), "{recovery:?}");
    assert_eq!(platform.calls().len(), calls, "nothing more was done");
}

/// Something started a checkpointed unit afresh (its guard taken off by
/// hand, say) before the undo: the undo says its state was thrown away and
/// keeps the snapshot, rather than calling the running unit restored.
#[test]
fn a_unit_started_afresh_while_checkpointed_is_reported_not_restored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let platform = FakePlatform::failing(&["kexec"]);
    let plan = plan_for(tmp.path(), &platform, &["a.service"]);
    let mut undo = UndoLog::create(
        &plan.transaction_dir,
        &plan.transaction_id,
        &plan.source_boot_id,
        &plan.restore_binary,
    )
    .expect("journal");
    let mut progress = no_progress();
    forward(&platform, &plan, &mut progress, &mut undo).expect_err("hand-over refused");
    platform.inactive.borrow_mut().clear();
    let errors = rollback(&platform, &mut undo);
    let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    assert_eq!(errors.len(), 1, "{text:?}");
    assert!(
        text[0].contains(
            "a.service was started afresh by something else while it was checkpointed (main pid \
             100); its checkpointed state is not used"
        ),
        "{text:?}"
    );
    assert!(
        !platform
            .calls_after("kexec")
            .contains(&format!("dropin+ a.service {RESTORE_DROPIN}")),
        "no restore over the running unit"
    );
    assert!(
        plan.transaction_dir
            .join("unit-a.service")
            .join(UNIT_SNAPSHOT_FILE)
            .exists(),
        "the snapshot is kept"
    );
}

#[test]
fn an_older_kernel_is_refused_unless_allowed() {
    let running = "6.12.117+deb13-amd64";
    let problem = downgrade_problem("6.12.95+deb12-amd64", running, false).expect("older");
    assert_eq!(problem.kind(), "downgrade");
    assert!(
        problem
            .to_string()
            .contains("6.12.95+deb12-amd64 is older than the running kernel 6.12.117+deb13-amd64")
    );
    assert!(downgrade_problem("6.12.95+deb12-amd64", running, true).is_none());
    assert!(
        downgrade_problem(running, running, false).is_none(),
        "the same kernel again"
    );
    assert!(downgrade_problem("7.0.1+deb13-amd64", running, false).is_none());
    assert!(
        downgrade_problem("6.1.0", "", false).is_none(),
        "no release to compare"
    );
}

#[test]
fn the_plans_problems_are_typed_with_their_kinds_and_units() {
    let platform = FakePlatform::default();
    let request = UpdateRequest {
        kernel: PathBuf::from("/nonexistent/vmlinuz-6.12.0"),
        ..Default::default()
    };
    let problems = plan(
        &platform,
        &request,
        Path::new("/nonexistent/images"),
        Path::new("/usr/bin/seamless-reboot"),
    )
    .expect_err("no kernel, no units");
    let kinds: Vec<&str> = problems.iter().map(PlanProblem::kind).collect();
    assert_eq!(kinds, vec!["kernel", "no-units"], "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .starts_with("cannot open kernel /nonexistent/vmlinuz-6.12.0: "),
        "{}",
        problems[0]
    );

    let mut status = platform.unit_status("gone.service").expect("status");
    status.load_state = "not-found".into();
    let problem = plan_unit(&platform, "gone", status).expect_err("not loaded");
    assert_eq!(problem.kind(), "no-such-unit");
    assert_eq!(
        problem.to_string(),
        "gone: no such unit (LoadState=not-found)"
    );

    let platform = FakePlatform {
        inactive: RefCell::new(vec!["a.service".into()]),
        ..Default::default()
    };
    let problem = plan_one(&platform, "a").expect_err("not running");
    assert_eq!(
        (problem.kind(), problem.unit()),
        ("not-running", Some("a.service"))
    );
    assert_eq!(
        problem.to_string(),
        "a (a.service): not running (ActiveState=inactive, MainPID=100); only running units \
         can be preserved"
    );

    let problem = plan_one(&platform, "dbus.service").expect_err("the bus");
    assert_eq!(
        (problem.kind(), problem.unit()),
        ("cannot-preserve", Some("dbus.service"))
    );
    assert!(matches!(
        &problem,
        PlanProblem::CannotPreserve { reason, .. } if reason.starts_with("cannot be preserved: it is the system bus")
    ));
}

#[test]
fn a_store_others_can_read_is_refused_a_private_or_missing_one_is_not() {
    let request = UpdateRequest {
        kernel: PathBuf::from("/nonexistent/vmlinuz-6.12.0"),
        ..Default::default()
    };
    let kinds = |store_mode| {
        let platform = FakePlatform {
            store_mode,
            ..Default::default()
        };
        let problems = plan(
            &platform,
            &request,
            Path::new("/var/lib/x"),
            Path::new("/usr/bin/seamless-reboot"),
        )
        .expect_err("no kernel, no units");
        problems
            .iter()
            .map(|p| (p.kind(), p.to_string()))
            .collect::<Vec<_>>()
    };
    let open = kinds(Some((0, 0o755)));
    let refused = open
        .iter()
        .find(|(kind, _)| *kind == "store-not-private")
        .expect("refused");
    assert!(
        refused.1.contains("mode 0755") && refused.1.contains("chmod 0700"),
        "{}",
        refused.1
    );
    assert!(
        kinds(Some((1000, 0o700)))
            .iter()
            .any(|(k, _)| *k == "store-not-private")
    );
    assert!(
        !kinds(Some((0, 0o700)))
            .iter()
            .any(|(k, _)| *k == "store-not-private")
    );
    assert!(!kinds(None).iter().any(|(k, _)| *k == "store-not-private"));
}

#[test]
fn a_store_on_a_forbidden_filesystem_is_refused() {
    let problems = |fstype: &str, forbidden: &[&str]| {
        let platform = FakePlatform {
            store_fstype: Some(fstype.into()),
            ..Default::default()
        };
        let request = UpdateRequest {
            kernel: PathBuf::from("/nonexistent/vmlinuz-6.12.0"),
            forbidden_store_filesystems: forbidden.iter().map(|f| (*f).to_string()).collect(),
            ..Default::default()
        };
        plan(
            &platform,
            &request,
            Path::new("/srv/images"),
            Path::new("/usr/bin/seamless-reboot"),
        )
        .expect_err("no kernel, no units")
        .iter()
        .filter(|p| p.kind() == "store-filesystem-forbidden")
        .map(ToString::to_string)
        .collect::<Vec<_>>()
    };
    let refused = problems("nfs4", &["nfs", "nfs4"]);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("/srv/images is on a nfs4 filesystem"),
        "{}",
        refused[0]
    );
    assert_eq!(
        problems("fuse.sshfs", &["fuse"]).len(),
        1,
        "fuse.* matches fuse"
    );
    assert!(
        problems("fuseblk", &["fuse"]).is_empty(),
        "a prefix is not a match"
    );
    assert!(problems("ext4", &["nfs", "fuse"]).is_empty());
    assert!(problems("nfs4", &[]).is_empty(), "nothing forbidden");
}
