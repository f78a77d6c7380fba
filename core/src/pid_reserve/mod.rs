//! Holding the pids a snapshot needs, from early boot until the restore.
//!
//! # Why
//!
//! CRIU restores every process with its *original* pid. After a kexec the
//! new kernel starts counting pids from 1 again, and early boot hands them
//! out to whatever starts first (udev workers, mount helpers, systemd's own
//! children, ...). If one of those happens to get a pid that a checkpointed
//! process had, that restore fails. Probing for collisions just before the
//! restore is too late; the fix is by construction: very early in the next
//! boot a long-running *hold* process reserves every pid the snapshot needs
//! by creating a placeholder child with exactly that pid.
//!
//! The kernel allocates pids cyclically: each new process gets the next
//! free pid after the last one handed out, wrapping to the bottom only at
//! `kernel.pid_max`. So once a placeholder holds pid P and the counter has
//! moved past it, killing and reaping the placeholder just before the
//! restore leaves P free, and nothing else gets P until the counter wraps
//! around, long after the restore has taken it.
//!
//! # How
//!
//! A placeholder is made with `clone3` and its `set_tid` array, which asks
//! the kernel for a specific pid. The facts relied on (Linux
//! `kernel/fork.c`, `kernel/pid.c`, `man 2 clone`):
//!
//! * `set_tid` exists since Linux 5.5 (`CLONE_ARGS_SIZE_VER1`, 80 bytes);
//!   `cgroup` since 5.7 (`CLONE_ARGS_SIZE_VER2`, 88 bytes). We always pass
//!   88 bytes with `cgroup` zero, which 5.5 and 5.6 accept as well (unknown
//!   trailing bytes are fine when zero). Before 5.3 there is no `clone3`
//!   (`ENOSYS`; container seccomp profiles also answer `ENOSYS`); on 5.3 and
//!   5.4 the non-zero `set_tid` fields lie beyond the known struct and the
//!   kernel answers `E2BIG`. Both become [`ReserveError::Unsupported`].
//! * `set_tid[0]` is the pid in the innermost pid namespace of the child
//!   (the caller's own when it has not unshared one); with `set_tid_size`
//!   1 the outer levels are allocated as usual.
//! * The pid must be in `1..pid_max` and, unless it is 1, the namespace must
//!   have an init; else `EINVAL` ([`ReserveError::OutOfRange`]).
//! * The caller needs `CAP_SYS_ADMIN` or (since Linux 5.9)
//!   `CAP_CHECKPOINT_RESTORE` in the user namespace that owns the pid
//!   namespace the pid is chosen in (`checkpoint_restore_ns_capable` on that
//!   namespace's `user_ns`); else `EPERM` ([`ReserveError::NotPermitted`]).
//!   Before 5.9 only `CAP_SYS_ADMIN` counts.
//! * A pid in use gives `EEXIST` ([`ReserveError::PidTaken`]). "In use"
//!   means any task (process or thread) and also a zombie: a pid stays
//!   allocated until its process is reaped.
//!
//! The placeholder is a fork (no `CLONE_VM`) that runs only
//! async-signal-safe calls: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, a
//! `getppid()` check that the parent is still the one that created it (if
//! the parent died before the `prctl`, it exits), `signal(.., SIG_IGN)` for
//! every catchable signal (so only `SIGKILL` ends it and no handler of the
//! parent's ever runs in it), `sigprocmask`, `close_range` (so it keeps no
//! file, socket or pipe of the parent's open), then `pause()` forever. It
//! never returns into Rust code.
//!
//! Since an unreaped child keeps its pid even after it died, a placeholder
//! that was killed by someone else still holds its pid until
//! [`PidReservation::release`] reaps it. Release is `SIGKILL` + `waitpid`,
//! so once it returns the pid is free.
//!
//! # Contract for the caller (the hold process)
//!
//! * Single-threaded. The child of a clone without `CLONE_VM` in a
//!   multi-threaded process may only call async-signal-safe functions
//!   (another thread may have held any lock at the moment of the clone);
//!   the placeholder's code keeps to that, but a single-threaded caller is
//!   still required because `PR_SET_PDEATHSIG` is tied to the creating
//!   *thread*: if it exits, the placeholders are killed and, once reaped,
//!   the pids are free early. [`PidReservation`] is therefore neither `Send`
//!   nor `Sync`.
//! * Never reap children it does not know (`wait()`, `waitpid(-1, ..)`),
//!   and do not ignore `SIGCHLD` or set `SA_NOCLDWAIT`: either would reap a
//!   placeholder behind this module's back, freeing its pid at a random
//!   moment. [`PidReservation::reserve`] refuses while `SIGCHLD` is set to
//!   reap automatically ([`ReserveError::ChildrenAutoReaped`]).
//! * Run in the pid namespace the restore will use (the initial one for
//!   seamless-reboot), with the capability above.

