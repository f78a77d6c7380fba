//! Property tests of the parsers that read bytes this product did not write
//! itself, or wrote in another boot.
//!
//! The manifest, CRIU's process-tree image, the netlink datagrams of the
//! packet queue, the kernel's bzImage header, the kernel command line and
//! the `/proc/net` tables all reach this code from outside: from disk after
//! a kexec, from the kernel, from another program. Each parser must answer
//! any input with a value or an error, never a panic, because a panic in the
//! next boot leaves the services frozen on disk; and each writer this crate
//! has must be read back to what it wrote. The example tests next to each
//! parser pin known inputs; these properties cover the inputs nobody wrote
//! down. Generators are shaped to get past each format's first checks
//! (magics, length fields), where arbitrary bytes alone would stop.
//!
//! Case counts are set per property so that the whole module runs in a few
//! seconds in a debug build; no failure files are written into the tree
//! (a failure prints its minimal input instead). What these properties
//! found is kept as regression tests beside them, in the form the failing
//! input was reported, and fixed: `parse_address` sliced a non-ASCII IPv6
//! field inside a character (a panic), and `build_next_cmdline` accepted a
//! current line whose unterminated quote swallowed the appended marker.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Runner settings: `cases` per property, no failure persistence files.
fn runner(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short strings of any characters (control characters, quotes and
/// astral planes included); cheaper to generate than regex strategies.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// A few short arbitrary strings.
fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(10), 0..3)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Socket addresses as the kernel reports them: no IPv6 flow label or
/// scope id (neither `/proc/net` nor a packet's addresses carry them).
fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::from((Ipv4Addr::from(a), p))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::from((Ipv6Addr::from(a), p))),
    ]
}

mod manifest {
    //! `Manifest::encode` / `Manifest::decode`.

    use std::path::Path;

    use super::*;
    use crate::manifest::tests::with_header;
    use crate::manifest::{
        FORMAT_VERSION, ImageDigest, MAGIC, Manifest, ManifestError, TcpConnection, UnitSnapshot,
    };

