//! Policy -> map entries, as a pure function: no kernel, no file system (cgroup paths are
//! resolved through a caller-supplied function), so every rule of the translation is tested
//! on the host.

use std::collections::{BTreeMap, HashMap};

use enforcer_common::{
    maps::{
        ACTION_ALLOW, ACTION_DENY, FAMILY_V4, FAMILY_V6, MAX_CGROUP_DEPTH, MAX_PORT_RANGES,
        MODE_AUDIT, MODE_ENFORCE, NEVER, PROTO_TCP, PROTO_UDP, PortRange, RANGES_PER_CHUNK,
        capacity::{
            MAX_BINDINGS, MAX_DOMAINS, MAX_EDGE_CHUNKS, MAX_EDGES, MAX_ENDPOINTS, MAX_MODES,
            per_slot,
        },
    },
    verdict::{PortMatch, Rules, ports_allow},
};
use enforcer_policy::{Action, CgroupPath, Mode, Policy, Protocol, TrustDomain};
use ipnet::IpNet;

use crate::pipeline::{
    clock::Clocks,
    edges::{LiveEdge, Trust},
    pair_table::{Pair, PairTable},
    registry::Registry,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "edges from {from} to {to} open {count} separate port ranges; at most {MAX_PORT_RANGES} \
         per domain pair are supported (merge adjacent ports into ranges)"
    )]
    TooManyPortRanges {
        from: String,
        to: String,
        count: usize,
    },
    #[error(
        "cgroup {path} is {depth} levels deep; bindings deeper than {} levels are not supported",
        MAX_CGROUP_DEPTH - 1
    )]
    CgroupTooDeep { path: String, depth: usize },
    #[error("no domain ids left")]
    OutOfDomainIds,
    /// `trust domain ids` counts every domain the kernel maps have given an id since they were
    /// created (ids are never reused), not only this policy's, and says so.
    #[error("the policy needs {count} {what}; the kernel maps hold at most {max}")]
    OverCapacity {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

/// A binding as compiled: the cgroup id is `None` when the cgroup does not exist (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub domain: u32,
    pub path: CgroupPath,
    pub cgroup_id: Option<u64>,
}

/// An endpoint prefix as the LPM trie stores it (without slot and header bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub family: u8,
    pub addr: [u8; 16],
    pub len: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub unlabeled: u32,
    pub external: u32,
    /// `MODE_*` of domains not in `modes`.
    pub mode: u32,
    /// Domains whose mode differs from `mode`, with theirs, by domain.
    pub modes: Vec<(u32, u32)>,
    pub bindings: Vec<Binding>,
    pub endpoints: Vec<(Prefix, u32)>,
    /// (from, to) -> the ranges of every edge between them, each edge's merged, with the
    /// edge's index and window; at most `MAX_PORT_RANGES` per pair.
    pub edges: PairTable,
    /// The registry with ids for any domain this policy names for the first time.
    pub registry: Registry,
}

impl Compiled {
    /// The cgroup id each bound path compiled to (its first binding's, should it have two),
    /// by path: looked up for 10,000 bindings at scale, never by searching the list.
    pub fn cgroup_ids(&self) -> HashMap<&CgroupPath, Option<u64>> {
        let mut ids = HashMap::with_capacity(self.bindings.len());
        for b in &self.bindings {
            ids.entry(&b.path).or_insert(b.cgroup_id);
        }
        ids
    }
}

/// The compiled policy as `verdict::decide` reads it, for judging in userspace exactly as the
/// programs judge in the kernel.
pub struct CompiledRules<'a> {
    compiled: &'a Compiled,
}

impl<'a> CompiledRules<'a> {
    pub fn new(compiled: &'a Compiled) -> Self {
        Self { compiled }
    }
}

impl Rules for CompiledRules<'_> {
    fn ports(&self, from: u32, to: u32, protocol: u32, port: u16, now: u64) -> Option<PortMatch> {
        self.compiled
            .edges
            .get((from, to))
            .map(|ranges| ports_allow(ranges, protocol, port, now))
    }

    fn mode(&self, domain: u32) -> Option<u32> {
        self.compiled
            .modes
            .binary_search_by_key(&domain, |m| m.0)
            .ok()
            .and_then(|at| self.compiled.modes.get(at))
            .map(|m| m.1)
    }
}

/// Whether `policy` compiles on its own, as on a host whose maps are empty: what `policy
/// check` and a starting daemon check before anything changes (the capacities of the kernel
/// maps, cgroup depth, port ranges per pair). A running daemon checks again against the
/// domain ids its maps already hold.
pub fn check_alone(policy: &Policy) -> anyhow::Result<()> {
    let clocks = Clocks::now();
    let (edges, _) = crate::pipeline::edges::Book::default().resolve(policy, clocks.wall_now())?;
    compile(policy, &edges, Registry::default(), &clocks, |_| None)?;
    Ok(())
}

