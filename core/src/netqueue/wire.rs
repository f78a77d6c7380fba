//! The bytes on the netlink socket: building the requests we send to
//! `nfnetlink_queue` and parsing the datagrams it sends back.
//!
//! Everything here is a pure function over byte slices, so the framing
//! can be tested with hand-made fixtures and never touches a socket.
//!
//! Layout facts (from the kernel uapi headers `linux/netlink.h`,
//! `linux/netfilter/nfnetlink.h`, `linux/netfilter/nfnetlink_queue.h`):
//!
//! * A datagram holds one or more netlink messages, each starting on a
//!   4-byte boundary. `struct nlmsghdr` is 16 bytes in *host* byte order:
//!   `u32 nlmsg_len` (header included, padding excluded), `u16 nlmsg_type`,
//!   `u16 nlmsg_flags`, `u32 nlmsg_seq`, `u32 nlmsg_pid`.
//! * Every nfnetlink message body starts with `struct nfgenmsg` (4 bytes):
//!   `u8 nfgen_family`, `u8 version` (`NFNETLINK_V0`), `__be16 res_id` —
//!   for the queue subsystem `res_id` is the queue number, big-endian.
//! * The nfnetlink message type is `subsystem << 8 | message`.
//! * Attributes follow: `struct nlattr` is `u16 nla_len` (header
//!   included, padding excluded) and `u16 nla_type`, host byte order, each
//!   padded to 4 bytes. The top two bits of `nla_type` are flags
//!   (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`), not part of the type.
//! * The *values* of the queue attributes are big-endian (`__be32`), even
//!   `NFQA_CFG_QUEUE_MAXLEN`, which the header calls `__u32` but the
//!   kernel reads with `ntohl` (and libnetfilter_queue sends with `htonl`).

use super::{QueuedPacket, Verdict, flow};

// --- linux/netlink.h -------------------------------------------------------

/// `NLMSG_HDRLEN`: size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ALIGNTO`, which is also `NLA_ALIGNTO`.
const ALIGNTO: usize = 4;
/// `NLA_HDRLEN`: size of `struct nlattr`.
const NLA_HDRLEN: usize = 4;
/// `NLA_TYPE_MASK`: `nla_type` without `NLA_F_NESTED` (1 << 15) and
/// `NLA_F_NET_BYTEORDER` (1 << 14).
const NLA_TYPE_MASK: u16 = !((1 << 15) | (1 << 14));
/// `NLMSG_NOOP`: nothing, to be skipped.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error or, with error 0, an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a multipart dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
pub const NLMSG_OVERRUN: u16 = 4;
/// `NLM_F_REQUEST`: this is a request.
pub const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_ACK`: answer with an `NLMSG_ERROR` carrying error 0 on success.
pub const NLM_F_ACK: u16 = 0x04;

// --- linux/socket.h ----------------------------------------------------------

/// `AF_UNSPEC`, the `nfgen_family` of queue requests: the queue subsystem
/// looks only at `res_id`.
const AF_UNSPEC: u8 = 0;

// --- linux/netfilter.h -----------------------------------------------------

/// `NF_DROP`: verdict that frees the packet.
pub const NF_DROP: u32 = 0;
/// `NF_ACCEPT`: verdict that lets the packet continue through the stack.
pub const NF_ACCEPT: u32 = 1;

// --- linux/netfilter/nfnetlink.h -------------------------------------------

/// `NFNETLINK_V0`: the only `nfgenmsg.version`.
pub const NFNETLINK_V0: u8 = 0;
/// `NFNL_SUBSYS_QUEUE`: the nfnetlink subsystem id of `nfnetlink_queue`.
pub const NFNL_SUBSYS_QUEUE: u16 = 3;
/// Size of `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;

// --- linux/netfilter/nfnetlink_queue.h -------------------------------------

/// `NFQNL_MSG_PACKET` (enum nfqnl_msg_types): a packet, kernel to user.
pub const NFQNL_MSG_PACKET: u8 = 0;
/// `NFQNL_MSG_VERDICT`: a verdict, user to kernel.
pub const NFQNL_MSG_VERDICT: u8 = 1;
/// `NFQNL_MSG_CONFIG`: queue configuration, user to kernel.
pub const NFQNL_MSG_CONFIG: u8 = 2;

