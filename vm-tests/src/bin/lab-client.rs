//! lab-client: the host-side traffic client that verifies every byte the lab's
//! test service sends back while the guest is checkpointed, kexecd and
//! restored.
//!
//! It drives one connection (lines or bulk, see the traffic module), checks it
//! with the pure verifiers of `seamless_reboot_vm_tests::traffic`, and prints
//! one JSON `ClientReport` on stdout when it ends. The lab stops it by closing
//! its stdin; it stops by itself when the connection breaks. Judging the
//! report is the lab's business, so a broken run still exits 0.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use seamless_reboot_vm_tests::traffic::{
    BreakReason, Broken, BulkStream, BulkVerifier, ClientReport, GapTracker, Hello, LineRead,
    LineVerifier, MAX_LINE_LEN, Mode, StateReply, WallClock, line_request, read_bounded_line,
};

const USAGE: &str = "\
usage:
  lab-client lines --connect HOST:PORT [--interval-ms 50] [--stall-timeout-s 180] [--progress]
  lab-client bulk  --connect HOST:PORT --bytes N [--seed S] [--rate BYTES_PER_SEC]
                   [--stall-timeout-s 180] [--progress]
  lab-client state --connect HOST:PORT

Traffic client for the seamless-reboot lab: drives one connection to lab-service
and verifies every byte of the replies.

  lines   send `L <seq> <payload>` every interval and verify each reply
  bulk    send N bytes of a deterministic stream and verify the echo and DONE
  state   print the service's STATE as a JSON object

Options:
  --connect HOST:PORT        service address (required)
  --connect-timeout-s SECS   timeout of one connection attempt (default 10)
  --connect-retry-s SECS     keep retrying refused connections this long (default 30)
  --interval-ms MS           lines: time between two lines (default 50)
  --bytes N                  bulk: stream size; suffixes K, M, G are powers of 1024
  --seed S                   bulk: stream seed (default 1)
  --rate BYTES_PER_SEC       bulk: pace the stream (suffixes as for --bytes; default: unpaced)
  --stall-timeout-s SECS     break after this long without reply data while replies
                             are outstanding (default 180)
  --progress                 one progress line per second on stderr
  -h, --help                 show this help

lines and bulk run until stdin reaches end of file (close it to stop) or the
connection breaks, then print one JSON report on stdout and exit 0.
Exit status 2: usage error; 1: internal failure (or, for state, no answer).
";

/// How often the reader wakes up to check stall, stop and progress.
const TICK: Duration = Duration::from_millis(100);

/// Longest sleep slice of the writer, so it notices a stop quickly.
const WRITER_SLICE: Duration = Duration::from_millis(20);

/// Bulk chunk size (smaller when a low rate is asked for).
const BULK_CHUNK: usize = 16 * 1024;

/// How long a clean line-mode shutdown waits for the service to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long the reader waits for the writer to wind down at the end.
const WRITER_JOIN_GRACE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct ConnectOpts {
    target: String,
    attempt_timeout: Duration,
    retry_window: Duration,
}

#[derive(Debug, Clone)]
struct RunOpts {
    connect: ConnectOpts,
    stall_timeout: Duration,
    progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Lines {
        interval: Duration,
    },
    Bulk {
        bytes: u64,
        seed: u64,
        rate: Option<u64>,
    },
}

#[derive(Debug)]
enum Command {
    Help,
    Run(RunOpts, Traffic),
    State(ConnectOpts),
}

fn parse_secs(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag} needs a non-negative number of seconds, got {v:?}"))
}

