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

use crate::manifest::{Manifest, TcpConnection, UnitSnapshot, claim, read_claim, read_outcomes};
use crate::netqueue::{Flow, PacketQueue, QueuedPacket, Verdict};
use crate::pid_reserve::{PidReservation, ReserveError};
use crate::transaction::{HOLD_RULES_FILE, unit_dir_name};

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

/// The nftables table that holds every checkpointed connection.
pub const HOLD_TABLE: &str = "seamless-reboot-hold";

/// The set of the unit at `index` of the manifest, for IPv4 or IPv6 flows.
fn flow_set(index: usize, ipv6: bool) -> String {
    format!("unit{index}_{}", if ipv6 { "v6" } else { "v4" })
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

/// The hold's nftables table: per unit a set of the flows of its peers'
/// packets (IPv4 and IPv6), and one rule per set sending matching packets
/// to `queue` (or dropping them).
///
/// Why this shape:
/// - A unit is released by flushing its sets. Deleting a rule's chain or
///   table instead would unregister a hook, and the kernel then discards
///   every packet waiting in the queue, other units' too.
/// - The hook is prerouting at priority -300: after defragmentation and
///   before connection tracking, so a held packet is tracked only when it
///   is re-injected, after the restored socket exists.
/// - Only the peers' packets are held. The new kernel sends nothing on
///   these connections by itself (a reset only answers a packet, and those
///   are held), and once CRIU has restored a socket, what it sends (a
///   window probe as it leaves repair mode, the service's replies) should
///   reach the peer at once: blocking it would also swallow the
///   acknowledgements of the packets re-injected at the release.
pub fn hold_rules(units: &[Vec<Flow>], queue: Option<u16>) -> String {
    let verdict = match queue {
        Some(number) => format!("queue num {number}"),
        None => "drop".to_string(),
    };
    let mut sets = String::new();
    let mut rules = String::new();
    for (index, flows) in units.iter().enumerate() {
        for ipv6 in [false, true] {
            let (address, family) = if ipv6 {
                ("ipv6_addr", "ip6")
            } else {
                ("ipv4_addr", "ip")
            };
            let elements: Vec<String> = flows
                .iter()
                .filter(|f| f.source.is_ipv6() == ipv6 && f.destination.is_ipv6() == ipv6)
                .map(|f| {
                    format!(
                        "{} . {} . {} . {}",
                        f.source.ip(),
                        f.source.port(),
                        f.destination.ip(),
                        f.destination.port()
                    )
                })
                .collect();
            let set = flow_set(index, ipv6);
            let _ = write!(
                sets,
                "  set {set} {{\n    type {address} . inet_service . {address} . inet_service\n"
            );
            if !elements.is_empty() {
                let _ = writeln!(sets, "    elements = {{ {} }}", elements.join(", "));
            }
            sets.push_str("  }\n");
            let _ = writeln!(
                rules,
                "    {family} saddr . tcp sport . {family} daddr . tcp dport @{set} {verdict}"
            );
        }
    }
    format!(
        "table inet {HOLD_TABLE} {{\n{sets}  chain prerouting {{\n    type filter hook prerouting priority -300; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The nft commands that stop holding the unit at `index`.
pub fn release_rules(index: usize) -> String {
    [false, true]
        .iter()
        .map(|&ipv6| format!("flush set inet {HOLD_TABLE} {}\n", flow_set(index, ipv6)))
        .collect()
}

/// The flows CRIU locked when it checkpointed a unit, from its saved lock
/// table (`nft list table` output: sets `conns4`/`conns6` whose elements
/// are `address . port . address . port`). CRIU locks exactly what it
/// dumped, so this covers connections that opened after the plan.
pub fn criu_locked_flows(table_text: &str) -> Vec<Flow> {
    let mut flows = Vec::new();
    for set in ["conns4", "conns6"] {
        let Some(start) = table_text.find(&format!("set {set} {{")) else {
            continue;
        };
        let block = &table_text[start..];
        let block = &block[..block_end(block).unwrap_or(block.len())];
        let Some(at) = block.find("elements = {") else {
            continue;
        };
        let body = &block[at + "elements = {".len()..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        for element in body.split(',') {
            let parts: Vec<&str> = element.split(" . ").map(str::trim).collect();
            if let [a, p, b, q] = parts.as_slice()
                && let (Ok(a), Ok(p), Ok(b), Ok(q)) = (
                    a.parse::<IpAddr>(),
                    p.parse::<u16>(),
                    b.parse::<IpAddr>(),
                    q.parse::<u16>(),
                )
            {
                flows.push(Flow {
                    source: on_the_wire(SocketAddr::new(a, p)),
                    destination: on_the_wire(SocketAddr::new(b, q)),
                });
            }
        }
    }
    flows
}

/// Where the `{ ... }` block that starts in `text` ends (after its `}`).
fn block_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The flows to hold for a unit: its peers' side of each planned
/// connection, and whatever CRIU locked at the dump.
pub fn unit_flows(unit: &UnitSnapshot, criu_lock: &str) -> Vec<Flow> {
    let mut flows: Vec<Flow> = unit.connections.iter().map(inbound_flow).collect();
    for flow in criu_locked_flows(criu_lock) {
        if !flows.contains(&flow) {
            flows.push(flow);
        }
    }
    flows
}

/// A request from a restore helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Free the unit's reserved pids (CRIU is about to fork them).
    FreePids(String),
    /// Give the unit's connections to the new kernel: its held packets are
    /// accepted (re-injected) or dropped.
    Release(String, Verdict),
    /// Whether the unit is still held.
    Holds(String),
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
            ["holds", unit] => Ok(Request::Holds((*unit).to_string())),
            _ => bail!("not a hold request: {line:?}"),
        }
    }

    /// The request as one line (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            Request::FreePids(unit) => format!("free-pids {unit}"),
            Request::Release(unit, Verdict::Accept) => format!("release {unit} accept"),
            Request::Release(unit, Verdict::Drop) => format!("release {unit} drop"),
            Request::Holds(unit) => format!("holds {unit}"),
        }
    }
}