/// `NFQA_PACKET_HDR` (enum nfqnl_attr_type): `struct nfqnl_msg_packet_hdr`
/// (`__be32 packet_id`, `__be16 hw_protocol`, `u8 hook`; packed, 7 bytes).
pub const NFQA_PACKET_HDR: u16 = 1;
/// `NFQA_VERDICT_HDR`: `struct nfqnl_msg_verdict_hdr`
/// (`__be32 verdict`, `__be32 id`).
pub const NFQA_VERDICT_HDR: u16 = 2;
/// `NFQA_PAYLOAD`: the packet from its network header on, cut to the copy
/// range.
pub const NFQA_PAYLOAD: u16 = 10;

/// `NFQNL_CFG_CMD_BIND` (enum nfqnl_msg_config_cmds).
pub const NFQNL_CFG_CMD_BIND: u8 = 1;
/// `NFQNL_COPY_PACKET` (enum nfqnl_config_mode): copy the packet's bytes.
pub const NFQNL_COPY_PACKET: u8 = 2;

/// `NFQA_CFG_CMD` (enum nfqnl_attr_config): `struct nfqnl_msg_config_cmd`
/// (`u8 command`, `u8 _pad`, `__be16 pf`).
pub const NFQA_CFG_CMD: u16 = 1;
/// `NFQA_CFG_PARAMS`: `struct nfqnl_msg_config_params`
/// (`__be32 copy_range`, `u8 copy_mode`; packed, 5 bytes).
pub const NFQA_CFG_PARAMS: u16 = 2;
/// `NFQA_CFG_QUEUE_MAXLEN`: `__be32`, the most packets held at once.
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
/// `NFQA_CFG_MASK`: `__be32`, which flags `NFQA_CFG_FLAGS` sets.
pub const NFQA_CFG_MASK: u16 = 4;
/// `NFQA_CFG_FLAGS`: `__be32` flag values.
pub const NFQA_CFG_FLAGS: u16 = 5;
/// `NFQA_CFG_F_FAIL_OPEN`: accept instead of drop when the queue is full.
pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;

/// The nfnetlink message type of a queue message.
pub const fn queue_msg_type(message: u8) -> u16 {
    (NFNL_SUBSYS_QUEUE << 8) | message as u16
}

const fn align(len: usize) -> usize {
    (len + ALIGNTO - 1) & !(ALIGNTO - 1)
}

/// One nfnetlink request to the queue subsystem under construction.
#[derive(Debug)]
struct Request {
    bytes: Vec<u8>,
}

impl Request {
    /// Starts a request: `nlmsghdr` + `nfgenmsg` for `queue`, with
    /// `NLM_F_REQUEST | NLM_F_ACK` so the kernel always answers.
    fn new(message: u8, seq: u32, queue: u16) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        bytes.extend_from_slice(&queue_msg_type(message).to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel knows us
        bytes.push(AF_UNSPEC);
        bytes.push(NFNETLINK_V0);
        bytes.extend_from_slice(&queue.to_be_bytes());
        Self { bytes }
    }

