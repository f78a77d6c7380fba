//! Tests against the running kernel, each in a network namespace of its
//! own so the host's queues and rules are never touched.
//!
//! A network namespace belongs to a thread, not to the process: each test
//! runs its body on a fresh thread that calls `unshare(CLONE_NEWNET)`, and
//! the namespace disappears when that thread and its sockets are gone.
//! They need root (CAP_SYS_ADMIN for unshare, CAP_NET_ADMIN for
//! nfnetlink) and a kernel with nfnetlink_queue; the end-to-end tests also
//! need nf_tables with nft_compat and the xt NFQUEUE target, because the
//! native `queue` expression (CONFIG_NFT_QUEUE) is not everywhere and
//! there is no `nft` binary to rely on. Without these the tests fail,
//! saying what is missing; they never pass without having run.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};

use super::wire::{self, Incoming};
use super::{NetQueueError, PacketQueue, QueuedPacket, Verdict};

const NEEDS: &str = "needs root and a kernel with nfnetlink_queue";

/// Runs `body` on a new thread in a new, empty network namespace.
fn in_new_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|errno| panic!("unshare(CLONE_NEWNET) failed: {errno}; {NEEDS}"));
        body()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The line of this thread's namespace's `/proc/net/netfilter/nfnetlink_queue`
/// for `queue`: queue, peer port id, held, copy mode, copy range, ...
fn proc_queue_line(queue: u16) -> Option<Vec<u64>> {
    // /proc/net follows the thread group leader; thread-self follows us.
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
        .unwrap_or_else(|error| panic!("cannot read nfnetlink_queue's proc file: {error}"));
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|field| field.parse().ok())
                .collect::<Vec<u64>>()
        })
        .find(|fields| fields.first() == Some(&u64::from(queue)))
}

#[test]
fn binds_a_queue_with_copy_packet_and_nothing_waits() {
    in_new_netns(|| {
        let queue = PacketQueue::bind(7, 64).unwrap_or_else(|error| panic!("{error}; {NEEDS}"));
        assert_eq!(queue.number(), 7);
        assert_eq!(queue.receive().expect("receive"), vec![]);
        let line = proc_queue_line(7).expect("queue 7 is listed by the kernel");
        // queue_num, peer_portid, queue_total, copy_mode, copy_range
        assert_eq!(line.get(2), Some(&0), "nothing held: {line:?}");
        assert_eq!(line.get(3), Some(&2), "NFQNL_COPY_PACKET: {line:?}");
        assert_eq!(line.get(4), Some(&256), "copy range: {line:?}");
        drop(queue);
        assert_eq!(proc_queue_line(7), None, "closing the socket unbinds");
    });
}

#[test]
fn a_bound_queue_is_refused_to_another_socket_until_dropped() {
    in_new_netns(|| {
        let first = PacketQueue::bind(9, 16).unwrap_or_else(|error| panic!("{error}; {NEEDS}"));
        // The kernel checks the queue's owner before the bind command, so
        // another socket gets EPERM, not EBUSY.
        match PacketQueue::bind(9, 16) {
            Err(
                error @ NetQueueError::Bind {
                    queue: 9,
                    errno: Errno::EPERM,
                },
            ) => {
                assert!(
                    error
                        .to_string()
                        .starts_with("cannot bind netfilter queue 9")
                );
            }
            other => panic!("expected EPERM, got {other:?}"),
        }
        let other_number = PacketQueue::bind(10, 16).expect("another queue number is free");
        drop(first);
        PacketQueue::bind(9, 16).expect("free again once the first socket is closed");
        drop(other_number);
    });
}