#[derive(Debug)]
struct HeldUnit {
    name: String,
    index: usize,
    pids: Vec<i32>,
    /// This unit's packets waiting in the queue (id and flow), oldest first.
    queued: Vec<(u32, Flow)>,
    released: bool,
}

/// Which units each held connection belongs to, and what is waiting for it.
///
/// A flow may belong to two units: a connection over loopback between two
/// checkpointed units (a proxy and its backend) is in both units' sets, in
/// both directions (CRIU locks both). Its packets are held until every unit
/// listing the flow is released, since until then one end may have no
/// socket, and a packet accepted there draws a reset that kills the
/// connection for the end restored first.
#[derive(Debug)]
pub struct HeldUnits {
    units: Vec<HeldUnit>,
    /// The units (manifest indexes, ascending) listing each flow.
    by_flow: HashMap<Flow, Vec<usize>>,
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
    /// The unit's index in the manifest (its sets).
    pub index: usize,
    /// The queued packets, oldest first, and the verdict for them.
    pub packets: Vec<u32>,
    pub verdict: Verdict,
}

impl HeldUnits {
    /// The units of `manifest`, in its order (the set index), holding
    /// `flows[i]` for unit `i`. Units in `done` (restored or cold-started
    /// earlier in this boot) are released already.
    pub fn new(manifest: &Manifest, flows: &[Vec<Flow>], done: &[String]) -> Self {
        let mut by_flow: HashMap<Flow, Vec<usize>> = HashMap::new();
        let units = manifest
            .units
            .iter()
            .enumerate()
            .map(|(index, unit)| {
                let released = done.contains(&unit.unit);
                if !released {
                    for flow in flows.get(index).into_iter().flatten() {
                        let owners = by_flow.entry(*flow).or_default();
                        if !owners.contains(&index) {
                            owners.push(index);
                        }
                    }
                }
                HeldUnit {
                    name: unit.unit.clone(),
                    index,
                    pids: needed_pids(unit),
                    queued: Vec::new(),
                    released,
                }
            })
            .collect();
        HeldUnits { units, by_flow }
    }

