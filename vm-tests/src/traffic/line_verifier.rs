//! Verification of line-mode replies.

use super::protocol::{LineReply, MAX_LINE_LEN, shorten};
use super::{Violation, line_payload};

/// Checks line-mode replies as their bytes arrive, in chunks of any size.
///
/// Every reply must be the next seq due (so a lost or duplicated reply is
/// caught at once), for a line already sent, carry that line's payload, and a
/// service total strictly above the previous reply's (the total is global over
/// all connections, so it may jump, but never stay or go back). After a
/// violation the verifier keeps answering with that violation.
#[derive(Debug, Default)]
pub struct LineVerifier {
    lines_sent: u64,
    next_seq: u64,
    partial: Vec<u8>,
    bytes_verified: u64,
    first_total: Option<u64>,
    last_total: Option<u64>,
    kernels_seen: Vec<String>,
    boot_ids_seen: Vec<String>,
    last_kernel: Option<String>,
    failed: Option<Violation>,
}

impl LineVerifier {
    /// A verifier for a connection on which nothing was sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that line `seq` has been sent (and so all before it).
    pub fn sent(&mut self, seq: u64) {
        self.lines_sent = self.lines_sent.max(seq.saturating_add(1));
    }

    /// Checks the next `data` received; returns how many replies it completed
    /// and verified.
    pub fn feed(&mut self, data: &[u8]) -> Result<u64, Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        let result = self.feed_inner(data);
        if let Err(v) = &result {
            self.failed = Some(v.clone());
        }
        result
    }

    fn feed_inner(&mut self, data: &[u8]) -> Result<u64, Violation> {
        let mut verified = 0;
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            if self.partial.len() + head.len() > MAX_LINE_LEN {
                return Err(Violation::LineTooLong {
                    limit: MAX_LINE_LEN,
                });
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(head);
            let checked = self.check_line(&line);
            let line_len = line.len() as u64 + 1;
            line.clear();
            self.partial = line;
            checked?;
            verified += 1;
            self.bytes_verified += line_len;
            rest = &tail[1..];
        }
        if self.partial.len() + rest.len() > MAX_LINE_LEN {
            return Err(Violation::LineTooLong {
                limit: MAX_LINE_LEN,
            });
        }
        self.partial.extend_from_slice(rest);
        Ok(verified)
    }

    fn check_line(&mut self, line: &[u8]) -> Result<(), Violation> {
        let malformed = |reason: String| Violation::MalformedLine {
            line: shorten(&String::from_utf8_lossy(line)),
            reason,
        };
        let text = std::str::from_utf8(line).map_err(|_| malformed("not UTF-8".into()))?;
        if text == "ERR" || text.starts_with("ERR ") {
            return Err(Violation::ServiceError {
                reason: text.get(4..).unwrap_or_default().to_owned(),
            });
        }
        let reply = LineReply::parse(text).map_err(|e| malformed(e.0))?;
        let seq = reply.seq;
        if seq >= self.lines_sent {
            return Err(Violation::UnsentSeq {
                seq,
                sent: self.lines_sent,
            });
        }
        if seq != self.next_seq {
            return Err(Violation::UnexpectedSeq {
                expected: self.next_seq,
                got: seq,
            });
        }
        let expected = line_payload(seq);
        if reply.payload != expected {
            return Err(Violation::CorruptPayload {
                seq,
                expected,
                got: shorten(&reply.payload),
            });
        }
        let previous = self.last_total.unwrap_or(0);
        if reply.total < previous {
            return Err(Violation::CounterWentBackwards {
                seq,
                previous,
                got: reply.total,
            });
        }
        if reply.total == previous {
            return Err(Violation::CounterDidNotIncrease {
                seq,
                total: reply.total,
            });
        }
        self.first_total.get_or_insert(reply.total);
        self.last_total = Some(reply.total);
        if !self.kernels_seen.contains(&reply.kernel_release) {
            self.kernels_seen.push(reply.kernel_release.clone());
        }
        if !self.boot_ids_seen.contains(&reply.boot_id) {
            self.boot_ids_seen.push(reply.boot_id);
        }
        if self.last_kernel.as_deref() != Some(reply.kernel_release.as_str()) {
            self.last_kernel = Some(reply.kernel_release);
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Lines the client said it sent.
    pub fn lines_sent(&self) -> u64 {
        self.lines_sent
    }

    /// Replies verified so far.
    pub fn lines_verified(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of verified replies, newlines included.
    pub fn bytes_verified(&self) -> u64 {
        self.bytes_verified
    }

    /// Lines sent whose replies have not been verified yet.
    pub fn outstanding(&self) -> u64 {
        self.lines_sent.saturating_sub(self.next_seq)
    }

    /// Bytes of a reply received but not complete yet.
    pub fn partial_len(&self) -> usize {
        self.partial.len()
    }

    /// The service total in the first verified reply.
    pub fn first_total(&self) -> Option<u64> {
        self.first_total
    }

    /// The service total in the last verified reply.
    pub fn last_total(&self) -> Option<u64> {
        self.last_total
    }

    /// Distinct kernel releases in verified replies, in order of first appearance.
    pub fn kernels_seen(&self) -> &[String] {
        &self.kernels_seen
    }

    /// Distinct boot ids in verified replies, in order of first appearance.
    pub fn boot_ids_seen(&self) -> &[String] {
        &self.boot_ids_seen
    }

    /// The kernel release in the last verified reply.
    pub fn last_kernel(&self) -> Option<&str> {
        self.last_kernel.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::splitmix64_at;

    fn reply(seq: u64, total: u64, kernel: &str, boot: &str) -> String {
        LineReply {
            seq,
            total,
            kernel_release: kernel.into(),
            boot_id: boot.into(),
            payload: line_payload(seq),
        }
        .to_line()
    }

    /// Feeds `data` in pseudo-random chunks (1..=max bytes), summing verified replies.
    fn feed_chunked(
        v: &mut LineVerifier,
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

    fn sent_all(n: u64) -> LineVerifier {
        let mut v = LineVerifier::new();
        for seq in 0..n {
            v.sent(seq);
        }
        v
    }

    #[test]
    fn clean_run_with_random_chunking_and_a_kernel_change() {
        let mut data = String::new();
        for seq in 0..200u64 {
            // The total jumps by 2 sometimes (another connection counted too).
            let total = 10 + seq + seq / 50;
            let (kernel, boot) = if seq < 120 {
                ("6.1.0", "boot-a")
            } else {
                ("6.12.0", "boot-b")
            };
            data.push_str(&reply(seq, total, kernel, boot));
        }
        for (seed, max) in [(1, 1), (2, 7), (3, 64), (4, 500), (5, 100_000)] {
            let mut v = sent_all(200);
            let verified = feed_chunked(&mut v, data.as_bytes(), seed, max).expect("clean stream");
            assert_eq!(verified, 200);
            assert_eq!(v.lines_verified(), 200);
            assert_eq!(v.outstanding(), 0);
            assert_eq!(v.partial_len(), 0);
            assert_eq!(v.bytes_verified(), data.len() as u64);
            assert_eq!(v.first_total(), Some(10));
            assert_eq!(v.last_total(), Some(10 + 199 + 3));
            assert_eq!(v.kernels_seen(), ["6.1.0", "6.12.0"]);
            assert_eq!(v.boot_ids_seen(), ["boot-a", "boot-b"]);
            assert_eq!(v.last_kernel(), Some("6.12.0"));
        }
    }

    #[test]
    fn split_inside_a_line_waits_for_the_rest() {
        let mut v = sent_all(2);
        let r0 = reply(0, 1, "k", "b");
        let r1 = reply(1, 2, "k", "b");
        let (a, b) = r0.split_at(17);
        assert_eq!(v.feed(a.as_bytes()), Ok(0));
        assert_eq!(v.partial_len(), 17);
        assert_eq!(v.lines_verified(), 0);
        let mut rest = b.as_bytes().to_vec();
        rest.extend_from_slice(&r1.as_bytes()[..5]);
        assert_eq!(v.feed(&rest), Ok(1));
        assert_eq!(v.feed(&r1.as_bytes()[5..]), Ok(1));
        assert_eq!(v.lines_verified(), 2);
        // The newline alone completes a line.
        let mut v = sent_all(1);
        assert_eq!(v.feed(r0.trim_end().as_bytes()), Ok(0));
        assert_eq!(v.feed(b"\n"), Ok(1));
    }

    #[test]
    fn lost_line_is_unexpected_seq() {
        let mut v = sent_all(3);
        let data = reply(0, 1, "k", "b") + &reply(2, 2, "k", "b");
        assert_eq!(
            v.feed(data.as_bytes()),
            Err(Violation::UnexpectedSeq {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(v.lines_verified(), 1);
        // Stays failed.
        assert!(v.feed(reply(1, 3, "k", "b").as_bytes()).is_err());
    }

    #[test]
    fn duplicated_line_is_unexpected_seq() {
        let mut v = sent_all(3);
        let data = reply(0, 1, "k", "b") + &reply(1, 2, "k", "b") + &reply(1, 3, "k", "b");
        assert_eq!(
            feed_chunked(&mut v, data.as_bytes(), 9, 13),
            Err(Violation::UnexpectedSeq {
                expected: 2,
                got: 1
            })
        );
    }

    #[test]
    fn corrupted_payload_byte_is_caught_with_its_seq() {
        let mut v = sent_all(2);
        let good = reply(0, 1, "k", "b");
        let mut bad = reply(1, 2, "k", "b").into_bytes();
        let last = bad.len() - 2; // last payload character
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(v.feed(good.as_bytes()), Ok(1));
        match v.feed(&bad) {
            Err(Violation::CorruptPayload { seq, expected, got }) => {
                assert_eq!(seq, 1);
                assert_eq!(expected, line_payload(1));
                assert_ne!(got, expected);
                assert_eq!(got.len(), expected.len());
            }
            other => panic!("expected CorruptPayload, got {other:?}"),
        }
    }

    #[test]
    fn counter_must_increase() {
        let mut v = sent_all(3);
        let data = reply(0, 5, "k", "b") + &reply(1, 5, "k", "b");
        assert_eq!(
            v.feed(data.as_bytes()),
            Err(Violation::CounterDidNotIncrease { seq: 1, total: 5 })
        );
        let mut v = sent_all(3);
        let data = reply(0, 5, "k", "b") + &reply(1, 4, "k", "b");
        assert_eq!(
            v.feed(data.as_bytes()),
            Err(Violation::CounterWentBackwards {
                seq: 1,
                previous: 5,
                got: 4
            })
        );
        let mut v = sent_all(1);
        assert_eq!(
            v.feed(reply(0, 0, "k", "b").as_bytes()),
            Err(Violation::CounterDidNotIncrease { seq: 0, total: 0 })
        );
    }

    #[test]
    fn reply_for_unsent_seq() {
        let mut v = LineVerifier::new();
        assert_eq!(
            v.feed(reply(0, 1, "k", "b").as_bytes()),
            Err(Violation::UnsentSeq { seq: 0, sent: 0 })
        );
        let mut v = sent_all(1);
        assert_eq!(v.feed(reply(0, 1, "k", "b").as_bytes()), Ok(1));
        assert_eq!(
            v.feed(reply(1, 2, "k", "b").as_bytes()),
            Err(Violation::UnsentSeq { seq: 1, sent: 1 })
        );
    }

    #[test]
    fn malformed_error_and_overlong_lines() {
        let mut v = sent_all(1);
        assert!(matches!(
            v.feed(b"R 0 1 k b\n"),
            Err(Violation::MalformedLine { .. })
        ));
        let mut v = sent_all(1);
        assert!(matches!(
            v.feed(b"R 0 1 k b \xff\n"),
            Err(Violation::MalformedLine { .. })
        ));
        let mut v = sent_all(1);
        assert_eq!(
            v.feed(b"ERR bad seq\n"),
            Err(Violation::ServiceError {
                reason: "bad seq".into()
            })
        );
        let mut v = sent_all(1);
        let long = vec![b'x'; MAX_LINE_LEN + 1];
        assert_eq!(
            v.feed(&long),
            Err(Violation::LineTooLong {
                limit: MAX_LINE_LEN
            })
        );
    }
}
