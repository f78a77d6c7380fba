//! Stock Debian services of the compatibility matrix, each driven by its own
//! Debian client on the guest's Linux peer: PostgreSQL (psql), Mosquitto
//! (mosquitto_pub and mosquitto_sub) and HAProxy (curl through it to nginx
//! on the same guest).
//!
//! Each service is set up as an operator would (the one configuration
//! change a remote client needs), started on its clients before the update,
//! and checked after it: the same processes, the clients' own output
//! complete, and the unit's own commands working. Each ends in its row of
//! the matrix.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use crate::debian_clients::{ClientCommand, FedClient, ScriptedClient};
use crate::guest::Guest;
use crate::matrix::{MatrixRow, package_version, sandbox_options};
use crate::netns::{GUEST_PEER_ADDR, PEER_ADDR};
use crate::process::poll;
use crate::scenario::{
    Download, OwnCommands, Session, check_refuses, own_commands, process_identity, unit_main_pid,
};

/// A check: its name, whether it passed, and what was seen.
pub type Check = (String, bool, String);

/// The matrix row and the checks of one service.
#[derive(Debug)]
pub struct Outcome {
    pub row: MatrixRow,
    pub checks: Vec<Check>,
}

impl Outcome {
    fn new(mut row: MatrixRow, checks: Vec<Check>) -> Outcome {
        row.passed = checks.iter().all(|(_, ok, _)| *ok);
        Outcome { row, checks }
    }
}

/// Debian trixie's PostgreSQL cluster unit (`postgresql@<version>-main`).
pub const POSTGRES_UNIT: &str = "postgresql@17-main.service";
const POSTGRES_PACKAGE: &str = "postgresql-17";
const POSTGRES_CONF: &str = "/etc/postgresql/17/main";

/// PostgreSQL (a root-started `pg_ctlcluster`, `Type=forking` with a
/// `PIDFile=`, a postmaster and its workers as user postgres, shared
/// memory of three kinds), with two psql sessions from the peer: one
/// inserting a row every 100 ms, one holding a transaction open across the
/// update.
#[derive(Debug)]
pub struct Postgres {
    inserter: FedClient,
    holder: ScriptedClient,
    main_pid: i32,
    identity: String,
    refused_stock: Check,
    refused_local: Check,
    row: MatrixRow,
}

/// psql's connection to the lab's database, from the peer.
fn psql_command<'a>(session: &'a Session<'_>, name: &str) -> ClientCommand<'a> {
    ClientCommand {
        wrapper: session.wrapper(),
        program: "psql",
        args: [
            "-h",
            GUEST_PEER_ADDR,
            "-U",
            "lab",
            "-d",
            "lab",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("PGPASSWORD", "lab"), ("PGCONNECT_TIMEOUT", "30")],
        log: session.vm.run_dir.join(format!("client-{name}.log")),
    }
}

