//! Addresses and ports of a packet seen by a `cgroup_skb` program, whose data starts at the
//! network header. At the socket layer IPv4 and IPv6 packets are already reassembled, so the
//! transport header follows the IP header and any IPv6 extension headers.

use aya_ebpf::programs::SkBuffContext;

use enforcer_common::maps::AcceptKey;

use crate::{address::Addr, protocol};

/// IPv6 extension headers with the generic (next header, length in 8-byte units) layout.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers skipped before giving up; the loop bound the verifier needs.
const MAX_EXTENSION_HEADERS: usize = 4;

pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    /// Offset of the transport header.
    pub transport: usize,
}

/// The packet's addresses and transport ports; `None` when it is not TCP or UDP over IPv4 or
/// IPv6 with at most [`MAX_EXTENSION_HEADERS`] extension headers.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let first: u8 = ctx.load(0).ok()?;
    let (src, dst, transport) = match first >> 4 {
        4 => {
            let protocol: u8 = ctx.load(9).ok()?;
            if !is_transport(protocol) {
                return None;
            }
            let src = Addr::v4(ctx.load(12).ok()?);
            let dst = Addr::v4(ctx.load(16).ok()?);
            (src, dst, usize::from(first & 0x0f) * 4)
        }
        6 => {
            let src = Addr::v6(ctx.load(8).ok()?);
            let dst = Addr::v6(ctx.load(24).ok()?);
            (src, dst, ipv6_transport_offset(ctx)?)
        }
        _ => return None,
    };
    let ports: [u16; 2] = ctx.load(transport).ok()?;
    Some(Packet {
        src,
        dst,
        sport: ports[0],
        dport: ports[1],
        transport,
    })
}

/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a TCP packet opens a connection (SYN without ACK). A listener also sees the
/// handshake's final ACK, which must not count as a second connection.
#[inline(always)]
pub fn is_tcp_open(ctx: &SkBuffContext, packet: &Packet) -> bool {
    let flags: u8 = ctx.load(packet.transport + TCP_FLAGS_OFFSET).unwrap_or(0);
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The connection's key as the socket that sends (`outgoing`) or receives the packet sees it.
#[inline(always)]
pub fn four_tuple(packet: &Packet, outgoing: bool) -> AcceptKey {
    let (local, remote) = if outgoing {
        ((&packet.src, packet.sport), (&packet.dst, packet.dport))
    } else {
        ((&packet.dst, packet.dport), (&packet.src, packet.sport))
    };
    AcceptKey {
        family: packet.src.family,
        _pad: 0,
        local_port: local.1,
        remote_port: remote.1,
        _pad2: 0,
        local: local.0.bytes,
        remote: remote.0.bytes,
    }
}

/// Only the source address, for packets whose transport does not matter.
#[inline(always)]
pub fn source(ctx: &SkBuffContext) -> Option<Addr> {
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => Some(Addr::v4(ctx.load(12).ok()?)),
        6 => Some(Addr::v6(ctx.load(8).ok()?)),
        _ => None,
    }
}

#[inline(always)]
fn ipv6_transport_offset(ctx: &SkBuffContext) -> Option<usize> {
    let mut next: u8 = ctx.load(6).ok()?;
    let mut offset = 40usize;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if is_transport(next) {
            return Some(offset);
        }
        if !matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS) {
            return None;
        }
        let header: [u8; 2] = ctx.load(offset).ok()?;
        next = header[0];
        offset += (usize::from(header[1]) + 1) * 8;
    }
    is_transport(next).then_some(offset)
}

#[inline(always)]
fn is_transport(ip_protocol: u8) -> bool {
    protocol::bit(ip_protocol.into()).is_some()
}
