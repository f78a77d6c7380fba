//! Runs the real `lab-service` and `lab-client` binaries against each other on
//! 127.0.0.1, so the protocol, the verifiers and the client's stop and
//! breakage handling are proven end to end before the lab relies on them in a
//! guest that reboots.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use seamless_reboot_vm_tests::traffic::{BreakReason, ClientReport, Mode, StateReply};

const SERVICE: &str = env!("CARGO_BIN_EXE_lab-service");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");

/// Kills and reaps a child process when dropped (also when a test fails).
struct ChildGuard {
    child: Child,
    name: &'static str,
}

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the child to exit; true if it did.
    fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Collects a child's output stream in the background.
fn drain(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = from.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

struct Service {
    guard: ChildGuard,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// Starts lab-service on a free loopback port (retrying if the port was taken
/// between finding and binding it).
fn start_service() -> Service {
    for _ in 0..10 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let mut child = Command::new(SERVICE)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lab-service");
        let stdout = child.stdout.take().expect("service stdout");
        let guard = ChildGuard {
            child,
            name: "lab-service",
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(first) => {
                assert!(
                    first.contains(&format!("listening on 127.0.0.1:{port}")),
                    "unexpected first log line {first:?}"
                );
                assert!(first.starts_with("lab-service pid "), "{first:?}");
                return Service { guard, port, log };
            }
            // The service exited without a log line: most likely the port
            // was taken meanwhile; try another one.
            Err(mpsc::RecvTimeoutError::Disconnected) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("lab-service did not start within 10 s"),
        }
    }
    panic!("could not start lab-service on a free port");
}

struct Client {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
}

fn spawn_client(args: &[&str]) -> Client {
    let mut child = Command::new(CLIENT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab-client");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    Client {
        guard: ChildGuard {
            child,
            name: "lab-client",
        },
        stdin,
        stdout,
        stderr,
    }
}

impl Client {
    /// Closes stdin: the lab's "stop".
    fn stop(&mut self) {
        self.stdin.take();
    }

    /// Waits (bounded) for the client to exit; returns exit code, stdout, stderr.
    fn finish(mut self, timeout: Duration) -> (i32, String, String) {
        let status = self
            .guard
            .wait_for_exit(timeout)
            .unwrap_or_else(|| panic!("lab-client did not exit within {timeout:?}"));
        let out = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        (status.code().unwrap_or(-1), out, err)
    }

    fn report(self, timeout: Duration) -> ClientReport {
        let (code, out, err) = self.finish(timeout);
        assert_eq!(code, 0, "lab-client failed; stdout {out:?}, stderr {err:?}");
        assert_eq!(out.lines().count(), 1, "exactly one report line: {out:?}");
        serde_json::from_str(out.trim_end())
            .unwrap_or_else(|e| panic!("report {out:?} does not parse: {e}; stderr {err:?}"))
    }
}

fn proc_token(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Runs a line client for `run_for`, then stops it and returns its report.
fn line_run(service: &Service, run_for: Duration) -> ClientReport {
    let addr = service.addr();
    let mut client = spawn_client(&[
        "lines",
        "--connect",
        &addr,
        "--interval-ms",
        "10",
        "--stall-timeout-s",
        "10",
    ]);
    thread::sleep(run_for);
    client.stop();
    client.report(Duration::from_secs(15))
}

#[test]
fn lines_complete_and_state_carries_on_across_connections() {
    let service = start_service();
    let first = line_run(&service, Duration::from_millis(1500));
    assert_eq!(first.mode, Mode::Lines);
    assert_eq!(first.broken, None, "{first:?}");
    assert!(first.completed, "{first:?}");
    assert_eq!(first.lost, 0);
    assert!(first.lines_sent > 10, "{first:?}");
    assert_eq!(first.lines_verified, first.lines_sent);
    assert!(
        first.bytes_verified > first.bytes_sent,
        "replies are longer than requests"
    );
    assert_eq!(first.state_first, Some(1), "fresh service counts from 1");
    assert_eq!(first.state_last, Some(first.lines_sent));
    assert!(first.max_gap_s < 1.0, "{first:?}");
    assert!(first.duration_s >= 1.4, "{first:?}");
    assert_eq!(first.target, service.addr());
    assert_eq!(first.kernels_seen.len(), 1);
    assert_eq!(first.boot_ids_seen.len(), 1);
    if let Some(k) = proc_token("/proc/sys/kernel/osrelease") {
        assert_eq!(first.kernels_seen[0], k);
    }
    if let Some(b) = proc_token("/proc/sys/kernel/random/boot_id") {
        assert_eq!(first.boot_ids_seen[0], b);
    }

    let second = line_run(&service, Duration::from_millis(300));
    assert!(second.completed, "{second:?}");
    assert_eq!(second.lost, 0);
    let (Some(first_last), Some(second_first)) = (first.state_last, second.state_first) else {
        panic!("line reports carry totals: {first:?} {second:?}");
    };
    assert!(second_first > first_last, "the service's state carried on");
    assert_eq!(second.state_last, Some(first_last + second.lines_sent));

    let log = service.log_text();
    assert!(log.contains("conn 1: open from 127.0.0.1:"), "{log}");
    assert!(log.contains("conn 1: seq 99, total 100, kernel "), "{log}");
}

#[test]
fn bulk_echo_is_verified_with_done() {
    let service = start_service();
    let addr = service.addr();
    let bytes = 8u64 << 20;
    let mut client = spawn_client(&[
        "bulk",
        "--connect",
        &addr,
        "--bytes",
        "8M",
        "--seed",
        "12345",
        "--rate",
        "8M",
        "--stall-timeout-s",
        "10",
    ]);
    let report = {
        // Keep stdin open until the client is done on its own.
        let stdin = client.stdin.take();
        let report = client.report(Duration::from_secs(30));
        drop(stdin);
        report
    };
    assert_eq!(report.mode, Mode::Bulk);
    assert_eq!(report.broken, None, "{report:?}");
    assert!(report.completed, "{report:?}");
    assert_eq!(report.bytes_sent, bytes);
    assert_eq!(report.bytes_verified, bytes);
    assert_eq!(report.lost, 0);
    assert_eq!(report.lines_sent, 0);
    assert!(report.duration_s >= 0.9, "rate limit respected: {report:?}");
    // The service logged the clean end (progress lines come every 16 MiB).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !service.log_text().contains("bulk done") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = service.log_text();
    assert!(log.contains("bulk done (8388608 bytes"), "{log}");
    assert!(log.contains("client closed"), "{log}");
}

#[test]
fn bulk_stopped_early_is_not_completed_but_not_broken() {
    let service = start_service();
    let addr = service.addr();
    let mut client = spawn_client(&["bulk", "--connect", &addr, "--bytes", "64M", "--rate", "4M"]);
    thread::sleep(Duration::from_millis(500));
    client.stop();
    let report = client.report(Duration::from_secs(15));
    assert_eq!(report.broken, None, "{report:?}");
    assert!(!report.completed);
    assert!(report.bytes_verified > 0);
    assert!(report.bytes_sent < 64 << 20);
    assert_eq!(report.lost, 0, "in-flight echo was waited for: {report:?}");
}

#[test]
fn killed_service_breaks_the_client_promptly() {
    let mut service = start_service();
    let addr = service.addr();
    let mut client = spawn_client(&[
        "lines",
        "--connect",
        &addr,
        "--interval-ms",
        "10",
        "--stall-timeout-s",
        "60",
    ]);
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    service.guard.kill();
    // stdin stays open: the client must stop by itself.
    let stdin = client.stdin.take();
    let report = client.report(Duration::from_secs(10));
    drop(stdin);
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "client exited promptly"
    );
    assert!(!report.completed);
    let broken = report.broken.expect("broken");
    assert!(
        matches!(broken.reason, BreakReason::Eof | BreakReason::Reset),
        "{broken:?}"
    );
    assert!(report.lines_verified > 0);
    assert!(broken.after_s > 0.4 && broken.after_s < 5.0, "{broken:?}");
}

#[test]
fn stall_is_reported_as_timeout() {
    // A peer that accepts and reads but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let silent = thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut client = spawn_client(&[
        "lines",
        "--connect",
        &addr,
        "--interval-ms",
        "20",
        "--stall-timeout-s",
        "0.5",
    ]);
    let stdin = client.stdin.take();
    let report = client.report(Duration::from_secs(10));
    drop(stdin);
    let broken = report.broken.clone().expect("broken");
    assert_eq!(broken.reason, BreakReason::Timeout, "{report:?}");
    assert!(report.lines_sent > 0);
    assert_eq!(report.lines_verified, 0);
    assert_eq!(report.lost, report.lines_sent);
    drop(silent);
}