impl Postgres {
    /// The stock unit is refused by the check (System V memory of the
    /// host's IPC namespace); the operator gives it `PrivateIPC=yes` as the
    /// refusal says, opens it to the peer, and the clients start.
    pub fn start(session: &Session<'_>, vmlinuz: &str) -> Result<Postgres> {
        let guest = session.guest();
        let package = package_version(guest, POSTGRES_PACKAGE)?;
        let stock_sandbox = sandbox_options(guest, POSTGRES_UNIT)?;
        let refused = check_refuses(
            guest,
            vmlinuz,
            POSTGRES_UNIT,
            &["System V shared memory", "PrivateIPC=yes"],
        );
        let refused_stock = (
            "postgresql: check refuses the packaged unit up front (System V memory of the host's IPC namespace) and names the remedy"
                .to_string(),
            refused.is_ok(),
            format!("{refused:?}"),
        );
        guest.sh(&format!(
            "printf \"listen_addresses = '*'\\n\" > {POSTGRES_CONF}/conf.d/50-lab.conf && \
             echo 'host lab lab {PEER_ADDR}/32 scram-sha-256' >> {POSTGRES_CONF}/pg_hba.conf && \
             mkdir -p /etc/systemd/system/postgresql@.service.d && \
             printf '[Service]\\nPrivateIPC=yes\\n' > /etc/systemd/system/postgresql@.service.d/50-lab-ipc.conf && \
             systemctl daemon-reload && systemctl restart {POSTGRES_UNIT} && \
             runuser -u postgres -- psql -q -c \"CREATE ROLE lab LOGIN PASSWORD 'lab'\" -c 'CREATE DATABASE lab OWNER lab' && \
             PGPASSWORD=lab psql -q -h 127.0.0.1 -U lab -d lab \
               -c 'CREATE TABLE ticks (n integer PRIMARY KEY)' -c 'CREATE TABLE held (n integer)'"
        ))?;
        // A local psql on the unit's unix socket: CRIU cannot save one end
        // of a unix connection, so the check refuses while it is connected,
        // naming it.
        guest.sh("systemd-run --quiet --unit lab-local-psql --uid postgres \
               sh -c 'sleep 600 | psql -q'")?;
        let refused = check_refuses(
            guest,
            vmlinuz,
            POSTGRES_UNIT,
            &["unix connections to processes outside it", "(`psql`)"],
        );
        let refused_local = (
            "postgresql: check refuses it while a local psql is connected over its unix socket, naming psql"
                .to_string(),
            refused.is_ok(),
            format!("{refused:?}"),
        );
        guest.sh("systemctl stop lab-local-psql.service")?;
        let (_, main_pid) = unit_main_pid(guest, POSTGRES_UNIT)?;
        let identity = process_identity(guest, main_pid)?;
        let mut holder = ScriptedClient::start(&psql_command(session, "psql-held"))?;
        holder.send(
            "BEGIN;\nINSERT INTO held VALUES (1);\nSELECT 'backend=' || pg_backend_pid();\n",
        )?;
        let inserter = FedClient::start(
            &psql_command(session, "psql-insert"),
            Duration::from_millis(100),
            |n| format!("INSERT INTO ticks VALUES ({n});\n"),
        )?;
        poll(
            "the psql session to open its transaction",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || Ok(holder.printed().contains("backend=").then_some(())),
        )?;
        let row = MatrixRow {
            service: format!("postgresql ({POSTGRES_UNIT})"),
            package,
            sandbox: format!("{stock_sandbox}; plus PrivateIPC=yes (drop-in)"),
            preserved: String::new(),
            connections: "2 psql sessions over TCP from the peer: one inserting a row every 100 ms, one holding a transaction open".into(),
            lost: String::new(),
            notes: "the packaged unit is refused by check (its System V segment lives in the host's IPC namespace, which CRIU cannot save); with the one-line drop-in the refusal names, it is preserved with its /dev/shm segments; a local psql on its unix socket is refused by check, naming it".into(),
            passed: false,
        };
        Ok(Postgres {
            inserter,
            holder,
            main_pid,
            identity,
            refused_stock,
            refused_local,
            row,
        })
    }

    pub fn after_update(mut self, session: &Session<'_>) -> Result<Outcome> {
        let guest = session.guest().clone();
        let mut checks = vec![self.refused_stock.clone(), self.refused_local.clone()];
        let (state, pid) = unit_main_pid(&guest, POSTGRES_UNIT)?;
        let identity = process_identity(&guest, pid)?;
        let same = state == "active" && pid == self.main_pid && identity == self.identity;
        checks.push((
            "postgresql: active with the same postmaster, user and IPC and mount namespaces".into(),
            same,
            format!("{state}; MainPID {} -> {pid}:\n{identity}", self.main_pid),
        ));
        // A few more rows after the restore, then the session's end.
        std::thread::sleep(Duration::from_secs(3));
        let inserter_running = self.inserter.running();
        let (sent, status, printed) = self.inserter.finish(Duration::from_secs(120))?;
        let counted = guest.query(
            "PGPASSWORD=lab psql -h 127.0.0.1 -U lab -d lab -X -A -t \
             -c \"SELECT count(*) || ' ' || coalesce(max(n), 0) FROM ticks\"",
        )?;
        let expected = format!("{sent} {sent}");
        checks.push((
            "postgresql: every row the inserting session sent is there, on its one connection"
                .into(),
            inserter_running
                && status.is_some_and(|s| s.success())
                && counted.trim() == expected
                && sent > 50,
            format!(
                "sent {sent}, table has (count max) {}; psql {status:?} {}",
                counted.trim(),
                printed.trim()
            ),
        ));
        self.holder.send(
            "INSERT INTO held VALUES (2);\nSELECT 'backend=' || pg_backend_pid();\nCOMMIT;\n\
             SELECT 'held=' || count(*) FROM held;\n",
        )?;
        let (status, printed) = self.holder.finish(Duration::from_secs(60))?;
        let backends: Vec<&str> = printed
            .lines()
            .filter(|l| l.starts_with("backend="))
            .collect();
        checks.push((
            "postgresql: the session's transaction stayed open across the update and committed both rows"
                .into(),
            status.is_some_and(|s| s.success())
                && backends.len() == 2
                && backends[0] == backends[1]
                && printed.lines().any(|l| l == "held=2"),
            format!("psql {status:?}: {}", printed.trim()),
        ));
        checks.push(reload_restart_stop_start(
            &guest,
            POSTGRES_UNIT,
            self.main_pid,
            "postgresql: systemctl reload (same postmaster), restart, stop and start work afterwards",
        )?);
        self.row.preserved = if same { "yes" } else { "NO" }.into();
        self.row.lost = format!(
            "rows: {sent} sent, table holds {}; open transaction committed after",
            counted.trim()
        );
        Ok(Outcome::new(self.row, checks))
    }
}

