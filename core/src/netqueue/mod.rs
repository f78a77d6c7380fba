//! The userspace side of the netfilter queue that holds peers' packets for
//! checkpointed TCP connections until their service is restored.
//!
//! After the kexec, a restored connection's peer keeps retransmitting into
//! a host where, for a while, no socket owns the connection. Answered by
//! the bare kernel, those segments would draw an RST and kill the
//! connection; dropped, they would push the peer's retransmission timer
//! into exponential backoff, so traffic would resume seconds or minutes
//! after the restore. Instead nftables rules (written elsewhere) send them
//! to an NFQUEUE, and this module is the program on the other end of that
//! queue: it **holds** each packet (the kernel keeps it, we keep its id)
//! and, once CRIU has restored the socket, **re-injects** it with an
//! accept verdict, so the restored socket gets the peer's retransmission
//! at once and answers it.
//!
//! The queue fails closed. The rules queue without `bypass`, and
//! [`PacketQueue::bind`] keeps the kernel's fail-open flag off: when no
//! program is bound, when the queue is full, or when this process dies
//! (closing the socket unbinds the queue), packets are dropped — the peer
//! retransmits later — but never accepted into a host that would answer
//! them with an RST.
//!
//! The client speaks nfnetlink over a plain `AF_NETLINK` socket through
//! nix's safe socket calls; no libnetfilter_queue, no unsafe code.
//!
//! * [`wire`] — building requests and parsing the kernel's datagrams, pure
//!   functions tested with byte fixtures.
//! * [`flow`] — the TCP flow (addresses, ports) of a queued packet.

pub mod flow;
pub mod wire;

#[cfg(test)]
mod kernel_tests;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvmsg, sendto,
    socket,
};

pub use flow::parse_flow;
pub use wire::{Incoming, ParseError, parse_datagram};

/// How many bytes of each packet the kernel copies to us: enough for an
/// IPv4 header with options (60) or an IPv6 header with some extension
/// headers, plus the TCP ports. The rest of the packet stays in the kernel
/// and is re-injected untouched.
pub const COPY_RANGE: u32 = 256;

/// How long to wait for the kernel to answer a request. The kernel
/// processes netlink requests synchronously, so the answer is normally
/// there when `sendto` returns; the limit only keeps a lost answer from
/// hanging the caller.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The receive buffer for one datagram. A packet message is about
/// `COPY_RANGE` plus 100 bytes of headers and metadata, and the kernel
/// sends one per datagram; anything longer is reported as truncated.
const DATAGRAM_BUFFER: usize = 16 * 1024;

/// The most datagrams one [`PacketQueue::receive`] reads, so a flood
/// cannot keep the caller from issuing verdicts.
const MAX_DATAGRAMS_PER_RECEIVE: usize = 256;

/// What to do with a held packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Re-inject the packet: it continues through the stack (`NF_ACCEPT`).
    Accept,
    /// Free the packet (`NF_DROP`); the peer will retransmit.
    Drop,
}

/// A TCP flow as seen in a packet's headers: `source` sent it to
/// `destination`. For a peer's packet to a restored service, `source` is
/// the peer and `destination` the local socket. Addresses are as on the
/// wire: an IPv4 packet gives IPv4 addresses even if the local socket is
/// a dual-stack IPv6 one (`::ffff:a.b.c.d`), and IPv6 addresses carry no
/// scope id or flow label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The sender's address and port.
    pub source: SocketAddr,
    /// The receiver's address and port.
    pub destination: SocketAddr,
}

impl Flow {
    /// The same connection seen from the other end.
    #[must_use]
    pub fn reversed(self) -> Self {
        Self {
            source: self.destination,
            destination: self.source,
        }
    }
}

/// A packet the kernel now holds for us until we issue a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPacket {
    /// The id to pass to [`PacketQueue::verdict`].
    pub id: u32,
    /// The packet's TCP flow; `None` when it is not TCP or its headers
    /// could not be read (including when the kernel sent no payload).
    pub flow: Option<Flow>,
}