#[test]
fn a_verdict_for_a_packet_not_held_is_refused_with_enoent() {
    in_new_netns(|| {
        let queue = PacketQueue::bind(11, 16).unwrap_or_else(|error| panic!("{error}; {NEEDS}"));
        // ENOENT comes from the packet lookup, after the kernel found the
        // queue by res_id (else ENODEV) owned by us (else EPERM) and read
        // the verdict header (else EINVAL): the request is well-formed.
        match queue.verdict(12345, Verdict::Accept) {
            Err(
                error @ NetQueueError::VerdictRefused {
                    queue: 11,
                    id: 12345,
                    errno: Errno::ENOENT,
                    ..
                },
            ) => assert!(error.is_transient()),
            other => panic!("expected ENOENT, got {other:?}"),
        }
        assert_eq!(queue.receive().expect("receive"), vec![]);
    });
}

// --- End to end: a TCP connection through the queue ----------------------

/// A netlink message under construction, for the test's own requests to
/// rtnetlink and nf_tables.
struct Message {
    bytes: Vec<u8>,
    nests: Vec<usize>,
}

const NLA_F_NESTED: u16 = 1 << 15;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const REQUEST_ACK: u16 = wire::NLM_F_REQUEST | wire::NLM_F_ACK;

impl Message {
    fn new(msg_type: u16, flags: u16, seq: u32) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&msg_type.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        Self {
            bytes,
            nests: Vec::new(),
        }
    }

    /// An nfnetlink message: header plus `nfgenmsg`.
    fn nfnl(subsystem: u16, message: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let [r0, r1] = res_id.to_be_bytes();
        Self::new((subsystem << 8) | message, flags, seq).raw(&[family, 0, r0, r1])
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }

    fn raw(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        self.bytes
            .extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
        self
    }

    fn string(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    fn be32(self, kind: u16, value: u32) -> Self {
        self.attr(kind, &value.to_be_bytes())
    }

    fn nest(mut self, kind: u16) -> Self {
        self.nests.push(self.bytes.len());
        self.attr(kind | NLA_F_NESTED, &[])
    }

    fn end(mut self) -> Self {
        let start = self.nests.pop().expect("an open nest");
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

fn netlink_socket(protocol: SockProtocol) -> OwnedFd {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )
    .expect("netlink socket");
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).expect("bind netlink socket");
    fd
}

/// Sends `request` and collects `answers` acknowledgements; panics with
/// `what` on an error answer.
fn roundtrip(fd: &OwnedFd, request: &[u8], answers: usize, what: &str) {
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .unwrap_or_else(|errno| panic!("cannot send {what}: {errno}"));
    let mut acked = 0;
    let mut buffer = vec![0; 16384];
    while acked < answers {
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(5000u16)).expect("poll");
        assert!(ready > 0, "no answer to {what}");
        let len = recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()).expect("recv");
        for message in wire::parse_datagram(&buffer[..len]).expect("parse answer") {
            match message {
                Incoming::Ack { .. } => acked += 1,
                Incoming::Error { errno, .. } => {
                    panic!("the kernel refused {what}: {}", Errno::from_raw(errno))
                }
                _ => {}
            }
        }
    }
}

/// `ip link set lo up`, by rtnetlink: RTM_NEWLINK with `struct ifinfomsg`
/// for ifindex 1 (loopback is always 1 in a new namespace).
fn set_loopback_up() {
    const RTM_NEWLINK: u16 = 16;
    const IFF_UP: u32 = 1;
    let mut ifinfomsg = vec![0u8, 0, 0, 0]; // family, pad, type
    ifinfomsg.extend_from_slice(&1i32.to_ne_bytes()); // index
    ifinfomsg.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    ifinfomsg.extend_from_slice(&IFF_UP.to_ne_bytes()); // change
    let request = Message::new(RTM_NEWLINK, REQUEST_ACK, 1)
        .raw(&ifinfomsg)
        .finish();
    roundtrip(
        &netlink_socket(SockProtocol::NetlinkRoute),
        &request,
        1,
        "setting lo up",
    );
}

