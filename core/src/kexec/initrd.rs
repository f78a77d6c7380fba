//! Finding the initrd that belongs to a kernel.
//!
//! Distribution kernels cannot mount their root file system without the
//! initrd built for that exact release (it carries the matching modules).
//! Booting a kernel with another release's initrd, or with none, ends in a
//! panic in the next boot, after the services were frozen. So the initrd is
//! chosen by the release read from the kernel's own header, not by what
//! the kernel file happens to be called, and a kernel file whose name
//! claims another release than its header is refused outright: something
//! is mixed up in `/boot` and guessing would be unsafe.
//!
//! Naming conventions looked for, in order, in the boot directory:
//! `initrd.img-<release>` (Debian, Ubuntu: initramfs-tools) and
//! `initramfs-<release>.img` (Fedora, RHEL, Arch: dracut). An initrd given
//! explicitly is accepted as is (it may be a custom build), but only after
//! the same ownership and permission checks as the kernel.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::boot_file::{BootFileError, BootFileKind, OwnerPolicy, open_boot_file};
use super::bzimage::KernelImage;

/// Where distributions install kernels and initrds.
pub const DEFAULT_BOOT_DIR: &str = "/boot";

/// How the initrd for the next boot is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdChoice {
    /// Look up the initrd for the kernel's release in the boot directory;
    /// not finding one is an error.
    Auto,
    /// Use this file.
    Explicit(PathBuf),
    /// Boot without an initrd (for kernels that need none).
    None,
}

/// Why no usable initrd was found.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The kernel's file name names another release than its header.
    #[error(
        "kernel {path} is named for release {name_release} but its header says {header_release}"
    )]
    KernelNameMismatch {
        path: PathBuf,
        name_release: String,
        header_release: String,
    },
    /// No initrd for the release exists in the boot directory.
    #[error("no initrd for kernel release {release} (looked for {})", .candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    NotFound {
        release: String,
        candidates: Vec<PathBuf>,
    },
    /// The initrd failed the ownership, permission, type or size checks.
    #[error(transparent)]
    File(#[from] BootFileError),
}

/// A vetted initrd, kept open so that what was checked is what gets
/// loaded.
#[derive(Debug)]
pub struct InitrdImage {
    fd: OwnedFd,
    path: PathBuf,
    size: u64,
}

