//! One `criu swrk` child process and the socketpair to it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::error::CriuError;
use super::protocol::{NotifyFn, exchange};
use super::rpc::{CriuOpts, CriuReq, CriuResp};
use super::transport::{Transport, recv_packet, send_packet};

/// How long to wait for CRIU to exit once it closed the socket, before it is
/// killed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serialises the window in which fds meant for `criu swrk` have `FD_CLOEXEC`
/// cleared.
///
/// Only the CRIU child should inherit its socket end and the `inherit_fd`
/// fds. They are made inheritable just before `spawn` and made close-on-exec
/// again (or closed) right after. A process spawned concurrently by another
/// thread during that window would inherit them too; this lock rules that out
/// for spawns through this module, not for unrelated `fork`/`exec` elsewhere
/// in the process. The consequence of such a leak is bounded: the other
/// child holds a copy of the socket, so end-of-stream might not be seen when
/// CRIU dies — which is why receiving also polls the child's liveness.
/// (The alternative, `dup2` in a `pre_exec` hook, needs `unsafe`.)
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// A running `criu swrk <fd>` worker.
///
/// [`Swrk::request`] sends one request and drives it to the final response;
/// CRIU exits after answering (no `keep_open`), so [`Swrk::finish`] then
/// reaps it. Dropping a `Swrk` whose child still runs kills and reaps it.
#[derive(Debug)]
pub struct Swrk {
    binary: PathBuf,
    child: Option<Child>,
    sock: Option<OwnedFd>,
}

impl Swrk {
    /// Starts `binary swrk <fd>` (`binary` may be a bare name searched in
    /// `PATH`). The fds in `inherit` are passed to CRIU under their current
    /// numbers, for `inherit_fd` entries; they must be above 2 (0 is
    /// replaced by `/dev/null`, 1 and 2 are shared with this process).
    pub fn spawn(binary: impl AsRef<Path>, inherit: &[BorrowedFd<'_>]) -> Result<Self, CriuError> {
        let binary = binary.as_ref().to_path_buf();
        if let Some(fd) = inherit.iter().find(|fd| fd.as_raw_fd() <= 2) {
            return Err(CriuError::InvalidOptions(format!(
                "fd {} cannot be passed to criu: fds 0-2 are its stdio",
                fd.as_raw_fd()
            )));
        }

        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_error("creating the criu socketpair", e.into()))?;
        // If this process runs without stdio, the socket could land on 0-2,
        // where the child's stdio setup would clobber it; `try_clone` uses
        // F_DUPFD_CLOEXEC with a minimum of 3.
        let theirs = if theirs.as_raw_fd() <= 2 {
            theirs
                .try_clone()
                .map_err(|e| io_error("moving the criu socket above stdio", e))?
        } else {
            theirs
        };

        let spawned = {
            let _guard = SPAWN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            spawn_locked(&binary, theirs.as_fd(), inherit)
        };
        // Our copy of the child's end must go, or end-of-stream would never
        // be seen when CRIU exits.
        drop(theirs);
        let child = spawned?;
        tracing::debug!(pid = child.id(), binary = %binary.display(), "started criu swrk");
        Ok(Self {
            binary,
            child: Some(child),
            sock: Some(ours),
        })
    }

    /// The CRIU binary this worker was started from.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The worker's pid, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `request` and drives the exchange to its final response (see
    /// [`exchange`]). On timeout the worker is killed and reaped; when CRIU
    /// closes the socket early its exit status is part of the error.
    pub fn request(
        &mut self,
        request: &CriuReq,
        timeout: Option<Duration>,
        notify: &mut NotifyFn<'_>,
    ) -> Result<CriuResp, CriuError> {
        let log_file = log_file_path(request.opts.as_ref());
        let (Some(sock), Some(child)) = (self.sock.as_ref(), self.child.as_mut()) else {
            return Err(CriuError::Io {
                context: "sending to criu",
                source: io::Error::new(
                    io::ErrorKind::NotConnected,
                    "criu swrk is no longer running",
                ),
            });
        };
        let mut transport = ChildTransport {
            sock: sock.as_fd(),
            child,
            reaped: None,
            killed: false,
        };
        let result = exchange(
            &mut transport,
            request,
            timeout,
            notify,
            log_file.as_deref(),
        );
        if transport.killed || transport.reaped.is_some() {
            self.child = None;
        }
        result
    }

