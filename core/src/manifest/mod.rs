//! The snapshot manifest: written just before the kexec, read by the next
//! boot.
//!
//! # Why it exists
//!
//! A checkpoint is only correct for the moment it was taken. Restoring it on
//! the wrong boot (the kexec never happened, or the machine came up on a
//! different kernel) or restoring it twice (a second boot after the first
//! restore already resumed the services) would resurrect processes whose TCP
//! peers, files and pids have moved on, or duplicate live services. The
//! manifest therefore binds one snapshot to exactly one kernel transition:
//!
//! * it records the boot that was checkpointed and the kernel loaded for the
//!   kexec, and [`Manifest::check_transition`] refuses any other boot;
//! * a `consumed` marker created with `O_CREAT|O_EXCL` ([`claim`]) lets only
//!   the first boot that tries to restore it do so;
//! * the image files of each unit carry SHA-256 digests
//!   ([`compute_digests`], [`verify_digests`]) so a corrupt snapshot is
//!   detected before CRIU is asked to restore it, when a cold start is still
//!   a clean option.
//!
//! # File format
//!
//! A fixed little-endian header, then a JSON body:
//!
//! | bytes  | content                                     |
//! |--------|---------------------------------------------|
//! | 0..8   | magic `b"SRBMANI\0"`                        |
//! | 8..12  | format version, `u32` (currently 1)         |
//! | 12..20 | body length in bytes, `u64`                 |
//! | 20..24 | CRC32 (IEEE, as `crc32fast`) of the body, `u32` |
//! | 24..   | body: the [`Manifest`] as JSON              |
//!
//! The header is checked field by field in that order so that each kind of
//! damage gets its own [`ManifestError`]: a different file, a manifest from a
//! newer release, a torn write, bit rot, or a body that parses but makes no
//! sense. The body is JSON rather than a binary encoding because operators
//! read it (`tail -c +25 manifest | jq`) when a restore goes wrong; the CRC
//! protects it all the same. The body is capped at [`MAX_BODY_LEN`] so a
//! damaged length field cannot make the reader allocate gigabytes.
//!
//! # Durability
//!
//! Every file here is written the same way: to a temporary name in the same
//! directory, `fsync`ed, renamed over the final name, and the directory
//! `fsync`ed. The kexec follows within seconds and discards the page cache, so
//! anything not on disk by then does not exist; and a reader never sees a
//! half-written file under the final name.
//!
//! All functions take the transaction directory as a parameter, so tests run
//! on temporary directories.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub(crate) mod atomic;
mod binding;
mod claim;
mod digest;
mod outcome;
mod unit_name;

pub use binding::{BindingError, read_boot_id, read_kernel_release};
pub use claim::{CONSUMED_FILE, Claim, ClaimError, claim, read_claim};
pub use digest::{DigestError, compute_digests, verify_digests};
pub use outcome::{OutcomeError, OutcomeKind, UnitOutcome, read_outcomes, write_outcome};
pub use unit_name::{
    UnitNameError, result_file_name, unit_from_result_file_name, validate_unit_name,
};

/// First eight bytes of every manifest file.
pub const MAGIC: [u8; 8] = *b"SRBMANI\0";

/// The format version this code writes.
pub const FORMAT_VERSION: u32 = 1;

/// Every format version this code can read.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Length of the fixed header before the body.
pub const HEADER_LEN: usize = 24;

/// Largest body accepted (16 MiB). A manifest lists a handful of units with
/// their connections and image digests; anything near this size is damage.
pub const MAX_BODY_LEN: u64 = 16 * 1024 * 1024;

/// Name of the manifest inside the transaction directory.
pub const MANIFEST_FILE: &str = "manifest";

/// Temporary name the manifest is written under before the rename.
pub const MANIFEST_TMP_FILE: &str = "manifest.tmp";

/// Longest transaction id.
pub const MAX_TRANSACTION_ID_LEN: usize = 64;

/// One checkpointed TCP connection, as seen from the service's side.
///
/// Both addresses serialize as strings: `"192.0.2.1:80"` or `"[2001:db8::1]:80"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpConnection {
    /// The service's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
}

