//! The local socket that would receive a new flow, found as the programs find it with
//! `bpf_sk_lookup_tcp`/`bpf_sk_lookup_udp` (the eBPF crate's `local::receiver`), and the tag
//! it carries.
//!
//! The helpers look the destination up with a wildcard source (address 0, port 0) in the
//! caller's namespace, with no interface. That selects what the kernel's socket lookups
//! select for such a tuple (net/ipv4/inet_hashtables.c `__inet_lookup_listener`,
//! net/ipv4/udp.c `__udp4_lib_lookup`, and their IPv6 twins):
//! - TCP: a listener; UDP: a socket with no connected peer (one with a peer only matches
//!   datagrams from that peer, and the wildcard source is none);
//! - on the destination port, bound to no interface (the lookup has none to match);
//! - bound to the destination address exactly, or else to the wildcard address; an IPv4
//!   destination also reaches AF_INET6 sockets that are not IPV6_V6ONLY, bound to `::` or
//!   to the destination's IPv4-mapped address;
//! - among equals, an AF_INET socket scores above an AF_INET6 one for an IPv4 destination.
//!
//! inet_diag lists the candidates. It reports socket storage for TCP sockets only
//! (`inet_sk_diag_fill()` skips it for sockets without a connection-oriented part), so a
//! UDP socket's tag is read with the socket itself as the key, borrowed from a process
//! holding it.

use std::{
    cmp::Reverse,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Map, MapData, MapError, SkStorage};
use enforcer_common::{maps::SockTag, names};

use super::Transport;
use crate::kernel::{
    backfill,
    sockdiag::{DiagSocket, SockDiag},
};

/// include/net/tcp_states.h: TCP_LISTEN, and TCP_CLOSE, the state inet_diag reports for a
/// UDP socket without a connected peer.
const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;

pub struct Receiver {
    pub socket: DiagSocket,
    /// Its ENF_TAGS value; `None` for a socket created before enforcement and never used.
    pub tag: Option<SockTag>,
    /// A process holding it.
    pub pid: Option<u32>,
    pub bound_exactly: bool,
    /// Other sockets the lookup could pick just as well (SO_REUSEPORT groups).
    pub others: usize,
}

/// The socket a `protocol` flow to `dst:port` would reach in `diag`'s namespace, if any.
pub fn find(
    diag: &SockDiag,
    ebpf: &aya::Ebpf,
    protocol: Transport,
    dst: IpAddr,
    port: u16,
) -> Result<Option<Receiver>> {
    let map = ebpf
        .map(names::MAP_TAGS)
        .with_context(|| format!("the eBPF object has no map {}", names::MAP_TAGS))?;
    let Map::SkStorage(tags) = map else {
        return Err(anyhow!("{} is not socket storage", names::MAP_TAGS));
    };
    let (ip_protocol, state, storage) = match protocol {
        Transport::Tcp => (libc::IPPROTO_TCP, TCP_LISTEN, vec![tags.fd().as_fd()]),
        Transport::Udp => (libc::IPPROTO_UDP, TCP_CLOSE, Vec::new()),
    };
    let sockets = diag.dump(ip_protocol as u8, 1 << state, &storage)?;
    let mut ranked: Vec<(Rank, DiagSocket)> = sockets
        .into_iter()
        .filter_map(|socket| rank(&socket, dst, port).map(|r| (r, socket)))
        .collect();
    ranked.sort_by_key(|(rank, _)| Reverse(*rank));
    let Some(best) = ranked.first().map(|(rank, _)| *rank) else {
        return Ok(None);
    };
    let others = ranked.iter().filter(|(rank, _)| *rank == best).count() - 1;
    let (_, socket) = ranked.swap_remove(0);
    let holder = backfill::holder_of(socket.inode)?;
    let tag = match protocol {
        Transport::Tcp => stored_tag(&socket, tags)?,
        Transport::Udp => match &holder {
            Some((_, held)) => {
                let storage = SkStorage::<&MapData, SockTag>::try_from(map)?;
                match storage.get(held, 0) {
                    Ok(tag) => Some(tag),
                    Err(MapError::KeyNotFound) => None,
                    Err(err) => return Err(err).context("reading ENF_TAGS"),
                }
            }
            // Held by no process: a socket the kernel made for itself (a tunnel's, say).
            // The programs never tag those: inet_create() runs the sock_create hook only for
            // sockets user space asks for, and the sock_addr hooks skip kernel sockets too.
            None => None,
        },
    };
    Ok(Some(Receiver {
        bound_exactly: best.exact,
        tag,
        pid: holder.and_then(|(pid, _)| u32::try_from(pid).ok()),
        socket,
        others,
    }))
}