    fn path() -> &'static Path {
        Path::new("/prop/manifest")
    }

    fn unit_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:_\\\\-][a-zA-Z0-9:_.\\\\-]{0,15}(@[a-zA-Z0-9:_.\\\\-]{0,8})?\\.(service|socket|timer)"
    }

    /// Plain file names: anything but empty, `.`, `..`, `/` and NUL.
    fn image_name() -> impl Strategy<Value = String> {
        "[^/\u{0}]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..")
    }

    fn image_digests() -> impl Strategy<Value = Vec<ImageDigest>> {
        prop::collection::btree_map(image_name(), (any::<u64>(), "[0-9a-f]{64}"), 0..4).prop_map(
            |images| {
                images
                    .into_iter()
                    .map(|(name, (size, sha256))| ImageDigest { name, size, sha256 })
                    .collect()
            },
        )
    }

    fn unit_snapshot() -> impl Strategy<Value = UnitSnapshot> {
        (
            (
                "[a-z0-9_-][a-z0-9._-]{0,7}(/[a-z0-9_-]{1,8})?",
                1..=i32::MAX,
                prop::collection::vec(1..=i32::MAX, 0..4),
                prop::collection::vec(any::<i32>(), 0..4),
                texts(),
                prop::option::of(text(10)),
            ),
            (
                prop::collection::vec(
                    (socket_addr(), socket_addr())
                        .prop_map(|(local, remote)| TcpConnection { local, remote }),
                    0..4,
                ),
                prop::collection::vec(any::<u64>(), 0..3),
                texts(),
                any::<u64>(),
                image_digests(),
            ),
        )
            .prop_map(
                |(
                    (dir, main_pid, mut pids, thread_ids, exec_start, pid_file),
                    (connections, journal_socket_inodes, shm_files, frozen_ms, images),
                )| {
                    pids.push(main_pid);
                    UnitSnapshot {
                        unit: String::new(),
                        images_dir: dir,
                        main_pid,
                        pids,
                        thread_ids,
                        exec_start,
                        pid_file,
                        connections,
                        journal_socket_inodes,
                        mount_sandbox: None,
                        shm_files,
                        frozen_ms,
                        images,
                    }
                },
            )
    }

    /// Valid manifests: every field the validation checks is generated
    /// within its rules, every other field is arbitrary.
    pub(super) fn valid_manifest() -> impl Strategy<Value = Manifest> {
        (
            "[a-z0-9-]{1,64}",
            any::<u64>(),
            (text(12), text(12), text(12)),
            prop::collection::btree_map(unit_name(), unit_snapshot(), 1..4),
            texts(),
        )
            .prop_map(
                |(transaction_id, created_unix, (boot, source, target), units, restart_units)| {
                    Manifest {
                        format_version: FORMAT_VERSION,
                        transaction_id,
                        created_unix,
                        // Not blank: a visible first character.
                        source_boot_id: format!("b{boot}"),
                        source_kernel: format!("s{source}"),
                        target_kernel: format!("t{target}"),
                        units: units
                            .into_iter()
                            .enumerate()
                            .map(|(i, (unit, mut snapshot))| {
                                // Distinct images directories: each unit's own.
                                snapshot.images_dir = format!("u{i}/{}", snapshot.images_dir);
                                snapshot.unit = unit;
                                snapshot
                            })
                            .collect::<Vec<_>>(),
                        restart_units,
                    }
                },
            )
    }

    /// A manifest that decodes is valid, and encodes back to bytes that
    /// decode to it again.
    fn check_decoded(m: &Manifest) -> Result<(), TestCaseError> {
        prop_assert_eq!(m.validate(), Ok(()));
        let again = m
            .encode(path())
            .map_err(|e| TestCaseError::fail(format!("decoded manifest does not encode: {e}")))?;
        let back = Manifest::decode(path(), again.as_slice())
            .map_err(|e| TestCaseError::fail(format!("re-encoded manifest fails: {e}")))?;
        prop_assert_eq!(&back, m);
        Ok(())
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn decode_arbitrary_bytes_never_panics(data in bytes(256)) {
            if let Ok(m) = Manifest::decode(path(), data.as_slice()) {
                check_decoded(&m)?;
            }
        }

        /// Arbitrary header fields after the right magic: every field
        /// check is reached.
        #[test]
        fn decode_arbitrary_header_after_magic_never_panics(
            version in prop_oneof![Just(FORMAT_VERSION), any::<u32>()],
            len in prop_oneof![0_u64..300, any::<u64>()],
            crc in any::<u32>(),
            body in bytes(300),
        ) {
            let mut data = MAGIC.to_vec();
            data.extend_from_slice(&version.to_le_bytes());
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(&crc.to_le_bytes());
            data.extend_from_slice(&body);
            if let Ok(m) = Manifest::decode(path(), data.as_slice()) {
                check_decoded(&m)?;
            }
        }

        /// Arbitrary bodies behind a correct header reach the JSON parser.
        #[test]
        fn decode_arbitrary_framed_body_never_panics(body in bytes(256)) {
            if let Ok(m) = Manifest::decode(path(), with_header(&body).as_slice()) {
                check_decoded(&m)?;
            }
        }
    }

    proptest! {
        #![proptest_config(runner(300))]

        #[test]
        fn encode_then_decode_round_trips(m in valid_manifest()) {
            let bytes = m.encode(path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = Manifest::decode(path(), bytes.as_slice())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, m);
        }

        /// Magic, version, length and CRC32 together: any change of one
        /// byte anywhere (a CRC32 catches every burst of up to 32 bits in
        /// the body) is refused.
        #[test]
        fn any_single_byte_change_is_rejected(
            m in valid_manifest(),
            at in any::<prop::sample::Index>(),
            xor in 1_u8..,
        ) {
            let mut bytes = m.encode(path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
            let result = Manifest::decode(path(), bytes.as_slice());
            prop_assert!(result.is_err(), "byte {} ^ {:#04x} accepted: {:?}", i, xor, result);
        }

        /// Cutting the file anywhere, or appending to it, is refused.
        #[test]
        fn truncation_and_trailing_data_are_rejected(
            m in valid_manifest(),
            at in any::<prop::sample::Index>(),
            extra in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let bytes = m.encode(path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let cut = at.index(bytes.len());
            prop_assert!(Manifest::decode(path(), &bytes[..cut]).is_err(), "cut at {}", cut);
            let mut longer = bytes.clone();
            longer.extend_from_slice(&extra);
            let trailing = Manifest::decode(path(), longer.as_slice());
            prop_assert!(
                matches!(trailing, Err(ManifestError::TrailingData { .. })),
                "{:?}", trailing
            );
        }

        /// A valid manifest's JSON with bytes replaced, re-framed with a
        /// correct CRC: whatever decodes must pass validation.
        #[test]
        fn mutated_json_body_is_valid_or_an_error(
            m in valid_manifest(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut body = serde_json::to_vec(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (at, b) in edits {
                let i = at.index(body.len());
                body[i] = b;
            }
            if let Ok(decoded) = Manifest::decode(path(), with_header(&body).as_slice()) {
                check_decoded(&decoded)?;
            }
        }
    }

    proptest! {
        #![proptest_config(runner(300))]

        /// Field-level damage a careless edit (or an older writer) could
        /// leave, framed correctly: validation refuses it.
        #[test]
        fn invalid_content_is_refused(
            m in valid_manifest(),
            which in 0_u8..6,
            bad_pid in i32::MIN..=0,
        ) {
            let mut m = m;
            match which {
                0 => m.transaction_id = "Not_Valid".to_owned(),
                1 => m.source_kernel = " \t".to_owned(),
                2 => m.units.clear(),
                3 => m.units[0].main_pid = bad_pid,
                4 => m.units[0].images_dir = "../escape".to_owned(),
                _ => {
                    let first = m.units[0].clone();
                    m.units.push(first);
                }
            }
            let body = serde_json::to_vec(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let result = Manifest::decode(path(), with_header(&body).as_slice());
            prop_assert!(
                matches!(result, Err(ManifestError::Invalid { .. })),
                "damage {} accepted: {:?}", which, result
            );
        }
    }

    /// The same unit under two spellings of its images directory shares
    /// one directory: the generator's `u{i}/` prefixes keep them apart, and
    /// this checks that the check the prefixes avoid is real.
    #[test]
    fn generator_relies_on_distinct_images_dirs() {
        let mut m = crate::manifest::tests::sample();
        let mut second = m.units[0].clone();
        second.unit = "other.service".to_owned();
        second.images_dir = "./images//demo/".to_owned();
        m.units.push(second);
        assert!(m.validate().is_err());
    }
}

mod criu_images {
    //! `parse_process_tree` / `encode_process_tree`.

    use std::collections::BTreeSet;

    use super::*;
    use crate::criu::images::{
        IMG_COMMON_MAGIC, PSTREE_MAGIC, SavedProcess, encode_process_tree, parse_process_tree,
    };

    fn magics() -> Vec<u8> {
        let mut out = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&PSTREE_MAGIC.to_le_bytes());
        out
    }

    fn process() -> impl Strategy<Value = SavedProcess> {
        (
            1..=i32::MAX,
            0..=i32::MAX,
            prop::collection::vec(1..=i32::MAX, 0..6),
        )
            .prop_map(|(pid, ppid, threads)| SavedProcess { pid, ppid, threads })
    }

    /// A protobuf-ish entry body: arbitrary bytes, or fields with the
    /// entry's own tags and wire types and arbitrary varints.
    fn entry_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            bytes(24),
            prop::collection::vec((1_u8..7, any::<u64>()), 0..8).prop_map(|fields| {
                let mut out = Vec::new();
                for (tag, mut v) in fields {
                    out.push(tag << 3);
                    loop {
                        let b = (v & 0x7f) as u8;
                        v >>= 7;
                        if v == 0 {
                            out.push(b);
                            break;
                        }
                        out.push(b | 0x80);
                    }
                }
                out
            }),
        ]
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(data in bytes(128)) {
            let _ = parse_process_tree(&data);
        }

        /// After the right magics, frames with plausible (and implausible)
        /// lengths around protobuf-ish bodies.
        #[test]
        fn framed_entries_never_panic(
            entries in prop::collection::vec(
                (entry_body(), prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)]),
                0..5,
            ),
            tail in bytes(6),
        ) {
            let mut data = magics();
            for (body, len) in &entries {
                let len = len.unwrap_or(body.len() as u32);
                data.extend_from_slice(&len.to_le_bytes());
                data.extend_from_slice(body);
            }
            data.extend_from_slice(&tail);
            if let Ok(tree) = parse_process_tree(&data) {
                prop_assert!(!tree.processes.is_empty());
                for p in &tree.processes {
                    prop_assert!(p.pid > 0 && p.ppid >= 0, "{:?}", p);
                    prop_assert!(p.threads.iter().all(|&t| t > 0), "{:?}", p);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(runner(1000))]

        /// What the test writer writes reads back, and the derived pid and
        /// thread lists agree with a model built from the input.
        #[test]
        fn encode_then_parse_round_trips(
            processes in prop::collection::vec(process(), 1..6),
        ) {
            let tree = parse_process_tree(&encode_process_tree(&processes))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&tree.processes, &processes);
            prop_assert_eq!(tree.root_pid(), processes[0].pid);
            let pids: BTreeSet<i32> = processes.iter().map(|p| p.pid).collect();
            prop_assert_eq!(tree.pids(), pids.iter().copied().collect::<Vec<_>>());
            let threads: BTreeSet<i32> = processes
                .iter()
                .flat_map(|p| p.threads.iter().copied())
                .filter(|t| !pids.contains(t))
                .collect();
            prop_assert_eq!(tree.thread_ids(), threads.into_iter().collect::<Vec<_>>());
        }

        /// Every proper prefix that does not end on an entry boundary is
        /// refused.
        #[test]
        fn cut_images_are_refused(
            processes in prop::collection::vec(process(), 1..4),
            at in any::<prop::sample::Index>(),
        ) {
            let data = encode_process_tree(&processes);
            let mut boundaries = vec![8];
            let mut offset = 8;
            while offset < data.len() {
                let len = u32::from_le_bytes([
                    data[offset], data[offset + 1], data[offset + 2], data[offset + 3],
                ]) as usize;
                offset += 4 + len;
                boundaries.push(offset);
            }
            let cut = at.index(data.len());
            if !boundaries.contains(&cut) {
                let result = parse_process_tree(&data[..cut]);
                prop_assert!(result.is_err(), "cut at {} parsed: {:?}", cut, result);
            }
        }
    }
}

