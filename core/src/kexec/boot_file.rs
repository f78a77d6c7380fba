//! Opening a kernel or initrd file that we are willing to boot.
//!
//! Whatever we hand to `kexec_file_load` runs with full privileges in the
//! next boot, so the file must be one only root could have written: a
//! regular file, owned by root, not writable by group or others. The checks
//! are made on the *open* file descriptor (`fstat`), and that same
//! descriptor is the one later passed to the kernel, so nothing can swap the
//! file between the check and the load (no TOCTOU window).
//!
//! The open uses `O_NONBLOCK` so that a FIFO planted at the path cannot
//! hang the service before the "regular file" check rejects it; for regular
//! files the flag has no effect on reads. It uses `O_NOFOLLOW` too: a path
//! whose last component is a symbolic link is refused, naming its target,
//! so that the kernel loaded is the file the operator named and not one a
//! link (Debian's `/vmlinuz`, or one planted or repointed since) leads to;
//! every root-owned kernel passes the checks above, an old vulnerable one
//! too. Links among the directories are followed; the path actually opened
//! is recorded from `/proc/self/fd`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `KEXEC_FILE_SIZE_MAX` in `kernel/kexec_file.c`: the kernel refuses
/// kernel and initrd files of 4 GiB or more (`kernel_read_file` fails with
/// `EFBIG`). Checked here so the refusal comes with the file's name and
/// before anything has been frozen.
pub const KEXEC_FILE_SIZE_MAX: u64 = 4 << 30;

/// Who must own a boot file. Production code uses [`OwnerPolicy::ROOT`];
/// tests running as root on temporary files pass another uid to exercise
/// the "not owned by the expected user" path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerPolicy {
    /// The uid the file must be owned by.
    pub uid: u32,
}

impl OwnerPolicy {
    /// Files must be owned by root (uid 0).
    pub const ROOT: OwnerPolicy = OwnerPolicy { uid: 0 };
}

impl Default for OwnerPolicy {
    fn default() -> Self {
        Self::ROOT
    }
}

/// Which kind of boot file is being checked (for messages and size limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFileKind {
    /// The kernel image (bzImage).
    Kernel,
    /// The initial ramdisk.
    Initrd,
}

impl std::fmt::Display for BootFileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootFileKind::Kernel => "kernel",
            BootFileKind::Initrd => "initrd",
        })
    }
}

/// Why a boot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootFileError {
    /// The file could not be opened.
    #[error("cannot open {kind} {path}: {source}")]
    Open {
        kind: BootFileKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `fstat` or a read on the open file failed.
    #[error("cannot read {kind} {path}: {source}")]
    Read {
        kind: BootFileKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The path's last component is a symbolic link (see the module docs).
    #[error(
        "{kind} {path} is a symbolic link (to {target}); give the file itself, so that what is \
         checked and loaded is what was asked for"
    )]
    SymbolicLink {
        kind: BootFileKind,
        path: PathBuf,
        target: String,
    },
    /// The path is not a regular file (directory, device, FIFO, socket).
    #[error("{kind} {path} is not a regular file")]
    NotRegular { kind: BootFileKind, path: PathBuf },
    /// The file is owned by someone other than the expected user (root),
    /// so that user could have planted arbitrary code for the next boot.
    #[error("{kind} {path} is owned by uid {uid}, expected uid {expected}")]
    WrongOwner {
        kind: BootFileKind,
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    /// Group or others may write the file, so it cannot be trusted.
    #[error("{kind} {path} is writable by group or others (mode {mode:04o})")]
    Writable {
        kind: BootFileKind,
        path: PathBuf,
        mode: u32,
    },
    /// The file is too small to be what it claims to be (truncated or a
    /// placeholder).
    #[error("{kind} {path} is too small ({size} bytes, at least {min} expected)")]
    TooSmall {
        kind: BootFileKind,
        path: PathBuf,
        size: u64,
        min: u64,
    },
    /// The file is larger than the kernel's `kexec_file_load` accepts.
    #[error("{kind} {path} is too large ({size} bytes, the kernel accepts less than {max})")]
    TooLarge {
        kind: BootFileKind,
        path: PathBuf,
        size: u64,
        max: u64,
    },
}

/// An opened and vetted boot file.
#[derive(Debug)]
pub(crate) struct OpenedBootFile {
    pub(crate) file: File,
    /// The path actually opened (symlinks resolved), from `/proc/self/fd`;
    /// equal to `path` if that could not be read.
    pub(crate) resolved_path: PathBuf,
    pub(crate) size: u64,
}

impl OpenedBootFile {
    pub(crate) fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }
}