    /// A packet from the queue.
    pub fn arrived(&mut self, packet: &QueuedPacket) -> Arrival {
        let Some(flow) = packet.flow else {
            // Only our rules feed this queue, so an unreadable packet is
            // one of ours: let TCP retransmit it rather than draw a reset.
            return Arrival::Now(Verdict::Drop);
        };
        match self.holder_of(&flow, None) {
            Some(index) => {
                self.units[index].queued.push((packet.id, flow));
                Arrival::Held
            }
            // Queued just before the last of its units was released (the
            // sockets are back), or not one of our flows: not ours to hold.
            None => Arrival::Now(Verdict::Accept),
        }
    }

    /// The first unit still held that lists `flow`, other than `except`.
    fn holder_of(&self, flow: &Flow, except: Option<usize>) -> Option<usize> {
        self.by_flow.get(flow)?.iter().copied().find(|&index| {
            Some(index) != except && self.units.get(index).is_some_and(|u| !u.released)
        })
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
        if self.units[index].released {
            bail!("{unit} was already released");
        }
        self.units[index].released = true;
        // A packet whose flow another held unit lists too (the other end of a
        // loopback connection) waits for that unit instead.
        let mut packets = Vec::new();
        for (id, flow) in std::mem::take(&mut self.units[index].queued) {
            match self.holder_of(&flow, Some(index)) {
                Some(other) => self.units[other].queued.push((id, flow)),
                None => packets.push(id),
            }
        }
        Ok(Release {
            index: self.units[index].index,
            packets,
            verdict,
        })
    }

    /// The manifest index of `unit`.
    fn index_of(&self, unit: &str) -> Result<usize> {
        Ok(self.unit(unit)?.index)
    }

