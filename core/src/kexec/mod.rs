//! The kernel side of a seamless reboot: choose, vet and stage the next
//! kernel.
//!
//! A seamless reboot freezes services and then jumps into a new kernel
//! with `systemctl kexec`. Every way the jump can go wrong must be found
//! *before* the freeze, while backing out costs nothing: so the kernel and
//! initrd are checked (ownership, format, truncation, matching release),
//! the command line is built and size-checked, and the kernel is staged with
//! `kexec_file_load` — which also runs the kernel's own format and
//! signature checks — as the step that proves the reboot can happen. If
//! the transaction is abandoned later, [`LoadedKernel::unload`] undoes the
//! staging.
//!
//! * [`syscall`] — the `kexec_file_load` / unload / `kexec_loaded` calls
//!   behind [`KexecSyscalls`], with a recording fake for tests.
//! * [`bzimage`] — the x86 setup header and the kernel file checks.
//! * [`initrd`] — the initrd belonging to the kernel's release.
//! * [`cmdline`] — the next boot's command line and its transaction marker.
//! * [`boot_file`] — the ownership/permission checks shared by both files.
//!
//! `kexec_file_load` is used rather than `kexec_load` because the kernel
//! reads and parses the files itself: it works under lockdown and Secure
//! Boot (with a signed kernel), and there is no user-space image parsing
//! to trust.

pub mod boot_file;
pub mod bzimage;
pub mod cmdline;
pub mod initrd;
pub mod release;
pub mod syscall;

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

pub use boot_file::{BootFileError, BootFileKind, OwnerPolicy};
pub use bzimage::{
    BzImageError, BzImageInfo, KernelFileError, KernelImage, check_kernel_file,
    parse_bzimage_header,
};
pub use cmdline::{
    BootMarker, CmdlineError, TransactionId, build_next_cmdline, marker_from_cmdline,
    units_from_cmdline,
};
pub use initrd::{InitrdChoice, InitrdError, InitrdImage, resolve_initrd};
pub use release::compare_releases;
pub use syscall::{KexecCall, KexecFlags, KexecSyscalls, LinuxKexec, RecordingKexec};

/// Why staging or unstaging a kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    /// Loading {kernel} is not permitted: needs CAP_SYS_BOOT, or kexec is
    /// disabled by kernel.kexec_load_disabled (EPERM).
    #[error(
        "loading {kernel} is not permitted: needs CAP_SYS_BOOT, or kexec is disabled by \
         kernel.kexec_load_disabled (a locked-down kernel also refuses unsigned kernels with EPERM)"
    )]
    NotPermitted { kernel: PathBuf },
    /// The kernel signature of {kernel} was rejected: lockdown or secure
    /// boot requires a signed kernel.
    #[error(
        "the kernel signature of {kernel} was rejected: lockdown or secure boot requires a signed \
         kernel ({errno})"
    )]
    SignatureRejected { kernel: PathBuf, errno: Errno },
    /// {kernel} is not a kernel this architecture can kexec (ENOEXEC).
    #[error(
        "{kernel} is not a kernel this architecture can kexec (ENOEXEC: the running kernel's \
         bzImage64 loader refused it, e.g. it cannot run with 5-level paging)"
    )]
    NotKexecable { kernel: PathBuf },
    /// Another kexec load or unload is in progress (EBUSY).
    #[error("another kexec load or unload is in progress (EBUSY); try again")]
    Busy,
    /// Not enough memory to stage {kernel} and its initrd (ENOMEM).
    #[error("not enough memory to stage {kernel} and its initrd for kexec (ENOMEM)")]
    OutOfMemory { kernel: PathBuf },
    /// The kernel refused the arguments for {kernel} (EINVAL).
    #[error(
        "the kernel refused the arguments for {kernel} (EINVAL): the command line is too long or \
         malformed for it, or the initrd is empty"
    )]
    InvalidArgument { kernel: PathBuf },
    /// {kernel} or its initrd is open for writing by another process
    /// (ETXTBSY).
    #[error("{kernel} or its initrd is open for writing by another process (ETXTBSY)")]
    FileBeingWritten { kernel: PathBuf },
    /// A security policy refused to let the kernel read {kernel} or its
    /// initrd (EACCES).
    #[error(
        "a security policy (IMA appraisal, LoadPin or another LSM) refused {kernel} or its \
         initrd (EACCES)"
    )]
    PolicyDenied { kernel: PathBuf },
    /// {kernel} or its initrd is too large for kexec_file_load (EFBIG).
    #[error("{kernel} or its initrd is too large for kexec_file_load (EFBIG)")]
    TooLarge { kernel: PathBuf },
    /// kexec_file_load of {kernel} failed with an unexpected error.
    #[error("kexec_file_load of {kernel} failed: {errno}")]
    Load { kernel: PathBuf, errno: Errno },
    /// The command line for {kernel} contains a NUL byte.
    #[error("the command line for {kernel} contains a NUL byte")]
    CmdlineNul { kernel: PathBuf },
    /// The command line is longer than {kernel} accepts.
    #[error("the command line is {len} bytes, but {kernel} accepts at most {max}")]
    CmdlineTooLong {
        kernel: PathBuf,
        len: usize,
        max: usize,
    },
    /// kexec_file_load of {kernel} reported success but no kernel is
    /// staged.
    #[error(
        "kexec_file_load of {kernel} reported success, but /sys/kernel/kexec_loaded says no \
         kernel is staged"
    )]
    NotStaged { kernel: PathBuf },
    /// Unloading is not permitted: needs CAP_SYS_BOOT, or kexec is disabled
    /// by kernel.kexec_load_disabled.
    #[error(
        "unloading the staged kernel is not permitted: needs CAP_SYS_BOOT, or kexec is disabled \
         by kernel.kexec_load_disabled"
    )]
    UnloadNotPermitted,
    /// Unloading the staged kernel failed.
    #[error("unloading the staged kernel failed: {errno}")]
    Unload { errno: Errno },
    /// Whether a kernel is staged could not be read.
    #[error("cannot tell whether a kernel is staged ({path}): {source}", path = syscall::KEXEC_LOADED_PATH)]
    LoadedState {
        #[source]
        source: std::io::Error,
    },
}

