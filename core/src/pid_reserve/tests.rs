//! Tests of the pid reservation.
//!
//! The pure parts are tested directly. The real ones create placeholders,
//! which must not happen in the test binary itself: it is multi-threaded
//! (the harness runs tests on threads) and the pids it could reserve are the
//! host's. So each real test forks a child, which unshares a pid namespace
//! (and a mount namespace, to mount a procfs of its own; a user namespace
//! too when not root), and forks the grandchild that is pid 1 of the new
//! namespace and runs the test body there. The outcome comes back as an exit
//! code and a message through a pipe. The child kills the grandchild (and so
//! the whole namespace) if the body takes too long. (An alarm would not do:
//! the kernel drops signals with default action sent to a namespace's init
//! from inside.)
//!
//! Between fork and exit the children allocate (glibc's malloc is safe
//! after fork) but never touch the harness's locks: no printing.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, pipe2};

use super::*;

// ---------------------------------------------------------------------
// Pure parts.

#[test]
fn clone_args_layout_matches_the_kernel_abi() {
    use std::mem::{align_of, offset_of, size_of};
    // include/uapi/linux/sched.h: eleven __aligned_u64 in this order;
    // CLONE_ARGS_SIZE_VER0 ends after tls (64), VER1 after set_tid_size
    // (80), VER2 after cgroup (88).
    assert_eq!(offset_of!(CloneArgs, flags), 0);
    assert_eq!(offset_of!(CloneArgs, exit_signal), 32);
    assert_eq!(offset_of!(CloneArgs, tls) + 8, 64);
    assert_eq!(offset_of!(CloneArgs, set_tid), 64);
    assert_eq!(offset_of!(CloneArgs, set_tid_size) + 8, 80);
    assert_eq!(offset_of!(CloneArgs, cgroup) + 8, 88);
    assert_eq!(size_of::<CloneArgs>(), CLONE_ARGS_SIZE_VER2);
    assert_eq!(align_of::<CloneArgs>(), 8);
}

#[test]
fn placeholder_args_ask_for_one_pid_with_fork_semantics() {
    let set_tid = [551];
    let args = CloneArgs::placeholder(&set_tid);
    assert_eq!(args.flags & libc::CLONE_VM as u64, 0, "no CLONE_VM");
    assert_eq!(args.flags, 0);
    assert_eq!(args.exit_signal, libc::SIGCHLD as u64);
    assert_eq!(args.set_tid, set_tid.as_ptr().addr() as u64);
    assert_eq!(args.set_tid_size, 1);
    assert_eq!(
        (args.stack, args.stack_size, args.tls, args.cgroup),
        (0, 0, 0, 0)
    );
}

#[test]
fn clone_errors_map_to_reasons() {
    let map = |errno| ReserveError::from_clone_errno(551, errno);
    assert_eq!(map(Errno::EEXIST), ReserveError::PidTaken { pid: 551 });
    assert_eq!(map(Errno::EPERM), ReserveError::NotPermitted { pid: 551 });
    assert_eq!(
        map(Errno::ENOSYS),
        ReserveError::Unsupported {
            pid: 551,
            errno: Errno::ENOSYS
        }
    );
    assert_eq!(
        map(Errno::E2BIG),
        ReserveError::Unsupported {
            pid: 551,
            errno: Errno::E2BIG
        }
    );
    assert_eq!(map(Errno::EINVAL), ReserveError::OutOfRange { pid: 551 });
    assert_eq!(
        map(Errno::EAGAIN),
        ReserveError::Other {
            pid: 551,
            errno: Errno::EAGAIN
        }
    );
    for errno in [
        Errno::EEXIST,
        Errno::EPERM,
        Errno::ENOSYS,
        Errno::EINVAL,
        Errno::ENOMEM,
    ] {
        assert_eq!(map(errno).pid(), 551);
    }
}

