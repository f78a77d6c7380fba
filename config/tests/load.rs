//! Loading from a root directory: systemd-style precedence, drop-ins, masks,
//! and errors that name file, line and key.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use seamless_reboot_config::{Config, ConfigError, HoldMode, LoadedConfig, UnitPolicy};
use tempfile::TempDir;

const ETC: &str = "etc/seamless-reboot";
const RUN: &str = "run/seamless-reboot";
const USR: &str = "usr/lib/seamless-reboot";

struct Root(TempDir);

impl Root {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    /// Writes `root/dir/name`, creating directories.
    fn write(&self, dir: &str, name: &str, text: &str) -> PathBuf {
        let dir = self.path(dir);
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        fs::write(&path, text).expect("write");
        path
    }

    fn main(&self, dir: &str, text: &str) -> PathBuf {
        self.write(dir, "config.toml", text)
    }

    fn drop_in(&self, dir: &str, name: &str, text: &str) -> PathBuf {
        self.write(&format!("{dir}/config.toml.d"), name, text)
    }

    fn null_drop_in(&self, dir: &str, name: &str) -> PathBuf {
        let dir = self.path(&format!("{dir}/config.toml.d"));
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        symlink("/dev/null", &path).expect("symlink");
        path
    }

    fn load(&self) -> LoadedConfig {
        match Config::load_from_root(self.0.path()) {
            Ok(l) => l,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    fn load_err(&self) -> ConfigError {
        match Config::load_from_root(self.0.path()) {
            Ok(l) => panic!("expected an error, loaded {l:?}"),
            Err(e) => e,
        }
    }
}

const VENDOR: &str = r#"units = ["vendor.service"]
image_dir = "/usr/images"

[timeouts]
checkpoint_s = 10
restore_s = 11
kexec_s = 12

[network]
hold = "drop"
disable_window_scaling_during_restore = false

[kernel]
append = ["vendor"]
"#;

#[test]
fn defaults_when_no_file_exists() {
    let root = Root::new();
    let loaded = root.load();
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.files_used.is_empty());
    assert!(loaded.masked.is_empty());
    assert_eq!(loaded.config.timeouts.kexec_s, 120);
    assert_eq!(loaded.config.network.hold, HoldMode::Queue);
}

#[test]
fn empty_drop_in_dirs_are_fine() {
    let root = Root::new();
    for d in [ETC, RUN, USR] {
        fs::create_dir_all(root.path(&format!("{d}/config.toml.d"))).expect("mkdir");
    }
    assert_eq!(root.load().config, Config::default());
}

#[test]
fn vendor_file_only() {
    let root = Root::new();
    let usr = root.main(USR, VENDOR);
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![usr]);
    let c = &loaded.config;
    assert_eq!(c.units, ["vendor.service"]);
    assert_eq!(c.image_dir, Path::new("/usr/images"));
    assert_eq!(
        (
            c.timeouts.checkpoint_s,
            c.timeouts.restore_s,
            c.timeouts.kexec_s
        ),
        (10, 11, 12)
    );
    assert_eq!(c.network.hold, HoldMode::Drop);
    assert!(!c.network.disable_window_scaling_during_restore);
    assert_eq!(c.kernel.append, ["vendor"]);
}

#[test]
fn etc_replaces_vendor_file_entirely() {
    let root = Root::new();
    root.main(USR, VENDOR);
    let etc = root.main(ETC, "units = [\"admin.service\"]\n");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![etc]);
    let c = &loaded.config;
    assert_eq!(c.units, ["admin.service"]);
    // Keys not in /etc come from the built-in defaults, not from /usr/lib.
    assert_eq!(c.image_dir, Path::new("/var/lib/seamless-reboot/images"));
    assert_eq!(c.timeouts.checkpoint_s, 60);
    assert_eq!(c.network.hold, HoldMode::Queue);
    assert!(c.kernel.append.is_empty());
}