    /// Whether `unit` is held (known and not released).
    pub fn holds(&self, unit: &str) -> bool {
        self.units.iter().any(|u| u.name == unit && !u.released)
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
    // Started again in this boot (a restored unit was restarted): units
    // with an outcome are back already and must not be held again.
    let done: Vec<String> = read_outcomes(transaction_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.unit)
        .collect();
    let pending: Vec<&UnitSnapshot> = manifest
        .units
        .iter()
        .filter(|u| !done.contains(&u.unit))
        .collect();
    if pending.is_empty() {
        notify_systemd("READY=1\nSTATUS=every unit was restored already");
        tracing::info!("every unit of this snapshot was restored already; nothing to hold");
        return Ok(());
    }
    let flows: Vec<Vec<Flow>> = manifest
        .units
        .iter()
        .map(|unit| {
            if done.contains(&unit.unit) {
                return Vec::new();
            }
            let lock = transaction_dir
                .join(unit_dir_name(&unit.unit))
                .join(HOLD_RULES_FILE);
            unit_flows(unit, &fs::read_to_string(lock).unwrap_or_default())
        })
        .collect();
    let mut held = HeldUnits::new(&manifest, &flows, &done);
    let started = Instant::now();

    // Pids first: the earlier, the fewer processes exist to collide with.
    let mut reservation = PidReservation::new();
    let needed: Vec<i32> = pending.iter().flat_map(|u| needed_pids(u)).collect();
    make_room_for(&needed);
    for unit in &pending {
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
    // Ordinary pid allocation goes on above every pid reserved: once freed
    // for the restore, none is handed out again before the counter wraps.
    move_pid_counter_past(&needed);

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
    // A table left by an earlier run of the hold in this boot goes first.
    let _ = nft_apply(&format!("delete table inet {HOLD_TABLE}\n"));
    nft_apply(&hold_rules(&flows, queue.as_ref().map(PacketQueue::number)))
        .context("could not hold the connections")?;

    let listener = listen(Path::new(HOLD_SOCKET))?;
    let connections: usize = flows.iter().map(Vec::len).sum();
    notify_systemd(&format!(
        "READY=1\nSTATUS=holding {connections} flows and {} pids of {} units{}",
        reservation.held().len(),
        pending.len(),
        if queue.is_some() {
            " (queued)"
        } else {
            " (dropped)"
        }
    ));
    tracing::info!(
        "holding {connections} flows of {} units, {} pids reserved",
        pending.len(),
        reservation.held().len()
    );

    let terminate = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminate))
        .context("cannot handle SIGTERM")?;
    let give_up_after = settings.restore_timeout * (pending.len() as u32 + 1) + HOLD_SLACK;
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
        if let Err(e) = release_unit(&mut held, &unit, Verdict::Accept, queue.as_ref()) {
            tracing::warn!("{unit}: {e:#}");
        }
    }
    // Anything queued since goes through before the table (and with it the
    // queue's contents) goes away.
    if let Some(queue) = &queue {
        take_packets(queue, &mut held);
    }
    reservation.release_all();
    if let Err(e) = nft_apply(&format!("delete table inet {HOLD_TABLE}\n")) {
        tracing::warn!("cannot delete the hold's table: {e:#}");
    }
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
    // Until nothing waits (bounded: the kernel queue is bounded too).
    for _ in 0..64 {
        match queue.receive() {
            Ok(packets) if packets.is_empty() => break,
            Ok(packets) => {
                for packet in packets {
                    match held.arrived(&packet) {
                        Arrival::Held => count += 1,
                        Arrival::Now(verdict) => verdict_or_log(queue, packet.id, verdict),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("reading the packet queue: {e}");
                if !e.is_transient() {
                    break;
                }
            }
        }
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
        Request::Holds(unit) => Ok(if held.holds(&unit) { "yes" } else { "no" }.to_string()),
        Request::Release(unit, verdict) => {
            if !held.holds(&unit) {
                bail!("{unit} is not held");
            }
            let release = release_unit(held, &unit, verdict, queue)?;
            let count = release.packets.len();
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

/// Releases `unit`: first empties its sets, so that nothing more of it is
/// queued and new packets go straight to the socket; then takes what was
/// queued up to that moment and decides it all, oldest first. In this
/// order because whatever is still queued when the table goes away at the
/// end is discarded by the kernel, and a discarded segment costs a peer a
/// retransmission timeout that is still backed off from the pause.
fn release_unit(
    held: &mut HeldUnits,
    unit: &str,
    verdict: Verdict,
    queue: Option<&PacketQueue>,
) -> Result<Release> {
    let index = held.index_of(unit)?;
    if let Err(e) = nft_apply(&release_rules(index)) {
        tracing::warn!("cannot release unit {index} of the hold: {e:#}");
    }
    if let Some(queue) = queue {
        take_packets(queue, held);
    }
    let release = held.release(unit, verdict)?;
    if let Some(queue) = queue {
        for &id in &release.packets {
            verdict_or_log(queue, id, release.verdict);
        }
    }
    Ok(release)
}

/// Raises `kernel.pid_max` when a needed pid is above it (early in the
/// boot the kernel's default may still be in force).
fn make_room_for(pids: &[i32]) {
    let Some(&highest) = pids.iter().max() else {
        return;
    };
    let path = "/proc/sys/kernel/pid_max";
    let current: i32 = fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(i32::MAX);
    if highest >= current
        && let Err(e) = fs::write(path, (highest + 1).to_string())
    {
        tracing::warn!("cannot raise pid_max to {}: {e}", highest + 1);
    }
}

/// Moves the pid counter to the highest of `pids` when it is below it.
fn move_pid_counter_past(pids: &[i32]) {
    let Some(&highest) = pids.iter().max() else {
        return;
    };
    let path = "/proc/sys/kernel/ns_last_pid";
    let last: i32 = fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if last < highest
        && let Err(e) = fs::write(path, highest.to_string())
    {
        tracing::warn!("cannot move the pid counter past {highest}: {e}");
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

/// Stops holding the unit at `index` without the hold process (it died):
/// its packets then reach the socket, or draw a reset when there is none.
pub fn release_without_hold(index: usize) -> Result<()> {
    nft_apply(&release_rules(index))
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

    /// Whether the hold still holds `unit` (false when it cannot tell).
    pub fn holds(&self, unit: &str) -> bool {
        self.ask(&Request::Holds(unit.to_string()))
            .is_ok_and(|reply| reply == "yes")
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
            pid_file: None,
            mount_sandbox: None,
            shm_files: vec![],
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
            restart_units: vec![],
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

    fn flows(m: &Manifest) -> Vec<Vec<Flow>> {
        m.units.iter().map(|u| unit_flows(u, "")).collect()
    }

    #[test]
    fn rules_queue_the_peers_packets_per_unit_set() {
        let m = manifest();
        let rules = hold_rules(&flows(&m), Some(21330));
        assert!(
            rules.starts_with("table inet seamless-reboot-hold {"),
            "{rules}"
        );
        // The dual-stack connection is matched as the IPv4 packets it sends.
        assert!(
            rules.contains(
                "elements = { 10.0.2.2 . 40000 . 10.0.2.15 . 7000, 10.0.2.2 . 40001 . 10.0.2.15 . 7000 }"
            ),
            "{rules}"
        );
        assert!(rules.contains("set unit0_v4 {"), "{rules}");
        assert!(rules.contains("set unit1_v6 {"), "{rules}");
        assert!(
            rules.contains("elements = { 2001:db8::2 . 5000 . 2001:db8::1 . 22 }"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr . tcp sport . ip daddr . tcp dport @unit0_v4 queue num 21330"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip6 saddr . tcp sport . ip6 daddr . tcp dport @unit1_v6 queue num 21330"
            ),
            "{rules}"
        );
        // Before connection tracking; nothing the restored socket sends is held.
        assert!(rules.contains("hook prerouting priority -300"), "{rules}");
        assert!(!rules.contains("output"), "{rules}");
        assert!(!rules.contains("ffff"), "{rules}");
        assert_eq!(rules.matches('{').count(), rules.matches('}').count());
        let dropped = hold_rules(&flows(&m), None);
        assert!(dropped.contains("@unit1_v6 drop"), "{dropped}");
        assert!(!dropped.contains("queue"), "{dropped}");
        // A release empties the unit's sets; it never deletes a chain, which
        // would make the kernel discard every queued packet.
        assert_eq!(
            release_rules(1),
            "flush set inet seamless-reboot-hold unit1_v4\nflush set inet seamless-reboot-hold unit1_v6\n"
        );
    }

    #[test]
    fn flows_criu_locked_at_the_dump_are_held_too() {
        let criu = "table inet CRIU-563 {\n\tset conns4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\telements = { 10.0.2.15 . 7000 . 10.0.2.2 . 40000,\n\t\t\t     10.0.2.2 . 40009 . 10.0.2.15 . 7000 }\n\t}\n\n\tset conns6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t}\n\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\tmeta mark != 0xc114 ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop\n\t}\n}\n";
        let locked = criu_locked_flows(criu);
        assert_eq!(locked.len(), 2, "{locked:?}");
        assert_eq!(locked[1].source, "10.0.2.2:40009".parse().expect("addr"));
        let m = manifest();
        let all = unit_flows(&m.units[0], criu);
        // The planned two, plus both directions CRIU locked, without repeats.
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all.contains(&Flow {
            source: "10.0.2.2:40009".parse().expect("addr"),
            destination: "10.0.2.15:7000".parse().expect("addr"),
        }));
        assert!(criu_locked_flows("").is_empty());
        assert!(criu_locked_flows("set conns4 { elements = { garbage, 1 . 2 } }").is_empty());
    }

    #[test]
    fn packets_are_held_per_unit_and_released_in_order() {
        let m = manifest();
        let mut held = HeldUnits::new(&m, &flows(&m), &[]);
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
        // Not one of ours: let through. Unreadable (only ours come here):
        // dropped, so the new kernel cannot answer it with a reset.
        assert_eq!(
            held.arrived(&packet(10, "10.0.2.2:40002", "10.0.2.15:7000")),
            Arrival::Now(Verdict::Accept)
        );
        assert_eq!(
            held.arrived(&QueuedPacket { id: 11, flow: None }),
            Arrival::Now(Verdict::Drop)
        );

        let a = held
            .release("a.service", Verdict::Accept)
            .expect("release a");
        assert_eq!(
            a,
            Release {
                index: 0,
                packets: vec![7, 8],
                verdict: Verdict::Accept
            }
        );
        assert_eq!(held.remaining(), vec!["b.service".to_string()]);
        assert!(!held.holds("a.service") && held.holds("b.service"));
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
        assert_eq!((b.index, b.packets, b.verdict), (1, vec![9], Verdict::Drop));
        assert!(held.remaining().is_empty());
    }

    /// A proxy and its backend on the same host, both checkpointed: their
    /// loopback connection is in both units' sets, in both directions, as
    /// CRIU's lock tables list it. Whichever unit is released first, a
    /// packet towards the other is held until that one is released too.
    #[test]
    fn a_loopback_connection_between_two_units_waits_for_both() {
        let lock = |a: &str, b: &str| {
            format!(
                "table inet CRIU-1 {{\n\tset conns4 {{\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\telements = {{ {a}, {b} }}\n\t}}\n}}\n"
            )
        };
        let backend = snapshot(
            "backend.service",
            &[700],
            &[],
            vec![conn("127.0.0.1:80", "127.0.0.1:45000")],
        );
        let proxy = snapshot(
            "proxy.service",
            &[800],
            &[],
            vec![conn("127.0.0.1:45000", "127.0.0.1:80")],
        );
        let locks = lock(
            "127.0.0.1 . 80 . 127.0.0.1 . 45000",
            "127.0.0.1 . 45000 . 127.0.0.1 . 80",
        );
        let mut m = manifest();
        m.units = vec![backend, proxy];
        let flows: Vec<Vec<Flow>> = m.units.iter().map(|u| unit_flows(u, &locks)).collect();
        for first in ["backend.service", "proxy.service"] {
            let second = if first == "backend.service" {
                "proxy.service"
            } else {
                "backend.service"
            };
            let mut held = HeldUnits::new(&m, &flows, &[]);
            let to_proxy = packet(1, "127.0.0.1:80", "127.0.0.1:45000");
            let to_backend = packet(2, "127.0.0.1:45000", "127.0.0.1:80");
            assert_eq!(held.arrived(&to_proxy), Arrival::Held, "{first}");
            assert_eq!(held.arrived(&to_backend), Arrival::Held, "{first}");
            let early = held.release(first, Verdict::Accept).expect("first");
            assert!(early.packets.is_empty(), "{first}: {early:?}");
            // Sent by the end restored first, towards the other: held.
            let sent_by_first = if first == "backend.service" {
                packet(3, "127.0.0.1:80", "127.0.0.1:45000")
            } else {
                packet(3, "127.0.0.1:45000", "127.0.0.1:80")
            };
            assert_eq!(held.arrived(&sent_by_first), Arrival::Held, "{first}");
            let late = held.release(second, Verdict::Accept).expect("second");
            assert_eq!(late.packets, vec![1, 2, 3], "{first} then {second}");
            // Both ends are back: nothing more is held.
            assert_eq!(held.arrived(&to_proxy), Arrival::Now(Verdict::Accept));
        }
    }

    #[test]
    fn units_restored_earlier_in_the_boot_are_not_held_again() {
        let m = manifest();
        let mut held = HeldUnits::new(&m, &flows(&m), &["a.service".to_string()]);
        assert_eq!(held.remaining(), vec!["b.service".to_string()]);
        assert_eq!(
            held.arrived(&packet(7, "10.0.2.2:40000", "10.0.2.15:7000")),
            Arrival::Now(Verdict::Accept)
        );
    }

    #[test]
    fn pids_and_thread_ids_are_reserved_once_each() {
        let m = manifest();
        let held = HeldUnits::new(&m, &flows(&m), &[]);
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
            Request::Holds("a.service".into()),
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