/// Why talking to the netfilter queue failed.
#[derive(Debug, thiserror::Error)]
pub enum NetQueueError {
    /// A queue length of zero was asked for; such a queue drops everything.
    #[error(
        "cannot bind netfilter queue {queue} with a maximum length of 0: it would hold nothing"
    )]
    ZeroLength {
        /// The queue number.
        queue: u16,
    },
    /// The `AF_NETLINK`/`NETLINK_NETFILTER` socket could not be created
    /// (EPROTONOSUPPORT: the kernel has no nfnetlink).
    #[error("cannot open a netfilter netlink socket for queue {queue}: {errno}")]
    Socket {
        /// The queue number.
        queue: u16,
        /// The error from socket(2) or bind(2).
        errno: Errno,
    },
    /// The kernel refused to bind the queue or apply its configuration.
    #[error("cannot bind netfilter queue {queue}: {errno}{}", bind_hint(*.errno))]
    Bind {
        /// The queue number.
        queue: u16,
        /// The error the kernel answered with.
        errno: Errno,
    },
    /// A request could not be sent to the kernel.
    #[error("cannot send the {what} for netfilter queue {queue} to the kernel: {errno}")]
    Send {
        /// The queue number.
        queue: u16,
        /// Which request.
        what: &'static str,
        /// The error from sendto(2).
        errno: Errno,
    },
    /// Reading from the queue socket failed.
    #[error("cannot read from netfilter queue {queue}: {errno}")]
    Receive {
        /// The queue number.
        queue: u16,
        /// The error from recvmsg(2) or poll(2).
        errno: Errno,
    },
    /// The socket's receive buffer overflowed (ENOBUFS): the kernel could
    /// not deliver some messages. Packets it could not deliver were
    /// dropped (the queue fails closed) and their peers will retransmit;
    /// log it and keep reading.
    #[error(
        "netfilter queue {queue} overran its socket buffer (ENOBUFS): some packets were dropped \
         instead of held, or an answer from the kernel was lost"
    )]
    Overrun {
        /// The queue number.
        queue: u16,
    },
    /// The kernel did not answer a request in time.
    #[error("the kernel did not answer the {what} for netfilter queue {queue} within {timeout:?}")]
    NoAnswer {
        /// The queue number.
        queue: u16,
        /// Which request.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// A datagram from the kernel could not be parsed.
    #[error("malformed message on netfilter queue {queue}: {source}")]
    Malformed {
        /// The queue number.
        queue: u16,
        /// What was wrong with it.
        source: ParseError,
    },
    /// A datagram was larger than the receive buffer.
    #[error(
        "a {len}-byte message on netfilter queue {queue} did not fit the {DATAGRAM_BUFFER}-byte buffer"
    )]
    Truncated {
        /// The queue number.
        queue: u16,
        /// The datagram's real length.
        len: usize,
    },
    /// The kernel refused a verdict (ENOENT: no packet with that id is
    /// held, e.g. it was already given a verdict).
    #[error("netfilter queue {queue} refused the {verdict:?} verdict for packet {id}: {errno}")]
    VerdictRefused {
        /// The queue number.
        queue: u16,
        /// The packet id.
        id: u32,
        /// The verdict.
        verdict: Verdict,
        /// The error the kernel answered with.
        errno: Errno,
    },
}

impl NetQueueError {
    /// Whether the queue is still usable after this error, so the caller
    /// can log it and carry on: a socket overrun or a refused verdict.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Overrun { .. } | Self::VerdictRefused { .. })
    }
}

fn bind_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM => {
            " (another process's socket has bound this queue, or this process lacks CAP_NET_ADMIN)"
        }
        Errno::EBUSY => " (this socket has already bound it)",
        Errno::EINVAL | Errno::EOPNOTSUPP => {
            " (is nfnetlink_queue, CONFIG_NETFILTER_NETLINK_QUEUE, available in this kernel?)"
        }
        _ => "",
    }
}