mod netqueue {
    //! `wire::parse_datagram` and `flow::parse_flow`.

    use super::*;
    use crate::netqueue::flow::parse_flow;
    use crate::netqueue::wire::{
        Incoming, NFNETLINK_V0, NFQA_PACKET_HDR, NFQA_PAYLOAD, NFQNL_MSG_PACKET, NLMSG_DONE,
        NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, parse_datagram, queue_msg_type,
    };
    use crate::netqueue::{Flow, QueuedPacket};

    fn pad(v: &mut Vec<u8>) {
        v.resize(v.len().next_multiple_of(4), 0);
    }

    fn nlmsg(msg_type: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        pad(&mut out);
        out
    }

    fn nlattr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        pad(&mut out);
        out
    }

    fn msg_type() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(NLMSG_ERROR),
            Just(NLMSG_NOOP),
            Just(NLMSG_DONE),
            Just(queue_msg_type(NFQNL_MSG_PACKET)),
            any::<u16>(),
        ]
    }

    /// An nfnetlink body: `nfgenmsg` and attributes of the types the
    /// parser reads (and others), some with lying lengths.
    fn nf_body() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<[u8; 4]>(),
            prop::collection::vec(
                (
                    prop_oneof![Just(NFQA_PACKET_HDR), Just(NFQA_PAYLOAD), any::<u16>()],
                    prop_oneof![bytes(48), ip_packet()],
                    prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)],
                ),
                0..4,
            ),
        )
            .prop_map(|(nfgen, attrs)| {
                let mut body = nfgen.to_vec();
                for (kind, value, lie) in attrs {
                    let mut a = nlattr(kind, &value);
                    if let Some(len) = lie {
                        a[..2].copy_from_slice(&len.to_ne_bytes());
                    }
                    body.extend(a);
                }
                body
            })
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn datagram_arbitrary_bytes_never_panic(data in bytes(128)) {
            let _ = parse_datagram(&data);
        }

        /// Valid netlink framing around arbitrary or nfnetlink-shaped
        /// bodies, with an optional lying length in the first header and
        /// stray trailing bytes: gets past the framing checks.
        #[test]
        fn framed_datagrams_never_panic(
            messages in prop::collection::vec(
                (msg_type(), any::<u32>(), prop_oneof![bytes(40), nf_body()]),
                0..4,
            ),
            lie in prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
            tail in bytes(20),
        ) {
            let mut data = Vec::new();
            for (t, seq, body) in &messages {
                data.extend(nlmsg(*t, *seq, body));
            }
            if let (Some(len), true) = (lie, data.len() >= 4) {
                data[..4].copy_from_slice(&len.to_ne_bytes());
            }
            data.extend_from_slice(&tail);
            if let Ok(incoming) = parse_datagram(&data) {
                prop_assert!(incoming.len() <= messages.len() + tail.len() / NLMSG_HDRLEN);
            }
        }

        /// Arbitrary bytes after an IP version nibble.
        #[test]
        fn flow_arbitrary_bytes_never_panic(
            version in prop_oneof![Just(0x40_u8), Just(0x60), any::<u8>()],
            rest in bytes(100),
        ) {
            let mut data = vec![version | (rest.first().copied().unwrap_or(5) & 0x0f)];
            data.extend_from_slice(&rest);
            let _ = parse_flow(&data);
            let _ = parse_flow(&rest);
        }
    }

    /// IPv4/IPv6 TCP packets with arbitrary addresses and ports (the
    /// generator's flow is the second value), with IPv4 options.
    fn tcp_packet() -> impl Strategy<Value = (Vec<u8>, Flow)> {
        use std::net::IpAddr;
        (socket_addr(), socket_addr(), 0_usize..=10, bytes(20)).prop_filter_map(
            "same family",
            |(source, destination, options, tcp_rest)| {
                let mut p = match (source.ip(), destination.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        let mut p = vec![0x45 + options as u8, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
                        p.extend_from_slice(&s.octets());
                        p.extend_from_slice(&d.octets());
                        p.resize(p.len() + options * 4, 1);
                        p
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        let mut p = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
                        p.extend_from_slice(&s.octets());
                        p.extend_from_slice(&d.octets());
                        p
                    }
                    _ => return None,
                };
                p.extend_from_slice(&source.port().to_be_bytes());
                p.extend_from_slice(&destination.port().to_be_bytes());
                p.extend_from_slice(&tcp_rest);
                Some((
                    p,
                    Flow {
                        source,
                        destination,
                    },
                ))
            },
        )
    }

    fn ip_packet() -> impl Strategy<Value = Vec<u8>> {
        tcp_packet().prop_map(|(p, _)| p)
    }

    proptest! {
        #![proptest_config(runner(1000))]

        #[test]
        fn tcp_packet_flow_is_read_back(packet in tcp_packet()) {
            let (bytes, flow) = packet;
            prop_assert_eq!(parse_flow(&bytes), Some(flow));
        }

        /// A queued packet as the kernel frames it: id, queue and flow come
        /// back out of the datagram.
        #[test]
        fn queued_packet_is_read_back(
            queue in any::<u16>(),
            id in any::<u32>(),
            packet in prop::option::of(tcp_packet()),
            seq in any::<u32>(),
        ) {
            let mut body = vec![2, NFNETLINK_V0];
            body.extend_from_slice(&queue.to_be_bytes());
            let mut header = id.to_be_bytes().to_vec();
            header.extend_from_slice(&[8, 0, 1]);
            body.extend(nlattr(NFQA_PACKET_HDR, &header));
            if let Some((payload, _)) = &packet {
                body.extend(nlattr(NFQA_PAYLOAD, payload));
            }
            let datagram = nlmsg(queue_msg_type(NFQNL_MSG_PACKET), seq, &body);
            prop_assert_eq!(
                parse_datagram(&datagram),
                Ok(vec![Incoming::Packet {
                    queue,
                    packet: QueuedPacket { id, flow: packet.map(|(_, f)| f) },
                }])
            );
        }
    }
}