/// Parses a byte count: digits with an optional K, M or G suffix (powers of 1024).
fn parse_size(flag: &str, v: &str) -> Result<u64, String> {
    let bad = || format!("{flag} needs a number of bytes (suffix K, M or G allowed), got {v:?}");
    let (digits, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{flag} needs a non-negative integer, got {v:?}"));
    }
    v.parse()
        .map_err(|_| format!("{flag} value {v:?} is out of range"))
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    let Some((sub, rest)) = args.split_first() else {
        return Err("missing subcommand (lines, bulk or state)".into());
    };
    if !matches!(sub.as_str(), "lines" | "bulk" | "state" | "help") {
        return Err(format!(
            "unknown subcommand {sub:?} (expected lines, bulk or state)"
        ));
    }
    if sub == "help" {
        return Ok(Command::Help);
    }
    let allowed: &[&str] = match sub.as_str() {
        "lines" => &["--interval-ms", "--stall-timeout-s", "--progress"],
        "bulk" => &[
            "--bytes",
            "--seed",
            "--rate",
            "--stall-timeout-s",
            "--progress",
        ],
        _ => &[],
    };
    let mut connect = None;
    let mut attempt_timeout = Duration::from_secs(10);
    let mut retry_window = Duration::from_secs(30);
    let mut interval = Duration::from_millis(50);
    let mut stall_timeout = Duration::from_secs(180);
    let mut progress = false;
    let mut bytes = None;
    let mut seed = 1;
    let mut rate = None;

    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let common = ["--connect", "--connect-timeout-s", "--connect-retry-s"];
        if !common.contains(&flag) && !allowed.contains(&flag) {
            return Err(if flag.starts_with('-') {
                format!("unknown flag {flag} for `{sub}`")
            } else {
                format!("unexpected argument {flag:?} for `{sub}`")
            });
        }
        if flag == "--progress" {
            if inline.is_some() {
                return Err("--progress takes no value".into());
            }
            progress = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag {
            "--connect" => connect = Some(value),
            "--connect-timeout-s" => attempt_timeout = parse_secs(flag, &value)?,
            "--connect-retry-s" => retry_window = parse_secs(flag, &value)?,
            "--interval-ms" => interval = Duration::from_millis(parse_u64(flag, &value)?),
            "--stall-timeout-s" => stall_timeout = parse_secs(flag, &value)?,
            "--bytes" => bytes = Some(parse_size(flag, &value)?),
            "--seed" => seed = parse_u64(flag, &value)?,
            "--rate" => {
                let r = parse_size(flag, &value)?;
                if r == 0 {
                    return Err("--rate must be above 0".into());
                }
                rate = Some(r);
            }
            _ => return Err(format!("unknown flag {flag} for `{sub}`")),
        }
    }
    let target = connect.ok_or_else(|| format!("`{sub}` needs --connect HOST:PORT"))?;
    if attempt_timeout.is_zero() {
        return Err("--connect-timeout-s must be above 0".into());
    }
    let connect = ConnectOpts {
        target,
        attempt_timeout,
        retry_window,
    };
    let run = RunOpts {
        connect: connect.clone(),
        stall_timeout,
        progress,
    };
    Ok(match sub.as_str() {
        "lines" => Command::Run(run, Traffic::Lines { interval }),
        "bulk" => Command::Run(
            run,
            Traffic::Bulk {
                bytes: bytes.ok_or("`bulk` needs --bytes N")?,
                seed,
                rate,
            },
        ),
        _ => Command::State(connect),
    })
}

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let parsed = match args {
        Ok(args) => parse_args(&args),
        Err(a) => Err(format!("argument {a:?} is not UTF-8")),
    };
    match parsed {
        Err(e) => {
            eprintln!("lab-client: {e}\n(see `lab-client --help`)");
            ExitCode::from(2)
        }
        Ok(Command::Help) => emit(USAGE),
        Ok(Command::State(opts)) => run_state(&opts),
        Ok(Command::Run(opts, traffic)) => {
            let report = run(&opts, traffic);
            match serde_json::to_string(&report) {
                Ok(json) => emit(&format!("{json}\n")),
                Err(e) => {
                    eprintln!("lab-client: cannot serialize the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes `text` to stdout; exit status 0 if that worked, 1 if not.
fn emit(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-client: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Connecting

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

fn connect_once(opts: &ConnectOpts) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in opts.target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, opts.attempt_timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} resolves to no address", opts.target),
        )
    }))
}

