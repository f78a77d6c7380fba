//! Which TCP connection a queued packet belongs to, read from the copy of
//! its IP and TCP headers that the kernel hands over (`NFQA_PAYLOAD`: the
//! packet from the network header on).
//!
//! Only what is needed to name the connection is read: the addresses from
//! the IPv4 or IPv6 header and the two ports at the start of the TCP
//! header. IPv6 extension headers with the generic layout (hop-by-hop,
//! routing, destination options), fragment headers and AH are skipped;
//! anything else (ESP, unknown headers, a non-first fragment, a payload
//! cut short) gives `None` rather than a guess.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Flow;

/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IPv6 hop-by-hop options header.
const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
const IPPROTO_FRAGMENT: u8 = 44;
/// Authentication header.
const IPPROTO_AH: u8 = 51;
/// IPv6 destination options header.
const IPPROTO_DSTOPTS: u8 = 60;
/// The most IPv6 extension headers walked before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;

/// The TCP flow of an IP packet, or `None` if it is not TCP or its headers
/// cannot be read.
pub fn parse_flow(packet: &[u8]) -> Option<Flow> {
    match packet.first()? >> 4 {
        4 => parse_ipv4(packet),
        6 => parse_ipv6(packet),
        _ => None,
    }
}

fn ports(tcp: &[u8]) -> Option<(u16, u16)> {
    let ports = tcp.get(..4)?;
    Some((
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

fn parse_ipv4(packet: &[u8]) -> Option<Flow> {
    let header = packet.get(..20)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header_len < 20 || header[9] != IPPROTO_TCP {
        return None;
    }
    // Only the first fragment carries the TCP header.
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return None;
    }
    let source = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let destination = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let (source_port, destination_port) = ports(packet.get(header_len..)?)?;
    Some(Flow {
        source: SocketAddr::from((source, source_port)),
        destination: SocketAddr::from((destination, destination_port)),
    })
}

fn parse_ipv6(packet: &[u8]) -> Option<Flow> {
    let header = packet.get(..40)?;
    let address = |at: usize| -> Option<Ipv6Addr> {
        let bytes: [u8; 16] = header.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(bytes))
    };
    let source = address(8)?;
    let destination = address(24)?;
    let mut next = header[6];
    let mut offset = 40;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if next == IPPROTO_TCP {
            let (source_port, destination_port) = ports(packet.get(offset..)?)?;
            return Some(Flow {
                source: SocketAddr::from((source, source_port)),
                destination: SocketAddr::from((destination, destination_port)),
            });
        }
        let extension = packet.get(offset..offset + 8)?;
        let length = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                (usize::from(extension[1]) + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let fragment_offset = u16::from_be_bytes([extension[2], extension[3]]) >> 3;
                if fragment_offset != 0 {
                    return None;
                }
                8
            }
            IPPROTO_AH => (usize::from(extension[1]) + 2) * 4,
            _ => return None,
        };
        next = extension[0];
        offset += length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, options: &[u8], fragment: u16, tcp: &[u8]) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let mut out = vec![0x40 | ihl as u8, 0, 0, 0, 0, 0];
        out.extend_from_slice(&fragment.to_be_bytes());
        out.extend_from_slice(&[64, protocol, 0, 0]);
        out.extend_from_slice(&[203, 0, 113, 9]);
        out.extend_from_slice(&[10, 1, 2, 3]);
        out.extend_from_slice(options);
        out.extend_from_slice(tcp);
        out
    }

    fn tcp(source_port: u16, destination_port: u16) -> Vec<u8> {
        let mut out = source_port.to_be_bytes().to_vec();
        out.extend_from_slice(&destination_port.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        out
    }

    fn ipv6(next_header: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![0x60, 0, 0, 0, 0, 0, next_header, 64];
        let source: Ipv6Addr = "2001:db8::1".parse().expect("address");
        let destination: Ipv6Addr = "2001:db8:1::2".parse().expect("address");
        out.extend_from_slice(&source.octets());
        out.extend_from_slice(&destination.octets());
        out.extend_from_slice(rest);
        out
    }

    fn flow(source: &str, destination: &str) -> Option<Flow> {
        Some(Flow {
            source: source.parse().ok()?,
            destination: destination.parse().ok()?,
        })
    }

    #[test]
    fn ipv4_tcp() {
        let packet = ipv4(IPPROTO_TCP, &[], 0x4000, &tcp(51000, 22));
        assert_eq!(
            parse_flow(&packet),
            flow("203.0.113.9:51000", "10.1.2.3:22")
        );
    }

    #[test]
    fn ipv4_options_move_the_tcp_header() {
        let packet = ipv4(IPPROTO_TCP, &[1, 1, 1, 0, 7, 3, 4, 0], 0, &tcp(1, 65535));
        assert_eq!(parse_flow(&packet), flow("203.0.113.9:1", "10.1.2.3:65535"));
    }

    #[test]
    fn ipv4_not_tcp_or_not_first_fragment_is_none() {
        assert_eq!(parse_flow(&ipv4(17, &[], 0, &tcp(53, 53))), None);
        assert_eq!(
            parse_flow(&ipv4(IPPROTO_TCP, &[], 0x2001, &tcp(1, 2))),
            None
        );
        // More-fragments set on the first fragment is still readable.
        assert!(parse_flow(&ipv4(IPPROTO_TCP, &[], 0x2000, &tcp(1, 2))).is_some());
    }

    #[test]
    fn ipv4_bad_header_length_is_none() {
        let mut packet = ipv4(IPPROTO_TCP, &[], 0, &tcp(1, 2));
        packet[0] = 0x44; // IHL 4: shorter than the fixed header
        assert_eq!(parse_flow(&packet), None);
        packet[0] = 0x4f; // IHL 15: runs past the copied bytes
        assert_eq!(parse_flow(&packet), None);
    }

    #[test]
    fn ipv6_tcp() {
        let packet = ipv6(IPPROTO_TCP, &tcp(443, 50123));
        assert_eq!(
            parse_flow(&packet),
            flow("[2001:db8::1]:443", "[2001:db8:1::2]:50123")
        );
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let mut rest = vec![IPPROTO_DSTOPTS, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop, 8 bytes
        rest.extend_from_slice(&[IPPROTO_FRAGMENT, 1]); // destination options, 16 bytes
        rest.extend_from_slice(&[0; 14]);
        rest.extend_from_slice(&[IPPROTO_TCP, 0, 0, 1, 0, 0, 0, 9]); // first fragment
        rest.extend(tcp(8080, 9090));
        let packet = ipv6(IPPROTO_HOPOPTS, &rest);
        assert_eq!(
            parse_flow(&packet),
            flow("[2001:db8::1]:8080", "[2001:db8:1::2]:9090")
        );
    }

    #[test]
    fn ipv6_authentication_header_is_skipped() {
        let mut rest = vec![IPPROTO_TCP, 4]; // AH: (4 + 2) * 4 = 24 bytes
        rest.extend_from_slice(&[0; 22]);
        rest.extend(tcp(1000, 2000));
        assert_eq!(
            parse_flow(&ipv6(IPPROTO_AH, &rest)),
            flow("[2001:db8::1]:1000", "[2001:db8:1::2]:2000")
        );
    }

    #[test]
    fn ipv6_unreadable_chains_are_none() {
        // A later fragment: no TCP header in it.
        let mut later = vec![IPPROTO_TCP, 0, 0x05, 0x01, 0, 0, 0, 9];
        later.extend(tcp(1, 2));
        assert_eq!(parse_flow(&ipv6(IPPROTO_FRAGMENT, &later)), None);
        // ESP hides what follows.
        assert_eq!(parse_flow(&ipv6(50, &[0; 32])), None);
        // UDP.
        assert_eq!(parse_flow(&ipv6(17, &tcp(1, 2))), None);
        // An extension header that points past the copied bytes.
        let mut long = vec![IPPROTO_TCP, 200];
        long.extend_from_slice(&[0; 30]);
        assert_eq!(parse_flow(&ipv6(IPPROTO_DSTOPTS, &long)), None);
        // A loop of extension headers ends.
        let mut looping = Vec::new();
        for _ in 0..20 {
            looping.extend_from_slice(&[IPPROTO_DSTOPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(parse_flow(&ipv6(IPPROTO_DSTOPTS, &looping)), None);
    }

    #[test]
    fn other_versions_and_short_packets_are_none() {
        assert_eq!(parse_flow(&[]), None);
        let mut packet = ipv4(IPPROTO_TCP, &[], 0, &tcp(1, 2));
        packet[0] = 0x55;
        assert_eq!(parse_flow(&packet), None);
        let v4 = ipv4(IPPROTO_TCP, &[], 0, &tcp(1, 2));
        let v6 = ipv6(IPPROTO_TCP, &tcp(1, 2));
        for cut in 0..24 {
            assert_eq!(parse_flow(&v4[..cut]), None, "IPv4 cut at {cut}");
        }
        assert!(parse_flow(&v4[..24]).is_some());
        for cut in 0..44 {
            assert_eq!(parse_flow(&v6[..cut]), None, "IPv6 cut at {cut}");
        }
        assert!(parse_flow(&v6[..44]).is_some());
    }
}
