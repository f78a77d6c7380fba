//! Consuming a snapshot, so it can never be restored twice.
//!
//! Restoring is not idempotent: a second restore of the same images would
//! start a second copy of every service with the same pids and the same TCP
//! sequence numbers as the first, which by then has moved on. The binding
//! checks cannot prevent that on their own (two boots into the same target
//! kernel both pass them), so the first boot that decides to restore creates
//! a `consumed` marker with `O_CREAT|O_EXCL`. The kernel guarantees exactly one
//! creator wins, even between concurrent processes.
//!
//! The marker is created before its content is written. If the machine dies
//! in between, an empty marker remains and the snapshot stays consumed: that
//! errs on the safe side (a cold start) and the error says the details are
//! unreadable.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{atomic, now_unix};

/// Name of the marker inside the transaction directory.
pub const CONSUMED_FILE: &str = "consumed";

/// Who consumed a snapshot, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Boot id of the claiming boot.
    pub boot_id: String,
    /// When it claimed, seconds since the Unix epoch.
    pub claimed_unix: u64,
}

/// Why a snapshot could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another boot (or an earlier attempt of this one) already claimed it.
    #[error("snapshot {} was already consumed {}", .path.display(), describe(.previous.as_ref()))]
    AlreadyConsumed {
        /// The marker file.
        path: PathBuf,
        /// The earlier claim, if its record is readable.
        previous: Option<Claim>,
    },
    /// The boot id is empty or spans lines.
    #[error("cannot claim {} with the malformed boot id {boot_id:?}", .path.display())]
    BadBootId {
        /// The marker file.
        path: PathBuf,
        /// The rejected boot id.
        boot_id: String,
    },
    /// The marker could not be created, written or read.
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn describe(previous: Option<&Claim>) -> String {
    match previous {
        Some(claim) => format!(
            "by boot {} at {} (unix time)",
            claim.boot_id, claim.claimed_unix
        ),
        None => "(the claim record is unreadable)".to_owned(),
    }
}

/// Claims the snapshot in `dir` for the boot `boot_id`. Exactly one caller
/// ever succeeds; every later one gets [`ClaimError::AlreadyConsumed`].
pub fn claim(dir: &Path, boot_id: &str) -> Result<Claim, ClaimError> {
    let path = dir.join(CONSUMED_FILE);
    let boot_id = boot_id.trim();
    if boot_id.is_empty() || boot_id.contains(['\n', '\r', '\0']) {
        return Err(ClaimError::BadBootId {
            path,
            boot_id: boot_id.to_owned(),
        });
    }
    let io_err = |path: &Path, context| {
        let path = path.to_owned();
        move |source| ClaimError::Io {
            path,
            context,
            source,
        }
    };
    // `create_new` is O_CREAT|O_EXCL: the kernel lets exactly one opener create it.
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let previous = read_claim(dir).ok().flatten();
            return Err(ClaimError::AlreadyConsumed { path, previous });
        }
        Err(e) => return Err(io_err(&path, "cannot create")(e)),
    };
    let claim = Claim {
        boot_id: boot_id.to_owned(),
        claimed_unix: now_unix(),
    };
    let mut record =
        serde_json::to_vec(&claim).map_err(|e| io_err(&path, "cannot encode")(e.into()))?;
    record.push(b'\n');
    file.write_all(&record)
        .map_err(io_err(&path, "cannot write"))?;
    file.sync_all().map_err(io_err(&path, "cannot fsync"))?;
    atomic::sync_dir(dir).map_err(|(path, context, source)| ClaimError::Io {
        path,
        context,
        source,
    })?;
    Ok(claim)
}

/// The claim recorded in `dir`, or `None` if the snapshot is unclaimed.
pub fn read_claim(dir: &Path) -> Result<Option<Claim>, ClaimError> {
    let path = dir.join(CONSUMED_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ClaimError::Io {
                path,
                context: "cannot read",
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ClaimError::Io {
            path,
            context: "cannot parse the claim record",
            source: e.into(),
        })
}