#![allow(unsafe_code)] // clone3 with set_tid has no safe wrapper in libc or nix; see module docs.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// `struct clone_args` of `include/uapi/linux/sched.h`, up to `cgroup`
/// (`CLONE_ARGS_SIZE_VER2`). All fields are `__aligned_u64`.
#[repr(C, align(8))]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_ARGS_SIZE_VER2`: the struct up to and including `cgroup`.
const CLONE_ARGS_SIZE_VER2: usize = 88;

const _: () = assert!(std::mem::size_of::<CloneArgs>() == CLONE_ARGS_SIZE_VER2);

impl CloneArgs {
    /// Arguments for a placeholder: fork semantics (no flags, so no
    /// `CLONE_VM` and the child runs on a copy of the caller's stack),
    /// `SIGCHLD` to the parent when it ends (so plain `waitpid` reaps it),
    /// and exactly one pid chosen, in the innermost pid namespace.
    fn placeholder(set_tid: &[libc::pid_t; 1]) -> Self {
        CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: set_tid.as_ptr().addr() as u64,
            set_tid_size: set_tid.len() as u64,
            ..CloneArgs::default()
        }
    }
}

/// Why a pid could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// `EEXIST`: another process or thread (or an unreaped zombie) has the
    /// pid. The caller reports this as a collision.
    #[error("pid {pid} is taken by another process")]
    PidTaken {
        /// The pid asked for.
        pid: i32,
    },
    /// `EPERM`: the caller lacks `CAP_SYS_ADMIN` and `CAP_CHECKPOINT_RESTORE`
    /// in the user namespace owning the pid namespace (or a seccomp filter
    /// or LSM refused the clone).
    #[error(
        "not permitted to reserve pid {pid}: choosing a pid needs CAP_SYS_ADMIN or \
         CAP_CHECKPOINT_RESTORE in the user namespace that owns the pid namespace"
    )]
    NotPermitted {
        /// The pid asked for.
        pid: i32,
    },
    /// `ENOSYS` or `E2BIG`: the kernel has no `clone3` (before 5.3, or a
    /// seccomp filter hides it) or no `set_tid` (5.3, 5.4).
    #[error(
        "cannot reserve pid {pid}: the kernel cannot create a process with a chosen pid \
         (clone3 with set_tid needs Linux 5.5 or later, not hidden by seccomp): {errno}"
    )]
    Unsupported {
        /// The pid asked for.
        pid: i32,
        /// What `clone3` returned.
        errno: Errno,
    },
    /// The pid is below 1 (refused before any system call), or `EINVAL`:
    /// not below `kernel.pid_max`, or the pid namespace has no init yet.
    #[error(
        "pid {pid} cannot be reserved: it is outside 1..pid_max, or the pid namespace has no init"
    )]
    OutOfRange {
        /// The pid asked for.
        pid: i32,
    },
    /// The caller ignores `SIGCHLD` or set `SA_NOCLDWAIT`, so the kernel
    /// would reap a placeholder on its own the moment anything killed it,
    /// freeing the pid. Nothing was created.
    #[error(
        "not reserving pid {pid}: SIGCHLD is ignored or has SA_NOCLDWAIT, so a placeholder \
         would be reaped automatically and could free the pid at any time"
    )]
    ChildrenAutoReaped {
        /// The pid asked for.
        pid: i32,
    },
    /// The kernel made the child, but the pid the caller sees differs from
    /// the one asked for: the caller's children are created in a pid
    /// namespace other than its own (it unshared `CLONE_NEWPID`). The child
    /// was killed and reaped again.
    #[error(
        "asked for pid {pid} but the placeholder got pid {got} in this process's pid namespace: \
         children of this process are created in another pid namespace"
    )]
    WrongNamespace {
        /// The pid asked for.
        pid: i32,
        /// The pid `clone3` returned.
        got: i32,
    },
    /// Any other failure of `clone3`, e.g. `EAGAIN` (process limits) or
    /// `ENOMEM` (also: the pid namespace's init has exited).
    #[error("reserving pid {pid} failed: {errno}")]
    Other {
        /// The pid asked for.
        pid: i32,
        /// What `clone3` returned.
        errno: Errno,
    },
}