/// The state behind the queue's lock: what reads found besides what they
/// were looking for, and the buffer they read into.
struct Reader {
    /// Packets read while waiting for an answer, not yet returned.
    packets: Vec<QueuedPacket>,
    /// An error met after packets were already read; returned next time.
    error: Option<NetQueueError>,
    /// Room for one datagram, kept to spare an allocation per call.
    buffer: Vec<u8>,
}

/// One datagram read from the socket.
enum Read {
    /// Nothing waiting.
    Nothing,
    /// A datagram of this many bytes from the kernel.
    Datagram(usize),
    /// A datagram from another netlink socket, discarded.
    Foreign,
}

/// A netfilter queue bound to this process: packets sent to
/// `queue num N` arrive here and are held by the kernel until a verdict.
///
/// Dropping it closes the socket, which unbinds the queue; the kernel
/// then drops every packet still held and any new ones (no bypass).
pub struct PacketQueue {
    fd: OwnedFd,
    number: u16,
    next_seq: AtomicU32,
    /// Serialises reading the socket, so an answer one call waits for is
    /// not consumed by another.
    reader: Mutex<Reader>,
}

impl fmt::Debug for PacketQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketQueue")
            .field("fd", &self.fd)
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

impl PacketQueue {
    /// Binds queue `number` to a new netlink socket and configures it.
    ///
    /// Sends one `NFQNL_MSG_CONFIG` request, acknowledged (`NLM_F_ACK`),
    /// that carries `NFQNL_CFG_CMD_BIND`, `NFQNL_COPY_PACKET` with a copy
    /// range of [`COPY_RANGE`] bytes, `NFQA_CFG_QUEUE_MAXLEN` = `max_len`
    /// and the fail-open flag explicitly cleared, so a full queue drops.
    /// The kernel applies them in that order in one call. No
    /// `NFQNL_CFG_CMD_PF_UNBIND`/`PF_BIND` is sent: current kernels ignore
    /// them. An `NLMSG_ERROR` answer becomes
    /// [`NetQueueError::Bind`]: EPERM both when another socket has bound
    /// the queue (the kernel checks the owner before the command) and
    /// without CAP_NET_ADMIN.
    pub fn bind(number: u16, max_len: u32) -> Result<Self, NetQueueError> {
        if max_len == 0 {
            return Err(NetQueueError::ZeroLength { queue: number });
        }
        let socket_error = |errno| NetQueueError::Socket {
            queue: number,
            errno,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(socket_error)?;
        // Port id 0: the kernel picks a unique one for us.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(socket_error)?;
        let queue = Self {
            fd,
            number,
            next_seq: AtomicU32::new(1),
            reader: Mutex::new(Reader {
                packets: Vec::new(),
                error: None,
                buffer: vec![0; DATAGRAM_BUFFER],
            }),
        };
        let seq = queue.seq();
        let request = wire::bind_request(number, seq, COPY_RANGE, max_len);
        queue
            .request(&mut queue.lock(), seq, &request, "bind request")?
            .map_err(|errno| NetQueueError::Bind {
                queue: number,
                errno,
            })?;
        tracing::debug!(queue = number, max_len, "bound netfilter queue");
        Ok(queue)
    }

    /// The queue number.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// The socket, to wait for packets with poll(2) (`POLLIN`).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads the packets waiting on the socket without blocking
    /// (`MSG_DONTWAIT`), up to a bounded number of datagrams, and returns
    /// every `NFQNL_MSG_PACKET` in them; an empty `Vec` when nothing waits.
    /// Packets that arrived while [`verdict`](Self::verdict) waited for
    /// its answer come first.
    ///
    /// [`NetQueueError::Overrun`] (ENOBUFS) means the kernel could not
    /// deliver some messages: log it and call again. If an error comes
    /// after some packets were read, those packets are returned and the
    /// error is returned by the next call, so no held packet's id is lost.
    pub fn receive(&self) -> Result<Vec<QueuedPacket>, NetQueueError> {
        let mut guard = self.lock();
        let reader = &mut *guard;
        let mut packets = std::mem::take(&mut reader.packets);
        if let Some(error) = reader.error.take() {
            if packets.is_empty() {
                return Err(error);
            }
            reader.error = Some(error);
            return Ok(packets);
        }
        for _ in 0..MAX_DATAGRAMS_PER_RECEIVE {
            let incoming = match self.read(&mut reader.buffer) {
                Ok(Read::Nothing) => break,
                Ok(Read::Foreign) => continue,
                Ok(Read::Datagram(len)) => self.parse(&reader.buffer[..len]),
                Err(error) => Err(error),
            };
            match incoming {
                Ok(incoming) => {
                    for message in incoming {
                        self.collect(message, &mut packets, None);
                    }
                }
                Err(error) if packets.is_empty() => return Err(error),
                Err(error) => {
                    reader.error = Some(error);
                    break;
                }
            }
        }
        Ok(packets)
    }

    /// Issues a verdict for packet `id`: `NFQNL_MSG_VERDICT` with
    /// `NFQA_VERDICT_HDR {verdict, id}` (`NF_ACCEPT` = 1, `NF_DROP` = 0).
    ///
    /// The request asks for an acknowledgement (`NLM_F_ACK`) and waits for
    /// it, so a refusal (ENOENT: no such packet held) is returned here as
    /// [`NetQueueError::VerdictRefused`]. Packets that arrive meanwhile
    /// are kept for the next [`receive`](Self::receive). An
    /// [`NetQueueError::Overrun`] here means the answer may have been
    /// lost: the verdict may or may not have been applied (issuing it
    /// again would then be refused with ENOENT).
    pub fn verdict(&self, id: u32, verdict: Verdict) -> Result<(), NetQueueError> {
        let seq = self.seq();
        let request = wire::verdict_request(self.number, seq, id, verdict);
        self.request(&mut self.lock(), seq, &request, "verdict")?
            .map_err(|errno| NetQueueError::VerdictRefused {
                queue: self.number,
                id,
                verdict,
                errno,
            })
    }

    fn lock(&self) -> MutexGuard<'_, Reader> {
        // The reader stays consistent even if a holder panicked.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seq(&self) -> u32 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `request` (whose `nlmsg_seq` is `seq`) and waits for the
    /// kernel's answer to it: `Ok(Ok)` for an acknowledgement,
    /// `Ok(Err(errno))` for an error answer. Packets read meanwhile are
    /// kept in `reader`.
    fn request(
        &self,
        reader: &mut Reader,
        seq: u32,
        request: &[u8],
        what: &'static str,
    ) -> Result<Result<(), Errno>, NetQueueError> {
        loop {
            match sendto(
                self.fd.as_raw_fd(),
                request,
                &NetlinkAddr::new(0, 0),
                MsgFlags::empty(),
            ) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(NetQueueError::Send {
                        queue: self.number,
                        what,
                        errno,
                    });
                }
            }
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.read(&mut reader.buffer)? {
                Read::Foreign => continue,
                Read::Nothing => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(NetQueueError::NoAnswer {
                            queue: self.number,
                            what,
                            timeout: ANSWER_TIMEOUT,
                        });
                    }
                    self.wait_readable(left)?;
                }
                Read::Datagram(len) => {
                    let mut answer = None;
                    for message in self.parse(&reader.buffer[..len])? {
                        if let Some(result) = self.collect(message, &mut reader.packets, Some(seq))
                        {
                            answer = Some(result);
                        }
                    }
                    if let Some(answer) = answer {
                        return Ok(answer);
                    }
                }
            }
        }
    }

    /// Sorts one incoming message: packets for this queue into `packets`,
    /// the answer to request `awaited` returned, anything else logged.
    fn collect(
        &self,
        message: Incoming,
        packets: &mut Vec<QueuedPacket>,
        awaited: Option<u32>,
    ) -> Option<Result<(), Errno>> {
        match message {
            Incoming::Packet { queue, packet } if queue == self.number => packets.push(packet),
            Incoming::Packet { queue, packet } => tracing::warn!(
                queue = self.number,
                other_queue = queue,
                id = packet.id,
                "ignoring a packet for a queue this socket did not bind"
            ),
            Incoming::Ack { seq } if Some(seq) == awaited => return Some(Ok(())),
            Incoming::Error { seq, errno } if Some(seq) == awaited => {
                return Some(Err(Errno::from_raw(errno)));
            }
            Incoming::Ack { seq } => {
                tracing::debug!(queue = self.number, seq, "ignoring a stale acknowledgement");
            }
            Incoming::Error { seq, errno } => tracing::warn!(
                queue = self.number,
                seq,
                error = %Errno::from_raw(errno),
                "the kernel refused an earlier request on the netfilter queue"
            ),
            Incoming::Other { .. } => {}
        }
        None
    }

    fn parse(&self, datagram: &[u8]) -> Result<Vec<Incoming>, NetQueueError> {
        parse_datagram(datagram).map_err(|source| NetQueueError::Malformed {
            queue: self.number,
            source,
        })
    }

    /// Reads one datagram without blocking.
    fn read(&self, buffer: &mut [u8]) -> Result<Read, NetQueueError> {
        loop {
            let mut iov = [std::io::IoSliceMut::new(buffer)];
            // MSG_TRUNC makes netlink report a datagram's full length even
            // when it did not fit.
            let received = recvmsg::<NetlinkAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            );
            let (len, truncated, sender) = match received {
                Ok(message) => (
                    message.bytes,
                    message.flags.contains(MsgFlags::MSG_TRUNC),
                    message.address.map(|address| address.pid()),
                ),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Read::Nothing),
                Err(Errno::ENOBUFS) => return Err(NetQueueError::Overrun { queue: self.number }),
                Err(errno) => {
                    return Err(NetQueueError::Receive {
                        queue: self.number,
                        errno,
                    });
                }
            };
            if sender != Some(0) {
                tracing::warn!(
                    queue = self.number,
                    ?sender,
                    "discarding a netlink message that did not come from the kernel"
                );
                return Ok(Read::Foreign);
            }
            if truncated || len > DATAGRAM_BUFFER {
                return Err(NetQueueError::Truncated {
                    queue: self.number,
                    len,
                });
            }
            return Ok(Read::Datagram(len));
        }
    }

    fn wait_readable(&self, at_most: Duration) -> Result<(), NetQueueError> {
        let millis = u16::try_from(at_most.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(errno) => Err(NetQueueError::Receive {
                queue: self.number,
                errno,
            }),
        }
    }
}

