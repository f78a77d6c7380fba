//! lab-service: the test service the lab checkpoints and restores.
//!
//! It runs inside the guest under systemd and speaks the protocol of
//! `seamless_reboot_vm_tests::traffic`: numbered lines answered with a global
//! counter (its in-memory state) and the kernel it runs on, or an echoed bulk
//! stream. It is deliberately plain so CRIU can checkpoint it at any moment:
//! one thread per connection, no child processes, and no files held open
//! between requests (the /proc files are opened, read and closed per reply).
//! It logs one line per event to stdout (the journal under systemd).

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seamless_reboot_vm_tests::traffic::{
    DEFAULT_LISTEN, Hello, LineRead, LineReply, MAX_LINE_LEN, StateReply, done_line, error_line,
    line_payload, parse_line_request, read_bounded_line, token,
};

const USAGE: &str = "\
usage: lab-service [--listen ADDR] [--hold-unix PATH] [--hold-io-uring]

Test service for the seamless-reboot lab (see the traffic module).
  --listen ADDR      address to listen on (default 0.0.0.0:7777)
  --hold-unix PATH   keep a connection to the unix stream socket PATH open
  --hold-io-uring    keep an io_uring instance open, which CRIU cannot
                     checkpoint (it does not support io_uring): the plan
                     must refuse such a unit
  -h, --help      show this help
";

/// Log a bulk progress line every this many bytes.
const BULK_LOG_EVERY: u64 = 16 << 20;

/// Log a line-mode progress line every this many lines of a connection.
const LINES_LOG_EVERY: u64 = 100;

/// The service's in-memory state.
#[derive(Debug)]
struct Service {
    /// Lines received over all connections since the process started.
    total: AtomicU64,
    /// Number of the next connection (for the log).
    next_conn: AtomicU64,
    pid: u32,
    started_unix: u64,
}

/// Writes one line to stdout and flushes it; errors are ignored (a logging
/// failure must not take the service down).
fn log(msg: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(format!("{msg}\n").as_bytes());
    let _ = out.flush();
}

/// Reads a /proc file (open, read, close) as one protocol token.
fn proc_token(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_owned(), |s| token(&s))
}

/// The running kernel's release, read now.
fn kernel_release() -> String {
    proc_token("/proc/sys/kernel/osrelease")
}

/// The running kernel's boot id, read now.
fn boot_id() -> String {
    proc_token("/proc/sys/kernel/random/boot_id")
}