impl ReserveError {
    /// The pid that could not be reserved.
    pub fn pid(&self) -> i32 {
        match *self {
            ReserveError::PidTaken { pid }
            | ReserveError::NotPermitted { pid }
            | ReserveError::Unsupported { pid, .. }
            | ReserveError::OutOfRange { pid }
            | ReserveError::ChildrenAutoReaped { pid }
            | ReserveError::WrongNamespace { pid, .. }
            | ReserveError::Other { pid, .. } => pid,
        }
    }

    /// The error for a failed `clone3` asking for `pid`.
    fn from_clone_errno(pid: i32, errno: Errno) -> Self {
        match errno {
            Errno::EEXIST => ReserveError::PidTaken { pid },
            Errno::EPERM => ReserveError::NotPermitted { pid },
            Errno::ENOSYS | Errno::E2BIG => ReserveError::Unsupported { pid, errno },
            Errno::EINVAL => ReserveError::OutOfRange { pid },
            errno => ReserveError::Other { pid, errno },
        }
    }
}

/// Why one placeholder could not be released cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PidReleaseError {
    /// The placeholder was no longer this process's child to reap
    /// (`ESRCH` from `kill`, `ECHILD` from `waitpid`): something else reaped
    /// it, so the pid was already free and may have been taken since. It is
    /// no longer held.
    #[error(
        "the placeholder for pid {pid} was reaped by someone else: the pid was freed early \
         and may be in use by another process now"
    )]
    ReapedElsewhere {
        /// The pid that was held.
        pid: i32,
    },
    /// `kill(pid, SIGKILL)` failed otherwise; the pid is still held.
    #[error("could not kill the placeholder holding pid {pid}: {errno}")]
    Kill {
        /// The pid that is held.
        pid: i32,
        /// What `kill` returned.
        errno: Errno,
    },
    /// `waitpid` failed otherwise after the kill; the pid counts as still
    /// held, so a later release tries again.
    #[error("could not reap the placeholder holding pid {pid}: {errno}")]
    Wait {
        /// The pid that is held.
        pid: i32,
        /// What `waitpid` returned.
        errno: Errno,
    },
}

impl PidReleaseError {
    /// The pid concerned.
    pub fn pid(&self) -> i32 {
        match *self {
            PidReleaseError::ReapedElsewhere { pid }
            | PidReleaseError::Kill { pid, .. }
            | PidReleaseError::Wait { pid, .. } => pid,
        }
    }
}

/// The placeholders [`PidReservation::release`] could not release cleanly,
/// one entry per pid, in pid order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", ReleaseFailures(.failures))]
pub struct ReleaseError {
    /// One entry per pid.
    pub failures: Vec<PidReleaseError>,
}