    /// Appends one attribute, padded to the attribute alignment. The value
    /// is a fixed-size array, so its length always fits `nla_len`.
    fn attribute<const N: usize>(mut self, kind: u16, value: [u8; N]) -> Self {
        let len = (NLA_HDRLEN + N) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&value);
        self.bytes.resize(align(self.bytes.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// The one `NFQNL_MSG_CONFIG` request that binds `queue` to this socket and
/// configures it. The kernel (`nfqnl_recv_config`) applies it in one call:
/// the command first, then parameters, length and flags. The queue exists
/// with the kernel's defaults (`NFQNL_COPY_NONE`, 1024 packets) only for
/// the moment between the two; a packet queued just then arrives without
/// payload, so without a [`Flow`](super::Flow).
///
/// * `NFQA_CFG_CMD` = `NFQNL_CFG_CMD_BIND` (pf 0). No `PF_UNBIND`/`PF_BIND`:
///   current kernels answer them with success and do nothing ("obsolete
///   commands without queue context"; queue handlers stopped being per
///   address family around Linux 3.8).
/// * `NFQA_CFG_PARAMS` = `NFQNL_COPY_PACKET` with `copy_range` bytes.
/// * `NFQA_CFG_QUEUE_MAXLEN` = `max_len`.
/// * `NFQA_CFG_MASK` = `NFQA_CFG_F_FAIL_OPEN`, `NFQA_CFG_FLAGS` = 0: fail-open
///   explicitly off (it is also the default), so a full queue drops.
pub fn bind_request(queue: u16, seq: u32, copy_range: u32, max_len: u32) -> Vec<u8> {
    let [r0, r1, r2, r3] = copy_range.to_be_bytes();
    Request::new(NFQNL_MSG_CONFIG, seq, queue)
        .attribute(NFQA_CFG_CMD, [NFQNL_CFG_CMD_BIND, 0, 0, 0])
        .attribute(NFQA_CFG_PARAMS, [r0, r1, r2, r3, NFQNL_COPY_PACKET])
        .attribute(NFQA_CFG_QUEUE_MAXLEN, max_len.to_be_bytes())
        .attribute(NFQA_CFG_MASK, NFQA_CFG_F_FAIL_OPEN.to_be_bytes())
        .attribute(NFQA_CFG_FLAGS, 0u32.to_be_bytes())
        .finish()
}

/// The `NFQNL_MSG_VERDICT` request for packet `id` of `queue`.
pub fn verdict_request(queue: u16, seq: u32, id: u32, verdict: Verdict) -> Vec<u8> {
    let code = match verdict {
        Verdict::Accept => NF_ACCEPT,
        Verdict::Drop => NF_DROP,
    };
    let [v0, v1, v2, v3] = code.to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    Request::new(NFQNL_MSG_VERDICT, seq, queue)
        .attribute(NFQA_VERDICT_HDR, [v0, v1, v2, v3, i0, i1, i2, i3])
        .finish()
}

/// Why a datagram from the kernel could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A netlink header's length is shorter than the header or runs past
    /// the end of the datagram.
    #[error("netlink message at offset {offset} claims {len} bytes, {available} are there")]
    MessageLength {
        offset: usize,
        len: usize,
        available: usize,
    },
    /// Bytes after the last message that are too few for another header.
    #[error("{0} stray bytes after the last netlink message")]
    TrailingBytes(usize),
    /// An attribute's length is shorter than its header or runs past the
    /// end of the message.
    #[error("netlink attribute claims {len} bytes, {available} are there")]
    AttributeLength { len: usize, available: usize },
    /// An nfnetlink message too short for its `nfgenmsg` header.
    #[error("nfnetlink message of type {msg_type:#06x} has no room for its nfgenmsg header")]
    NoNfgenmsg { msg_type: u16 },
    /// An `NLMSG_ERROR` too short for `struct nlmsgerr`.
    #[error("netlink error message has {0} bytes, too short for an error code and header")]
    ShortError(usize),
    /// A queued packet without `NFQA_PACKET_HDR`, so without an id.
    #[error("queued packet message has no packet header (NFQA_PACKET_HDR) of at least 4 bytes")]
    NoPacketHeader,
}

/// One message the kernel sent us, as far as this module cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `NFQNL_MSG_PACKET`: a packet now held in `queue`.
    Packet { queue: u16, packet: QueuedPacket },
    /// `NLMSG_ERROR` with error 0: request `seq` succeeded.
    Ack { seq: u32 },
    /// `NLMSG_ERROR` with an error: request `seq` failed with `errno`
    /// (positive).
    Error { seq: u32, errno: i32 },
    /// Anything else (`NLMSG_NOOP`, `NLMSG_DONE`, `NLMSG_OVERRUN`, other
    /// nfnetlink messages).
    Other { msg_type: u16 },
}

/// A netlink message: its header fields and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message<'a> {
    msg_type: u16,
    seq: u32,
    body: &'a [u8],
}

fn u16_ne(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u32_be(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into its netlink messages.
fn messages(datagram: &[u8]) -> Result<Vec<Message<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        if rest.len() < NLMSG_HDRLEN {
            return Err(ParseError::TrailingBytes(rest.len()));
        }
        let len = u32_ne(rest, 0).map_or(0, |len| len as usize);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(ParseError::MessageLength {
                offset,
                len,
                available: rest.len(),
            });
        }
        out.push(Message {
            msg_type: u16_ne(rest, 4).unwrap_or_default(),
            seq: u32_ne(rest, 8).unwrap_or_default(),
            body: &rest[NLMSG_HDRLEN..len],
        });
        offset += align(len).min(rest.len());
    }
    Ok(out)
}

