//! Configuration of the seamless-reboot daemon.
//!
//! # Where it comes from
//!
//! The configuration is TOML, found the way systemd finds its own
//! configuration files (`man 5 systemd.unit`, "drop-in" semantics, and the
//! `standard-conf` rules shared by `systemd-system.conf` and friends):
//!
//! * The main file `config.toml` is searched in, highest precedence first,
//!   `/etc/seamless-reboot/`, `/run/seamless-reboot/` and
//!   `/usr/lib/seamless-reboot/`. Only the first one that exists is read: a
//!   file in `/etc` replaces the vendor file in `/usr/lib` entirely.
//! * Drop-ins are `*.toml` files in `config.toml.d/` below each of the three
//!   directories. They are collected by file name across all three; a file in
//!   a higher-precedence directory hides the one of the same name in a lower
//!   one. The survivors are applied after the main file in lexicographic
//!   (byte) order of their names, each overriding only the keys it sets:
//!   tables are merged key by key, arrays and scalars are replaced.
//! * A symlink to `/dev/null` (any character device) or an empty file is a
//!   *mask*: it hides the file of the same name below it and contributes
//!   nothing. Hidden files (leading `.`) and names not ending in `.toml` are
//!   ignored.
//! * With no file at all, the built-in defaults ([`Config::default`]) apply.
//!
//! This is the layout operators already know from systemd: the package ships
//! its defaults in `/usr/lib`, an administrator overrides them in `/etc`
//! (or a tool does so transiently in `/run`) without editing vendor files that
//! the next package update would overwrite, and a drop-in can change a single
//! key without copying the rest.
//!
//! # Why errors are this precise
//!
//! This daemon runs at the most delicate moment of a machine's life: shutting
//! services down for a kernel update and bringing them back. A configuration
//! mistake must be fixable from the error message alone, without guessing which
//! of up to a dozen files is meant. So every [`ConfigError`] names the file,
//! the 1-based line and the dotted key path, e.g.
//! `/etc/seamless-reboot/config.toml:7: timeouts.checkpoint_s: must be between 1 and 3600, got 0`.
//! Unknown keys are errors too (a typo must not silently fall back to a
//! default), and they are found by walking the parsed document against the
//! known keys with the TOML parser's spans, not with serde's
//! `deny_unknown_fields`, which cannot say where the key was.
//!
//! All file access goes through a root directory ([`Config::load_from_root`])
//! so tests run on temporary directories; paths *inside* the configuration
//! (such as `image_dir`) are not re-rooted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod error;
mod parse;

pub use error::{ConfigError, Location};

/// Directories searched for the main file and drop-ins, highest precedence
/// first. Absolute as on a running system; [`Config::load_from_root`] joins
/// them under its root.
pub const SEARCH_DIRS: [&str; 3] = [
    "/etc/seamless-reboot",
    "/run/seamless-reboot",
    "/usr/lib/seamless-reboot",
];

/// Name of the main configuration file in each of [`SEARCH_DIRS`].
pub const MAIN_FILE_NAME: &str = "config.toml";

/// Name of the drop-in directory in each of [`SEARCH_DIRS`].
pub const DROP_IN_DIR_NAME: &str = "config.toml.d";

/// Suffix a drop-in file must have to be read.
pub const DROP_IN_SUFFIX: &str = ".toml";

/// Smallest allowed value of every timeout, in seconds.
pub const MIN_TIMEOUT_S: u32 = 1;

/// Largest allowed value of every timeout, in seconds.
pub const MAX_TIMEOUT_S: u32 = 3600;