const MOSQUITTO_UNIT: &str = "mosquitto.service";

/// Mosquitto (`Type=notify`, drops to user mosquitto itself), with
/// `mosquitto_pub` sending a numbered QoS 1 message every 100 ms and
/// `mosquitto_sub` receiving them, each over one connection from the peer.
#[derive(Debug)]
pub struct Mosquitto {
    publisher: FedClient,
    subscriber: ScriptedClient,
    main_pid: i32,
    row: MatrixRow,
}

/// The MQTT client's common arguments: the guest, QoS 1, a keepalive longer
/// than any blackout, a fixed client id, debug lines (each connection
/// attempt prints `sending CONNECT`). Its output goes to a file, which
/// stdio buffers in blocks: `stdbuf` makes it a line at a time.
fn mqtt_command<'a>(session: &'a Session<'_>, program: &'a str, id: &str) -> ClientCommand<'a> {
    ClientCommand {
        wrapper: session.wrapper(),
        program: "stdbuf",
        args: [
            "-oL",
            program,
            "-h",
            GUEST_PEER_ADDR,
            "-t",
            "lab/seq",
            "-q",
            "1",
            "-k",
            "600",
            "-i",
            id,
            "-d",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![],
        log: session.vm.run_dir.join(format!("client-{program}.log")),
    }
}

impl Mosquitto {
    pub fn start(session: &Session<'_>) -> Result<Mosquitto> {
        let guest = session.guest();
        // The operator's one change: a listener for remote clients.
        guest.sh(&format!(
            "printf 'listener 1883 0.0.0.0\\nallow_anonymous true\\n' > /etc/mosquitto/conf.d/50-lab.conf && \
             systemctl restart {MOSQUITTO_UNIT} && systemctl is-active {MOSQUITTO_UNIT}"
        ))?;
        let (_, main_pid) = unit_main_pid(guest, MOSQUITTO_UNIT)?;
        let subscriber = ScriptedClient::start(&mqtt_command(session, "mosquitto_sub", "lab-sub"))?;
        poll(
            "mosquitto_sub to subscribe",
            Duration::from_secs(60),
            Duration::from_millis(300),
            || Ok(subscriber.printed().contains("SUBACK").then_some(())),
        )?;
        let mut publish = mqtt_command(session, "mosquitto_pub", "lab-pub");
        publish.args.push("-l".into());
        let publisher =
            FedClient::start(&publish, Duration::from_millis(100), |n| format!("{n}\n"))?;
        poll(
            "the first messages to arrive",
            Duration::from_secs(60),
            Duration::from_millis(300),
            || Ok(subscriber.printed().lines().any(|l| l == "3").then_some(())),
        )?;
        Ok(Mosquitto {
            publisher,
            subscriber,
            main_pid,
            row: MatrixRow {
                service: format!("mosquitto ({MOSQUITTO_UNIT})"),
                package: package_version(guest, "mosquitto")?,
                sandbox: sandbox_options(guest, MOSQUITTO_UNIT)?,
                preserved: String::new(),
                connections: "mosquitto_pub (a numbered QoS 1 message every 100 ms) and mosquitto_sub, one connection each, from the peer".into(),
                lost: String::new(),
                notes: "the operator's listener in conf.d; the broker's persistence file untouched".into(),
                passed: false,
            },
        })
    }