/// Compiles `policy` with the federation `edges` (the file's and the grants', as resolved
/// by `edges::Book`); edge windows are converted to the kernel's clock with `clocks`.
pub fn compile(
    policy: &Policy,
    edges: &[LiveEdge],
    mut registry: Registry,
    clocks: &Clocks,
    resolve_cgroup: impl Fn(&CgroupPath) -> Option<u64>,
) -> Result<Compiled, CompileError> {
    let mut id_of = |name: &str| {
        registry
            .get_or_assign(name)
            .ok_or(CompileError::OutOfDomainIds)
    };
    // Edges name their ends through the declared domain's own name (the parser shares it),
    // so an end's id is found by the address of its text: 200,000 lookups at 100,000 edges
    // that neither hash nor compare names. An end with a copy of its own (a grant's) is
    // found by name.
    let mut by_address: HashMap<*const u8, u32> = HashMap::with_capacity(policy.domains.len());
    let mut bindings = Vec::new();
    let mut endpoints = Vec::new();
    let mut modes = Vec::new();
    for domain in &policy.domains {
        let id = id_of(domain.name.as_str())?;
        by_address.insert(domain.name.as_str().as_ptr(), id);
        if let Some(own) = domain.mode
            && own != policy.defaults.mode
        {
            modes.push((id, mode(own)));
        }
        for path in &domain.cgroups {
            let depth = path.as_str().split('/').filter(|c| !c.is_empty()).count();
            if depth >= MAX_CGROUP_DEPTH as usize {
                return Err(CompileError::CgroupTooDeep {
                    path: path.to_string(),
                    depth,
                });
            }
            bindings.push(Binding {
                domain: id,
                path: path.clone(),
                cgroup_id: resolve_cgroup(path),
            });
        }
        endpoints.extend(domain.endpoints.iter().map(|net| (prefix(net), id)));
    }
    let mut entries: Vec<(Pair, PortRange)> = Vec::with_capacity(edges.len());
    // A suspended edge is left out: the kernel then refuses its traffic as if it were revoked.
    for live in edges
        .iter()
        .filter(|e| !matches!(e.trust, Trust::Suspended(_)))
    {
        let edge = &live.edge;
        let mut end_id = |end: &TrustDomain| match by_address.get(&end.as_str().as_ptr()) {
            Some(&id) => Ok(id),
            None => id_of(end.as_str()),
        };
        let pair = (end_id(&edge.from)?, end_id(&edge.to)?);
        let protocols = match edge.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Any => PROTO_TCP | PROTO_UDP,
        };
        let not_before = edge.not_before.map_or(0, |t| clocks.boot_ns(t));
        let not_after = live.ends().map_or(NEVER, |t| clocks.boot_ns(t));
        let range = |(first, last, protocols)| {
            (
                pair,
                PortRange {
                    first,
                    last,
                    protocols,
                    edge: live.index,
                    _pad: 0,
                    not_before,
                    not_after,
                },
            )
        };
        // Most edges open one range: nothing to merge, and no allocation for 100,000 of them.
        if let [only] = edge.ports.as_slice() {
            entries.push(range((only.first, only.last, protocols)));
        } else {
            let spans: Vec<(u16, u16, u32)> = edge
                .ports
                .iter()
                .map(|p| (p.first, p.last, protocols))
                .collect();
            entries.extend(merge_ranges(&spans).into_iter().map(range));
        }
    }
    let table = PairTable::from_entries(entries);
    for (pair, ranges) in table.iter() {
        if ranges.len() > MAX_PORT_RANGES {
            let name = |id| registry.name_of(id).unwrap_or_default().to_owned();
            return Err(CompileError::TooManyPortRanges {
                from: name(pair.0),
                to: name(pair.1),
                count: ranges.len(),
            });
        }
    }
    modes.sort_unstable();
    let chunks = table
        .iter()
        .map(|(_, ranges)| ranges.len().div_ceil(RANGES_PER_CHUNK))
        .sum();
    for (what, count, max) in [
        (
            "trust domain ids (this policy's domains and every other domain named on this \
             host since its maps were made: ids are never reused until `enforcer teardown`)",
            registry.len(),
            MAX_DOMAINS,
        ),
        ("cgroup bindings", bindings.len(), per_slot(MAX_BINDINGS)),
        (
            "endpoint prefixes",
            endpoints.len(),
            per_slot(MAX_ENDPOINTS),
        ),
        (
            "edge entries (a domain pair takes one per four port ranges)",
            chunks,
            per_slot(MAX_EDGE_CHUNKS),
        ),
        (
            "domains with their own mode",
            modes.len(),
            per_slot(MAX_MODES),
        ),
        ("edges", edges.len(), MAX_EDGES),
    ] {
        if count > max {
            return Err(CompileError::OverCapacity { what, count, max });
        }
    }
    Ok(Compiled {
        unlabeled: action(policy.defaults.unlabeled),
        external: action(policy.defaults.external),
        mode: mode(policy.defaults.mode),
        modes,
        bindings,
        endpoints,
        edges: table,
        registry,
    })
}