/// Digest of one CRIU image file, to detect a corrupt snapshot before restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDigest {
    /// File name inside the unit's images directory (no directory part).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, 64 lowercase hex digits.
    pub sha256: String,
}

/// Everything the next boot needs to restore (or cold start) one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSnapshot {
    /// The systemd unit name, e.g. `demo.service`.
    pub unit: String,
    /// CRIU images directory, relative to the transaction directory.
    pub images_dir: String,
    /// The unit's main pid at checkpoint time (CRIU restores pids as they were).
    pub main_pid: i32,
    /// Every pid of the process tree CRIU saved (its `pstree.img`),
    /// including `main_pid`.
    pub pids: Vec<i32>,
    /// Ids of the saved processes' other threads; CRIU restores them as
    /// they were too.
    #[serde(default)]
    pub thread_ids: Vec<i32>,
    /// The unit's original `ExecStart` argv, for the operator's information
    /// (a cold start runs the unit's own configuration through systemd).
    pub exec_start: Vec<String>,
    /// The unit's own `PIDFile=`, if it has one: the restore writes the
    /// restored main pid there too, so that the unit's `ExecReload=` and
    /// `ExecStop=` commands that read it find the restored process.
    #[serde(default)]
    pub pid_file: Option<String>,
    /// Established TCP connections that were checkpointed.
    pub connections: Vec<TcpConnection>,
    /// Inodes of the unix sockets connecting stdout/stderr to journald; CRIU
    /// treats them as external and they must be reconnected on restore.
    pub journal_socket_inodes: Vec<u64>,
    /// The unit's mount namespace, when it had one of its own (a systemd
    /// sandbox): the restore rebuilds it on `/`, binding the unit's new
    /// private directories and reopening the files held outside it.
    #[serde(default)]
    pub mount_sandbox: Option<crate::inventory::sandbox::MountSandbox>,
    /// POSIX shared memory files of the host's `/dev/shm` the unit mapped
    /// or held, by name: saved as `dev-shm.tar` beside the images and put
    /// back before the restore.
    #[serde(default)]
    pub shm_files: Vec<String>,
    /// How long the unit was frozen for the checkpoint, in milliseconds.
    pub frozen_ms: u64,
    /// Digests of every file in `images_dir`, sorted by name.
    pub images: Vec<ImageDigest>,
}

impl UnitSnapshot {
    /// The unit's images directory inside `transaction_dir`.
    pub fn images_path(&self, transaction_dir: &Path) -> PathBuf {
        transaction_dir.join(&self.images_dir)
    }
}

/// The content of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of the body; must equal the header's.
    pub format_version: u32,
    /// Identifier of the reboot transaction, `[a-z0-9-]{1,64}`.
    pub transaction_id: String,
    /// When the manifest was created, seconds since the Unix epoch.
    pub created_unix: u64,
    /// `/proc/sys/kernel/random/boot_id` of the boot that was checkpointed.
    pub source_boot_id: String,
    /// `uname -r` of the kernel that was checkpointed.
    pub source_kernel: String,
    /// Release of the kernel loaded for the kexec.
    pub target_kernel: String,
    /// The checkpointed units.
    pub units: Vec<UnitSnapshot>,
    /// Units left out of the checkpoint by their `restart` policy: the next
    /// boot starts them with their own configuration.
    #[serde(default)]
    pub restart_units: Vec<String>,
}