#[test]
fn error_messages_name_the_pid_and_the_cause() {
    assert_eq!(
        ReserveError::PidTaken { pid: 551 }.to_string(),
        "pid 551 is taken by another process"
    );
    let denied = ReserveError::NotPermitted { pid: 7 }.to_string();
    assert!(
        denied.contains("pid 7") && denied.contains("CAP_CHECKPOINT_RESTORE"),
        "{denied}"
    );
    let old = ReserveError::Unsupported {
        pid: 8,
        errno: Errno::ENOSYS,
    }
    .to_string();
    assert!(
        old.contains("pid 8") && old.contains("5.5") && old.contains("ENOSYS"),
        "{old}"
    );

    let error = ReleaseError {
        failures: vec![
            PidReleaseError::ReapedElsewhere { pid: 50 },
            PidReleaseError::Wait {
                pid: 300,
                errno: Errno::EINVAL,
            },
        ],
    };
    let text = error.to_string();
    assert!(text.starts_with("releasing 2 pid(s) failed: "), "{text}");
    assert!(text.contains("pid 50 was reaped by someone else"), "{text}");
    assert!(
        text.contains("pid 300") && text.contains("EINVAL"),
        "{text}"
    );
}

#[test]
fn plan_skips_held_and_repeated_pids_and_refuses_nonpositive_ones() {
    let mut reservation = PidReservation::new();
    reservation.held.insert(51);
    let (to_create, refused) = reservation.plan(&[300, 51, 50, 0, 300, -4, 50, 0]);
    assert_eq!(to_create, vec![300, 50]);
    assert_eq!(
        refused,
        vec![
            (0, ReserveError::OutOfRange { pid: 0 }),
            (-4, ReserveError::OutOfRange { pid: -4 }),
        ]
    );
    // Not held: nothing else left to release, and dropping must not signal
    // the made-up pid 51.
    reservation.held.clear();
}

#[test]
fn sigchld_dispositions_that_reap_automatically() {
    assert!(auto_reaps(libc::SIG_IGN, 0));
    assert!(auto_reaps(libc::SIG_DFL, libc::SA_NOCLDWAIT));
    assert!(!auto_reaps(libc::SIG_DFL, 0));
    assert!(!auto_reaps(libc::SIG_DFL, libc::SA_RESTART));
}

#[test]
fn nonpositive_pids_are_refused_without_creating_anything() {
    // Safe in the multi-threaded test process: nothing gets cloned.
    let mut reservation = PidReservation::new();
    let failures = reservation.reserve(&[0, -1]);
    assert_eq!(
        failures,
        vec![
            (0, ReserveError::OutOfRange { pid: 0 }),
            (-1, ReserveError::OutOfRange { pid: -1 }),
        ]
    );
    assert!(reservation.held().is_empty());
    assert!(!reservation.holds(0));
}

#[test]
fn releasing_pids_not_held_leaves_their_processes_alone() {
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = i32::try_from(sleeper.id()).expect("pid fits i32");
    let mut reservation = PidReservation::new();
    assert_eq!(reservation.release(&[pid]), Ok(()));
    reservation.release_all();
    drop(reservation);
    thread::sleep(Duration::from_millis(50));
    let status = sleeper.try_wait().expect("try_wait");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(status, None, "a pid that was not held got killed");
}

#[test]
fn pid_in_use_sees_processes_and_threads_but_not_freed_pids() {
    assert!(pid_in_use(getpid().as_raw()));
    assert!(!pid_in_use(0));
    assert!(!pid_in_use(-1));

    // A thread's id is a pid in use too, though /proc does not list it.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let worker = thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw());
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().expect("thread id");
    assert_ne!(tid, getpid().as_raw());
    assert!(pid_in_use(tid), "thread {tid} not seen");
    let _ = stop_tx.send(());
    worker.join().expect("join");

    // A reaped child's pid is free.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    child.wait().expect("wait");
    assert!(!pid_in_use(pid), "reaped pid {pid} still in use");
}

// ---------------------------------------------------------------------
// Real placeholders, in a pid namespace of their own.

#[test]
fn reserves_exact_pids_and_releases_them() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, reserve_and_release_body)
}

