//! The hold's nftables rules: which packets are held, per unit, and how a
//! unit is released. Pure text in, text out, so every rule is tested
//! without a kernel.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::manifest::{TcpConnection, UnitSnapshot};
use crate::netqueue::Flow;

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
