#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use super::*;

/// A valid manifest with one unit whose images live in `images/demo`.
pub(crate) fn sample() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        transaction_id: "tx-2024-01-01-abc123".to_owned(),
        created_unix: 1_700_000_000,
        source_boot_id: "bd2b7a29-060d-40a6-97e0-22457391e64d".to_owned(),
        source_kernel: "6.1.0-old".to_owned(),
        target_kernel: "6.1.0-new".to_owned(),
        units: vec![UnitSnapshot {
            unit: "demo.service".to_owned(),
            images_dir: "images/demo".to_owned(),
            main_pid: 100,
            pids: vec![100, 101],
            thread_ids: vec![102],
            exec_start: vec!["/usr/bin/demo".to_owned(), "--port=8080".to_owned()],
            connections: vec![
                TcpConnection {
                    local: "192.0.2.1:8080".parse().unwrap(),
                    remote: "198.51.100.7:51000".parse().unwrap(),
                },
                TcpConnection {
                    local: "[2001:db8::1]:8080".parse().unwrap(),
                    remote: "[2001:db8::2]:40000".parse().unwrap(),
                },
            ],
            journal_socket_inodes: vec![5001],
            pid_file: Some("/run/demo.pid".to_owned()),
            mount_sandbox: None,
            shm_files: vec![],
            frozen_ms: 120,
            images: vec![ImageDigest {
                name: "core-100.img".to_owned(),
                size: 3,
                sha256: "a".repeat(64),
            }],
        }],
        restart_units: vec!["cold.service".to_owned()],
    }
}

fn written(dir: &Path) -> (Manifest, Vec<u8>) {
    let manifest = sample();
    manifest.write_in(dir).unwrap();
    let bytes = fs::read(dir.join(MANIFEST_FILE)).unwrap();
    (manifest, bytes)
}

fn rewrite(dir: &Path, bytes: &[u8]) -> ManifestError {
    fs::write(dir.join(MANIFEST_FILE), bytes).unwrap();
    Manifest::read_from(dir).unwrap_err()
}

/// Re-encodes `body` with a correct header, so only the content is at fault.
pub(crate) fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn invalid_problem(manifest: &Manifest) -> ManifestProblem {
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::to_vec(manifest).unwrap();
    match rewrite(dir.path(), &with_header(&body)) {
        ManifestError::Invalid { path, problem } => {
            assert_eq!(path, dir.path().join(MANIFEST_FILE));
            problem
        }
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, bytes) = written(dir.path());
    assert_eq!(&bytes[..8], b"SRBMANI\0");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    assert_eq!(len as usize, bytes.len() - HEADER_LEN);
    let crc = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&bytes[HEADER_LEN..]));
    assert_eq!(Manifest::read_from(dir.path()).unwrap(), manifest);
}

#[test]
fn connections_serialize_as_address_strings() {
    let json = serde_json::to_value(&sample().units[0].connections).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"local": "192.0.2.1:8080", "remote": "198.51.100.7:51000"},
            {"local": "[2001:db8::1]:8080", "remote": "[2001:db8::2]:40000"},
        ])
    );
}

#[test]
fn atomic_write_leaves_no_tmp_file_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(MANIFEST_FILE), b"old").unwrap();
    let path = sample().write_in(dir.path()).unwrap();
    assert_eq!(path, dir.path().join(MANIFEST_FILE));
    assert!(!dir.path().join(MANIFEST_TMP_FILE).exists());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![MANIFEST_FILE]);
    assert_eq!(Manifest::read_from(dir.path()).unwrap(), sample());
}