fn reserve_and_release_body() -> Result<()> {
    let pids = [50, 51, 300];
    let mut reservation = PidReservation::new();
    let failures = reservation.reserve(&pids);
    ensure!(failures.is_empty(), "reserving {pids:?}: {failures:?}");
    ensure!(
        reservation.held() == pids.to_vec(),
        "held {:?}",
        reservation.held()
    );
    for pid in pids {
        ensure!(reservation.holds(pid), "holds({pid}) is false");
        ensure!(is_live_child(pid)?, "no live placeholder with pid {pid}");
        ensure!(pid_in_use(pid), "pid_in_use({pid}) is false");
        let status = proc_status(pid)?;
        ensure!(
            status_field(&status, "PPid") == Some("1"),
            "{pid}: {status}"
        );
        // Ignores every catchable signal (SIGTERM is bit 15), blocks none.
        let ignored = u64::from_str_radix(status_field(&status, "SigIgn").unwrap_or(""), 16)?;
        ensure!(
            ignored & (1 << (libc::SIGTERM - 1)) != 0,
            "{pid} does not ignore SIGTERM"
        );
        ensure!(status_field(&status, "SigBlk").map(|m| m.trim_start_matches('0')) == Some(""));
        // Keeps none of the parent's files open.
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        ensure!(fds == 0, "placeholder {pid} has {fds} open fds");
    }
    kill(Pid::from_raw(51), Signal::SIGTERM)?;
    thread::sleep(Duration::from_millis(100));
    ensure!(is_live_child(51)?, "SIGTERM ended the placeholder");

    // Reserving what this object holds is skipped (else clone3 would fail).
    let failures = reservation.reserve(&[50, 300]);
    ensure!(failures.is_empty(), "re-reserving held pids: {failures:?}");

    // Another reservation cannot take them, nor this process's own pid.
    let mut other = PidReservation::new();
    let failures = other.reserve(&[50, 1]);
    ensure!(
        failures
            == vec![
                (50, ReserveError::PidTaken { pid: 50 }),
                (1, ReserveError::PidTaken { pid: 1 })
            ],
        "{failures:?}"
    );
    ensure!(other.held().is_empty());

    // Released: free right away, and reservable again.
    reservation.release(&[50, 9999])?;
    ensure!(!reservation.holds(50) && reservation.held() == vec![51, 300]);
    ensure!(!pid_in_use(50), "pid 50 still in use after release");
    ensure!(!is_live_child(50)?, "pid 50 is still a child");
    let failures = other.reserve(&[50]);
    ensure!(
        failures.is_empty(),
        "reserving a released pid: {failures:?}"
    );
    ensure!(pid_in_use(50) && other.holds(50));

    // Dropping releases everything.
    drop(reservation);
    ensure!(
        !pid_in_use(51) && !pid_in_use(300),
        "drop left placeholders"
    );
    ensure!(
        pid_in_use(50),
        "dropping one reservation freed the other's pid"
    );
    drop(other);
    ensure!(!pid_in_use(50));
    // And every placeholder was reaped: no child is left at all.
    match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => Ok(()),
        other => bail!("children left after dropping: {other:?}"),
    }
}

#[test]
fn released_pids_are_not_handed_out_again_before_the_counter_wraps() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, no_reuse_body)
}

fn no_reuse_body() -> Result<()> {
    // In a fresh namespace the counter is just past this pid 1.
    let first = fork_and_reap()?;
    ensure!(first == 2, "first child of a new pid namespace got {first}");
    let mut reservation = PidReservation::new();
    let failures = reservation.reserve(&[3, 4]);
    ensure!(failures.is_empty(), "{failures:?}");
    let second = fork_and_reap()?;
    ensure!(
        second > 4,
        "a fork got pid {second} despite the reservation of 3 and 4"
    );
    reservation.release(&[3, 4])?;
    let third = fork_and_reap()?;
    ensure!(
        third > second,
        "after the release a fork got pid {third}, not a new one"
    );
    Ok(())
}

#[test]
fn placeholders_die_with_their_parent() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, parent_death_body)
}

fn parent_death_body() -> Result<()> {
    let (ready_rx, ready_tx) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: this process (pid 1 of the test namespace) is single-threaded.
    let holder = match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ready_rx);
            let mut reservation = PidReservation::new();
            let ok = reservation.reserve(&[70]).is_empty();
            let _ = nix::unistd::write(&ready_tx, if ok { b"y" } else { b"n" });
            loop {
                // SAFETY: pause has no preconditions; this process waits
                // here to be killed.
                unsafe { libc::pause() };
            }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_tx);
    let mut answer = [0u8; 1];
    let n = nix::unistd::read(ready_rx.as_fd(), &mut answer)?;
    ensure!(
        n == 1 && answer == *b"y",
        "the holder could not reserve pid 70"
    );
    let status = proc_status(70)?;
    let ppid = holder.as_raw().to_string();
    ensure!(
        status_field(&status, "PPid") == Some(ppid.as_str()),
        "{status}"
    );

    kill(holder, Signal::SIGKILL)?;
    waitpid(holder, None)?;
    // The orphan is re-parented to this process (the namespace's init) and
    // must have got SIGKILL from its parent-death signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(Pid::from_raw(70), Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::Signaled(pid, Signal::SIGKILL, _) if pid.as_raw() == 70 => break,
            WaitStatus::StillAlive if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            other => bail!("placeholder 70 after its parent died: {other:?}"),
        }
    }
    ensure!(!pid_in_use(70));
    Ok(())
}

