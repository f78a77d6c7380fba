//! High-level CRIU calls, one `criu swrk` per call.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::CriuError;
use super::options::{CheckOptions, DumpOptions, RestoreOptions};
use super::protocol::{Notification, NotifyFn};
use super::rpc::{CriuReq, CriuReqType, CriuResp, CriuVersion};
use super::swrk::Swrk;

/// Result of a successful restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Pid of the restored root task. With `rst_sibling` it is a child of
    /// this process, which must reap it; RPC cannot write a pid file, so
    /// callers that need one write it from this.
    pub pid: i32,
}

/// How to run CRIU: which binary, and how long a request may take.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
    timeout: Option<Duration>,
    exit_grace: Duration,
}

impl Default for Criu {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("criu"),
            timeout: Some(Duration::from_secs(300)),
            exit_grace: Duration::from_secs(10),
        }
    }
}

impl Criu {
    /// `criu` from `PATH`, a 300 s deadline per request, 10 s for CRIU to
    /// exit after answering.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the CRIU binary at `binary` (a bare name is searched in `PATH`).
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Sets the deadline for each request, from sending it to the final
    /// response, notification callbacks included; `None` waits forever. When
    /// it passes, CRIU is killed.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long CRIU may take to exit after its final response before
    /// it is killed.
    pub fn with_exit_grace(mut self, grace: Duration) -> Self {
        self.exit_grace = grace;
        self
    }

    /// The CRIU binary used.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Runs one request in a fresh `criu swrk`, passing it the fds in
    /// `inherit` under their numbers, and returns the successful final
    /// response. The worker is reaped in every case.
    pub fn call(
        &self,
        request: &CriuReq,
        inherit: &[BorrowedFd<'_>],
        notify: &mut NotifyFn<'_>,
    ) -> Result<CriuResp, CriuError> {
        let mut swrk = Swrk::spawn(&self.binary, inherit)?;
        let result = swrk.request(request, self.timeout, notify);
        if swrk.pid().is_some() {
            match swrk.finish(self.exit_grace) {
                Ok(status) if !status.success() && result.is_ok() => {
                    tracing::warn!(%status, "criu swrk answered successfully but exited with failure");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaping criu swrk"),
            }
        }
        result
    }

    /// Asks CRIU for its version.
    pub fn version(&self) -> Result<CriuVersion, CriuError> {
        let request = CriuReq {
            r#type: CriuReqType::Version as i32,
            ..CriuReq::default()
        };
        let response = self.call(&request, &[], &mut ignore_notifications)?;
        response
            .version
            .ok_or_else(|| CriuError::Protocol("VERSION response without version".into()))
    }

    /// Runs CRIU's kernel feature check (`criu check`).
    pub fn check(&self, options: &CheckOptions<'_>) -> Result<(), CriuError> {
        self.call(&options.to_request()?, &[], &mut ignore_notifications)
            .map(drop)
    }

    /// Dumps a process tree; `notify` answers CRIU's hooks (see
    /// [`super::scripts`]).
    pub fn dump(
        &self,
        options: &DumpOptions<'_>,
        notify: &mut NotifyFn<'_>,
    ) -> Result<(), CriuError> {
        self.call(&options.to_request()?, &[], notify).map(drop)
    }

    /// Restores a process tree, passing the `inherit_fds` to CRIU.
    pub fn restore(
        &self,
        options: &RestoreOptions<'_>,
        notify: &mut NotifyFn<'_>,
    ) -> Result<Restored, CriuError> {
        let response = self.call(&options.to_request()?, &options.fds_to_pass(), notify)?;
        match response.restore {
            Some(r) if r.pid > 0 => Ok(Restored { pid: r.pid }),
            Some(r) => Err(CriuError::Protocol(format!(
                "RESTORE succeeded with invalid pid {}",
                r.pid
            ))),
            None => Err(CriuError::Protocol(
                "RESTORE response without restore part".into(),
            )),
        }
    }
}

fn ignore_notifications(n: Notification<'_>) -> anyhow::Result<()> {
    tracing::debug!(script = n.script, "ignoring criu notification");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn builder_sets_fields() {
        let c = Criu::new()
            .with_binary("/usr/sbin/criu")
            .with_timeout(None)
            .with_exit_grace(Duration::from_secs(1));
        assert_eq!(c.binary(), Path::new("/usr/sbin/criu"));
        assert_eq!(c.timeout(), None);
        assert_eq!(Criu::new().binary(), Path::new("criu"));
        assert_eq!(Criu::new().timeout(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn missing_binary_surfaces_from_high_level_calls() {
        let err = Criu::new()
            .with_binary("/nonexistent/criu")
            .version()
            .expect_err("must fail");
        assert!(
            matches!(err, CriuError::BinaryNotFound { ref binary } if binary == Path::new("/nonexistent/criu"))
        );
    }

    #[test]
    fn invalid_options_fail_before_spawning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = fs::File::open(dir.path()).expect("open");
        use std::os::fd::AsFd;
        let opts = DumpOptions::new(images.as_fd(), 0);
        // The binary does not exist: reaching it would give BinaryNotFound.
        let err = Criu::new()
            .with_binary("/nonexistent/criu")
            .dump(&opts, &mut |_| Ok(()))
            .expect_err("must fail");
        assert!(matches!(err, CriuError::InvalidOptions(_)));
    }

    #[test]
    fn worker_dying_mid_request_is_reported_with_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("criu");
        fs::write(&path, "#!/bin/sh\nkill -9 $$\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = Criu::new()
            .with_binary(&path)
            .with_timeout(Some(Duration::from_secs(20)))
            .version()
            .expect_err("must fail");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                CriuError::Closed {
                    status: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(text.contains("signal: 9"), "{text}");
    }
}
