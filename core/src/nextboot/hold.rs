//! The hold: from before any interface comes up in the next boot until each
//! unit is restored, keep its peers' packets away from the new kernel and
//! keep its pids free.
//!
//! Why a long-running process and not a few firewall rules:
//! - Dropping the peers' packets (what CRIU's own lock does) is enough to
//!   avoid RSTs, but then traffic resumes only when a peer's retransmission
//!   timer fires next, and after a kexec-long pause that timer has backed
//!   off to tens of seconds. So the rules send the packets to an NFQUEUE
//!   instead, and this process keeps them (without a verdict) until the
//!   unit's restore is done, then accepts them: the restored socket gets the
//!   peer's latest segment at once, acknowledges it, and the peer resumes.
//!   The queue fails closed: without this process the kernel drops them, as
//!   CRIU's lock would.
//! - CRIU restores the original pids and thread ids. This process reserves
//!   every one of them as early as the hold runs by creating a placeholder
//!   process with that exact pid; the restore helper asks for them to be
//!   freed right before CRIU forks the restored tree. A pid that is already
//!   taken when the hold starts is a collision: the unit's restore fails and
//!   it cold-starts, and the log says which pid and which process.
//!
//! The restore helper talks to this process over a unix socket
//! ([`HOLD_SOCKET`]) with one line per request: `free-pids UNIT` and
//! `release UNIT accept|drop`. The logic is [`HeldUnits`] (tested without a
//! kernel); [`run`] is the loop around it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::manifest::{Manifest, TcpConnection, UnitSnapshot, claim, read_claim};
use crate::netqueue::{Flow, PacketQueue, QueuedPacket, Verdict};
use crate::pid_reserve::{PidReservation, ReserveError};

/// The NFQUEUE the hold rules send packets to ("SR").
pub const HOLD_QUEUE: u16 = 0x5352;
/// Packets the kernel keeps for the queue before it drops further ones.
const QUEUE_MAX_LEN: u32 = 16384;
/// Where the hold listens for the restore helpers.
pub const HOLD_SOCKET: &str = "/run/seamless-reboot/hold.sock";
/// Time allowed for the boot to reach the restores, on top of the restores.
pub const HOLD_SLACK: Duration = Duration::from_secs(600);
/// How long a restore helper's request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the hold does with the peers' packets until a unit is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketHold {
    /// Drop them; traffic resumes at the peer's next retransmission.
    Drop,
    /// Queue them and re-inject them after the restore.
    Queue,
}

/// Settings of the hold process.
#[derive(Debug, Clone)]
pub struct HoldSettings {
    /// Queue (re-inject) or drop the peers' packets.
    pub packets: PacketHold,
    /// How long one unit's restore may take. The hold gives up on units
    /// not restored after every unit could have taken that long, one after
    /// the other, plus [`HOLD_SLACK`] for a slow boot: their connections
    /// go to the new kernel (peers get a reset) and their pids are freed,
    /// rather than left hanging.
    pub restore_timeout: Duration,
}

/// The nftables table that holds the unit at `index` of the manifest.
pub fn hold_table(index: usize) -> String {
    format!("seamless-reboot-hold-{index}")
}

/// An address as the packet carries it: IPv4 connections accepted on a
/// dual-stack socket show as `::ffff:a.b.c.d` in the socket tables.
fn on_the_wire(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The flow of the peer's packets for a connection, as the queue reports it.
pub fn inbound_flow(connection: &TcpConnection) -> Flow {
    Flow {
        source: on_the_wire(connection.remote),
        destination: on_the_wire(connection.local),
    }
}

/// nftables rules holding `connections` in table `table`: the peers'
/// packets go to `queue` (or are dropped). Priority -300 comes before
/// connection tracking and any filter.
///
/// Only the peers' packets are held. The new kernel sends nothing on these
/// connections by itself (a reset only answers a packet, and those are
/// held), and once CRIU has restored a socket, what it sends (a window
/// probe as it leaves repair mode, the service's replies) should reach the
/// peer at once: blocking it would also swallow the acknowledgements of
/// the packets re-injected at the release.
pub fn hold_rules(table: &str, connections: &[TcpConnection], queue: Option<u16>) -> String {
    let verdict = match queue {
        Some(number) => format!("queue num {number}"),
        None => "drop".to_string(),
    };
    let mut input = String::new();
    for connection in connections {
        let (local, remote) = (
            on_the_wire(connection.local),
            on_the_wire(connection.remote),
        );
        let family = if local.is_ipv4() { "ip" } else { "ip6" };
        let _ = writeln!(
            input,
            "    {family} saddr {} tcp sport {} {family} daddr {} tcp dport {} {verdict}",
            remote.ip(),
            remote.port(),
            local.ip(),
            local.port()
        );
    }
    format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n{input}  }}\n}}\n"
    )
}

