//! The interface on a real (private) bus: a `dbus-daemon` with the system
//! bus's default-deny policy plus `units/dbus-1/system.d/`'s file, the
//! simulated engine, the real polkit authorizer, and a fake polkit
//! authority on the same bus.
//!
//! Needs `dbus-daemon` (Debian package `dbus-daemon`) and root (the bus
//! policy lets only root own the name, which is the point). Where either is
//! missing, each test says so on stderr and passes without running; the
//! unprivileged-caller test also needs `setpriv` and `dbus-send`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use seamless_reboot_core::manifest::{OutcomeKind, UnitOutcome};
use seamless_reboot_core::transaction::{Step, UpdateRequest};
use seamless_reboot_dbus::auth::{AuthorizationResult, PolkitAuthorizer};
use seamless_reboot_dbus::interface::serve;
use seamless_reboot_dbus::proxy::Client;
use seamless_reboot_dbus::report::Report;
use seamless_reboot_dbus::simulated::SimulatedEngine;
use seamless_reboot_dbus::{BUS_NAME, INTERFACE, OBJECT_PATH, POLKIT_ACTION_CHECK, Service};
use zbus::{Connection, OwnedVariant, interface};

const NOBODY: u32 = 65534;

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn can_run(test: &str) -> bool {
    if !have("dbus-daemon") {
        eprintln!("SKIP {test}: no dbus-daemon (apt-get install dbus-daemon)");
        return false;
    }
    if euid() != Some(0) {
        eprintln!("SKIP {test}: not root (only root may own {BUS_NAME})");
        return false;
    }
    true
}

/// A private bus, killed when dropped.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../units/dbus-1/system.d")
        .join(format!("{BUS_NAME}.conf"))
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().expect("tmp");
        // Unprivileged callers must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let socket = dir.path().join("bus");
        let policy = std::fs::canonicalize(policy_file()).expect("policy file");
        // The system bus's defaults (Debian's system.conf): nobody owns or
        // calls anything that a policy file does not open.
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- The fake polkit of these tests. -->
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
            socket = socket.display(),
            policy = policy.display(),
        );
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon did not start (does it accept {}?): {address:?}",
            policy.display()
        );
        Bus {
            child,
            address,
            _dir: dir,
        }
    }

    fn connect(&self) -> Connection {
        zbus::block_on(self.builder().build()).expect("connect")
    }

    fn builder(&self) -> zbus::connection::Builder<'static> {
        zbus::connection::Builder::address(self.address.as_str())
            .method_timeout(Duration::from_secs(30))
    }
}

/// What the fake authority was asked: subject kind, subject name, action,
/// flags.
type Asked = Arc<Mutex<Vec<(String, String, String, u32)>>>;

struct FakeAuthority {
    answer: Arc<Mutex<bool>>,
    asked: Asked,
}

#[interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakeAuthority {
    fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedVariant>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> AuthorizationResult {
        let name = subject
            .1
            .get("name")
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default();
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((subject.0, name, action_id, flags));
        let yes = *self.answer.lock().unwrap_or_else(PoisonError::into_inner);
        AuthorizationResult {
            is_authorized: yes,
            is_challenge: false,
            details: HashMap::new(),
        }
    }
}

struct Polkit {
    answer: Arc<Mutex<bool>>,
    asked: Asked,
    _connection: Connection,
}

impl Polkit {
    fn start(bus: &Bus) -> Polkit {
        let answer = Arc::new(Mutex::new(false));
        let asked = Asked::default();
        // Object and name through the builder, as the daemon does (see
        // `serve`): a call between taking the name and the object server's
        // start would be dropped.
        let connection = zbus::block_on(
            bus.builder()
                .serve_at(
                    "/org/freedesktop/PolicyKit1/Authority",
                    FakeAuthority {
                        answer: answer.clone(),
                        asked: asked.clone(),
                    },
                )
                .name("org.freedesktop.PolicyKit1")
                .build(),
        )
        .expect("fake polkit");
        Polkit {
            answer,
            asked,
            _connection: connection,
        }
    }

    fn answer(&self, yes: bool) {
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = yes;
    }

