//! Key and value layouts of every map, with the contract each map keeps.
//!
//! Policy maps are double-buffered: every policy key carries a `slot` (0 or 1). The daemon
//! writes a new policy into the slot the programs are not reading, then flips [`ActiveSlot`]
//! with one 4-byte array update. A program reads the active slot once and does all of its
//! lookups in that slot, so no decision ever sees half of one policy and half of another.

/// Domain id of sockets whose creator is in no bound cgroup.
pub const UNLABELED: u32 = 0;

/// Number of policy slots (double buffering).
pub const SLOTS: u32 = 2;

/// Deepest cgroup level the programs walk when looking for the nearest bound ancestor.
/// The walk is a bounded loop, so the verifier needs a constant; the daemon refuses bindings
/// deeper than this.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Port ranges one (from, to) domain pair can hold; the daemon refuses policies with more.
pub const MAX_PORT_RANGES: usize = 32;

/// Longest trust-domain name stored in [`DomainName`] (the SPIFFE limit).
pub const MAX_DOMAIN_NAME: usize = 255;

/// `SockTag::origin`: tagged by `sock_create` from the creating task's cgroup.
pub const ORIGIN_CREATOR: u32 = 1;
/// `SockTag::origin`: created before enforcement; tagged by the daemon from the socket's
/// creation cgroup as reported by `sock_diag`.
pub const ORIGIN_BACKFILL: u32 = 2;
/// `SockTag::origin`: created before enforcement and used before the daemon reached it;
/// tagged at `connect()` from the calling task's cgroup.
pub const ORIGIN_FIRST_USE: u32 = 3;

/// `PolicyConfig` action values.
pub const ACTION_ALLOW: u32 = 0;
pub const ACTION_DENY: u32 = 1;

/// `PortRange::protocols` bits.
pub const PROTO_TCP: u32 = 1;
pub const PROTO_UDP: u32 = 2;

/// `EndpointKey::family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Bits of an LPM key's data that precede the address (slot and family bytes).
pub const ENDPOINT_KEY_HEADER_BITS: u32 = 16;

/// `ENF_TAGS` value (socket storage, key is the socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockTag {
    /// Domain id, or [`UNLABELED`].
    pub domain: u32,
    /// One of the `ORIGIN_*` values: how the tag was decided.
    pub origin: u32,
    /// cgroup id of the task that created (or first used) the socket: lets the daemon re-tag
    /// exactly the sockets created in a cgroup whose binding landed after they were made.
    pub cgroup_id: u64,
    /// Cookie of the network namespace the socket was created in (0 if unknown). Sockets
    /// outside the host's namespace belong to pods, whose addresses are learned from them.
    pub netns: u64,
}

/// `AddrOwner::kind`: an address of a workload namespace (a pod) whose sockets carry `domain`.
pub const ADDR_POD: u32 = 1;
/// `AddrOwner::kind`: an address of the host's own network namespace, shared by every
/// host workload, so it names no single domain.
pub const ADDR_HOST: u32 = 2;

/// `ENF_ADDRS` key: one local address (host or pod namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
}

/// `ENF_ADDRS` value: who owns a local address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrOwner {
    /// Domain id (or [`UNLABELED`]) of the pod; 0 for host addresses.
    pub domain: u32,
    /// `ADDR_POD` or `ADDR_HOST`.
    pub kind: u32,
    /// Cookie of the namespace that holds the address.
    pub netns: u64,
}

/// `ENF_HOST` value: facts about the host the programs compare against.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// Cookie of the daemon's (the host's) network namespace.
    pub netns: u64,
}

/// `FlowState::initiator` values.
pub const FLOW_OUTBOUND: u32 = 1;
pub const FLOW_INBOUND: u32 = 2;

/// `ENF_FLOWS` key: a UDP socket and one peer it exchanged datagrams with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// `ENF_FLOWS` value: the direction and ends of the datagram that opened the flow. Replies are
/// judged as that first datagram would be judged now, so a flow ends as soon as the policy no
/// longer allows the direction that opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Encoded [`crate::verdict::Peer`] of the sender of the first datagram.
    pub from: u32,
    /// Encoded peer of its receiver.
    pub to: u32,
    /// Destination port of the first datagram, host byte order.
    pub port: u16,
    pub _pad: u16,
    /// `FLOW_OUTBOUND` (this socket sent first) or `FLOW_INBOUND`.
    pub initiator: u32,
}

/// `ENF_NETNS` value: a workload network namespace the programs have seen a socket created in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsSeen {
    /// A process that created a socket there, for the daemon to find the namespace by.
    pub pid: u32,
    pub _pad: u32,
}

/// `ENF_NOTIFY` record: a socket was created in a network namespace not seen before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNetns {
    pub netns: u64,
    pub pid: u32,
    pub domain: u32,
}

/// `ENF_BINDINGS` key; the value is a `u32` domain id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingKey {
    pub slot: u32,
    pub _pad: u32,
    /// cgroup v2 id: the inode number of the cgroup's directory.
    pub cgroup_id: u64,
}

/// `ENF_ENDPOINTS` key data (after the LPM prefix length). The prefix length counts the
/// slot and family bytes too ([`ENDPOINT_KEY_HEADER_BITS`]), so one trie holds both slots
/// and both families without a v4 prefix ever matching a v6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointKey {
    pub slot: u8,
    pub family: u8,
    /// Network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Never covered by a prefix; keeps the key a multiple of the value's alignment.
    pub _pad: [u8; 2],
}

/// `ENF_EDGES` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeKey {
    pub slot: u32,
    pub from: u32,
    pub to: u32,
}

/// An inclusive port range and the protocols it opens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    /// `PROTO_*` bits.
    pub protocols: u32,
}

/// `ENF_EDGES` value: every range any edge from `from` to `to` opens, merged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRules {
    pub count: u32,
    pub _pad: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

/// `ENF_POLICY` value, one per slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    pub generation: u64,
    /// `ACTION_*` for flows where one side is unlabeled.
    pub unlabeled: u32,
    /// `ACTION_*` for labeled workloads talking to external destinations.
    pub external: u32,
}

/// `ENF_DOMAINS` value (key: `u32` domain id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainName {
    pub len: u32,
    pub bytes: [u8; MAX_DOMAIN_NAME + 1],
}

const _: () = {
    assert!(size_of::<SockTag>() == 24);
    assert!(size_of::<AddrKey>() == 20);
    assert!(size_of::<AddrOwner>() == 16);
    assert!(size_of::<HostConfig>() == 8);
    assert!(size_of::<FlowKey>() == 32);
    assert!(size_of::<FlowState>() == 16);
    assert!(size_of::<NetnsSeen>() == 8);
    assert!(size_of::<NewNetns>() == 16);
    assert!(size_of::<BindingKey>() == 16);
    assert!(size_of::<EndpointKey>() == 20);
    assert!(size_of::<EdgeKey>() == 12);
    assert!(size_of::<PortRange>() == 8);
    assert!(size_of::<PortRules>() == 8 + 8 * MAX_PORT_RANGES);
    assert!(size_of::<PolicyConfig>() == 16);
    assert!(size_of::<DomainName>() == 260);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type is repr(C), Copy, and has no implicit padding: all padding is an
    // explicit field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for SockTag {}
    unsafe impl aya::Pod for BindingKey {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EdgeKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PortRules {}
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for DomainName {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for AddrOwner {}
    unsafe impl aya::Pod for HostConfig {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for NetnsSeen {}
}