mod bzimage {
    //! `parse_bzimage_header`.

    use super::*;
    use crate::kexec::bzimage::tests::{TEST_VERSION, synthetic_header};
    use crate::kexec::bzimage::{BzImageInfo, parse_bzimage_header};

    /// The header fields the parser reads: (offset, width in bytes).
    const FIELDS: &[(usize, usize)] = &[
        (0x1F1, 1),
        (0x1F4, 4),
        (0x1FE, 2),
        (0x202, 4),
        (0x206, 2),
        (0x20E, 2),
        (0x211, 1),
        (0x236, 2),
        (0x238, 4),
    ];

    /// What any accepted header satisfies.
    fn check_info(info: &BzImageInfo, len: usize) -> Result<(), TestCaseError> {
        prop_assert!(
            crate::kexec::bzimage::is_valid_release(&info.release),
            "{:?}",
            info
        );
        prop_assert!(info.version_string.contains(info.release.as_str()));
        prop_assert!(info.setup_sects > 0);
        prop_assert!(info.supports_64bit_entry && info.can_load_above_4g);
        prop_assert!(
            info.protocol_version >= (2, 12),
            "{:?}",
            info.protocol_version
        );
        prop_assert!(len >= 1024);
        Ok(())
    }

    proptest! {
        #![proptest_config(runner(1000))]

        #[test]
        fn arbitrary_bytes_never_panic(data in bytes(2048)) {
            if let Ok(info) = parse_bzimage_header(&data) {
                check_info(&info, data.len())?;
            }
        }

        /// One header field set to an arbitrary value, the file cut to an
        /// arbitrary length: no panic, and what passes is consistent.
        #[test]
        fn mutated_field_of_a_valid_header_never_panics(
            field in prop::sample::select(FIELDS),
            value in any::<u32>(),
            keep in prop_oneof![Just(None), (0_usize..0x6000).prop_map(Some)],
        ) {
            let (offset, width) = field;
            let mut data = synthetic_header(TEST_VERSION);
            data[offset..offset + width].copy_from_slice(&value.to_le_bytes()[..width]);
            if let Some(keep) = keep {
                data.truncate(keep);
            }
            if let Ok(info) = parse_bzimage_header(&data) {
                check_info(&info, data.len())?;
            }
        }

        /// Several arbitrary bytes written anywhere in the first sectors or
        /// the version string.
        #[test]
        fn scattered_byte_changes_never_panic(
            edits in prop::collection::vec(
                (prop_oneof![0x1F0_usize..0x240, 0x4500_usize..0x4560], any::<u8>()),
                1..6,
            ),
        ) {
            let mut data = synthetic_header(TEST_VERSION);
            for (at, b) in edits {
                data[at] = b;
            }
            if let Ok(info) = parse_bzimage_header(&data) {
                check_info(&info, data.len())?;
            }
        }

        /// A valid header with an arbitrary release and build text reports
        /// exactly that release and version string.
        #[test]
        fn release_is_read_back(
            release in "[a-zA-Z0-9+_~-][a-zA-Z0-9.+_~-]{0,40}",
            rest in "( [!-~]{1,10}){0,4}",
        ) {
            let version = format!("{release}{rest}");
            let info = parse_bzimage_header(&synthetic_header(&version))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&info.release, &release);
            prop_assert_eq!(&info.version_string, &version);
        }
    }
}

