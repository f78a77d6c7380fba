use super::*;
use crate::layout::unit_dir_name;
use crate::manifest::{FORMAT_VERSION, UnitSnapshot, write_outcome};

pub(crate) const BOOT_A: &str = "11111111-1111-1111-1111-111111111111";
pub(super) const BOOT_B: &str = "22222222-2222-2222-2222-222222222222";
pub(super) const TARGET: &str = "6.12.95+deb12-amd64";

/// A transaction directory with a valid manifest for one unit.
pub(crate) fn transaction(root: &Path, id: &str, units: &[&str]) -> PathBuf {
    let dir = root.join(id);
    let snapshots = units
        .iter()
        .map(|unit| {
            let images = dir.join(unit_dir_name(unit)).join("images");
            fs::create_dir_all(&images).expect("mkdir");
            fs::write(images.join("core-1.img"), "image").expect("write");
            UnitSnapshot {
                unit: (*unit).to_string(),
                images_dir: format!("{}/images", unit_dir_name(unit)),
                main_pid: 550,
                pids: vec![550],
                thread_ids: vec![551],
                exec_start: vec!["/bin/true".into()],
                connections: vec![],
                journal_socket_inodes: vec![],
                pid_file: None,
                mount_sandbox: None,
                shm_files: vec![],
                frozen_ms: 1,
                images: crate::manifest::compute_digests(&images).expect("digests"),
            }
        })
        .collect();
    Manifest {
        format_version: FORMAT_VERSION,
        transaction_id: id.into(),
        created_unix: 1,
        source_boot_id: BOOT_A.into(),
        source_kernel: "6.12.117+deb13-amd64".into(),
        target_kernel: TARGET.into(),
        units: snapshots,
        restart_units: vec![],
    }
    .write_in(&dir)
    .expect("manifest");
    dir
}

pub(super) fn cmdline(id: &str) -> String {
    format!("root=/dev/vda rw seamless_reboot.transaction={id}")
}

#[test]
fn an_ordinary_boot_restores_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    transaction(tmp.path(), "t1-1", &["a.service"]);
    assert_eq!(
        decide("root=/dev/vda rw", tmp.path(), BOOT_B, TARGET),
        Decision::NoMarker
    );
}

#[test]
fn the_named_transition_restores_its_units() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service"]);
    assert_eq!(
        decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
        Decision::Restore {
            transaction_dir: dir,
            units: vec!["a.service".into(), "b.service".into()],
            restart_units: vec![],
            unverified: false,
        }
    );
}

#[test]
fn units_left_to_a_restart_are_started_without_a_restore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("generator");
    fs::create_dir_all(&out).expect("mkdir");
    let decision = Decision::Restore {
        transaction_dir: tmp.path().join("t1-1"),
        units: vec!["a.service".into()],
        restart_units: vec!["r.service".into()],
        unverified: false,
    };
    write_generated(&out, &decision, Path::new("/usr/bin/seamless-reboot")).expect("writes");
    assert!(
        out.join("multi-user.target.wants/r.service")
            .symlink_metadata()
            .is_ok()
    );
    assert!(!out.join("r.service.d").exists(), "no restore drop-in");
    assert!(out.join("a.service.d").join(GENERATED_DROPIN).exists());
}

#[test]
fn wrong_kernel_same_boot_missing_or_corrupt_snapshots_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let refused = |d: Decision| match d {
        Decision::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let why = refused(decide(
        &cmdline("t1-1"),
        tmp.path(),
        BOOT_B,
        "6.12.117+deb13-amd64",
    ));
    assert!(why.contains(TARGET), "{why}");
    refused(decide(&cmdline("t1-1"), tmp.path(), BOOT_A, TARGET));
    refused(decide(&cmdline("t9-9"), tmp.path(), BOOT_B, TARGET));
    let manifest = dir.join(crate::manifest::MANIFEST_FILE);
    let mut bytes = fs::read(&manifest).expect("read");
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    fs::write(&manifest, bytes).expect("write");
    let why = refused(decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET));
    assert!(why.contains("checksum"), "{why}");
}