/// Installs, in this namespace, a table of `family` (NFPROTO_IPV4 = 2 or
/// NFPROTO_IPV6 = 10) with an input chain that sends every packet to
/// `queue`: nft_compat running the xt `NFQUEUE` target revision 0
/// (`struct xt_NFQ_info { __u16 queuenum; }`, padded to XT_ALIGN = 8), no
/// bypass — what `iptables-nft -A INPUT -j NFQUEUE --queue-num N` does.
fn queue_all_input(family: u8, queue: u16) {
    // linux/netfilter/nfnetlink.h, nf_tables.h, nf_tables_compat.h
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    const NFNL_MSG_BATCH_END: u16 = 0x11;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_NEWCHAIN: u16 = 3;
    const NFT_MSG_NEWRULE: u16 = 6;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFTA_CHAIN_TABLE: u16 = 1;
    const NFTA_CHAIN_NAME: u16 = 3;
    const NFTA_CHAIN_HOOK: u16 = 4;
    const NFTA_CHAIN_TYPE: u16 = 7;
    const NFTA_HOOK_HOOKNUM: u16 = 1;
    const NFTA_HOOK_PRIORITY: u16 = 2;
    const NFTA_RULE_TABLE: u16 = 1;
    const NFTA_RULE_CHAIN: u16 = 2;
    const NFTA_RULE_EXPRESSIONS: u16 = 4;
    const NFTA_LIST_ELEM: u16 = 1;
    const NFTA_EXPR_NAME: u16 = 1;
    const NFTA_EXPR_DATA: u16 = 2;
    const NFTA_TARGET_NAME: u16 = 1;
    const NFTA_TARGET_REV: u16 = 2;
    const NFTA_TARGET_INFO: u16 = 3;
    const NF_INET_LOCAL_IN: u32 = 1;

    let table = "netqueue_test";
    let chain = "input";
    let mut info = queue.to_ne_bytes().to_vec();
    info.resize(8, 0);
    let nft =
        |message, flags, seq| Message::nfnl(NFNL_SUBSYS_NFTABLES, message, flags, seq, family, 0);
    let mut batch = Message::new(NFNL_MSG_BATCH_BEGIN, wire::NLM_F_REQUEST, 1)
        .raw(&[0, 0, 0, NFNL_SUBSYS_NFTABLES as u8])
        .finish();
    batch.extend(
        nft(NFT_MSG_NEWTABLE, REQUEST_ACK | NLM_F_CREATE, 2)
            .string(NFTA_TABLE_NAME, table)
            .finish(),
    );
    batch.extend(
        nft(NFT_MSG_NEWCHAIN, REQUEST_ACK | NLM_F_CREATE, 3)
            .string(NFTA_CHAIN_TABLE, table)
            .string(NFTA_CHAIN_NAME, chain)
            .nest(NFTA_CHAIN_HOOK)
            .be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_IN)
            .be32(NFTA_HOOK_PRIORITY, 0)
            .end()
            .string(NFTA_CHAIN_TYPE, "filter")
            .finish(),
    );
    batch.extend(
        nft(
            NFT_MSG_NEWRULE,
            REQUEST_ACK | NLM_F_CREATE | NLM_F_APPEND,
            4,
        )
        .string(NFTA_RULE_TABLE, table)
        .string(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS)
        .nest(NFTA_LIST_ELEM)
        .string(NFTA_EXPR_NAME, "target")
        .nest(NFTA_EXPR_DATA)
        .string(NFTA_TARGET_NAME, "NFQUEUE")
        .be32(NFTA_TARGET_REV, 0)
        .attr(NFTA_TARGET_INFO, &info)
        .end()
        .end()
        .end()
        .finish(),
    );
    batch.extend(
        Message::new(NFNL_MSG_BATCH_END, wire::NLM_F_REQUEST, 5)
            .raw(&[0, 0, 0, NFNL_SUBSYS_NFTABLES as u8])
            .finish(),
    );
    roundtrip(
        &netlink_socket(SockProtocol::NetlinkNetFilter),
        &batch,
        3,
        "the nftables rule queueing input to NFQUEUE (needs nf_tables, nft_compat, xt_NFQUEUE)",
    );
}

