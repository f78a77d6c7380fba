//! Packet transport between this process and `criu swrk`.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};

/// Largest packet accepted from CRIU. Responses are a few hundred bytes (the
/// biggest part is `cr_errmsg`, one log line); anything larger is refused.
pub const MAX_PACKET: usize = 64 * 1024;

/// How long one `poll` waits at most before the liveness check runs again.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// A message-oriented connection to CRIU: one packet is one serialized
/// protobuf message.
///
/// The real implementation is a `SOCK_SEQPACKET` socket ([`SeqpacketTransport`],
/// and the transport [`super::Swrk`] uses internally); tests use a scripted
/// fake.
pub trait Transport {
    /// Sends one packet.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;

    /// Receives one packet, waiting at most until `deadline` (none: forever).
    ///
    /// Returns `Ok(None)` when the peer closed the connection (including a
    /// reset because it exited without reading everything), and an error of
    /// kind [`io::ErrorKind::TimedOut`] when the deadline passed.
    fn recv(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>>;

    /// After `recv` reported end of stream: how the peer process ended, if
    /// the transport knows (it may wait briefly for it).
    fn peer_exit_status(&mut self) -> Option<ExitStatus> {
        None
    }

    /// Called when the deadline passed: stop the peer so it cannot go on
    /// acting on the request.
    fn abort(&mut self) {}
}

/// [`Transport`] over a connected `SOCK_SEQPACKET` socket that this value
/// borrows.
#[derive(Debug)]
pub struct SeqpacketTransport<'fd> {
    fd: BorrowedFd<'fd>,
}

impl<'fd> SeqpacketTransport<'fd> {
    /// Uses `fd`, which must be a connected `SOCK_SEQPACKET` socket.
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        Self { fd }
    }
}

impl Transport for SeqpacketTransport<'_> {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        send_packet(self.fd, packet)
    }

    fn recv(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        recv_packet(self.fd, deadline, || true)
    }
}