/// How well a socket matches; a higher rank wins, as the kernel's lookup order and scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Bound to the destination address itself (looked up before the wildcard).
    exact: bool,
    /// Of the destination's own family (compute_score() adds one for PF_INET on IPv4).
    same_family: bool,
}

/// The socket's rank for a flow to `dst:port`, or `None` if the lookup would not pick it.
fn rank(socket: &DiagSocket, dst: IpAddr, port: u16) -> Option<Rank> {
    let connected = !socket.remote.ip().is_unspecified() || socket.remote.port() != 0;
    if socket.local.port() != port || socket.interface != 0 || connected {
        return None;
    }
    match (dst, socket.local) {
        (IpAddr::V4(dst), SocketAddr::V4(local)) => {
            let ip = *local.ip();
            (ip == dst || ip.is_unspecified()).then_some(Rank {
                exact: ip == dst,
                same_family: true,
            })
        }
        (IpAddr::V4(dst), SocketAddr::V6(local)) => {
            if socket.v6only == Some(true) {
                return None;
            }
            let ip = local.ip();
            let mapped = ip.to_ipv4_mapped();
            let wildcard = ip.is_unspecified() || mapped.is_some_and(|m| m.is_unspecified());
            let exact = mapped == Some(dst);
            (exact || wildcard).then_some(Rank {
                exact,
                same_family: false,
            })
        }
        (IpAddr::V6(dst), SocketAddr::V6(local)) => {
            let ip = *local.ip();
            (ip == dst || ip.is_unspecified()).then_some(Rank {
                exact: ip == dst,
                same_family: true,
            })
        }
        (IpAddr::V6(_), SocketAddr::V4(_)) => None,
    }
}

/// The ENF_TAGS value inet_diag reported for a TCP socket.
fn stored_tag(socket: &DiagSocket, tags: &MapData) -> Result<Option<SockTag>> {
    let id = tags.info()?.id();
    let Some((_, bytes)) = socket.storage.iter().find(|(map, _)| *map == id) else {
        return Ok(None);
    };
    if bytes.len() < size_of::<SockTag>() {
        return Err(anyhow!(
            "ENF_TAGS value of {} bytes, expected {}",
            bytes.len(),
            size_of::<SockTag>()
        ));
    }
    // SAFETY: the length is checked, SockTag is plain data valid for any bit pattern, and
    // read_unaligned makes no alignment assumption about the netlink buffer.
    Ok(Some(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<SockTag>())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(local: &str, remote: &str, v6only: Option<bool>) -> DiagSocket {
        DiagSocket {
            protocol: libc::IPPROTO_UDP as u8,
            state: 7,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            cookie: 1,
            interface: 0,
            inode: 1,
            v6only,
            storage: Vec::new(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const EXACT_V4: Rank = Rank {
        exact: true,
        same_family: true,
    };

    #[test]
    fn the_exact_address_beats_the_wildcard_and_ipv4_beats_dual_stack() {
        let lo = ip("127.0.0.1");
        let exact = rank(&socket("127.0.0.1:80", "0.0.0.0:0", None), lo, 80);
        let any4 = rank(&socket("0.0.0.0:80", "0.0.0.0:0", None), lo, 80);
        let any6 = rank(&socket("[::]:80", "[::]:0", Some(false)), lo, 80);
        let mapped = rank(
            &socket("[::ffff:127.0.0.1]:80", "[::]:0", Some(false)),
            lo,
            80,
        );
        assert_eq!(exact, Some(EXACT_V4));
        assert!(
            exact > mapped && mapped > any4 && any4 > any6,
            "{exact:?} {mapped:?} {any4:?} {any6:?}"
        );
        assert!(any6.is_some());
    }

    #[test]
    fn sockets_the_lookup_never_picks() {
        let lo = ip("127.0.0.1");
        let cases = [
            socket("127.0.0.1:81", "0.0.0.0:0", None),
            socket("127.0.0.2:80", "0.0.0.0:0", None),
            socket("127.0.0.1:80", "127.0.0.1:5000", None),
            socket("[::]:80", "[::]:0", Some(true)),
            socket("[::1]:80", "[::]:0", Some(false)),
        ];
        for case in &cases {
            assert_eq!(rank(case, lo, 80), None, "{case:?}");
        }
        let mut bound_to_device = socket("0.0.0.0:80", "0.0.0.0:0", None);
        bound_to_device.interface = 2;
        assert_eq!(rank(&bound_to_device, lo, 80), None);
        assert_eq!(
            rank(&socket("127.0.0.1:80", "0.0.0.0:0", None), ip("::1"), 80),
            None,
            "an IPv6 destination never reaches an AF_INET socket"
        );
        assert!(rank(&socket("[::]:80", "[::]:0", Some(true)), ip("::1"), 80).is_some());
    }
}
