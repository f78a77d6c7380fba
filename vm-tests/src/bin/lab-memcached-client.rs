//! `lab-memcached-client`: one long-lived connection to a memcached server,
//! speaking its text protocol. It stores a counter, then increments it every
//! interval and checks each answer is exactly one more than the last: a lost
//! or repeated command, a restarted server (the counter gone) or a broken
//! connection ends it with an error. Closing its standard input stops it;
//! it then prints one JSON report on standard output.
//!
//! usage: lab-memcached-client --connect HOST:PORT [--interval-ms N]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "seamless-lab-counter";

struct Report {
    increments: u64,
    first_value: u64,
    last_value: u64,
    longest_wait_ms: u128,
    error: Option<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut target = None;
    let mut interval = Duration::from_millis(100);
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--connect", Some(v)) => target = Some(v.clone()),
            ("--interval-ms", Some(v)) => match v.parse() {
                Ok(ms) => interval = Duration::from_millis(ms),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
        i += 2;
    }
    let Some(target) = target else {
        return usage();
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        stop_reader.store(true, Ordering::SeqCst);
    });
    let mut report = Report {
        increments: 0,
        first_value: 0,
        last_value: 0,
        longest_wait_ms: 0,
        error: None,
    };
    if let Err(e) = run(&target, interval, &stop, &mut report) {
        report.error = Some(e);
    }
    // Whoever started it may be gone; the exit status still tells.
    let _ = writeln!(
        std::io::stdout(),
        "{{\"increments\":{},\"first_value\":{},\"last_value\":{},\"longest_wait_ms\":{},\"error\":{}}}",
        report.increments,
        report.first_value,
        report.last_value,
        report.longest_wait_ms,
        report
            .error
            .as_deref()
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|| "null".into())
    );
    if report.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: lab-memcached-client --connect HOST:PORT [--interval-ms N]");
    ExitCode::from(2)
}

fn run(
    target: &str,
    interval: Duration,
    stop: &AtomicBool,
    report: &mut Report,
) -> Result<(), String> {
    let stream =
        TcpStream::connect(target).map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut ask = |request: &str, line: &mut String| -> Result<Duration, String> {
        let sent = Instant::now();
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("send failed: {e}"))?;
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(sent.elapsed()),
            Err(e) => Err(format!("receive failed: {e}")),
        }
    };
    let start = 1000 + u64::from(std::process::id() % 1000);
    ask(
        &format!("set {KEY} 0 0 {}\r\n{start}\r\n", start.to_string().len()),
        &mut line,
    )?;
    if line.trim_end() != "STORED" {
        return Err(format!("set answered {:?}", line.trim_end()));
    }
    report.first_value = start;
    report.last_value = start;
    while !stop.load(Ordering::SeqCst) {
        let waited = ask(&format!("incr {KEY} 1\r\n"), &mut line)?;
        report.longest_wait_ms = report.longest_wait_ms.max(waited.as_millis());
        let answer = line.trim_end();
        let value: u64 = answer
            .parse()
            .map_err(|_| format!("incr answered {answer:?} after {}", report.last_value))?;
        if value != report.last_value + 1 {
            return Err(format!(
                "incr answered {value} after {}: an increment was lost or repeated",
                report.last_value
            ));
        }
        report.last_value = value;
        report.increments += 1;
        if report.increments.is_multiple_of(50) {
            eprintln!(
                "{} increments, value {value}, longest wait {} ms",
                report.increments, report.longest_wait_ms
            );
        }
        std::thread::sleep(interval);
    }
    Ok(())
}
