//! The parts of an explanation built from what the lookups found: names, the destination's
//! description, and the verdict's sentence.

use std::net::SocketAddr;

use anyhow::Result;
use enforcer_common::{
    maps::{NETNS_REMOTE, NEVER, ORIGIN_BACKFILL, ORIGIN_CREATOR, ORIGIN_FIRST_USE, SockTag},
    verdict::{Peer, Reason, Verdict},
};

use super::{
    Decision, DestinationView, EndKind, EndView, FoundBy, RangeView, SocketView, TagView,
    Transport, VerdictView,
    destination::{Target, Via},
    mode_name,
    rules::wall_time,
};
use crate::{
    kernel::policy_maps::{ActivePolicy, PolicyMaps},
    pipeline::{clock::Clocks, registry::Registry},
};

/// Domain names (from the live ENF_DOMAINS) and modes (ENF_MODES, else the policy's).
pub struct Names<'a> {
    pub registry: Registry,
    pub maps: &'a PolicyMaps,
    pub active: ActivePolicy,
}

impl Names<'_> {
    pub fn domain(&self, id: u32) -> String {
        self.registry
            .name_of(id)
            .map_or_else(|| format!("domain #{id}"), str::to_owned)
    }

    pub fn end(&self, peer: Peer) -> Result<EndView> {
        Ok(match peer {
            Peer::Domain(id) => EndView {
                kind: EndKind::Domain,
                domain: Some(self.domain(id)),
                domain_id: Some(id),
                mode: Some(self.mode(id)?.into()),
            },
            Peer::Unlabeled => EndView {
                kind: EndKind::Unlabeled,
                domain: None,
                domain_id: None,
                mode: None,
            },
            Peer::External => EndView {
                kind: EndKind::External,
                domain: None,
                domain_id: None,
                mode: None,
            },
        })
    }

    fn mode(&self, id: u32) -> Result<&'static str> {
        let mode = self
            .maps
            .mode(self.active.slot, id)?
            .unwrap_or(self.active.config.mode);
        Ok(mode_name(mode))
    }

    /// A peer in a sentence.
    fn peer(&self, peer: Peer) -> String {
        match peer {
            Peer::Domain(id) => self.domain(id),
            Peer::Unlabeled => "unlabeled".into(),
            Peer::External => "external".into(),
        }
    }
}

pub fn destination_view(
    names: &Names<'_>,
    target: &Target,
    to: SocketAddr,
    protocol: Transport,
) -> Result<DestinationView> {
    let end = target.peer().map(|peer| names.end(peer)).transpose()?;
    let mut view = DestinationView {
        address: to,
        found_by: FoundBy::External,
        end,
        socket: None,
        prefix: None,
        pod_netns: None,
        detail: String::new(),
    };
    let kind = match protocol {
        Transport::Tcp => "TCP listener",
        Transport::Udp => "bound UDP socket",
    };
    match target {
        Target::Socket { receiver, via } => {
            let socket = &receiver.socket;
            view.found_by = FoundBy::LocalSocket;
            let whose = match receiver.tag {
                Some(tag) => format!(
                    "its tag says {} ({})",
                    names.peer(Peer::of_domain(tag.domain)),
                    origin_text(tag.origin)
                ),
                None => "it has no tag (created before enforcement and never used): unlabeled"
                    .to_owned(),
            };
            let held = receiver
                .pid
                .map_or_else(String::new, |pid| format!(" (held by pid {pid})"));
            view.detail = format!(
                "{}; the {kind} on {}{held} would receive it, and {whose}",
                via_text(*via),
                socket.local
            );
            view.socket = Some(SocketView {
                local: socket.local,
                state: match protocol {
                    Transport::Tcp => "listening",
                    Transport::Udp => "bound",
                }
                .into(),
                cookie: socket.cookie,
                pid: receiver.pid,
                tag: receiver.tag.map(tag_view),
                bound_exactly: receiver.bound_exactly,
                others: receiver.others,
            });
        }
        Target::Pod {
            domain,
            netns: NETNS_REMOTE,
        } => {
            view.found_by = FoundBy::FleetAddress;
            view.detail = format!(
                "{} is an address another node of the fleet published for a pod whose workload \
                 is in {}",
                to.ip(),
                names.peer(Peer::of_domain(*domain))
            );
        }
        Target::Pod { domain, netns } => {
            view.found_by = FoundBy::PodAddress;
            view.pod_netns = Some(*netns);
            view.detail = format!(
                "{} is an address of a pod on this host (network namespace {netns}) whose \
                 workload is in {}",
                to.ip(),
                names.peer(Peer::of_domain(*domain))
            );
        }
        Target::Endpoint { domain, prefix } => {
            view.found_by = FoundBy::EndpointPrefix;
            view.prefix = Some(prefix.clone());
            view.detail = format!(
                "{} is inside the endpoint prefix {prefix} of {} (longest matching prefix)",
                to.ip(),
                names.domain(*domain)
            );
        }
        Target::External => {
            view.detail = format!(
                "{} is neither a local socket's nor a pod's address, and inside no domain's \
                 endpoint prefixes: external",
                to.ip()
            );
        }
        Target::NoReceiver { via } => {
            view.found_by = FoundBy::NoReceiver;
            view.detail = format!("{}, but no {kind} there would receive it", via_text(*via));
        }
        Target::HostAddress => {
            view.found_by = FoundBy::HostAddress;
            view.detail = format!(
                "{} is an address of the host, shared by every host workload: from inside a \
                 pod it names no domain",
                to.ip()
            );
        }
    }
    Ok(view)
}

