//! Which unix socket is connected to which, from the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`, `unix_diag`).
//!
//! # Why
//!
//! CRIU 4.1 checkpoints a connected unix socket only with both of its ends;
//! an end held outside the unit (a local `psql` on PostgreSQL's socket,
//! another service connected to this one, and also a datagram socket kept
//! connected to syslog's `/dev/log`, seen in the lab) makes the dump fail
//! halfway ("External socket is used"), unless it is declared external,
//! which the product does only for the journal streams on stdout and stderr
//! (the restore hands the unit a new one). `/proc/net/unix` does not say who is
//! connected to whom; the kernel's diagnostics do (`UNIX_DIAG_PEER`, the
//! peer's inode), so the plan can refuse such a unit before anything is
//! frozen, naming the process at the other end.
//!
//! The dump answers for the reader's network namespace, which is the
//! unit's: the plan refuses units with network namespaces of their own.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// A unix socket as the kernel's diagnostics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocket {
    /// Its inode (what `/proc/<pid>/fd/<n>` shows as `socket:[<inode>]`).
    pub inode: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: u8,
    /// The inode of the socket it is connected to, if any.
    pub peer: Option<u32>,
}

const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
/// `struct unix_diag_msg`.
const UNIX_DIAG_MSG: usize = 16;

