//! The kexec system calls, behind a trait.
//!
//! Loading a kernel needs `CAP_SYS_BOOT` and, if it worked in a test, would
//! stage a kernel that the next reboot of the test machine would jump into.
//! So every contact with the kernel's kexec interface goes through
//! [`KexecSyscalls`]: [`LinuxKexec`] makes the real calls, and
//! [`RecordingKexec`] records them, keeps a fake "loaded" state, and can be
//! told to fail, for tests of this crate and of crates built on it.
//!
//! This is the one kexec module with `unsafe`: glibc has no wrapper for
//! `kexec_file_load`, and neither libc nor nix offers a safe one, so it is
//! made with `libc::syscall`.
//!
//! # Facts relied on
//! * `SYSCALL_DEFINE5(kexec_file_load, int kernel_fd, int initrd_fd,
//!   unsigned long cmdline_len, const char __user *cmdline_ptr,
//!   unsigned long flags)` in `kernel/kexec_file.c`; `man 2
//!   kexec_file_load` gives the same order. `libc::SYS_kexec_file_load` is
//!   320 on x86_64 (libc 0.2.191, `gnu/b64/x86_64/not_x32.rs`; also
//!   `__NR_kexec_file_load 320` in `asm/unistd_64.h`).
//! * Flags (`include/uapi/linux/kexec.h`): `KEXEC_FILE_UNLOAD` 0x1,
//!   `KEXEC_FILE_ON_CRASH` 0x2, `KEXEC_FILE_NO_INITRAMFS` 0x4 ("ignore the
//!   initrd fd field"). Unknown flags give `EINVAL`.
//! * `cmdline_len` counts the trailing NUL: if it is non-zero the kernel
//!   copies that many bytes and fails with `EINVAL` unless the last is
//!   `'\0'`.
//! * With `KEXEC_FILE_UNLOAD` the kernel skips reading the fds and the
//!   command line entirely (it jumps straight to swapping the staged image
//!   for NULL), so unload passes -1, -1, 0 and a null pointer. Unloading when
//!   nothing is loaded succeeds.
//! * Order of checks: `EPERM` (no `CAP_SYS_BOOT`, or
//!   `kernel.kexec_load_disabled`), then `EINVAL` for bad flags, then `EBUSY`
//!   if another load/unload holds the kexec lock.
//! * `/sys/kernel/kexec_loaded` reads `1` when a (non-crash) kernel is
//!   staged, `0` otherwise.

#![allow(unsafe_code)] // kexec_file_load has no safe wrapper; see module docs.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;

/// Where the kernel reports whether a kexec kernel is staged.
pub const KEXEC_LOADED_PATH: &str = "/sys/kernel/kexec_loaded";

/// `kexec_file_load` flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KexecFlags(libc::c_ulong);

impl KexecFlags {
    /// No flags: load a kernel and initrd for a normal kexec reboot.
    pub const EMPTY: KexecFlags = KexecFlags(0);
    /// `KEXEC_FILE_UNLOAD`: unload the staged kernel.
    pub const UNLOAD: KexecFlags = KexecFlags(0x1);
    /// `KEXEC_FILE_ON_CRASH`: operate on the crash (kdump) kernel. Never
    /// used by seamless-reboot.
    pub const ON_CRASH: KexecFlags = KexecFlags(0x2);
    /// `KEXEC_FILE_NO_INITRAMFS`: no initrd; the initrd fd is ignored.
    pub const NO_INITRAMFS: KexecFlags = KexecFlags(0x4);

    /// The raw value passed to the kernel.
    pub const fn bits(self) -> libc::c_ulong {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: KexecFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for KexecFlags {
    type Output = KexecFlags;
    fn bitor(self, rhs: KexecFlags) -> KexecFlags {
        KexecFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for KexecFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        for (flag, name) in [
            (Self::UNLOAD, "UNLOAD"),
            (Self::ON_CRASH, "ON_CRASH"),
            (Self::NO_INITRAMFS, "NO_INITRAMFS"),
        ] {
            if self.contains(flag) {
                names.push(name);
            }
        }
        let known = Self::UNLOAD.0 | Self::ON_CRASH.0 | Self::NO_INITRAMFS.0;
        let rest = self.0 & !known;
        if rest != 0 {
            return write!(f, "KexecFlags({}|{rest:#x})", names.join("|"));
        }
        if names.is_empty() {
            return f.write_str("KexecFlags(EMPTY)");
        }
        write!(f, "KexecFlags({})", names.join("|"))
    }
}

/// The flags actually passed for a load: `NO_INITRAMFS` is added when
/// there is no initrd; an initrd together with `NO_INITRAMFS` or `UNLOAD`
/// is a contradiction and gives `EINVAL` (the kernel would silently ignore
/// the initrd).
pub fn load_flags(has_initrd: bool, flags: KexecFlags) -> Result<KexecFlags, Errno> {
    if flags.contains(KexecFlags::UNLOAD) {
        return Err(Errno::EINVAL);
    }
    if has_initrd {
        if flags.contains(KexecFlags::NO_INITRAMFS) {
            return Err(Errno::EINVAL);
        }
        Ok(flags)
    } else {
        Ok(flags | KexecFlags::NO_INITRAMFS)
    }
}

/// Parses the contents of `/sys/kernel/kexec_loaded`.
pub fn parse_kexec_loaded(text: &str) -> io::Result<bool> {
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected kexec_loaded value {other:?}"),
        )),
    }
}

