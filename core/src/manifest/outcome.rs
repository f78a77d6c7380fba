//! Per-unit outcome records of a restore: what happened to each unit.
//!
//! `seamless-reboot status` must answer "did my service come back restored,
//! cold-started, or not at all, and why" long after the boot, and also after
//! a crash of the daemon halfway through the units. So each unit's outcome is
//! its own small file `unit-<name>.result` in the transaction directory,
//! written atomically as soon as that unit is done: a record is either
//! complete or absent, and the ones written before a crash survive it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic;
use super::unit_name::{UnitNameError, result_file_name, unit_from_result_file_name};

/// What became of a unit in the new boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// CRIU restored it with its connections.
    Restored,
    /// The snapshot was not usable; the unit was started fresh.
    ColdStarted,
    /// Neither worked.
    Failed,
}

impl OutcomeKind {
    /// The name used in records and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Restored => "restored",
            OutcomeKind::ColdStarted => "cold-started",
            OutcomeKind::Failed => "failed",
        }
    }
}

/// The record of one unit's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOutcome {
    /// The systemd unit name.
    pub unit: String,
    /// What happened.
    pub outcome: OutcomeKind,
    /// Human-readable detail: why a cold start or a failure, or notes.
    pub detail: String,
    /// When the record was written, seconds since the Unix epoch.
    pub recorded_unix: u64,
    /// Time this boot spent restoring or starting the unit, in milliseconds.
    pub duration_ms: u64,
    /// From the freeze before the kexec until the unit ran again, in
    /// milliseconds, when known: what the unit's clients experienced.
    pub downtime_ms: Option<u64>,
}

/// Why an outcome record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    /// The unit name cannot be turned into a file name.
    #[error("cannot record the outcome of unit {unit:?}: {source}")]
    UnitName {
        /// The unit.
        unit: String,
        /// Why its name is unacceptable.
        #[source]
        source: UnitNameError,
    },
    /// A record file is not valid.
    #[error("outcome record {}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A record's content names another unit than its file name.
    #[error("outcome record {} is about unit {found}, not {expected}", .path.display())]
    UnitMismatch {
        /// The file.
        path: PathBuf,
        /// The unit its file name says.
        expected: String,
        /// The unit its content says.
        found: String,
    },
    /// Reading or writing failed.
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Writes (or replaces) the record of `outcome.unit` in `dir`, atomically.
/// Returns the record's path.
pub fn write_outcome(dir: &Path, outcome: &UnitOutcome) -> Result<PathBuf, OutcomeError> {
    let name = result_file_name(&outcome.unit).map_err(|source| OutcomeError::UnitName {
        unit: outcome.unit.clone(),
        source,
    })?;
    let path = dir.join(&name);
    let mut bytes = serde_json::to_vec_pretty(outcome).map_err(|source| OutcomeError::Parse {
        path: path.clone(),
        source,
    })?;
    bytes.push(b'\n');
    let tmp = format!("{name}.tmp");
    atomic::write_atomic(dir, &name, &tmp, &bytes).map_err(|(path, context, source)| {
        OutcomeError::Io {
            path,
            context,
            source,
        }
    })?;
    Ok(path)
}

/// Every outcome record in `dir`, sorted by unit name. Files that are not
/// records (the manifest, temporary files) are ignored.
pub fn read_outcomes(dir: &Path) -> Result<Vec<UnitOutcome>, OutcomeError> {
    let io_err = |path: &Path, context| {
        let path = path.to_owned();
        move |source| OutcomeError::Io {
            path,
            context,
            source,
        }
    };
    let mut outcomes = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "cannot list"))? {
        let entry = entry.map_err(io_err(dir, "cannot list"))?;
        let Some(unit) = entry
            .file_name()
            .to_str()
            .and_then(unit_from_result_file_name)
        else {
            continue;
        };
        let path = entry.path();
        let bytes = fs::read(&path).map_err(io_err(&path, "cannot read"))?;
        let outcome: UnitOutcome =
            serde_json::from_slice(&bytes).map_err(|source| OutcomeError::Parse {
                path: path.clone(),
                source,
            })?;
        if outcome.unit != unit {
            return Err(OutcomeError::UnitMismatch {
                path,
                expected: unit,
                found: outcome.unit,
            });
        }
        outcomes.push(outcome);
    }
    outcomes.sort_by(|a, b| a.unit.cmp(&b.unit));
    Ok(outcomes)
}