#[test]
fn reserving_needs_the_capability_over_the_pid_namespace() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, not_permitted_body)
}

fn not_permitted_body() -> Result<()> {
    // SAFETY: this process (pid 1 of the test namespace) is single-threaded.
    let child = match unsafe { fork() }? {
        ForkResult::Child => {
            // A new user namespace: full capabilities inside it, none in
            // the one owning this pid namespace.
            let code = match unshare(CloneFlags::CLONE_NEWUSER) {
                Err(_) => 2,
                Ok(()) => {
                    let mut reservation = PidReservation::new();
                    match reservation.reserve(&[80]).as_slice() {
                        [(80, ReserveError::NotPermitted { pid: 80 })] => 0,
                        _ => 1,
                    }
                }
            };
            // SAFETY: _exit ends this forked child without running the
            // harness's code.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    match waitpid(child, None)? {
        WaitStatus::Exited(_, 0) => {}
        WaitStatus::Exited(_, 2) => bail!("could not unshare a user namespace"),
        other => bail!("reserving without capability was not NotPermitted: {other:?}"),
    }
    ensure!(!pid_in_use(80));
    Ok(())
}

#[test]
fn refuses_while_sigchld_is_ignored() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, sigchld_ignored_body)
}

fn sigchld_ignored_body() -> Result<()> {
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigIgn) }?;
    let mut reservation = PidReservation::new();
    let failures = reservation.reserve(&[60]);
    ensure!(
        failures == vec![(60, ReserveError::ChildrenAutoReaped { pid: 60 })],
        "{failures:?}"
    );
    ensure!(!pid_in_use(60) && reservation.held().is_empty());
    Ok(())
}

#[test]
fn a_placeholder_in_another_pid_namespace_is_refused_and_reaped() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::WithProc, wrong_namespace_body)
}

