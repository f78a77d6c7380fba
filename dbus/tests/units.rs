//! The files in `units/` name the same bus name, interface, unit and polkit
//! action as the code, so a rename on either side cannot silently break
//! activation, the bus policy or authorization. Plain string checks: the
//! files are small and their format is fixed.

use std::path::PathBuf;

use seamless_reboot_dbus::{
    BUS_NAME, INTERFACE, POLKIT_ACTION_CHECK, POLKIT_ACTION_START, SYSTEMD_UNIT,
};

fn units_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../units")
}

fn read(relative: &str) -> String {
    let path = units_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the first `<tag ...>...</tag>` element whose opening tag
/// contains `attrs`.
fn element<'a>(xml: &'a str, tag: &str, attrs: &str) -> &'a str {
    let open = format!("<{tag} {attrs}");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in\n{xml}"));
    let close = format!("</{tag}>");
    let end = xml[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("{open} is not closed"));
    &xml[start..start + end + close.len()]
}

/// `Key=value` lines of an INI-style file.
fn ini_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[test]
fn polkit_actions_match_the_code() {
    let xml = read("polkit-1/actions/org.seamlessreboot.policy");
    assert!(xml.starts_with("<?xml"), "not an XML file");
    assert!(xml.contains("<!DOCTYPE policyconfig"));
    for (id, active) in [
        (POLKIT_ACTION_CHECK, "auth_admin_keep"),
        // Authenticated for each update: nothing kept.
        (POLKIT_ACTION_START, "auth_admin"),
    ] {
        let action = element(&xml, "action", &format!(r#"id="{id}""#));
        assert!(action.contains("<allow_any>no</allow_any>"), "{action}");
        assert!(
            action.contains("<allow_inactive>no</allow_inactive>"),
            "{action}"
        );
        assert!(
            action.contains(&format!("<allow_active>{active}</allow_active>")),
            "{action}"
        );
        // polkit reads actions from files named after them, by convention.
        assert!(id.starts_with("org.seamlessreboot."));
    }
    assert_eq!(xml.matches("<action ").count(), 2, "check and start only");
    // The start dialog names what it does, from the call's details.
    let start = element(&xml, "action", &format!(r#"id="{POLKIT_ACTION_START}""#));
    assert!(
        start.contains("$(kernel)") && start.contains("$(units)"),
        "{start}"
    );
    // The rule lets admins check without a prompt, and only check.
    let rules = read("polkit-1/rules.d/50-seamless-reboot.rules");
    assert!(rules.contains(&format!(r#"action.id == "{POLKIT_ACTION_CHECK}""#)));
    assert!(!rules.contains(POLKIT_ACTION_START), "{rules}");
}

#[test]
fn bus_policy_matches_the_code() {
    let xml = read(&format!("dbus-1/system.d/{BUS_NAME}.conf"));
    assert!(xml.starts_with("<?xml"), "not an XML file");
    assert!(xml.contains("<!DOCTYPE busconfig"));
    let root = element(&xml, "policy", r#"user="root""#);
    assert!(
        root.contains(&format!(r#"<allow own="{BUS_NAME}"/>"#)),
        "{root}"
    );
    let default = element(&xml, "policy", r#"context="default""#);
    assert!(
        !default.contains("own="),
        "only root may own the name:\n{default}"
    );
    assert!(!default.contains("<deny"), "{default}");
    let allows: Vec<&str> = default
        .split("<allow")
        .skip(1)
        .map(|a| a.split("/>").next().unwrap_or(""))
        .collect();
    let allows_to = |interface: &str, member: Option<&str>| {
        allows.iter().any(|a| {
            a.contains(&format!(r#"send_destination="{BUS_NAME}""#))
                && a.contains(&format!(r#"send_interface="{interface}""#))
                && member.is_none_or(|m| a.contains(&format!(r#"send_member="{m}""#)))
        })
    };
    assert!(allows_to(INTERFACE, None), "{default}");
    assert!(allows_to("org.freedesktop.DBus.Properties", Some("Get")));
    assert!(allows_to("org.freedesktop.DBus.Properties", Some("GetAll")));
    assert!(allows_to("org.freedesktop.DBus.Introspectable", None));
    // Every property is read-only: Set is not let through.
    assert!(!allows.iter().any(|a| a.contains(r#"send_member="Set""#)));
    assert!(
        allows
            .iter()
            .filter(|a| a.contains("org.freedesktop.DBus.Properties"))
            .all(|a| a.contains("send_member=")),
        "Properties must be limited to Get and GetAll"
    );
}

#[test]
fn activation_file_matches_the_code() {
    let text = read(&format!("dbus-1/system-services/{BUS_NAME}.service"));
    assert!(text.contains("[D-BUS Service]"));
    assert_eq!(ini_values(&text, "Name"), vec![BUS_NAME]);
    assert_eq!(ini_values(&text, "User"), vec!["root"]);
    assert_eq!(ini_values(&text, "SystemdService"), vec![SYSTEMD_UNIT]);
}

#[test]
fn service_unit_matches_the_code() {
    let text = read(SYSTEMD_UNIT);
    assert_eq!(ini_values(&text, "Type"), vec!["dbus"]);
    assert_eq!(ini_values(&text, "BusName"), vec![BUS_NAME]);
    assert_eq!(
        ini_values(&text, "ExecStart"),
        vec!["/usr/bin/seamless-reboot daemon"]
    );
    assert!(ini_values(&text, "User").is_empty(), "must run as root");
    assert_eq!(ini_values(&text, "KillMode"), vec!["mixed"]);
    for namespacing in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateNetwork",
        "SystemCallFilter",
        "RestrictNamespaces",
    ] {
        assert!(
            ini_values(&text, namespacing).is_empty(),
            "{namespacing}= would break CRIU or kexec"
        );
    }
}

#[test]
fn tmpfiles_create_the_state_directories() {
    let text = read("tmpfiles.d/seamless-reboot.conf");
    let lines: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.contains(&vec![
        "d",
        "/var/lib/seamless-reboot",
        "0700",
        "root",
        "root",
        "-"
    ]));
    assert!(lines.contains(&vec![
        "d",
        "/run/seamless-reboot",
        "0755",
        "root",
        "root",
        "-"
    ]));
    // The default image directory lies inside the private one.
    let image_dir = seamless_reboot_config::Config::default().image_dir;
    assert!(
        image_dir.starts_with("/var/lib/seamless-reboot"),
        "{}",
        image_dir.display()
    );
}
