//! The JSON report every scenario writes, and its human summary.
//!
//! The report is the lab's evidence: kernels and boot ids before and after,
//! what each client measured, the timings, and each named check with its
//! outcome. Its schema is `vm-tests/report.schema.json`; a unit test keeps
//! the schema and this code in step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::traffic::ClientReport;

/// Version of the report format; bumped on incompatible changes.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// One client's outcome, named by the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedClient {
    pub name: String,
    #[serde(flatten)]
    pub report: ClientReport,
}

/// One named expectation of a scenario and whether it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Everything a scenario observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub schema_version: u32,
    pub scenario: String,
    pub started_unix: f64,
    pub recipe_hash: String,
    pub run_dir: String,
    pub kernel_before: String,
    pub kernel_after: Option<String>,
    pub boot_id_before: String,
    pub boot_id_after: Option<String>,
    pub clients: Vec<NamedClient>,
    /// Named durations in seconds, e.g. `boot_s`, `kexec_to_ssh_s`.
    pub timings: BTreeMap<String, f64>,
    pub checks: Vec<Check>,
    /// True when every check passed and the scenario ran to its end.
    pub passed: bool,
    /// Why the scenario stopped early, if it did.
    pub error: Option<String>,
}

impl ScenarioReport {
    pub fn new(scenario: &str, started_unix: f64, recipe_hash: &str, run_dir: &Path) -> Self {
        ScenarioReport {
            schema_version: REPORT_SCHEMA_VERSION,
            scenario: scenario.to_string(),
            started_unix,
            recipe_hash: recipe_hash.to_string(),
            run_dir: run_dir.display().to_string(),
            kernel_before: String::new(),
            kernel_after: None,
            boot_id_before: String::new(),
            boot_id_after: None,
            clients: Vec::new(),
            timings: BTreeMap::new(),
            checks: Vec::new(),
            passed: false,
            error: None,
        }
    }

    /// Records an expectation.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail: detail.into(),
        });
    }

    /// Records a duration.
    pub fn timing(&mut self, name: &str, seconds: f64) {
        self.timings.insert(name.to_string(), seconds);
    }

    /// Settles `passed` from the checks; a report without checks or with an
    /// error never passes.
    pub fn settle(&mut self) {
        self.passed =
            self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.passed);
    }

    pub fn failed_checks(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<ScenarioReport> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} does not parse", path.display()))
    }

    /// A readable summary for a terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "scenario {}: {verdict}", self.scenario);
        let _ = writeln!(
            out,
            "  kernel   {} -> {}",
            self.kernel_before,
            self.kernel_after.as_deref().unwrap_or("(not reached)")
        );
        let _ = writeln!(
            out,
            "  boot id  {} -> {}",
            self.boot_id_before,
            self.boot_id_after.as_deref().unwrap_or("(not reached)")
        );
        for client in &self.clients {
            let r = &client.report;
            let outcome = match &r.broken {
                None if r.completed => "survived, complete".to_string(),
                None => "survived".to_string(),
                Some(b) => format!(
                    "BROKEN ({:?} after {:.1} s: {})",
                    b.reason, b.after_s, b.detail
                )
                .to_lowercase(),
            };
            let _ = writeln!(
                out,
                "  client {:<8} {:?}: sent {} B, verified {} B, lost {}, max gap {:.2} s, {outcome}",
                client.name, r.mode, r.bytes_sent, r.bytes_verified, r.lost, r.max_gap_s
            );
        }
        for (name, seconds) in &self.timings {
            let _ = writeln!(out, "  {name:<24} {seconds:>8.2}");
        }
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  [{mark}] {}: {}", check.name, check.detail);
        }
        if let Some(error) = &self.error {
            let _ = writeln!(out, "  error: {error}");
        }
        let _ = writeln!(out, "  report: {}/report.json", self.run_dir);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{BreakReason, Broken, Mode};

    fn client(broken: bool) -> ClientReport {
        ClientReport {
            mode: Mode::Lines,
            target: "127.0.0.1:1".into(),
            started_unix: 1.0,
            duration_s: 2.0,
            bytes_sent: 10,
            bytes_verified: 10,
            lines_sent: 1,
            lines_verified: 1,
            lost: 0,
            max_gap_s: 0.5,
            max_gap_end_unix: Some(1.5),
            broken: broken.then(|| Broken {
                reason: BreakReason::Eof,
                detail: "peer closed".into(),
                at_unix: 2.0,
                after_s: 1.0,
            }),
            completed: !broken,
            kernels_seen: vec!["a".into()],
            boot_ids_seen: vec!["b".into()],
            state_first: Some(1),
            state_last: Some(1),
        }
    }

    fn sample() -> ScenarioReport {
        let mut report = ScenarioReport::new("t", 1.0, "abc", Path::new("/runs/t"));
        report.clients.push(NamedClient {
            name: "lines".into(),
            report: client(true),
        });
        report.timing("boot_s", 30.0);
        report.check("kernel changed", true, "a -> b");
        report
    }

    #[test]
    fn round_trips_through_json() {
        let mut report = sample();
        report.settle();
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("report.json");
        report.write(&path).expect("write");
        assert_eq!(ScenarioReport::read(&path).expect("read"), report);
    }

    #[test]
    fn passes_only_with_all_checks_and_no_error() {
        let mut report = sample();
        report.settle();
        assert!(report.passed);
        report.check("clients broke", false, "one survived");
        report.settle();
        assert!(!report.passed);
        assert_eq!(report.failed_checks().len(), 1);

        let mut empty = ScenarioReport::new("t", 0.0, "h", Path::new("/r"));
        empty.settle();
        assert!(!empty.passed, "no checks is no evidence");

        let mut errored = sample();
        errored.error = Some("guest never came back".into());
        errored.settle();
        assert!(!errored.passed);
    }

    #[test]
    fn summary_names_outcomes() {
        let mut report = sample();
        report.settle();
        let text = report.summary();
        assert!(text.contains("scenario t: PASSED"), "{text}");
        assert!(
            text.contains("broken (eof after 1.0 s: peer closed)"),
            "{text}"
        );
        assert!(text.contains("boot_s"), "{text}");
    }

    /// The documented schema lists exactly the fields the code writes, at the
    /// top level and for each client.
    #[test]
    fn schema_file_matches_the_code() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../report.schema.json")).expect("schema parses");
        let report = serde_json::to_value(sample()).expect("to json");

        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&schema["properties"]),
            keys(&report),
            "top-level fields"
        );
        let mut required: Vec<String> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .map(|v| v.as_str().expect("str").to_string())
            .collect();
        required.sort();
        assert_eq!(required, keys(&report), "every top-level field is required");
        assert_eq!(
            keys(&schema["$defs"]["client"]["properties"]),
            keys(&report["clients"][0]),
            "client fields"
        );
        assert_eq!(
            keys(&schema["$defs"]["broken"]["properties"]),
            keys(&report["clients"][0]["broken"]),
            "broken fields"
        );
    }
}