#[test]
fn invalid_manifest_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = sample();
    manifest.units.clear();
    let err = manifest.write_in(dir.path()).unwrap_err();
    assert!(matches!(
        err,
        ManifestError::Invalid {
            problem: ManifestProblem::NoUnits,
            ..
        }
    ));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn flipped_body_byte_is_a_checksum_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = written(dir.path());
    let at = HEADER_LEN + 10;
    bytes[at] ^= 0x01;
    let err = rewrite(dir.path(), &bytes);
    assert!(
        matches!(err, ManifestError::ChecksumMismatch { expected, actual, .. } if expected != actual),
        "{err}"
    );
    assert!(err.to_string().contains("corrupt: checksum mismatch"));
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn truncated_body_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = written(dir.path());
    let body_len = (bytes.len() - HEADER_LEN) as u64;
    match rewrite(dir.path(), &bytes[..bytes.len() - 5]) {
        ManifestError::Truncated {
            part: Part::Body,
            expected,
            actual,
            ..
        } => {
            assert_eq!(expected, body_len);
            assert_eq!(actual, body_len - 5);
        }
        other => panic!("expected a truncated body, got {other}"),
    }
    match rewrite(dir.path(), &bytes[..HEADER_LEN - 1]) {
        ManifestError::Truncated {
            part: Part::Header,
            expected,
            actual,
            ..
        } => {
            assert_eq!(expected, HEADER_LEN as u64);
            assert_eq!(actual, HEADER_LEN as u64 - 1);
        }
        other => panic!("expected a truncated header, got {other}"),
    }
    assert!(matches!(
        rewrite(dir.path(), b""),
        ManifestError::Truncated {
            part: Part::Header,
            actual: 0,
            ..
        }
    ));
}

#[test]
fn trailing_data_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = written(dir.path());
    bytes.push(b'x');
    assert!(matches!(
        rewrite(dir.path(), &bytes),
        ManifestError::TrailingData { .. }
    ));
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = written(dir.path());
    bytes[0] = b'X';
    let err = rewrite(dir.path(), &bytes);
    assert!(matches!(err, ManifestError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a seamless-reboot manifest"));
    // A short unrelated file is "not a manifest", not "truncated".
    assert!(matches!(
        rewrite(dir.path(), b"{}\n"),
        ManifestError::BadMagic { .. }
    ));
}

#[test]
fn future_version() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = written(dir.path());
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = rewrite(dir.path(), &bytes);
    assert!(
        matches!(err, ManifestError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("format version 2"), "{message}");
    assert!(message.contains("reads version 1"), "{message}");
}

#[test]
fn oversize_length_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut bytes) = written(dir.path());
    bytes[12..20].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
    assert!(matches!(
        rewrite(dir.path(), &bytes),
        ManifestError::TooLarge { len, .. } if len == MAX_BODY_LEN + 1
    ));
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        rewrite(dir.path(), &bytes),
        ManifestError::TooLarge { len: u64::MAX, .. }
    ));
}

#[test]
fn body_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let err = rewrite(dir.path(), &with_header(b"{\"format_version\": 1,"));
    assert!(matches!(err, ManifestError::Json { .. }), "{err}");
}

#[test]
fn version_in_body_must_match_header() {
    let mut manifest = sample();
    manifest.format_version = 7;
    assert_eq!(
        invalid_problem(&manifest),
        ManifestProblem::VersionMismatch { header: 1, body: 7 }
    );
}

