//! What `enforcer why` answers: how the kernel judges one flow, and why. `-o json` prints
//! [`Explanation`]; the schema is stable, fields are only ever added.

use std::net::SocketAddr;

use enforcer_common::maps::{PROTO_TCP, PROTO_UDP};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The `PROTO_*` bit the programs judge with.
    pub fn bit(self) -> u32 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
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
    /// An address another node of the fleet published for one of its pods (ENF_ADDRS, with
    /// `--source etcd`): the domain it published.
    FleetAddress,
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
    pub source: Option<super::edge::Source>,
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