/// The effective configuration.
///
/// Values obtained from [`Config::load`] / [`Config::load_from_root`] are
/// validated; the public fields let other crates build configurations for
/// tests, which are then not checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Units whose processes and TCP connections are preserved across the
    /// kernel update. Only `*.service` units; no duplicates. Default: none.
    pub units: Vec<String>,
    /// Where checkpoint images and the manifest are written. Must be on a disk
    /// that survives kexec (not tmpfs); that is checked at run time, not here.
    /// Default: `/var/lib/seamless-reboot/images`.
    pub image_dir: PathBuf,
    /// Filesystem types (as `/proc/self/mountinfo` names them; `fuse` also
    /// matches `fuse.sshfs` and the like) the image store must not be on:
    /// the images are the services' memory, keys and passwords included.
    /// Default: the network filesystems `nfs`, `nfs4`, `cifs`, `smb3`, `9p`,
    /// `ceph`, `glusterfs` and `fuse`.
    pub image_dir_forbidden_filesystems: Vec<String>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Handling of preserved connections in the next boot.
    pub network: Network,
    /// The next kernel's command line.
    pub kernel: Kernel,
    /// `[policy]`: what to do with each unit (by name) that the plan finds
    /// cannot be preserved; units not listed are [`UnitPolicy::Preserve`].
    /// Drop-ins add to and override this table key by key.
    pub policy: BTreeMap<String, UnitPolicy>,
}

/// What the update does with a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitPolicy {
    /// `"preserve"`: checkpoint it; if it cannot be, refuse the whole update.
    #[default]
    Preserve,
    /// `"restart"`: checkpoint it if it can be; if not, leave it out and let
    /// the next boot start it with its own configuration (a cold start, as
    /// a plain reboot would do it, even if it is not enabled), while the
    /// other units are preserved.
    Restart,
    /// `"skip"`: never checkpoint it: the kexec stops it and the next boot
    /// starts it only if it is enabled, as with a plain reboot.
    Skip,
}

impl UnitPolicy {
    /// The spelling in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preserve => "preserve",
            Self::Restart => "restart",
            Self::Skip => "skip",
        }
    }
}

impl fmt::Display for UnitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[timeouts]`: time limits, each between [`MIN_TIMEOUT_S`] and [`MAX_TIMEOUT_S`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Checkpointing one unit. Default 60.
    pub checkpoint_s: u32,
    /// Restoring one unit. Default 60.
    pub restore_s: u32,
    /// After the hand-over, how long systemd's kexec job may take to show
    /// up; if it never does, or once it has gone without a kexec, the update
    /// is undone (its units restored in place). Default 120.
    pub kexec_s: u32,
}

impl Timeouts {
    /// [`Timeouts::checkpoint_s`] as a duration.
    pub fn checkpoint(&self) -> Duration {
        Duration::from_secs(self.checkpoint_s.into())
    }

    /// [`Timeouts::restore_s`] as a duration.
    pub fn restore(&self) -> Duration {
        Duration::from_secs(self.restore_s.into())
    }

    /// [`Timeouts::kexec_s`] as a duration.
    pub fn kexec(&self) -> Duration {
        Duration::from_secs(self.kexec_s.into())
    }
}

/// `[network]`: how checkpointed connections are treated in the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// What happens to the peers' packets until the unit is restored.
    /// Default [`HoldMode::Queue`].
    pub hold: HoldMode,
    /// Turn off TCP window scaling while restoring. Default `true`.
    pub disable_window_scaling_during_restore: bool,
}

/// How packets of checkpointed connections are held in the next boot until
/// their unit is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMode {
    /// `"drop"`: drop the peers' packets; the peers retransmit later.
    Drop,
    /// `"queue"`: hold them in an NFQUEUE and re-inject them after restore.
    Queue,
}

impl HoldMode {
    /// The spelling in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Queue => "queue",
        }
    }
}

impl fmt::Display for HoldMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[kernel]`: the next kernel's command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// Extra arguments appended to the next boot's kernel command line, one
    /// argument per element (non-empty, no control characters). Default none.
    pub append: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            units: Vec::new(),
            image_dir: PathBuf::from("/var/lib/seamless-reboot/images"),
            image_dir_forbidden_filesystems: [
                "nfs",
                "nfs4",
                "cifs",
                "smb3",
                "9p",
                "ceph",
                "glusterfs",
                "fuse",
            ]
            .map(String::from)
            .to_vec(),
            timeouts: Timeouts {
                checkpoint_s: 60,
                restore_s: 60,
                kexec_s: 120,
            },
            network: Network {
                hold: HoldMode::Queue,
                disable_window_scaling_during_restore: true,
            },
            kernel: Kernel::default(),
            policy: BTreeMap::new(),
        }
    }
}

