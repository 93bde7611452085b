//! `enforcer why`: how the kernel judges one flow, and why, computed in the daemon from the
//! live maps. The source and the destination are classified the way the programs classify
//! them (the eBPF crate's `identity`, `destination` and `local` modules), every lookup reads
//! the map the programs read, in the policy slot they read, and the verdict comes from
//! `enforcer_common::verdict::decide`, the function the programs call. So the explanation is
//! the kernel's decision, not a second implementation that could drift from it.
//!
//! The flow is a new one: a socket the source cgroup (or process) would create now, sending
//! its first packet to the destination with `connect()` or an unconnected `sendto()`, which
//! the programs judge alike.

mod cli;
mod destination;
mod receiver;
mod render;
mod source;

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use enforcer_common::{
    maps::{
        ACTION_DENY, MODE_AUDIT, NEVER, ORIGIN_BACKFILL, ORIGIN_CREATOR, ORIGIN_FIRST_USE,
        PROTO_TCP, PROTO_UDP, PortRange, PortRules, SockTag, UNLABELED,
    },
    verdict::{self, Peer, Reason, Rules, Verdict},
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use cli::{Args, run};

use crate::{
    addresses::Addresses,
    cgroupfs::{CgroupFs, CgroupRoot},
    clock::Clocks,
    edges::{self, LiveEdge},
    kernel::policy_maps::{ActivePolicy, PolicyMaps},
    registry::Registry,
};
use destination::{Target, Via};

/// What the daemon owns that an explanation reads.
pub struct Live<'a> {
    /// The loaded object, for ENF_TAGS (socket storage the daemon otherwise only reaches
    /// through its pin).
    pub ebpf: &'a aya::Ebpf,
    pub maps: &'a PolicyMaps,
    pub addresses: &'a Addresses,
    pub cgroups: &'a CgroupFs,
    pub root: &'a CgroupRoot,
    /// The edges in force, to name the edge behind each port range.
    pub edges: &'a [LiveEdge],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The `PROTO_*` bit the programs judge with.
    fn bit(self) -> u32 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Who opens the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhySource {
    /// A new socket created in this cgroup (a cgroup path as in /proc/PID/cgroup), in the
    /// host's network namespace.
    Cgroup(String),
    /// A new socket created by this process, in its cgroup and its network namespace.
    Pid(u32),
}

/// The answer of `enforcer why`; `-o json` prints exactly this. The schema is stable:
/// fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The generation of the policy the programs enforce now.
    pub generation: u64,
    /// When the flow was judged; edge windows are compared with the kernel's clock then.
    pub evaluated_at: Timestamp,
    pub protocol: Transport,
    pub source: SourceView,
    pub destination: DestinationView,
    /// Every port range of every edge from the source's domain to the destination's, in the
    /// order the programs scan them. Empty unless the two ends are different domains: only
    /// then are edges considered.
    pub edges: Vec<RangeView>,
    pub defaults: DefaultsView,
    pub verdict: VerdictView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceView {
    /// The cgroup the socket is created in, as in /proc/PID/cgroup.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The process asked about (`--from-pid`), if any.
    pub pid: Option<u32>,
    /// Cookie of the network namespace the flow starts in, and whether it is the host's.
    pub netns: u64,
    pub host_netns: bool,
    /// Whether the programs run for sockets created in the cgroup (it is under
    /// `--cgroup-root`); when not, nothing at the source judges the flow.
    pub enforced: bool,
    /// The domain new sockets created in the cgroup are tagged with.
    pub end: EndView,
    /// Every bound cgroup met walking the cgroup's ancestors from the root (level 0) down
    /// to the cgroup itself, as the kernel walks them; the last one is the nearest and names
    /// the domain. Empty: unlabeled.
    pub bindings: Vec<BindingView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingView {
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Depth below the cgroup2 root (the root is 0).
    pub level: u32,
    pub domain: String,
}

/// One end of a flow as the programs classify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndView {
    pub kind: EndKind,
    /// The trust domain, for `kind: domain`.
    pub domain: Option<String>,
    pub domain_id: Option<u32>,
    /// `enforce` or `audit`, for `kind: domain`.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    Domain,
    Unlabeled,
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationView {
    pub address: SocketAddr,
    pub found_by: FoundBy,
    /// How the programs classify the destination; absent when nothing at the source judges
    /// the flow (`no_receiver`, `host_address`).
    pub end: Option<EndView>,
    /// The local socket that would receive the flow (`found_by: local_socket`).
    pub socket: Option<SocketView>,
    /// The endpoint prefix that holds the address (`found_by: endpoint_prefix`).
    pub prefix: Option<String>,
    /// Cookie of the pod's network namespace (`found_by: pod_address`).
    pub pod_netns: Option<u64>,
    /// One sentence for humans.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// A TCP listener or bound UDP socket in the source's network namespace: its tag.
    LocalSocket,
    /// An address of a pod on this host (ENF_ADDRS): the pod's domain.
    PodAddress,
    /// A domain's endpoint prefix (ENF_ENDPOINTS, longest prefix).
    EndpointPrefix,
    /// None of the above.
    External,
    /// A local address where no socket would receive the flow: the kernel refuses it itself.
    NoReceiver,
    /// A host address seen from a pod: judged at the receiving socket, not at the source.
    HostAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketView {
    pub local: SocketAddr,
    /// `listening` (TCP) or `bound` (UDP).
    pub state: String,
    pub cookie: u64,
    /// A process holding it.
    pub pid: Option<u32>,
    /// Its tag in ENF_TAGS; absent for a socket created before enforcement and never used
    /// (unlabeled).
    pub tag: Option<TagView>,
    /// Bound to the destination address itself rather than a wildcard.
    pub bound_exactly: bool,
    /// Other sockets that could receive the flow just as well (SO_REUSEPORT groups); the
    /// kernel picks one of them per flow.
    pub others: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagView {
    pub domain_id: u32,
    /// How the tag was set: `creator` (at socket creation), `backfill` (by the daemon, for a
    /// socket older than enforcement) or `first_use` (at its first connect or send).
    pub origin: String,
    /// The cgroup the socket was created (or first used) in.
    pub cgroup_id: u64,
}

/// One port range of an edge, and how it treats the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeView {
    /// The edge's id; absent if the daemon no longer knows the index (it never should).
    pub edge: Option<String>,
    /// The edge's index in the kernel (ENF_EDGE_USE key).
    pub index: u32,
    /// `file` or `grant`.
    pub source: Option<edges::Source>,
    /// `tcp`, `udp` or `any`.
    pub protocol: String,
    pub first: u16,
    pub last: u16,
    pub protocol_matches: bool,
    pub port_matches: bool,
    /// `active`, `expired` or `not-yet-valid` (as in `edge list`), at `evaluated_at`.
    pub window: String,
    /// Start of the window, if the edge has one.
    pub not_before: Option<Timestamp>,
    /// End of the window (exclusive), if the edge expires.
    pub not_after: Option<Timestamp>,
    /// Protocol, port and window all match.
    pub matches: bool,
    /// The range the programs stop at: it allows the flow.
    pub decides: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultsView {
    /// `allow` or `deny`.
    pub unlabeled: String,
    pub external: String,
    /// The mode of domains that do not set their own.
    pub mode: String,
    /// The default that decided the flow (`unlabeled` or `external`), if one did.
    pub applied: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictView {
    pub decision: Decision,
    /// `Reason::name()` of the decision; absent when the flow is not judged.
    pub reason: Option<String>,
    /// The edge that allows the flow.
    pub edge: Option<String>,
    /// When that permission ends (the edge's expiry); absent if it does not.
    pub until: Option<Timestamp>,
    /// One sentence for humans.
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Refused,
    /// Refused by the policy, let through because a domain of the flow is in audit mode.
    Audited,
    /// Nothing at the source judges the flow (see the summary).
    NotJudged,
}

/// Explains the flow `from` -> `to` over `protocol`.
pub fn explain(
    live: &Live<'_>,
    from: &WhySource,
    to: SocketAddr,
    protocol: Transport,
) -> Result<Explanation> {
    let origin = source::locate(live, from)?;
    let active = live.maps.active()?;
    let clocks = Clocks::now();
    let names = Names {
        registry: live.maps.registry()?,
        maps: live.maps,
        active,
    };
    let walk = source::walk(live, active.slot, &origin.cgroup)?;
    let enforced = live.root.covers(&origin.cgroup);
    let src = Peer::of_domain(
        walk.iter()
            .rev()
            .find_map(|level| level.domain)
            .unwrap_or(UNLABELED),
    );
    let dst_ip = plain(to.ip());
    let target = destination::resolve(
        live,
        &origin.namespace,
        active.slot,
        protocol,
        dst_ip,
        to.port(),
    )?;
    let judged = target.peer().filter(|_| enforced);
    let (verdict, ranges) = match judged {
        Some(dst) => {
            let rules = LiveRules::read(live.maps, active.slot, src, dst)?;
            let verdict = verdict::decide(
                src,
                dst,
                &active.config,
                protocol.bit(),
                to.port(),
                clocks.boot,
                &rules,
            );
            (Some(verdict), rules.ranges)
        }
        None => (None, None),
    };
    let edges = ranges.map_or_else(Vec::new, |rules| {
        range_views(live.edges, &rules, protocol, to.port(), &clocks, verdict)
    });
    let source = SourceView {
        cgroup: origin.cgroup.to_string(),
        cgroup_id: live
            .cgroups
            .id(&origin.cgroup)
            .with_context(|| format!("cgroup {} vanished", origin.cgroup))?,
        pid: origin.pid,
        netns: origin.namespace.cookie,
        host_netns: origin.namespace.cookie == live.addresses.host_netns(),
        enforced,
        end: names.end(src)?,
        bindings: walk
            .iter()
            .filter_map(|level| {
                level.domain.map(|domain| BindingView {
                    cgroup: level.cgroup.clone(),
                    cgroup_id: level.cgroup_id,
                    level: level.level,
                    domain: names.domain(domain),
                })
            })
            .collect(),
    };
    let destination = destination_view(&names, &target, to, protocol)?;
    let judgement = verdict_view(
        &names,
        VerdictInputs {
            verdict,
            src,
            dst: target.peer(),
            enforced,
            cgroup: &source.cgroup,
            root: &live.root.relative,
            target: &target,
            to,
            protocol,
            edges: &edges,
        },
        &clocks,
    )?;
    let action = |a: u32| if a == ACTION_DENY { "deny" } else { "allow" };
    let applied = match verdict.map(|v| v.reason) {
        Some(Reason::UnlabeledDefault) => Some("unlabeled".to_owned()),
        Some(Reason::ExternalDefault) => Some("external".to_owned()),
        _ => None,
    };
    Ok(Explanation {
        generation: active.config.generation,
        evaluated_at: clocks.wall_now(),
        protocol,
        source,
        destination,
        edges,
        defaults: DefaultsView {
            unlabeled: action(active.config.unlabeled).into(),
            external: action(active.config.external).into(),
            mode: mode_name(active.config.mode).into(),
            applied,
        },
        verdict: judgement,
    })
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps, as the programs see it (a
/// dual-stack socket reaching it talks IPv4, and `connect6` judges it as such).
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn mode_name(mode: u32) -> &'static str {
    if mode == MODE_AUDIT {
        "audit"
    } else {
        "enforce"
    }
}

/// The live ENF_EDGES entry of the flow's own domain pair and the live ENF_MODES entries of
/// its domains, read once: `decide` asks for nothing else, and the edge list shown is the
/// very entry the verdict was computed from.
struct LiveRules {
    pair: Option<(u32, u32)>,
    ranges: Option<PortRules>,
    modes: Vec<(u32, u32)>,
}

impl LiveRules {
    fn read(maps: &PolicyMaps, slot: u32, src: Peer, dst: Peer) -> Result<Self> {
        let (pair, ranges) = match (src, dst) {
            (Peer::Domain(from), Peer::Domain(to)) if from != to => {
                (Some((from, to)), maps.edges(slot, from, to)?)
            }
            _ => (None, None),
        };
        let mut modes = Vec::new();
        for peer in [src, dst] {
            if let Peer::Domain(domain) = peer
                && let Some(mode) = maps.mode(slot, domain)?
            {
                modes.push((domain, mode));
            }
        }
        Ok(Self {
            pair,
            ranges,
            modes,
        })
    }
}

impl Rules for LiveRules {
    fn edges(&self, from: u32, to: u32) -> Option<&PortRules> {
        self.ranges
            .as_ref()
            .filter(|_| self.pair == Some((from, to)))
    }

    fn mode(&self, domain: u32) -> Option<u32> {
        self.modes.iter().find(|m| m.0 == domain).map(|m| m.1)
    }
}

/// Domain names (from the live ENF_DOMAINS) and modes (ENF_MODES, else the policy's).
struct Names<'a> {
    registry: Registry,
    maps: &'a PolicyMaps,
    active: ActivePolicy,
}

impl Names<'_> {
    fn domain(&self, id: u32) -> String {
        self.registry
            .name_of(id)
            .map_or_else(|| format!("domain #{id}"), str::to_owned)
    }

    fn end(&self, peer: Peer) -> Result<EndView> {
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

fn range_views(
    live: &[LiveEdge],
    rules: &PortRules,
    protocol: Transport,
    port: u16,
    clocks: &Clocks,
    verdict: Option<Verdict>,
) -> Vec<RangeView> {
    let count = (rules.count as usize).min(rules.ranges.len());
    let mut decided = false;
    rules.ranges[..count]
        .iter()
        .map(|range| {
            let edge = live.iter().find(|e| e.index == range.edge);
            let protocol_matches = range.protocols & protocol.bit() != 0;
            let port_matches = range.first <= port && port <= range.last;
            let window = window(range, clocks.boot);
            let matches = protocol_matches && port_matches && window == "active";
            // The programs stop at the first range that opens the flow.
            let decides = matches
                && !decided
                && verdict.is_some_and(|v| v.reason == Reason::EdgeAllowed && v.edge == range.edge);
            decided |= decides;
            RangeView {
                edge: edge.map(|e| e.edge.id.to_string()),
                index: range.edge,
                source: edge.map(|e| e.source),
                protocol: protocols(range.protocols).into(),
                first: range.first,
                last: range.last,
                protocol_matches,
                port_matches,
                window: window.into(),
                not_before: (range.not_before != 0).then(|| wall_time(clocks, range.not_before)),
                not_after: (range.not_after != NEVER).then(|| match edge {
                    // A deadline before boot is written as 0: the kernel only knows it is
                    // past, so the time the edge was given with says more.
                    Some(LiveEdge {
                        expires: Some(at), ..
                    }) if range.not_after == 0 => *at,
                    _ => wall_time(clocks, range.not_after),
                }),
                matches,
                decides,
            }
        })
        .collect()
}

/// The wall-clock time of boot-clock nanosecond `boot_ns`, to the millisecond: the pair of
/// clock readings behind the conversion (when the edge was written, and now) is only that
/// exact, and nanoseconds of it would turn `2030-01-01T00:00:00Z` into `...59.99999998Z`.
fn wall_time(clocks: &Clocks, boot_ns: u64) -> Timestamp {
    let at = clocks.wall_time(boot_ns);
    at.round(jiff::Unit::Millisecond).unwrap_or(at)
}

/// The range's validity at boot-clock nanosecond `now`, as `ports_allow` tests it.
fn window(range: &PortRange, now: u64) -> &'static str {
    if now < range.not_before {
        "not-yet-valid"
    } else if now >= range.not_after {
        "expired"
    } else {
        "active"
    }
}

fn protocols(bits: u32) -> &'static str {
    match (bits & PROTO_TCP != 0, bits & PROTO_UDP != 0) {
        (true, true) => "any",
        (true, false) => "tcp",
        (false, true) => "udp",
        (false, false) => "none",
    }
}

fn destination_view(
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

fn origin_text(origin: u32) -> &'static str {
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

struct VerdictInputs<'a> {
    verdict: Option<Verdict>,
    src: Peer,
    dst: Option<Peer>,
    enforced: bool,
    cgroup: &'a str,
    root: &'a str,
    target: &'a Target,
    to: SocketAddr,
    protocol: Transport,
    edges: &'a [RangeView],
}

fn verdict_view(
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

#[cfg(test)]
mod tests {
    use enforcer_common::maps::{ACTION_ALLOW, MAX_PORT_RANGES, MODE_ENFORCE, PolicyConfig};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn range(first: u16, last: u16, protocols: u32, edge: u32, window: (u64, u64)) -> PortRange {
        PortRange {
            first,
            last,
            protocols,
            edge,
            _pad: 0,
            not_before: window.0,
            not_after: window.1,
        }
    }

    /// The ranges shown and the range the verdict stands on come from one read, and the one
    /// marked as deciding is the one `decide` stopped at.
    #[test]
    fn ranges_show_what_decide_saw() {
        let mut rules = PortRules {
            count: 4,
            _pad: 0,
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        };
        rules.ranges[..4].copy_from_slice(&[
            range(80, 80, PROTO_TCP, 1, (0, 50 * SEC)),
            range(80, 80, PROTO_UDP, 2, (0, NEVER)),
            range(1, 1000, PROTO_TCP | PROTO_UDP, 3, (0, 200 * SEC)),
            range(80, 90, PROTO_TCP, 4, (0, NEVER)),
        ]);
        let rules = LiveRules {
            pair: Some((1, 2)),
            ranges: Some(rules),
            modes: Vec::new(),
        };
        let policy = PolicyConfig {
            generation: 1,
            unlabeled: ACTION_ALLOW,
            external: ACTION_ALLOW,
            mode: MODE_ENFORCE,
            _pad: 0,
        };
        let clocks = Clocks {
            wall: Timestamp::from_second(1_800_000_000)
                .expect("a valid time")
                .as_nanosecond(),
            boot: 100 * SEC,
        };
        let v = verdict::decide(
            Peer::Domain(1),
            Peer::Domain(2),
            &policy,
            PROTO_TCP,
            80,
            clocks.boot,
            &rules,
        );
        assert_eq!((v.reason, v.edge), (Reason::EdgeAllowed, 3));
        let shown = range_views(
            &[],
            rules.ranges.as_ref().expect("read"),
            Transport::Tcp,
            80,
            &clocks,
            Some(v),
        );
        let summary: Vec<_> = shown
            .iter()
            .map(|r| {
                (
                    r.index,
                    r.protocol_matches,
                    r.port_matches,
                    r.window.as_str(),
                    r.decides,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, true, true, "expired", false),
                (2, false, true, "active", false),
                (3, true, true, "active", true),
                (4, true, true, "active", false),
            ]
        );
        assert_eq!(
            shown[0].not_after,
            Some(Timestamp::from_second(1_800_000_000 - 50).expect("a valid time"))
        );
        assert_eq!(shown[3].not_after, None, "no expiry");
        assert_eq!(
            rules.edges(2, 1),
            None,
            "only the flow's own pair is known, and decide asks for nothing else"
        );
    }
}
