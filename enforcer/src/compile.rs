//! Policy -> map entries, as a pure function: no kernel, no file system (cgroup paths are
//! resolved through a caller-supplied function), so every rule of the translation is tested
//! on the host.

use std::collections::BTreeMap;

use enforcer_common::maps::{
    ACTION_ALLOW, ACTION_DENY, FAMILY_V4, FAMILY_V6, MAX_CGROUP_DEPTH, MAX_PORT_RANGES, PROTO_TCP,
    PROTO_UDP, PortRange,
};
use enforcer_policy::{Action, CgroupPath, Policy, Protocol};
use ipnet::IpNet;

use crate::registry::Registry;

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
    pub bindings: Vec<Binding>,
    pub endpoints: Vec<(Prefix, u32)>,
    /// (from, to) -> merged ranges, at most `MAX_PORT_RANGES` each.
    pub edges: BTreeMap<(u32, u32), Vec<PortRange>>,
    /// The registry with ids for any domain this policy names for the first time.
    pub registry: Registry,
}

pub fn compile(
    policy: &Policy,
    registry: &Registry,
    resolve_cgroup: impl Fn(&CgroupPath) -> Option<u64>,
) -> Result<Compiled, CompileError> {
    let mut registry = registry.clone();
    let mut id_of = |name: &str| {
        registry
            .get_or_assign(name)
            .ok_or(CompileError::OutOfDomainIds)
    };
    let mut bindings = Vec::new();
    let mut endpoints = Vec::new();
    for domain in &policy.domains {
        let id = id_of(domain.name.as_str())?;
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
    let mut by_pair: BTreeMap<(u32, u32), Vec<PortRange>> = BTreeMap::new();
    for edge in &policy.federation {
        let pair = (id_of(edge.from.as_str())?, id_of(edge.to.as_str())?);
        let protocols = match edge.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Any => PROTO_TCP | PROTO_UDP,
        };
        by_pair
            .entry(pair)
            .or_default()
            .extend(edge.ports.iter().map(|p| PortRange {
                first: p.first,
                last: p.last,
                protocols,
            }));
    }
    let mut edges = BTreeMap::new();
    for (pair, ranges) in by_pair {
        let merged = merge_ranges(&ranges);
        if merged.len() > MAX_PORT_RANGES {
            let name = |id| registry.name_of(id).unwrap_or_default().to_owned();
            return Err(CompileError::TooManyPortRanges {
                from: name(pair.0),
                to: name(pair.1),
                count: merged.len(),
            });
        }
        edges.insert(pair, merged);
    }
    Ok(Compiled {
        unlabeled: action(policy.defaults.unlabeled),
        external: action(policy.defaults.external),
        bindings,
        endpoints,
        edges,
        registry,
    })
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

/// Per protocol, coalesces overlapping and adjacent ranges; then joins ranges that are equal
/// for both protocols into one entry. The result is what the kernel scans linearly, so fewer
/// entries means fewer comparisons and more room under `MAX_PORT_RANGES`.
fn merge_ranges(ranges: &[PortRange]) -> Vec<PortRange> {
    let mut per_protocol = Vec::new();
    for bit in [PROTO_TCP, PROTO_UDP] {
        let mut spans: Vec<(u16, u16)> = ranges
            .iter()
            .filter(|r| r.protocols & bit != 0)
            .map(|r| (r.first, r.last))
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (first, last) in spans {
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
        .map(|((first, last), protocols)| PortRange {
            first,
            last,
            protocols,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Policy {
        enforcer_policy::parse("test.yaml", text).expect("test policy is valid")
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
  - {from: staging.example.org, to: prod.example.org, protocol: udp, ports: ['8000-8099'], owner: o, reason: r}
";

    fn resolve(path: &CgroupPath) -> Option<u64> {
        match path.as_str() {
            "/workloads/prod" => Some(100),
            "/workloads/staging" => Some(200),
            _ => None,
        }
    }

    #[test]
    fn compiles_bindings_endpoints_edges_and_defaults() {
        let c = compile(&parse(TWO_DOMAINS), &Registry::default(), resolve).expect("compiles");
        assert_eq!((c.unlabeled, c.external), (ACTION_DENY, ACTION_ALLOW));
        let ids: Vec<_> = c.bindings.iter().map(|b| (b.domain, b.cgroup_id)).collect();
        assert_eq!(ids, [(1, Some(100)), (1, None), (2, Some(200))]);
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].0.family, FAMILY_V4);
        assert_eq!(c.endpoints[0].0.len, 16);
        assert_eq!(&c.endpoints[0].0.addr[..4], &[10, 10, 0, 0]);
        assert_eq!(c.endpoints[1].0.family, FAMILY_V6);
        let ranges = &c.edges[&(2, 1)];
        assert_eq!(
            ranges,
            &[
                PortRange {
                    first: 5432,
                    last: 5432,
                    protocols: PROTO_TCP
                },
                PortRange {
                    first: 8000,
                    last: 8099,
                    protocols: PROTO_UDP
                },
                PortRange {
                    first: 8000,
                    last: 8100,
                    protocols: PROTO_TCP
                },
            ]
        );
        assert!(!c.edges.contains_key(&(1, 2)), "edges are directed");
    }

    #[test]
    fn ids_are_stable_across_compiles_and_reorderings() {
        let first = compile(&parse(TWO_DOMAINS), &Registry::default(), resolve).expect("compiles");
        let reordered = "
version: 1
domains:
  - name: new.example.org
  - name: staging.example.org
  - name: prod.example.org
";
        let second = compile(&parse(reordered), &first.registry, resolve).expect("compiles");
        assert_eq!(second.registry.get("prod.example.org"), Some(1));
        assert_eq!(second.registry.get("staging.example.org"), Some(2));
        assert_eq!(second.registry.get("new.example.org"), Some(3));
    }

    #[test]
    fn any_protocol_and_overlaps_merge() {
        let merged = merge_ranges(&[
            PortRange {
                first: 10,
                last: 20,
                protocols: PROTO_TCP | PROTO_UDP,
            },
            PortRange {
                first: 15,
                last: 30,
                protocols: PROTO_TCP,
            },
            PortRange {
                first: 31,
                last: 31,
                protocols: PROTO_TCP,
            },
        ]);
        assert_eq!(
            merged,
            [
                PortRange {
                    first: 10,
                    last: 20,
                    protocols: PROTO_UDP
                },
                PortRange {
                    first: 10,
                    last: 31,
                    protocols: PROTO_TCP
                },
            ]
        );
        let full = merge_ranges(&[PortRange {
            first: 1,
            last: 65535,
            protocols: PROTO_TCP | PROTO_UDP,
        }]);
        assert_eq!(
            full,
            [PortRange {
                first: 1,
                last: 65535,
                protocols: PROTO_TCP | PROTO_UDP
            }]
        );
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
        let err = compile(&parse(&text), &Registry::default(), resolve).expect_err("too many");
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
        let err = compile(&parse(&text), &Registry::default(), resolve).expect_err("too deep");
        assert!(matches!(err, CompileError::CgroupTooDeep { .. }));
    }
}