#[test]
fn run_sits_between_etc_and_usr() {
    let root = Root::new();
    root.main(USR, VENDOR);
    let run = root.main(RUN, "[timeouts]\nkexec_s = 300\n");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![run]);
    assert_eq!(loaded.config.timeouts.kexec_s, 300);
    assert_eq!(
        loaded.config.timeouts.checkpoint_s, 60,
        "vendor file not read"
    );

    let etc = root.main(ETC, "[timeouts]\nkexec_s = 400\n");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![etc]);
    assert_eq!(loaded.config.timeouts.kexec_s, 400);
}

#[test]
fn drop_in_overrides_one_key_and_keeps_the_rest() {
    let root = Root::new();
    let usr = root.main(USR, VENDOR);
    let d = root.drop_in(ETC, "50-timeout.toml", "[timeouts]\ncheckpoint_s = 30\n");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![usr, d]);
    let c = &loaded.config;
    assert_eq!(c.timeouts.checkpoint_s, 30);
    assert_eq!(c.timeouts.restore_s, 11);
    assert_eq!(c.timeouts.kexec_s, 12);
    assert_eq!(c.units, ["vendor.service"]);
    assert_eq!(c.network.hold, HoldMode::Drop);
    assert_eq!(c.kernel.append, ["vendor"]);
}

#[test]
fn drop_ins_apply_without_a_main_file_and_arrays_are_replaced() {
    let root = Root::new();
    root.drop_in(
        USR,
        "10-units.toml",
        "units = [\"a.service\", \"b.service\"]\n",
    );
    root.drop_in(RUN, "20-units.toml", "units = [\"c.service\"]\n");
    let c = root.load().config;
    assert_eq!(c.units, ["c.service"], "later drop-in replaces the array");
    assert_eq!(c.timeouts.restore_s, 60);
}

#[test]
fn drop_in_in_higher_dir_masks_same_name() {
    let root = Root::new();
    root.drop_in(USR, "50-x.toml", "[timeouts]\nrestore_s = 5\nkexec_s = 6\n");
    let etc = root.drop_in(ETC, "50-x.toml", "[timeouts]\nrestore_s = 7\n");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![etc]);
    assert_eq!(loaded.config.timeouts.restore_s, 7);
    assert_eq!(
        loaded.config.timeouts.kexec_s, 120,
        "masked file contributes nothing"
    );
}

#[test]
fn dev_null_symlink_masks_drop_in() {
    let root = Root::new();
    let usr_main = root.main(USR, VENDOR);
    root.drop_in(USR, "60-kernel.toml", "kernel.append = [\"debug\"]\n");
    let kept = root.drop_in(USR, "70-kexec.toml", "timeouts.kexec_s = 99\n");
    let null = root.null_drop_in(ETC, "60-kernel.toml");
    let loaded = root.load();
    assert_eq!(loaded.files_used, vec![usr_main, kept]);
    assert_eq!(loaded.masked, vec![null]);
    assert_eq!(loaded.config.kernel.append, ["vendor"]);
    assert_eq!(loaded.config.timeouts.kexec_s, 99);
}

#[test]
fn empty_file_masks_drop_in() {
    let root = Root::new();
    root.drop_in(USR, "60-kernel.toml", "kernel.append = [\"debug\"]\n");
    let empty = root.drop_in(RUN, "60-kernel.toml", "");
    let loaded = root.load();
    assert!(loaded.files_used.is_empty());
    assert_eq!(loaded.masked, vec![empty]);
    assert!(loaded.config.kernel.append.is_empty());
}

#[test]
fn dev_null_symlink_masks_vendor_main_file() {
    let root = Root::new();
    root.main(USR, VENDOR);
    fs::create_dir_all(root.path(ETC)).expect("mkdir");
    let null = root.path(&format!("{ETC}/config.toml"));
    symlink("/dev/null", &null).expect("symlink");
    let loaded = root.load();
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.files_used.is_empty());
    assert_eq!(loaded.masked, vec![null]);
}

