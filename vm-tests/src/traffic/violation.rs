//! What the verifiers report when a stream is not intact.

/// A broken promise found in the replies: something lost, duplicated,
/// corrupted, invented, or state that did not carry on. Each variant's message
/// says which byte or line, so a failed lab run points at the evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Corrupt reply at seq N: the reply came in order but its payload is not
    /// the one that was sent.
    #[error("corrupt reply at seq {seq}: payload {got:?}, expected {expected:?}")]
    CorruptPayload {
        /// Sequence number of the reply.
        seq: u64,
        /// The payload that was sent.
        expected: String,
        /// The payload that came back.
        got: String,
    },
    /// Unexpected seq (expected N got M): a reply was lost (M > N) or
    /// duplicated or reordered (M < N).
    #[error(
        "unexpected seq (expected {expected} got {got}): a reply was lost, duplicated or reordered"
    )]
    UnexpectedSeq {
        /// The next sequence number due.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// Reply for seq N which was never sent.
    #[error("reply for seq {seq} which was never sent ({sent} lines sent so far)")]
    UnsentSeq {
        /// Sequence number of the reply.
        seq: u64,
        /// How many lines had been sent.
        sent: u64,
    },
    /// State counter went backwards: the service's line count is lower than
    /// in an earlier reply, so its in-memory state did not carry on.
    #[error("state counter went backwards at seq {seq}: total {got} after {previous}")]
    CounterWentBackwards {
        /// Sequence number of the reply.
        seq: u64,
        /// Total in the previous reply.
        previous: u64,
        /// Total in this reply.
        got: u64,
    },
    /// State counter did not increase: the service answered a line without
    /// counting it.
    #[error("state counter did not increase at seq {seq}: total still {total}")]
    CounterDidNotIncrease {
        /// Sequence number of the reply.
        seq: u64,
        /// The total that did not move (0 in a first reply means no count at all).
        total: u64,
    },
    /// Malformed line: not what the protocol allows at this point.
    #[error("malformed line {line:?}: {reason}")]
    MalformedLine {
        /// The line (shortened, lossy UTF-8).
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Line too long: more bytes than any valid line without a newline.
    #[error("line longer than {limit} bytes without a newline")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// The service reported an error (an `ERR` line) and closed.
    #[error("service reported an error: {reason}")]
    ServiceError {
        /// The service's reason.
        reason: String,
    },
    /// Echo byte mismatch at offset X: the echoed stream differs from what was sent.
    #[error("echo byte mismatch at offset {offset}: expected {expected:#04x}, got {got:#04x}")]
    EchoMismatch {
        /// Offset in the stream of the first differing byte.
        offset: u64,
        /// The byte that was sent.
        expected: u8,
        /// The byte that came back.
        got: u8,
    },
    /// Bytes beyond what was sent: more echo came back than had been sent.
    #[error("bytes beyond what was sent: echo reached {received} bytes but only {sent} were sent")]
    BeyondSent {
        /// Bytes sent when the excess arrived.
        sent: u64,
        /// Bytes of echo received, counting the excess.
        received: u64,
    },
    /// Bad DONE line: the line after the echo is not `DONE <bytes> <crc32>`.
    #[error("bad DONE line {line:?}: {reason}")]
    BadDone {
        /// The line (shortened, lossy UTF-8).
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// DONE count mismatch: the service counted a different number of bytes.
    #[error("DONE reports {got} bytes but the stream had {expected}")]
    DoneCountMismatch {
        /// Bytes in the stream.
        expected: u64,
        /// Bytes the service reported.
        got: u64,
    },
    /// CRC mismatch: the service's crc32 of what it read differs from the
    /// crc32 of the stream.
    #[error("crc mismatch: DONE reports {got:08x}, the stream's crc32 is {expected:08x}")]
    CrcMismatch {
        /// crc32 of the stream.
        expected: u32,
        /// crc32 the service reported.
        got: u32,
    },
    /// Bytes after DONE: the service sent something after its last line.
    #[error("{len} unexpected bytes after the DONE line")]
    AfterDone {
        /// How many bytes.
        len: usize,
    },
}