#[test]
fn status_says_why_a_snapshot_was_not_restored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let manifest = Manifest::read_from(&dir).expect("manifest");
    let reason = |cmdline: &str, boot: &str, release: &str| {
        not_restored_reason(&dir, &manifest, cmdline, boot, release)
    };
    // A cold boot, or the reset after a kernel that did not boot.
    let cold = reason("root=/dev/vda ro", BOOT_B, "6.12.117+deb13-amd64").expect("cold");
    assert!(
        cold.contains("was not started by the update's kexec")
            && cold.contains("kernel 6.12.117+deb13-amd64")
            && cold.contains("never restored"),
        "{cold}"
    );
    // Still the boot that checkpointed it.
    let same = reason("root=/dev/vda", BOOT_A, "6.12.117+deb13-amd64").expect("same boot");
    assert!(same.contains("has not happened"), "{same}");
    // The kexec, but into another kernel than planned.
    let wrong = reason(&cmdline("t1-1"), BOOT_B, "6.1.0").expect("wrong kernel");
    assert!(wrong.starts_with("not restored in this boot:"), "{wrong}");
    assert!(wrong.contains(TARGET), "{wrong}");
    // The update's own kexec: its restores are under way.
    assert_eq!(reason(&cmdline("t1-1"), BOOT_B, TARGET), None);
}

#[test]
fn a_snapshot_claimed_by_another_boot_never_restores_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    crate::manifest::claim(&dir, BOOT_B).expect("first claim");
    // The claiming boot itself still restores (e.g. a daemon-reload).
    assert!(matches!(
        decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
        Decision::Restore { .. }
    ));
    let later = "33333333-3333-3333-3333-333333333333";
    assert!(matches!(
        decide(&cmdline("t1-1"), tmp.path(), later, TARGET),
        Decision::Refused(why) if why.contains("already consumed")
    ));
}

#[test]
fn units_with_an_outcome_are_not_generated_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service"]);
    write_outcome(
        &dir,
        &UnitOutcome {
            unit: "a.service".into(),
            outcome: OutcomeKind::Restored,
            detail: String::new(),
            recorded_unix: 2,
            duration_ms: 1,
            downtime_ms: None,
        },
    )
    .expect("outcome");
    assert!(matches!(
        decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET),
        Decision::Restore { units, .. } if units == vec!["b.service".to_string()]
    ));
}

#[test]
fn generated_files_hold_before_the_network_and_restore_each_unit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service"]);
    let out = tmp.path().join("generator");
    fs::create_dir_all(&out).expect("mkdir");
    let decision = decide(&cmdline("t1-1"), tmp.path(), BOOT_B, TARGET);
    write_generated(&out, &decision, Path::new("/usr/bin/seamless-reboot")).expect("writes");
    let hold = fs::read_to_string(out.join(HOLD_UNIT)).expect("hold unit");
    assert!(hold.contains("Before=network-pre.target"), "{hold}");
    assert!(hold.contains("DefaultDependencies=no"), "{hold}");
    // Ready only once every connection is on hold and the pids reserved.
    assert!(hold.contains("Type=notify"), "{hold}");
    assert!(hold.contains("RemainAfterExit=yes"), "{hold}");
    assert!(
        hold.contains("After=local-fs.target systemd-sysctl.service nftables.service"),
        "{hold}"
    );
    assert!(
        hold.contains(&format!(
            "ExecStart=/usr/bin/seamless-reboot hold {}",
            dir.display()
        )),
        "{hold}"
    );
    assert!(
        out.join("sysinit.target.wants")
            .join(HOLD_UNIT)
            .symlink_metadata()
            .is_ok()
    );
    let dropin =
        fs::read_to_string(out.join("a.service.d").join(GENERATED_DROPIN)).expect("drop-in");
    assert!(dropin.contains("Type=forking"), "{dropin}");
    assert!(dropin.contains(&format!("After={HOLD_UNIT}")), "{dropin}");
    assert!(
        out.join("multi-user.target.wants/a.service")
            .symlink_metadata()
            .is_ok()
    );
    // After every restore, whatever its result: hand the units back to
    // their own configuration and cold-start those not restored.
    let finish = fs::read_to_string(out.join(FINISH_UNIT)).expect("finish unit");
    assert!(
        finish.contains(&format!("After={HOLD_UNIT} a.service\n")),
        "{finish}"
    );
    assert!(finish.contains("Type=oneshot"), "{finish}");
    assert!(
        finish.contains(&format!(
            "ExecStart=/usr/bin/seamless-reboot finish-restore {}",
            dir.display()
        )),
        "{finish}"
    );
    assert!(
        out.join("multi-user.target.wants")
            .join(FINISH_UNIT)
            .symlink_metadata()
            .is_ok()
    );

    let empty = tmp.path().join("ordinary");
    fs::create_dir_all(&empty).expect("mkdir");
    write_generated(
        &empty,
        &Decision::NoMarker,
        Path::new("/usr/bin/seamless-reboot"),
    )
    .expect("writes");
    assert_eq!(
        fs::read_dir(&empty).expect("list").count(),
        0,
        "an ordinary boot gets nothing"
    );
}