#[test]
fn state_subcommand_prints_json() {
    let service = start_service();
    let addr = service.addr();
    let client = spawn_client(&["state", "--connect", &addr]);
    let (code, out, err) = client.finish(Duration::from_secs(15));
    assert_eq!(code, 0, "stderr {err:?}");
    let state: StateReply = serde_json::from_str(out.trim_end()).expect("state JSON");
    assert_eq!(state.total, 0);
    assert_eq!(state.pid, service.guard.child.id());
    assert!(!state.kernel_release.is_empty());
    assert!(state.started_unix > 1_600_000_000);
    let raw: serde_json::Value = serde_json::from_str(out.trim_end()).expect("JSON");
    for key in ["total", "kernel_release", "boot_id", "pid", "started_unix"] {
        assert!(raw.get(key).is_some(), "{key} in {raw}");
    }
    assert!(service.log_text().contains("state sent (total 0)"));
}

#[test]
fn service_rejects_malformed_lines() {
    let service = start_service();
    let mut s = TcpStream::connect(service.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"HELLO lines\nL 0 not-the-payload\n")
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("service answers and closes");
    assert_eq!(answer, "ERR corrupt payload at seq 0\n");

    let mut s = TcpStream::connect(service.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("service answers and closes");
    assert!(
        answer.starts_with("ERR expected `HELLO lines`"),
        "{answer:?}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = Command::new(CLIENT)
        .args(["lines", "--connect", "127.0.0.1:1", "--bogus"])
        .stdin(Stdio::null())
        .output()
        .expect("run lab-client");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag --bogus"));
    let out = Command::new(CLIENT)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run lab-client");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("lab-client lines --connect"));
}

#[test]
fn refused_connection_is_reported_after_the_retry_window() {
    // A port that nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut client = spawn_client(&[
        "lines",
        "--connect",
        &addr,
        "--connect-retry-s",
        "1",
        "--connect-timeout-s",
        "1",
    ]);
    let stdin = client.stdin.take();
    let report = client.report(Duration::from_secs(10));
    drop(stdin);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "retried for about 1 s"
    );
    let broken = report.broken.expect("broken");
    assert_eq!(broken.reason, BreakReason::Error);
    assert!(broken.detail.contains("cannot connect"), "{broken:?}");
    assert!(!report.completed);
}