/// Sends `packet` as one datagram; `MSG_NOSIGNAL` turns a dead peer into
/// `EPIPE` instead of `SIGPIPE`.
pub(crate) fn send_packet(fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<()> {
    loop {
        match send(fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) if n == packet.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short send: {n} of {} bytes", packet.len()),
                ));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for and receives one packet.
///
/// `peer_alive` is consulted whenever a poll slice passes without data; when
/// it returns false the socket is drained without blocking and an empty
/// socket counts as end of stream. This keeps a dead peer detectable even if
/// a copy of its socket end leaked into some other process.
pub(crate) fn recv_packet(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
    mut peer_alive: impl FnMut() -> bool,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        let slice = match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no packet from criu before the deadline",
                    ));
                }
                (deadline - now).min(POLL_SLICE)
            }
            None => POLL_SLICE,
        };
        // Round up so a sub-millisecond remainder does not spin.
        let millis = u16::try_from(slice.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => {
                if !peer_alive() {
                    return match recv_once(fd, MsgFlags::MSG_DONTWAIT) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                        other => other,
                    };
                }
            }
            // Readable, hung up or in error: recvmsg tells which.
            Ok(_) => return recv_once(fd, MsgFlags::empty()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn recv_once(fd: BorrowedFd<'_>, extra: MsgFlags) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    loop {
        let (len, flags, passed, ctrunc) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | extra,
            ) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                // A unix socket closed while our request sat unread in it
                // reports ECONNRESET: the peer is gone all the same.
                Err(Errno::ECONNRESET) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut passed: Vec<RawFd> = Vec::new();
            let ctrunc = match msg.cmsgs() {
                Ok(cmsgs) => {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            passed.extend(fds);
                        }
                    }
                    false
                }
                Err(_) => true,
            };
            (msg.bytes, msg.flags, passed, ctrunc)
        };
        // Only the orphan-pts-master notification carries an fd; nothing here
        // uses it, so close whatever arrived instead of leaking it.
        for raw in passed {
            tracing::debug!(fd = raw, "closing fd passed by criu");
            if let Err(e) = nix::unistd::close(raw) {
                tracing::warn!(fd = raw, error = %e, "closing fd passed by criu failed");
            }
        }
        if ctrunc {
            tracing::warn!("criu passed more fds than expected; the excess were discarded");
        }
        if flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packet from criu larger than {MAX_PACKET} bytes (truncated)"),
            ));
        }
        if len == 0 {
            // A protobuf criu_resp always has its required fields, so an
            // empty read on a SEQPACKET socket is the end of the stream.
            return Ok(None);
        }
        buf.truncate(len);
        return Ok(Some(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::protocol::{Notification, exchange, scripts};
    use crate::criu::rpc::{CriuDumpResp, CriuNotify, CriuReq, CriuReqType, CriuResp};
    use nix::fcntl::OFlag;
    use nix::sys::socket::{
        AddressFamily, ControlMessage, SockFlag, SockType, sendmsg, socketpair,
    };
    use nix::unistd::pipe2;
    use prost::Message;
    use std::io::IoSlice;
    use std::os::fd::{AsFd, OwnedFd};
    use std::thread;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    fn peer_recv(fd: &OwnedFd) -> CriuReq {
        let mut buf = vec![0u8; MAX_PACKET];
        let n = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
        CriuReq::decode(&buf[..n]).expect("decode request")
    }

    /// A thread plays CRIU on a real SEQPACKET socketpair: NOTIFY with an fd
    /// attached (like orphan-pts-master), then the final response.
    #[test]
    fn exchange_over_a_real_socketpair() {
        let (ours, theirs) = pair();
        // CLOEXEC, or fake criu processes spawned by parallel tests could
        // inherit the write end and keep the pipe open.
        let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let peer = thread::spawn(move || {
            let req = peer_recv(&theirs);
            assert_eq!(req.r#type(), CriuReqType::Dump);
            let notify = CriuResp {
                r#type: CriuReqType::Notify as i32,
                success: true,
                notify: Some(CriuNotify {
                    script: Some(scripts::ORPHAN_PTS_MASTER.into()),
                    pid: None,
                }),
                ..CriuResp::default()
            }
            .encode_to_vec();
            let fds = [pipe_w.as_raw_fd()];
            sendmsg::<()>(
                theirs.as_raw_fd(),
                &[IoSlice::new(&notify)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
            drop(pipe_w);
            let ack = peer_recv(&theirs);
            assert_eq!(ack.r#type(), CriuReqType::Notify);
            assert_eq!(ack.notify_success, Some(true));
            let done = CriuResp {
                r#type: CriuReqType::Dump as i32,
                success: true,
                dump: Some(CriuDumpResp { restored: None }),
                ..CriuResp::default()
            };
            send_packet(theirs.as_fd(), &done.encode_to_vec()).expect("send");
        });

        let req = CriuReq {
            r#type: CriuReqType::Dump as i32,
            ..CriuReq::default()
        };
        let mut seen = Vec::new();
        let mut cb = |n: Notification<'_>| {
            seen.push(n.script.to_owned());
            Ok(())
        };
        let mut t = SeqpacketTransport::new(ours.as_fd());
        let resp =
            exchange(&mut t, &req, Some(Duration::from_secs(20)), &mut cb, None).expect("exchange");
        peer.join().expect("peer thread");
        assert!(resp.success);
        assert_eq!(seen, vec!["orphan-pts-master"]);

        // The passed write end was closed on our side too: the pipe hangs up.
        let mut fds = [PollFd::new(pipe_r.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(5000u16)).expect("poll");
        assert_eq!(n, 1);
        let revents = fds[0].revents().expect("revents");
        assert!(revents.contains(PollFlags::POLLHUP), "{revents:?}");
    }

    #[test]
    fn oversized_packet_is_an_error() {
        let (ours, theirs) = pair();
        send_packet(theirs.as_fd(), &vec![0u8; MAX_PACKET + 1]).expect("send");
        let err = recv_packet(ours.as_fd(), None, || true).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn deadline_gives_timed_out() {
        let (ours, _theirs) = pair();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(150);
        let err = recv_packet(ours.as_fd(), Some(deadline), || true).expect_err("must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn closed_peer_is_end_of_stream() {
        let (ours, theirs) = pair();
        drop(theirs);
        assert!(
            recv_packet(ours.as_fd(), None, || true)
                .expect("eof")
                .is_none()
        );
    }

    #[test]
    fn dead_peer_with_leaked_socket_is_end_of_stream() {
        // `_leaked` keeps the peer end open, as a copy inherited by an
        // unrelated process would; the liveness probe still ends the wait.
        let (ours, _leaked) = pair();
        let start = Instant::now();
        let got = recv_packet(ours.as_fd(), Some(start + Duration::from_secs(20)), || {
            false
        })
        .expect("eof");
        assert!(got.is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn packet_received_intact() {
        let (ours, theirs) = pair();
        send_packet(theirs.as_fd(), b"hello").expect("send");
        send_packet(theirs.as_fd(), b"world!").expect("send");
        let mut t = SeqpacketTransport::new(ours.as_fd());
        assert_eq!(t.recv(None).expect("recv").as_deref(), Some(&b"hello"[..]));
        assert_eq!(t.recv(None).expect("recv").as_deref(), Some(&b"world!"[..]));
        t.send(b"x").expect("send back");
        drop(theirs);
        assert!(t.send(b"y").is_err());
    }
}