/// The dump request for every unix socket with its peer.
pub fn dump_request(seq: u32) -> Vec<u8> {
    let mut request = Vec::with_capacity(NLMSG_HEADER + 24);
    request.extend_from_slice(&((NLMSG_HEADER + 24) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie.
    request.push(libc::AF_UNIX as u8);
    request.push(0);
    request.extend_from_slice(&0u16.to_ne_bytes());
    request.extend_from_slice(&u32::MAX.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]);
    request
}

/// What one datagram of the dump's answer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub sockets: Vec<UnixSocket>,
    /// The dump's end (`NLMSG_DONE`) was in it.
    pub done: bool,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of the kernel's answer; `Err` names what is wrong
/// (an error answer carries the kernel's errno).
pub fn parse_answer(datagram: &[u8]) -> Result<Answer, String> {
    let mut answer = Answer::default();
    let mut at = 0;
    while at + NLMSG_HEADER <= datagram.len() {
        let len = u32_at(datagram, at).ok_or("short header")? as usize;
        let kind = u16_at(datagram, at + 4).ok_or("short header")?;
        if len < NLMSG_HEADER || at + len > datagram.len() {
            return Err(format!("message length {len} at offset {at} out of bounds"));
        }
        let body = &datagram[at + NLMSG_HEADER..at + len];
        match kind {
            NLMSG_DONE => answer.done = true,
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| (e as i32).wrapping_neg());
                return Err(format!("the kernel answered {}", Errno::from_raw(errno)));
            }
            SOCK_DIAG_BY_FAMILY => answer.sockets.push(parse_socket(body)?),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(answer)
}

/// One `unix_diag_msg` and its attributes.
fn parse_socket(body: &[u8]) -> Result<UnixSocket, String> {
    if body.len() < UNIX_DIAG_MSG {
        return Err(format!("unix_diag_msg of {} bytes", body.len()));
    }
    let mut socket = UnixSocket {
        inode: u32_at(body, 4).ok_or("short unix_diag_msg")?,
        kind: body[1],
        peer: None,
    };
    let mut at = UNIX_DIAG_MSG;
    while at + 4 <= body.len() {
        let len = usize::from(u16_at(body, at).ok_or("short attribute")?);
        let kind = u16_at(body, at + 2).ok_or("short attribute")?;
        if len < 4 || at + len > body.len() {
            return Err(format!(
                "attribute length {len} at offset {at} out of bounds"
            ));
        }
        if kind == UNIX_DIAG_PEER {
            socket.peer = u32_at(body, at + 4).filter(|&p| p != 0);
        }
        at += (len + 3) & !3;
    }
    Ok(socket)
}

/// Every unix socket of the reader's network namespace, with its peer.
pub fn unix_sockets() -> Result<Vec<UnixSocket>, String> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| format!("cannot open a sock_diag socket: {e}"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| format!("cannot bind the sock_diag socket: {e}"))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(10, 0))
        .map_err(|e| format!("cannot set a timeout on the sock_diag socket: {e}"))?;
    send(fd.as_raw_fd(), &dump_request(1), MsgFlags::empty())
        .map_err(|e| format!("cannot ask for the unix sockets: {e}"))?;
    let mut sockets = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let len = match recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
            Ok(len) => len,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot read the unix sockets: {e}")),
        };
        let answer = parse_answer(&buffer[..len])?;
        sockets.extend(answer.sockets);
        if answer.done || len == 0 {
            return Ok(sockets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answer message for a socket, with a peer attribute if given.
    fn message(inode: u32, kind: u8, peer: Option<u32>) -> Vec<u8> {
        let mut body = vec![libc::AF_UNIX as u8, kind, 1, 0];
        body.extend_from_slice(&inode.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        if let Some(peer) = peer {
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
            body.extend_from_slice(&peer.to_ne_bytes());
        }
        // An attribute of another kind (a name, 5 bytes, padded).
        body.extend_from_slice(&9u16.to_ne_bytes());
        body.extend_from_slice(&0u16.to_ne_bytes());
        body.extend_from_slice(b"/x/y\0\0\0\0");
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend_from_slice(&[0u8; 10]);
        out.extend_from_slice(&body);
        out
    }

    fn done() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&20u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        out.extend_from_slice(&[0u8; 14]);
        out
    }

    #[test]
    fn reads_sockets_and_their_peers_until_the_end_of_the_dump() {
        let mut datagram = message(100, libc::SOCK_STREAM as u8, Some(200));
        datagram.extend(message(300, libc::SOCK_DGRAM as u8, None));
        datagram.extend(done());
        let answer = parse_answer(&datagram).expect("parses");
        assert!(answer.done);
        assert_eq!(
            answer.sockets,
            vec![
                UnixSocket {
                    inode: 100,
                    kind: libc::SOCK_STREAM as u8,
                    peer: Some(200)
                },
                UnixSocket {
                    inode: 300,
                    kind: libc::SOCK_DGRAM as u8,
                    peer: None
                },
            ]
        );
    }

    #[test]
    fn a_truncated_or_refused_answer_is_an_error() {
        let whole = message(100, 1, Some(200));
        assert!(parse_answer(&whole[..whole.len() - 3]).is_err());
        let mut error = Vec::new();
        error.extend_from_slice(&20u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0u8; 10]);
        error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = parse_answer(&error).expect_err("refused");
        assert!(err.contains("EPERM"), "{err}");
    }

    #[test]
    fn the_request_asks_for_every_unix_socket_with_its_peer() {
        let request = dump_request(7);
        assert_eq!(request.len(), 40);
        assert_eq!(u32_at(&request, 0), Some(40));
        assert_eq!(u16_at(&request, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&request, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&request, 8), Some(7));
        assert_eq!(request[16], libc::AF_UNIX as u8);
        assert_eq!(u32_at(&request, 20), Some(u32::MAX));
        assert_eq!(u32_at(&request, 28), Some(UDIAG_SHOW_PEER));
    }

    #[test]
    fn this_process_sees_a_socketpair_connected_to_itself() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let inode = |s: &std::os::unix::net::UnixStream| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .expect("fd")
                .ino() as u32
        };
        let sockets = unix_sockets().expect("the kernel answers");
        let a_seen = sockets
            .iter()
            .find(|s| s.inode == inode(&a))
            .expect("a listed");
        assert_eq!(a_seen.peer, Some(inode(&b)));
        assert_eq!(a_seen.kind, libc::SOCK_STREAM as u8);
    }
}
