//! Every branch of the next boot that decides whether a service comes back,
//! against the recording fake: the restore helper, the release, the
//! finishing unit, the hold's claim and the generator's decision.

use super::fake::FakeNextBoot;
use super::tests::{BOOT_A, BOOT_B, TARGET, cmdline, transaction};
use super::*;
use crate::layout::{HOLD_RULES_FILE, unit_dir_name};

fn settings() -> RestoreSettings {
    RestoreSettings {
        disable_window_scaling: false,
        criu_timeout: std::time::Duration::from_secs(5),
        in_place: false,
    }
}

/// A transaction `t1-1` of `units`, claimed by the next boot (`BOOT_B`).
fn claimed(root: &Path, units: &[&str]) -> PathBuf {
    let dir = transaction(root, "t1-1", units);
    crate::manifest::claim(&dir, BOOT_B).expect("claim");
    dir
}

fn snapshot_dir(dir: &Path, unit: &str) -> PathBuf {
    dir.join(unit_dir_name(unit))
}

/// Restores `unit` of the transaction `dir` with the default settings.
fn restore(system: &FakeNextBoot, dir: &Path, unit: &str) -> Result<()> {
    restore_unit(system, &snapshot_dir(dir, unit), unit, &settings())
}

fn outcome_of(dir: &Path, unit: &str) -> Option<UnitOutcome> {
    read_outcomes(dir)
        .expect("outcomes")
        .into_iter()
        .find(|o| o.unit == unit)
}

#[test]
fn a_restore_frees_the_pids_restores_releases_and_records() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B);
    restore(&system, &dir, "a.service").expect("restores");
    assert_eq!(
        system.calls(),
        vec![
            "criu restore",
            "hold free-pids a.service",
            "hold release a.service accept",
            "pid-file /run/seamless-reboot/a.service.pid 550",
            "outcome a.service restored",
        ]
    );
    let outcome = outcome_of(&dir, "a.service").expect("recorded");
    assert_eq!(outcome.outcome, OutcomeKind::Restored);
    assert_eq!(outcome.detail, "restored pid 550");
}

#[test]
fn window_scaling_is_off_around_the_restore_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B);
    let settings = RestoreSettings {
        disable_window_scaling: true,
        ..settings()
    };
    restore_unit(
        &system,
        &snapshot_dir(&dir, "a.service"),
        "a.service",
        &settings,
    )
    .expect("restores");
    let calls = system.calls();
    assert_eq!(
        &calls[..4],
        [
            "window-scaling off",
            "criu restore",
            "hold free-pids a.service",
            "window-scaling back"
        ]
    );
}

#[test]
fn a_unit_with_an_outcome_is_never_restored_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B);
    let snapshot = snapshot_dir(&dir, "a.service");
    restore_unit(&system, &snapshot, "a.service", &settings()).expect("first");
    let again = FakeNextBoot::new(BOOT_B);
    let err = restore_unit(&again, &snapshot, "a.service", &settings()).expect_err("twice");
    let err = format!("{err:#}");
    assert!(
        err.contains("already has an outcome") && err.contains("restored pid 550"),
        "{err}"
    );
    assert!(again.calls().is_empty(), "{:?}", again.calls());
}

#[test]
fn a_changed_image_is_not_restored_the_unit_cold_starts_and_its_peers_are_released() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    fs::write(
        snapshot_dir(&dir, "a.service").join("images/core-1.img"),
        "imagX",
    )
    .expect("corrupt");
    let system = FakeNextBoot::new(BOOT_B);
    let err = restore(&system, &dir, "a.service").expect_err("refused");
    assert!(format!("{err:#}").contains("core-1.img"), "{err:#}");
    assert!(!system.called("criu"), "{:?}", system.calls());
    assert!(system.called("hold release a.service"));
    let outcome = outcome_of(&dir, "a.service").expect("recorded");
    assert_eq!(outcome.outcome, OutcomeKind::ColdStarted);
    assert!(outcome.detail.contains("core-1.img"), "{}", outcome.detail);
}

#[test]
fn a_pid_taken_in_this_boot_stops_the_restore_before_criu_forks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let mut system = FakeNextBoot::new(BOOT_B);
    system.pids_in_use = vec![551];
    let err = restore(&system, &dir, "a.service").expect_err("collision");
    assert!(format!("{err:#}").contains("pid collision"), "{err:#}");
    assert!(system.called("hold release a.service"));
    assert!(!system.called("pid-file"));
    let outcome = outcome_of(&dir, "a.service").expect("recorded");
    assert_eq!(outcome.outcome, OutcomeKind::ColdStarted);
    assert!(
        outcome.detail.contains("pid collision"),
        "{}",
        outcome.detail
    );
}

#[test]
fn criu_failing_is_a_cold_start_with_its_log_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B).failing("criu");
    restore(&system, &dir, "a.service").expect_err("fails");
    let outcome = outcome_of(&dir, "a.service").expect("recorded");
    assert_eq!(outcome.outcome, OutcomeKind::ColdStarted);
    assert!(outcome.detail.contains("restore.log"), "{}", outcome.detail);
    assert!(system.called("hold release a.service"));
}

