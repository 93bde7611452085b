//! Ending the live connections a policy no longer allows. The programs already drop every
//! further packet of such a connection (see the eBPF crate's `conns`); this makes the
//! applications see it at once: each TCP socket and connected UDP socket whose judged flow
//! the new policy refuses is destroyed with `SOCK_DESTROY`, so its next call fails with
//! `ECONNABORTED` and a TCP peer gets a reset, instead of retransmitting into a drop.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::SocketAddr,
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use enforcer_common::{
    maps::{AcceptKey, CONN_UNTRACKED, ConnState, FAMILY_V4, FAMILY_V6, PolicyConfig},
    names,
    verdict::{self, Peer, Verdict},
};

use crate::{
    kernel::{
        addresses, features,
        sockdiag::{DiagSocket, SockDiag},
    },
    pipeline::compile::{Compiled, CompiledRules},
};

/// Kernel TCP states (include/net/tcp_states.h) of a connection that can still carry data.
const TCP_LIVE_STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 3) // SYN_RECV
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11); // CLOSING
/// inet_diag reports a connected UDP socket as TCP_ESTABLISHED (and an unconnected one as
/// TCP_CLOSE, which has no peer to end a flow with).
const UDP_CONNECTED: u32 = 1 << 1;

/// The tracked connections of each namespace at one moment, with a sock_diag socket each.
pub struct Snapshot(Vec<(SockDiag, Vec<(DiagSocket, ConnState)>)>);

impl Snapshot {
    /// The connections in the snapshot that [`Connections::end_refused`] would end if `judge`
    /// were the policy in force, without touching any: one entry per connection, counted as
    /// `end_refused` counts them, named by the socket of the end that opened it when both
    /// ends are on this host.
    pub fn would_end(&self, judge: &Judge) -> Vec<Ending> {
        ending(self.0.iter().map(|(_, sockets)| sockets.as_slice()), judge)
    }
}

/// The connections among the sockets of every namespace that `judge` refuses, one entry per
/// connection (see [`Snapshot::would_end`]).
fn ending<'s>(
    namespaces: impl Iterator<Item = &'s [(DiagSocket, ConnState)]>,
    judge: &Judge,
) -> Vec<Ending> {
    let mut ending: BTreeMap<(u8, SocketAddr, SocketAddr), Ending> = BTreeMap::new();
    for sockets in namespaces {
        for (socket, state, verdict) in refused(sockets, judge) {
            // The opening end's socket has the flow's destination port as its peer's.
            let opener = plain(socket.remote).port() == state.port;
            let this = Ending {
                socket: socket.clone(),
                state: *state,
                verdict,
            };
            match ending.entry(connection(socket)) {
                Entry::Vacant(slot) => {
                    slot.insert(this);
                }
                Entry::Occupied(mut slot) => {
                    if opener {
                        slot.insert(this);
                    }
                }
            }
        }
    }
    ending.into_values().collect()
}

/// A live connection a policy refuses: one of its sockets, the flow it was judged as, and
/// the policy's verdict on that flow now.
pub struct Ending {
    pub socket: DiagSocket,
    pub state: ConnState,
    pub verdict: Verdict,
}

/// Judges the flows of live connections under one compiled policy at one boot-clock moment,
/// as the programs re-check every packet of a tracked connection. Ending connections
/// (`policy apply`, revoke, expiry) and planning a change (`policy plan`) both judge with it,
/// so a plan lists exactly what an apply would end.
pub struct Judge<'a> {
    rules: CompiledRules<'a>,
    config: PolicyConfig,
    now: u64,
}

impl<'a> Judge<'a> {
    pub fn new(compiled: &'a Compiled, now: u64) -> Self {
        Self {
            rules: CompiledRules::new(compiled),
            config: PolicyConfig {
                generation: 0,
                unlabeled: compiled.unlabeled,
                external: compiled.external,
                mode: compiled.mode,
                _pad: 0,
            },
            now,
        }
    }

    /// The verdict on the flow `state` was judged as.
    pub fn verdict(&self, state: &ConnState) -> Verdict {
        verdict::decide(
            Peer::decode(state.from),
            Peer::decode(state.to),
            &self.config,
            u32::from(state.protocol),
            state.port,
            self.now,
            &self.rules,
        )
    }
}

/// The sockets among `sockets` whose judged flow `judge` refuses, with its verdict.
fn refused<'s>(
    sockets: &'s [(DiagSocket, ConnState)],
    judge: &'s Judge<'_>,
) -> impl Iterator<Item = (&'s DiagSocket, &'s ConnState, Verdict)> {
    sockets.iter().filter_map(|(socket, state)| {
        let verdict = judge.verdict(state);
        (!verdict.allow).then_some((socket, state, verdict))
    })
}