/// Formats the failures as one line.
struct ReleaseFailures<'a>(&'a [PidReleaseError]);

impl fmt::Display for ReleaseFailures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "releasing {} pid(s) failed", self.0.len())?;
        for (i, failure) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// Placeholder processes holding pids for a later restore.
///
/// This process is the placeholders' parent; each is a child created with
/// exactly the pid it holds. Dropping the reservation releases them all.
/// Neither `Send` nor `Sync`: the placeholders die with the thread that
/// created them (see the module docs).
#[derive(Debug, Default)]
pub struct PidReservation {
    /// The pids held; each is the pid of its own placeholder.
    held: BTreeSet<i32>,
    /// `PR_SET_PDEATHSIG` is per thread: keep the reservation on one.
    _one_thread: PhantomData<*const ()>,
}

impl PidReservation {
    /// An empty reservation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tries to reserve each pid by creating a placeholder child with it.
    ///
    /// Returns, per pid that could not be reserved, why:
    /// [`ReserveError::PidTaken`] when another process has it (the caller
    /// reports a collision), [`ReserveError::NotPermitted`],
    /// [`ReserveError::Unsupported`] on a kernel without `clone3` `set_tid`,
    /// and so on. Pids already reserved by this object and repeated pids
    /// are skipped. Never panics.
    ///
    /// # Contract
    ///
    /// The calling process must be single-threaded. The placeholder is the
    /// child of a clone without `CLONE_VM`, and in a multi-threaded process
    /// such a child may only call async-signal-safe functions; the
    /// placeholder keeps to that, but `PR_SET_PDEATHSIG` ties its life to
    /// the calling *thread*, and no other thread may reap it. The caller
    /// must not ignore `SIGCHLD` nor reap unknown children (see the module
    /// docs).
    pub fn reserve(&mut self, pids: &[i32]) -> Vec<(i32, ReserveError)> {
        let (to_create, mut failures) = self.plan(pids);
        if to_create.is_empty() {
            return failures;
        }
        if children_auto_reaped() {
            failures.extend(
                to_create
                    .into_iter()
                    .map(|pid| (pid, ReserveError::ChildrenAutoReaped { pid })),
            );
            return failures;
        }
        let env = PlaceholderEnv::capture();
        for pid in to_create {
            match spawn_placeholder(pid, &env) {
                Ok(()) => {
                    self.held.insert(pid);
                }
                Err(error) => failures.push((pid, error)),
            }
        }
        if !failures.is_empty() {
            tracing::debug!(
                failed = failures.len(),
                held = self.held.len(),
                "some pids could not be reserved"
            );
        }
        failures
    }

    /// Which pids `reserve(pids)` has to create placeholders for (new ones,
    /// each once, in the given order), and which it refuses outright.
    fn plan(&self, pids: &[i32]) -> (Vec<i32>, Vec<(i32, ReserveError)>) {
        let mut seen = BTreeSet::new();
        let mut to_create = Vec::new();
        let mut refused = Vec::new();
        for &pid in pids {
            if self.held.contains(&pid) || !seen.insert(pid) {
                continue;
            }
            if pid < 1 {
                refused.push((pid, ReserveError::OutOfRange { pid }));
            } else {
                to_create.push(pid);
            }
        }
        (to_create, refused)
    }

    /// Whether this reservation holds `pid`.
    pub fn holds(&self, pid: i32) -> bool {
        self.held.contains(&pid)
    }

    /// The pids held, ascending.
    pub fn held(&self) -> Vec<i32> {
        self.held.iter().copied().collect()
    }