/// A loaded configuration together with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: Config,
    /// Files that were read and applied, in the order they were applied (main
    /// file first, then drop-ins). Empty when the defaults apply unchanged.
    pub files_used: Vec<PathBuf>,
    /// Masks that took effect: `/dev/null` symlinks and empty files that hid
    /// a file of the same name in a lower-precedence directory (or that stand
    /// in the main file's place), in the order they were encountered.
    pub masked: Vec<PathBuf>,
}

impl Config {
    /// Loads the configuration of the running system (root `/`).
    pub fn load() -> Result<LoadedConfig, ConfigError> {
        Self::load_from_root(Path::new("/"))
    }

    /// Loads the configuration with every search path of [`SEARCH_DIRS`]
    /// joined under `root`, following the precedence rules of the module
    /// documentation. A missing file or directory is not an error; an
    /// existing one that cannot be read is.
    pub fn load_from_root(root: &Path) -> Result<LoadedConfig, ConfigError> {
        let dirs: Vec<PathBuf> = SEARCH_DIRS
            .iter()
            .map(|d| root.join(d.trim_start_matches('/')))
            .collect();
        let mut loaded = LoadedConfig {
            config: Config::default(),
            files_used: Vec::new(),
            masked: Vec::new(),
        };

        // Main file: the first one that exists wins, whatever it contains.
        for dir in &dirs {
            let path = dir.join(MAIN_FILE_NAME);
            if loaded.apply_file(path)? {
                break;
            }
        }

        // Drop-ins: first (highest-precedence) occurrence of each name wins;
        // BTreeMap over OsString sorts by bytes, as systemd's strcmp does.
        let mut drop_ins: BTreeMap<OsString, PathBuf> = BTreeMap::new();
        for dir in &dirs {
            let dir = dir.join(DROP_IN_DIR_NAME);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(ConfigError::ReadDir { path: dir, error }),
            };
            for entry in entries {
                let entry = entry.map_err(|error| ConfigError::ReadDir {
                    path: dir.clone(),
                    error,
                })?;
                let name = entry.file_name();
                let bytes = name.as_encoded_bytes();
                if bytes.starts_with(b".") || !bytes.ends_with(DROP_IN_SUFFIX.as_bytes()) {
                    continue;
                }
                drop_ins.entry(name).or_insert_with(|| entry.path());
            }
        }
        for path in drop_ins.into_values() {
            loaded.apply_file(path)?;
        }
        Ok(loaded)
    }

    /// Parses one TOML document as a complete configuration on top of the
    /// defaults, with the same checks as loading. `path` is only used in error
    /// messages. Useful for checking a file before installing it.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        parse::parse_file(path, text)?.apply_to(&mut config);
        Ok(config)
    }

    /// The configuration as a TOML document that loads back to the same
    /// value, with every key present (defaults included).
    pub fn to_toml_string(&self) -> String {
        fn string(s: &str) -> toml::Value {
            toml::Value::String(s.to_owned())
        }
        fn strings(v: &[String]) -> toml::Value {
            toml::Value::Array(v.iter().map(|s| string(s)).collect())
        }
        let Config {
            units,
            image_dir,
            image_dir_forbidden_filesystems,
            timeouts,
            network,
            kernel,
            policy,
        } = self;
        let mut policies = String::new();
        for (unit, p) in policy {
            policies.push_str(&format!("{} = {}\n", string(unit), string(p.as_str())));
        }
        format!(
            "units = {units}\n\
             image_dir = {image_dir}\n\
             image_dir_forbidden_filesystems = {forbidden}\n\
             \n\
             [timeouts]\n\
             checkpoint_s = {checkpoint_s}\n\
             restore_s = {restore_s}\n\
             kexec_s = {kexec_s}\n\
             \n\
             [network]\n\
             hold = {hold}\n\
             disable_window_scaling_during_restore = {dws}\n\
             \n\
             [kernel]\n\
             append = {append}\n\
             \n\
             [policy]\n\
             {policies}",
            units = strings(units),
            image_dir = string(&image_dir.to_string_lossy()),
            forbidden = strings(image_dir_forbidden_filesystems),
            checkpoint_s = timeouts.checkpoint_s,
            restore_s = timeouts.restore_s,
            kexec_s = timeouts.kexec_s,
            hold = string(network.hold.as_str()),
            dws = network.disable_window_scaling_during_restore,
            append = strings(&kernel.append),
        )
    }
}