/// Parsed command line.
#[derive(Debug)]
struct Args {
    listen: String,
    hold_unix: Option<String>,
    hold_io_uring: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: DEFAULT_LISTEN.to_owned(),
        hold_unix: None,
        hold_io_uring: false,
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not UTF-8"))?;
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.into_string().ok())
                .ok_or(format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => parsed.listen = value("--listen")?,
            "--hold-unix" => parsed.hold_unix = Some(value("--hold-unix")?),
            "--hold-io-uring" => parsed.hold_io_uring = true,
            other => match other.strip_prefix("--listen=") {
                Some(v) => parsed.listen = v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("lab-service: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listen = args.listen;
    // Held for the life of the process, on purpose.
    let _held = match &args.hold_unix {
        Some(path) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => {
                log(&format!("lab-service: holding a connection to {path}"));
                Some(stream)
            }
            Err(e) => {
                log(&format!("lab-service: cannot connect to {path}: {e}"));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let _ring = if args.hold_io_uring {
        match io_uring() {
            Ok(ring) => {
                log(&format!(
                    "lab-service: holding io_uring instance fd {}",
                    ring.as_raw_fd()
                ));
                Some(ring)
            }
            Err(e) => {
                log(&format!("lab-service: cannot set up an io_uring: {e}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-service: cannot listen on {listen}: {e}");
            log(&format!("lab-service: cannot listen on {listen}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| listen.clone(), |a| a.to_string());
    let service = Arc::new(Service {
        total: AtomicU64::new(0),
        next_conn: AtomicU64::new(1),
        pid: std::process::id(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    log(&format!(
        "lab-service pid {} listening on {local}, kernel {}",
        service.pid,
        kernel_release()
    ));
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let conn = service.next_conn.fetch_add(1, Ordering::Relaxed);
                let service = Arc::clone(&service);
                let spawned = thread::Builder::new()
                    .name(format!("conn-{conn}"))
                    .spawn(move || handle(&service, conn, &stream, peer));
                if let Err(e) = spawned {
                    log(&format!(
                        "conn {conn}: from {peer}: cannot start a thread: {e}; dropped"
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log(&format!("accept failed: {e}"));
                // Do not spin on a persistent error such as EMFILE.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one connection and logs how it ended.
fn handle(service: &Service, conn: u64, stream: &TcpStream, peer: SocketAddr) {
    log(&format!("conn {conn}: open from {peer}"));
    let reason = match serve(service, conn, stream) {
        Ok(reason) => reason,
        Err(e) => format!("i/o error: {e}"),
    };
    log(&format!("conn {conn}: closed (peer {peer}): {reason}"));
}

/// Sends an error line (best effort) and returns the reason to log.
fn refuse(mut stream: &TcpStream, reason: &str) -> String {
    let _ = stream.write_all(error_line(reason).as_bytes());
    format!("protocol error: {reason}")
}

/// Reads the opening line and runs the requested mode; returns why it ended.
fn serve(service: &Service, conn: u64, stream: &TcpStream) -> io::Result<String> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let hello = match read_bounded_line(&mut reader, MAX_LINE_LEN)? {
        LineRead::Line(line) => line,
        LineRead::Eof => return Ok("client closed before its opening line".into()),
        LineRead::PartialEof(n) => {
            return Ok(format!("client closed in its opening line ({n} bytes)"));
        }
        LineRead::TooLong => return Ok(refuse(stream, "opening line too long")),
        LineRead::NotUtf8 => return Ok(refuse(stream, "opening line is not UTF-8")),
    };
    match Hello::parse(&hello) {
        Err(e) => Ok(refuse(stream, &e.0)),
        Ok(Hello::Lines) => serve_lines(service, conn, &mut reader, stream),
        Ok(Hello::Bulk { total_bytes, seed }) => {
            log(&format!(
                "conn {conn}: bulk of {total_bytes} bytes, seed {seed}"
            ));
            serve_bulk(conn, &mut reader, stream, total_bytes)
        }
        Ok(Hello::State) => {
            let state = StateReply {
                total: service.total.load(Ordering::SeqCst),
                kernel_release: kernel_release(),
                boot_id: boot_id(),
                pid: service.pid,
                started_unix: service.started_unix,
            };
            let mut writer = stream;
            writer.write_all(state.to_line().as_bytes())?;
            Ok(format!("state sent (total {})", state.total))
        }
    }
}

/// Line mode: answers `L <seq> <payload>` lines until the client closes.
fn serve_lines(
    service: &Service,
    conn: u64,
    reader: &mut BufReader<&TcpStream>,
    mut writer: &TcpStream,
) -> io::Result<String> {
    log(&format!("conn {conn}: lines"));
    let mut expected: u64 = 0;
    let mut last_kernel: Option<String> = None;
    loop {
        let line = match read_bounded_line(reader, MAX_LINE_LEN)? {
            LineRead::Line(line) => line,
            LineRead::Eof => return Ok(format!("client closed after {expected} lines")),
            LineRead::PartialEof(n) => {
                return Ok(format!(
                    "client closed after {expected} lines, in the middle of a line ({n} bytes)"
                ));
            }
            LineRead::TooLong => return Ok(refuse(writer, "line too long")),
            LineRead::NotUtf8 => return Ok(refuse(writer, "line is not UTF-8")),
        };
        let (seq, payload) = match parse_line_request(&line) {
            Ok(v) => v,
            Err(e) => return Ok(refuse(writer, &e.0)),
        };
        if seq != expected {
            return Ok(refuse(
                writer,
                &format!("expected seq {expected}, got {seq}"),
            ));
        }
        if payload != line_payload(seq) {
            return Ok(refuse(writer, &format!("corrupt payload at seq {seq}")));
        }
        let total = service.total.fetch_add(1, Ordering::SeqCst) + 1;
        let kernel = kernel_release();
        if let Some(previous) = &last_kernel
            && *previous != kernel
        {
            log(&format!(
                "conn {conn}: kernel changed from {previous} to {kernel} at seq {seq}"
            ));
        }
        let reply = LineReply {
            seq,
            total,
            kernel_release: kernel,
            boot_id: boot_id(),
            payload: payload.to_owned(),
        };
        writer.write_all(reply.to_line().as_bytes())?;
        expected += 1;
        if expected.is_multiple_of(LINES_LOG_EVERY) {
            log(&format!(
                "conn {conn}: seq {seq}, total {total}, kernel {}",
                reply.kernel_release
            ));
        }
        last_kernel = Some(reply.kernel_release);
    }
}

/// Reads into `buf`, retrying reads interrupted by signals.
fn read_retrying(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Bulk mode: echoes `total_bytes` bytes, sends DONE, waits for the client to close.
fn serve_bulk(
    conn: u64,
    reader: &mut BufReader<&TcpStream>,
    mut writer: &TcpStream,
    total_bytes: u64,
) -> io::Result<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut crc = crc32fast::Hasher::new();
    let mut received: u64 = 0;
    let mut next_log = BULK_LOG_EVERY;
    while received < total_bytes {
        let want = usize::try_from(total_bytes - received)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = read_retrying(reader, &mut buf[..want])?;
        if n == 0 {
            return Ok(format!(
                "client closed after {received} of {total_bytes} bulk bytes"
            ));
        }
        writer.write_all(&buf[..n])?;
        crc.update(&buf[..n]);
        received += n as u64;
        if received >= next_log {
            log(&format!(
                "conn {conn}: bulk {received} of {total_bytes} bytes, kernel {}",
                kernel_release()
            ));
            next_log = received - received % BULK_LOG_EVERY + BULK_LOG_EVERY;
        }
    }
    let crc = crc.finalize();
    writer.write_all(done_line(total_bytes, crc).as_bytes())?;
    let mut extra: u64 = 0;
    loop {
        match read_retrying(reader, &mut buf)? {
            0 => break,
            n => extra += n as u64,
        }
    }
    Ok(if extra == 0 {
        format!("bulk done ({total_bytes} bytes, crc32 {crc:08x}), client closed")
    } else {
        format!(
            "bulk done ({total_bytes} bytes, crc32 {crc:08x}), but the client sent {extra} bytes too many"
        )
    })
}

/// Sets up an io_uring instance (4 entries) and returns its fd.
#[allow(unsafe_code)]
fn io_uring() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // `struct io_uring_params` is 120 bytes; zeroed means no flags.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes the 120-byte
    // `struct io_uring_params` that `params` provides, and returns a new
    // file descriptor or -1; nothing else is touched.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