/// The kexec operations seamless-reboot needs.
pub trait KexecSyscalls: Send + Sync {
    /// Stages `kernel` (and `initrd`) with `cmdline` for the next kexec
    /// reboot, replacing any staged kernel. Without an initrd,
    /// `KEXEC_FILE_NO_INITRAMFS` is added to `flags` (see [`load_flags`]).
    fn kexec_file_load(
        &self,
        kernel: BorrowedFd<'_>,
        initrd: Option<BorrowedFd<'_>>,
        cmdline: &CStr,
        flags: KexecFlags,
    ) -> Result<(), Errno>;

    /// Unloads the staged kernel; succeeds if none is staged.
    fn kexec_unload(&self) -> Result<(), Errno>;

    /// Whether a kernel is staged (`/sys/kernel/kexec_loaded`).
    fn kexec_loaded(&self) -> io::Result<bool>;
}

/// The real system calls.
#[derive(Debug, Clone)]
pub struct LinuxKexec {
    loaded_path: PathBuf,
}

impl LinuxKexec {
    /// Uses [`KEXEC_LOADED_PATH`].
    pub fn new() -> Self {
        Self {
            loaded_path: PathBuf::from(KEXEC_LOADED_PATH),
        }
    }

    /// Reads the loaded state from another file (tests, alternate sysfs
    /// mounts).
    pub fn with_loaded_path(path: impl Into<PathBuf>) -> Self {
        Self {
            loaded_path: path.into(),
        }
    }

    fn raw_kexec_file_load(
        kernel_fd: libc::c_int,
        initrd_fd: libc::c_int,
        cmdline: Option<&CStr>,
        flags: KexecFlags,
    ) -> Result<(), Errno> {
        let (len, ptr) = cmdline_args(cmdline);
        // SAFETY: kexec_file_load takes two ints, an unsigned long, a
        // pointer and an unsigned long, passed here with matching widths.
        // The only pointer is either null with length 0 (which the kernel
        // does not read) or points to `len` readable bytes of a `CStr`
        // (its NUL included) that outlives the call. The fds are borrowed
        // by the caller for the duration of the call or are -1. The kernel
        // does not keep any of them after returning.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                kernel_fd,
                initrd_fd,
                len,
                ptr,
                flags.bits(),
            )
        };
        Errno::result(ret).map(drop)
    }
}

/// The `cmdline_len` and `cmdline_ptr` arguments: the length counts the
/// trailing NUL (the kernel checks that the last byte it copies is `'\0'`);
/// no command line is length 0 and a null pointer.
fn cmdline_args(cmdline: Option<&CStr>) -> (libc::c_ulong, *const libc::c_char) {
    match cmdline {
        Some(c) => (c.to_bytes_with_nul().len() as libc::c_ulong, c.as_ptr()),
        None => (0, std::ptr::null()),
    }
}

impl Default for LinuxKexec {
    fn default() -> Self {
        Self::new()
    }
}

impl KexecSyscalls for LinuxKexec {
    fn kexec_file_load(
        &self,
        kernel: BorrowedFd<'_>,
        initrd: Option<BorrowedFd<'_>>,
        cmdline: &CStr,
        flags: KexecFlags,
    ) -> Result<(), Errno> {
        let flags = load_flags(initrd.is_some(), flags)?;
        let initrd_fd = initrd.map_or(-1, |fd| fd.as_raw_fd());
        Self::raw_kexec_file_load(kernel.as_raw_fd(), initrd_fd, Some(cmdline), flags)
    }

    fn kexec_unload(&self) -> Result<(), Errno> {
        Self::raw_kexec_file_load(-1, -1, None, KexecFlags::UNLOAD)
    }

    fn kexec_loaded(&self) -> io::Result<bool> {
        parse_kexec_loaded(&std::fs::read_to_string(&self.loaded_path)?)
    }
}

