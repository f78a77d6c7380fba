//! Errors of the CRIU RPC client.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::rpc::CriuReqType;

/// Everything that can go wrong talking to `criu swrk`.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// The CRIU binary does not exist (or is not on `PATH`).
    #[error("CRIU binary {} not found (is criu installed?)", .binary.display())]
    BinaryNotFound {
        /// The path or name that was executed.
        binary: PathBuf,
    },

    /// Starting `criu swrk` failed for another reason.
    #[error("cannot start `{} swrk`: {source}", .binary.display())]
    Spawn {
        /// The path or name that was executed.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// The options cannot be sent to CRIU as they are.
    #[error("invalid CRIU options: {0}")]
    InvalidOptions(String),

    /// A system call on the RPC socket or the child failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },

    /// CRIU closed the socket (normally: exited) before its final response.
    #[error("criu exited before answering the {} request ({})", .request.as_str_name(), ExitDisplay(.status))]
    Closed {
        /// The request being served.
        request: CriuReqType,
        /// How `criu swrk` ended, when known.
        status: Option<ExitStatus>,
    },

    /// No final response within the deadline; the CRIU child was killed.
    #[error("criu did not answer the {} request within {timeout:?}; it was killed", .request.as_str_name())]
    Timeout {
        /// The request being served.
        request: CriuReqType,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// CRIU answered with a response of another type than the request.
    #[error("criu answered the {} request with a response of type {}", .request.as_str_name(), TypeDisplay(*.got))]
    UnexpectedResponse {
        /// The request being served.
        request: CriuReqType,
        /// The raw type of the response.
        got: i32,
    },

    /// CRIU reported `success = false`.
    #[error(
        "criu {} failed{}{}{}",
        .request.as_str_name(),
        .cr_errno.map(|e| format!(" (errno {e}: {})", nix::errno::Errno::from_raw(e).desc())).unwrap_or_default(),
        .cr_errmsg.as_deref().map(|m| format!(": {}", m.trim_end())).unwrap_or_default(),
        .log_file.as_ref().map(|p| format!("; see {}", p.display())).unwrap_or_default()
    )]
    Failed {
        /// The request that failed.
        request: CriuReqType,
        /// CRIU's `cr_errno`, if it set one.
        cr_errno: Option<i32>,
        /// CRIU's first logged error message, if any.
        cr_errmsg: Option<String>,
        /// Where CRIU's log file for this request should be.
        log_file: Option<PathBuf>,
    },

    /// The notification callback failed; CRIU was told the hook failed and
    /// then also failed (`criu` holds its error, if it reported one).
    #[error("the {script:?} notification handler failed: {source:#}{}", .criu.as_ref().map(|e| format!("; then {e}")).unwrap_or_default())]
    NotifyFailed {
        /// The hook name CRIU sent.
        script: String,
        /// The callback's error.
        source: anyhow::Error,
        /// How CRIU's request ended afterwards.
        criu: Option<Box<CriuError>>,
    },

    /// A packet could not be decoded as a `criu_resp`.
    #[error("malformed response from criu: {0}")]
    Decode(#[from] prost::DecodeError),

    /// A response decoded but violates the protocol (e.g. a NOTIFY without
    /// its `notify` part).
    #[error("protocol violation by criu: {0}")]
    Protocol(String),
}

impl CriuError {
    /// The request type the error belongs to, when there is one.
    pub fn request(&self) -> Option<CriuReqType> {
        match self {
            Self::Closed { request, .. }
            | Self::Timeout { request, .. }
            | Self::UnexpectedResponse { request, .. }
            | Self::Failed { request, .. } => Some(*request),
            Self::NotifyFailed { criu, .. } => criu.as_ref().and_then(|e| e.request()),
            _ => None,
        }
    }
}

struct ExitDisplay<'a>(&'a Option<ExitStatus>);

impl fmt::Display for ExitDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(status) => write!(f, "{status}"),
            None => f.write_str("exit status unknown"),
        }
    }
}

struct TypeDisplay(i32);

impl fmt::Display for TypeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match CriuReqType::try_from(self.0) {
            Ok(t) => f.write_str(t.as_str_name()),
            Err(_) => write!(f, "{} (unknown)", self.0),
        }
    }
}