impl KexecError {
    /// Maps a `kexec_file_load` failure for `kernel` to its explanation.
    pub fn from_load_errno(errno: Errno, kernel: &Path) -> Self {
        let kernel = kernel.to_owned();
        match errno {
            Errno::EPERM => KexecError::NotPermitted { kernel },
            // EKEYREJECTED: signature check failed; EBADMSG: malformed
            // signature/PE; ENOKEY: signed by an unknown key. All come from
            // kimage_validate_signature when signatures are enforced.
            Errno::EKEYREJECTED | Errno::EBADMSG | Errno::ENOKEY => {
                KexecError::SignatureRejected { kernel, errno }
            }
            Errno::ENOEXEC => KexecError::NotKexecable { kernel },
            Errno::EBUSY => KexecError::Busy,
            Errno::ENOMEM => KexecError::OutOfMemory { kernel },
            Errno::EINVAL => KexecError::InvalidArgument { kernel },
            Errno::ETXTBSY => KexecError::FileBeingWritten { kernel },
            Errno::EACCES => KexecError::PolicyDenied { kernel },
            Errno::EFBIG => KexecError::TooLarge { kernel },
            errno => KexecError::Load { kernel, errno },
        }
    }

    /// Maps an unload failure to its explanation.
    pub fn from_unload_errno(errno: Errno) -> Self {
        match errno {
            Errno::EPERM => KexecError::UnloadNotPermitted,
            Errno::EBUSY => KexecError::Busy,
            errno => KexecError::Unload { errno },
        }
    }
}

/// Stages kernels for the next kexec reboot.
#[derive(Clone)]
pub struct KernelLoader {
    sys: Arc<dyn KexecSyscalls>,
}

impl fmt::Debug for KernelLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelLoader").finish_non_exhaustive()
    }
}

impl KernelLoader {
    /// A loader using `sys` ([`LinuxKexec`] in production,
    /// [`RecordingKexec`] in tests).
    pub fn new(sys: Arc<dyn KexecSyscalls>) -> Self {
        Self { sys }
    }

    /// A loader making the real system calls.
    pub fn linux() -> Self {
        Self::new(Arc::new(LinuxKexec::new()))
    }