fn wrong_namespace_body() -> Result<()> {
    // SAFETY: this process (pid 1 of the test namespace) is single-threaded.
    let child = match unsafe { fork() }? {
        ForkResult::Child => {
            // From now on this process's children go into a new, nested pid
            // namespace, where set_tid picks the pid. That namespace has no
            // init yet, so only pid 1 can be asked for; the caller sees the
            // child under another pid.
            let code = match unshare(CloneFlags::CLONE_NEWPID) {
                Err(_) => 2,
                Ok(()) => {
                    let mut reservation = PidReservation::new();
                    match reservation.reserve(&[1]).as_slice() {
                        [(1, ReserveError::WrongNamespace { pid: 1, got })]
                            if *got > 1
                                && reservation.held().is_empty()
                                && matches!(is_live_child(*got), Ok(false)) =>
                        {
                            0
                        }
                        _ => 1,
                    }
                }
            };
            // SAFETY: _exit ends this forked child without running the
            // harness's code.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    match waitpid(child, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(_, 2) => bail!("could not unshare a nested pid namespace"),
        other => bail!("a placeholder in a nested pid namespace was not refused: {other:?}"),
    }
}

#[test]
fn reserves_in_a_pid_namespace_owned_by_a_user_namespace() -> Result<(), String> {
    in_new_pid_namespace(Namespaces::User, user_namespace_body)
}

fn user_namespace_body() -> Result<()> {
    let mut reservation = PidReservation::new();
    let failures = reservation.reserve(&[40, 41]);
    ensure!(failures.is_empty(), "{failures:?}");
    ensure!(is_live_child(40)? && is_live_child(41)?);
    reservation.release(&[40, 41])?;
    ensure!(!is_live_child(40)? && !is_live_child(41)?);
    ensure!(reservation.held().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------
// Helpers.

/// Which namespaces the test body runs in.
#[derive(Debug, Clone, Copy)]
enum Namespaces {
    /// A new pid and mount namespace with a procfs of its own at /proc
    /// (plus a user namespace when not root).
    WithProc,
    /// A new user and pid namespace, the pid namespace owned by the user
    /// namespace; no procfs.
    User,
}

/// Longest a test body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `body` as pid 1 of a new pid namespace, in a grandchild of this
/// process; returns its error message.
fn in_new_pid_namespace(namespaces: Namespaces, body: fn() -> Result<()>) -> Result<(), String> {
    let (rx, tx) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the test binary is multi-threaded; the child only allocates
    // (glibc's malloc is fork-safe), makes system calls and ends in _exit,
    // never taking a lock another harness thread might have held.
    let child = match unsafe { fork() } {
        Err(e) => return Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(rx);
            let code = namespace_parent(namespaces, &tx, body);
            // SAFETY: ends the forked child without returning to the harness.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(tx);
    let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
    // Everything was written before the writers exited; read what is there.
    let mut message = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = nix::unistd::read(rx.as_fd(), &mut buf) {
        message.extend_from_slice(&buf[..n]);
    }
    let message = String::from_utf8_lossy(&message).into_owned();
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(format!("{other:?}: {message}")),
    }
}

/// The child: unshares the namespaces, runs the grandchild, passes on its
/// outcome as the exit code.
fn namespace_parent(namespaces: Namespaces, tx: &OwnedFd, body: fn() -> Result<()>) -> i32 {
    let report = |text: &str| {
        let _ = nix::unistd::write(tx, text.as_bytes());
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let root = nix::unistd::geteuid().is_root();
    let flags = match namespaces {
        Namespaces::WithProc if root => CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS,
        Namespaces::WithProc => {
            CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS
        }
        Namespaces::User => CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID,
    };
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if let Err(e) = unshare(flags) {
        report(&format!("unshare({flags:?}): {e}"));
        return 3;
    }
    if flags.contains(CloneFlags::CLONE_NEWUSER) {
        // Map the ids, or nested user namespaces cannot be created.
        let maps = [
            ("/proc/self/uid_map", format!("0 {uid} 1")),
            ("/proc/self/setgroups", "deny".to_owned()),
            ("/proc/self/gid_map", format!("0 {gid} 1")),
        ];
        for (path, contents) in maps {
            if let Err(e) = fs::write(path, contents) {
                report(&format!("writing {path}: {e}"));
                return 3;
            }
        }
    }
    // SAFETY: this forked child is single-threaded.
    match unsafe { fork() } {
        Err(e) => {
            report(&format!("fork into the new pid namespace: {e}"));
            3
        }
        Ok(ForkResult::Child) => {
            let outcome = namespace_init(namespaces).and_then(|()| body());
            match outcome {
                Ok(()) => 0,
                Err(e) => {
                    report(&format!("{e:#}"));
                    1
                }
            }
        }
        Ok(ForkResult::Parent { child }) => {
            let deadline = Instant::now() + BODY_TIMEOUT;
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Ok(WaitStatus::StillAlive) => {
                        // SIGKILL from outside does end a namespace's init,
                        // and with it every process in the namespace.
                        let _ = kill(child, Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        report(&format!("timed out after {BODY_TIMEOUT:?}"));
                        return 4;
                    }
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Err(Errno::EINTR) => {}
                    other => {
                        report(&format!("test body ended: {other:?}"));
                        return 5;
                    }
                }
            }
        }
    }
}

/// Set-up in the grandchild, pid 1 of the new namespace.
fn namespace_init(namespaces: Namespaces) -> Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    ensure!(getpid().as_raw() == 1, "not pid 1 but {}", getpid());
    if let Namespaces::WithProc = namespaces {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making mounts private")?;
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .context("mounting a procfs for the new pid namespace")?;
    }
    Ok(())
}

/// Whether `pid` is a live child of this process: a placeholder still
/// running (not reaped, not a zombie).
fn is_live_child(pid: i32) -> Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => Ok(true),
        Err(Errno::ECHILD) => Ok(false),
        Ok(other) => bail!("child {pid} has ended: {other:?}"),
        Err(e) => bail!("waitid({pid}): {e}"),
    }
}

/// Forks a child that exits at once, reaps it, returns its pid.
fn fork_and_reap() -> Result<i32> {
    // SAFETY: the caller (pid 1 of a test namespace) is single-threaded;
    // the child only calls _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None)?;
            Ok(child.as_raw())
        }
    }
}

/// `/proc/<pid>/status`, waiting briefly for a just-created child to get
/// past its set-up.
fn proc_status(pid: i32) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        // Sleeping in pause() is the placeholder's final state.
        let settled = status_field(&status, "State").is_some_and(|s| s.starts_with('S'))
            && fs::read_dir(format!("/proc/{pid}/fd"))?.next().is_none();
        if settled || Instant::now() > deadline {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `name:` in a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}
