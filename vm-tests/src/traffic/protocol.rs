//! Formatting and parsing of the protocol's lines (see the module above for
//! the grammar). Parsing is strict: numbers are plain ASCII digits, fields are
//! separated by exactly one space, so a corrupted byte does not slip through
//! as a differently spelled but equal value.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

/// Where `lab-service` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7777";

/// Longest protocol line either side accepts, newline excluded.
pub const MAX_LINE_LEN: usize = 1024;

/// Why a protocol line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// Parses a decimal `u64` made of ASCII digits only (no sign, no spaces).
fn parse_u64(field: &str, what: &str) -> Result<u64, ParseError> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{what} {field:?} is not a decimal number")));
    }
    field
        .parse()
        .map_err(|_| err(format!("{what} {field:?} is out of range")))
}

/// Splits `line` on single spaces into exactly `N` fields.
fn fields<'a, const N: usize>(line: &'a str, what: &str) -> Result<[&'a str; N], ParseError> {
    let parts: Vec<&str> = line.split(' ').collect();
    let found = parts.len();
    let parts: [&str; N] = parts.try_into().map_err(|_| {
        err(format!(
            "{what} needs {N} space-separated fields, found {found}"
        ))
    })?;
    if let Some(empty) = parts.iter().position(|p| p.is_empty()) {
        return Err(err(format!("{what} has an empty field {}", empty + 1)));
    }
    Ok(parts)
}

/// Makes `s` usable as one protocol field: trimmed, inner whitespace replaced
/// by `_`, `unknown` when empty.
pub fn token(s: &str) -> String {
    let t: String = s
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if t.is_empty() {
        "unknown".to_owned()
    } else {
        t
    }
}

/// The client's opening line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// `HELLO lines`: numbered request/reply lines.
    Lines,
    /// `HELLO bulk <total_bytes> <seed>`: a byte stream echoed back.
    Bulk {
        /// How many bytes the client will send.
        total_bytes: u64,
        /// Seed of the [`crate::traffic::BulkStream`] the client sends.
        seed: u64,
    },
    /// `STATE`: ask for the service's state and close.
    State,
}

impl Hello {
    /// Parses an opening line (without its newline).
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if line == "STATE" {
            return Ok(Self::State);
        }
        if line == "HELLO lines" {
            return Ok(Self::Lines);
        }
        if line.starts_with("HELLO bulk") {
            let [_, _, total, seed] = fields::<4>(line, "HELLO bulk")?;
            return Ok(Self::Bulk {
                total_bytes: parse_u64(total, "total_bytes")?,
                seed: parse_u64(seed, "seed")?,
            });
        }
        Err(err(format!(
            "expected `HELLO lines`, `HELLO bulk <bytes> <seed>` or `STATE`, got {:?}",
            shorten(line)
        )))
    }

    /// The opening line, newline included.
    pub fn to_line(&self) -> String {
        match self {
            Self::Lines => "HELLO lines\n".to_owned(),
            Self::Bulk { total_bytes, seed } => format!("HELLO bulk {total_bytes} {seed}\n"),
            Self::State => "STATE\n".to_owned(),
        }
    }
}

/// The client's request for line `seq`, newline included.
pub fn line_request(seq: u64) -> String {
    format!("L {seq} {}\n", super::line_payload(seq))
}

/// Parses `L <seq> <payload>` (without its newline) into seq and payload.
pub fn parse_line_request(line: &str) -> Result<(u64, &str), ParseError> {
    let [tag, seq, payload] = fields::<3>(line, "line request")?;
    if tag != "L" {
        return Err(err(format!(
            "line request must start with `L `, got {:?}",
            shorten(line)
        )));
    }
    Ok((parse_u64(seq, "seq")?, payload))
}

/// The service's reply to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineReply {
    /// Sequence number of the line answered.
    pub seq: u64,
    /// Lines the service has received since it started, over all connections.
    pub total: u64,
    /// The kernel release the service ran on when it replied.
    pub kernel_release: String,
    /// The boot id of that kernel.
    pub boot_id: String,
    /// The payload the service received (echoed).
    pub payload: String,
}