/// Same as [`Config::to_toml_string`].
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml_string())
    }
}

/// What one candidate file turned out to be.
enum FileState {
    /// Nothing at that path (not even a dangling symlink).
    Missing,
    /// `/dev/null` symlink (any character device) or empty file.
    Masked,
    /// Regular content.
    Text(String),
}

impl LoadedConfig {
    /// Reads `path` and applies it. Returns whether something existed there
    /// (a file or a mask).
    fn apply_file(&mut self, path: PathBuf) -> Result<bool, ConfigError> {
        match read_file(&path)? {
            FileState::Missing => Ok(false),
            FileState::Masked => {
                self.masked.push(path);
                Ok(true)
            }
            FileState::Text(text) => {
                parse::parse_file(&path, &text)?.apply_to(&mut self.config);
                self.files_used.push(path);
                Ok(true)
            }
        }
    }
}

fn read_file(path: &Path) -> Result<FileState, ConfigError> {
    let read_error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    // The link itself decides existence: a dangling symlink is a broken
    // configuration, reported, not silently skipped.
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(read_error(e)),
    }
    let meta = fs::metadata(path).map_err(read_error)?;
    if meta.file_type().is_char_device() {
        return Ok(FileState::Masked);
    }
    let bytes = fs::read(path).map_err(read_error)?;
    if bytes.is_empty() {
        return Ok(FileState::Masked);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(FileState::Text(text)),
        Err(e) => Err(ConfigError::NotUtf8 {
            at: Location {
                path: path.to_path_buf(),
                line: parse::line_of(e.as_bytes(), e.utf8_error().valid_up_to()),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_documentation() {
        let c = Config::default();
        assert!(c.units.is_empty());
        assert_eq!(c.image_dir, Path::new("/var/lib/seamless-reboot/images"));
        assert_eq!(c.timeouts.checkpoint(), Duration::from_secs(60));
        assert_eq!(c.timeouts.restore(), Duration::from_secs(60));
        assert_eq!(c.timeouts.kexec(), Duration::from_secs(120));
        assert_eq!(c.network.hold, HoldMode::Queue);
        assert!(c.network.disable_window_scaling_during_restore);
        assert!(c.kernel.append.is_empty());
    }

    #[test]
    fn to_toml_string_round_trips() {
        let c = Config {
            units: vec!["a.service".into(), "b@x\\x2dy.service".into()],
            image_dir: "/srv/with \"quotes\"".into(),
            image_dir_forbidden_filesystems: vec!["nfs".into(), "fuse".into()],
            timeouts: Timeouts {
                checkpoint_s: 60,
                restore_s: 3600,
                kexec_s: 7,
            },
            network: Network {
                hold: HoldMode::Drop,
                disable_window_scaling_during_restore: false,
            },
            kernel: Kernel {
                append: vec!["quiet".into(), "x=\"a b\"".into()],
            },
            policy: [
                ("nginx.service".to_string(), UnitPolicy::Restart),
                ("a@b.service".to_string(), UnitPolicy::Skip),
            ]
            .into_iter()
            .collect(),
        };
        let text = c.to_toml_string();
        assert!(text.contains("hold = \"drop\"\n"), "{text}");
        assert!(text.contains("kexec_s = 7\n"), "{text}");
        let back = Config::from_toml_str(&text, Path::new("printed")).expect("own output loads");
        assert_eq!(back, c);
        assert_eq!(c.to_string(), text);

        let d = Config::default().to_string();
        assert_eq!(
            Config::from_toml_str(&d, Path::new("printed")).expect("defaults load"),
            Config::default()
        );
        assert!(d.contains("append = []\n"), "{d}");
    }

    #[test]
    fn hold_mode_spelling_matches_serde() {
        for mode in [HoldMode::Drop, HoldMode::Queue] {
            let v = toml::Value::try_from(mode).expect("serializes");
            assert_eq!(v.as_str(), Some(mode.as_str()));
        }
    }
}
