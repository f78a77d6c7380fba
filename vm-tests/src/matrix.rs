//! The compatibility matrix: one row per stock Debian service the seamless
//! scenario drives through an update, written as JSON and Markdown into the
//! run directory (the repository keeps the latest in
//! `docs/compatibility.md`).
//!
//! Every cell comes from the run: the package version and the unit's
//! sandbox options are read from the guest, whether it was preserved and
//! what its clients lost from the checks.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::guest::Guest;

/// One service's line.
#[derive(Debug, Clone, Serialize)]
pub struct MatrixRow {
    /// The service and its unit, e.g. `postgresql (postgresql@17-main.service)`.
    pub service: String,
    /// The Debian package and its version.
    pub package: String,
    /// The sandbox its unit uses (the options that differ from systemd's
    /// defaults) and the user its main process runs as.
    pub sandbox: String,
    /// `yes` (same processes after the update), or how it was handled.
    pub preserved: String,
    /// Its clients' connections and what became of them.
    pub connections: String,
    /// What its clients lost (bytes, rows, messages).
    pub lost: String,
    /// Anything else an operator should know.
    pub notes: String,
    /// Whether every check of this service passed.
    pub passed: bool,
}

/// Writes `compatibility.json` and `compatibility.md` into `dir`.
pub fn write_matrix(dir: &Path, kernels: &str, rows: &[MatrixRow]) -> Result<()> {
    std::fs::write(
        dir.join("compatibility.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "kernels": kernels,
            "rows": rows,
        }))?,
    )?;
    std::fs::write(dir.join("compatibility.md"), markdown(kernels, rows))?;
    Ok(())
}

/// The matrix as a Markdown table.
pub fn markdown(kernels: &str, rows: &[MatrixRow]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!(
        "Update {kernels}, one guest, all services at once.\n\n\
         | service | package | sandbox options used | preserved | connections | lost | notes | checks |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&row.service),
            cell(&row.package),
            cell(&row.sandbox),
            cell(&row.preserved),
            cell(&row.connections),
            cell(&row.lost),
            cell(&row.notes),
            if row.passed { "passed" } else { "FAILED" }
        ));
    }
    out
}

/// Unit properties that make a sandbox, as `systemctl show` names them.
const SANDBOX_PROPERTIES: [&str; 24] = [
    "Type",
    "User",
    "DynamicUser",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateIPC",
    "PrivateUsers",
    "PrivateNetwork",
    "ProtectSystem",
    "ProtectHome",
    "ProtectHostname",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "NoNewPrivileges",
    "RestrictNamespaces",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "ReadWritePaths",
    "BindReadOnlyPaths",
    "RuntimeDirectory",
    "StateDirectory",
];

/// The unit's sandbox options that differ from systemd's defaults, and the
/// user its main process runs as.
pub fn sandbox_options(guest: &Guest, unit: &str) -> Result<String> {
    let props: Vec<String> = SANDBOX_PROPERTIES
        .iter()
        .map(|p| format!("-p {p}"))
        .collect();
    let show = guest.query(&format!(
        "systemctl show {} {unit} && echo \"RunsAs=$(ps -o user= -p $(systemctl show -P MainPID {unit}))\"",
        props.join(" ")
    ))?;
    Ok(summarize_sandbox(&show))
}

/// [`sandbox_options`] from `systemctl show`'s `Key=value` lines.
pub fn summarize_sandbox(show: &str) -> String {
    let mut used = Vec::new();
    for line in show.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() || value == "no" || value == "0" {
            continue;
        }
        match key {
            // The full set: no restriction.
            "CapabilityBoundingSet" if value.contains("cap_sys_admin") => {}
            "CapabilityBoundingSet" => {
                used.push(format!("{key}={}", value.split(' ').count()));
            }
            "SystemCallFilter" => used.push(format!("{key}=(set)")),
            "RestrictNamespaces" if value.contains(' ') => used.push(format!("{key}=(some)")),
            "RunsAs" => used.push(format!("runs as {value}")),
            _ => used.push(format!("{key}={value}")),
        }
    }
    used.join(", ")
}

/// The installed version of a Debian package in the guest.
pub fn package_version(guest: &Guest, package: &str) -> Result<String> {
    let version = guest.query(&format!("dpkg-query -W -f '${{Version}}' {package}"))?;
    Ok(format!("{package} {}", version.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_the_options_that_differ_from_the_defaults() {
        let show = "Type=notify\nUser=\nDynamicUser=yes\nPrivateTmp=yes\nPrivateUsers=no\n\
                    ProtectSystem=strict\nSystemCallFilter=~@mount @swap\n\
                    CapabilityBoundingSet=cap_chown cap_kill cap_sys_admin\n\
                    RestrictNamespaces=no\nRunsAs=memcache\n";
        assert_eq!(
            summarize_sandbox(show),
            "Type=notify, DynamicUser=yes, PrivateTmp=yes, ProtectSystem=strict, \
             SystemCallFilter=(set), runs as memcache"
        );
        assert_eq!(
            summarize_sandbox("CapabilityBoundingSet=cap_net_bind_service cap_setuid\n"),
            "CapabilityBoundingSet=2"
        );
    }

    #[test]
    fn escapes_pipes_in_markdown_cells() {
        let row = MatrixRow {
            service: "a|b".into(),
            package: "p 1".into(),
            sandbox: String::new(),
            preserved: "yes".into(),
            connections: "1".into(),
            lost: "0".into(),
            notes: String::new(),
            passed: false,
        };
        let md = markdown("A -> B", &[row]);
        assert!(md.contains("| a\\|b | p 1 |"), "{md}");
        assert!(md.ends_with("| FAILED |\n"), "{md}");
    }
}
