//! What `enforcer status` shows, built by the daemon from its live state and printed by the
//! CLI as text or JSON (`-o json`, a stable schema scripts may rely on).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::edge::EdgeView;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub daemon_pid: u32,
    pub generation: u64,
    pub policy_file: String,
    pub pin_dir: String,
    pub cgroup_mount: String,
    pub cgroup_root: String,
    pub defaults: Defaults,
    /// The mode of domains that do not set their own: "enforce" or "audit".
    pub mode: String,
    pub domains: Vec<DomainStatus>,
    pub attestation: AttestationStatus,
    /// The trust bundles the policy names.
    pub bundles: Vec<BundleStatus>,
    pub edges: Vec<EdgeView>,
    pub audit: AuditStatus,
    pub events: EventsStatus,
    pub programs: Vec<ProgramStatus>,
    /// Optional kernel features: which are off here and what that changes.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Entries of the policy maps in the slot in force.
    pub maps: Vec<MapFill>,
    /// What every pinned map costs the kernel.
    #[serde(default)]
    pub memory: Vec<MapMemory>,
    /// Where the policy in force came from at start and how reloads of `--policy FILE`
    /// went; `None` from a daemon that predates it.
    #[serde(default)]
    pub policy_source: Option<PolicySourceStatus>,
    /// The pinned maps this daemon's start migrated from an earlier layout (none when the
    /// pins were already in this build's layout).
    #[serde(default)]
    pub upgraded_maps: Vec<UpgradedMap>,
    /// The daemon's own build (`enforcer --version` of its binary); `None` from a daemon that
    /// predates it.
    #[serde(default)]
    pub build: Option<Build>,
    /// The SPIFFE Workload API client; `None` when the daemon has none.
    #[serde(default)]
    pub workload_api: Option<WorkloadApiStatus>,
}

/// The daemon's SPIFFE Workload API client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadApiStatus {
    /// `unix:/PATH`.
    pub endpoint: String,
    /// Whether a stream to the agent is open now.
    pub connected: bool,
    /// The last failure (connecting, a stream ending, a message refused), until the next
    /// message is taken.
    pub error: Option<String>,
    /// Messages taken (bundle sets and SVIDs) since the daemon started.
    pub updates: u64,
    pub last_update: Option<Timestamp>,
    /// The trust domains in the agent's last bundle set.
    pub domains: Vec<String>,
    /// The daemon's own SVID from it, when it presents one from there.
    pub svid: Option<String>,
    pub svid_expires: Option<Timestamp>,
}

/// Which build a binary is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    /// The git commit, with `-dirty` when the sources differed from it; "unknown" outside git.
    pub commit: String,
    /// When it was built (RFC 3339).
    pub built: String,
    /// The SHA-256 of the embedded eBPF object.
    pub ebpf_sha256: String,
}

/// The daemon's `--policy FILE`: whether it took over at start, and its reloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySourceStatus {
    /// `--policy FILE` as given.
    pub file: String,
    /// The SHA-256 of the file's content as the daemon last read it (at start or reload).
    pub sha256: String,
    /// "taken": the file was put in force at start; "kept": it had not changed since the
    /// daemon last read it, so the policy last applied (`policy_file`) stayed.
    pub at_start: String,
    /// Why, in words.
    pub reason: String,
    /// Why the last reload of the file was refused (the running policy stayed); `None` when
    /// none was refused since the last one applied.
    pub last_reload_error: Option<String>,
    /// "file" (`--policy FILE`) or "etcd" (`--source etcd`).
    #[serde(default = "file_kind")]
    pub kind: String,
    /// The revision of the fleet document in force (etcd only).
    #[serde(default)]
    pub revision: Option<i64>,
    /// When the daemon last found its source's policy current: the file read, or the fleet's
    /// document confirmed as the latest.
    #[serde(default)]
    pub last_sync: Option<Timestamp>,
    /// Whether the daemon cannot confirm it enforces its source's latest policy (etcd
    /// unreachable or without a quorum); it keeps enforcing the last good one meanwhile.
    #[serde(default)]
    pub stale: bool,
    /// Why the source's last document was refused, or why the source cannot be read.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub etcd: Option<EtcdSourceStatus>,
}

fn file_kind() -> String {
    "file".into()
}

/// The fleet's etcd cluster, as `--source etcd` names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdSourceStatus {
    pub endpoints: String,
    pub prefix: String,
    pub node: String,
    /// The pod addresses nodes publish for each other; `None` from a daemon that predates
    /// them.
    #[serde(default)]
    pub addresses: Option<FleetAddressStatus>,
}