mod cmdline {
    //! `build_next_cmdline` / `marker_from_cmdline`.

    use super::*;
    use crate::kexec::cmdline::{
        BootMarker, CmdlineError, DEFAULT_MAX_CMDLINE_LEN, MARKER_KEY, TransactionId,
        build_next_cmdline, marker_from_cmdline, param_key, split_cmdline, units_from_cmdline,
    };

    /// One word of a command line: plausible parameters, quoted values,
    /// previous markers under either spelling, `--`, an unterminated
    /// quote (which the builder must refuse, see below), and noise.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_.-]{1,10}",
            "[a-z_.-]{1,10}=[!#-~]{0,10}",
            "[a-z_.-]{1,8}=\"[ !#-~]{0,10}\"",
            "\"[a-z_.-]{1,8}=[ !#-~]{0,10}\"",
            Just("--".to_owned()),
            Just("BOOT_IMAGE=/vmlinuz".to_owned()),
            "seamless[-_]reboot\\.transaction=[a-z0-9-]{0,10}",
            "\"seamless_reboot\\.transaction=[a-z0-9-]{1,10}\"",
            Just("quiet".to_owned()),
            Just("init=/bin/sh".to_owned()),
            "[a-z_.-]{0,6}=?\"[a-z]{0,5}",
        ]
    }

    fn separator() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&[" ", "  ", "\t", "\n", " \r "][..])
    }

    fn cmdline() -> impl Strategy<Value = String> {
        (
            separator(),
            prop::collection::vec((word(), separator()), 0..12),
        )
            .prop_map(|(lead, words)| {
                let mut out = lead.to_owned();
                for (w, s) in words {
                    out.push_str(&w);
                    out.push_str(s);
                }
                out
            })
    }

    /// `--append` arguments: mostly acceptable, some refused.
    fn override_arg() -> impl Strategy<Value = String> {
        prop_oneof![
            word(),
            "[a-z_.=\" -]{0,12}",
            any::<String>(),
            Just("-b".to_owned()),
            Just("systemd.unit=rescue.target".to_owned()),
        ]
    }

    fn transaction_id() -> impl Strategy<Value = TransactionId> {
        "[a-z0-9-]{1,64}".prop_map(|s| TransactionId::new(&s).expect("generated valid"))
    }

    fn max_len() -> impl Strategy<Value = usize> {
        prop_oneof![Just(DEFAULT_MAX_CMDLINE_LEN), 0_usize..200]
    }

    /// Unit names as systemd makes them (templates, escapes).
    fn unit_names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            "[a-z][a-z0-9_\\-]{0,12}(@[a-z0-9:]{1,6})?\\.(service|socket)",
            0..6,
        )
    }

    /// The property: what the builder accepts carries exactly its marker,
    /// once, before any `--`, within the length limit, and the units read
    /// back are those given.
    fn check_built(
        current: &str,
        overrides: &[String],
        id: &TransactionId,
        units: &[String],
        max: usize,
    ) -> Result<(), TestCaseError> {
        let marker = BootMarker::new(id.clone(), units).expect("valid unit names");
        if let Ok(line) = build_next_cmdline(current, overrides, &marker, max) {
            prop_assert_eq!(units_from_cmdline(&line), units.to_vec(), "line {:?}", line);
            prop_assert!(line.len() <= max, "{} > {}", line.len(), max);
            let marker = marker_from_cmdline(&line);
            prop_assert_eq!(
                marker.as_deref(),
                Some(id.as_str()),
                "line {:?} from {:?} + {:?}",
                line,
                current,
                overrides
            );
            let words = split_cmdline(&line);
            let markers = words
                .iter()
                .take_while(|w| **w != "--")
                .filter(|w| param_key(w).replace('-', "_") == MARKER_KEY.replace('-', "_"))
                .count();
            prop_assert_eq!(markers, 1, "line {:?}", line);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn built_line_carries_exactly_the_marker(
            current in cmdline(),
            overrides in prop::collection::vec(override_arg(), 0..4),
            id in transaction_id(),
            units in unit_names(),
            max in max_len(),
        ) {
            check_built(&current, &overrides, &id, &units, max)?;
        }

        /// Arbitrary text as the current line: no panic.
        #[test]
        fn arbitrary_current_line_never_panics(
            current in any::<String>(),
            overrides in prop::collection::vec(any::<String>(), 0..3),
            id in transaction_id(),
        ) {
            let marker = BootMarker::new(id, &[]).expect("marker");
            let _ = build_next_cmdline(&current, &overrides, &marker, DEFAULT_MAX_CMDLINE_LEN);
            let _ = marker_from_cmdline(&current);
            let _ = units_from_cmdline(&current);
        }
    }

    /// Found by `built_line_carries_exactly_the_marker` when its word
    /// generator also made words with an unbalanced `"` (minimal input
    /// below): the kernel runs an unterminated quote to the end of the
    /// line, so the marker appended after it became part of the quoted
    /// word, and the builder returned `Ok`. It now refuses such a line.
    #[test]
    fn unterminated_quote_in_current_line_is_refused_not_swallowing_the_marker() {
        let id = BootMarker::new(TransactionId::new("a").expect("valid id"), &[]).expect("marker");
        let built = build_next_cmdline(" \" ", &[] as &[String], &id, DEFAULT_MAX_CMDLINE_LEN);
        assert!(
            matches!(built, Err(CmdlineError::UnterminatedQuote { .. })),
            "{built:?}"
        );
    }

    /// Noticed while reading: the kernel takes the quotes off a word before
    /// it looks for `--`, so an appended `"--"` would have put the marker
    /// among init's arguments.
    #[test]
    fn a_quoted_end_of_parameters_cannot_be_appended() {
        let id = BootMarker::new(TransactionId::new("a").expect("valid id"), &[]).expect("marker");
        let built = build_next_cmdline("root=/dev/vda", &["\"--\""], &id, DEFAULT_MAX_CMDLINE_LEN);
        assert!(
            matches!(built, Err(CmdlineError::InvalidOverride { .. })),
            "{built:?}"
        );
    }
}