#[test]
fn invalid_content_is_rejected() {
    let mut m = sample();
    m.units.clear();
    assert_eq!(invalid_problem(&m), ManifestProblem::NoUnits);

    let mut m = sample();
    m.units.push(m.units[0].clone());
    m.units[1].images_dir = "images/other".to_owned();
    assert_eq!(
        invalid_problem(&m),
        ManifestProblem::DuplicateUnit("demo.service".to_owned())
    );

    for bad in ["", "Upper", "has space", "a/b", &"x".repeat(65)] {
        let mut m = sample();
        m.transaction_id = bad.to_owned();
        assert_eq!(
            invalid_problem(&m),
            ManifestProblem::BadTransactionId(bad.to_owned())
        );
    }

    let mut m = sample();
    m.units[0].pids = vec![100, 0];
    assert_eq!(
        invalid_problem(&m),
        ManifestProblem::BadPid {
            unit: "demo.service".to_owned(),
            pid: 0
        }
    );

    let mut m = sample();
    m.units[0].main_pid = -1;
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::BadPid { pid: -1, .. }
    ));

    let mut m = sample();
    m.units[0].main_pid = 102;
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::MainPidNotListed { main_pid: 102, .. }
    ));

    for bad in ["../escape", "images/../../x", "/abs/images", "", "."] {
        let mut m = sample();
        m.units[0].images_dir = bad.to_owned();
        assert_eq!(
            invalid_problem(&m),
            ManifestProblem::BadImagesDir {
                unit: "demo.service".to_owned(),
                dir: bad.to_owned()
            },
            "images_dir {bad:?}"
        );
    }

    let mut m = sample();
    m.source_boot_id = " ".to_owned();
    assert_eq!(
        invalid_problem(&m),
        ManifestProblem::EmptyField("source_boot_id")
    );

    let mut m = sample();
    m.units[0].unit = "demo/../x.service".to_owned();
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::BadUnitName {
            problem: UnitNameError::BadCharacter('/'),
            ..
        }
    ));

    let mut m = sample();
    let mut second = m.units[0].clone();
    second.unit = "other.service".to_owned();
    second.images_dir = "./images/demo".to_owned();
    m.units.push(second);
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::SharedImagesDir { .. }
    ));

    let mut m = sample();
    m.units[0].images[0].name = "../core.img".to_owned();
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::BadImageName { .. }
    ));

    let mut m = sample();
    m.units[0].images[0].sha256 = "A".repeat(64);
    assert!(matches!(
        invalid_problem(&m),
        ManifestProblem::BadSha256 { .. }
    ));
}

#[test]
fn missing_manifest_is_an_io_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Manifest::read_from(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert_eq!(err.path(), dir.path().join(MANIFEST_FILE));
}

#[test]
fn check_transition_refuses_same_boot_and_wrong_kernel() {
    let m = sample();
    // Trailing newline as read from /proc, and upper case, are the same boot.
    let err = m
        .check_transition("BD2B7A29-060D-40A6-97E0-22457391E64D\n", "6.1.0-new")
        .unwrap_err();
    assert!(matches!(err, BindingError::SameBoot { .. }), "{err}");

    let err = m
        .check_transition("11111111-2222-3333-4444-555555555555", "6.1.0-old")
        .unwrap_err();
    assert!(
        matches!(&err, BindingError::WrongKernel { booted, expected }
            if booted == "6.1.0-old" && expected == "6.1.0-new"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "booted 6.1.0-old but the snapshot was made for a kexec into 6.1.0-new"
    );

    m.check_transition("11111111-2222-3333-4444-555555555555", "6.1.0-new\n")
        .unwrap();
}

#[test]
fn boot_id_and_kernel_are_read_below_the_root() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("proc/sys/kernel/random");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("boot_id"), "abc-def\n").unwrap();
    fs::write(root.path().join("proc/sys/kernel/osrelease"), "6.9.1\n").unwrap();
    assert_eq!(read_boot_id(root.path()).unwrap(), "abc-def");
    assert_eq!(read_kernel_release(root.path()).unwrap(), "6.9.1");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        read_boot_id(empty.path()),
        Err(BindingError::Io { .. })
    ));
}

#[test]
fn claim_twice_fails_naming_the_first_claim() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_claim(dir.path()).unwrap(), None);
    let first = claim(dir.path(), "boot-one\n").unwrap();
    assert_eq!(first.boot_id, "boot-one");
    assert!(first.claimed_unix > 0);
    assert_eq!(read_claim(dir.path()).unwrap(), Some(first.clone()));

    let err = claim(dir.path(), "boot-two").unwrap_err();
    match &err {
        ClaimError::AlreadyConsumed { path, previous } => {
            assert_eq!(path, &dir.path().join(CONSUMED_FILE));
            assert_eq!(previous.as_ref(), Some(&first));
        }
        other => panic!("expected AlreadyConsumed, got {other}"),
    }
    assert!(err.to_string().contains("by boot boot-one"), "{err}");
    // The record still names the winner.
    assert_eq!(read_claim(dir.path()).unwrap(), Some(first));
}

#[test]
fn empty_marker_still_counts_as_consumed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CONSUMED_FILE), b"").unwrap();
    assert!(matches!(
        claim(dir.path(), "boot-two"),
        Err(ClaimError::AlreadyConsumed { previous: None, .. })
    ));
}

