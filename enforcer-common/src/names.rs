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

/// Every map the daemon pins, in the order it reports them.
pub const ALL_MAPS: [&str; 7] = [
    MAP_TAGS,
    MAP_BINDINGS,
    MAP_ENDPOINTS,
    MAP_EDGES,
    MAP_POLICY,
    MAP_ACTIVE,
    MAP_DOMAINS,
];

/// `cgroup/sock_create`: tags a new socket with its creator's domain.
pub const PROG_SOCK_CREATE: &str = "enf_sock_new";
/// `cgroup/connect4`: judges IPv4 `connect()`.
pub const PROG_CONNECT4: &str = "enf_connect4";
/// `cgroup/connect6`: judges IPv6 `connect()` (and IPv4-mapped addresses on IPv6 sockets).
pub const PROG_CONNECT6: &str = "enf_connect6";