/// One call seen by [`RecordingKexec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexecCall {
    /// A `kexec_file_load` (load) call.
    Load {
        /// The kernel fd's target (`/proc/self/fd/N`), or `fd:N` if that
        /// could not be read.
        kernel: PathBuf,
        /// Likewise for the initrd, if one was passed.
        initrd: Option<PathBuf>,
        /// The command line, without its NUL.
        cmdline: String,
        /// The flags after [`load_flags`] (what the kernel would see).
        flags: KexecFlags,
    },
    /// A `kexec_file_load(KEXEC_FILE_UNLOAD)` call.
    Unload,
}

#[derive(Debug, Default)]
struct RecordingState {
    calls: Vec<KexecCall>,
    failures: VecDeque<Errno>,
    loaded: bool,
    loaded_query_error: Option<io::ErrorKind>,
}

/// A fake [`KexecSyscalls`] that records calls and keeps a `loaded` flag;
/// it never touches the kernel. Failures queued with
/// [`RecordingKexec::fail_next`] are returned, in order, by the next load
/// or unload calls (which are still recorded, and leave `loaded` as it
/// was). Load calls with contradictory flags fail with `EINVAL` like the
/// real implementation.
#[derive(Debug, Default)]
pub struct RecordingKexec {
    state: Mutex<RecordingState>,
}

fn fd_target(fd: BorrowedFd<'_>) -> PathBuf {
    let raw = fd.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .unwrap_or_else(|_| PathBuf::from(format!("fd:{raw}")))
}

impl RecordingKexec {
    /// A fake with nothing loaded.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, RecordingState> {
        // A panic while holding the lock (in a test) must not hide the
        // recorded calls from the rest of that test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next load or unload call fail with `errno`. Several
    /// queued failures apply to successive calls.
    pub fn fail_next(&self, errno: Errno) {
        self.state().failures.push_back(errno);
    }

    /// Makes [`KexecSyscalls::kexec_loaded`] fail with `kind` (`None`
    /// restores normal answers).
    pub fn fail_loaded_query(&self, kind: Option<io::ErrorKind>) {
        self.state().loaded_query_error = kind;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<KexecCall> {
        self.state().calls.clone()
    }

    /// Whether the fake has a kernel staged.
    pub fn is_loaded(&self) -> bool {
        self.state().loaded
    }

    /// Sets the staged state, e.g. to simulate a kernel someone else loaded.
    pub fn set_loaded(&self, loaded: bool) {
        self.state().loaded = loaded;
    }
}

impl KexecSyscalls for RecordingKexec {
    fn kexec_file_load(
        &self,
        kernel: BorrowedFd<'_>,
        initrd: Option<BorrowedFd<'_>>,
        cmdline: &CStr,
        flags: KexecFlags,
    ) -> Result<(), Errno> {
        let effective = load_flags(initrd.is_some(), flags);
        let mut state = self.state();
        state.calls.push(KexecCall::Load {
            kernel: fd_target(kernel),
            initrd: initrd.map(fd_target),
            cmdline: cmdline.to_string_lossy().into_owned(),
            flags: effective.unwrap_or(flags),
        });
        effective?;
        if let Some(errno) = state.failures.pop_front() {
            return Err(errno);
        }
        state.loaded = true;
        Ok(())
    }

    fn kexec_unload(&self) -> Result<(), Errno> {
        let mut state = self.state();
        state.calls.push(KexecCall::Unload);
        if let Some(errno) = state.failures.pop_front() {
            return Err(errno);
        }
        state.loaded = false;
        Ok(())
    }