    /// Stages `kernel` with `initrd` (none: `KEXEC_FILE_NO_INITRAMFS`) and
    /// `cmdline`, replacing any kernel already staged. The command line is
    /// checked against the kernel's own limit first, so an over-long line
    /// fails with a message instead of the kernel's bare `EINVAL`.
    pub fn load(
        &self,
        kernel: &KernelImage,
        initrd: Option<&InitrdImage>,
        cmdline: &str,
    ) -> Result<LoadedKernel, KexecError> {
        let path = kernel.path();
        let max = kernel.info().max_cmdline_len();
        if cmdline.len() > max {
            return Err(KexecError::CmdlineTooLong {
                kernel: path.to_owned(),
                len: cmdline.len(),
                max,
            });
        }
        let c_cmdline = CString::new(cmdline).map_err(|_| KexecError::CmdlineNul {
            kernel: path.to_owned(),
        })?;

        let replaced_previous = match self.sys.kexec_loaded() {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether a kexec kernel is already staged");
                false
            }
        };
        if replaced_previous {
            tracing::warn!(
                kernel = %path.display(),
                "a kexec kernel is already staged; it will be replaced"
            );
        }

        self.sys
            .kexec_file_load(
                kernel.fd(),
                initrd.map(InitrdImage::fd),
                &c_cmdline,
                KexecFlags::EMPTY,
            )
            .map_err(|errno| KexecError::from_load_errno(errno, path))?;

        match self.sys.kexec_loaded() {
            Ok(true) => {}
            Ok(false) => {
                return Err(KexecError::NotStaged {
                    kernel: path.to_owned(),
                });
            }
            // The load itself succeeded; a status file we cannot read is
            // not a reason to abandon it.
            Err(error) => tracing::warn!(%error, "cannot confirm the staged kexec kernel"),
        }

        tracing::info!(
            kernel = %path.display(),
            initrd = ?initrd.map(|i| i.path().display().to_string()),
            release = kernel.release(),
            cmdline,
            "kernel staged for kexec"
        );
        Ok(LoadedKernel {
            sys: Arc::clone(&self.sys),
            kernel_path: path.to_owned(),
            initrd_path: initrd.map(|i| i.path().to_owned()),
            release: kernel.release().to_owned(),
            cmdline: cmdline.to_owned(),
            replaced_previous,
        })
    }

    /// Unloads whatever kernel is staged (succeeds if none is).
    pub fn unload(&self) -> Result<(), KexecError> {
        self.sys
            .kexec_unload()
            .map_err(KexecError::from_unload_errno)?;
        tracing::info!("staged kexec kernel unloaded");
        Ok(())
    }

    /// Whether a kernel is staged.
    pub fn is_loaded(&self) -> Result<bool, KexecError> {
        self.sys
            .kexec_loaded()
            .map_err(|source| KexecError::LoadedState { source })
    }
}

/// A kernel staged by [`KernelLoader::load`]. Dropping it leaves the kernel
/// staged (that is the point: `systemctl kexec` boots it); the
/// transaction's undo path calls [`LoadedKernel::unload`].
#[must_use = "a staged kernel stays staged; call unload() to back out"]
pub struct LoadedKernel {
    sys: Arc<dyn KexecSyscalls>,
    kernel_path: PathBuf,
    initrd_path: Option<PathBuf>,
    release: String,
    cmdline: String,
    replaced_previous: bool,
}

impl fmt::Debug for LoadedKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKernel")
            .field("kernel_path", &self.kernel_path)
            .field("initrd_path", &self.initrd_path)
            .field("release", &self.release)
            .field("cmdline", &self.cmdline)
            .field("replaced_previous", &self.replaced_previous)
            .finish_non_exhaustive()
    }
}

impl LoadedKernel {
    /// The kernel file loaded.
    pub fn kernel_path(&self) -> &Path {
        &self.kernel_path
    }

    /// The initrd file loaded, if any.
    pub fn initrd_path(&self) -> Option<&Path> {
        self.initrd_path.as_deref()
    }

    /// The release of the staged kernel (from its header).
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The command line the staged kernel will boot with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Whether another kernel was staged before and has been replaced.
    pub fn replaced_previous(&self) -> bool {
        self.replaced_previous
    }