/// A request from a restore helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Free the unit's reserved pids (CRIU is about to fork them).
    FreePids(String),
    /// Give the unit's connections to the new kernel: its held packets are
    /// accepted (restored) or dropped (the unit cold-starts).
    Release(String, Verdict),
}

impl Request {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["free-pids", unit] => Ok(Request::FreePids((*unit).to_string())),
            ["release", unit, "accept"] => {
                Ok(Request::Release((*unit).to_string(), Verdict::Accept))
            }
            ["release", unit, "drop"] => Ok(Request::Release((*unit).to_string(), Verdict::Drop)),
            _ => bail!("not a hold request: {line:?}"),
        }
    }

    /// The request as one line (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            Request::FreePids(unit) => format!("free-pids {unit}"),
            Request::Release(unit, Verdict::Accept) => format!("release {unit} accept"),
            Request::Release(unit, Verdict::Drop) => format!("release {unit} drop"),
        }
    }
}

#[derive(Debug)]
struct HeldUnit {
    name: String,
    table: String,
    pids: Vec<i32>,
    /// Ids of this unit's packets waiting in the queue, oldest first.
    queued: Vec<u32>,
    released: bool,
}

/// Which unit each held connection belongs to, and what is waiting for it.
#[derive(Debug)]
pub struct HeldUnits {
    units: Vec<HeldUnit>,
    by_flow: HashMap<Flow, usize>,
}

/// What to do with a packet that just arrived in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Keep it until its unit is released.
    Held,
    /// Decide now.
    Now(Verdict),
}

/// What releasing a unit takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The table to delete.
    pub table: String,
    /// The queued packets, oldest first, and the verdict for them.
    pub packets: Vec<u32>,
    pub verdict: Verdict,
}

impl HeldUnits {
    /// The units of `manifest`, in its order (the table index).
    pub fn new(manifest: &Manifest) -> Self {
        let mut by_flow = HashMap::new();
        let units = manifest
            .units
            .iter()
            .enumerate()
            .map(|(index, unit)| {
                for connection in &unit.connections {
                    by_flow.insert(inbound_flow(connection), index);
                }
                HeldUnit {
                    name: unit.unit.clone(),
                    table: hold_table(index),
                    pids: needed_pids(unit),
                    queued: Vec::new(),
                    released: false,
                }
            })
            .collect();
        HeldUnits { units, by_flow }
    }

    /// A packet from the queue.
    pub fn arrived(&mut self, packet: &QueuedPacket) -> Arrival {
        let unit = packet
            .flow
            .as_ref()
            .and_then(|flow| self.by_flow.get(flow))
            .and_then(|&index| self.units.get_mut(index));
        match unit {
            Some(unit) if !unit.released => {
                unit.queued.push(packet.id);
                Arrival::Held
            }
            // Queued just before its unit was released: the socket is back.
            Some(_) => Arrival::Now(Verdict::Accept),
            // Our rules match only our flows; anything else is not ours to
            // hold, and letting it through is what no rule would do.
            None => Arrival::Now(Verdict::Accept),
        }
    }

    /// The pids to free for `unit`.
    pub fn pids_of(&self, unit: &str) -> Result<Vec<i32>> {
        Ok(self.unit(unit)?.pids.clone())
    }

    /// Releases `unit`; an error for an unknown or already released unit.
    pub fn release(&mut self, unit: &str, verdict: Verdict) -> Result<Release> {
        let index = self
            .units
            .iter()
            .position(|u| u.name == unit)
            .with_context(|| format!("{unit} is not held"))?;
        let held = &mut self.units[index];
        if held.released {
            bail!("{unit} was already released");
        }
        held.released = true;
        Ok(Release {
            table: held.table.clone(),
            packets: std::mem::take(&mut held.queued),
            verdict,
        })
    }