    fn kexec_loaded(&self) -> io::Result<bool> {
        let state = self.state();
        match state.loaded_query_error {
            Some(kind) => Err(io::Error::new(kind, "injected kexec_loaded failure")),
            None => Ok(state.loaded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn flag_values_match_uapi() {
        assert_eq!(KexecFlags::UNLOAD.bits(), 0x1);
        assert_eq!(KexecFlags::ON_CRASH.bits(), 0x2);
        assert_eq!(KexecFlags::NO_INITRAMFS.bits(), 0x4);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(libc::SYS_kexec_file_load, 320);
    }

    #[test]
    fn cmdline_length_counts_the_nul() {
        let c = c"root=/dev/vda1 ro";
        let (len, ptr) = cmdline_args(Some(c));
        assert_eq!(len, 18);
        assert_eq!(ptr, c.as_ptr());
        let (len, _) = cmdline_args(Some(c""));
        assert_eq!(len, 1);
        let (len, ptr) = cmdline_args(None);
        assert_eq!(len, 0);
        assert!(ptr.is_null());
    }

    #[test]
    fn flags_debug() {
        assert_eq!(format!("{:?}", KexecFlags::EMPTY), "KexecFlags(EMPTY)");
        assert_eq!(
            format!("{:?}", KexecFlags::UNLOAD | KexecFlags::NO_INITRAMFS),
            "KexecFlags(UNLOAD|NO_INITRAMFS)"
        );
    }

    #[test]
    fn load_flags_rules() {
        assert_eq!(load_flags(true, KexecFlags::EMPTY), Ok(KexecFlags::EMPTY));
        assert_eq!(
            load_flags(false, KexecFlags::EMPTY),
            Ok(KexecFlags::NO_INITRAMFS)
        );
        assert_eq!(
            load_flags(true, KexecFlags::NO_INITRAMFS),
            Err(Errno::EINVAL)
        );
        assert_eq!(load_flags(false, KexecFlags::UNLOAD), Err(Errno::EINVAL));
    }

    #[test]
    fn parses_kexec_loaded() {
        assert!(!parse_kexec_loaded("0\n").expect("0"));
        assert!(parse_kexec_loaded("1\n").expect("1"));
        assert!(parse_kexec_loaded("2").is_err());
        assert!(parse_kexec_loaded("").is_err());
    }

    #[test]
    fn linux_kexec_loaded_reads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kexec_loaded");
        let sys = LinuxKexec::with_loaded_path(&path);
        assert_eq!(
            sys.kexec_loaded().expect_err("missing").kind(),
            io::ErrorKind::NotFound
        );
        std::fs::write(&path, "1\n").expect("write");
        assert!(sys.kexec_loaded().expect("reads"));
        std::fs::write(&path, "0\n").expect("write");
        assert!(!sys.kexec_loaded().expect("reads"));
    }

    #[test]
    fn recording_fake_records_and_tracks_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kpath = dir.path().join("kernel");
        let ipath = dir.path().join("initrd");
        std::fs::write(&kpath, b"k").expect("write");
        std::fs::write(&ipath, b"i").expect("write");
        let kernel = std::fs::File::open(&kpath).expect("open");
        let initrd = std::fs::File::open(&ipath).expect("open");

        let fake = RecordingKexec::new();
        assert!(!fake.kexec_loaded().expect("query"));
        fake.kexec_file_load(
            kernel.as_fd(),
            Some(initrd.as_fd()),
            c"root=/dev/vda1 ro",
            KexecFlags::EMPTY,
        )
        .expect("load");
        assert!(fake.kexec_loaded().expect("query"));
        fake.kexec_file_load(kernel.as_fd(), None, c"", KexecFlags::EMPTY)
            .expect("load without initrd");
        fake.kexec_unload().expect("unload");
        assert!(!fake.is_loaded());

        let calls = fake.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(
            calls[0],
            KexecCall::Load {
                kernel: kpath.clone(),
                initrd: Some(ipath),
                cmdline: "root=/dev/vda1 ro".into(),
                flags: KexecFlags::EMPTY,
            }
        );
        assert_eq!(
            calls[1],
            KexecCall::Load {
                kernel: kpath,
                initrd: None,
                cmdline: String::new(),
                flags: KexecFlags::NO_INITRAMFS,
            }
        );
        assert_eq!(calls[2], KexecCall::Unload);
    }

    #[test]
    fn recording_fake_injects_failures_in_order() {
        let file = tempfile::tempfile().expect("tempfile");
        let fake = RecordingKexec::new();
        fake.fail_next(Errno::EPERM);
        fake.fail_next(Errno::EBUSY);
        assert_eq!(
            fake.kexec_file_load(file.as_fd(), None, c"x", KexecFlags::EMPTY),
            Err(Errno::EPERM)
        );
        assert!(!fake.is_loaded());
        assert_eq!(fake.kexec_unload(), Err(Errno::EBUSY));
        fake.kexec_file_load(file.as_fd(), None, c"x", KexecFlags::EMPTY)
            .expect("third call succeeds");
        assert!(fake.is_loaded());
        assert_eq!(fake.calls().len(), 3);

        // Contradictory flags fail like the real implementation.
        assert_eq!(
            fake.kexec_file_load(
                file.as_fd(),
                Some(file.as_fd()),
                c"x",
                KexecFlags::NO_INITRAMFS
            ),
            Err(Errno::EINVAL)
        );

        fake.fail_loaded_query(Some(io::ErrorKind::PermissionDenied));
        assert_eq!(
            fake.kexec_loaded().expect_err("injected").kind(),
            io::ErrorKind::PermissionDenied
        );
    }
}
