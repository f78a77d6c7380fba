//! Deterministic payloads: both ends can regenerate exactly what was sent from
//! a sequence number or a seed and an offset, so nothing has to be remembered
//! to verify a reply.

/// The splitmix64 increment (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Seed of the generator behind [`line_payload`] ("linepayl" in ASCII), so
/// line payloads and a bulk stream with a small seed do not coincide.
const LINE_PAYLOAD_SEED: u64 = 0x6c69_6e65_7061_796c;

/// Length in bytes of every [`line_payload`].
pub const LINE_PAYLOAD_LEN: usize = 48;

/// The splitmix64 output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `index`-th output (counting from 0) of a splitmix64 generator whose
/// state starts at `seed`; random access, so any position can be regenerated.
pub fn splitmix64_at(seed: u64, index: u64) -> u64 {
    mix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// The payload of line `seq`: 48 lowercase hex digits, no spaces, different
/// for every seq, so a reply carrying another line's payload is caught.
pub fn line_payload(seq: u64) -> String {
    let base = seq.wrapping_mul(3);
    format!(
        "{:016x}{:016x}{:016x}",
        splitmix64_at(LINE_PAYLOAD_SEED, base),
        splitmix64_at(LINE_PAYLOAD_SEED, base.wrapping_add(1)),
        splitmix64_at(LINE_PAYLOAD_SEED, base.wrapping_add(2)),
    )
}

/// The bulk byte stream for a seed: byte `i` is byte `i % 8` (little endian)
/// of the `i / 8`-th splitmix64 output. Stateful: [`BulkStream::fill`]
/// continues where the previous call stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkStream {
    seed: u64,
    position: u64,
}

impl BulkStream {
    /// The stream for `seed`, at offset 0.
    pub fn new(seed: u64) -> Self {
        Self::at(seed, 0)
    }

    /// The stream for `seed`, positioned at byte `offset`.
    pub fn at(seed: u64, offset: u64) -> Self {
        Self {
            seed,
            position: offset,
        }
    }

    /// The seed this stream was made from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Offset of the next byte [`BulkStream::fill`] will produce.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Byte `offset` of the stream for `seed`, without building a stream.
    pub fn byte_at(seed: u64, offset: u64) -> u8 {
        splitmix64_at(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let block = splitmix64_at(self.seed, self.position / 8).to_le_bytes();
            let within = (self.position % 8) as usize;
            let n = (8 - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
            self.position += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_payload_is_48_lowercase_hex_and_distinct() {
        let a = line_payload(0);
        let b = line_payload(1);
        assert_eq!(a.len(), LINE_PAYLOAD_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert_eq!(a, line_payload(0));
        // Neighbouring lines do not share their 16-digit blocks.
        assert_ne!(&a[32..], &b[..16]);
    }

    #[test]
    fn splitmix64_matches_reference_sequence() {
        // Reference values of splitmix64 seeded with 0 (Vigna's C code).
        assert_eq!(splitmix64_at(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64_at(0, 1), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn bulk_stream_is_deterministic_and_chunking_independent() {
        let mut whole = vec![0u8; 1000];
        BulkStream::new(42).fill(&mut whole);

        let mut pieces = Vec::new();
        let mut s = BulkStream::new(42);
        for size in [1usize, 7, 3, 8, 13, 0, 500, 468] {
            let mut buf = vec![0u8; size];
            s.fill(&mut buf);
            pieces.extend_from_slice(&buf);
        }
        assert_eq!(s.position(), 1000);
        assert_eq!(pieces, whole);

        for (i, b) in whole.iter().enumerate() {
            assert_eq!(BulkStream::byte_at(42, i as u64), *b);
        }
        let mut tail = [0u8; 10];
        BulkStream::at(42, 995).fill(&mut tail[..5]);
        assert_eq!(&tail[..5], &whole[995..]);

        let mut other = vec![0u8; 1000];
        BulkStream::new(43).fill(&mut other);
        assert_ne!(other, whole);
    }
}
