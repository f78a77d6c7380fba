//! The client's final report: one JSON object the lab parses and judges.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which traffic the client ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Numbered request/reply lines.
    Lines,
    /// An echoed byte stream.
    Bulk,
}

/// How a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakReason {
    /// The peer closed the connection.
    Eof,
    /// The connection was reset (ECONNRESET, or EPIPE on write).
    Reset,
    /// No reply data for the stall timeout while replies were outstanding
    /// (or the kernel gave up on the connection: ETIMEDOUT).
    Timeout,
    /// The replies broke the protocol's promises (see `Violation`).
    Violation,
    /// Any other failure.
    Error,
}

impl BreakReason {
    /// Classifies an I/O error from connecting, reading or writing.
    pub fn from_io_error(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Self::Reset,
            io::ErrorKind::UnexpectedEof => Self::Eof,
            io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Error,
        }
    }
}

/// The breakage that ended a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broken {
    /// What kind of breakage.
    pub reason: BreakReason,
    /// Human-readable detail (the error or violation message).
    pub detail: String,
    /// When it was noticed, seconds since the Unix epoch.
    pub at_unix: f64,
    /// When it was noticed, seconds since the run started.
    pub after_s: f64,
}

/// What the client saw, printed as one JSON object on stdout when it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// `lines` or `bulk`.
    pub mode: Mode,
    /// The address the client was told to connect to.
    pub target: String,
    /// When the client started, seconds since the Unix epoch.
    pub started_unix: f64,
    /// How long the run took, connecting included.
    pub duration_s: f64,
    /// Bytes of requests (lines) or of the stream (bulk) sent; the HELLO line is not counted.
    pub bytes_sent: u64,
    /// Bytes of replies (lines) or echo (bulk) verified.
    pub bytes_verified: u64,
    /// Lines sent (0 for bulk).
    pub lines_sent: u64,
    /// Lines whose reply was verified (0 for bulk).
    pub lines_verified: u64,
    /// Units sent but never verified: lines in line mode, bytes in bulk mode.
    pub lost: u64,
    /// Longest interval between two successive arrivals of reply data while
    /// something was outstanding.
    pub max_gap_s: f64,
    /// When that longest gap ended, seconds since the Unix epoch.
    pub max_gap_end_unix: Option<f64>,
    /// Why the connection broke, if it did.
    pub broken: Option<Broken>,
    /// Bulk: the DONE line was verified. Lines: stopped on request with every reply verified.
    pub completed: bool,
    /// Distinct kernel releases in replies, in order of first appearance.
    pub kernels_seen: Vec<String>,
    /// Distinct boot ids in replies, in order of first appearance.
    pub boot_ids_seen: Vec<String>,
    /// The service's line total in the first verified reply (line mode).
    pub state_first: Option<u64>,
    /// The service's line total in the last verified reply (line mode).
    pub state_last: Option<u64>,
}

/// Ties the monotonic clock used for intervals to wall-clock time for the
/// report's `*_unix` fields: one reading of each at the start of the run.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    start: Instant,
    start_unix: f64,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn start() -> Self {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        Self {
            start: Instant::now(),
            start_unix,
        }
    }

    /// The monotonic start of the run.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Wall-clock start of the run, seconds since the Unix epoch.
    pub fn started_unix(&self) -> f64 {
        self.start_unix
    }

    /// Seconds from the start of the run to `t`.
    pub fn after_s(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64()
    }

    /// `t` as seconds since the Unix epoch.
    pub fn unix(&self, t: Instant) -> f64 {
        self.start_unix + self.after_s(t)
    }

    /// A [`Broken`] noticed at `t`.
    pub fn broken(&self, reason: BreakReason, detail: impl Into<String>, t: Instant) -> Broken {
        Broken {
            reason,
            detail: detail.into(),
            at_unix: self.unix(t),
            after_s: self.after_s(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_json() {
        let report = ClientReport {
            mode: Mode::Lines,
            target: "127.0.0.1:7777".into(),
            started_unix: 1_700_000_000.25,
            duration_s: 12.5,
            bytes_sent: 1234,
            bytes_verified: 2345,
            lines_sent: 20,
            lines_verified: 19,
            lost: 1,
            max_gap_s: 3.75,
            max_gap_end_unix: Some(1_700_000_010.5),
            broken: Some(Broken {
                reason: BreakReason::Reset,
                detail: "connection reset by peer".into(),
                at_unix: 1_700_000_012.75,
                after_s: 12.5,
            }),
            completed: false,
            kernels_seen: vec!["6.1.0".into(), "6.12.0".into()],
            boot_ids_seen: vec!["a".into(), "b".into()],
            state_first: Some(1),
            state_last: Some(19),
        };
        let json = serde_json::to_string(&report).expect("serializes");
        assert!(!json.contains('\n'));
        assert!(json.contains(r#""mode":"lines""#));
        assert!(json.contains(r#""reason":"reset""#));
        let back: ClientReport = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, report);

        let bulk = ClientReport {
            mode: Mode::Bulk,
            broken: None,
            max_gap_end_unix: None,
            state_first: None,
            state_last: None,
            ..report
        };
        let json = serde_json::to_string(&bulk).expect("serializes");
        assert!(json.contains(r#""broken":null"#));
        assert!(json.contains(r#""mode":"bulk""#));
        assert_eq!(
            serde_json::from_str::<ClientReport>(&json).expect("parses"),
            bulk
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let kind = |k| BreakReason::from_io_error(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::ConnectionReset), BreakReason::Reset);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), BreakReason::Reset);
        assert_eq!(kind(io::ErrorKind::TimedOut), BreakReason::Timeout);
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), BreakReason::Error);
    }

    #[test]
    fn wall_clock_maps_instants() {
        let c = WallClock::start();
        let t = c.started() + Duration::from_millis(1500);
        assert!((c.after_s(t) - 1.5).abs() < 1e-9);
        assert!((c.unix(t) - c.started_unix() - 1.5).abs() < 1e-6);
        let b = c.broken(BreakReason::Eof, "eof", t);
        assert_eq!(b.reason, BreakReason::Eof);
        assert!((b.after_s - 1.5).abs() < 1e-9);
    }
}