    /// Closes the socket and waits up to `grace` for CRIU to exit, killing
    /// it after that. Returns its exit status.
    pub fn finish(mut self, grace: Duration) -> Result<ExitStatus, CriuError> {
        self.sock = None;
        let Some(mut child) = self.child.take() else {
            return Err(CriuError::Io {
                context: "waiting for criu",
                source: io::Error::new(io::ErrorKind::NotFound, "criu swrk was already reaped"),
            });
        };
        match wait_within(&mut child, grace) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                tracing::warn!(
                    pid = child.id(),
                    "criu swrk did not exit after answering; killing it"
                );
                kill_and_reap(&mut child).map_err(|e| io_error("killing criu", e))
            }
            Err(e) => Err(io_error("waiting for criu", e)),
        }
    }
}

impl Drop for Swrk {
    fn drop(&mut self) {
        self.sock = None;
        if let Some(mut child) = self.child.take() {
            match child.try_wait() {
                Ok(Some(_)) => {}
                _ => {
                    tracing::warn!(pid = child.id(), "killing criu swrk that is still running");
                    if let Err(e) = kill_and_reap(&mut child) {
                        tracing::error!(pid = child.id(), error = %e, "cannot kill criu swrk");
                    }
                }
            }
        }
    }
}

/// The part of `spawn` that runs under [`SPAWN_LOCK`].
fn spawn_locked(
    binary: &Path,
    theirs: BorrowedFd<'_>,
    inherit: &[BorrowedFd<'_>],
) -> Result<Child, CriuError> {
    set_cloexec(theirs, false).map_err(|e| io_error("passing the socket to criu", e))?;
    let mut cleared = Vec::new();
    let mut prepared = Ok(());
    for &fd in inherit {
        match get_cloexec(fd) {
            Ok(false) => {}
            Ok(true) => match set_cloexec(fd, false) {
                Ok(()) => cleared.push(fd),
                Err(e) => {
                    prepared = Err(e);
                    break;
                }
            },
            Err(e) => {
                prepared = Err(e);
                break;
            }
        }
    }
    let spawned = match prepared {
        Ok(()) => Command::new(binary)
            .arg("swrk")
            .arg(theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => CriuError::BinaryNotFound {
                    binary: binary.to_path_buf(),
                },
                _ => CriuError::Spawn {
                    binary: binary.to_path_buf(),
                    source,
                },
            }),
        Err(e) => Err(io_error("passing an inherited fd to criu", e)),
    };
    for fd in cleared {
        if let Err(e) = set_cloexec(fd, true) {
            tracing::warn!(fd = fd.as_raw_fd(), error = %e, "cannot restore FD_CLOEXEC");
        }
    }
    spawned
}

fn get_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = fcntl(fd, FcntlArg::F_GETFD)?;
    Ok(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC))
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

fn io_error(context: &'static str, source: io::Error) -> CriuError {
    CriuError::Io { context, source }
}