/// Connects, retrying transient failures (the guest may still be starting)
/// until the retry window is over.
fn connect(opts: &ConnectOpts) -> io::Result<TcpStream> {
    let deadline = Instant::now() + opts.retry_window;
    let pause = Duration::from_millis(250);
    loop {
        match connect_once(opts) {
            Ok(s) => return Ok(s),
            Err(e) if retryable(&e) && Instant::now() + pause < deadline => thread::sleep(pause),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// `state`

fn run_state(opts: &ConnectOpts) -> ExitCode {
    // With QEMU user networking the host-side port accepts even while nothing
    // listens in the guest and then closes at once: an empty answer is retried
    // like a refused connection.
    let deadline = Instant::now() + opts.retry_window;
    loop {
        match query_state(opts) {
            Ok(state) => {
                return match serde_json::to_string(&state) {
                    Ok(json) => emit(&format!("{json}\n")),
                    Err(e) => {
                        eprintln!("lab-client: cannot serialize the state: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            Err((e, retry)) => {
                if retry && Instant::now() + Duration::from_millis(250) < deadline {
                    thread::sleep(Duration::from_millis(250));
                    continue;
                }
                eprintln!("lab-client: state from {}: {e}", opts.target);
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Asks for the state; on failure also says whether retrying makes sense.
fn query_state(opts: &ConnectOpts) -> Result<StateReply, (String, bool)> {
    let stream = connect(opts).map_err(|e| (format!("cannot connect: {e}"), false))?;
    let io_err = |e: io::Error| {
        let retry = retryable(&e);
        (e.to_string(), retry)
    };
    stream
        .set_read_timeout(Some(opts.attempt_timeout))
        .map_err(io_err)?;
    (&stream)
        .write_all(Hello::State.to_line().as_bytes())
        .map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    match read_bounded_line(&mut reader, MAX_LINE_LEN).map_err(io_err)? {
        LineRead::Line(line) => StateReply::parse(&line).map_err(|e| (e.0, false)),
        LineRead::Eof => Err(("connection closed without an answer".into(), true)),
        LineRead::PartialEof(n) => Err((
            format!("connection closed after {n} bytes of an answer"),
            false,
        )),
        LineRead::TooLong => Err(("answer too long".into(), false)),
        LineRead::NotUtf8 => Err(("answer is not UTF-8".into(), false)),
    }
}

// ---------------------------------------------------------------------------
// `lines` and `bulk`

/// The verifier of the mode being run.
#[derive(Debug)]
enum Checker {
    Lines(LineVerifier),
    Bulk(BulkVerifier),
}

impl Checker {
    /// Tells the verifier how many units (lines or bytes) were sent.
    fn set_sent(&mut self, units: u64) {
        match self {
            Self::Lines(v) => {
                if let Some(last) = units.checked_sub(1) {
                    v.sent(last);
                }
            }
            Self::Bulk(v) => v.sent(units),
        }
    }

    /// Whether something is due from the service, given the units sent.
    fn awaiting(&mut self, units_sent: u64) -> bool {
        self.set_sent(units_sent);
        match self {
            Self::Lines(v) => v.outstanding() > 0,
            Self::Bulk(v) => v.awaiting(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), seamless_reboot_vm_tests::traffic::Violation> {
        match self {
            Self::Lines(v) => v.feed(data).map(drop),
            Self::Bulk(v) => v.feed(data).map(drop),
        }
    }

    fn units_verified(&self) -> u64 {
        match self {
            Self::Lines(v) => v.lines_verified(),
            Self::Bulk(v) => v.verified(),
        }
    }

    fn bytes_verified(&self) -> u64 {
        match self {
            Self::Lines(v) => v.bytes_verified(),
            Self::Bulk(v) => v.verified(),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Lines(_) => false,
            Self::Bulk(v) => v.is_done(),
        }
    }
}

/// Counters shared by the writer and the reader.
#[derive(Debug)]
struct Progress {
    /// Lines, or stream bytes, handed to the socket (counted before the write).
    units_sent: u64,
    /// Bytes of requests or stream handed to the socket.
    bytes_sent: u64,
    /// Units verified (updated by the reader).
    units_verified: u64,
    gap: GapTracker,
}

#[derive(Debug)]
struct Shared {
    progress: Mutex<Progress>,
    /// Stdin reached end of file: stop sending.
    stop: AtomicBool,
    /// The writer has exited.
    writer_done: AtomicBool,
    /// The first breakage noticed, by either thread.
    broken: Mutex<Option<Broken>>,
    clock: WallClock,
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        // A poisoned lock only means another thread panicked; the counters are
        // still meaningful for the report.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broken(&self) -> MutexGuard<'_, Option<Broken>> {
        self.broken.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_broken(&self) -> bool {
        self.broken().is_some()
    }

    /// Records a breakage unless one was recorded already.
    fn set_broken(&self, reason: BreakReason, detail: impl Into<String>) {
        let mut b = self.broken();
        if b.is_none() {
            *b = Some(self.clock.broken(reason, detail, Instant::now()));
        }
    }

    fn should_stop_sending(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.is_broken()
    }

    /// Sleeps until `deadline` in short slices; false if sending should stop.
    fn sleep_until(&self, deadline: Instant) -> bool {
        loop {
            if self.should_stop_sending() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(WRITER_SLICE));
        }
    }

    /// Accounts for `units` about to be written (before the write, so a reply
    /// can never overtake its own accounting).
    fn about_to_send(&self, units: u64, bytes: u64) {
        let mut p = self.progress();
        let outstanding = p.units_sent > p.units_verified;
        p.gap.on_send(Instant::now(), outstanding);
        p.units_sent += units;
        p.bytes_sent += bytes;
    }
}

/// Sets `writer_done` when the writer thread ends, however it ends.
struct WriterDone(Arc<Shared>);

impl Drop for WriterDone {
    fn drop(&mut self) {
        self.0.writer_done.store(true, Ordering::SeqCst);
    }
}

fn describe_write_error(e: &io::Error, what: &str) -> (BreakReason, String) {
    (
        BreakReason::from_io_error(e),
        format!("write failed {what}: {e}"),
    )
}

fn lines_writer(shared: &Shared, mut stream: &TcpStream, interval: Duration) {
    let mut next = Instant::now();
    for seq in 0u64.. {
        if !shared.sleep_until(next) {
            return;
        }
        let line = line_request(seq);
        shared.about_to_send(1, line.len() as u64);
        if let Err(e) = stream.write_all(line.as_bytes()) {
            let (reason, detail) = describe_write_error(&e, &format!("at seq {seq}"));
            shared.set_broken(reason, detail);
            return;
        }
        let now = Instant::now();
        next += interval;
        // After a long block in write() (the peer was paused) resume the
        // normal pace instead of bursting to catch up.
        if next + interval < now {
            next = now;
        }
    }
}

fn bulk_writer(shared: &Shared, mut stream: &TcpStream, bytes: u64, seed: u64, rate: Option<u64>) {
    let chunk_size = match rate {
        // About 50 writes a second, so pacing stays smooth.
        Some(r) => usize::try_from(r / 50)
            .unwrap_or(BULK_CHUNK)
            .clamp(1, BULK_CHUNK),
        None => BULK_CHUNK,
    };
    let mut chunk = vec![0u8; chunk_size];
    let mut gen_stream = BulkStream::new(seed);
    let start = Instant::now();
    let mut sent: u64 = 0;
    while sent < bytes {
        let due = match rate {
            Some(r) => start + Duration::from_secs_f64(sent as f64 / r as f64),
            None => Instant::now(),
        };
        if !shared.sleep_until(due) {
            return;
        }
        let n = usize::try_from(bytes - sent)
            .unwrap_or(usize::MAX)
            .min(chunk_size);
        gen_stream.fill(&mut chunk[..n]);
        shared.about_to_send(n as u64, n as u64);
        if let Err(e) = stream.write_all(&chunk[..n]) {
            let (reason, detail) = describe_write_error(&e, &format!("at stream offset {sent}"));
            shared.set_broken(reason, detail);
            return;
        }
        sent += n as u64;
    }
}

/// Watches stdin; its end of file is the lab's way to say "stop".
fn watch_stdin(shared: Arc<Shared>) {
    let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
    });
    if let Err(e) = spawned {
        eprintln!("lab-client: cannot watch stdin ({e}); stopping only when the connection ends");
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// How the reader loop ended without a breakage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Broken (see `Shared::broken`).
    Broken,
    /// Bulk: DONE verified.
    Done,
    /// Stopped on request with nothing outstanding.
    Stopped,
}

/// Runs one lines or bulk session and builds its report.
fn run(opts: &RunOpts, traffic: Traffic) -> ClientReport {
    let clock = WallClock::start();
    let (mode, hello, checker) = match traffic {
        Traffic::Lines { .. } => (
            Mode::Lines,
            Hello::Lines,
            Checker::Lines(LineVerifier::new()),
        ),
        Traffic::Bulk { bytes, seed, .. } => (
            Mode::Bulk,
            Hello::Bulk {
                total_bytes: bytes,
                seed,
            },
            Checker::Bulk(BulkVerifier::new(bytes, seed)),
        ),
    };
    let shared = Arc::new(Shared {
        progress: Mutex::new(Progress {
            units_sent: 0,
            bytes_sent: 0,
            units_verified: 0,
            gap: GapTracker::new(clock.started()),
        }),
        stop: AtomicBool::new(false),
        writer_done: AtomicBool::new(false),
        broken: Mutex::new(None),
        clock,
    });
    watch_stdin(Arc::clone(&shared));
    let mut checker = checker;
    let mut completed = false;

    match start_session(opts, &hello) {
        Err((reason, detail)) => shared.set_broken(reason, detail),
        Ok(stream) => {
            let stream = Arc::new(stream);
            let writer = {
                let shared = Arc::clone(&shared);
                let stream = Arc::clone(&stream);
                thread::Builder::new().name("writer".into()).spawn(move || {
                    let _done = WriterDone(Arc::clone(&shared));
                    match traffic {
                        Traffic::Lines { interval } => lines_writer(&shared, &stream, interval),
                        Traffic::Bulk { bytes, seed, rate } => {
                            bulk_writer(&shared, &stream, bytes, seed, rate);
                        }
                    }
                })
            };
            match writer {
                Err(e) => shared.set_broken(
                    BreakReason::Error,
                    format!("cannot start the writer thread: {e}"),
                ),
                Ok(_handle) => {
                    let ending = read_loop(opts, &shared, &stream, &mut checker);
                    completed = finish(&shared, &stream, &mut checker, ending);
                }
            }
        }
    }

    let end = Instant::now();
    let p = shared.progress();
    let broken = shared.broken().clone();
    let (lines_sent, lines_verified, kernels, boots, first, last) = match &checker {
        Checker::Lines(v) => (
            p.units_sent,
            v.lines_verified(),
            v.kernels_seen().to_vec(),
            v.boot_ids_seen().to_vec(),
            v.first_total(),
            v.last_total(),
        ),
        Checker::Bulk(_) => (0, 0, Vec::new(), Vec::new(), None, None),
    };
    ClientReport {
        mode,
        target: opts.connect.target.clone(),
        started_unix: clock.started_unix(),
        duration_s: clock.after_s(end),
        bytes_sent: p.bytes_sent,
        bytes_verified: checker.bytes_verified(),
        lines_sent,
        lines_verified,
        lost: p.units_sent.saturating_sub(checker.units_verified()),
        max_gap_s: p.gap.max_gap().as_secs_f64(),
        max_gap_end_unix: p.gap.max_gap_end().map(|t| clock.unix(t)),
        completed: completed && broken.is_none(),
        broken,
        kernels_seen: kernels,
        boot_ids_seen: boots,
        state_first: first,
        state_last: last,
    }
}

/// Connects and sends the opening line.
fn start_session(opts: &RunOpts, hello: &Hello) -> Result<TcpStream, (BreakReason, String)> {
    let stream = connect(&opts.connect).map_err(|e| {
        (
            BreakReason::from_io_error(&e),
            format!("cannot connect to {}: {e}", opts.connect.target),
        )
    })?;
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(TICK)));
    if let Err(e) = setup {
        return Err((BreakReason::Error, format!("cannot set up the socket: {e}")));
    }
    (&stream)
        .write_all(hello.to_line().as_bytes())
        .map_err(|e| describe_write_error(&e, "sending the opening line"))?;
    Ok(stream)
}

/// Reads and verifies replies until the run completes, is stopped or breaks.
fn read_loop(
    opts: &RunOpts,
    shared: &Shared,
    mut stream: &TcpStream,
    checker: &mut Checker,
) -> Ending {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_progress = Instant::now();
    loop {
        if shared.is_broken() {
            return Ending::Broken;
        }
        if checker.is_done() {
            return Ending::Done;
        }
        let awaiting = {
            let p = shared.progress();
            checker.awaiting(p.units_sent)
        };
        if !awaiting
            && shared.stop.load(Ordering::SeqCst)
            && shared.writer_done.load(Ordering::SeqCst)
        {
            // Re-check under the lock: the writer may have sent one more unit
            // between the two checks above.
            let p = shared.progress();
            if !checker.awaiting(p.units_sent) {
                return Ending::Stopped;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                shared.set_broken(BreakReason::Eof, "the service closed the connection");
                return Ending::Broken;
            }
            Ok(n) => {
                let now = Instant::now();
                let mut p = shared.progress();
                let before = checker.awaiting(p.units_sent);
                p.gap.on_data(now, before);
                let fed = checker.feed(&buf[..n]);
                p.units_verified = checker.units_verified();
                drop(p);
                if let Err(v) = fed {
                    shared.set_broken(BreakReason::Violation, v.to_string());
                    return Ending::Broken;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                shared.set_broken(BreakReason::from_io_error(&e), format!("read failed: {e}"));
                return Ending::Broken;
            }
        }
        let now = Instant::now();
        let (gap, outstanding) = {
            let p = shared.progress();
            let outstanding = checker.awaiting(p.units_sent);
            (p.gap.current_gap(now, outstanding), outstanding)
        };
        if outstanding && gap >= opts.stall_timeout {
            let p = shared.progress();
            let due = p.units_sent.saturating_sub(checker.units_verified());
            let unit = match checker {
                Checker::Lines(_) => "lines",
                Checker::Bulk(_) => "bytes",
            };
            drop(p);
            shared.set_broken(
                BreakReason::Timeout,
                format!(
                    "no reply data for {:.1} s while {due} {unit} were outstanding",
                    gap.as_secs_f64()
                ),
            );
            return Ending::Broken;
        }
        if opts.progress && now.duration_since(last_progress) >= Duration::from_secs(1) {
            last_progress = now;
            print_progress(shared, checker, gap, now);
        }
    }
}

fn print_progress(shared: &Shared, checker: &Checker, gap: Duration, now: Instant) {
    let p = shared.progress();
    let t = shared.clock.after_s(now);
    let line = match checker {
        Checker::Lines(v) => format!(
            "lab-client {t:7.1}s: lines {}/{} verified, gap {:.2}s (max {:.2}s), kernel {}",
            v.lines_verified(),
            p.units_sent,
            gap.as_secs_f64(),
            p.gap.max_gap().as_secs_f64(),
            v.last_kernel().unwrap_or("-"),
        ),
        Checker::Bulk(v) => format!(
            "lab-client {t:7.1}s: bulk {} of {} verified ({} sent), gap {:.2}s (max {:.2}s)",
            human_bytes(v.verified()),
            human_bytes(v.total()),
            human_bytes(p.units_sent),
            gap.as_secs_f64(),
            p.gap.max_gap().as_secs_f64(),
        ),
    };
    drop(p);
    eprintln!("{line}");
}

/// Winds the connection down; returns whether the run completed.
fn finish(shared: &Shared, stream: &TcpStream, checker: &mut Checker, ending: Ending) -> bool {
    let completed = match ending {
        Ending::Broken => {
            // Unblocks a writer stuck in write() on a stalled peer.
            let _ = stream.shutdown(Shutdown::Both);
            false
        }
        Ending::Done => true,
        Ending::Stopped => match checker {
            Checker::Lines(_) => close_lines(shared, stream, checker),
            Checker::Bulk(_) => false,
        },
    };
    let _ = stream.shutdown(Shutdown::Both);
    let deadline = Instant::now() + WRITER_JOIN_GRACE;
    while !shared.writer_done.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    completed
}

/// Clean end of a line run: half-close, and check that the service sends
/// nothing more before it closes too.
fn close_lines(shared: &Shared, mut stream: &TcpStream, checker: &mut Checker) -> bool {
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        // The run is complete; a failing half-close is only worth a note.
        eprintln!("lab-client: half-close failed: {e}");
        return true;
    }
    let deadline = Instant::now() + CLOSE_GRACE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let sent = shared.progress().units_sent;
                checker.set_sent(sent);
                if let Err(v) = checker.feed(&buf[..n]) {
                    shared.set_broken(BreakReason::Violation, v.to_string());
                    return false;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // Everything was verified; how the service closes does not matter.
            Err(_) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_lines() {
        let Ok(Command::Run(opts, traffic)) = parse_args(&args(
            "lines --connect 127.0.0.1:1 --interval-ms=5 --progress",
        )) else {
            panic!("lines should parse");
        };
        assert_eq!(opts.connect.target, "127.0.0.1:1");
        assert!(opts.progress);
        assert_eq!(opts.stall_timeout, Duration::from_secs(180));
        assert_eq!(opts.connect.attempt_timeout, Duration::from_secs(10));
        assert_eq!(opts.connect.retry_window, Duration::from_secs(30));
        assert_eq!(
            traffic,
            Traffic::Lines {
                interval: Duration::from_millis(5)
            }
        );
    }

    #[test]
    fn parses_bulk() {
        let Ok(Command::Run(opts, traffic)) = parse_args(&args(
            "bulk --connect h:2 --bytes 8M --seed 9 --rate 1k --stall-timeout-s 0.5 --connect-timeout-s 3",
        )) else {
            panic!("bulk should parse");
        };
        assert_eq!(opts.stall_timeout, Duration::from_millis(500));
        assert_eq!(opts.connect.attempt_timeout, Duration::from_secs(3));
        assert_eq!(
            traffic,
            Traffic::Bulk {
                bytes: 8 << 20,
                seed: 9,
                rate: Some(1024)
            }
        );
    }

    #[test]
    fn rejects_bad_usage() {
        for bad in [
            "",
            "lines",
            "frobnicate --connect h:1",
            "lines --connect h:1 --bytes 5",
            "state --connect h:1 --progress",
            "bulk --connect h:1",
            "bulk --connect h:1 --bytes 5x",
            "bulk --connect h:1 --bytes 5 --rate 0",
            "lines --connect",
            "lines --connect h:1 --interval-ms -3",
            "lines --connect h:1 stray",
        ] {
            assert!(
                parse_args(&args(bad)).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(matches!(
            parse_args(&args("bulk --help")),
            Ok(Command::Help)
        ));
        assert!(matches!(
            parse_args(&args("state --connect h:1")),
            Ok(Command::State(_))
        ));
    }
}