/// Waits up to `timeout` for packets on `queue`.
fn next_packets(queue: &PacketQueue, timeout: Duration) -> Vec<QueuedPacket> {
    let deadline = Instant::now() + timeout;
    loop {
        let packets = queue.receive().expect("receive");
        if !packets.is_empty() {
            return packets;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no packet queued within {timeout:?}");
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16)).expect("poll");
    }
}

/// Connects to a listener on `loopback` through a queue that holds every
/// incoming packet: the SYN is held (the connection cannot complete),
/// then re-injected with an accept verdict, and the next packet queued
/// must be the server's SYN-ACK — proof that the very packet we held was
/// delivered, not a later retransmission.
fn hold_and_reinject_a_syn(loopback: IpAddr, family: u8) {
    set_loopback_up();
    let queue = PacketQueue::bind(3, 64).unwrap_or_else(|error| panic!("{error}; {NEEDS}"));
    queue_all_input(family, 3);

    let listener = TcpListener::bind((loopback, 0)).expect("listen on loopback");
    let server = listener.local_addr().expect("listener address");
    let (connected, connection) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let result = TcpStream::connect_timeout(&server, Duration::from_secs(20));
        let _ = connected.send(());
        result
    });

    // The SYN: from the client to the server, held.
    let packets = next_packets(&queue, Duration::from_secs(5));
    let [syn] = packets.as_slice() else {
        panic!("expected the SYN alone, got {packets:?}");
    };
    let syn_flow = syn.flow.expect("the SYN's flow");
    assert_eq!(syn_flow.destination, server);
    assert_eq!(syn_flow.source.ip(), loopback);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connection.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "the connection completed although its SYN was held"
    );
    assert_eq!(
        queue.receive().expect("receive"),
        vec![],
        "nothing else came"
    );

    // Re-inject it; the server answers with a SYN-ACK, which is queued too.
    queue
        .verdict(syn.id, Verdict::Accept)
        .expect("accept the SYN");
    let packets = next_packets(&queue, Duration::from_secs(5));
    let synack = packets.first().expect("a packet");
    assert_eq!(
        synack.flow,
        Some(syn_flow.reversed()),
        "the SYN-ACK: {packets:?}"
    );
    assert_ne!(synack.id, syn.id);
    // The SYN has its verdict: a second one is refused.
    assert!(matches!(
        queue.verdict(syn.id, Verdict::Drop),
        Err(NetQueueError::VerdictRefused {
            errno: Errno::ENOENT,
            ..
        })
    ));

    // Let everything else through until the connection carries data.
    for packet in packets {
        queue.verdict(packet.id, Verdict::Accept).expect("accept");
    }
    let pump = |queue: &PacketQueue| {
        for packet in queue.receive().expect("receive") {
            queue.verdict(packet.id, Verdict::Accept).expect("accept");
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection.try_recv().is_err() {
        assert!(Instant::now() < deadline, "connect did not complete");
        pump(&queue);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = client
        .join()
        .expect("client thread")
        .expect("connect after the SYN was re-injected");
    assert_eq!(client.local_addr().ok(), Some(syn_flow.source));
    client.write_all(b"ping").expect("write");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let mut accepted = None;
    let mut received = Vec::new();
    while received.len() < 4 {
        assert!(Instant::now() < deadline, "data did not arrive");
        pump(&queue);
        if accepted.is_none() {
            accepted = listener.accept().ok().map(|(stream, _)| stream);
            if let Some(stream) = &accepted {
                stream.set_nonblocking(true).expect("nonblocking stream");
            }
        }
        if let Some(stream) = &mut accepted {
            let mut buffer = [0; 16];
            if let Ok(len) = stream.read(&mut buffer) {
                received.extend_from_slice(&buffer[..len]);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(received, b"ping");
}

#[test]
fn holds_and_reinjects_an_ipv4_syn() {
    in_new_netns(|| hold_and_reinject_a_syn(IpAddr::V4(Ipv4Addr::LOCALHOST), 2));
}

#[test]
fn holds_and_reinjects_an_ipv6_syn() {
    in_new_netns(|| hold_and_reinject_a_syn(IpAddr::V6(Ipv6Addr::LOCALHOST), 10));
}