/// Identity across hosts: this node's pod addresses as it publishes them, and the other
/// nodes' as its kernel holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetAddressStatus {
    /// This node's pod addresses (of pods in a domain) it last published.
    pub published: usize,
    /// The other nodes whose address records it holds.
    pub peer_nodes: usize,
    /// The other nodes' addresses in the kernel's address map now.
    pub loaded: usize,
    /// Addresses two nodes published with different domains: loaded for neither.
    pub conflicts: usize,
    /// Addresses published with a domain this node's policy does not have: not loaded.
    pub unknown_domain: usize,
    /// Why this node cannot publish its addresses or read the other nodes' (its etcd role
    /// lacks the keys, say); the policy is followed all the same.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Defaults {
    pub unlabeled: String,
    pub external: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainStatus {
    pub name: String,
    pub id: u32,
    /// "enforce" or "audit", the domain's own or the default.
    pub mode: String,
    pub bindings: Vec<BindingStatus>,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingStatus {
    pub cgroup: String,
    /// `None` when the cgroup does not exist.
    pub cgroup_id: Option<u64>,
    /// "bound", "missing" (no such cgroup) or "outside-root" (not under --cgroup-root, so
    /// never enforced by this daemon).
    pub state: String,
}

/// The attestation socket and the cgroups bound by SVID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttestationStatus {
    /// `None` when the daemon has no `--attest-socket`.
    pub socket: Option<String>,
    /// Set when the policy has attested domains that nothing can bind.
    pub warning: Option<String>,
    pub bindings: Vec<AttestedStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttestedStatus {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub domain: String,
    pub spiffe_id: String,
    pub expires: jiff::Timestamp,
    /// The process that attested.
    pub pid: u32,
}

/// What the programs counted since enforcement started (the counters live in pinned maps, so
/// they survive daemon restarts; teardown resets them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditStatus {
    /// Flows audit mode let through that the policy refuses, once per flow.
    pub would_deny: u64,
    /// Refused calls, handshakes and datagrams, and live connections ended in the kernel.
    pub denied: u64,
    pub pairs: Vec<PairStatus>,
}

/// Counts for one ordered pair of peers: a domain name, "unlabeled" or "external".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairStatus {
    pub from: String,
    pub to: String,
    pub would_deny: u64,
    pub denied: u64,
}

/// Where decision events go, and how many never got there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsStatus {
    pub log: String,
    /// Events the programs dropped because the ring buffer was full, since enforcement
    /// started.
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub program: String,
    pub attach_point: String,
    pub link_pin: String,
    pub link_id: u32,
    pub prog_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
}

/// How `status` shows one domain's bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleStatus {
    pub domain: String,
    /// The file read, the URL of the endpoint it is fetched from, or `Workload API
    /// unix:/PATH`.
    pub path: String,
    /// Where the bundle comes from: "file", "endpoint" or "workload_api" (absent from daemons
    /// before bundle endpoints, whose bundles were all files).
    #[serde(default = "file_source")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointStatus>,
    /// "valid", "expired", "not-yet-valid" or "unusable" (unreadable or failing the checks).
    pub state: String,
    /// Why it is not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The earliest end of an authority's validity.
    pub expires: Option<Timestamp>,
    /// Set when a valid bundle lapses within the warning period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub authorities: Vec<AuthorityStatus>,
}

fn file_source() -> String {
    "file".into()
}

/// How `status` shows a bundle endpoint (SPIFFE Federation) and its fetches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub url: String,
    /// "https_web" or "https_spiffe".
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// The bundle file in force until the first fetch succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// Why the last fetch failed; absent after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub next_fetch: Option<Timestamp>,
    /// The wait between fetches in force: the document's refresh hint, bounded.
    pub refresh_seconds: u64,
    pub fetches: u64,
    pub failures: u64,
    /// Fetches that brought a bundle different from the one before.
    pub changes: u64,
}

/// An optional feature: whether this kernel has it and what is different without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub enabled: bool,
    /// Without it: what the daemon does instead, and the probe's finding.
    pub detail: String,
}

/// What one pinned map costs the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    pub map: String,
    /// Kernel memory charged for the map now.
    pub bytes: u64,
    pub max_entries: u32,
    /// The pinned map's layout (0 from a daemon that predates them).
    #[serde(default)]
    pub key_size: u32,
    #[serde(default)]
    pub value_size: u32,
}

/// A pinned map this daemon's start carried over from an earlier build's layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradedMap {
    pub map: String,
    /// What changed in its layout.
    pub change: String,
    /// Entries carried into the new layout.
    pub entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityStatus {
    pub sha256: String,
    pub subject: String,
    pub not_after: Timestamp,
}
