//! Program and map names. The kernel truncates object names to 15 bytes (`BPF_OBJ_NAME_LEN`
//! is 16 including the NUL), and a program named like its section type fails to link, so every
//! name here is short, distinct and prefixed.

/// Socket storage: every socket's trust-domain tag.
pub const MAP_TAGS: &str = "ENF_TAGS";
/// Hash: (slot, cgroup id) -> domain id of a bound cgroup.
pub const MAP_BINDINGS: &str = "ENF_BINDINGS";
/// LPM trie: (slot, family, address prefix) -> domain id of a remote endpoint prefix.
pub const MAP_ENDPOINTS: &str = "ENF_ENDPOINTS";
/// Hash: (slot, from domain, to domain) -> the ports and protocols federation edges open.
pub const MAP_EDGES: &str = "ENF_EDGES";
/// Array of two: the defaults and generation of each policy slot.
pub const MAP_POLICY: &str = "ENF_POLICY";
/// Array of one: which policy slot the programs read.
pub const MAP_ACTIVE: &str = "ENF_ACTIVE";
/// Hash: domain id -> domain name. Lives exactly as long as the socket tags that use the ids.
pub const MAP_DOMAINS: &str = "ENF_DOMAINS";

/// Hash: local address (host or pod namespace) -> its owner. Filled by the daemon from the
/// namespaces' address lists and by `enf_egress` from pods' outgoing packets.
pub const MAP_ADDRS: &str = "ENF_ADDRS";
/// Array of one: the host's network namespace cookie.
pub const MAP_HOST: &str = "ENF_HOST";
/// LRU hash: (UDP socket, peer) -> the datagram that opened the flow, so replies pass.
pub const MAP_FLOWS: &str = "ENF_FLOWS";
/// Hash: cookie of every workload network namespace a socket was created in.
pub const MAP_NETNS: &str = "ENF_NETNS";
/// Ring buffer: new workload network namespaces, for the daemon to learn their addresses.
pub const MAP_NOTIFY: &str = "ENF_NOTIFY";

/// Hash: (slot, domain id) -> mode, for domains whose mode differs from the policy's.
pub const MAP_MODES: &str = "ENF_MODES";
/// Socket storage: the judged flow of each connected socket, re-checked on every packet.
pub const MAP_CONNS: &str = "ENF_CONNS";
/// LRU hash: TCP connections a listener let in, until the accepted socket takes them over.
pub const MAP_ACCEPTS: &str = "ENF_ACCEPTS";
/// LRU hash: socket cookie -> the judged flow of a connected UDP socket. inet_diag reports
/// socket storage only for TCP, so this is how the daemon finds UDP flows to end.
pub const MAP_UDP_CONNS: &str = "ENF_UDP_CONNS";
/// Hash: (from, to) peers -> refusal and audit counts.
pub const MAP_COUNTS: &str = "ENF_COUNTS";
/// Hash: edge index -> connections it allowed and when it last did.
pub const MAP_EDGE_USE: &str = "ENF_EDGE_USE";
/// Decision events for the daemon (ring buffer).
pub const MAP_EVENTS: &str = "ENF_EVENTS";
/// Events dropped because the ring buffer was full (per-CPU counter).
pub const MAP_EVENTS_LOST: &str = "ENF_EVENTS_LOST";
/// Refused handshakes, so that retransmissions are counted and reported once.
pub const MAP_REFUSALS: &str = "ENF_REFUSALS";

/// Every map the daemon pins, in the order it reports them.
pub const ALL_MAPS: [&str; 21] = [
    MAP_TAGS,
    MAP_BINDINGS,
    MAP_ENDPOINTS,
    MAP_EDGES,
    MAP_POLICY,
    MAP_ACTIVE,
    MAP_DOMAINS,
    MAP_ADDRS,
    MAP_HOST,
    MAP_FLOWS,
    MAP_NETNS,
    MAP_NOTIFY,
    MAP_MODES,
    MAP_CONNS,
    MAP_ACCEPTS,
    MAP_UDP_CONNS,
    MAP_COUNTS,
    MAP_EDGE_USE,
    MAP_EVENTS,
    MAP_EVENTS_LOST,
    MAP_REFUSALS,
];

/// `cgroup/sock_create`: tags a new socket with its creator's domain.
pub const PROG_SOCK_CREATE: &str = "enf_sock_new";
/// `cgroup/connect4`: judges IPv4 `connect()`.
pub const PROG_CONNECT4: &str = "enf_connect4";
/// `cgroup/connect6`: judges IPv6 `connect()` (and IPv4-mapped addresses on IPv6 sockets).
pub const PROG_CONNECT6: &str = "enf_connect6";
/// `cgroup/sendmsg4`: judges unconnected IPv4 UDP `sendto()`/`sendmsg()`.
pub const PROG_SENDMSG4: &str = "enf_sendmsg4";
/// `cgroup/sendmsg6`: judges unconnected IPv6 UDP sends.
pub const PROG_SENDMSG6: &str = "enf_sendmsg6";
/// `cgroup_skb/ingress`: judges TCP handshakes and UDP datagrams arriving at labeled sockets,
/// and re-checks every packet of a connection whose edge may have ended.
pub const PROG_INGRESS: &str = "enf_ingress";
/// `cgroup_skb/egress`: learns pod addresses from pods' outgoing packets, and re-checks every
/// packet of a connection whose edge may have ended.
pub const PROG_EGRESS: &str = "enf_egress";