    fn asked(&self) -> Vec<(String, String, String, u32)> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Daemon {
    engine: Arc<SimulatedEngine>,
    service: Service,
    _connection: Connection,
}

fn daemon(bus: &Bus) -> Daemon {
    let engine = Arc::new(SimulatedEngine::new());
    let authorizer = Arc::new(PolkitAuthorizer::new(bus.connect()));
    let (connection, service) = zbus::block_on(serve(bus.builder(), engine.clone(), authorizer))
        .expect("serves and owns the name");
    Daemon {
        engine,
        service,
        _connection: connection,
    }
}

fn request(units: &[&str]) -> UpdateRequest {
    UpdateRequest {
        kernel: "/boot/vmlinuz-6.12.0".into(),
        units: units.iter().map(|u| (*u).to_string()).collect(),
        ..Default::default()
    }
}

/// Runs dbus-send as `nobody`; its exit status and output.
fn dbus_send_as_nobody(bus: &Bus, args: &[&str]) -> (bool, String) {
    let output = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--reply-timeout=20000"])
        .args(args)
        .output()
        .expect("setpriv runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn check_as_nobody(bus: &Bus) -> (bool, String) {
    dbus_send_as_nobody(
        bus,
        &[
            &format!("--dest={BUS_NAME}"),
            OBJECT_PATH,
            &format!("{INTERFACE}.Check"),
            "string:/boot/vmlinuz-6.12.0",
            "string:",
            "array:string:quiet",
            "array:string:a.service",
            "array:string:",
        ],
    )
}

#[test]
fn root_checks_starts_and_follows_the_update_to_completed() {
    if !can_run("root_checks_starts_and_follows_the_update_to_completed") {
        return;
    }
    let bus = Bus::start();
    let polkit = Polkit::start(&bus);
    let d = daemon(&bus);
    let client = Client::on(bus.connect());

    let checked = client.check(&request(&["a.service"])).expect("check");
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let plan = checked.plan.expect("a plan");
    assert_eq!(plan.target_kernel, "6.12.0");
    assert_eq!(plan.units[0].unit, "a.service");

    d.engine.fail_check(&["a.service: not running"]);
    let checked = client.check(&request(&["a.service"])).expect("check");
    assert_eq!(checked.plan, None);
    assert_eq!(checked.problems, vec!["a.service: not running"]);

    // Root needs no polkit.
    assert!(polkit.asked().is_empty(), "{:?}", polkit.asked());
    let status = client.status().expect("status");
    assert_eq!(status.operation, "idle");
    assert_eq!(status.last_report, "");

    // The plan inside Start fails the same way: the failure path.
    let mut steps = Vec::new();
    let done = client
        .start_and_wait(&request(&["a.service"]), |op, p| {
            steps.push((op.to_string(), p))
        })
        .expect("start");
    assert!(!done.success);
    assert!(
        done.message.contains("a.service: not running"),
        "{}",
        done.message
    );
    let status = client.status().expect("status");
    assert_eq!(status.operation, "idle");
    assert_eq!(status.last_error, done.message);
    assert!(
        status.last_report.contains(r#""kind":"failed""#),
        "{}",
        status.last_report
    );
    d.service.wait_for_worker();
}

#[test]
fn a_successful_update_ends_handed_over_and_busy() {
    if !can_run("a_successful_update_ends_handed_over_and_busy") {
        return;
    }
    let bus = Bus::start();
    let _polkit = Polkit::start(&bus);
    let d = daemon(&bus);
    let client = Client::on(bus.connect());
    let mut steps = Vec::new();
    let done = client
        .start_and_wait(&request(&["a.service", "b.service"]), |op, p| {
            steps.push((op.to_string(), p));
        })
        .expect("start");
    assert!(done.success, "{}", done.message);
    assert!(done.message.contains("6.12.0"), "{}", done.message);
    let ops: Vec<&str> = steps.iter().map(|(o, _)| o.as_str()).collect();
    // Every step of the run, as core names it, reaches the client.
    for want in Step::sequence(&["a.service".into(), "b.service".into()]) {
        let want = want.to_string();
        assert!(ops.contains(&want.as_str()), "{want} missing from {ops:?}");
    }
    assert!(steps.windows(2).all(|w| w[0].1 <= w[1].1), "{steps:?}");
    let status = client.status().expect("status");
    assert_eq!(status.operation, "rebooting");
    assert_eq!(status.progress, 100);
    assert_eq!(status.last_error, "");
    let report: serde_json::Value = serde_json::from_str(&status.last_report).expect("json");
    assert_eq!(report["kind"], "checkpoint");
    assert_eq!(report["units"].as_array().map(Vec::len), Some(2));

    let err = client
        .start_and_wait(&request(&["a.service"]), |_, _| {})
        .expect_err("busy");
    assert!(format!("{err}").starts_with("busy: "), "{err}");
    assert_eq!(d.engine.starts().len(), 1);
    d.service.wait_for_worker();
}

#[test]
fn unprivileged_callers_need_polkit_and_the_bus_policy_holds() {
    if !can_run("unprivileged_callers_need_polkit_and_the_bus_policy_holds") {
        return;
    }
    if !have("setpriv") || !have("dbus-send") {
        eprintln!(
            "SKIP unprivileged_callers_need_polkit_and_the_bus_policy_holds: no setpriv or dbus-send"
        );
        return;
    }
    let bus = Bus::start();
    let polkit = Polkit::start(&bus);
    let d = daemon(&bus);

    // polkit says no: AccessDenied, with the reason.
    let (ok, out) = check_as_nobody(&bus);
    assert!(!ok, "{out}");
    assert!(
        out.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{out}"
    );
    assert!(out.contains(&format!("uid {NOBODY}")), "{out}");
    assert!(out.contains(POLKIT_ACTION_CHECK), "{out}");
    assert!(d.engine.checks().is_empty());
    let asked = polkit.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (kind, name, action, flags) = &asked[0];
    assert_eq!(kind, "system-bus-name");
    assert!(
        name.starts_with(':'),
        "the caller's unique name, got {name:?}"
    );
    assert_eq!(action, POLKIT_ACTION_CHECK);
    assert_eq!(*flags, 1, "AllowUserInteraction");

    // polkit says yes: the dry run goes through.
    polkit.answer(true);
    let (ok, out) = check_as_nobody(&bus);
    assert!(ok, "{out}");
    assert!(out.contains("\"target_kernel\":\"6.12.0\""), "{out}");
    assert_eq!(d.engine.checks().len(), 1);

    // Everybody may read the properties...
    let (ok, out) = dbus_send_as_nobody(
        &bus,
        &[
            &format!("--dest={BUS_NAME}"),
            OBJECT_PATH,
            "org.freedesktop.DBus.Properties.Get",
            &format!("string:{INTERFACE}"),
            "string:Operation",
        ],
    );
    assert!(ok && out.contains("\"idle\""), "{out}");
    // ...but not set them, nor take the name.
    let (ok, out) = dbus_send_as_nobody(
        &bus,
        &[
            &format!("--dest={BUS_NAME}"),
            OBJECT_PATH,
            "org.freedesktop.DBus.Properties.Set",
            &format!("string:{INTERFACE}"),
            "string:Operation",
            "variant:string:hacked",
        ],
    );
    assert!(!ok && out.contains("AccessDenied"), "{out}");
    let (ok, out) = dbus_send_as_nobody(
        &bus,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &format!("string:{BUS_NAME}"),
            "uint32:0",
        ],
    );
    assert!(!ok && out.contains("AccessDenied"), "{out}");
}

#[test]
fn without_polkit_unprivileged_callers_are_refused() {
    if !can_run("without_polkit_unprivileged_callers_are_refused") {
        return;
    }
    if !have("setpriv") || !have("dbus-send") {
        eprintln!("SKIP without_polkit_unprivileged_callers_are_refused: no setpriv or dbus-send");
        return;
    }
    let bus = Bus::start();
    let d = daemon(&bus);
    let (ok, out) = check_as_nobody(&bus);
    assert!(!ok, "{out}");
    assert!(
        out.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{out}"
    );
    assert!(out.contains("polkit could not be asked"), "{out}");
    assert!(d.engine.checks().is_empty());
}

#[test]
fn the_fake_polkit_replies_like_polkit() {
    if !can_run("the_fake_polkit_replies_like_polkit") {
        return;
    }
    // polkit replies with one struct argument; so must the fake, or the
    // authorizer's proxy is tested against the wrong shape.
    let bus = Bus::start();
    let _polkit = Polkit::start(&bus);
    let connection = bus.connect();
    let reply = zbus::block_on(connection.call_method(
        Some("org.freedesktop.PolicyKit1"),
        "/org/freedesktop/PolicyKit1/Authority",
        Some("org.freedesktop.PolicyKit1.Authority"),
        "CheckAuthorization",
        &(
            (
                "system-bus-name",
                HashMap::from([("name", zbus::Variant::from(":1.1"))]),
            ),
            POLKIT_ACTION_CHECK,
            HashMap::<&str, &str>::new(),
            1u32,
            "",
        ),
    ))
    .expect("reply");
    assert_eq!(reply.body().signature().to_string(), "(bba{ss})");
}

#[test]
fn only_root_reads_the_restore_details() {
    if !can_run("only_root_reads_the_restore_details") {
        return;
    }
    let bus = Bus::start();
    let _polkit = Polkit::start(&bus);
    let d = daemon(&bus);
    d.engine.set_restore_report(Some(Report::Restore {
        transaction_dir: "/var/lib/seamless-reboot/images/t1-1".into(),
        units: vec![UnitOutcome {
            unit: "db.service".into(),
            outcome: OutcomeKind::Restored,
            detail: "restored pid 4242".into(),
            recorded_unix: 1,
            duration_ms: 2,
            downtime_ms: Some(3),
        }],
        error: None,
    }));
    let dest = format!("--dest={BUS_NAME}");
    let interface = format!("string:{INTERFACE}");
    let get = [
        dest.as_str(),
        OBJECT_PATH,
        "org.freedesktop.DBus.Properties.Get",
        interface.as_str(),
        "string:LastReport",
    ];
    let (ok, nobody) = dbus_send_as_nobody(&bus, &get);
    assert!(ok, "{nobody}");
    assert!(
        nobody.contains("db.service") && nobody.contains("restored"),
        "{nobody}"
    );
    assert!(
        !nobody.contains("4242") && !nobody.contains("/var/lib"),
        "{nobody}"
    );
    let root = zbus::block_on(
        zbus::fdo::PropertiesProxy::builder(&bus.connect())
            .destination(BUS_NAME)
            .path(OBJECT_PATH)
            .build(),
    )
    .expect("proxy");
    let value = zbus::block_on(root.get(
        zbus::names::InterfaceName::try_from(INTERFACE).expect("name"),
        "LastReport",
    ))
    .expect("root reads");
    let text = String::try_from(value).expect("a string");
    assert!(
        text.contains("restored pid 4242") && text.contains("/var/lib"),
        "{text}"
    );
}