/// Polls `child` until it exits or `grace` passes.
fn wait_within(child: &mut Child, grace: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn kill_and_reap(child: &mut Child) -> io::Result<ExitStatus> {
    // `kill` fails with InvalidInput only if the child was already reaped,
    // and `wait` then returns the cached status.
    if let Err(e) = child.kill() {
        tracing::debug!(error = %e, "kill of criu swrk failed");
    }
    child.wait()
}

/// Where CRIU will write its log for a request with `opts`: `log_file` (or
/// CRIU's default `criu.log`) in the work dir, which defaults to the images
/// dir. Directory fds are resolved through `/proc/self/fd`.
pub(crate) fn log_file_path(opts: Option<&CriuOpts>) -> Option<PathBuf> {
    let opts = opts?;
    let name = match (&opts.log_file, opts.log_to_stderr) {
        (Some(name), _) => name.as_str(),
        (None, Some(true)) => return None,
        (None, _) => "criu.log",
    };
    let dir = match opts.work_dir_fd {
        Some(fd) => resolve_fd(fd),
        None if opts.images_dir_fd >= 0 => resolve_fd(opts.images_dir_fd),
        None => opts.images_dir.as_ref().map(PathBuf::from),
    };
    Some(match dir {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    })
}

fn resolve_fd(fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// The transport of one request: the socket plus the child, so a dead child
/// is noticed even without end-of-stream, killed on timeout, and its exit
/// status reported.
struct ChildTransport<'a> {
    sock: BorrowedFd<'a>,
    child: &'a mut Child,
    reaped: Option<ExitStatus>,
    killed: bool,
}

impl Transport for ChildTransport<'_> {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        send_packet(self.sock, packet)
    }

    fn recv(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        let child = &mut *self.child;
        let reaped = &mut self.reaped;
        recv_packet(self.sock, deadline, || match child.try_wait() {
            Ok(Some(status)) => {
                *reaped = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        })
    }

    fn peer_exit_status(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            match wait_within(self.child, CLOSE_GRACE) {
                Ok(Some(status)) => self.reaped = Some(status),
                Ok(None) => {
                    tracing::warn!(
                        pid = self.child.id(),
                        "criu closed its socket but did not exit; killing it"
                    );
                    self.killed = true;
                    self.reaped = kill_and_reap(self.child).ok();
                }
                Err(e) => tracing::warn!(error = %e, "cannot wait for criu"),
            }
        }
        self.reaped
    }

    fn abort(&mut self) {
        tracing::warn!(
            pid = self.child.id(),
            "criu request timed out; killing criu swrk"
        );
        self.killed = true;
        match kill_and_reap(self.child) {
            Ok(status) => self.reaped = Some(status),
            Err(e) => tracing::error!(error = %e, "cannot kill criu swrk"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::protocol::Notification;
    use crate::criu::rpc::CriuReqType;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn no_notify() -> impl FnMut(Notification<'_>) -> anyhow::Result<()> {
        |_| Ok(())
    }

    /// Writes an executable shell script standing in for `criu`.
    fn fake_criu(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-criu");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn version_request() -> CriuReq {
        CriuReq {
            r#type: CriuReqType::Version as i32,
            ..CriuReq::default()
        }
    }

    #[test]
    fn missing_binary_is_named() {
        let err = Swrk::spawn("/nonexistent/dir/criu", &[]).expect_err("must fail");
        assert!(matches!(err, CriuError::BinaryNotFound { .. }));
        assert_eq!(
            err.to_string(),
            "CRIU binary /nonexistent/dir/criu not found (is criu installed?)"
        );
    }

    #[test]
    fn stdio_fds_cannot_be_inherited() {
        let stdin = std::io::stdin();
        let err = Swrk::spawn("/bin/true", &[stdin.as_fd()]).expect_err("must fail");
        assert!(matches!(err, CriuError::InvalidOptions(_)));
    }

    #[test]
    fn early_exit_reports_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let criu = fake_criu(dir.path(), "exit 3");
        let mut swrk = Swrk::spawn(&criu, &[]).expect("spawn");
        let err = swrk
            .request(
                &version_request(),
                Some(Duration::from_secs(20)),
                &mut no_notify(),
            )
            .expect_err("must fail");
        match err {
            CriuError::Closed {
                request: CriuReqType::Version,
                status: Some(status),
            } => assert_eq!(status.code(), Some(3)),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(swrk.pid().is_none(), "child must be reaped");
    }

    #[test]
    fn timeout_kills_the_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let criu = fake_criu(dir.path(), "exec sleep 60");
        let mut swrk = Swrk::spawn(&criu, &[]).expect("spawn");
        let pid = swrk.pid().expect("running");
        let started = Instant::now();
        let err = swrk
            .request(
                &version_request(),
                Some(Duration::from_millis(300)),
                &mut no_notify(),
            )
            .expect_err("must fail");
        assert!(matches!(err, CriuError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(swrk.pid().is_none());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker must be gone"
        );
    }

    #[test]
    fn drop_kills_a_running_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let criu = fake_criu(dir.path(), "exec sleep 60");
        let swrk = Swrk::spawn(&criu, &[]).expect("spawn");
        let pid = swrk.pid().expect("running");
        drop(swrk);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker must be reaped"
        );
    }

    /// The worker sees the inherited fd under its number, and no fd of it is
    /// our end of the socketpair.
    #[test]
    fn only_intended_fds_are_inherited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("fds");
        let criu = fake_criu(
            dir.path(),
            &format!(
                "[ \"$1\" = swrk ] || exit 10\n\
                 for f in /proc/$$/fd/*; do echo \"${{f##*/}} $(readlink $f)\"; done > {report}\n\
                 exit 0",
                report = report.display()
            ),
        );
        let extra = fs::File::open(dir.path()).expect("open dir");
        let extra_fd = extra.as_fd();
        assert!(
            get_cloexec(extra_fd).expect("flags"),
            "std opens with O_CLOEXEC"
        );
        let swrk = Swrk::spawn(&criu, &[extra_fd]).expect("spawn");
        let ours = swrk.sock.as_ref().expect("socket").as_raw_fd();
        let ours = fs::read_link(format!("/proc/self/fd/{ours}")).expect("readlink");
        let status = swrk.finish(Duration::from_secs(20)).expect("exit");
        assert!(status.success(), "{status}");
        assert!(get_cloexec(extra_fd).expect("flags"), "FD_CLOEXEC restored");

        let listing = fs::read_to_string(&report).expect("report");
        let fds: Vec<(i32, PathBuf)> = listing
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(fd, target)| (fd.parse().expect("fd number"), PathBuf::from(target)))
            .collect();
        let real = fs::canonicalize(dir.path()).expect("canonical");
        assert!(
            fds.contains(&(extra_fd.as_raw_fd(), real)),
            "inherited fd missing: {listing}"
        );
        assert!(
            fds.iter().all(|(_, target)| *target != ours),
            "our end leaked: {listing}"
        );
    }

    #[test]
    fn the_worker_gets_its_socket_number_as_argument() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fake that checks argv[2] names an open socket, then exits 0.
        let criu = fake_criu(
            dir.path(),
            "case \"$(readlink /proc/$$/fd/$2)\" in socket:*) exit 0;; *) exit 11;; esac",
        );
        let swrk = Swrk::spawn(&criu, &[]).expect("spawn");
        let status = swrk.finish(Duration::from_secs(20)).expect("exit");
        assert_eq!(status.code(), Some(0));
    }

    #[test]
    fn log_path_follows_work_dir_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = fs::File::open(dir.path()).expect("open");
        let real = fs::canonicalize(dir.path()).expect("canonical");
        let mut opts = CriuOpts {
            images_dir_fd: images.as_raw_fd(),
            ..CriuOpts::default()
        };
        assert_eq!(log_file_path(Some(&opts)), Some(real.join("criu.log")));
        opts.log_file = Some("dump.log".into());
        assert_eq!(log_file_path(Some(&opts)), Some(real.join("dump.log")));
        opts.work_dir_fd = Some(-5);
        assert_eq!(log_file_path(Some(&opts)), Some(PathBuf::from("dump.log")));
        opts.log_file = None;
        opts.log_to_stderr = Some(true);
        assert_eq!(log_file_path(Some(&opts)), None);
        assert_eq!(log_file_path(None), None);
    }
}