pub struct Connections {
    conns: MapData,
    conns_id: u32,
    accepts: HashMap<MapData, AcceptKey, ConnState>,
    udp: HashMap<MapData, u64, ConnState>,
}

impl Connections {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let Map::SkStorage(conns) = take(names::MAP_CONNS)? else {
            anyhow::bail!("{} is not socket storage", names::MAP_CONNS);
        };
        let conns_id = conns.info()?.id();
        Ok(Self {
            conns,
            conns_id,
            accepts: HashMap::try_from(take(names::MAP_ACCEPTS)?)?,
            udp: HashMap::try_from(take(names::MAP_UDP_CONNS)?)?,
        })
    }

    /// Every tracked connection now, in the host's namespace and the pod namespaces
    /// `pods` (cookie, a process in it). Taken before a policy change, so that connections
    /// the change ends count even if their application reacts to the kernel's drop (a
    /// connected UDP send fails at once) and closes them before they are destroyed.
    pub fn snapshot(&self, pods: &[(u64, i32)]) -> Result<Snapshot> {
        let mut namespaces = vec![SockDiag::open()?];
        for &(cookie, pid) in pods {
            match addresses::in_namespace(pid, cookie, SockDiag::open) {
                Ok(diag) => namespaces.push(diag),
                // The namespace emptied since the last scan: nothing left to end there.
                Err(err) => log::error!(
                    "could not enter the network namespace of pid {pid} to end connections: \
                     {err:#}"
                ),
            }
        }
        let mut snapshot = Snapshot(Vec::new());
        for diag in namespaces {
            let tracked = self.tracked(&diag)?;
            snapshot.0.push((diag, tracked));
        }
        Ok(snapshot)
    }

    /// Destroys every connection in `before`, or tracked now, that `judge` refuses. Returns
    /// those connections, one entry per connection as [`Snapshot::would_end`] names them.
    pub fn end_refused(&self, before: Snapshot, judge: &Judge) -> Result<Vec<Ending>> {
        let mut namespaces = Vec::new();
        for (diag, mut sockets) in before.0 {
            // Connections opened between the snapshot and the change are ended as well.
            for socket in self.tracked(&diag)? {
                if !sockets.iter().any(|(s, _)| s.cookie == socket.0.cookie) {
                    sockets.push(socket);
                }
            }
            for (socket, _, _) in refused(&sockets, judge) {
                // A socket already gone was live when the snapshot saw it: the kernel's
                // drop made its application close it, so it counts as ended all the same.
                // Without SOCK_DESTROY (see `status`) the kernel's drop is all there is.
                if features::can_destroy_sockets() {
                    diag.destroy(socket)?;
                }
            }
            namespaces.push(sockets);
        }
        Ok(ending(namespaces.iter().map(Vec::as_slice), judge))
    }

    /// The connected sockets of one namespace whose flow can be revoked, with that flow.
    fn tracked(&self, diag: &SockDiag) -> Result<Vec<(DiagSocket, ConnState)>> {
        let maps = [self.conns.fd().as_fd()];
        let mut tracked = Vec::new();
        for (protocol, states) in [
            (libc::IPPROTO_TCP as u8, TCP_LIVE_STATES),
            (libc::IPPROTO_UDP as u8, UDP_CONNECTED),
        ] {
            for socket in diag.dump(protocol, states, &maps)? {
                if let Some(state) = self.state_of(&socket)
                    && state.status != CONN_UNTRACKED
                {
                    tracked.push((socket, state));
                }
            }
        }
        Ok(tracked)
    }

    /// The judged flow of a socket: for UDP, what its connect() recorded by cookie (inet_diag
    /// reports socket storage only for TCP); for TCP its own storage, or for an accepted
    /// socket that has not seen a packet since the handshake, what its listener left for it.
    fn state_of(&self, socket: &DiagSocket) -> Option<ConnState> {
        if socket.protocol == libc::IPPROTO_UDP as u8 {
            return self.udp.get(&socket.cookie, 0).ok();
        }
        let own = socket
            .storage
            .iter()
            .find(|(id, _)| *id == self.conns_id)
            .and_then(|(_, bytes)| conn_state(bytes));
        own.or_else(|| self.accepts.get(&accept_key(socket), 0).ok())
    }
}

fn conn_state(bytes: &[u8]) -> Option<ConnState> {
    if bytes.len() < size_of::<ConnState>() {
        return None;
    }
    // SAFETY: the length is checked, ConnState is plain data valid for any bit pattern, and
    // read_unaligned makes no alignment assumption about the netlink buffer.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ConnState>()) })
}