impl AsFd for PacketQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_swaps_the_ends() {
        let flow = Flow {
            source: "192.0.2.1:40000".parse().expect("address"),
            destination: "198.51.100.7:443".parse().expect("address"),
        };
        let reversed = flow.reversed();
        assert_eq!(reversed.source, flow.destination);
        assert_eq!(reversed.destination, flow.source);
        assert_eq!(reversed.reversed(), flow);
    }

    #[test]
    fn errors_say_which_queue_and_why() {
        let error = NetQueueError::Bind {
            queue: 7,
            errno: Errno::EPERM,
        };
        let text = error.to_string();
        assert!(
            text.starts_with("cannot bind netfilter queue 7: EPERM"),
            "{text}"
        );
        assert!(text.contains("has bound this queue"), "{text}");
        assert!(!error.is_transient());
        assert!(NetQueueError::Overrun { queue: 7 }.is_transient());
        let refused = NetQueueError::VerdictRefused {
            queue: 7,
            id: 12,
            verdict: Verdict::Accept,
            errno: Errno::ENOENT,
        };
        assert!(refused.is_transient());
        assert!(refused.to_string().contains("packet 12"), "{refused}");
    }

    #[test]
    fn a_zero_length_queue_is_refused_before_any_syscall() {
        match PacketQueue::bind(7, 0) {
            Err(NetQueueError::ZeroLength { queue: 7 }) => {}
            other => panic!("expected ZeroLength, got {other:?}"),
        }
    }
}