    /// Frees the given pids: `SIGKILL`s each placeholder and `waitpid`s it,
    /// so when this returns the pids are free. Pids not held are ignored
    /// (nothing is sent to them). A pid whose placeholder turns out to be
    /// reaped already is dropped from the reservation and reported as
    /// [`PidReleaseError::ReapedElsewhere`]; one whose kill or wait fails
    /// otherwise stays held and is reported.
    pub fn release(&mut self, pids: &[i32]) -> Result<(), ReleaseError> {
        let targets: BTreeSet<i32> = pids
            .iter()
            .copied()
            .filter(|&pid| pid > 0 && self.held.contains(&pid))
            .collect();
        let mut failures = Vec::new();
        // Kill all first, so they die in parallel, then reap each.
        let mut killed = Vec::new();
        for pid in targets {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => killed.push(pid),
                // Our own child, alive or a zombie, is always found; gone
                // means someone else reaped it.
                Err(Errno::ESRCH) => {
                    self.held.remove(&pid);
                    failures.push(PidReleaseError::ReapedElsewhere { pid });
                }
                Err(errno) => failures.push(PidReleaseError::Kill { pid, errno }),
            }
        }
        for pid in killed {
            match reap(pid) {
                Ok(()) => {
                    self.held.remove(&pid);
                }
                Err(Errno::ECHILD) => {
                    self.held.remove(&pid);
                    failures.push(PidReleaseError::ReapedElsewhere { pid });
                }
                Err(errno) => failures.push(PidReleaseError::Wait { pid, errno }),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            failures.sort_by_key(PidReleaseError::pid);
            Err(ReleaseError { failures })
        }
    }

    /// Frees every pid held; failures are logged.
    pub fn release_all(&mut self) {
        let pids = self.held();
        if let Err(error) = self.release(&pids) {
            tracing::warn!(%error, "releasing the reserved pids");
        }
    }
}

impl Drop for PidReservation {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Whether pid `pid` is in use right now, for diagnostics: whether
/// `/proc/<pid>` exists. That is true for processes, zombies and also for
/// threads (their ids come from the same pid space and collide with
/// restored pids just the same, though `/proc` does not list them). The
/// answer is about the pid namespace of the procfs mounted at `/proc`, and
/// may be stale by the time it is used.
pub fn pid_in_use(pid: i32) -> bool {
    pid > 0 && std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok()
}

/// Whether the kernel reaps this process's children by itself
/// (`SIGCHLD` ignored, or `SA_NOCLDWAIT`).
fn children_auto_reaped() -> bool {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current
    // disposition of SIGCHLD into `current`, which is valid writable memory
    // of the right type for the duration of the call.
    let ret = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), current.as_mut_ptr()) };
    if ret != 0 {
        return false;
    }
    // SAFETY: sigaction succeeded, so it filled `current`; it was zeroed
    // before anyway, and every field is plain data valid when zero.
    let current = unsafe { current.assume_init() };
    auto_reaps(current.sa_sigaction, current.sa_flags)
}

/// Whether a `SIGCHLD` disposition makes the kernel reap children itself.
fn auto_reaps(handler: libc::sighandler_t, flags: libc::c_int) -> bool {
    handler == libc::SIG_IGN || flags & libc::SA_NOCLDWAIT != 0
}

/// Everything the placeholder needs, computed before the clone so that the
/// child itself only makes async-signal-safe calls.
struct PlaceholderEnv {
    /// The pid the placeholder must see as its parent.
    parent: libc::pid_t,
    /// The highest signal number (`SIGRTMAX`).
    max_signal: libc::c_int,
    /// Bound for closing fds one by one when `close_range` is missing.
    fd_limit: libc::c_int,
    /// An empty signal set.
    no_signals: libc::sigset_t,
}

impl PlaceholderEnv {
    fn capture() -> Self {
        let mut limit = std::mem::MaybeUninit::<libc::rlimit>::zeroed();
        // SAFETY: getrlimit writes one struct rlimit into `limit`, valid
        // writable memory of that type.
        let ret = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) };
        let fd_limit = if ret == 0 {
            // SAFETY: getrlimit succeeded and filled `limit` (zeroed before
            // in any case; both fields are plain integers).
            let limit = unsafe { limit.assume_init() };
            libc::c_int::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20)
        } else {
            1024
        };
        let mut no_signals = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        // SAFETY: sigemptyset initializes the sigset_t it is given, which
        // is valid writable memory of that type.
        unsafe { libc::sigemptyset(no_signals.as_mut_ptr()) };
        PlaceholderEnv {
            parent: nix::unistd::getpid().as_raw(),
            max_signal: libc::SIGRTMAX(),
            fd_limit,
            // SAFETY: initialized by sigemptyset above (and zeroed before,
            // which is also an empty set on Linux).
            no_signals: unsafe { no_signals.assume_init() },
        }
    }
}

