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

use std::fs;
use std::io::{BufRead, BufReader, Write};
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

use crate::layout::TransactionDir;
use crate::manifest::{Manifest, UnitSnapshot, claim, read_claim, read_outcomes};
use crate::netqueue::{Flow, PacketQueue, Verdict};
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

mod held;
mod protocol;
mod rules;
#[cfg(test)]
mod tests;

pub use held::{Arrival, HeldUnits, Release, needed_pids};
pub use protocol::{HoldClient, Request};
pub use rules::{
    HOLD_TABLE, criu_locked_flows, hold_rules, inbound_flow, release_rules, unit_flows,
};

/// Checks that the snapshot in `transaction_dir` is this boot's to restore
/// and claims it for this boot; its manifest.
///
/// The generator may have decided from the command line alone (the image
/// store's filesystem was not mounted yet when it ran), so this is where
/// the snapshot is checked in every boot: it must be the transaction the
/// directory is named after, taken in another boot for this kernel, and
/// not consumed by another boot. Without the claim no unit is restored
/// ([`super::claimed_by_this_boot`]): each starts with its own command.
pub fn claim_snapshot(transaction_dir: &Path, boot_id: &str, release: &str) -> Result<Manifest> {
    let named = TransactionDir::at(transaction_dir)?.id().to_string();
    let manifest = Manifest::read_from(transaction_dir)?;
    if manifest.transaction_id != named {
        bail!(
            "{} holds transaction {}, not {named}",
            transaction_dir.display(),
            manifest.transaction_id
        );
    }
    manifest.check_transition(boot_id, release)?;
    match claim(transaction_dir, boot_id) {
        Ok(_) => {}
        Err(e) => match read_claim(transaction_dir)? {
            Some(c) if c.boot_id == boot_id => {} // the hold ran again this boot
            Some(c) => bail!("the snapshot was already consumed by boot {}", c.boot_id),
            None => return Err(e.into()),
        },
    }
    Ok(manifest)
}

/// The hold unit's process: check and claim the snapshot, reserve the pids,
/// hold the connections, tell systemd it is ready, then serve the restore
/// helpers until every unit is released, the deadline passes or SIGTERM
/// comes.
///
/// Must run single-threaded: the pid placeholders are forked without exec.
pub fn run(
    transaction_dir: &Path,
    boot_id: &str,
    release: &str,
    settings: &HoldSettings,
) -> Result<()> {
    let manifest = claim_snapshot(transaction_dir, boot_id, release)
        .context("not restoring: every unit of the snapshot starts with its own command")?;
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
            let lock = TransactionDir::at(transaction_dir)
                .map(|layout| layout.hold_rules(&unit.unit))
                .unwrap_or_default();
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
pub(crate) fn nft_apply(rules: &str) -> Result<()> {
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