impl LineReply {
    /// Parses `R <seq> <total> <kernel_release> <boot_id> <payload>` (without its newline).
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let [tag, seq, total, kernel, boot, payload] = fields::<6>(line, "reply")?;
        if tag != "R" {
            return Err(err(format!(
                "reply must start with `R `, got {:?}",
                shorten(line)
            )));
        }
        Ok(Self {
            seq: parse_u64(seq, "seq")?,
            total: parse_u64(total, "total")?,
            kernel_release: kernel.to_owned(),
            boot_id: boot.to_owned(),
            payload: payload.to_owned(),
        })
    }

    /// The reply line, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "R {} {} {} {} {}\n",
            self.seq, self.total, self.kernel_release, self.boot_id, self.payload
        )
    }
}

/// The service's final bulk line, newline included.
pub fn done_line(total_bytes: u64, crc32: u32) -> String {
    format!("DONE {total_bytes} {crc32:08x}\n")
}

/// Parses `DONE <total_bytes> <crc32>` (without its newline).
pub fn parse_done(line: &str) -> Result<(u64, u32), ParseError> {
    let [tag, total, crc] = fields::<3>(line, "DONE line")?;
    if tag != "DONE" {
        return Err(err("does not start with `DONE `"));
    }
    let total = parse_u64(total, "byte count")?;
    if crc.len() != 8 || !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err(format!("crc {crc:?} is not 8 lowercase hex digits")));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|e| err(format!("crc {crc:?}: {e}")))?;
    Ok((total, crc))
}

/// An error line, newline included; the reason is kept on one line.
pub fn error_line(reason: &str) -> String {
    let reason: String = reason
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("ERR {reason}\n")
}

/// The service's answer to `STATE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// Lines the service has received since it started, over all connections.
    pub total: u64,
    /// The kernel release the service runs on now.
    pub kernel_release: String,
    /// The boot id of that kernel.
    pub boot_id: String,
    /// The service's process id.
    pub pid: u32,
    /// When the service process started, seconds since the Unix epoch.
    pub started_unix: u64,
}

impl StateReply {
    /// Parses `STATE <total> <kernel_release> <boot_id> <pid> <started_unix>` (without its newline).
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if let Some(reason) = line.strip_prefix("ERR ") {
            return Err(err(format!("service error: {reason}")));
        }
        let [tag, total, kernel, boot, pid, started] = fields::<6>(line, "STATE reply")?;
        if tag != "STATE" {
            return Err(err(format!(
                "STATE reply must start with `STATE `, got {:?}",
                shorten(line)
            )));
        }
        let pid = parse_u64(pid, "pid")?;
        Ok(Self {
            total: parse_u64(total, "total")?,
            kernel_release: kernel.to_owned(),
            boot_id: boot.to_owned(),
            pid: u32::try_from(pid).map_err(|_| err(format!("pid {pid} is out of range")))?,
            started_unix: parse_u64(started, "started_unix")?,
        })
    }

    /// The reply line, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "STATE {} {} {} {} {}\n",
            self.total, self.kernel_release, self.boot_id, self.pid, self.started_unix
        )
    }
}

/// What [`read_bounded_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineRead {
    /// A complete line, newline removed.
    Line(String),
    /// End of stream before any byte of a new line.
    Eof,
    /// End of stream in the middle of a line; how many bytes of it came.
    PartialEof(usize),
    /// More than the limit without a newline.
    TooLong,
    /// A complete line that is not UTF-8.
    NotUtf8,
}

/// Reads one line of at most `limit` bytes (newline excluded) without ever
/// buffering more than `limit + 1` bytes of it.
pub fn read_bounded_line(reader: &mut impl BufRead, limit: usize) -> io::Result<LineRead> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    // read_until retries reads interrupted by signals itself.
    Read::take(&mut *reader, cap).read_until(b'\n', &mut buf)?;
    if buf.is_empty() {
        return Ok(LineRead::Eof);
    }
    if buf.last() != Some(&b'\n') {
        return Ok(if buf.len() > limit {
            LineRead::TooLong
        } else {
            LineRead::PartialEof(buf.len())
        });
    }
    buf.pop();
    Ok(String::from_utf8(buf).map_or(LineRead::NotUtf8, LineRead::Line))
}