#[test]
fn claim_rejects_malformed_boot_id() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        claim(dir.path(), "a\nb"),
        Err(ClaimError::BadBootId { .. })
    ));
    assert!(!dir.path().join(CONSUMED_FILE).exists());
}

#[test]
fn concurrent_claims_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.path();
                s.spawn(move || claim(dir, &format!("boot-{i}")).is_ok())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(winners, 1);
}

fn outcome(unit: &str, kind: OutcomeKind) -> UnitOutcome {
    UnitOutcome {
        unit: unit.to_owned(),
        outcome: kind,
        detail: format!("{} ok", kind.as_str()),
        recorded_unix: 1_700_000_100,
        duration_ms: 42,
        downtime_ms: Some(900),
    }
}

#[test]
fn outcomes_round_trip_sorted_by_unit() {
    let dir = tempfile::tempdir().unwrap();
    sample().write_in(dir.path()).unwrap();
    let records = [
        outcome("web.service", OutcomeKind::Restored),
        outcome("foo@bar.service", OutcomeKind::ColdStarted),
        outcome(r"a\x2db.service", OutcomeKind::Failed),
    ];
    for record in &records {
        write_outcome(dir.path(), record).unwrap();
    }
    // Replacing a record keeps one file per unit.
    let mut replaced = records[0].clone();
    replaced.detail = "second try".to_owned();
    let path = write_outcome(dir.path(), &replaced).unwrap();
    assert_eq!(path, dir.path().join("unit-web.service.result"));

    assert!(dir.path().join("unit-foo@bar.service.result").exists());
    assert!(dir.path().join("unit-a%5Cx2db.service.result").exists());
    let tmp_files = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(tmp_files, 0);

    let read = read_outcomes(dir.path()).unwrap();
    let units: Vec<_> = read.iter().map(|o| o.unit.as_str()).collect();
    assert_eq!(
        units,
        vec![r"a\x2db.service", "foo@bar.service", "web.service"]
    );
    assert_eq!(read[0], records[2]);
    assert_eq!(read[2].detail, "second try");
    let json = fs::read_to_string(dir.path().join("unit-foo@bar.service.result")).unwrap();
    assert!(json.contains("\"cold-started\""), "{json}");
}

#[test]
fn outcome_for_unsafe_unit_name_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "../../etc/passwd",
        "a/b.service",
        "x%41.service",
        ".service",
        "@x.service",
    ] {
        assert!(
            matches!(
                write_outcome(dir.path(), &outcome(bad, OutcomeKind::Failed)),
                Err(OutcomeError::UnitName { .. })
            ),
            "{bad:?} was accepted"
        );
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn outcome_file_naming_content_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_outcome(dir.path(), &outcome("a.service", OutcomeKind::Restored)).unwrap();
    fs::rename(&path, dir.path().join("unit-b.service.result")).unwrap();
    assert!(matches!(
        read_outcomes(dir.path()),
        Err(OutcomeError::UnitMismatch { expected, found, .. })
            if expected == "b.service" && found == "a.service"
    ));
}

#[test]
fn result_file_names_are_reversible() {
    for unit in [
        "demo.service",
        "foo@bar.service",
        r"a\x2db.service",
        r"dev-disk-by\x2duuid-1234.device",
        "getty@tty1.service",
        "x:y_z-1.socket",
    ] {
        let name = result_file_name(unit).unwrap();
        assert!(!name.contains(['/', '\\']), "{name}");
        assert_eq!(unit_from_result_file_name(&name).as_deref(), Some(unit));
    }
    assert_eq!(
        result_file_name(r"a\x2db.service").unwrap(),
        "unit-a%5Cx2db.service.result"
    );
    // Not produced by result_file_name: non-canonical escape, bad escape,
    // other files.
    for name in [
        "unit-a%2Eservice.result",
        "unit-a%5cx2db.service.result",
        "unit-a%ZZ.service.result",
        "unit-a%5.result",
        "manifest",
        "unit-demo.service.result.tmp",
        "unit-..result",
    ] {
        assert_eq!(unit_from_result_file_name(name), None, "{name}");
    }
}

