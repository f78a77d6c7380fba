//! The `LastReport` property: what the last operation did, as JSON.
//!
//! Three kinds, told apart by `"kind"`:
//!
//! * `"checkpoint"`: a transaction of this daemon handed over to kexec; the
//!   per-unit checkpoint figures ([`Summary`]).
//! * `"failed"`: a transaction of this daemon failed (and was undone as far
//!   as `"error"` says).
//! * `"restore"`: nothing ran in this daemon; the newest transaction
//!   directory's per-unit outcome records, written by the restore in this
//!   boot (`unit-<name>.result`, see `seamless_reboot_core::manifest`).
//!
//! When no transaction directory exists at all, the property is `""`.

use std::path::{Path, PathBuf};

use seamless_reboot_core::manifest::{UnitOutcome, read_outcomes};
use serde::{Deserialize, Serialize};

use crate::engine::Summary;

/// The content of `LastReport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Report {
    /// A transaction handed over to systemd's kexec.
    Checkpoint(Summary),
    /// A transaction failed.
    Failed { error: String },
    /// The outcomes the restore recorded for each unit.
    Restore {
        transaction_dir: String,
        units: Vec<UnitOutcome>,
        /// Why the records could not be read, when they could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// What a caller other than root reads instead of a detail or an error:
/// those name processes, paths and command lines of the preserved services.
pub const WITHHELD: &str = "(withheld: only root may read the details)";

impl Report {
    /// The report as a caller other than root may read it: which units,
    /// what became of each and how long it took, without the details
    /// (pids, paths, command lines, error texts).
    pub fn for_unprivileged(&self) -> Report {
        match self {
            Report::Checkpoint(summary) => Report::Checkpoint(summary.clone()),
            Report::Failed { .. } => Report::Failed {
                error: WITHHELD.into(),
            },
            Report::Restore { units, error, .. } => Report::Restore {
                transaction_dir: String::new(),
                units: units
                    .iter()
                    .map(|u| UnitOutcome {
                        detail: WITHHELD.into(),
                        ..u.clone()
                    })
                    .collect(),
                error: error.as_ref().map(|_| WITHHELD.to_string()),
            },
        }
    }

    /// The JSON text of the property.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            // Serializing these plain structs cannot fail; say so if it does.
            format!("{{\"kind\":\"failed\",\"error\":\"cannot serialize the report: {e}\"}}")
        })
    }
}

/// The newest transaction directory under `image_dir`: transaction ids
/// start with `t` and the creation time in milliseconds
/// (`seamless_reboot_core::transaction::new_transaction_id`).
pub fn latest_transaction_dir(image_dir: &Path) -> Option<PathBuf> {
    seamless_reboot_core::prune::transactions(image_dir)
        .ok()?
        .pop()
}

/// The restore report of the newest transaction under `image_dir`, or
/// `None` when there is no transaction at all.
pub fn restore_report(image_dir: &Path) -> Option<Report> {
    let dir = latest_transaction_dir(image_dir)?;
    let (units, error) = match read_outcomes(&dir) {
        Ok(units) => (units, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Some(Report::Restore {
        transaction_dir: dir.display().to_string(),
        units,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CheckpointedUnit;
    use seamless_reboot_core::manifest::{OutcomeKind, result_file_name, write_outcome};

    #[test]
    fn latest_is_by_time_not_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        for name in ["t900-5", "t3000-1", "t2000-9", "not-a-transaction", "tx-1"] {
            std::fs::create_dir(tmp.path().join(name)).expect("mkdir");
        }
        std::fs::write(tmp.path().join("t9999-1"), b"a file, not a transaction").expect("write");
        let latest = latest_transaction_dir(tmp.path()).expect("found");
        assert!(latest.ends_with("t3000-1"), "{}", latest.display());
        assert_eq!(latest_transaction_dir(&tmp.path().join("missing")), None);
    }

    #[test]
    fn restore_report_reads_the_outcome_records() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert_eq!(restore_report(tmp.path()), None);
        let dir = tmp.path().join("t1000-1");
        std::fs::create_dir(&dir).expect("mkdir");
        let outcome = UnitOutcome {
            unit: "demo.service".into(),
            outcome: OutcomeKind::Restored,
            detail: String::new(),
            recorded_unix: 1,
            duration_ms: 300,
            downtime_ms: Some(4200),
        };
        write_outcome(&dir, &outcome).expect("write");
        let report = restore_report(tmp.path()).expect("a report");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(json["kind"], "restore");
        assert_eq!(json["units"][0]["unit"], "demo.service");
        assert_eq!(json["units"][0]["outcome"], "restored");
        assert_eq!(json["units"][0]["downtime_ms"], 4200);
        assert!(json.get("error").is_none());
    }

    #[test]
    fn unreadable_records_are_reported_not_hidden() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("t1000-1");
        std::fs::create_dir(&dir).expect("mkdir");
        let name = result_file_name("demo.service").expect("name");
        std::fs::write(dir.join(name), b"{not json").expect("write");
        let json: serde_json::Value =
            serde_json::from_str(&restore_report(tmp.path()).expect("report").to_json())
                .expect("json");
        assert_eq!(json["kind"], "restore");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
    }

    #[test]
    fn checkpoint_and_failure_reports_round_trip() {
        let report = Report::Checkpoint(Summary {
            transaction_id: "t1-2".into(),
            target_kernel: "6.12.0".into(),
            units: vec![CheckpointedUnit {
                unit: "a.service".into(),
                frozen_ms: 12,
                connections: 3,
            }],
        });
        let json = report.to_json();
        assert!(json.contains("\"kind\":\"checkpoint\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Report>(&json).expect("parse"),
            report
        );
        let failed = Report::Failed { error: "no".into() };
        assert_eq!(failed.to_json(), r#"{"kind":"failed","error":"no"}"#);
    }

    #[test]
    fn others_than_root_read_outcomes_without_details() {
        let report = Report::Restore {
            transaction_dir: "/var/lib/seamless-reboot/images/t1-1".into(),
            units: vec![UnitOutcome {
                unit: "db.service".into(),
                outcome: OutcomeKind::ColdStarted,
                detail: "pid collision: `postgres` (pid 4242) already in use".into(),
                recorded_unix: 1,
                duration_ms: 2,
                downtime_ms: Some(3),
            }],
            error: Some("cannot read /var/lib/seamless-reboot/images/t1-1".into()),
        };
        let shown = report.for_unprivileged().to_json();
        assert!(
            shown.contains("db.service") && shown.contains("cold-started"),
            "{shown}"
        );
        assert!(
            !shown.contains("4242") && !shown.contains("/var/lib"),
            "{shown}"
        );
        let failed = Report::Failed {
            error: "checkpoint of db.service failed: /usr/bin/postgres -D /srv".into(),
        };
        assert!(!failed.for_unprivileged().to_json().contains("/srv"));
    }
}