#[test]
fn without_a_hold_the_restore_goes_on_and_the_hold_rules_are_flushed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service", "b.service"]);
    let mut system = FakeNextBoot::new(BOOT_B);
    system.hold = false;
    system.tables = vec![hold::HOLD_TABLE.to_string()];
    restore(&system, &dir, "b.service").expect("restores");
    let calls = system.calls();
    assert!(!calls.iter().any(|c| c.starts_with("hold ")), "{calls:?}");
    // b is the manifest's second unit: its sets are the ones flushed.
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("nft flush set inet seamless-reboot-hold unit1_v4")),
        "{calls:?}"
    );
    assert_eq!(
        outcome_of(&dir, "b.service").expect("recorded").outcome,
        OutcomeKind::Restored
    );
}

#[test]
fn a_hold_that_stopped_answering_does_not_stop_the_restore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let mut system = FakeNextBoot::new(BOOT_B).failing("hold ");
    system.tables = vec![hold::HOLD_TABLE.to_string()];
    restore(&system, &dir, "a.service").expect("restores");
    assert!(system.called("nft flush set inet seamless-reboot-hold unit0_v4"));
    assert_eq!(
        outcome_of(&dir, "a.service").expect("recorded").outcome,
        OutcomeKind::Restored
    );
}

#[test]
fn a_snapshot_claimed_by_another_boot_or_by_none_is_not_restored_nor_recorded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B);
    let err = restore(&system, &dir, "a.service").expect_err("unclaimed");
    assert!(format!("{err:#}").contains("did not claim"), "{err:#}");
    crate::manifest::claim(&dir, "33333333-3333-3333-3333-333333333333").expect("claim");
    let err = restore(&system, &dir, "a.service").expect_err("claimed by another boot");
    assert!(
        format!("{err:#}").contains("consumed by boot 3333"),
        "{err:#}"
    );
    assert!(system.calls().is_empty(), "{:?}", system.calls());
    assert!(read_outcomes(&dir).expect("outcomes").is_empty());
}

#[test]
fn an_outcome_that_cannot_be_written_fails_the_next_boot_restore_but_not_an_undo() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B).failing("outcome");
    let snapshot = snapshot_dir(&dir, "a.service");
    restore_unit(&system, &snapshot, "a.service", &settings()).expect_err("must be recorded");
    // In place on the old kernel (an undo): no claim, and the restore stands.
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let system = FakeNextBoot::new(BOOT_A).failing("outcome");
    let in_place = RestoreSettings {
        in_place: true,
        ..settings()
    };
    restore_unit(
        &system,
        &snapshot_dir(&dir, "a.service"),
        "a.service",
        &in_place,
    )
    .expect("restored in place");
    assert!(system.called("pid-file /run/seamless-reboot/a.service.pid 550"));
}

#[test]
fn release_unit_does_nothing_for_a_released_unit_and_falls_back_without_a_hold() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    fs::write(
        snapshot_dir(&dir, "a.service").join(HOLD_RULES_FILE),
        "table inet CRIU-550 {\n}\n",
    )
    .expect("rules");
    let mut system = FakeNextBoot::new(BOOT_B);
    system.hold_holds = false;
    release_unit(&system, &snapshot_dir(&dir, "a.service"), "a.service").expect("release");
    assert_eq!(system.calls(), vec!["hold holds a.service"]);

    let mut system = FakeNextBoot::new(BOOT_B);
    system.hold = false;
    system.tables = vec![hold::HOLD_TABLE.to_string(), "CRIU-550".to_string()];
    release_unit(&system, &snapshot_dir(&dir, "a.service"), "a.service").expect("release");
    let calls = system.calls();
    assert!(calls[0].starts_with("nft flush set inet seamless-reboot-hold unit0_v4"));
    assert_eq!(calls[1], "nft delete table CRIU-550");
}

#[test]
fn finish_cold_starts_what_was_not_restored_and_reports_a_start_that_fails() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service", "b.service", "c.service"]);
    let system = FakeNextBoot::new(BOOT_B).failing("start c.service");
    // a restored; b's restore failed (recorded); c never recorded anything.
    restore(&system, &dir, "a.service").expect("a");
    system.set_state("a.service", "active");
    let failing = FakeNextBoot::new(BOOT_B).failing("criu");
    restore(&failing, &dir, "b.service").expect_err("b");
    system.set_state("b.service", "failed");
    system.set_state("c.service", "inactive");
    let err = finish_restore(&system, &dir).expect_err("c cannot start");
    assert!(format!("{err:#}").contains("c.service"), "{err:#}");
    let calls = system.calls();
    let after = calls
        .iter()
        .position(|c| c.starts_with("mark-finished"))
        .expect("marked");
    assert_eq!(calls[after + 1], "daemon-reload");
    assert!(calls[after..].contains(&"start b.service".to_string()));
    assert!(!calls.contains(&"start a.service".to_string()));
    let b = outcome_of(&dir, "b.service").expect("b");
    assert_eq!(b.outcome, OutcomeKind::ColdStarted);
    assert!(b.detail.contains("CRIU could not restore"), "{}", b.detail);
    let c = outcome_of(&dir, "c.service").expect("c");
    assert_eq!(c.outcome, OutcomeKind::Failed);
    assert!(
        c.detail.contains("did not finish (the unit is inactive)")
            && c.detail.contains("injected failure"),
        "{}",
        c.detail
    );
    // Images of restored and cold-started units are wiped; c's stay.
    let images = |unit: &str| snapshot_dir(&dir, unit).join("images/core-1.img");
    assert!(!images("a.service").exists() && !images("b.service").exists());
    assert!(images("c.service").exists());
}