/// Splits an attribute area into `(type, value)` pairs, type flags masked.
fn attributes(area: &[u8]) -> Result<Vec<(u16, &[u8])>, ParseError> {
    let mut out = Vec::new();
    let mut rest = area;
    while !rest.is_empty() {
        let len = u16_ne(rest, 0).map_or(0, usize::from);
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(ParseError::AttributeLength {
                len,
                available: rest.len(),
            });
        }
        let kind = u16_ne(rest, 2).unwrap_or_default() & NLA_TYPE_MASK;
        out.push((kind, &rest[NLA_HDRLEN..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// Parses an `NLMSG_ERROR` body: `struct nlmsgerr` is `int error` (a
/// negated errno, 0 for an acknowledgement) followed by the header of the
/// request it answers, whose `nlmsg_seq` says which request that was.
fn parse_error(body: &[u8]) -> Result<Incoming, ParseError> {
    let (Some(error), Some(seq)) = (u32_ne(body, 0), u32_ne(body, 4 + 8)) else {
        return Err(ParseError::ShortError(body.len()));
    };
    let error = error as i32;
    Ok(if error == 0 {
        Incoming::Ack { seq }
    } else {
        Incoming::Error {
            seq,
            errno: error.saturating_neg(),
        }
    })
}

/// Parses an `NFQNL_MSG_PACKET` body: `nfgenmsg` (whose `res_id` is the
/// queue) and the attributes, of which only the packet id and the payload
/// matter here.
fn parse_packet(body: &[u8]) -> Result<Incoming, ParseError> {
    let Some(res_id) = body.get(2..NFGENMSG_LEN) else {
        return Err(ParseError::NoNfgenmsg {
            msg_type: queue_msg_type(NFQNL_MSG_PACKET),
        });
    };
    let queue = u16::from_be_bytes([res_id[0], res_id[1]]);
    let mut id = None;
    let mut payload = None;
    for (kind, value) in attributes(&body[NFGENMSG_LEN..])? {
        match kind {
            NFQA_PACKET_HDR => id = u32_be(value, 0),
            NFQA_PAYLOAD => payload = Some(value),
            _ => {}
        }
    }
    let id = id.ok_or(ParseError::NoPacketHeader)?;
    Ok(Incoming::Packet {
        queue,
        packet: QueuedPacket {
            id,
            flow: payload.and_then(flow::parse_flow),
        },
    })
}

/// Parses every message in one datagram read from the queue socket.
pub fn parse_datagram(datagram: &[u8]) -> Result<Vec<Incoming>, ParseError> {
    messages(datagram)?
        .into_iter()
        .map(|message| match message.msg_type {
            NLMSG_ERROR => parse_error(message.body),
            t if t == queue_msg_type(NFQNL_MSG_PACKET) => parse_packet(message.body),
            msg_type => Ok(Incoming::Other { msg_type }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netqueue::Flow;

    /// A netlink message as the kernel would frame it.
    fn nlmsg(msg_type: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(align(out.len()), 0);
        out
    }

    fn nlattr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align(out.len()), 0);
        out
    }

    /// An `NFQNL_MSG_PACKET` as `nfqnl_build_packet_message` lays it out,
    /// with some attributes this module ignores around the ones it reads.
    fn packet_message(queue: u16, family: u8, id: u32, payload: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![family, NFNETLINK_V0];
        body.extend_from_slice(&queue.to_be_bytes());
        let mut header = id.to_be_bytes().to_vec();
        header.extend_from_slice(&0x0800u16.to_be_bytes()); // hw_protocol
        header.push(1); // hook: NF_INET_LOCAL_IN
        body.extend(nlattr(NFQA_PACKET_HDR, &header));
        body.extend(nlattr(5, &7u32.to_be_bytes())); // NFQA_IFINDEX_INDEV
        body.extend(nlattr(14, &0u32.to_be_bytes())); // NFQA_SKB_INFO
        if let Some(payload) = payload {
            body.extend(nlattr(NFQA_PAYLOAD, payload));
        }
        nlmsg(queue_msg_type(NFQNL_MSG_PACKET), 0, 0, &body)
    }

    fn ack_message(seq: u32, error: i32) -> Vec<u8> {
        let mut body = error.to_ne_bytes().to_vec();
        // The echoed request header: len, type, flags, seq, pid.
        body.extend_from_slice(&36u32.to_ne_bytes());
        body.extend_from_slice(&queue_msg_type(NFQNL_MSG_CONFIG).to_ne_bytes());
        body.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        body.extend_from_slice(&seq.to_ne_bytes());
        body.extend_from_slice(&4242u32.to_ne_bytes());
        // The outer header carries a different seq on purpose: the echoed
        // one is what counts.
        nlmsg(NLMSG_ERROR, 0, seq.wrapping_add(1000), &body)
    }

    fn tcp_ipv4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0; 16]);
        ip
    }

    fn flow(source: &str, destination: &str) -> Option<Flow> {
        Some(Flow {
            source: source.parse().ok()?,
            destination: destination.parse().ok()?,
        })
    }

    /// (type, value) pairs of a built request's attributes, after checking
    /// its netlink and nfgenmsg headers.
    fn decode_request(bytes: &[u8], message: u8, seq: u32, queue: u16) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(bytes.len() % 4, 0, "requests are 4-byte aligned");
        assert_eq!(u32_ne(bytes, 0), Some(bytes.len() as u32), "nlmsg_len");
        assert_eq!(u16_ne(bytes, 4), Some(0x0300 | u16::from(message)), "type");
        assert_eq!(u16_ne(bytes, 6), Some(NLM_F_REQUEST | NLM_F_ACK), "flags");
        assert_eq!(u32_ne(bytes, 8), Some(seq), "seq");
        assert_eq!(&bytes[16..18], &[0, 0], "family AF_UNSPEC, NFNETLINK_V0");
        assert_eq!(&bytes[18..20], &queue.to_be_bytes(), "res_id");
        attributes(&bytes[20..])
            .expect("well-formed attributes")
            .into_iter()
            .map(|(kind, value)| (kind, value.to_vec()))
            .collect()
    }

    #[test]
    fn constants_match_the_libc_crate() {
        assert_eq!(i32::from(NFQNL_MSG_PACKET), libc::NFQNL_MSG_PACKET);
        assert_eq!(i32::from(NFQNL_MSG_VERDICT), libc::NFQNL_MSG_VERDICT);
        assert_eq!(i32::from(NFQNL_MSG_CONFIG), libc::NFQNL_MSG_CONFIG);
        assert_eq!(i32::from(NFQA_PACKET_HDR), libc::NFQA_PACKET_HDR);
        assert_eq!(i32::from(NFQA_VERDICT_HDR), libc::NFQA_VERDICT_HDR);
        assert_eq!(i32::from(NFQA_PAYLOAD), libc::NFQA_PAYLOAD);
        assert_eq!(i32::from(NFQNL_CFG_CMD_BIND), libc::NFQNL_CFG_CMD_BIND);
        assert_eq!(i32::from(NFQNL_COPY_PACKET), libc::NFQNL_COPY_PACKET);
        assert_eq!(i32::from(NFQA_CFG_CMD), libc::NFQA_CFG_CMD);
        assert_eq!(i32::from(NFQA_CFG_PARAMS), libc::NFQA_CFG_PARAMS);
        assert_eq!(
            i32::from(NFQA_CFG_QUEUE_MAXLEN),
            libc::NFQA_CFG_QUEUE_MAXLEN
        );
        assert_eq!(i32::from(NFQA_CFG_MASK), libc::NFQA_CFG_MASK);
        assert_eq!(i32::from(NFQA_CFG_FLAGS), libc::NFQA_CFG_FLAGS);
        assert_eq!(NFQA_CFG_F_FAIL_OPEN as i32, libc::NFQA_CFG_F_FAIL_OPEN);
        assert_eq!(i32::from(NFNETLINK_V0), libc::NFNETLINK_V0);
        assert_eq!(i32::from(NFNL_SUBSYS_QUEUE), libc::NFNL_SUBSYS_QUEUE);
        assert_eq!(NF_ACCEPT as i32, libc::NF_ACCEPT);
        assert_eq!(NF_DROP as i32, libc::NF_DROP);
        assert_eq!(i32::from(NLMSG_ERROR), libc::NLMSG_ERROR);
        assert_eq!(i32::from(NLMSG_DONE), libc::NLMSG_DONE);
        assert_eq!(i32::from(NLM_F_REQUEST), libc::NLM_F_REQUEST);
        assert_eq!(i32::from(NLM_F_ACK), libc::NLM_F_ACK);
        assert_eq!(NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
    }

    #[test]
    fn bind_request_binds_copies_packets_and_keeps_fail_open_off() {
        let bytes = bind_request(7, 42, 256, 1024);
        let attributes = decode_request(&bytes, NFQNL_MSG_CONFIG, 42, 7);
        assert_eq!(
            attributes,
            vec![
                (NFQA_CFG_CMD, vec![1, 0, 0, 0]),
                (NFQA_CFG_PARAMS, vec![0, 0, 1, 0, 2]),
                (NFQA_CFG_QUEUE_MAXLEN, vec![0, 0, 4, 0]),
                (NFQA_CFG_MASK, vec![0, 0, 0, 1]),
                (NFQA_CFG_FLAGS, vec![0, 0, 0, 0]),
            ]
        );
        // The 5-byte params attribute is padded: nla_len 9, then 3 zero bytes.
        let params_at = 20 + 8;
        assert_eq!(u16_ne(&bytes, params_at), Some(9));
        assert_eq!(&bytes[params_at + 9..params_at + 12], &[0, 0, 0]);
        assert_eq!(bytes.len(), 20 + 8 + 12 + 8 + 8 + 8);
    }

    #[test]
    fn bind_request_puts_the_queue_number_big_endian_in_res_id() {
        let bytes = bind_request(0x1234, 1, 256, 1);
        assert_eq!(&bytes[18..20], &[0x12, 0x34]);
    }

    #[test]
    fn verdict_requests_carry_verdict_then_id_big_endian() {
        let accept = verdict_request(3, 9, 0x0102_0304, Verdict::Accept);
        assert_eq!(
            decode_request(&accept, NFQNL_MSG_VERDICT, 9, 3),
            vec![(NFQA_VERDICT_HDR, vec![0, 0, 0, 1, 1, 2, 3, 4])]
        );
        let drop = verdict_request(65535, 10, 77, Verdict::Drop);
        assert_eq!(
            decode_request(&drop, NFQNL_MSG_VERDICT, 10, 65535),
            vec![(NFQA_VERDICT_HDR, vec![0, 0, 0, 0, 0, 0, 0, 77])]
        );
        assert_eq!(accept.len(), 16 + 4 + 12);
    }

    #[test]
    fn ack_and_error_are_told_apart_by_the_errno() {
        let mut datagram = ack_message(5, 0);
        datagram.extend(ack_message(6, -libc::EBUSY));
        assert_eq!(
            parse_datagram(&datagram),
            Ok(vec![
                Incoming::Ack { seq: 5 },
                Incoming::Error {
                    seq: 6,
                    errno: libc::EBUSY
                }
            ])
        );
    }

    #[test]
    fn a_datagram_with_several_packets_yields_each_in_order() {
        let v4 = tcp_ipv4([192, 0, 2, 1], 40000, [198, 51, 100, 7], 443);
        let mut datagram = packet_message(7, 2, 1, Some(&v4));
        datagram.extend(nlmsg(NLMSG_NOOP, 0, 0, &[]));
        datagram.extend(packet_message(7, 2, 0xdead_beef, None));
        datagram.extend(packet_message(7, 2, 3, Some(&[0x45, 0, 0])));
        assert_eq!(
            parse_datagram(&datagram),
            Ok(vec![
                Incoming::Packet {
                    queue: 7,
                    packet: QueuedPacket {
                        id: 1,
                        flow: flow("192.0.2.1:40000", "198.51.100.7:443"),
                    },
                },
                Incoming::Other {
                    msg_type: NLMSG_NOOP
                },
                Incoming::Packet {
                    queue: 7,
                    packet: QueuedPacket {
                        id: 0xdead_beef,
                        flow: None,
                    },
                },
                Incoming::Packet {
                    queue: 7,
                    packet: QueuedPacket { id: 3, flow: None },
                },
            ])
        );
    }

    #[test]
    fn the_queue_number_comes_from_res_id() {
        let datagram = packet_message(0x0102, 10, 9, None);
        match parse_datagram(&datagram).as_deref() {
            Ok([Incoming::Packet { queue, .. }]) => assert_eq!(*queue, 0x0102),
            other => panic!("expected one packet, got {other:?}"),
        }
    }

    #[test]
    fn attribute_type_flags_are_masked() {
        // NFQA_PAYLOAD sent with NLA_F_NET_BYTEORDER still counts.
        let mut body = vec![2, 0, 0, 1];
        body.extend(nlattr(NFQA_PACKET_HDR, &[0, 0, 0, 8, 8, 0, 1]));
        let v4 = tcp_ipv4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2);
        body.extend(nlattr(NFQA_PAYLOAD | (1 << 14), &v4));
        let datagram = nlmsg(queue_msg_type(NFQNL_MSG_PACKET), 0, 0, &body);
        assert_eq!(
            parse_datagram(&datagram),
            Ok(vec![Incoming::Packet {
                queue: 1,
                packet: QueuedPacket {
                    id: 8,
                    flow: flow("10.0.0.1:1", "10.0.0.2:2"),
                },
            }])
        );
    }

    #[test]
    fn messages_of_other_subsystems_are_other() {
        let datagram = nlmsg(0x0100, 0, 0, &[2, 0, 0, 0]);
        assert_eq!(
            parse_datagram(&datagram),
            Ok(vec![Incoming::Other { msg_type: 0x0100 }])
        );
        let datagram = nlmsg(queue_msg_type(NFQNL_MSG_CONFIG), 0, 0, &[]);
        assert_eq!(
            parse_datagram(&datagram),
            Ok(vec![Incoming::Other { msg_type: 0x0302 }])
        );
    }

    #[test]
    fn an_empty_datagram_has_no_messages() {
        assert_eq!(parse_datagram(&[]), Ok(vec![]));
    }

    #[test]
    fn a_packet_without_packet_header_is_an_error() {
        let body = [2, 0, 0, 7];
        let datagram = nlmsg(queue_msg_type(NFQNL_MSG_PACKET), 0, 0, &body);
        assert_eq!(parse_datagram(&datagram), Err(ParseError::NoPacketHeader));
        let mut body = vec![2, 0, 0, 7];
        body.extend(nlattr(NFQA_PACKET_HDR, &[0, 0, 1]));
        let datagram = nlmsg(queue_msg_type(NFQNL_MSG_PACKET), 0, 0, &body);
        assert_eq!(parse_datagram(&datagram), Err(ParseError::NoPacketHeader));
    }

    #[test]
    fn bad_lengths_are_errors() {
        let good = packet_message(7, 2, 1, None);

        let mut too_long = good.clone();
        too_long[..4].copy_from_slice(&(good.len() as u32 + 4).to_ne_bytes());
        assert!(matches!(
            parse_datagram(&too_long),
            Err(ParseError::MessageLength { offset: 0, .. })
        ));

        let mut too_short = good.clone();
        too_short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&too_short),
            Err(ParseError::MessageLength { len: 8, .. })
        ));

        let mut trailing = good.clone();
        trailing.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse_datagram(&trailing), Err(ParseError::TrailingBytes(3)));

        // The first attribute (NFQA_PACKET_HDR) claims more than is there.
        let mut bad_attribute = good.clone();
        bad_attribute[20..22].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&bad_attribute),
            Err(ParseError::AttributeLength { len: 200, .. })
        ));

        let short_nfgenmsg = nlmsg(queue_msg_type(NFQNL_MSG_PACKET), 0, 0, &[2, 0]);
        assert!(matches!(
            parse_datagram(&short_nfgenmsg),
            Err(ParseError::NoNfgenmsg { .. })
        ));

        let short_error = nlmsg(NLMSG_ERROR, 0, 0, &[0, 0, 0, 0]);
        assert_eq!(parse_datagram(&short_error), Err(ParseError::ShortError(4)));
    }

    #[test]
    fn every_truncation_of_a_valid_datagram_is_handled_without_panic() {
        let v4 = tcp_ipv4([192, 0, 2, 1], 40000, [198, 51, 100, 7], 443);
        let mut datagram = packet_message(7, 2, 1, Some(&v4));
        let first = datagram.len();
        datagram.extend(ack_message(5, -libc::ENOENT));
        for cut in 0..datagram.len() {
            let result = parse_datagram(&datagram[..cut]);
            assert!(
                cut == 0 || cut == first || result.is_err(),
                "cut at {cut} of {} parsed: {result:?}",
                datagram.len()
            );
        }
        assert!(parse_datagram(&datagram).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: no new dependency for fuzzing.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let template = packet_message(7, 2, 1, Some(&tcp_ipv4([1; 4], 1, [2; 4], 2)));
        for _ in 0..20_000 {
            let mut bytes = template.clone();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let len = (next() as usize) % (bytes.len() + 1);
            let _ = parse_datagram(&bytes[..len]);
        }
    }
}
