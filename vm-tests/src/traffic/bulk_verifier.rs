//! Verification of a bulk echo and its DONE line.

use std::fmt;

use super::protocol::{parse_done, shorten};
use super::{BulkStream, Violation};

/// Longest DONE line accepted ("DONE " + 20 digits + " " + 8 hex digits + slack).
const MAX_DONE_LEN: usize = 64;

/// Checks a bulk echo as it arrives, in chunks of any size: every byte must
/// equal the [`BulkStream`] byte at its offset and must have been sent already;
/// after `total_bytes` bytes comes exactly one `DONE <total_bytes> <crc32>`
/// line whose count and crc32 match the stream, and nothing after it. After a
/// violation the verifier keeps answering with that violation.
pub struct BulkVerifier {
    total: u64,
    expected: BulkStream,
    verified: u64,
    sent: u64,
    crc: crc32fast::Hasher,
    scratch: Vec<u8>,
    done_line: Vec<u8>,
    done: bool,
    failed: Option<Violation>,
}

impl fmt::Debug for BulkVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkVerifier")
            .field("total", &self.total)
            .field("seed", &self.expected.seed())
            .field("verified", &self.verified)
            .field("sent", &self.sent)
            .field("done", &self.done)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl BulkVerifier {
    /// A verifier for a stream of `total_bytes` bytes of `BulkStream::new(seed)`.
    pub fn new(total_bytes: u64, seed: u64) -> Self {
        Self {
            total: total_bytes,
            expected: BulkStream::new(seed),
            verified: 0,
            sent: 0,
            crc: crc32fast::Hasher::new(),
            scratch: Vec::new(),
            done_line: Vec::new(),
            done: false,
            failed: None,
        }
    }

    /// Records that the first `bytes_sent` bytes of the stream have been sent
    /// (a running total, not an increment).
    pub fn sent(&mut self, bytes_sent: u64) {
        self.sent = self.sent.max(bytes_sent.min(self.total));
    }

    /// Checks the next `data` received; returns how many echo bytes it verified.
    pub fn feed(&mut self, data: &[u8]) -> Result<u64, Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        let before = self.verified;
        let result = self.feed_inner(data).map(|()| self.verified - before);
        if let Err(v) = &result {
            self.failed = Some(v.clone());
        }
        result
    }

    fn feed_inner(&mut self, data: &[u8]) -> Result<(), Violation> {
        let mut rest = data;
        if self.verified < self.total && !rest.is_empty() {
            let want = usize::try_from(self.total - self.verified)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let (echo, tail) = rest.split_at(want);
            let allowed = usize::try_from(self.sent - self.verified)
                .unwrap_or(usize::MAX)
                .min(echo.len());
            let (within, beyond) = echo.split_at(allowed);
            self.check_echo(within)?;
            if !beyond.is_empty() {
                return Err(Violation::BeyondSent {
                    sent: self.sent,
                    received: self.verified + beyond.len() as u64,
                });
            }
            rest = tail;
        }
        if rest.is_empty() {
            return Ok(());
        }
        if self.done {
            return Err(Violation::AfterDone { len: rest.len() });
        }
        let Some(pos) = rest.iter().position(|&b| b == b'\n') else {
            self.done_line.extend_from_slice(rest);
            if self.done_line.len() > MAX_DONE_LEN {
                return Err(self.bad_done(format!("no newline within {MAX_DONE_LEN} bytes")));
            }
            return Ok(());
        };
        self.done_line.extend_from_slice(&rest[..pos]);
        let after = rest.len() - pos - 1;
        let line = String::from_utf8(self.done_line.clone())
            .map_err(|_| self.bad_done("not UTF-8".into()))?;
        let (count, crc) = parse_done(&line).map_err(|e| self.bad_done(e.0))?;
        if count != self.total {
            return Err(Violation::DoneCountMismatch {
                expected: self.total,
                got: count,
            });
        }
        let expected = self.crc.clone().finalize();
        if crc != expected {
            return Err(Violation::CrcMismatch { expected, got: crc });
        }
        self.done = true;
        if after > 0 {
            return Err(Violation::AfterDone { len: after });
        }
        Ok(())
    }

    fn check_echo(&mut self, echo: &[u8]) -> Result<(), Violation> {
        self.scratch.resize(echo.len(), 0);
        self.expected.fill(&mut self.scratch);
        let mismatch = echo.iter().zip(&self.scratch).position(|(a, b)| a != b);
        let good = mismatch.unwrap_or(echo.len());
        self.crc.update(&echo[..good]);
        self.verified += good as u64;
        match mismatch {
            None => Ok(()),
            Some(i) => Err(Violation::EchoMismatch {
                offset: self.verified,
                expected: self.scratch[i],
                got: echo[i],
            }),
        }
    }

    fn bad_done(&self, reason: String) -> Violation {
        Violation::BadDone {
            line: shorten(&String::from_utf8_lossy(&self.done_line)),
            reason,
        }
    }

    /// Size of the whole stream.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes the client said it sent.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Echo bytes verified so far.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Bytes sent whose echo has not been verified yet.
    pub fn outstanding(&self) -> u64 {
        self.sent - self.verified
    }

    /// Whether a correct DONE line was verified (the whole run is intact).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether something is still due from the service: echo of bytes sent,
    /// or the DONE line once the whole stream was sent.
    pub fn awaiting(&self) -> bool {
        self.outstanding() > 0 || (self.sent == self.total && !self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{done_line, splitmix64_at};

    const SEED: u64 = 77;

    fn stream(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        BulkStream::new(SEED).fill(&mut v);
        v
    }

    fn crc(data: &[u8]) -> u32 {
        crc32fast::hash(data)
    }

    /// The full reply for a correct run: echo then DONE.
    fn good_reply(len: usize) -> Vec<u8> {
        let mut v = stream(len);
        let c = crc(&v);
        v.extend_from_slice(done_line(len as u64, c).as_bytes());
        v
    }

    fn feed_chunked(
        v: &mut BulkVerifier,
        data: &[u8],
        seed: u64,
        max: usize,
    ) -> Result<u64, Violation> {
        let mut total = 0;
        let mut i = 0;
        let mut k = 0;
        while i < data.len() {
            let n = 1 + (splitmix64_at(seed, k) as usize % max);
            let end = (i + n).min(data.len());
            total += v.feed(&data[i..end])?;
            i = end;
            k += 1;
        }
        Ok(total)
    }

    #[test]
    fn clean_run_with_random_chunking() {
        let len = 100_003;
        let reply = good_reply(len);
        for (seed, max) in [(1, 1), (2, 9), (3, 4096), (4, 200_000)] {
            let mut v = BulkVerifier::new(len as u64, SEED);
            v.sent(len as u64);
            assert!(v.awaiting());
            assert_eq!(feed_chunked(&mut v, &reply, seed, max), Ok(len as u64));
            assert_eq!(v.verified(), len as u64);
            assert!(v.is_done());
            assert!(!v.awaiting());
            assert_eq!(v.outstanding(), 0);
        }
    }

    #[test]
    fn echo_interleaved_with_sending() {
        let len = 10_000;
        let reply = good_reply(len);
        let mut v = BulkVerifier::new(len as u64, SEED);
        let mut got = 0;
        for step in 0..10 {
            v.sent((step + 1) * 1000);
            got += v
                .feed(&reply[step as usize * 1000..(step as usize + 1) * 1000])
                .expect("echo");
            assert_eq!(v.outstanding(), 0);
        }
        assert_eq!(got, len as u64);
        assert!(v.awaiting(), "DONE is still due");
        assert_eq!(v.feed(&reply[len..]), Ok(0));
        assert!(v.is_done());
    }

    #[test]
    fn mismatch_reports_its_offset() {
        let len = 50_000;
        let mut reply = good_reply(len);
        reply[12_345] ^= 0x40;
        let mut v = BulkVerifier::new(len as u64, SEED);
        v.sent(len as u64);
        let expected_byte = BulkStream::byte_at(SEED, 12_345);
        assert_eq!(
            feed_chunked(&mut v, &reply, 5, 1000),
            Err(Violation::EchoMismatch {
                offset: 12_345,
                expected: expected_byte,
                got: expected_byte ^ 0x40
            })
        );
        assert_eq!(v.verified(), 12_345);
        assert!(v.feed(b"").is_err(), "stays failed");
    }

    #[test]
    fn lost_bytes_show_as_mismatch_at_the_gap() {
        let len = 4096;
        let mut reply = good_reply(len);
        reply.drain(1000..1008); // an 8-byte hole
        let mut v = BulkVerifier::new(len as u64, SEED);
        v.sent(len as u64);
        match v.feed(&reply) {
            Err(Violation::EchoMismatch { offset, .. }) => assert!((1000..1008).contains(&offset)),
            other => panic!("expected EchoMismatch, got {other:?}"),
        }
    }

    #[test]
    fn bytes_beyond_what_was_sent() {
        let len = 1000;
        let reply = good_reply(len);
        let mut v = BulkVerifier::new(len as u64, SEED);
        v.sent(400);
        assert_eq!(v.feed(&reply[..300]), Ok(300));
        assert_eq!(
            v.feed(&reply[300..450]),
            Err(Violation::BeyondSent {
                sent: 400,
                received: 450
            })
        );
        assert_eq!(v.verified(), 400);
    }

    #[test]
    fn done_checks() {
        let len = 5000;
        let data = stream(len);
        let good_crc = crc(&data);
        let run = |tail: &[u8]| {
            let mut v = BulkVerifier::new(len as u64, SEED);
            v.sent(len as u64);
            let mut all = data.clone();
            all.extend_from_slice(tail);
            feed_chunked(&mut v, &all, 11, 700).map(|_| v.is_done())
        };
        assert_eq!(run(done_line(len as u64, good_crc).as_bytes()), Ok(true));
        assert_eq!(
            run(done_line(len as u64, good_crc ^ 1).as_bytes()),
            Err(Violation::CrcMismatch {
                expected: good_crc,
                got: good_crc ^ 1
            })
        );
        assert_eq!(
            run(done_line(len as u64 - 1, good_crc).as_bytes()),
            Err(Violation::DoneCountMismatch {
                expected: len as u64,
                got: len as u64 - 1
            })
        );
        assert!(matches!(
            run(b"DONX 5000 00000000\n"),
            Err(Violation::BadDone { .. })
        ));
        assert!(matches!(run(&[b'x'; 100]), Err(Violation::BadDone { .. })));
        let mut extra = done_line(len as u64, good_crc).into_bytes();
        extra.extend_from_slice(b"more");
        assert_eq!(run(&extra), Err(Violation::AfterDone { len: 4 }));
        // An incomplete DONE line is not yet a verdict.
        let line = done_line(len as u64, good_crc);
        assert_eq!(run(&line.as_bytes()[..line.len() - 1]), Ok(false));
    }

    #[test]
    fn bytes_after_done_in_a_later_chunk() {
        let len = 10;
        let mut v = BulkVerifier::new(len as u64, SEED);
        v.sent(len as u64);
        assert_eq!(v.feed(&good_reply(len)), Ok(len as u64));
        assert!(v.is_done());
        assert_eq!(v.feed(b"x"), Err(Violation::AfterDone { len: 1 }));
    }

    #[test]
    fn empty_stream_expects_done_at_once() {
        let mut v = BulkVerifier::new(0, SEED);
        assert!(v.awaiting());
        assert_eq!(v.feed(done_line(0, 0).as_bytes()), Ok(0));
        assert!(v.is_done());
    }
}