    /// Unstages the kernel (the transaction's undo path).
    pub fn unload(self) -> Result<(), KexecError> {
        self.sys
            .kexec_unload()
            .map_err(KexecError::from_unload_errno)?;
        tracing::info!(release = %self.release, "staged kexec kernel unloaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::boot_file::tests::{me, write_file};
    use super::bzimage::check_kernel_file_inner;
    use super::bzimage::tests::{TEST_VERSION, synthetic_kernel};
    use super::*;

    const REL: &str = "6.12.57+deb13-amd64";

    struct Setup {
        _dir: tempfile::TempDir,
        kernel: KernelImage,
        initrd: InitrdImage,
        fake: Arc<RecordingKexec>,
        loader: KernelLoader,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let kpath = write_file(
            dir.path(),
            &format!("vmlinuz-{REL}"),
            &synthetic_kernel(TEST_VERSION, 4096),
            0o644,
        );
        write_file(dir.path(), &format!("initrd.img-{REL}"), b"cpio", 0o644);
        let kernel = check_kernel_file_inner(&kpath, me(), 0).expect("kernel");
        let initrd = resolve_initrd(&kernel, &InitrdChoice::Auto, dir.path(), me())
            .expect("initrd")
            .expect("some");
        let fake = Arc::new(RecordingKexec::new());
        let loader = KernelLoader::new(fake.clone());
        Setup {
            _dir: dir,
            kernel,
            initrd,
            fake,
            loader,
        }
    }

    #[test]
    fn load_passes_files_cmdline_and_flags() {
        let s = setup();
        let loaded = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "root=/dev/vda1 ro quiet")
            .expect("loads");
        assert_eq!(loaded.release(), REL);
        assert_eq!(loaded.cmdline(), "root=/dev/vda1 ro quiet");
        assert_eq!(loaded.kernel_path(), s.kernel.path());
        assert_eq!(loaded.initrd_path(), Some(s.initrd.path()));
        assert!(!loaded.replaced_previous());
        assert!(s.fake.is_loaded());
        assert!(s.loader.is_loaded().expect("state"));
        assert_eq!(
            s.fake.calls(),
            vec![KexecCall::Load {
                kernel: s.kernel.resolved_path().to_owned(),
                initrd: Some(s.initrd.path().to_owned()),
                cmdline: "root=/dev/vda1 ro quiet".into(),
                flags: KexecFlags::EMPTY,
            }]
        );
    }

    #[test]
    fn load_without_initrd_sets_no_initramfs() {
        let s = setup();
        let _loaded = s.loader.load(&s.kernel, None, "ro").expect("loads");
        match &s.fake.calls()[0] {
            KexecCall::Load { initrd, flags, .. } => {
                assert_eq!(*initrd, None);
                assert_eq!(*flags, KexecFlags::NO_INITRAMFS);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unload_after_load_resets_loaded() {
        let s = setup();
        let loaded = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "ro")
            .expect("loads");
        assert!(s.fake.is_loaded());
        loaded.unload().expect("unloads");
        assert!(!s.fake.is_loaded());
        assert_eq!(s.fake.calls().last(), Some(&KexecCall::Unload));

        let _again = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "ro")
            .expect("loads");
        s.loader.unload().expect("unloads");
        assert!(!s.fake.is_loaded());
    }

    #[test]
    fn eperm_is_explained() {
        let s = setup();
        s.fake.fail_next(Errno::EPERM);
        let err = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "ro")
            .expect_err("EPERM");
        assert!(matches!(err, KexecError::NotPermitted { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(
                "not permitted: needs CAP_SYS_BOOT, or kexec is disabled by \
                 kernel.kexec_load_disabled"
            ),
            "{msg}"
        );
        assert!(
            msg.contains(&s.kernel.path().display().to_string()),
            "{msg}"
        );
        assert!(!s.fake.is_loaded());
    }

    #[test]
    fn errnos_map_to_documented_errors() {
        let k = Path::new("/boot/vmlinuz-x");
        let check = |errno: Errno, needle: &str| {
            let msg = KexecError::from_load_errno(errno, k).to_string();
            assert!(msg.contains(needle), "{errno}: {msg}");
        };
        check(
            Errno::EKEYREJECTED,
            "signature of /boot/vmlinuz-x was rejected: lockdown or secure boot requires a signed kernel",
        );
        check(
            Errno::EBADMSG,
            "lockdown or secure boot requires a signed kernel",
        );
        check(Errno::ENOKEY, "requires a signed kernel");
        check(
            Errno::ENOEXEC,
            "/boot/vmlinuz-x is not a kernel this architecture can kexec",
        );
        check(Errno::EBUSY, "in progress (EBUSY)");
        check(Errno::ENOMEM, "not enough memory to stage /boot/vmlinuz-x");
        check(
            Errno::EINVAL,
            "refused the arguments for /boot/vmlinuz-x (EINVAL)",
        );
        check(Errno::ETXTBSY, "open for writing");
        check(Errno::EACCES, "security policy");
        check(Errno::EFBIG, "too large");
        check(Errno::EIO, "kexec_file_load of /boot/vmlinuz-x failed");
        assert!(matches!(
            KexecError::from_unload_errno(Errno::EPERM),
            KexecError::UnloadNotPermitted
        ));
        assert!(matches!(
            KexecError::from_unload_errno(Errno::EBUSY),
            KexecError::Busy
        ));
        assert!(matches!(
            KexecError::from_unload_errno(Errno::EIO),
            KexecError::Unload { errno: Errno::EIO }
        ));
    }

    #[test]
    fn failed_unload_is_reported() {
        let s = setup();
        let loaded = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "ro")
            .expect("loads");
        s.fake.fail_next(Errno::EPERM);
        let err = loaded.unload().expect_err("EPERM");
        assert!(matches!(err, KexecError::UnloadNotPermitted), "{err}");
        assert!(s.fake.is_loaded());
    }

    #[test]
    fn cmdline_checked_before_the_syscall() {
        let s = setup();
        let max = s.kernel.info().max_cmdline_len();
        assert_eq!(max, 2016);
        let long = "x".repeat(max + 1);
        let err = s
            .loader
            .load(&s.kernel, Some(&s.initrd), &long)
            .expect_err("too long");
        assert!(
            matches!(err, KexecError::CmdlineTooLong { len, max: 2016, .. } if len == 2017),
            "{err}"
        );
        let err = s
            .loader
            .load(&s.kernel, Some(&s.initrd), "a\0b")
            .expect_err("NUL");
        assert!(matches!(err, KexecError::CmdlineNul { .. }), "{err}");
        assert!(s.fake.calls().is_empty());
        // Exactly at the limit is fine.
        let _ok = s
            .loader
            .load(&s.kernel, Some(&s.initrd), &"x".repeat(max))
            .expect("at the limit");
    }

    #[test]
    fn replacing_a_staged_kernel_is_noted() {
        let s = setup();
        s.fake.set_loaded(true);
        let loaded = s.loader.load(&s.kernel, None, "ro").expect("loads");
        assert!(loaded.replaced_previous());
    }

    #[test]
    fn unreadable_state_does_not_abandon_a_successful_load() {
        let s = setup();
        s.fake.fail_loaded_query(Some(std::io::ErrorKind::NotFound));
        let _loaded = s.loader.load(&s.kernel, None, "ro").expect("loads");
        assert!(s.fake.is_loaded());
        let err = s.loader.is_loaded().expect_err("state unreadable");
        assert!(
            err.to_string().contains("/sys/kernel/kexec_loaded"),
            "{err}"
        );
    }

    /// A kernel interface that claims success but stages nothing.
    struct Lying;
    impl KexecSyscalls for Lying {
        fn kexec_file_load(
            &self,
            _: std::os::fd::BorrowedFd<'_>,
            _: Option<std::os::fd::BorrowedFd<'_>>,
            _: &std::ffi::CStr,
            _: KexecFlags,
        ) -> Result<(), Errno> {
            Ok(())
        }
        fn kexec_unload(&self) -> Result<(), Errno> {
            Ok(())
        }
        fn kexec_loaded(&self) -> std::io::Result<bool> {
            Ok(false)
        }
    }

    #[test]
    fn success_without_staged_kernel_is_an_error() {
        let s = setup();
        let loader = KernelLoader::new(Arc::new(Lying));
        let err = loader.load(&s.kernel, None, "ro").expect_err("not staged");
        assert!(matches!(err, KexecError::NotStaged { .. }), "{err}");
    }

    #[test]
    fn end_to_end_with_cmdline_marker() {
        let s = setup();
        let id = TransactionId::new("tx-42").expect("id");
        let line = build_next_cmdline(
            "BOOT_IMAGE=/boot/vmlinuz-6.1 root=/dev/vda1 ro",
            &["console=ttyS0"],
            &BootMarker::new(id, &[]).expect("marker"),
            s.kernel.info().max_cmdline_len(),
        )
        .expect("cmdline");
        let loaded = s
            .loader
            .load(&s.kernel, Some(&s.initrd), &line)
            .expect("loads");
        assert_eq!(
            marker_from_cmdline(loaded.cmdline()).as_deref(),
            Some("tx-42")
        );
        match &s.fake.calls()[0] {
            KexecCall::Load { cmdline, .. } => assert_eq!(
                cmdline,
                "root=/dev/vda1 ro console=ttyS0 seamless_reboot.transaction=tx-42"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
}
