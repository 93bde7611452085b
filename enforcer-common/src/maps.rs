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

/// Port ranges one (from, to) domain pair can hold, over all of its edges; the daemon refuses
/// policies and grants that need more.
pub const MAX_PORT_RANGES: usize = 64;

/// Port ranges per `ENF_EDGES` entry. A pair's ranges are spread over entries of this many
/// (chunks 0, 1, ...), so a map entry costs the few ranges a typical pair has (one or two),
/// not room for [`MAX_PORT_RANGES`]: at 100,000 pairs that is 136 bytes a value instead of
/// 2 KiB.
pub const RANGES_PER_CHUNK: usize = 4;

/// Chunks one domain pair can need.
pub const MAX_CHUNKS: usize = MAX_PORT_RANGES.div_ceil(RANGES_PER_CHUNK);

/// How many entries the policy maps hold: the kernel's side of every capacity `policy check`
/// enforces. Policy maps hold both slots, so a policy may use half of each (the slot in force
/// and the one being written exist side by side); domain ids are never reused, so
/// `ENF_DOMAINS` holds every domain any policy of these pins ever named. Every map here is
/// allocated as it is written (`BPF_F_NO_PREALLOC`), so a limit costs nothing unused.
pub mod capacity {
    use super::SLOTS;

    pub const MAX_DOMAINS: usize = 65_536;
    pub const MAX_BINDINGS: usize = 65_536;
    pub const MAX_ENDPOINTS: usize = 65_536;
    /// 131,072 domain pairs of up to four ranges per slot.
    pub const MAX_EDGE_CHUNKS: usize = 262_144;
    pub const MAX_MODES: usize = 131_072;
    /// Edges with usage counters (`ENF_EDGE_USE`), keyed by edge index.
    pub const MAX_EDGES: usize = 262_144;

    /// What one slot may hold of a map of `max` entries.
    pub const fn per_slot(max: usize) -> usize {
        max / SLOTS as usize
    }
}

/// Longest trust-domain name stored in [`DomainName`] (the SPIFFE limit).
pub const MAX_DOMAIN_NAME: usize = 255;

/// `SockTag::origin`: tagged by `sock_create` from the creating task's cgroup.
pub const ORIGIN_CREATOR: u8 = 1;
/// `SockTag::origin`: created before enforcement; tagged by the daemon from the socket's
/// creation cgroup as reported by `sock_diag`.
pub const ORIGIN_BACKFILL: u8 = 2;
/// `SockTag::origin`: created before enforcement and used before the daemon reached it;
/// tagged at `connect()` from the calling task's cgroup.
pub const ORIGIN_FIRST_USE: u8 = 3;

/// `SockTag::flow`: not known from the tag. The socket was tagged by the daemon or by a build
/// before the flow byte (whose `origin` was a u32 below 256, so this byte was 0), or its
/// TCP connection was accepted and has not been seen yet (a listener's tag, copied to every
/// socket it accepts, says this). Its judged flow, if any, is in `ENF_CONNS` or, for an
/// accepted connection, in `ENF_ACCEPTS`: the programs look there.
pub const FLOW_UNKNOWN: u8 = 0;
/// `SockTag::flow`: the socket's connection was judged as a flow nothing can revoke or
/// expire (same domain, no domain, or judged elsewhere), and it has no `ENF_CONNS` value:
/// its packets pass after this one read.
pub const FLOW_FREE: u8 = 1;
/// `SockTag::flow`: the socket's connection is judged by the policy in force, packet by
/// packet, from its `ENF_CONNS` value.
pub const FLOW_TRACKED: u8 = 2;

/// `PolicyConfig` action values.
pub const ACTION_ALLOW: u32 = 0;
pub const ACTION_DENY: u32 = 1;

/// `PortRange::protocols` bits.
pub const PROTO_TCP: u32 = 1;
pub const PROTO_UDP: u32 = 2;

/// `PolicyConfig::mode` and `ENF_MODES` values.
pub const MODE_ENFORCE: u32 = 0;
/// A flow the policy refuses is let through, and counted as "would deny".
pub const MODE_AUDIT: u32 = 1;

/// `PortRange::not_after` of an edge without an expiry.
pub const NEVER: u64 = u64::MAX;

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
    pub origin: u8,
    /// One of the `FLOW_*` values: what the socket's connection needs checked, so that a
    /// packet of a flow nothing can revoke costs this one storage read. It shares the four
    /// bytes that were a u32 `origin` in earlier builds, whose values fit the first byte
    /// (little-endian), so their pinned tags read here as `FLOW_UNKNOWN` and the layout, and
    /// with it the pinned map, stays the same across an upgrade.
    pub flow: u8,
    pub _pad: [u8; 2],
    /// cgroup id of the task that created (or first used) the socket: lets the daemon re-tag
    /// exactly the sockets created in a cgroup whose binding landed after they were made.
    pub cgroup_id: u64,
    /// Cookie of the network namespace the socket was created in (0 if unknown). Sockets
    /// outside the host's namespace belong to pods, whose addresses are learned from them.
    pub netns: u64,
}

