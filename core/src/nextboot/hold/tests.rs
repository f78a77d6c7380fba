use super::*;
use crate::manifest::{FORMAT_VERSION, TcpConnection};
use crate::netqueue::QueuedPacket;

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
        rules.contains("ip6 saddr . tcp sport . ip6 daddr . tcp dport @unit1_v6 queue num 21330"),
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