/// One connection, the same whichever end's socket names it.
fn connection(socket: &DiagSocket) -> (u8, SocketAddr, SocketAddr) {
    let (a, b) = (plain(socket.local), plain(socket.remote));
    (socket.protocol, a.min(b), a.max(b))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, as the programs see it on the wire.
pub fn plain(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The `ENF_ACCEPTS` key of an accepted socket, laid out as the ingress program builds it
/// from the handshake's packets (ports in network byte order, IPv4 in the first 4 bytes).
fn accept_key(socket: &DiagSocket) -> AcceptKey {
    let bytes = |addr: SocketAddr| {
        let mut out = [0u8; 16];
        match addr {
            SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
            SocketAddr::V6(v6) => out.copy_from_slice(&v6.ip().octets()),
        }
        out
    };
    let (local, remote) = (plain(socket.local), plain(socket.remote));
    AcceptKey {
        family: if local.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        },
        _pad: 0,
        local_port: local.port().to_be(),
        remote_port: remote.port().to_be(),
        _pad2: 0,
        local: bytes(local),
        remote: bytes(remote),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(local: &str, remote: &str) -> DiagSocket {
        DiagSocket {
            protocol: libc::IPPROTO_TCP as u8,
            state: 1,
            local: local.parse().expect("address"),
            remote: remote.parse().expect("address"),
            cookie: 1,
            interface: 0,
            inode: 0,
            v6only: None,
            storage: Vec::new(),
        }
    }

    #[test]
    fn both_ends_of_a_connection_are_one_connection() {
        let client = socket("127.0.0.1:40000", "127.0.0.1:5432");
        let server = socket("[::ffff:127.0.0.1]:5432", "[::ffff:127.0.0.1]:40000");
        assert_eq!(connection(&client), connection(&server));
    }

    fn compiled(text: &str) -> Compiled {
        let policy = enforcer_policy::parse("test.yaml", text).expect("test policy is valid");
        let clocks = crate::pipeline::clock::Clocks {
            wall: 0,
            boot: 1_000,
        };
        let (edges, _) = crate::pipeline::edges::Book::default()
            .resolve(&policy, clocks.wall_now())
            .expect("edges resolve");
        crate::pipeline::compile::compile(&policy, &edges, Default::default(), &clocks, |_| None)
            .expect("compiles")
    }

    /// a.org -> b.org over tcp to `port`, as the programs record it.
    fn flow(port: u16) -> ConnState {
        ConnState {
            from: 1,
            to: 2,
            edge: 1,
            port,
            protocol: enforcer_common::maps::PROTO_TCP as u8,
            status: enforcer_common::maps::CONN_ALLOWED,
            ..ConnState::default()
        }
    }

    #[test]
    fn a_plan_names_each_refused_connection_once_by_its_opening_end() {
        let domains = "version: 1\ndomains: [{name: a.org}, {name: b.org}]\n";
        let with_edge = format!(
            "{domains}federation:\n  - {{from: a.org, to: b.org, protocol: tcp, ports: [5432], \
             owner: o, reason: r}}\n"
        );
        let server = socket("[::ffff:127.0.0.1]:5432", "[::ffff:127.0.0.1]:40000");
        let client = socket("127.0.0.1:40000", "127.0.0.1:5432");
        let other = socket("127.0.0.1:40001", "127.0.0.1:6000");
        let host = [(server, flow(5432)), (client.clone(), flow(5432))];
        let pod = [(other, flow(6000))];
        let without = compiled(domains);
        let judge = Judge::new(&without, 2_000);
        let ends = ending([&host[..], &pod[..]].into_iter(), &judge);
        assert_eq!(
            ends.len(),
            2,
            "two connections, one of them seen from both ends"
        );
        assert_eq!(ends[0].socket, client, "named by the end that opened it");
        assert_eq!(ends[0].verdict.reason, verdict::Reason::NoEdge);
        assert_eq!(ends[1].state.port, 6000);
        let with = compiled(&with_edge);
        let judge = Judge::new(&with, 2_000);
        let ends = ending([&host[..], &pod[..]].into_iter(), &judge);
        assert_eq!(ends.len(), 1, "the edge keeps port 5432: only 6000 ends");
        assert_eq!(ends[0].state.port, 6000);
    }

    #[test]
    fn accept_keys_match_the_wire_layout() {
        let key = accept_key(&socket("[::ffff:10.0.0.1]:5432", "[::ffff:10.0.0.2]:40000"));
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(&key.local[..4], &[10, 0, 0, 1]);
        assert_eq!(key.local_port.to_ne_bytes(), 5432u16.to_be_bytes());
        assert_eq!(key.remote_port.to_ne_bytes(), 40000u16.to_be_bytes());
        let v6 = accept_key(&socket("[fd00::1]:80", "[fd00::2]:81"));
        assert_eq!(v6.family, FAMILY_V6);
        assert_eq!(v6.remote[15], 2);
    }
}
