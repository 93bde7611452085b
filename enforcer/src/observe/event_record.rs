//! A decision event as users see it: the kernel's record (`enforcer_common::event::Event`)
//! with domains, edge, time and protocol named. This is the schema of the event log in the
//! state dir and of `enforcer events -o json`, one object per line.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use enforcer_common::{
    event::{
        Event, HOOK_CONNECT, HOOK_ESTABLISHED, HOOK_INGRESS, HOOK_SENDMSG, VERDICT_ALLOWED,
        VERDICT_AUDITED, VERDICT_REFUSED,
    },
    maps::{FAMILY_V4, PROTO_TCP, PROTO_UDP},
    verdict::Reason,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    kernel::revocation::{Ending, plain},
    observe::tally::{DecisionKey, Word},
    pipeline::clock::Clocks,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: Timestamp,
    /// `allowed`, `refused`, or `audited` (refused by the policy, let through by audit mode).
    pub verdict: Word,
    /// `Reason::name`: same_domain, edge_allowed, no_edge, edge_expired, unlabeled_default,
    /// external_default, no_domain.
    pub reason: Word,
    /// Where it was decided: `connect`, `sendmsg`, `ingress`, `established` (the kernel
    /// refused a packet of a live connection after a policy change) or `ended` (the daemon
    /// ended a live connection the new policy refuses).
    pub hook: Word,
    pub protocol: Word,
    /// Domain names, `unlabeled` or `external`: shared with the policy's registry, so naming
    /// thousands of events a second copies none of them.
    pub from: Arc<str>,
    pub to: Arc<str>,
    /// The id of the edge that allowed the flow.
    pub edge: Option<String>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub cgroup_id: u64,
    /// Relative to the cgroup2 mount; absent when the cgroup no longer exists.
    pub cgroup: Option<Arc<str>>,
    /// The calling process, known in the `connect` and `sendmsg` hooks only.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub generation: u64,
}

/// What only the daemon knows: the names behind ids.
pub trait Names {
    /// The name of an encoded peer (`Peer::encode`).
    fn peer(&self, code: u32) -> Arc<str>;
    /// The id of the edge with kernel index `index`.
    fn edge(&self, index: u32) -> Option<String>;
}

/// The kernel's record in `bytes`, or `None` if it is not one (a record from a build with
/// another layout).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        return None;
    }
    // SAFETY: the length was checked; `Event` is plain data valid for any bit pattern, and
    // the ring buffer gives no alignment guarantee, hence the unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

impl EventRecord {
    /// Names `event`; `None` for a record with codes this build does not know.
    pub fn describe(event: &Event, names: &(impl Names + ?Sized), clocks: &Clocks) -> Option<Self> {
        let verdict = match event.verdict {
            VERDICT_ALLOWED => "allowed",
            VERDICT_REFUSED => "refused",
            VERDICT_AUDITED => "audited",
            _ => return None,
        };
        let hook = match event.hook {
            HOOK_CONNECT => "connect",
            HOOK_SENDMSG => "sendmsg",
            HOOK_INGRESS => "ingress",
            HOOK_ESTABLISHED => "established",
            _ => return None,
        };
        let protocol = match u32::from(event.protocol) {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => return None,
        };
        let comm = event.comm.split(|&b| b == 0).next().unwrap_or_default();
        Some(Self {
            time: clocks.wall_time(event.time),
            verdict: Cow::Borrowed(verdict),
            reason: Cow::Borrowed(Reason::from_code(event.reason)?.name()),
            hook: Cow::Borrowed(hook),
            protocol: Cow::Borrowed(protocol),
            from: names.peer(event.from),
            to: names.peer(event.to),
            edge: (event.edge != 0).then(|| {
                names
                    .edge(event.edge)
                    .unwrap_or_else(|| format!("#{}", event.edge))
            }),
            src: SocketAddr::new(ip(event.family, &event.src), event.sport),
            dst: SocketAddr::new(ip(event.family, &event.dst), event.dport),
            cgroup_id: event.cgroup,
            cgroup: None,
            pid: (event.pid != 0).then_some(event.pid),
            comm: (!comm.is_empty()).then(|| String::from_utf8_lossy(comm).into_owned()),
            generation: event.generation,
        })
    }

    /// A live connection the daemon ended because the policy in force at `generation`
    /// refuses it; `ending` names it by the socket of its opening end where that is local.
    pub fn ended(
        ending: &Ending,
        names: &(impl Names + ?Sized),
        generation: u64,
        time: Timestamp,
    ) -> Self {
        let (src, dst) = if plain(ending.socket.remote).port() == ending.state.port {
            (plain(ending.socket.local), plain(ending.socket.remote))
        } else {
            (plain(ending.socket.remote), plain(ending.socket.local))
        };
        Self {
            time,
            verdict: "refused".into(),
            reason: ending.verdict.reason.name().into(),
            hook: "ended".into(),
            protocol: match u32::from(ending.state.protocol) {
                PROTO_UDP => "udp",
                _ => "tcp",
            }
            .into(),
            from: names.peer(ending.state.from),
            to: names.peer(ending.state.to),
            edge: None,
            src,
            dst,
            cgroup_id: 0,
            cgroup: None,
            pid: None,
            comm: None,
            generation,
        }
    }