fn via_text(via: Via) -> &'static str {
    match via {
        Via::Loopback => "a loopback address stays in the source's network namespace",
        Via::OwnAddress => "the address belongs to the source's own network namespace",
        Via::BoundExactly => {
            "no map knows the address, but a socket in the source's network namespace is \
             bound to exactly it"
        }
    }
}

fn origin_text(origin: u8) -> &'static str {
    match origin {
        ORIGIN_CREATOR => "set when it was created",
        ORIGIN_BACKFILL => "set by the daemon for a socket older than enforcement",
        ORIGIN_FIRST_USE => "set when it was first used",
        _ => "set by an unknown path",
    }
}

fn tag_view(tag: SockTag) -> TagView {
    TagView {
        domain_id: tag.domain,
        origin: match tag.origin {
            ORIGIN_CREATOR => "creator",
            ORIGIN_BACKFILL => "backfill",
            ORIGIN_FIRST_USE => "first_use",
            _ => "unknown",
        }
        .into(),
        cgroup_id: tag.cgroup_id,
    }
}

pub struct VerdictInputs<'a> {
    pub verdict: Option<Verdict>,
    pub src: Peer,
    pub dst: Option<Peer>,
    pub enforced: bool,
    pub cgroup: &'a str,
    pub root: &'a str,
    pub target: &'a Target,
    pub to: SocketAddr,
    pub protocol: Transport,
    pub edges: &'a [RangeView],
}

pub fn verdict_view(
    names: &Names<'_>,
    inputs: VerdictInputs<'_>,
    clocks: &Clocks,
) -> Result<VerdictView> {
    let VerdictInputs {
        verdict,
        src,
        dst,
        enforced,
        cgroup,
        root,
        target,
        to,
        protocol,
        edges,
    } = inputs;
    let (Some(v), Some(dst)) = (verdict, dst) else {
        let summary = if !enforced {
            format!(
                "not judged at the source: cgroup {cgroup} is outside --cgroup-root {root}, so \
                 the programs do not run for its sockets (a receiving socket in the enforced \
                 subtree still judges what arrives, as from an unlabeled peer)"
            )
        } else if matches!(target, Target::HostAddress) {
            "not judged at the source: the receiving socket's ingress check judges it".to_owned()
        } else {
            match protocol {
                Transport::Tcp => "not judged: no listener, so the kernel itself refuses the \
                                   connection (ECONNREFUSED), not the policy"
                    .to_owned(),
                Transport::Udp => "not judged: no socket would receive the datagram, so the \
                                   kernel itself drops it (ICMP port unreachable), not the policy"
                    .to_owned(),
            }
        };
        return Ok(VerdictView {
            decision: Decision::NotJudged,
            reason: None,
            edge: None,
            until: None,
            summary,
        });
    };
    let edge = (v.reason == Reason::EdgeAllowed)
        .then(|| {
            edges
                .iter()
                .find(|r| r.decides)
                .and_then(|r| r.edge.clone())
        })
        .flatten();
    let until =
        (v.reason == Reason::EdgeAllowed && v.until != NEVER).then(|| wall_time(clocks, v.until));
    let why = reason_text(names, v.reason, src, dst, to, protocol, edge.as_deref());
    let (decision, summary) = if v.audited {
        let audit: Vec<String> = [src, dst]
            .into_iter()
            .filter_map(|p| match p {
                Peer::Domain(id) => Some(id),
                Peer::Unlabeled | Peer::External => None,
            })
            .filter(|&id| names.mode(id).is_ok_and(|m| m == "audit"))
            .map(|id| names.domain(id))
            .collect();
        (
            Decision::Audited,
            format!(
                "let through by audit mode ({} in audit mode) and counted as would-deny; the \
                 policy refuses it: {why}",
                audit.join(" and ")
            ),
        )
    } else if v.allow {
        (Decision::Allowed, format!("allowed: {why}"))
    } else {
        (
            Decision::Refused,
            format!("refused (EPERM at connect/sendto): {why}"),
        )
    };
    Ok(VerdictView {
        decision,
        reason: Some(v.reason.name().into()),
        edge,
        until,
        summary,
    })
}

fn reason_text(
    names: &Names<'_>,
    reason: Reason,
    src: Peer,
    dst: Peer,
    to: SocketAddr,
    protocol: Transport,
    edge: Option<&str>,
) -> String {
    let (from, to_name) = (names.peer(src), names.peer(dst));
    let flow = format!("{} port {}", protocol.name(), to.port());
    match reason {
        Reason::SameDomain => format!("both ends are in {from}"),
        Reason::EdgeAllowed => format!(
            "edge {} from {from} to {to_name} opens {flow}",
            edge.unwrap_or("(unknown)")
        ),
        Reason::NoEdge => format!("no edge from {from} to {to_name} opens {flow}"),
        Reason::EdgeExpired => format!(
            "the edges from {from} to {to_name} that open {flow} are outside their validity \
             window"
        ),
        Reason::UnlabeledDefault => {
            "one end is unlabeled, and defaults.unlabeled decides".to_owned()
        }
        Reason::ExternalDefault => "one end is external, and defaults.external decides".to_owned(),
        Reason::NoDomain => {
            "neither end is in a trust domain: not a boundary the policy governs".to_owned()
        }
    }
}