/// Creates one placeholder holding `pid`.
fn spawn_placeholder(pid: i32, env: &PlaceholderEnv) -> Result<(), ReserveError> {
    let set_tid: [libc::pid_t; 1] = [pid];
    let args = CloneArgs::placeholder(&set_tid);
    // Block every signal across the clone, so that no handler of this
    // process runs in the child before it has ignored all signals. The
    // child inherits the mask and clears it once the dispositions are
    // reset; here the old mask is restored right after.
    let mut old_mask = SigSet::empty();
    let blocked = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old_mask),
    )
    .is_ok();
    // SAFETY: clone3 takes a pointer to a struct clone_args and its size;
    // `args` is a #[repr(C)] copy of that struct of exactly
    // CLONE_ARGS_SIZE_VER2 bytes, alive across the call, and its only
    // pointer, `set_tid`, points at `set_tid` (one pid_t, matching
    // `set_tid_size` 1), also alive across the call. No flags are set: the
    // child gets a copy of the address space (fork semantics), so nothing
    // of this process's memory is shared or touched by the child, and the
    // child never returns from here (`placeholder_main` diverges).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        placeholder_main(env);
    }
    let errno = Errno::last();
    if blocked {
        // Restoring the mask this thread had a moment ago cannot fail.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    }
    if ret < 0 {
        return Err(ReserveError::from_clone_errno(pid, errno));
    }
    // A pid always fits; 0 stands for "cannot happen" and is never signaled
    // (kill(0) would hit this process group, kill(-1) everything).
    let got = i32::try_from(ret).unwrap_or(0);
    if got != pid {
        if got > 0 {
            // The child sees a different parent pid (none, from its
            // namespace) and exits by itself; kill it anyway and reap it.
            let _ = kill(Pid::from_raw(got), Signal::SIGKILL);
            let _ = reap(got);
        }
        return Err(ReserveError::WrongNamespace { pid, got });
    }
    Ok(())
}

/// Waits for child `pid` to end, retrying on `EINTR`.
fn reap(pid: i32) -> Result<(), Errno> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// The placeholder's whole life: only async-signal-safe calls, never back
/// into the parent's Rust code.
fn placeholder_main(env: &PlaceholderEnv) -> ! {
    // SAFETY: every call here is a plain system call wrapper that is
    // async-signal-safe (prctl, getppid, signal, sigprocmask, close_range
    // via syscall, close, pause, _exit), so it is sound in the child of a
    // clone without CLONE_VM even if the parent had other threads holding
    // locks. Its only memory accesses are to `env` (a copy in this child's
    // own address space, prepared before the clone) and the stack.
    unsafe {
        // Die with the parent (thread) that holds the reservation.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            libc::_exit(120);
        }
        // If the parent died before the prctl, no signal will come.
        if libc::getppid() != env.parent {
            libc::_exit(121);
        }
        for signal in 1..=env.max_signal {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                // Fails harmlessly for numbers glibc reserves.
                libc::signal(signal, libc::SIG_IGN);
            }
        }
        // Ignored and unblocked: signals sent to the placeholder are
        // discarded instead of queuing up.
        libc::sigprocmask(libc::SIG_SETMASK, &env.no_signals, std::ptr::null_mut());
        // Hold nothing of the parent's open: no pipe end, socket or lock.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..env.fd_limit {
                libc::close(fd);
            }
        }
        loop {
            libc::pause();
        }
    }
}