mod procnet {
    //! `/proc/net` table parsers.

    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use crate::inventory::procnet::{
        Family, InetSocket, parse_address, parse_inet_table, parse_unix_table,
    };

    fn path() -> &'static Path {
        Path::new("/proc/1/net/tcp")
    }

    /// An address as the kernel prints it: each 32-bit word of the
    /// network-order address read as a native-endian `u32`, `%08X`.
    fn kernel_address(addr: &SocketAddr) -> String {
        let octets: Vec<u8> = match addr.ip() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut out = String::new();
        for word in octets.chunks_exact(4) {
            let w = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            out.push_str(&format!("{w:08X}"));
        }
        format!("{out}:{:04X}", addr.port())
    }

    fn family_addr(family: Family) -> BoxedStrategy<SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr};
        match family {
            Family::V4 => (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(a, p)| SocketAddr::from((Ipv4Addr::from(a), p)))
                .boxed(),
            Family::V6 => (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, p)| SocketAddr::from((Ipv6Addr::from(a), p)))
                .boxed(),
        }
    }

    fn family() -> impl Strategy<Value = Family> {
        prop_oneof![Just(Family::V4), Just(Family::V6)]
    }

    /// Rows with the generator's own sockets, for one family.
    fn table(family: Family) -> impl Strategy<Value = Vec<InetSocket>> {
        prop::collection::vec(
            (
                family_addr(family),
                family_addr(family),
                any::<u8>(),
                any::<u64>(),
            )
                .prop_map(|(local, remote, state, inode)| InetSocket {
                    local,
                    remote,
                    state,
                    inode,
                }),
            0..5,
        )
    }

    fn print_table(sockets: &[InetSocket]) -> String {
        let mut text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_owned();
        for (i, s) in sockets.iter().enumerate() {
            text.push_str(&format!(
                "{i:4}: {} {} {:02X} 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1\n",
                kernel_address(&s.local),
                kernel_address(&s.remote),
                s.state,
                s.inode,
            ));
        }
        text
    }

    /// A field shaped like `ADDR:PORT` with exactly the byte lengths the
    /// parser checks (8 or 32, then 4), filled with hex digits and other
    /// printable ASCII, so the hex decoding is reached. Fields with
    /// multi-byte characters at the same byte lengths come from
    /// [`packed_v6_field`].
    fn address_field() -> impl Strategy<Value = String> {
        let digit = prop_oneof![6 => "[0-9A-Fa-f]", 1 => "[!-~]"];
        (
            prop::sample::select(&[8_usize, 32][..]),
            prop::collection::vec(digit.clone(), 32),
            prop::collection::vec(digit, 4),
        )
            .prop_map(|(n, addr, port)| format!("{}:{}", addr[..n].concat(), port.concat()))
    }

    /// An IPv6 address field of exactly 32 bytes mixing hex digits with
    /// two- and three-byte characters anywhere: the byte length the parser
    /// checks, with characters across its 8-byte words (the shape that made
    /// it panic).
    fn packed_v6_field() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![6 => "[0-9a-fA-F]", 1 => "[\u{a1}-\u{7ff}]", 1 => "[\u{800}-\u{ffff}]"],
            32,
        )
        .prop_map(|chars| {
            let mut field = String::new();
            for c in chars {
                if field.len() + c.len() <= 32 {
                    field.push_str(&c);
                }
            }
            while field.len() < 32 {
                field.push('0');
            }
            field
        })
    }

    proptest! {
        #![proptest_config(runner(1000))]

        #[test]
        fn packed_v6_fields_are_refused_or_read_never_a_panic(field in packed_v6_field()) {
            prop_assert_eq!(field.len(), 32);
            let parsed = parse_address(&format!("{field}:0016"), Family::V6);
            prop_assert_eq!(parsed.is_some(), field.is_ascii(), "{:?} -> {:?}", field, parsed);
        }
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>(), family in family()) {
            let _ = parse_inet_table(&text, family, path());
            let _ = parse_unix_table(&text, path());
            let _ = parse_address(&text, family);
        }

        /// Lines of whitespace-separated fields, some shaped like the
        /// kernel's, so the column checks are passed.
        #[test]
        fn field_shaped_lines_never_panic(
            lines in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![address_field(), "[0-9A-F]{1,3}", "[0-9]{1,20}", "[ -~]{0,6}"],
                    0..12,
                ),
                0..4,
            ),
            family in family(),
        ) {
            let text = lines
                .iter()
                .map(|fields| fields.join(" "))
                .collect::<Vec<_>>()
                .join("\n");
            let _ = parse_inet_table(&text, family, path());
            let _ = parse_unix_table(&text, path());
        }

        #[test]
        fn address_shaped_fields_never_panic(field in address_field(), family in family()) {
            if let Some(addr) = parse_address(&field, family) {
                prop_assert_eq!(addr.is_ipv4(), family == Family::V4);
                prop_assert_eq!(kernel_address(&addr).to_ascii_uppercase(), field.to_ascii_uppercase());
            }
        }
    }

    proptest! {
        #![proptest_config(runner(1000))]

        /// A table printed the kernel's way reads back to its sockets.
        #[test]
        fn printed_tcp_table_reads_back(
            (family, sockets) in family().prop_flat_map(|f| (Just(f), table(f))),
        ) {
            let text = print_table(&sockets);
            let parsed = parse_inet_table(&text, family, path())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed, sockets);
        }

        #[test]
        fn address_reads_back(addr in family().prop_flat_map(family_addr)) {
            let family = if addr.is_ipv4() { Family::V4 } else { Family::V6 };
            prop_assert_eq!(parse_address(&kernel_address(&addr), family), Some(addr));
        }
    }

    /// A 32-byte IPv6 address field whose 8-byte word boundary falls
    /// inside a multi-byte character (`¡` is bytes 7..9): the length check
    /// counts bytes, the word slicing then cuts the character.
    const NON_ASCII_V6_FIELD: &str = "0000000\u{a1}00000000000000000000000:0000";

    #[test]
    fn non_ascii_v6_address_is_refused_not_a_panic() {
        assert_eq!(
            NON_ASCII_V6_FIELD.split_once(':').map(|(a, _)| a.len()),
            Some(32)
        );
        assert_eq!(parse_address(NON_ASCII_V6_FIELD, Family::V6), None);
    }

    #[test]
    fn non_ascii_v6_table_row_is_an_error_not_a_panic() {
        let row = format!(
            "   0: {NON_ASCII_V6_FIELD} {NON_ASCII_V6_FIELD} 01 00000000:00000000 00:00000000 00000000 0 0 1\n"
        );
        assert!(parse_inet_table(&row, Family::V6, Path::new("/proc/net/tcp6")).is_err());
    }
}

mod kernel_release {
    //! `compare_releases`: a total order, whatever the strings, so the
    //! downgrade check never depends on which side is asked first.
    use std::cmp::Ordering;

    use super::*;
    use crate::kexec::compare_releases;

    /// Releases shaped like kernels' (`6.12.95+deb12-amd64`, `6.13~rc1`),
    /// or any text.
    fn release() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,2}\\.[0-9]{1,3}(\\.[0-9]{1,3})?([~+-][a-z0-9]{1,6}){0,2}(-amd64)?",
            text(12),
        ]
    }

    proptest! {
        #![proptest_config(runner(2000))]

        #[test]
        fn the_order_is_antisymmetric_and_transitive(
            a in release(),
            b in release(),
            c in release(),
        ) {
            prop_assert_eq!(compare_releases(&a, &a), Ordering::Equal);
            prop_assert_eq!(compare_releases(&a, &b), compare_releases(&b, &a).reverse());
            if compare_releases(&a, &b) != Ordering::Greater
                && compare_releases(&b, &c) != Ordering::Greater
            {
                prop_assert_ne!(compare_releases(&a, &c), Ordering::Greater, "{} {} {}", a, b, c);
            }
        }
    }
}
