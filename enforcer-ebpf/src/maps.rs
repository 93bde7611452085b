//! Every map the programs use. Layouts and contracts are documented next to the key and value
//! types in `enforcer_common::maps`; the daemon pins all of them by name under its pin
//! directory, so they outlive any one daemon process.

use aya_ebpf::{
    bindings::{BPF_F_CLONE, BPF_F_NO_PREALLOC, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use enforcer_common::{
    event::Event,
    maps::{
        AcceptKey, AddrKey, AddrOwner, BindingKey, ConnState, DomainKey, DomainName, EdgeKey,
        EdgeUse, EndpointKey, FlowKey, FlowState, HostConfig, NetnsSeen, NewNetns, PairCounts,
        PairKey, PolicyConfig, PortChunk, SLOTS, SockTag,
        capacity::{
            MAX_BINDINGS, MAX_DOMAINS, MAX_EDGE_CHUNKS, MAX_EDGES, MAX_ENDPOINTS, MAX_MODES,
        },
    },
};

/// A socket storage map, declared by hand because aya-ebpf's `SkStorage` fixes its flags.
/// Field names and pointer-to-array types follow the BTF map definition convention libbpf
/// and aya parse (`type`, `key`, `value`, `max_entries`, `map_flags`).
#[repr(C)]
pub struct Storage<V, const FLAGS: usize> {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; FLAGS],
}

// SAFETY: the fields are BTF placeholders the loader replaces; they are never dereferenced.
unsafe impl<V, const FLAGS: usize> Sync for Storage<V, FLAGS> {}

impl<V, const FLAGS: usize> Storage<V, FLAGS> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The map pointer helpers expect: the relocated address of the definition.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

const MAX_ADDRS: usize = 65_536;
const MAX_NETNS: usize = 16_384;
/// UDP flows remembered for replies; the least recently used is forgotten first, after which
/// a reply is judged as a new datagram in its own direction. An LRU map is allocated whole
/// when created (the kernel refuses `BPF_F_NO_PREALLOC` for it): 65,536 flows cost about
/// 7 MB of kernel memory, where 262,144 cost 28 MB on every host, busy or not.
const MAX_FLOWS: usize = 65_536;
const NOTIFY_BYTES: usize = 64 * 1024;
/// Connections accepted but not yet seen by their own socket; normally an entry lives for
/// one round trip, so the least recently used is long gone when it is evicted.
const MAX_ACCEPTS: usize = 65_536;
/// Connected UDP sockets the daemon can find to end; the oldest connect is forgotten first
/// (its packets are still checked through its socket storage).
const MAX_UDP_CONNS: usize = 65_536;
/// Domain pairs with refusal or audit counts; past this, new pairs go uncounted.
const MAX_PAIRS: usize = 65_536;
/// About 37,000 events of 112 bytes (record and header): several seconds of refusals at the
/// highest rates the benchmarks reach, while the daemon drains it continuously.
const EVENTS_BYTES: usize = 4 << 20;
/// Refused handshakes remembered so that a peer's retransmissions of one refused SYN count
/// and report once.
const MAX_REFUSALS: usize = 65_536;

/// `BPF_F_CLONE` makes the kernel copy a listener's tag to every socket it accepts
/// (`bpf_sk_storage_clone`, called from `sk_clone_lock`), so accepted sockets carry their
/// listener's domain.
#[btf_map(name = "ENF_TAGS")]
pub static TAGS: Storage<SockTag, { (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize }> = Storage::new();

/// Not cloned: a listener has no connection of its own to hand down.
#[btf_map(name = "ENF_CONNS")]
pub static CONNS: Storage<ConnState, { BPF_F_NO_PREALLOC as usize }> = Storage::new();

#[btf_map(name = "ENF_ACCEPTS")]
pub static ACCEPTS: LruHashMap<AcceptKey, ConnState, MAX_ACCEPTS> = LruHashMap::new();

#[btf_map(name = "ENF_UDP_CONNS")]
pub static UDP_CONNS: LruHashMap<u64, ConnState, MAX_UDP_CONNS> = LruHashMap::new();

#[btf_map(name = "ENF_MODES")]
pub static MODES: HashMap<DomainKey, u32, MAX_MODES, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_COUNTS")]
pub static COUNTS: PerCpuHashMap<PairKey, PairCounts, MAX_PAIRS, { BPF_F_NO_PREALLOC as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "ENF_EDGE_USE")]
pub static EDGE_USE: PerCpuHashMap<u32, EdgeUse, MAX_EDGES, { BPF_F_NO_PREALLOC as usize }> =
    PerCpuHashMap::new();

#[btf_map(name = "ENF_BINDINGS")]
pub static BINDINGS: HashMap<BindingKey, u32, MAX_BINDINGS, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_ENDPOINTS")]
pub static ENDPOINTS: LpmTrie<EndpointKey, u32, MAX_ENDPOINTS> = LpmTrie::new();

#[btf_map(name = "ENF_EDGES")]
pub static EDGES: HashMap<EdgeKey, PortChunk, MAX_EDGE_CHUNKS, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_POLICY")]
pub static POLICY: Array<PolicyConfig, { SLOTS as usize }> = Array::new();

#[btf_map(name = "ENF_ACTIVE")]
pub static ACTIVE: Array<u32, 1> = Array::new();

/// Only the daemon reads and writes this map; the programs never touch it. It is defined here
/// so that it is created and pinned with the rest and lives exactly as long as the tags.
#[btf_map(name = "ENF_DOMAINS")]
pub static DOMAINS: HashMap<u32, DomainName, MAX_DOMAINS, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_ADDRS")]
pub static ADDRS: HashMap<AddrKey, AddrOwner, MAX_ADDRS, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_HOST")]
pub static HOST: Array<HostConfig, 1> = Array::new();

#[btf_map(name = "ENF_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState, MAX_FLOWS> = LruHashMap::new();

#[btf_map(name = "ENF_NETNS")]
pub static NETNS: HashMap<u64, NetnsSeen, MAX_NETNS, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

#[btf_map(name = "ENF_NOTIFY")]
pub static NOTIFY: RingBuf<NewNetns, NOTIFY_BYTES> = RingBuf::new();

#[btf_map(name = "ENF_EVENTS")]
pub static EVENTS: RingBuf<Event, EVENTS_BYTES> = RingBuf::new();

/// Events dropped because the ring buffer was full, per CPU.
#[btf_map(name = "ENF_EVENTS_LOST")]
pub static EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Four-tuple of a refused handshake to the boot-time nanosecond it was first refused.
#[btf_map(name = "ENF_REFUSALS")]
pub static REFUSALS: LruHashMap<AcceptKey, u64, MAX_REFUSALS> = LruHashMap::new();