/// `AddrOwner::kind`: an address of a workload namespace (a pod) whose sockets carry `domain`.
pub const ADDR_POD: u32 = 1;
/// `AddrOwner::netns` of an `ADDR_POD` address that another node of the fleet published for
/// one of its pods: no namespace here has this cookie (the kernel numbers namespace cookies
/// from 1), so the address is never taken for one of this host's own, and a build that
/// predates the fleet's addresses still judges it as a pod elsewhere, by its domain.
pub const NETNS_REMOTE: u64 = 0;
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
    /// Cookie of the namespace that holds the address; [`NETNS_REMOTE`] for a pod on
    /// another node.
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

/// `ENF_EDGES` key: chunk `chunk` of the ranges from `from` to `to` in `slot`. A pair with
/// edges always has chunk 0; chunk `n` exists when the pair has more than
/// `n * RANGES_PER_CHUNK` ranges. Twelve bytes: slot and chunk share a word, because the key
/// lives in the port scan's state on the stack of the ingress program, which has no byte to
/// spare (see `enforcer-ebpf/src/policy.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    pub from: u32,
    pub to: u32,
    pub slot: u16,
    pub chunk: u16,
}

/// An inclusive port range and the protocols one edge opens on it, while the edge is valid.
/// Times are `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`): the kernel compares them
/// with its own clock, so an edge expires on time whether or not the daemon runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    /// `PROTO_*` bits.
    pub protocols: u32,
    /// Index of the edge that opens this range (`ENF_EDGE_USE` key); never 0.
    pub edge: u32,
    pub _pad: u32,
    /// First nanosecond the range is valid (0: from boot).
    pub not_before: u64,
    /// First nanosecond it is no longer valid ([`NEVER`]: no expiry).
    pub not_after: u64,
}

/// `ENF_EDGES` value: up to [`RANGES_PER_CHUNK`] of the ranges of every edge from `from` to
/// `to`, in scan order (range `i` of the pair is range `i % RANGES_PER_CHUNK` of chunk
/// `i / RANGES_PER_CHUNK`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortChunk {
    /// Ranges of the whole pair (the same in every chunk of it), at most [`MAX_PORT_RANGES`].
    pub count: u32,
    pub _pad: u32,
    pub ranges: [PortRange; RANGES_PER_CHUNK],
}

impl PortChunk {
    /// The chunks that hold `ranges` (at most [`MAX_PORT_RANGES`] of them), numbered.
    pub fn split(ranges: &[PortRange]) -> impl Iterator<Item = (u16, Self)> + '_ {
        let ranges = &ranges[..ranges.len().min(MAX_PORT_RANGES)];
        let count = ranges.len() as u32;
        ranges
            .chunks(RANGES_PER_CHUNK)
            .enumerate()
            .map(move |(n, part)| {
                let mut chunk = Self {
                    count,
                    _pad: 0,
                    ranges: [PortRange::default(); RANGES_PER_CHUNK],
                };
                chunk.ranges[..part.len()].copy_from_slice(part);
                (n as u16, chunk)
            })
    }

    /// This chunk's ranges, as chunk `n` of its pair.
    pub fn own(&self, n: u16) -> &[PortRange] {
        let before = n as usize * RANGES_PER_CHUNK;
        let here = (self.count as usize)
            .min(MAX_PORT_RANGES)
            .saturating_sub(before)
            .min(RANGES_PER_CHUNK);
        &self.ranges[..here]
    }
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
    /// `MODE_*` of every domain without an `ENF_MODES` entry.
    pub mode: u32,
    pub _pad: u32,
}

/// `ENF_MODES` key; the value is a `MODE_*`. Only domains whose mode differs from the
/// policy's have an entry; the map is read only when a flow is about to be refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainKey {
    pub slot: u32,
    pub domain: u32,
}

/// `ConnState::status` values.
/// Nothing about the connection can change with the policy (same domain, or judged
/// elsewhere); packets pass without a look at the policy.
pub const CONN_UNTRACKED: u8 = 1;
/// Allowed by the policy of `generation` until `until`.
pub const CONN_ALLOWED: u8 = 2;
/// Refused by the policy of `generation`: every packet is dropped.
pub const CONN_REFUSED: u8 = 3;
/// Refused, but let through by audit mode (and counted once).
pub const CONN_AUDITED: u8 = 4;