    /// Units not released yet.
    pub fn remaining(&self) -> Vec<String> {
        self.units
            .iter()
            .filter(|u| !u.released)
            .map(|u| u.name.clone())
            .collect()
    }

    fn unit(&self, unit: &str) -> Result<&HeldUnit> {
        self.units
            .iter()
            .find(|u| u.name == unit)
            .with_context(|| format!("{unit} is not held"))
    }
}

/// Every pid and thread id CRIU will give the unit's processes.
pub fn needed_pids(unit: &UnitSnapshot) -> Vec<i32> {
    let set: BTreeSet<i32> = unit
        .pids
        .iter()
        .chain(&unit.thread_ids)
        .copied()
        .filter(|&p| p > 0)
        .collect();
    set.into_iter().collect()
}

/// Claims the snapshot for this boot (an error if another boot did).
fn claim_for_this_boot(transaction_dir: &Path, boot_id: &str) -> Result<()> {
    match claim(transaction_dir, boot_id) {
        Ok(_) => Ok(()),
        Err(e) => match read_claim(transaction_dir) {
            Ok(Some(c)) if c.boot_id == boot_id => Ok(()), // the hold ran again this boot
            _ => Err(e.into()),
        },
    }
}

/// The hold unit's process: claim the snapshot, reserve the pids, hold the
/// connections, tell systemd it is ready, then serve the restore helpers
/// until every unit is released, the deadline passes or SIGTERM comes.
///
/// Must run single-threaded: the pid placeholders are forked without exec.
pub fn run(transaction_dir: &Path, boot_id: &str, settings: &HoldSettings) -> Result<()> {
    claim_for_this_boot(transaction_dir, boot_id)?;
    let manifest = Manifest::read_from(transaction_dir)?;
    let mut held = HeldUnits::new(&manifest);
    let started = Instant::now();

    // Pids first: the earlier, the fewer processes exist to collide with.
    let mut reservation = PidReservation::new();
    for unit in &manifest.units {
        for (pid, error) in reservation.reserve(&needed_pids(unit)) {
            match error {
                ReserveError::PidTaken { .. } => tracing::warn!(
                    "pid {pid} of {} is taken by {} in this boot: its restore will fail and it will cold-start",
                    unit.unit,
                    process_name(pid)
                ),
                other => tracing::warn!("cannot reserve pid {pid} of {}: {other}", unit.unit),
            }
        }
    }

    let queue = match settings.packets {
        PacketHold::Queue => match PacketQueue::bind(HOLD_QUEUE, QUEUE_MAX_LEN) {
            Ok(queue) => Some(queue),
            Err(e) => {
                tracing::warn!(
                    "cannot hold packets in a queue ({e}); dropping them until each restore instead"
                );
                None
            }
        },
        PacketHold::Drop => None,
    };
    let mut failures = Vec::new();
    for (index, unit) in manifest.units.iter().enumerate() {
        if unit.connections.is_empty() {
            continue;
        }
        let rules = hold_rules(
            &hold_table(index),
            &unit.connections,
            queue.as_ref().map(PacketQueue::number),
        );
        if let Err(e) = nft_apply(&rules) {
            failures.push(format!("{}: {e:#}", unit.unit));
        }
    }
    if !failures.is_empty() {
        bail!("could not hold every connection: {}", failures.join("; "));
    }

    let listener = listen(Path::new(HOLD_SOCKET))?;
    let connections: usize = manifest.units.iter().map(|u| u.connections.len()).sum();
    notify_systemd(&format!(
        "READY=1\nSTATUS=holding {connections} connections and {} pids of {} units{}",
        reservation.held().len(),
        manifest.units.len(),
        if queue.is_some() {
            " (queued)"
        } else {
            " (dropped)"
        }
    ));
    tracing::info!(
        "holding {connections} connections of {} units, {} pids reserved",
        manifest.units.len(),
        reservation.held().len()
    );

    let terminate = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminate))
        .context("cannot handle SIGTERM")?;
    let give_up_after = settings.restore_timeout * (manifest.units.len() as u32 + 1) + HOLD_SLACK;
    let deadline = started + give_up_after;
    let mut packets_held: u64 = 0;
    while !held.remaining().is_empty() {
        if terminate.load(Ordering::Relaxed) {
            tracing::warn!("stopped before every unit was restored");
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                "gave up holding {} after {:?}: they were never restored",
                held.remaining().join(", "),
                give_up_after
            );
            break;
        }
        let wait = (deadline - now).min(Duration::from_secs(1));
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(queue) = &queue {
            fds.push(PollFd::new(queue.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let request_waiting = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let packets_waiting = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if let (true, Some(queue)) = (packets_waiting, &queue) {
            packets_held += take_packets(queue, &mut held);
        }
        if request_waiting {
            match listener.accept() {
                Ok((stream, _)) => serve(stream, &mut held, &mut reservation, queue.as_ref()),
                Err(e) => tracing::warn!("accepting a restore helper: {e}"),
            }
        }
    }
    // Whatever is still held goes to the new kernel now: it answers with a
    // reset, rather than the peers waiting for a service not coming back.
    for unit in held.remaining() {
        if let Ok(release) = held.release(&unit, Verdict::Accept) {
            apply_release(&release, queue.as_ref());
        }
    }
    reservation.release_all();
    let _ = fs::remove_file(HOLD_SOCKET);
    tracing::info!(
        "hold ended after {:.1} s, {packets_held} packets held",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Takes what waits in the queue: holds the packets of units still held,
/// lets the others through. Returns how many it held.
fn take_packets(queue: &PacketQueue, held: &mut HeldUnits) -> u64 {
    let mut count = 0;
    match queue.receive() {
        Ok(packets) => {
            for packet in packets {
                match held.arrived(&packet) {
                    Arrival::Held => count += 1,
                    Arrival::Now(verdict) => verdict_or_log(queue, packet.id, verdict),
                }
            }
        }
        Err(e) => tracing::warn!("reading the packet queue: {e}"),
    }
    count
}

/// Serves one restore helper's request.
fn serve(
    stream: UnixStream,
    held: &mut HeldUnits,
    reservation: &mut PidReservation,
    queue: Option<&PacketQueue>,
) {
    let reply = match handle(&stream, held, reservation, queue) {
        Ok(reply) => format!("ok {reply}\n"),
        Err(e) => format!("error {}\n", format!("{e:#}").replace('\n', " ")),
    };
    let mut stream = stream;
    if let Err(e) = stream.write_all(reply.as_bytes()) {
        tracing::warn!("answering a restore helper: {e}");
    }
}

fn handle(
    stream: &UnixStream,
    held: &mut HeldUnits,
    reservation: &mut PidReservation,
    queue: Option<&PacketQueue>,
) -> Result<String> {
    let credentials =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .context("cannot read the caller's credentials")?;
    if credentials.uid() != 0 {
        bail!("only root may ask the hold");
    }
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("cannot read the request")?;
    match Request::parse(&line)? {
        Request::FreePids(unit) => {
            let pids = held.pids_of(&unit)?;
            let (freed, missing): (Vec<i32>, Vec<i32>) =
                pids.iter().partition(|&&p| reservation.holds(p));
            reservation
                .release(&freed)
                .context("cannot free the reserved pids")?;
            tracing::info!("{unit}: freed pids {freed:?} for its restore");
            Ok(format!("freed={} missing={}", join(&freed), join(&missing)))
        }
        Request::Release(unit, verdict) => {
            // What arrived since the last look belongs with the rest.
            if let Some(queue) = queue {
                take_packets(queue, held);
            }
            let release = held.release(&unit, verdict)?;
            let count = release.packets.len();
            apply_release(&release, queue);
            tracing::info!(
                "{unit}: released its connections, {count} held packets {}",
                if verdict == Verdict::Accept {
                    "re-injected"
                } else {
                    "dropped"
                }
            );
            Ok(format!("packets={count}"))
        }
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Decides the queued packets, oldest first, then deletes the unit's table
/// so that new packets go straight to the socket. In this order because
/// the kernel discards what is still queued by a rule when the rule goes
/// away; a packet queued between the verdicts and the deletion is lost
/// that way, which TCP repairs with a retransmission.
fn apply_release(release: &Release, queue: Option<&PacketQueue>) {
    if let Some(queue) = queue {
        for &id in &release.packets {
            verdict_or_log(queue, id, release.verdict);
        }
    }
    if let Err(e) = nft_delete_table(&release.table) {
        tracing::warn!("cannot delete {}: {e:#}", release.table);
    }
}

fn verdict_or_log(queue: &PacketQueue, id: u32, verdict: Verdict) {
    if let Err(e) = queue.verdict(id, verdict) {
        tracing::warn!("verdict for queued packet {id}: {e}");
    }
}

/// Applies an nftables ruleset given as text.
fn nft_apply(rules: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("nft has no stdin")?
        .write_all(rules.as_bytes())
        .context("cannot write to nft")?;
    let output = child.wait_with_output().context("waiting for nft")?;
    if !output.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Deletes an nftables table of the inet family.
pub fn nft_delete_table(table: &str) -> Result<()> {
    let output = Command::new("nft")
        .args(["delete", "table", "inet", table])
        .output()
        .context("cannot run nft")?;
    if !output.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn listen(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The command name of `pid`, for messages.
pub(crate) fn process_name(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!("`{}` (pid {pid})", c.trim()))
        .unwrap_or_else(|_| format!("pid {pid}"))
}

/// Sends `state` to systemd's notification socket, if there is one.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = PathBuf::from(path);
    let address = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(&path),
    };
    let sent = address
        .and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The restore helper's side: asks the hold process, if one runs.
#[derive(Debug)]
pub struct HoldClient {
    socket: PathBuf,
}

impl HoldClient {
    /// The hold of this boot, or `None` when there is none (an in-place
    /// restore after a failed checkpoint, or a hold that could not start).
    pub fn find() -> Option<Self> {
        let socket = PathBuf::from(HOLD_SOCKET);
        socket.exists().then_some(HoldClient { socket })
    }

    /// Sends one request; returns the reply's text after `ok`.
    pub fn ask(&self, request: &Request) -> Result<String> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot reach the hold at {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(format!("{}\n", request.to_line()).as_bytes())?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .context("no answer from the hold")?;
        let reply = reply.trim();
        match reply.split_once(' ').unwrap_or((reply, "")) {
            ("ok", rest) => Ok(rest.to_string()),
            ("error", why) => bail!("the hold refused `{}`: {why}", request.to_line()),
            _ => bail!("the hold answered {reply:?}"),
        }
    }

    /// Frees the unit's reserved pids (the caller then checks that none is
    /// in use: a pid taken before the hold ran is a collision).
    pub fn free_pids(&self, unit: &str) -> Result<String> {
        self.ask(&Request::FreePids(unit.to_string()))
    }

    /// Gives the unit's connections to the new kernel.
    pub fn release(&self, unit: &str, verdict: Verdict) -> Result<String> {
        self.ask(&Request::Release(unit.to_string(), verdict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FORMAT_VERSION;

    fn conn(local: &str, remote: &str) -> TcpConnection {
        TcpConnection {
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
        }
    }

    fn snapshot(
        unit: &str,
        pids: &[i32],
        threads: &[i32],
        connections: Vec<TcpConnection>,
    ) -> UnitSnapshot {
        UnitSnapshot {
            unit: unit.into(),
            images_dir: format!("{unit}/images"),
            main_pid: pids[0],
            pids: pids.to_vec(),
            thread_ids: threads.to_vec(),
            exec_start: vec!["/bin/true".into()],
            connections,
            journal_socket_inodes: vec![],
            frozen_ms: 1,
            images: vec![],
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            transaction_id: "t1-1".into(),
            created_unix: 1,
            source_boot_id: "b".into(),
            source_kernel: "a".into(),
            target_kernel: "b".into(),
            units: vec![
                snapshot(
                    "a.service",
                    &[550, 560],
                    &[561, 550],
                    vec![
                        conn("10.0.2.15:7000", "10.0.2.2:40000"),
                        conn("[::ffff:10.0.2.15]:7000", "[::ffff:10.0.2.2]:40001"),
                    ],
                ),
                snapshot(
                    "b.service",
                    &[600],
                    &[],
                    vec![conn("[2001:db8::1]:22", "[2001:db8::2]:5000")],
                ),
            ],
        }
    }

    fn packet(id: u32, source: &str, destination: &str) -> QueuedPacket {
        QueuedPacket {
            id,
            flow: Some(Flow {
                source: source.parse().expect("source"),
                destination: destination.parse().expect("destination"),
            }),
        }
    }

    #[test]
    fn rules_queue_the_peers_packets_only() {
        let m = manifest();
        let rules = hold_rules(
            "seamless-reboot-hold-0",
            &m.units[0].connections,
            Some(21330),
        );
        assert!(
            rules.starts_with("table inet seamless-reboot-hold-0 {"),
            "{rules}"
        );
        assert!(rules.contains("ip saddr 10.0.2.2 tcp sport 40000 ip daddr 10.0.2.15 tcp dport 7000 queue num 21330"), "{rules}");
        // The dual-stack connection is matched as the IPv4 packets it sends.
        assert!(rules.contains("ip saddr 10.0.2.2 tcp sport 40001 ip daddr 10.0.2.15 tcp dport 7000 queue num 21330"), "{rules}");
        // Nothing the restored socket sends is held back.
        assert!(!rules.contains("output"), "{rules}");
        assert!(!rules.contains("ffff"), "{rules}");
        let v6 = hold_rules("t", &m.units[1].connections, None);
        assert!(
            v6.contains(
                "ip6 saddr 2001:db8::2 tcp sport 5000 ip6 daddr 2001:db8::1 tcp dport 22 drop"
            ),
            "{v6}"
        );
        assert!(!v6.contains("queue"), "{v6}");
        assert_eq!(rules.matches('{').count(), rules.matches('}').count());
    }

    #[test]
    fn packets_are_held_per_unit_and_released_in_order() {
        let mut held = HeldUnits::new(&manifest());
        assert_eq!(
            held.arrived(&packet(7, "10.0.2.2:40000", "10.0.2.15:7000")),
            Arrival::Held
        );
        assert_eq!(
            held.arrived(&packet(9, "[2001:db8::2]:5000", "[2001:db8::1]:22")),
            Arrival::Held
        );
        assert_eq!(
            held.arrived(&packet(8, "10.0.2.2:40001", "10.0.2.15:7000")),
            Arrival::Held
        );
        // Not one of ours, or not parsable: not held.
        assert_eq!(
            held.arrived(&packet(10, "10.0.2.2:40002", "10.0.2.15:7000")),
            Arrival::Now(Verdict::Accept)
        );
        assert_eq!(
            held.arrived(&QueuedPacket { id: 11, flow: None }),
            Arrival::Now(Verdict::Accept)
        );

        let a = held
            .release("a.service", Verdict::Accept)
            .expect("release a");
        assert_eq!(
            a,
            Release {
                table: "seamless-reboot-hold-0".into(),
                packets: vec![7, 8],
                verdict: Verdict::Accept
            }
        );
        assert_eq!(held.remaining(), vec!["b.service".to_string()]);
        // Late packets of a released unit go through.
        assert_eq!(
            held.arrived(&packet(12, "10.0.2.2:40000", "10.0.2.15:7000")),
            Arrival::Now(Verdict::Accept)
        );
        assert!(
            held.release("a.service", Verdict::Accept).is_err(),
            "released twice"
        );
        assert!(
            held.release("c.service", Verdict::Accept).is_err(),
            "unknown unit"
        );
        let b = held.release("b.service", Verdict::Drop).expect("release b");
        assert_eq!(
            (b.table.as_str(), b.packets, b.verdict),
            ("seamless-reboot-hold-1", vec![9], Verdict::Drop)
        );
        assert!(held.remaining().is_empty());
    }

    #[test]
    fn pids_and_thread_ids_are_reserved_once_each() {
        let held = HeldUnits::new(&manifest());
        assert_eq!(held.pids_of("a.service").expect("a"), vec![550, 560, 561]);
        assert_eq!(held.pids_of("b.service").expect("b"), vec![600]);
        assert!(held.pids_of("c.service").is_err());
    }

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        for request in [
            Request::FreePids("a@b.service".into()),
            Request::Release("a.service".into(), Verdict::Accept),
            Request::Release("a.service".into(), Verdict::Drop),
        ] {
            assert_eq!(
                Request::parse(&format!("{}\n", request.to_line())).expect("parse"),
                request
            );
        }
        for bad in [
            "",
            "free-pids",
            "release a.service",
            "release a.service maybe",
            "reboot now",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }
}