    /// The decision kind this event counts as.
    pub fn decision(&self) -> DecisionKey {
        DecisionKey {
            verdict: self.verdict.clone(),
            reason: self.reason.clone(),
            from: Arc::clone(&self.from),
            to: Arc::clone(&self.to),
        }
    }

    /// The same connection seen from either end: both ends of a local connection report
    /// it when a policy change ends it, and so does the daemon when it ends it.
    pub fn connection(&self) -> (&str, SocketAddr, SocketAddr) {
        let (a, b) = if self.src <= self.dst {
            (self.src, self.dst)
        } else {
            (self.dst, self.src)
        };
        (&self.protocol, a, b)
    }
}

fn ip(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

impl fmt::Display for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}/{} {} -> {} {} -> {}",
            self.time,
            self.verdict,
            self.reason,
            self.protocol,
            self.hook,
            self.from,
            self.to,
            self.src,
            self.dst
        )?;
        if let Some(edge) = &self.edge {
            write!(f, " edge {edge}")?;
        }
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
            if let Some(comm) = &self.comm {
                write!(f, " ({comm})")?;
            }
        }
        match &self.cgroup {
            Some(path) => write!(f, " cgroup {path}")?,
            None => write!(f, " cgroup #{}", self.cgroup_id)?,
        }
        write!(f, " generation {}", self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Names for Fixed {
        fn peer(&self, code: u32) -> Arc<str> {
            format!("d{code}").into()
        }

        fn edge(&self, index: u32) -> Option<String> {
            (index == 7).then(|| "edge-db".into())
        }
    }

    fn event() -> Event {
        let mut e = Event {
            time: 1_000,
            generation: 4,
            cgroup: 99,
            pid: 1234,
            from: 2,
            to: 3,
            edge: 7,
            sport: 40000,
            dport: 5432,
            verdict: VERDICT_ALLOWED,
            reason: Reason::EdgeAllowed.code(),
            protocol: PROTO_TCP as u8,
            family: FAMILY_V4,
            hook: HOOK_CONNECT,
            ..Event::default()
        };
        e.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.comm[..5].copy_from_slice(b"psql\0");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(e).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn names_every_field() {
        let clocks = Clocks::now();
        let e = decode(&bytes(&event())).expect("a whole record decodes");
        let r = EventRecord::describe(&e, &Fixed, &clocks).unwrap();
        assert_eq!(r.verdict, "allowed");
        assert_eq!(r.reason, "edge_allowed");
        assert_eq!(r.hook, "connect");
        assert_eq!(r.protocol, "tcp");
        assert_eq!((&*r.from, &*r.to), ("d2", "d3"));
        assert_eq!(r.edge.as_deref(), Some("edge-db"));
        assert_eq!(r.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(r.dst, "10.0.0.2:5432".parse().unwrap());
        assert_eq!((r.cgroup_id, r.pid), (99, Some(1234)));
        assert_eq!(r.comm.as_deref(), Some("psql"));
        assert_eq!(r.generation, 4);
        assert_eq!(r.time, clocks.wall_time(1_000));
    }

    #[test]
    fn packet_events_have_no_process_and_unknown_edges_keep_their_index() {
        let mut e = event();
        e.pid = 0;
        e.comm = [0; 16];
        e.edge = 9;
        e.hook = HOOK_INGRESS;
        e.verdict = VERDICT_REFUSED;
        e.reason = Reason::EdgeExpired.code();
        let r = EventRecord::describe(&e, &Fixed, &Clocks::now()).unwrap();
        assert_eq!((r.pid, r.comm), (None, None));
        assert_eq!(r.edge.as_deref(), Some("#9"));
        assert_eq!((&*r.verdict, &*r.reason), ("refused", "edge_expired"));
    }

    #[test]
    fn rejects_records_it_cannot_read() {
        assert!(decode(&bytes(&event())[1..]).is_none());
        let mut e = event();
        e.verdict = 0;
        assert!(EventRecord::describe(&e, &Fixed, &Clocks::now()).is_none());
        let mut e = event();
        e.reason = 200;
        assert!(EventRecord::describe(&e, &Fixed, &Clocks::now()).is_none());
    }

    #[test]
    fn both_ends_of_a_connection_are_one_connection() {
        let r = EventRecord::describe(&event(), &Fixed, &Clocks::now()).unwrap();
        let mut reverse = r.clone();
        std::mem::swap(&mut reverse.src, &mut reverse.dst);
        assert_eq!(r.connection(), reverse.connection());
    }
}
