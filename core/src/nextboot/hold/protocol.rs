//! What a restore helper asks the hold and how: one line per request on
//! the hold's unix socket, one line of answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netqueue::Verdict;

/// A request from a restore helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Free the unit's reserved pids (CRIU is about to fork them).
    FreePids(String),
    /// Give the unit's connections to the new kernel: its held packets are
    /// accepted (re-injected) or dropped.
    Release(String, Verdict),
    /// Whether the unit is still held.
    Holds(String),
}

impl Request {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["free-pids", unit] => Ok(Request::FreePids((*unit).to_string())),
            ["release", unit, "accept"] => {
                Ok(Request::Release((*unit).to_string(), Verdict::Accept))
            }
            ["release", unit, "drop"] => Ok(Request::Release((*unit).to_string(), Verdict::Drop)),
            ["holds", unit] => Ok(Request::Holds((*unit).to_string())),
            _ => bail!("not a hold request: {line:?}"),
        }
    }

    /// The request as one line (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            Request::FreePids(unit) => format!("free-pids {unit}"),
            Request::Release(unit, Verdict::Accept) => format!("release {unit} accept"),
            Request::Release(unit, Verdict::Drop) => format!("release {unit} drop"),
            Request::Holds(unit) => format!("holds {unit}"),
        }
    }
}

/// The restore helper's side: asks the hold process, if one runs.
#[derive(Debug)]
pub struct HoldClient {
    socket: PathBuf,
}

impl HoldClient {
    /// The hold listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        HoldClient {
            socket: socket.into(),
        }
    }

    /// Sends one request; returns the reply's text after `ok`.
    pub fn ask(&self, request: &Request) -> Result<String> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot reach the hold at {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(format!("{}\n", request.to_line()).as_bytes())?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .context("no answer from the hold")?;
        let reply = reply.trim();
        match reply.split_once(' ').unwrap_or((reply, "")) {
            ("ok", rest) => Ok(rest.to_string()),
            ("error", why) => bail!("the hold refused `{}`: {why}", request.to_line()),
            _ => bail!("the hold answered {reply:?}"),
        }
    }
}
