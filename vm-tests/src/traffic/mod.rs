//! The wire protocol between the lab's traffic client (`lab-client`, on the
//! host) and its test service (`lab-service`, inside the guest), and the logic
//! that verifies every byte that comes back.
//!
//! Why this exists: the lab has to prove that a TCP connection survives a
//! checkpoint, a kexec into another kernel and a restore with no byte lost,
//! duplicated or corrupted, and that the service's in-memory state carries on.
//! That proof is only as good as the checker, so everything that decides
//! "this stream is intact" lives here, free of sockets, threads and clocks
//! (callers pass bytes and `Instant`s in), and is unit tested with arbitrary
//! chunk boundaries and deliberately broken streams. The binaries only move
//! bytes and report.
//!
//! The protocol, all text lines ending in `'\n'`:
//!
//! * The client opens with one line: `HELLO lines`, `HELLO bulk <total_bytes> <seed>`
//!   or `STATE`.
//! * Line mode: the client sends `L <seq> <payload>` for seq = 0, 1, 2, ... with
//!   payload = [`line_payload`]`(seq)`; the service answers each with
//!   `R <seq> <total> <kernel_release> <boot_id> <payload>` where `total` is its
//!   global count of lines received since it started (over all connections).
//!   A malformed line gets `ERR <reason>` and the connection is closed.
//! * Bulk mode: the client sends exactly `total_bytes` bytes of
//!   [`BulkStream`]`(seed)`; the service echoes every byte as it reads it and
//!   then sends `DONE <total_bytes> <crc32 as 8 lowercase hex digits>`.
//! * `STATE`: the service answers `STATE <total> <kernel_release> <boot_id> <pid> <started_unix_secs>`
//!   and closes.

mod bulk_verifier;
mod gap;
mod line_verifier;
mod payload;
mod protocol;
mod report;
mod violation;

pub use bulk_verifier::BulkVerifier;
pub use gap::GapTracker;
pub use line_verifier::LineVerifier;
pub use payload::{BulkStream, LINE_PAYLOAD_LEN, line_payload, splitmix64_at};
pub use protocol::{
    DEFAULT_LISTEN, Hello, LineRead, LineReply, MAX_LINE_LEN, ParseError, StateReply, done_line,
    error_line, line_request, parse_done, parse_line_request, read_bounded_line, token,
};
pub use report::{BreakReason, Broken, ClientReport, Mode, WallClock};
pub use violation::Violation;