    pub fn after_update(mut self, session: &Session<'_>) -> Result<Outcome> {
        let guest = session.guest().clone();
        let mut checks = Vec::new();
        let (state, pid) = unit_main_pid(&guest, MOSQUITTO_UNIT)?;
        let same = state == "active" && pid == self.main_pid;
        checks.push((
            "mosquitto: active with the same broker process".into(),
            same,
            format!("{state}; MainPID {} -> {pid}", self.main_pid),
        ));
        std::thread::sleep(Duration::from_secs(3));
        let publishing = self.publisher.running();
        let (sent, status, published) = self.publisher.finish(Duration::from_secs(60))?;
        // The last messages' way to the subscriber.
        std::thread::sleep(Duration::from_secs(3));
        let received = self.subscriber.terminate()?;
        let tally = tally_messages(&received, sent);
        let connects = |log: &str| log.matches("sending CONNECT").count();
        checks.push((
            "mosquitto: every QoS 1 message arrived, in one connection each for publisher and subscriber"
                .into(),
            publishing
                && status.is_some_and(|s| s.success())
                && sent > 50
                && tally.missing.is_empty()
                && connects(&published) == 1
                && connects(&received) == 1,
            format!(
                "sent {sent}, received {} ({} distinct, missing {:?}); CONNECTs: pub {}, sub {}; mosquitto_pub {status:?}",
                tally.received,
                tally.distinct,
                tally.missing.iter().take(10).collect::<Vec<_>>(),
                connects(&published),
                connects(&received)
            ),
        ));
        checks.push(reload_restart_stop_start(
            &guest,
            MOSQUITTO_UNIT,
            self.main_pid,
            "mosquitto: systemctl reload (same broker), restart, stop and start work afterwards",
        )?);
        self.row.preserved = if same { "yes" } else { "NO" }.into();
        self.row.lost = format!(
            "messages: {sent} sent, {} missing, {} duplicates (QoS 1 allows duplicates)",
            tally.missing.len(),
            tally.received - tally.distinct
        );
        Ok(Outcome::new(self.row, checks))
    }
}

/// What a subscriber received of messages `1..=sent`.
#[derive(Debug, PartialEq, Eq)]
pub struct Tally {
    pub received: usize,
    pub distinct: usize,
    pub missing: Vec<u64>,
}

/// Counts the numbered payloads in `mosquitto_sub -d`'s output (its debug
/// lines start with `Client `).
pub fn tally_messages(output: &str, sent: u64) -> Tally {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for n in output.lines().filter_map(|l| l.trim().parse::<u64>().ok()) {
        *seen.entry(n).or_default() += 1;
    }
    Tally {
        received: seen.values().sum(),
        distinct: seen.len(),
        missing: (1..=sent).filter(|n| !seen.contains_key(n)).collect(),
    }
}

const HAPROXY_UNIT: &str = "haproxy.service";
/// The port of the lab's haproxy frontend.
const HAPROXY_PORT: u16 = 8080;

/// HAProxy (master-worker, `Type=notify`, the worker chrooted as user
/// haproxy, its own mount namespace for /dev/log) in front of nginx on the
/// same guest: a download from the peer through it, so the update carries
/// a connection on each side of the proxy, the backend one over loopback.
#[derive(Debug)]
pub struct Haproxy {
    download: Download,
    master_pid: i32,
    workers: String,
    row: MatrixRow,
}

fn haproxy_workers(guest: &Guest, master: i32) -> Result<String> {
    Ok(guest
        .query(&format!("pgrep -d, -P {master} || true"))?
        .trim()
        .to_string())
}

impl Haproxy {
    /// `sha256` is that of nginx's `big.bin`, which the download fetches.
    pub fn start(session: &Session<'_>, sha256: &str) -> Result<Haproxy> {
        let guest = session.guest();
        guest.sh(&format!(
            "printf '\\nfrontend lab\\n\\tbind :{HAPROXY_PORT}\\n\\tdefault_backend nginx\\n\\nbackend nginx\\n\\tserver local 127.0.0.1:80\\n' \
               >> /etc/haproxy/haproxy.cfg && \
             systemctl restart {HAPROXY_UNIT} && systemctl is-active {HAPROXY_UNIT}"
        ))?;
        let (_, master_pid) = unit_main_pid(guest, HAPROXY_UNIT)?;
        let workers = haproxy_workers(guest, master_pid)?;
        let download = Download::start(
            session,
            &format!("http://{GUEST_PEER_ADDR}:{HAPROXY_PORT}/big.bin"),
            "haproxy-big.bin",
            sha256,
        )?;
        Ok(Haproxy {
            download,
            master_pid,
            workers,
            row: MatrixRow {
                service: format!("haproxy ({HAPROXY_UNIT})"),
                package: package_version(guest, "haproxy")?,
                sandbox: sandbox_options(guest, HAPROXY_UNIT)?,
                preserved: String::new(),
                connections: "curl from the peer through haproxy to nginx on the same guest (loopback to the backend), rate-limited to span the update".into(),
                lost: String::new(),
                notes: "master-worker; the worker chrooted to /var/lib/haproxy".into(),
                passed: false,
            },
        })
    }