/// Opens `path` read-only and close-on-exec, then checks through the open
/// descriptor that it is a regular root-owned (per `owner`) file not
/// writable by group or others, whose size is at least `min_size` and below
/// [`KEXEC_FILE_SIZE_MAX`].
pub(crate) fn open_boot_file(
    path: &Path,
    kind: BootFileKind,
    owner: OwnerPolicy,
    min_size: u64,
) -> Result<OpenedBootFile, BootFileError> {
    // std opens with O_CLOEXEC already; O_NONBLOCK, O_NOFOLLOW: see the
    // module docs.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| {
            // The link is read only when the open said it met one.
            let target = (source.raw_os_error() == Some(libc::ELOOP))
                .then(|| std::fs::read_link(path).ok())
                .flatten();
            match target {
                Some(target) => BootFileError::SymbolicLink {
                    kind,
                    path: path.to_owned(),
                    target: target.display().to_string(),
                },
                None => BootFileError::Open {
                    kind,
                    path: path.to_owned(),
                    source,
                },
            }
        })?;
    let meta = file.metadata().map_err(|source| BootFileError::Read {
        kind,
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(BootFileError::NotRegular {
            kind,
            path: path.to_owned(),
        });
    }
    if meta.uid() != owner.uid {
        return Err(BootFileError::WrongOwner {
            kind,
            path: path.to_owned(),
            uid: meta.uid(),
            expected: owner.uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(BootFileError::Writable {
            kind,
            path: path.to_owned(),
            mode,
        });
    }
    let size = meta.len();
    if size < min_size {
        return Err(BootFileError::TooSmall {
            kind,
            path: path.to_owned(),
            size,
            min: min_size,
        });
    }
    if size >= KEXEC_FILE_SIZE_MAX {
        return Err(BootFileError::TooLarge {
            kind,
            path: path.to_owned(),
            size,
            max: KEXEC_FILE_SIZE_MAX,
        });
    }
    let resolved_path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or_else(|_| path.to_owned());
    Ok(OpenedBootFile {
        file,
        resolved_path,
        size,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes `data` to `dir/name` with `mode` and returns the path.
    pub(crate) fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).expect("write test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod test file");
        path
    }

    /// The uid test files are created with (tests may run as root or not).
    pub(crate) fn my_uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    pub(crate) fn me() -> OwnerPolicy {
        OwnerPolicy { uid: my_uid() }
    }

    #[test]
    fn accepts_owned_read_only_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "f", b"0123456789", 0o644);
        let opened = open_boot_file(&path, BootFileKind::Initrd, me(), 1).expect("accepted");
        assert_eq!(opened.size, 10);
        assert_eq!(
            opened.resolved_path.file_name(),
            Some(std::ffi::OsStr::new("f"))
        );
    }

    #[test]
    fn refuses_a_symlink_naming_its_target_but_follows_linked_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real_dir = dir.path().join("real-boot");
        std::fs::create_dir(&real_dir).expect("dir");
        write_file(&real_dir, "vmlinuz-real", b"abc", 0o600);
        let link = real_dir.join("vmlinuz");
        std::os::unix::fs::symlink("vmlinuz-real", &link).expect("symlink");
        let err = open_boot_file(&link, BootFileKind::Kernel, me(), 1).expect_err("refused");
        assert!(
            matches!(&err, BootFileError::SymbolicLink { target, .. } if target == "vmlinuz-real"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("is a symbolic link (to vmlinuz-real)"),
            "{err}"
        );
        // A linked directory on the way is followed, and the file opened
        // recorded.
        let boot = dir.path().join("boot");
        std::os::unix::fs::symlink(&real_dir, &boot).expect("dir symlink");
        let opened = open_boot_file(&boot.join("vmlinuz-real"), BootFileKind::Kernel, me(), 1)
            .expect("accepted");
        assert_eq!(opened.resolved_path, real_dir.join("vmlinuz-real"));
    }

    #[test]
    fn rejects_other_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "f", b"abc", 0o644);
        let other = OwnerPolicy {
            uid: my_uid().wrapping_add(4242),
        };
        let err = open_boot_file(&path, BootFileKind::Kernel, other, 1).expect_err("refused");
        assert!(matches!(err, BootFileError::WrongOwner { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn rejects_group_or_world_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o664, 0o646, 0o666] {
            let path = write_file(dir.path(), "f", b"abc", mode);
            let err = open_boot_file(&path, BootFileKind::Initrd, me(), 1).expect_err("refused");
            match err {
                BootFileError::Writable { mode: m, .. } => assert_eq!(m, mode),
                other => panic!("unexpected {other}"),
            }
        }
    }

    #[test]
    fn rejects_directory_and_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open_boot_file(dir.path(), BootFileKind::Kernel, me(), 0).expect_err("dir");
        assert!(matches!(err, BootFileError::NotRegular { .. }), "{err}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // Must not block (O_NONBLOCK) and must be refused.
        let err = open_boot_file(&fifo, BootFileKind::Kernel, me(), 0).expect_err("fifo");
        assert!(matches!(err, BootFileError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn rejects_too_small_and_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "f", b"abc", 0o644);
        let err = open_boot_file(&path, BootFileKind::Kernel, me(), 4).expect_err("small");
        assert!(
            matches!(
                err,
                BootFileError::TooSmall {
                    size: 3,
                    min: 4,
                    ..
                }
            ),
            "{err}"
        );
        let err = open_boot_file(&dir.path().join("nope"), BootFileKind::Kernel, me(), 0)
            .expect_err("missing");
        match err {
            BootFileError::Open { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("unexpected {other}"),
        }
    }
}