/// Why a manifest's content is not acceptable, independent of any file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestProblem {
    /// The body's version differs from the header's.
    #[error("the body says format version {body} but the header says {header}")]
    VersionMismatch {
        /// Version in the header.
        header: u32,
        /// Version in the body.
        body: u32,
    },
    /// The transaction id is not `[a-z0-9-]{1,64}`.
    #[error("transaction id {0:?} is not 1 to 64 characters of [a-z0-9-]")]
    BadTransactionId(String),
    /// A required text field is empty.
    #[error("{0} is empty")]
    EmptyField(&'static str),
    /// No unit at all: nothing to restore.
    #[error("it lists no units")]
    NoUnits,
    /// A unit name is not a valid systemd unit name.
    #[error("unit {unit:?}: {problem}")]
    BadUnitName {
        /// The offending name.
        unit: String,
        /// What is wrong with it.
        problem: UnitNameError,
    },
    /// The same unit is listed twice.
    #[error("unit {0} is listed more than once")]
    DuplicateUnit(String),
    /// A pid is zero or negative.
    #[error("unit {unit}: pid {pid} is not positive")]
    BadPid {
        /// The unit.
        unit: String,
        /// The pid.
        pid: i32,
    },
    /// The main pid is not among the unit's pids.
    #[error("unit {unit}: main pid {main_pid} is not in its pid list")]
    MainPidNotListed {
        /// The unit.
        unit: String,
        /// Its main pid.
        main_pid: i32,
    },
    /// The images directory is absolute, empty or climbs out with `..`.
    #[error(
        "unit {unit}: images_dir {dir:?} is not a relative path inside the transaction directory"
    )]
    BadImagesDir {
        /// The unit.
        unit: String,
        /// The directory as written.
        dir: String,
    },
    /// Two units share an images directory.
    #[error("units {first} and {second} share the images_dir {dir:?}")]
    SharedImagesDir {
        /// The directory.
        dir: String,
        /// The first unit using it.
        first: String,
        /// The second unit using it.
        second: String,
    },
    /// An image name is empty, `.`/`..`, or contains `/` or NUL.
    #[error("unit {unit}: image name {name:?} is not a plain file name")]
    BadImageName {
        /// The unit.
        unit: String,
        /// The name.
        name: String,
    },
    /// An image is listed twice.
    #[error("unit {unit}: image {name} is listed more than once")]
    DuplicateImage {
        /// The unit.
        unit: String,
        /// The name.
        name: String,
    },
    /// A SHA-256 is not 64 lowercase hex digits.
    #[error("unit {unit}: image {name} has a malformed sha256 {sha256:?}")]
    BadSha256 {
        /// The unit.
        unit: String,
        /// The image name.
        name: String,
        /// The value as written.
        sha256: String,
    },
}

/// Which part of the file ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The fixed header.
    Header,
    /// The JSON body.
    Body,
}

impl Part {
    fn as_str(self) -> &'static str {
        match self {
            Part::Header => "header",
            Part::Body => "body",
        }
    }
}

/// Everything that can go wrong reading or writing a manifest. Every variant
/// names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be opened, read, written or synced.
    #[error("manifest {}: {context}: {source}", .path.display())]
    Io {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The magic bytes are wrong.
    #[error("{} is not a seamless-reboot manifest (bad magic)", .path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The header's version is not one this code reads.
    #[error(
        "manifest {}: format version {found} is not supported (this build reads {})",
        .path.display(), versions_list(SUPPORTED_VERSIONS)
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// The header or the body is shorter than it must be.
    #[error(
        "manifest {}: truncated: the {} has {actual} bytes, {expected} expected",
        .path.display(), .part.as_str()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part ended early.
        part: Part,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Bytes follow the body the header declares.
    #[error("manifest {}: data after the {declared}-byte body the header declares", .path.display())]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// The body length in the header.
        declared: u64,
    },
    /// The header declares a body over [`MAX_BODY_LEN`].
    #[error("manifest {}: body length {len} exceeds the limit of {MAX_BODY_LEN} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The declared (or, on write, actual) length.
        len: u64,
    },
    /// The body's CRC32 differs from the header's.
    #[error(
        "manifest {}: corrupt: checksum mismatch (header {expected:#010x}, body {actual:#010x})",
        .path.display()
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// CRC in the header.
        expected: u32,
        /// CRC of the body read.
        actual: u32,
    },
    /// The body is not valid JSON for a [`Manifest`] (or could not be encoded).
    #[error("manifest {}: the body is not a valid manifest: {source}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The body parses but its content is not acceptable.
    #[error("manifest {}: invalid: {problem}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        problem: ManifestProblem,
    },
}

impl ManifestError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Io { path, .. }
            | ManifestError::BadMagic { path }
            | ManifestError::UnsupportedVersion { path, .. }
            | ManifestError::Truncated { path, .. }
            | ManifestError::TrailingData { path, .. }
            | ManifestError::TooLarge { path, .. }
            | ManifestError::ChecksumMismatch { path, .. }
            | ManifestError::Json { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        }
    }
}