#[test]
fn drop_ins_apply_in_lexicographic_order_across_dirs() {
    let root = Root::new();
    // Names are applied by name, whatever directory they are in.
    let a = root.drop_in(
        ETC,
        "10-a.toml",
        "timeouts.kexec_s = 1\nimage_dir = \"/a\"\n",
    );
    let c = root.drop_in(USR, "30-c.toml", "timeouts.kexec_s = 3\n");
    let b = root.drop_in(
        RUN,
        "20-b.toml",
        "timeouts.kexec_s = 2\nimage_dir = \"/b\"\n",
    );
    let z = root.drop_in(USR, "Z.toml", "timeouts.restore_s = 26\n");
    let lower = root.drop_in(ETC, "a.toml", "timeouts.restore_s = 27\n");
    // Not drop-ins: wrong suffix, hidden.
    root.drop_in(ETC, "99-ignored.conf", "timeouts.kexec_s = 900\n");
    root.drop_in(ETC, ".99-hidden.toml", "timeouts.kexec_s = 901\n");
    root.drop_in(ETC, "99-backup.toml~", "timeouts.kexec_s = 902\n");
    let loaded = root.load();
    // Byte order: digits < uppercase < lowercase.
    assert_eq!(loaded.files_used, vec![a, b, c, z, lower]);
    assert_eq!(loaded.config.timeouts.kexec_s, 3);
    assert_eq!(loaded.config.image_dir, Path::new("/b"));
    assert_eq!(loaded.config.timeouts.restore_s, 27);
}

#[test]
fn unknown_key_names_file_and_line() {
    let root = Root::new();
    let path = root.main(
        ETC,
        "units = []\n\n[timeouts]\ncheckpoint_s = 5\nchekpoint_s = 6\n",
    );
    let e = root.load_err();
    assert_eq!(
        e.to_string(),
        format!("{}:5: unknown key `timeouts.chekpoint_s`", path.display())
    );
    assert_eq!(e.location().map(|l| l.line), Some(5));
    assert_eq!(e.path(), path);
}

#[test]
fn unknown_key_in_drop_in_names_the_drop_in() {
    let root = Root::new();
    root.main(USR, VENDOR);
    let d = root.drop_in(RUN, "10-typo.toml", "# comment\nunit = [\"x.service\"]\n");
    let e = root.load_err().to_string();
    assert_eq!(e, format!("{}:2: unknown key `unit`", d.display()));
}

#[test]
fn type_error_names_file_line_and_key() {
    let root = Root::new();
    let path = root.main(
        ETC,
        "[network]\nhold = \"queue\"\n\n[timeouts]\nrestore_s = \"60\"\n",
    );
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:5: timeouts.restore_s: expected integer (seconds), got string",
            path.display()
        )
    );
}

#[test]
fn invalid_unit_name() {
    let root = Root::new();
    let path = root.main(
        ETC,
        "units = [\n  \"good.service\",\n  \"bad.socket\",\n]\n",
    );
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:3: units[1]: invalid unit name `bad.socket`: must end in `.service` (only service units can be preserved)",
            path.display()
        )
    );
}

#[test]
fn invalid_unit_characters() {
    let root = Root::new();
    root.main(ETC, "units = [\"a/b.service\"]\n");
    let e = root.load_err().to_string();
    assert!(
        e.contains(":1: units[0]: invalid unit name `a/b.service`: contains a character"),
        "{e}"
    );
}

#[test]
fn duplicate_unit() {
    let root = Root::new();
    let path = root.main(
        ETC,
        "units = [\n  \"a.service\",\n  \"b.service\",\n  \"a.service\",\n]\n",
    );
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:4: units[2]: duplicate unit `a.service` (already listed at line 2)",
            path.display()
        )
    );
}

#[test]
fn timeout_zero() {
    let root = Root::new();
    root.main(USR, VENDOR);
    let d = root.drop_in(ETC, "10-t.toml", "[timeouts]\n\ncheckpoint_s = 0\n");
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:3: timeouts.checkpoint_s: must be between 1 and 3600, got 0",
            d.display()
        )
    );
}