#[test]
fn finds_the_private_directory_systemd_made_for_the_unit_in_this_boot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let boot = "d08f7635-f321-4e1f-9ac8-2a04c1601810";
    let this = "systemd-private-d08f7635f3214e1f9ac82a04c1601810";
    for dir in [
        format!("{this}-memcached.service-AAAAAA/tmp"),
        format!("{this}-memcached.service.d-BBBBBB/tmp"),
        "systemd-private-0123456789abcdef0123456789abcdef-memcached.service-CCCCCC/tmp".to_string(),
        format!("{this}-other.service-DDDDDD/tmp"),
    ] {
        fs::create_dir_all(tmp.path().join(dir)).expect("mkdir");
    }
    assert_eq!(
        private_dir_of(tmp.path(), boot, "memcached.service").expect("found"),
        tmp.path()
            .join(format!("{this}-memcached.service-AAAAAA/tmp"))
    );
    let err = private_dir_of(tmp.path(), boot, "redis.service").expect_err("none");
    assert!(
        format!("{err:#}").contains("made no private directory"),
        "{err:#}"
    );
}

#[test]
fn images_are_wiped_once_a_unit_is_restored_or_cold_started_but_kept_when_it_failed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = transaction(tmp.path(), "t1-1", &["a.service", "b.service", "c.service"]);
    let manifest = Manifest::read_from(&dir).expect("manifest");
    for (unit, outcome) in [
        ("a.service", OutcomeKind::Restored),
        ("b.service", OutcomeKind::ColdStarted),
        ("c.service", OutcomeKind::Failed),
    ] {
        fs::write(
            dir.join(unit_dir_name(unit)).join("images/restore.log"),
            "criu said things",
        )
        .expect("log");
        write_outcome(
            &dir,
            &UnitOutcome {
                unit: unit.into(),
                outcome,
                detail: String::new(),
                recorded_unix: 2,
                duration_ms: 1,
                downtime_ms: None,
            },
        )
        .expect("outcome");
    }
    wipe_images(&dir, &manifest).expect("wipes");
    let left = |unit: &str| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(unit_dir_name(unit)).join("images"))
            .expect("images dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(left("a.service"), vec!["restore.log"]);
    assert_eq!(left("b.service"), vec!["restore.log"]);
    assert_eq!(left("c.service"), vec!["core-1.img", "restore.log"]);
    // The manifest and the outcomes stay for `status`.
    assert!(Manifest::read_from(&dir).is_ok());
    assert_eq!(read_outcomes(&dir).expect("outcomes").len(), 3);
}

#[test]
fn hold_rule_tables_are_found() {
    let rules =
        "table inet CRIU-c05e4813-1efc-452d-83 {\n\tset conns4 {\n\t}\n}\ntable inet CRIU-x {\n}\n";
    assert_eq!(
        tables_in_rules(rules),
        vec!["CRIU-c05e4813-1efc-452d-83", "CRIU-x"]
    );
}
