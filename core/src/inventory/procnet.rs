//! Parsers for the kernel's socket tables in `/proc/<pid>/net/`.
//!
//! # Format (verified against the kernel source)
//!
//! `tcp`, `tcp6`, `udp`, `udp6` are printed by `get_tcp4_sock` /
//! `get_tcp6_sock` (`net/ipv4/tcp_ipv4.c`, `net/ipv6/tcp_ipv6.c`) and the UDP
//! equivalents after a header line starting with `sl`:
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 52357 1 ...
//! ```
//!
//! * IPv4 addresses are the `__be32` address printed with `%08X`: the bytes
//!   in network order reinterpreted as a host-order `u32`. On little-endian
//!   machines `127.0.0.1` is `0100007F`. Decoding: parse as `u32`, take its
//!   *native*-endian bytes.
//! * IPv6 addresses are the four `s6_addr32` words each printed with `%08X`,
//!   so the same per-word rule applies: `::1` is
//!   `00000000000000000000000001000000` on little-endian machines.
//! * Ports are converted with `ntohs` before printing with `%04X`, so they
//!   read directly: `1F90` is 8080.
//! * `st` is the TCP state in hex (`include/net/tcp_states.h`): `01`
//!   ESTABLISHED, `0A` LISTEN, `06` TIME_WAIT, `08` CLOSE_WAIT, ...
//! * The 10th column is the socket inode in decimal, the number that
//!   `readlink /proc/<pid>/fd/<n>` shows as `socket:[<inode>]`. TIME_WAIT and
//!   request sockets have no inode and print 0.
//!
//! `unix` is printed by `unix_seq_show` (`net/unix/af_unix.c`):
//!
//! ```text
//! Num       RefCount Protocol Flags    Type St Inode Path
//! 0000000000000000: 00000003 00000000 00000000 0001 03 57837 /run/systemd/journal/stdout
//! ```
//!
//! `Type` is the socket type in hex (`0001` SOCK_STREAM, `0002` SOCK_DGRAM,
//! `0005` SOCK_SEQPACKET), `St` the socket state (`01` unconnected, `03`
//! connected), `Inode` decimal, and `Path` is present only for bound sockets
//! (abstract names start with `@`). A client's connected socket has no path:
//! only journald's end of a stdout stream shows `/run/systemd/journal/stdout`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::InventoryError;

/// TCP state ESTABLISHED.
pub const TCP_ESTABLISHED: u8 = 0x01;
/// TCP state LISTEN.
pub const TCP_LISTEN: u8 = 0x0A;
/// `SOCK_STREAM` as printed in `/proc/net/unix`.
pub const UNIX_SOCK_STREAM: u16 = 0x0001;

/// One row of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetSocket {
    /// Local address.
    pub local: SocketAddr,
    /// Remote address (all zeros when unconnected).
    pub remote: SocketAddr,
    /// State (`st`), e.g. [`TCP_ESTABLISHED`], [`TCP_LISTEN`].
    pub state: u8,
    /// Socket inode, 0 for sockets without one (TIME_WAIT).
    pub inode: u64,
}

/// One row of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// Socket type, e.g. [`UNIX_SOCK_STREAM`].
    pub sock_type: u16,
    /// Socket state: 1 unconnected, 3 connected.
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
    /// Bound path, if any (`@`-prefixed for abstract names).
    pub path: Option<String>,
}

/// Address family of a table, which decides how addresses are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `tcp`, `udp`.
    V4,
    /// `tcp6`, `udp6`.
    V6,
}

/// Parses the text of a `tcp`/`tcp6`/`udp`/`udp6` table. `path` names the
/// source in errors.
pub fn parse_inet_table(
    text: &str,
    family: Family,
    path: &Path,
) -> Result<Vec<InetSocket>, InventoryError> {
    let mut sockets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "sl" {
            continue;
        }
        let bad = |detail: String| InventoryError::Parse {
            path: path.to_owned(),
            line: index + 1,
            detail,
        };
        if fields.len() < 10 {
            return Err(bad(format!(
                "{} columns, at least 10 expected",
                fields.len()
            )));
        }
        let local = parse_address(fields[1], family)
            .ok_or_else(|| bad(format!("bad local address {:?}", fields[1])))?;
        let remote = parse_address(fields[2], family)
            .ok_or_else(|| bad(format!("bad remote address {:?}", fields[2])))?;
        let state =
            parse_hex_u8(fields[3]).ok_or_else(|| bad(format!("bad state {:?}", fields[3])))?;
        let inode =
            parse_dec(fields[9]).ok_or_else(|| bad(format!("bad inode {:?}", fields[9])))?;
        sockets.push(InetSocket {
            local,
            remote,
            state,
            inode,
        });
    }
    Ok(sockets)
}

/// Parses the text of `/proc/net/unix`. `path` names the source in errors.
pub fn parse_unix_table(text: &str, path: &Path) -> Result<Vec<UnixSocket>, InventoryError> {
    let mut sockets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "Num" {
            continue;
        }
        let bad = |detail: String| InventoryError::Parse {
            path: path.to_owned(),
            line: index + 1,
            detail,
        };
        if fields.len() < 7 {
            return Err(bad(format!(
                "{} columns, at least 7 expected",
                fields.len()
            )));
        }
        let sock_type = parse_hex(fields[4])
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| bad(format!("bad type {:?}", fields[4])))?;
        let state =
            parse_hex_u8(fields[5]).ok_or_else(|| bad(format!("bad state {:?}", fields[5])))?;
        let inode =
            parse_dec(fields[6]).ok_or_else(|| bad(format!("bad inode {:?}", fields[6])))?;
        let path = (fields.len() > 7).then(|| fields[7..].join(" "));
        sockets.push(UnixSocket {
            sock_type,
            state,
            inode,
            path,
        });
    }
    Ok(sockets)
}

/// Decodes `ADDR:PORT` as printed by the kernel (see the module docs).
pub fn parse_address(field: &str, family: Family) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::try_from(parse_hex(port)?).ok()?;
    match family {
        Family::V4 => {
            if addr.len() != 8 {
                return None;
            }
            let word = u32::try_from(parse_hex(addr)?).ok()?;
            Some(SocketAddr::from((Ipv4Addr::from(word.to_ne_bytes()), port)))
        }
        Family::V6 => {
            // ASCII first: the words below are cut by byte offsets.
            if addr.len() != 32 || !addr.is_ascii() {
                return None;
            }
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = u32::try_from(parse_hex(&addr[i * 8..i * 8 + 8])?).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some(SocketAddr::from((Ipv6Addr::from(bytes), port)))
        }
    }
}

/// Hex digits only (no sign, no prefix), at most 16 of them.
fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn parse_hex_u8(s: &str) -> Option<u8> {
    u8::try_from(parse_hex(s)?).ok()
}

fn parse_dec(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