#[test]
fn relative_image_dir() {
    let root = Root::new();
    let path = root.main(ETC, "image_dir = \"var/lib/images\"\n");
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:1: image_dir: must be an absolute path, got `var/lib/images`",
            path.display()
        )
    );
}

#[test]
fn unknown_hold_mode() {
    let root = Root::new();
    let path = root.main(ETC, "[network]\nhold = \"fifo\"\n");
    let e = root.load_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2: network.hold: unknown variant `fifo`, expected `drop` or `queue`",
            path.display()
        )
    );
}

#[test]
fn syntax_error_names_file_and_line() {
    let root = Root::new();
    let path = root.main(ETC, "units = []\n[timeouts]\ncheckpoint_s = = 5\n");
    let e = root.load_err();
    let msg = e.to_string();
    let prefix = format!("{}:3: TOML syntax error: ", path.display());
    assert!(msg.starts_with(&prefix), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let root = Root::new();
    let path = root.write(ETC, "config.toml", "");
    fs::write(&path, b"units = []\n# caf\xe9\n").expect("write");
    let e = root.load_err().to_string();
    assert_eq!(e, format!("{}:2: file is not valid UTF-8", path.display()));
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    // Tests may run as root, which ignores file modes; a directory where the
    // file should be is unreadable for everyone.
    let root = Root::new();
    root.main(USR, VENDOR);
    let path = root.path(&format!("{ETC}/config.toml"));
    fs::create_dir_all(&path).expect("mkdir");
    let e = root.load_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}: cannot read: ", path.display())),
        "{msg}"
    );
}

#[test]
fn dangling_symlink_is_an_error_not_a_missing_file() {
    let root = Root::new();
    root.main(USR, VENDOR);
    fs::create_dir_all(root.path(ETC)).expect("mkdir");
    let path = root.path(&format!("{ETC}/config.toml"));
    symlink("/nonexistent/seamless-reboot.toml", &path).expect("symlink");
    let msg = root.load_err().to_string();
    assert!(
        msg.starts_with(&format!("{}: cannot read: ", path.display())),
        "{msg}"
    );
}

#[test]
fn paths_inside_the_config_are_not_rerooted() {
    let root = Root::new();
    root.main(ETC, "image_dir = \"/var/lib/x\"\n");
    assert_eq!(root.load().config.image_dir, Path::new("/var/lib/x"));
}

#[test]
fn effective_config_prints_and_reloads() {
    let root = Root::new();
    root.main(USR, VENDOR);
    root.drop_in(ETC, "10.toml", "timeouts.kexec_s = 77\n");
    let c = root.load().config;
    let printed = c.to_string();
    assert!(printed.contains("kexec_s = 77\n"), "{printed}");
    assert!(
        printed.contains("units = [\"vendor.service\"]\n"),
        "{printed}"
    );
    let again = Root::new();
    again.main(ETC, &printed);
    assert_eq!(again.load().config, c);
}

#[test]
fn policy_drop_ins_set_units_one_by_one() {
    let root = Root::new();
    root.main(
        USR,
        "[policy]\n\"a.service\" = \"restart\"\n\"b.service\" = \"skip\"\n",
    );
    root.drop_in(ETC, "50-b.toml", "[policy]\n\"b.service\" = \"preserve\"\n");
    root.drop_in(ETC, "60-c.toml", "policy.\"c.service\" = \"restart\"\n");
    let c = root.load().config;
    let policy: Vec<(&str, UnitPolicy)> = c.policy.iter().map(|(u, p)| (u.as_str(), *p)).collect();
    assert_eq!(
        policy,
        vec![
            ("a.service", UnitPolicy::Restart),
            ("b.service", UnitPolicy::Preserve),
            ("c.service", UnitPolicy::Restart),
        ]
    );
}