    pub fn after_update(mut self, session: &Session<'_>) -> Result<Outcome> {
        let guest = session.guest().clone();
        let mut checks = Vec::new();
        let (state, master) = unit_main_pid(&guest, HAPROXY_UNIT)?;
        let workers = haproxy_workers(&guest, master)?;
        let same = state == "active" && master == self.master_pid && workers == self.workers;
        checks.push((
            "haproxy: active with the same master and worker".into(),
            same,
            format!(
                "{state}; master {} -> {master}; workers {} -> {workers}",
                self.master_pid, self.workers
            ),
        ));
        let (complete, detail) = self.download.finish(Duration::from_secs(600))?;
        checks.push((
            "haproxy: the download through it completed byte for byte".into(),
            complete,
            detail.clone(),
        ));
        checks.push(reload_restart_stop_start(
            &guest,
            HAPROXY_UNIT,
            self.master_pid,
            "haproxy: systemctl reload (same master), restart, stop and start work afterwards",
        )?);
        self.row.preserved = if same { "yes" } else { "NO" }.into();
        self.row.lost = if complete {
            "0 bytes (sha256 equal)".into()
        } else {
            format!("download incomplete: {detail}")
        };
        Ok(Outcome::new(self.row, checks))
    }
}

/// Runs `unit`'s own reload (which must keep `main_pid`), then its own
/// restart, stop and start, as an operator would; the check named `name`.
fn reload_restart_stop_start(
    guest: &Guest,
    unit: &str,
    main_pid: i32,
    name: &str,
) -> Result<Check> {
    let reload = guest.sh(&format!(
        "systemctl reload {unit} && systemctl is-active {unit}"
    ));
    let (_, after_reload) = unit_main_pid(guest, unit)?;
    let OwnCommands {
        restart,
        after_restart,
        stop_start,
    } = own_commands(guest, unit)?;
    Ok((
        name.to_string(),
        reload.is_ok()
            && after_reload == main_pid
            && restart.is_ok()
            && after_restart != main_pid
            && after_restart > 0
            && stop_start.is_ok(),
        format!(
            "reload {reload:?} (MainPID {after_reload}); restart {restart:?} (MainPID {after_restart}); stop/start {stop_start:?}"
        ),
    ))
}

/// The openssh row: a live session (the check's own ssh login) is refused
/// up front.
pub fn openssh_row(session: &Session<'_>, vmlinuz: &str) -> Result<Outcome> {
    let guest = session.guest();
    let refused = check_refuses(
        guest,
        vmlinuz,
        "ssh.service",
        &["sessions are not preserved"],
    );
    let checks = vec![(
        "openssh: with a live login session, check refuses ssh.service up front, saying sessions are not preserved"
            .to_string(),
        refused.is_ok(),
        format!("{refused:?}"),
    )];
    let row = MatrixRow {
        service: "openssh-server (ssh.service)".into(),
        package: package_version(guest, "openssh-server")?,
        sandbox: sandbox_options(guest, "ssh.service")?,
        preserved: "no: refused by check while a login session runs".into(),
        connections: "the lab's own ssh session".into(),
        lost: "nothing: refused before anything happens".into(),
        notes: "login sessions run in session scopes outside ssh.service; they are not preserved, the plan says so".into(),
        passed: false,
    };
    Ok(Outcome::new(row, checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_numbered_messages_and_ignores_debug_lines() {
        let out = "Client lab-sub sending CONNECT\n1\n2\nClient lab-sub received PUBLISH (d0, q1)\n2\n4\n";
        assert_eq!(
            tally_messages(out, 5),
            Tally {
                received: 4,
                distinct: 3,
                missing: vec![3, 5],
            }
        );
    }
}