fn versions_list(versions: &[u32]) -> String {
    let list: Vec<String> = versions.iter().map(u32::to_string).collect();
    format!("version {}", list.join(", "))
}

/// Seconds since the Unix epoch, 0 if the clock is before it.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Manifest {
    /// Checks the content: transaction id, non-empty fields, unit names,
    /// pids, images directories and digests.
    pub fn validate(&self) -> Result<(), ManifestProblem> {
        if !is_valid_transaction_id(&self.transaction_id) {
            return Err(ManifestProblem::BadTransactionId(
                self.transaction_id.clone(),
            ));
        }
        for (name, value) in [
            ("source_boot_id", &self.source_boot_id),
            ("source_kernel", &self.source_kernel),
            ("target_kernel", &self.target_kernel),
        ] {
            if value.trim().is_empty() {
                return Err(ManifestProblem::EmptyField(name));
            }
        }
        if self.units.is_empty() {
            return Err(ManifestProblem::NoUnits);
        }
        let mut units = BTreeSet::new();
        let mut dirs: Vec<(String, &str)> = Vec::new();
        for unit in &self.units {
            validate_unit_name(&unit.unit).map_err(|problem| ManifestProblem::BadUnitName {
                unit: unit.unit.clone(),
                problem,
            })?;
            if !units.insert(unit.unit.as_str()) {
                return Err(ManifestProblem::DuplicateUnit(unit.unit.clone()));
            }
            validate_unit(unit)?;
            let normalized = normalize_images_dir(&unit.images_dir).ok_or_else(|| {
                ManifestProblem::BadImagesDir {
                    unit: unit.unit.clone(),
                    dir: unit.images_dir.clone(),
                }
            })?;
            if let Some((_, first)) = dirs.iter().find(|(dir, _)| *dir == normalized) {
                return Err(ManifestProblem::SharedImagesDir {
                    dir: unit.images_dir.clone(),
                    first: (*first).to_owned(),
                    second: unit.unit.clone(),
                });
            }
            dirs.push((normalized, &unit.unit));
        }
        Ok(())
    }

    /// Encodes header and body, after validating the content.
    pub fn encode(&self, path: &Path) -> Result<Vec<u8>, ManifestError> {
        self.validate().map_err(|problem| ManifestError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                path: path.to_owned(),
                found: self.format_version,
            });
        }
        let body = serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Json {
            path: path.to_owned(),
            source,
        })?;
        let len = body.len() as u64;
        if len > MAX_BODY_LEN {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a manifest from `reader`; `path` only names the source in errors.
    pub fn decode(path: &Path, mut reader: impl Read) -> Result<Manifest, ManifestError> {
        let io_err = |source| ManifestError::Io {
            path: path.to_owned(),
            context: "cannot read",
            source,
        };
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut reader, &mut header).map_err(io_err)?;
        // The magic is judged on what is there, so a short foreign file is
        // "not a manifest" rather than "truncated"; an empty file is truncated.
        let magic_len = got.min(MAGIC.len());
        if header[..magic_len] != MAGIC[..magic_len] {
            return Err(ManifestError::BadMagic {
                path: path.to_owned(),
            });
        }
        if got >= 12 {
            let version = u32_at(&header, 8);
            if !SUPPORTED_VERSIONS.contains(&version) {
                return Err(ManifestError::UnsupportedVersion {
                    path: path.to_owned(),
                    found: version,
                });
            }
        }
        if got < HEADER_LEN {
            return Err(ManifestError::Truncated {
                path: path.to_owned(),
                part: Part::Header,
                expected: HEADER_LEN as u64,
                actual: got as u64,
            });
        }
        let version = u32_at(&header, 8);
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&header[12..20]);
        let len = u64::from_le_bytes(len_bytes);
        let expected_crc = u32_at(&header, 20);
        if len > MAX_BODY_LEN {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        // `len` is at most 16 MiB here, so it fits in usize.
        let mut body = Vec::with_capacity(len as usize);
        reader
            .by_ref()
            .take(len)
            .read_to_end(&mut body)
            .map_err(io_err)?;
        if (body.len() as u64) < len {
            return Err(ManifestError::Truncated {
                path: path.to_owned(),
                part: Part::Body,
                expected: len,
                actual: body.len() as u64,
            });
        }
        let mut extra = [0u8; 1];
        if read_full(&mut reader, &mut extra).map_err(io_err)? != 0 {
            return Err(ManifestError::TrailingData {
                path: path.to_owned(),
                declared: len,
            });
        }
        let actual_crc = crc32fast::hash(&body);
        if actual_crc != expected_crc {
            return Err(ManifestError::ChecksumMismatch {
                path: path.to_owned(),
                expected: expected_crc,
                actual: actual_crc,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|source| ManifestError::Json {
                path: path.to_owned(),
                source,
            })?;
        let invalid = |problem| ManifestError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if manifest.format_version != version {
            return Err(invalid(ManifestProblem::VersionMismatch {
                header: version,
                body: manifest.format_version,
            }));
        }
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    /// Writes `dir/manifest` atomically and durably (via `manifest.tmp`,
    /// `fsync`, rename, directory `fsync`). Returns the manifest's path.
    pub fn write_in(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = self.encode(&path)?;
        atomic::write_atomic(dir, MANIFEST_FILE, MANIFEST_TMP_FILE, &bytes).map_err(
            |(failed_path, context, source)| ManifestError::Io {
                path: failed_path,
                context,
                source,
            },
        )?;
        Ok(path)
    }

    /// Reads and checks `dir/manifest`.
    pub fn read_from(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let file = File::open(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            context: "cannot open",
            source,
        })?;
        Manifest::decode(&path, io::BufReader::new(file))
    }

    /// Checks that the boot now running is the one this snapshot was made
    /// for: a different boot than the checkpointed one (a reboot happened)
    /// running the kernel that was loaded for the kexec.
    pub fn check_transition(
        &self,
        current_boot_id: &str,
        current_kernel: &str,
    ) -> Result<(), BindingError> {
        binding::check_transition(self, current_boot_id, current_kernel)
    }

    /// Verifies the image digests of every unit against the files under
    /// `transaction_dir`.
    pub fn verify_images(&self, transaction_dir: &Path) -> Result<(), DigestError> {
        for unit in &self.units {
            verify_digests(&unit.images_path(transaction_dir), &unit.images)?;
        }
        Ok(())
    }

    /// The snapshot of `unit`, if listed.
    pub fn unit(&self, unit: &str) -> Option<&UnitSnapshot> {
        self.units.iter().find(|u| u.unit == unit)
    }
}

fn validate_unit(unit: &UnitSnapshot) -> Result<(), ManifestProblem> {
    let name = || unit.unit.clone();
    if unit.main_pid <= 0 {
        return Err(ManifestProblem::BadPid {
            unit: name(),
            pid: unit.main_pid,
        });
    }
    if let Some(&pid) = unit.pids.iter().find(|&&pid| pid <= 0) {
        return Err(ManifestProblem::BadPid { unit: name(), pid });
    }
    if !unit.pids.contains(&unit.main_pid) {
        return Err(ManifestProblem::MainPidNotListed {
            unit: name(),
            main_pid: unit.main_pid,
        });
    }
    let mut images = BTreeSet::new();
    for image in &unit.images {
        if !is_plain_file_name(&image.name) {
            return Err(ManifestProblem::BadImageName {
                unit: name(),
                name: image.name.clone(),
            });
        }
        if !images.insert(image.name.as_str()) {
            return Err(ManifestProblem::DuplicateImage {
                unit: name(),
                name: image.name.clone(),
            });
        }
        if !is_sha256_hex(&image.sha256) {
            return Err(ManifestProblem::BadSha256 {
                unit: name(),
                name: image.name.clone(),
                sha256: image.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// `[a-z0-9-]{1,64}`.
pub fn is_valid_transaction_id(id: &str) -> bool {
    (1..=MAX_TRANSACTION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The images directory reduced to its normal components joined by `/`, or
/// `None` if it is empty, absolute, or has a `..` component.
fn normalize_images_dir(dir: &str) -> Option<String> {
    if dir.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for component in Path::new(dir).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests;