fn mode(mode: Mode) -> u32 {
    match mode {
        Mode::Enforce => MODE_ENFORCE,
        Mode::Audit => MODE_AUDIT,
    }
}

fn action(action: Action) -> u32 {
    match action {
        Action::Allow => ACTION_ALLOW,
        Action::Deny => ACTION_DENY,
    }
}

fn prefix(net: &IpNet) -> Prefix {
    let mut addr = [0u8; 16];
    let family = match net {
        IpNet::V4(v4) => {
            addr[..4].copy_from_slice(&v4.network().octets());
            FAMILY_V4
        }
        IpNet::V6(v6) => {
            addr.copy_from_slice(&v6.network().octets());
            FAMILY_V6
        }
    };
    Prefix {
        family,
        addr,
        len: net.prefix_len(),
    }
}

/// One edge's (first, last, protocols) spans, coalesced per protocol where they overlap or
/// touch, then joined where both protocols have the same span. The kernel scans ranges
/// linearly, so fewer entries means fewer comparisons and more room under
/// `MAX_PORT_RANGES`.
fn merge_ranges(spans: &[(u16, u16, u32)]) -> Vec<(u16, u16, u32)> {
    let mut per_protocol = Vec::new();
    for bit in [PROTO_TCP, PROTO_UDP] {
        let mut own: Vec<(u16, u16)> = spans
            .iter()
            .filter(|s| s.2 & bit != 0)
            .map(|s| (s.0, s.1))
            .collect();
        own.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (first, last) in own {
            match merged.last_mut() {
                Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => {
                    prev.1 = prev.1.max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        per_protocol.extend(merged.into_iter().map(|(first, last)| (first, last, bit)));
    }
    let mut joined: BTreeMap<(u16, u16), u32> = BTreeMap::new();
    for (first, last, bit) in per_protocol {
        *joined.entry((first, last)).or_default() |= bit;
    }
    joined
        .into_iter()
        .map(|((first, last), protocols)| (first, last, protocols))
        .collect()
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::pipeline::edges::Book;

    fn parse(text: &str) -> Policy {
        enforcer_policy::parse("test.yaml", text).expect("test policy is valid")
    }

    const SEC: u64 = 1_000_000_000;

    /// Wall time 2026-11-23T10:00:00Z is boot-clock second 1000.
    fn clocks() -> Clocks {
        Clocks {
            wall: "2026-11-23T10:00:00Z"
                .parse::<Timestamp>()
                .expect("timestamp")
                .as_nanosecond(),
            boot: 1000 * SEC,
        }
    }

    fn compile_text(text: &str, registry: &Registry) -> Result<Compiled, CompileError> {
        let policy = parse(text);
        let (edges, _) = Book::default()
            .resolve(&policy, clocks().wall_now())
            .expect("edges resolve");
        compile(&policy, &edges, registry.clone(), &clocks(), resolve)
    }

    const TWO_DOMAINS: &str = "
version: 1
defaults: {unlabeled: deny, external: allow}
domains:
  - name: prod.example.org
    cgroups: [/workloads/prod, /missing]
    endpoints: [10.10.0.0/16, 'fd00:10::/64']
  - name: staging.example.org
    cgroups: [/workloads/staging]
federation:
  - {from: staging.example.org, to: prod.example.org, protocol: tcp, ports: [5432, '8000-8099', 8100], owner: o, reason: r}
  - {from: staging.example.org, to: prod.example.org, protocol: udp, ports: ['8000-8099'], owner: o, reason: r, ttl: 3s}
";

    fn resolve(path: &CgroupPath) -> Option<u64> {
        match path.as_str() {
            "/workloads/prod" => Some(100),
            "/workloads/staging" => Some(200),
            _ => None,
        }
    }

    fn range(first: u16, last: u16, protocols: u32, edge: u32, not_after: u64) -> PortRange {
        PortRange {
            first,
            last,
            protocols,
            edge,
            _pad: 0,
            not_before: 0,
            not_after,
        }
    }

    #[test]
    fn compiles_bindings_endpoints_edges_and_defaults() {
        let c = compile_text(TWO_DOMAINS, &Registry::default()).expect("compiles");
        assert_eq!((c.unlabeled, c.external), (ACTION_DENY, ACTION_ALLOW));
        assert_eq!((c.mode, c.modes.as_slice()), (MODE_ENFORCE, &[][..]));
        let ids: Vec<_> = c.bindings.iter().map(|b| (b.domain, b.cgroup_id)).collect();
        assert_eq!(ids, [(1, Some(100)), (1, None), (2, Some(200))]);
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].0.family, FAMILY_V4);
        assert_eq!(c.endpoints[0].0.len, 16);
        assert_eq!(&c.endpoints[0].0.addr[..4], &[10, 10, 0, 0]);
        assert_eq!(c.endpoints[1].0.family, FAMILY_V6);
        assert_eq!(
            c.edges.get((2, 1)).expect("the pair has ranges"),
            [
                range(5432, 5432, PROTO_TCP, 1, NEVER),
                range(8000, 8100, PROTO_TCP, 1, NEVER),
                range(8000, 8099, PROTO_UDP, 2, 1003 * SEC),
            ],
            "each edge keeps its own ranges, index and deadline"
        );
        assert_eq!(c.edges.get((1, 2)), None, "edges are directed");
    }

    #[test]
    fn windows_are_converted_to_the_boot_clock() {
        let text = "
version: 1
domains: [{name: a.org}, {name: b.org}]
federation:
  - {from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r, not_before: '2026-11-23T10:00:10Z', expires: '2026-11-23T11:00:20+01:00'}
";
        let c = compile_text(text, &Registry::default()).expect("compiles");
        let r = c.edges.get((1, 2)).expect("the pair has ranges")[0];
        assert_eq!((r.not_before, r.not_after), (1010 * SEC, 1020 * SEC));
    }

    #[test]
    fn modes_record_only_domains_that_differ_from_the_default() {
        let text = "
version: 1
defaults: {mode: audit}
domains: [{name: a.org}, {name: b.org, mode: enforce}, {name: c.org, mode: audit}]
";
        let c = compile_text(text, &Registry::default()).expect("compiles");
        assert_eq!(c.mode, MODE_AUDIT);
        assert_eq!(c.modes, [(2, MODE_ENFORCE)]);
    }

    #[test]
    fn ids_are_stable_across_compiles_and_reorderings() {
        let first = compile_text(TWO_DOMAINS, &Registry::default()).expect("compiles");
        let reordered = "
version: 1
domains:
  - name: new.example.org
  - name: staging.example.org
  - name: prod.example.org
";
        let second = compile_text(reordered, &first.registry).expect("compiles");
        assert_eq!(second.registry.get("prod.example.org"), Some(1));
        assert_eq!(second.registry.get("staging.example.org"), Some(2));
        assert_eq!(second.registry.get("new.example.org"), Some(3));
    }

    #[test]
    fn any_protocol_and_overlaps_merge() {
        let merged = merge_ranges(&[
            (10, 20, PROTO_TCP | PROTO_UDP),
            (15, 30, PROTO_TCP),
            (31, 31, PROTO_TCP),
        ]);
        assert_eq!(merged, [(10, 20, PROTO_UDP), (10, 31, PROTO_TCP)]);
        let full = merge_ranges(&[(1, 65535, PROTO_TCP | PROTO_UDP)]);
        assert_eq!(full, [(1, 65535, PROTO_TCP | PROTO_UDP)]);
    }

    #[test]
    fn too_many_ranges_for_one_pair_is_refused_by_name() {
        let ports: Vec<String> = (0..=MAX_PORT_RANGES)
            .map(|i| (1000 + 2 * i).to_string())
            .collect();
        let text = format!(
            "version: 1\ndomains: [{{name: a.org}}, {{name: b.org}}]\nfederation:\n  - {{from: a.org, to: b.org, protocol: tcp, ports: [{}], owner: o, reason: r}}\n",
            ports.join(", ")
        );
        let err = compile_text(&text, &Registry::default()).expect_err("too many");
        assert_eq!(
            err,
            CompileError::TooManyPortRanges {
                from: "a.org".into(),
                to: "b.org".into(),
                count: MAX_PORT_RANGES + 1
            }
        );
    }

    #[test]
    fn deep_bindings_are_refused() {
        let deep = "/a".repeat(MAX_CGROUP_DEPTH as usize);
        let text = format!("version: 1\ndomains: [{{name: a.org, cgroups: ['{deep}']}}]\n");
        let err = compile_text(&text, &Registry::default()).expect_err("too deep");
        assert!(matches!(err, CompileError::CgroupTooDeep { .. }));
    }
}