impl InitrdImage {
    /// The open initrd, to pass to `kexec_file_load`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The release a kernel file name claims: the part after `vmlinuz-`, or
/// `None` for names without one (`vmlinuz`, `bzImage`).
pub fn release_from_kernel_name(path: &Path) -> Option<&str> {
    path.file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")
        .filter(|r| !r.is_empty())
}

/// The initrd file names tried for `release`, in order.
pub fn initrd_candidates(boot_dir: &Path, release: &str) -> Vec<PathBuf> {
    vec![
        boot_dir.join(format!("initrd.img-{release}")),
        boot_dir.join(format!("initramfs-{release}.img")),
    ]
}

/// Checks that the kernel's file name (as given, and as opened through any
/// linked directories) does not claim another release than its header.
pub fn check_kernel_name(kernel: &KernelImage) -> Result<(), InitrdError> {
    for path in [kernel.path(), kernel.resolved_path()] {
        if let Some(name_release) = release_from_kernel_name(path)
            && name_release != kernel.release()
        {
            return Err(InitrdError::KernelNameMismatch {
                path: path.to_owned(),
                name_release: name_release.to_owned(),
                header_release: kernel.release().to_owned(),
            });
        }
    }
    Ok(())
}

/// Opens and vets one initrd file.
pub fn check_initrd_file(path: &Path, owner: OwnerPolicy) -> Result<InitrdImage, InitrdError> {
    // kernel_read_file refuses empty files; at least one byte.
    let opened = open_boot_file(path, BootFileKind::Initrd, owner, 1)?;
    let size = opened.size;
    Ok(InitrdImage {
        fd: opened.into_fd(),
        path: path.to_owned(),
        size,
    })
}

/// Chooses the initrd for `kernel` (see [`InitrdChoice`]) after checking
/// the kernel's name against its header. `boot_dir` is normally
/// [`DEFAULT_BOOT_DIR`]; `owner` normally [`OwnerPolicy::ROOT`].
pub fn resolve_initrd(
    kernel: &KernelImage,
    choice: &InitrdChoice,
    boot_dir: &Path,
    owner: OwnerPolicy,
) -> Result<Option<InitrdImage>, InitrdError> {
    check_kernel_name(kernel)?;
    match choice {
        InitrdChoice::None => Ok(None),
        InitrdChoice::Explicit(path) => check_initrd_file(path, owner).map(Some),
        InitrdChoice::Auto => {
            let candidates = initrd_candidates(boot_dir, kernel.release());
            for candidate in &candidates {
                match check_initrd_file(candidate, owner) {
                    Ok(image) => return Ok(Some(image)),
                    // Missing: try the next convention. Anything else (bad
                    // owner, writable, not a file) is reported, not skipped.
                    Err(InitrdError::File(BootFileError::Open { source, .. }))
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Err(InitrdError::NotFound {
                release: kernel.release().to_owned(),
                candidates,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::boot_file::tests::{me, my_uid, write_file};
    use super::super::bzimage::check_kernel_file_inner;
    use super::super::bzimage::tests::{TEST_VERSION, synthetic_kernel};
    use super::*;

    const REL: &str = "6.12.57+deb13-amd64";

    fn kernel_in(dir: &Path, name: &str) -> KernelImage {
        let path = write_file(dir, name, &synthetic_kernel(TEST_VERSION, 4096), 0o644);
        check_kernel_file_inner(&path, me(), 0).expect("valid kernel")
    }

    #[test]
    fn finds_debian_initrd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        write_file(dir.path(), &format!("initrd.img-{REL}"), b"initrd", 0o644);
        write_file(
            dir.path(),
            &format!("initramfs-{REL}.img"),
            b"dracut",
            0o644,
        );
        let initrd = resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
            .expect("found")
            .expect("some");
        assert_eq!(initrd.path(), dir.path().join(format!("initrd.img-{REL}")));
        assert_eq!(initrd.size(), 6);
    }

    #[test]
    fn finds_dracut_initramfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        write_file(
            dir.path(),
            &format!("initramfs-{REL}.img"),
            b"dracut",
            0o600,
        );
        let initrd = resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
            .expect("found")
            .expect("some");
        assert_eq!(
            initrd.path(),
            dir.path().join(format!("initramfs-{REL}.img"))
        );
    }

    #[test]
    fn ignores_initrds_of_other_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        write_file(dir.path(), "initrd.img-6.1.0-9-amd64", b"other", 0o644);
        let err = resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
            .expect_err("none for this release");
        match &err {
            InitrdError::NotFound {
                release,
                candidates,
            } => {
                assert_eq!(release, REL);
                assert_eq!(candidates.len(), 2);
            }
            other => panic!("unexpected {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("initrd.img-{REL}")), "{msg}");
        assert!(msg.contains(&format!("initramfs-{REL}.img")), "{msg}");
    }

    #[test]
    fn kernel_name_must_match_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), "vmlinuz-6.1.0-9-amd64");
        write_file(dir.path(), "initrd.img-6.1.0-9-amd64", b"x", 0o644);
        let err =
            resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me()).expect_err("mismatch");
        assert!(
            matches!(&err, InitrdError::KernelNameMismatch { name_release, header_release, .. }
                if name_release == "6.1.0-9-amd64" && header_release == REL),
            "{err}"
        );
        assert!(err.to_string().contains("vmlinuz-6.1.0-9-amd64"), "{err}");
    }

    #[test]
    fn a_kernel_behind_a_symlink_is_refused_naming_the_file_to_give() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(
            dir.path(),
            "vmlinuz-6.1.0-9-amd64",
            &synthetic_kernel(TEST_VERSION, 4096),
            0o644,
        );
        let link = dir.path().join("vmlinuz");
        std::os::unix::fs::symlink("vmlinuz-6.1.0-9-amd64", &link).expect("symlink");
        let err = check_kernel_file_inner(&link, me(), 0).expect_err("a link is refused");
        assert!(
            err.to_string()
                .contains("is a symbolic link (to vmlinuz-6.1.0-9-amd64)"),
            "{err}"
        );
    }

    #[test]
    fn kernel_without_release_in_name_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), "bzImage");
        write_file(dir.path(), &format!("initrd.img-{REL}"), b"x", 0o644);
        assert!(
            resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
                .expect("found")
                .is_some()
        );
    }

    #[test]
    fn explicit_initrd_is_checked_like_the_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        let custom = write_file(dir.path(), "my-initrd.cpio", b"cpio", 0o644);
        let initrd = resolve_initrd(
            &kernel,
            &InitrdChoice::Explicit(custom.clone()),
            dir.path(),
            me(),
        )
        .expect("accepted")
        .expect("some");
        assert_eq!(initrd.path(), custom);

        let writable = write_file(dir.path(), "w.cpio", b"cpio", 0o666);
        let err = resolve_initrd(&kernel, &InitrdChoice::Explicit(writable), dir.path(), me())
            .expect_err("writable");
        assert!(
            matches!(err, InitrdError::File(BootFileError::Writable { .. })),
            "{err}"
        );

        let other = OwnerPolicy {
            uid: my_uid().wrapping_add(7),
        };
        let err = resolve_initrd(&kernel, &InitrdChoice::Explicit(custom), dir.path(), other)
            .expect_err("owner");
        assert!(
            matches!(err, InitrdError::File(BootFileError::WrongOwner { .. })),
            "{err}"
        );
    }

    #[test]
    fn bad_candidate_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        write_file(dir.path(), &format!("initrd.img-{REL}"), b"x", 0o646);
        write_file(dir.path(), &format!("initramfs-{REL}.img"), b"x", 0o644);
        let err = resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
            .expect_err("world-writable Debian initrd");
        assert!(
            matches!(err, InitrdError::File(BootFileError::Writable { .. })),
            "{err}"
        );
    }

    #[test]
    fn empty_initrd_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write_file(dir.path(), "empty", b"", 0o644);
        let err = check_initrd_file(&empty, me()).expect_err("empty");
        assert!(
            matches!(err, InitrdError::File(BootFileError::TooSmall { .. })),
            "{err}"
        );
    }

    #[test]
    fn no_initrd_choice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = kernel_in(dir.path(), &format!("vmlinuz-{REL}"));
        assert!(
            resolve_initrd(&kernel, &InitrdChoice::None, dir.path(), me())
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn release_from_names() {
        assert_eq!(
            release_from_kernel_name(Path::new("/boot/vmlinuz-6.8.0-45-generic")),
            Some("6.8.0-45-generic")
        );
        assert_eq!(release_from_kernel_name(Path::new("/vmlinuz")), None);
        assert_eq!(release_from_kernel_name(Path::new("/boot/vmlinuz-")), None);
        assert_eq!(release_from_kernel_name(Path::new("bzImage")), None);
    }
}