/// `ENF_CONNS` value (socket storage of a connected socket) and `ENF_ACCEPTS` value: the
/// judged flow of a TCP connection or connected UDP socket, so that every later packet can
/// be checked against the policy in force without looking anything up again. A connection
/// whose edge is revoked or expires is dropped by the first packet that sees the change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// Generation of the policy the status was computed with.
    pub generation: u64,
    /// Boot-time nanosecond at which an allowed status must be re-checked (an edge's expiry).
    pub until: u64,
    /// Encoded `Peer` that opened the flow.
    pub from: u32,
    /// Encoded `Peer` it was opened to.
    pub to: u32,
    /// Index of the edge that allowed it, 0 if none.
    pub edge: u32,
    /// Destination port of the opening direction, host byte order.
    pub port: u16,
    /// `PROTO_*` bit.
    pub protocol: u8,
    /// `CONN_*`.
    pub status: u8,
}

/// `ENF_ACCEPTS` key: a TCP connection a listener let in, by its four-tuple as the accepted
/// socket sees it, until that socket's first packet moves the state into its `ENF_CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptKey {
    pub family: u8,
    pub _pad: u8,
    /// Network byte order.
    pub local_port: u16,
    /// Network byte order.
    pub remote_port: u16,
    pub _pad2: u16,
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

/// `ENF_COUNTS` key: an ordered pair of encoded peers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PairKey {
    pub from: u32,
    pub to: u32,
}

/// `ENF_COUNTS` value, updated atomically by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PairCounts {
    /// Refused calls and dropped packets.
    pub denied: u64,
    /// Flows audit mode let through that the policy refuses, once per flow.
    pub would_deny: u64,
}

/// `ENF_EDGE_USE` value (key: the edge index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EdgeUse {
    /// Connections and UDP flows the edge allowed.
    pub connections: u64,
    /// Boot-time nanosecond of the last one.
    pub last_used: u64,
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
    // Where earlier builds' u32 `origin` kept its value (see `SockTag::flow`).
    assert!(core::mem::offset_of!(SockTag, origin) == 4);
    assert!(core::mem::offset_of!(SockTag, flow) == 5);
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
    assert!(size_of::<PortRange>() == 32);
    assert!(size_of::<PortChunk>() == 8 + 32 * RANGES_PER_CHUNK);
    assert!(size_of::<PolicyConfig>() == 24);
    assert!(size_of::<DomainKey>() == 8);
    assert!(size_of::<ConnState>() == 32);
    assert!(size_of::<AcceptKey>() == 40);
    assert!(size_of::<PairKey>() == 8);
    assert!(size_of::<PairCounts>() == 16);
    assert!(size_of::<EdgeUse>() == 16);
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
    unsafe impl aya::Pod for PortChunk {}
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for DomainName {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for AddrOwner {}
    unsafe impl aya::Pod for HostConfig {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for NetnsSeen {}
    unsafe impl aya::Pod for DomainKey {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for AcceptKey {}
    unsafe impl aya::Pod for PairKey {}
    unsafe impl aya::Pod for PairCounts {}
    unsafe impl aya::Pod for EdgeUse {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16) -> PortRange {
        PortRange {
            first,
            last: first,
            protocols: PROTO_TCP,
            edge: 1,
            _pad: 0,
            not_before: 0,
            not_after: NEVER,
        }
    }

    #[test]
    fn chunks_hold_a_pairs_ranges_in_scan_order() {
        let ranges: std::vec::Vec<PortRange> = (1..=9).map(range).collect();
        let chunks: std::vec::Vec<(u16, PortChunk)> = PortChunk::split(&ranges).collect();
        assert_eq!(chunks.len(), 3);
        let read: std::vec::Vec<PortRange> = chunks
            .iter()
            .flat_map(|(n, chunk)| chunk.own(*n).iter().copied())
            .collect();
        assert_eq!(read, ranges);
        assert!(chunks.iter().all(|(_, c)| c.count == 9));
    }

    #[test]
    fn a_pair_keeps_at_most_the_limit() {
        let ranges: std::vec::Vec<PortRange> = (1..=70).map(range).collect();
        let chunks: std::vec::Vec<(u16, PortChunk)> = PortChunk::split(&ranges).collect();
        assert_eq!(chunks.len(), MAX_CHUNKS);
        assert_eq!(chunks[0].1.count as usize, MAX_PORT_RANGES);
    }
}