#[test]
fn finish_of_a_snapshot_this_boot_did_not_claim_only_starts_its_units() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let system = FakeNextBoot::new(BOOT_B);
    system.set_state("a.service", "failed");
    finish_restore(&system, &dir).expect("started");
    assert!(system.called("start a.service"));
    assert!(!system.called("outcome"), "{:?}", system.calls());
    assert!(read_outcomes(&dir).expect("outcomes").is_empty());
    assert!(
        snapshot_dir(&dir, "a.service")
            .join("images/core-1.img")
            .exists(),
        "the snapshot stays as it was"
    );
}

#[test]
fn finish_starts_the_units_left_to_this_boot_by_their_policy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = claimed(tmp.path(), &["a.service"]);
    let mut manifest = Manifest::read_from(&dir).expect("manifest");
    manifest.restart_units = vec!["r.service".into(), "up.service".into()];
    manifest.write_in(&dir).expect("rewrite");
    let system = FakeNextBoot::new(BOOT_B);
    system.set_state("a.service", "active");
    system.set_state("up.service", "active");
    finish_restore(&system, &dir).expect("finishes");
    assert!(system.called("start r.service"));
    assert!(!system.called("start up.service"));
}

#[test]
fn the_hold_claims_only_the_snapshot_this_boot_completes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    // The boot that took it, or a kernel other than planned: refused.
    hold::claim_snapshot(&dir, BOOT_A, TARGET).expect_err("same boot");
    hold::claim_snapshot(&dir, BOOT_B, "6.1.0").expect_err("other kernel");
    assert!(crate::manifest::read_claim(&dir).expect("claim").is_none());
    // A directory renamed to another transaction's id: refused.
    let other = tmp.path().join("t2-2");
    fs::rename(&dir, &other).expect("rename");
    let err = hold::claim_snapshot(&other, BOOT_B, TARGET).expect_err("renamed");
    assert!(
        format!("{err:#}").contains("holds transaction t1-1"),
        "{err:#}"
    );
    fs::rename(&other, &dir).expect("rename back");
    // This boot: claimed, and again when the hold runs a second time.
    hold::claim_snapshot(&dir, BOOT_B, TARGET).expect("claims");
    hold::claim_snapshot(&dir, BOOT_B, TARGET).expect("claims again");
    claimed_by_this_boot(&dir, BOOT_B).expect("ours");
    // Any later boot: consumed.
    let later = "33333333-3333-3333-3333-333333333333";
    let err = hold::claim_snapshot(&dir, later, TARGET).expect_err("later");
    assert!(format!("{err:#}").contains("already consumed"), "{err:#}");
}

#[test]
fn with_the_store_not_mounted_yet_the_generator_restores_what_the_command_line_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tempfile::tempdir().expect("run");
    let line = format!(
        "{} seamless_reboot.units=a.service,b.service",
        cmdline("t1-1")
    );
    // /var not mounted: no manifest to read.
    let decision = generator_decision(&line, tmp.path(), BOOT_B, TARGET, run.path());
    assert_eq!(
        decision,
        Decision::Restore {
            transaction_dir: tmp.path().join("t1-1"),
            units: vec!["a.service".into(), "b.service".into()],
            restart_units: vec![],
            unverified: true,
        }
    );
    let out = tmp.path().join("generated");
    fs::create_dir(&out).expect("mkdir");
    write_generated(&out, &decision, Path::new("/usr/bin/seamless-reboot")).expect("writes");
    let hold_unit = fs::read_to_string(out.join(HOLD_UNIT)).expect("hold unit");
    assert!(
        hold_unit.contains(&format!(
            "RequiresMountsFor={}",
            tmp.path().join("t1-1").display()
        )),
        "{hold_unit}"
    );
    // Without units on the line there is nothing to restore.
    assert!(matches!(
        generator_decision(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET, run.path()),
        Decision::Refused(why) if why.contains("names no unit")
    ));
    // Mounted: the manifest decides, whatever the line says.
    transaction(tmp.path(), "t1-1", &["a.service"]);
    assert!(matches!(
        generator_decision(&line, tmp.path(), BOOT_B, TARGET, run.path()),
        Decision::Restore { units, unverified: false, .. } if units == vec!["a.service".to_string()]
    ));
    // Once the finishing unit ran, a reload generates nothing for it.
    fs::write(run.path().join(FINISHED_FILE), "t1-1").expect("finished");
    assert!(matches!(
        generator_decision(&line, tmp.path(), BOOT_B, TARGET, run.path()),
        Decision::Refused(why) if why.contains("finished earlier in this boot")
    ));
}