/// At most 80 characters of `s`, for error messages.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        for hello in [
            Hello::Lines,
            Hello::State,
            Hello::Bulk {
                total_bytes: 8 << 20,
                seed: 7,
            },
        ] {
            let line = hello.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(Hello::parse(line.trim_end_matches('\n')), Ok(hello));
        }
        assert!(Hello::parse("HELLO bulk 10").is_err());
        assert!(Hello::parse("HELLO bulk +10 1").is_err());
        assert!(Hello::parse("HELLO bulk 10  1").is_err());
        assert!(Hello::parse("HELLO").is_err());
        assert!(Hello::parse("hello lines").is_err());
    }

    #[test]
    fn line_request_round_trips() {
        let line = line_request(12);
        let (seq, payload) = parse_line_request(line.trim_end()).expect("parses");
        assert_eq!(seq, 12);
        assert_eq!(payload, super::super::line_payload(12));
        assert!(parse_line_request("L 1").is_err());
        assert!(parse_line_request("X 1 abc").is_err());
        assert!(parse_line_request("L -1 abc").is_err());
    }

    #[test]
    fn reply_and_state_round_trip() {
        let reply = LineReply {
            seq: 3,
            total: 99,
            kernel_release: "6.1.0-18-amd64".into(),
            boot_id: "0b7c7d0e-3a1f-4d8e-9b1a-2f9e6c1d4a55".into(),
            payload: super::super::line_payload(3),
        };
        assert_eq!(LineReply::parse(reply.to_line().trim_end()), Ok(reply));
        let state = StateReply {
            total: 5,
            kernel_release: "6.12.0".into(),
            boot_id: "b".into(),
            pid: 4242,
            started_unix: 1_700_000_000,
        };
        assert_eq!(StateReply::parse(state.to_line().trim_end()), Ok(state));
        assert!(StateReply::parse("ERR nope").is_err());
    }

    #[test]
    fn done_is_strict() {
        assert_eq!(
            parse_done(done_line(10, 0xdead_beef).trim_end()),
            Ok((10, 0xdead_beef))
        );
        assert!(parse_done("DONE 10 DEADBEEF").is_err());
        assert!(parse_done("DONE 10 beef").is_err());
        assert!(parse_done("DONE 10").is_err());
        assert!(parse_done("DONE x 0000beef").is_err());
    }

    #[test]
    fn tokens_and_errors_stay_on_one_field_and_line() {
        assert_eq!(token(" 6.1.0 foo\n"), "6.1.0_foo");
        assert_eq!(token("\n"), "unknown");
        assert_eq!(error_line("a\nb"), "ERR a b\n");
    }

    #[test]
    fn bounded_lines() {
        let mut r = io::Cursor::new(b"abc\nxyz".to_vec());
        assert_eq!(
            read_bounded_line(&mut r, 8).expect("read"),
            LineRead::Line("abc".into())
        );
        assert_eq!(
            read_bounded_line(&mut r, 8).expect("read"),
            LineRead::PartialEof(3)
        );
        assert_eq!(read_bounded_line(&mut r, 8).expect("read"), LineRead::Eof);

        let mut r = io::Cursor::new(b"0123456789\n".to_vec());
        assert_eq!(
            read_bounded_line(&mut r, 4).expect("read"),
            LineRead::TooLong
        );
        let mut r = io::Cursor::new(b"0123\n".to_vec());
        assert_eq!(
            read_bounded_line(&mut r, 4).expect("read"),
            LineRead::Line("0123".into())
        );
        let mut r = io::Cursor::new(b"\xff\n".to_vec());
        assert_eq!(
            read_bounded_line(&mut r, 4).expect("read"),
            LineRead::NotUtf8
        );
    }
}