#[test]
fn unit_name_validation() {
    validate_unit_name("foo@bar.service").unwrap();
    validate_unit_name("foo@.service").unwrap();
    assert_eq!(validate_unit_name(""), Err(UnitNameError::Empty));
    assert_eq!(validate_unit_name("foo"), Err(UnitNameError::BadSuffix));
    assert_eq!(
        validate_unit_name("foo.bogus"),
        Err(UnitNameError::BadSuffix)
    );
    assert_eq!(
        validate_unit_name("a@b@c.service"),
        Err(UnitNameError::SeveralAt)
    );
    let long = format!("{}.service", "a".repeat(250));
    assert_eq!(
        validate_unit_name(&long),
        Err(UnitNameError::TooLong(long.len()))
    );
    // Valid for systemd, but too long once escaped.
    let escaped_long = format!("{}.service", r"\".repeat(240));
    validate_unit_name(&escaped_long).unwrap();
    assert_eq!(
        result_file_name(&escaped_long),
        Err(UnitNameError::TooLongForFileName)
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn digests_are_sorted_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("pages-1.img"), b"hello").unwrap();
    fs::write(dir.path().join("core-100.img"), b"").unwrap();
    let digests = compute_digests(dir.path()).unwrap();
    assert_eq!(
        digests,
        vec![
            ImageDigest {
                name: "core-100.img".to_owned(),
                size: 0,
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                    .to_owned(),
            },
            ImageDigest {
                name: "pages-1.img".to_owned(),
                size: 5,
                sha256: sha256_hex(b"hello"),
            },
        ]
    );
    verify_digests(dir.path(), &digests).unwrap();
}

#[test]
fn digest_verify_detects_modified_missing_and_resized_images() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("pages-1.img"), b"hello").unwrap();
    fs::write(dir.path().join("core-100.img"), b"core").unwrap();
    let digests = compute_digests(dir.path()).unwrap();

    // Same size, different content.
    fs::write(dir.path().join("pages-1.img"), b"jello").unwrap();
    match verify_digests(dir.path(), &digests).unwrap_err() {
        DigestError::ShaMismatch {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, dir.path().join("pages-1.img"));
            assert_eq!(expected, sha256_hex(b"hello"));
            assert_eq!(actual, sha256_hex(b"jello"));
        }
        other => panic!("expected ShaMismatch, got {other}"),
    }

    fs::write(dir.path().join("pages-1.img"), b"hello!").unwrap();
    assert!(matches!(
        verify_digests(dir.path(), &digests),
        Err(DigestError::SizeMismatch { expected: 5, actual: 6, path }) if path.ends_with("pages-1.img")
    ));

    fs::write(dir.path().join("pages-1.img"), b"hello").unwrap();
    fs::remove_file(dir.path().join("core-100.img")).unwrap();
    assert!(matches!(
        verify_digests(dir.path(), &digests),
        Err(DigestError::Missing { path }) if path.ends_with("core-100.img")
    ));

    // Extra files such as CRIU's restore log are not a problem.
    fs::write(dir.path().join("core-100.img"), b"core").unwrap();
    fs::write(dir.path().join("restore.log"), b"log").unwrap();
    verify_digests(dir.path(), &digests).unwrap();
}

#[test]
fn digest_of_directory_with_subdirectory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    assert!(matches!(
        compute_digests(dir.path()),
        Err(DigestError::NotRegularFile { path }) if path.ends_with("sub")
    ));
}

#[test]
fn manifest_verify_images_uses_the_transaction_dir() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images/demo");
    fs::create_dir_all(&images).unwrap();
    fs::write(images.join("core-100.img"), b"abc").unwrap();
    let mut m = sample();
    m.units[0].images = compute_digests(&images).unwrap();
    m.verify_images(dir.path()).unwrap();
    fs::write(images.join("core-100.img"), b"abd").unwrap();
    assert!(matches!(
        m.verify_images(dir.path()),
        Err(DigestError::ShaMismatch { .. })
    ));
}
