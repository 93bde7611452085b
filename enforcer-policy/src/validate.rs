//! Checks that relate one part of a policy to another: names declared
//! twice, edges naming undeclared domains or looping back to their own
//! domain, cgroups or prefixes claimed more than once, and edge ids used
//! twice. `parse` records
//! where each of these values was written so the checks can point at them.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::hash::Hash;

use ipnet::IpNet;

use crate::diagnostic::{Diagnostics, Pos};
use crate::model::{CgroupPath, EdgeId};
use crate::trust_domain::TrustDomain;

#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub pos: Pos,
}

/// A cgroup or prefix together with the domain that claims it.
pub(crate) struct Claim<T> {
    pub domain: TrustDomain,
    pub item: At<T>,
}

/// Whichever ends of an edge were readable; an edge with a broken `to` can
/// still name an unknown domain in `from`.
pub(crate) struct EdgeEnds {
    pub from: Option<At<TrustDomain>>,
    pub to: Option<At<TrustDomain>>,
    /// Where the edge asks for both ends' bundles (its own key, or the edge when the default
    /// asks).
    pub require_bundles: Option<Pos>,
}

/// An edge's id, at its `id` value when written there, or at the start of
/// the edge when derived from its content.
#[derive(Debug, Clone)]
pub(crate) struct EdgeIdSite {
    pub id: At<EdgeId>,
    pub explicit: bool,
}

/// Every cross-referenced value that parsed, in file order.
#[derive(Default)]
pub(crate) struct Sites {
    pub domains: Vec<At<TrustDomain>>,
    pub cgroups: Vec<Claim<CgroupPath>>,
    pub endpoints: Vec<Claim<IpNet>>,
    pub edges: Vec<EdgeEnds>,
    pub edge_ids: Vec<EdgeIdSite>,
    /// Domains that name a trust bundle.
    pub bundled: Vec<TrustDomain>,
}

pub(crate) fn check(sites: &Sites, diags: &mut Diagnostics) {
    let declared = declared_once(&sites.domains, diags);
    claimed_once(
        "cgroup",
        &sites.cgroups,
        "a cgroup can belong to only one trust domain",
        diags,
    );
    claimed_once(
        "prefix",
        &sites.endpoints,
        "an address can belong to only one trust domain",
        diags,
    );
    let bundled: HashSet<&TrustDomain> = sites.bundled.iter().collect();
    for edge in &sites.edges {
        edge_ends(edge, &declared, diags);
        bundles_named(edge, &bundled, diags);
    }
    edge_ids_unique(&sites.edge_ids, diags);
}

fn declared_once<'s>(
    domains: &'s [At<TrustDomain>],
    diags: &mut Diagnostics,
) -> HashSet<&'s TrustDomain> {
    let mut first_line: HashMap<&TrustDomain, usize> = HashMap::with_capacity(domains.len());
    for domain in domains {
        match first_line.get(&domain.value) {
            Some(line) => diags.error(
                domain.pos,
                format!(
                    "duplicate domain `{}` (first declared at line {line})",
                    domain.value
                ),
            ),
            None => {
                first_line.insert(&domain.value, domain.pos.line);
            }
        }
    }
    first_line.into_keys().collect()
}

fn claimed_once<T: Eq + Hash + Display>(
    kind: &str,
    claims: &[Claim<T>],
    rule: &str,
    diags: &mut Diagnostics,
) {
    let mut first: HashMap<&T, &Claim<T>> = HashMap::with_capacity(claims.len());
    for claim in claims {
        let Some(earlier) = first.get(&claim.item.value) else {
            first.insert(&claim.item.value, claim);
            continue;
        };
        let item = &claim.item.value;
        let line = earlier.item.pos.line;
        let message = if earlier.domain == claim.domain {
            format!(
                "{kind} `{item}` is listed twice in domain `{}` (first at line {line})",
                claim.domain
            )
        } else {
            format!(
                "{kind} `{item}` is bound to both `{}` (line {line}) and `{}`; {rule}",
                earlier.domain, claim.domain
            )
        };
        diags.error(claim.item.pos, message);
    }
}

fn edge_ends(edge: &EdgeEnds, declared: &HashSet<&TrustDomain>, diags: &mut Diagnostics) {
    for end in [&edge.from, &edge.to].into_iter().flatten() {
        if !declared.contains(&end.value) {
            diags.error(
                end.pos,
                format!("edge names unknown domain `{}`", end.value),
            );
        }
    }
    if let (Some(from), Some(to)) = (&edge.from, &edge.to)
        && from.value == to.value
    {
        diags.error(to.pos, "self-edge: same-domain traffic is always allowed");
    }
}

/// Grants, revocations and events name edges by id, so one id must not
/// stand for two edges.
/// An edge that requires bundles of a domain that names none could never allow anything.
fn bundles_named(edge: &EdgeEnds, bundled: &HashSet<&TrustDomain>, diags: &mut Diagnostics) {
    let Some(pos) = edge.require_bundles else {
        return;
    };
    for end in [&edge.from, &edge.to].into_iter().flatten() {
        if !bundled.contains(&end.value) {
            diags.error(
                pos,
                format!(
                    "the edge requires the trust bundles of both ends, but domain `{}` names no `bundle` or `bundle_endpoint`",
                    end.value
                ),
            );
        }
    }
}

fn edge_ids_unique(sites: &[EdgeIdSite], diags: &mut Diagnostics) {
    let mut first: HashMap<&EdgeId, &EdgeIdSite> = HashMap::with_capacity(sites.len());
    for site in sites {
        let Some(earlier) = first.get(&site.id.value) else {
            first.insert(&site.id.value, site);
            continue;
        };
        let id = &site.id.value;
        let line = earlier.id.pos.line;
        let message = match (earlier.explicit, site.explicit) {
            (true, true) => format!("duplicate edge id `{id}` (first used at line {line})"),
            (false, true) => format!(
                "edge id `{id}` is already the id derived for the edge at line {line}; choose another id"
            ),
            (true, false) => format!(
                "this edge's derived id `{id}` is already the `id` of the edge at line {line}; give this edge an `id`"
            ),
            (false, false) => format!(
                "duplicate edge: same from, to, protocol and ports as the edge at line {line}; remove one or give each an `id`"
            ),
        };
        diags.error(site.id.pos, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Diagnostic;

    fn at<T>(value: T, line: usize) -> At<T> {
        At {
            value,
            pos: Pos { line, column: 3 },
        }
    }

    fn td(name: &str) -> TrustDomain {
        name.parse().expect("valid trust domain")
    }

    fn run(sites: &Sites) -> Vec<String> {
        let mut diags = Diagnostics::new("p.yaml");
        check(sites, &mut diags);
        diags
            .into_sorted()
            .iter()
            .map(Diagnostic::to_string)
            .collect()
    }

    #[test]
    fn consistent_sites_pass() {
        let sites = Sites {
            domains: vec![at(td("a.org"), 1), at(td("b.org"), 2)],
            cgroups: vec![
                Claim {
                    domain: td("a.org"),
                    item: at("/a".parse().expect("valid"), 3),
                },
                Claim {
                    domain: td("b.org"),
                    item: at("/b".parse().expect("valid"), 4),
                },
            ],
            endpoints: Vec::new(),
            edges: vec![EdgeEnds {
                from: Some(at(td("a.org"), 5)),
                to: Some(at(td("b.org"), 6)),
                require_bundles: None,
            }],
            edge_ids: Vec::new(),
            bundled: Vec::new(),
        };
        assert_eq!(run(&sites), Vec::<String>::new());
    }

    #[test]
    fn duplicates_point_at_the_later_one() {
        let prefix = |text: &str| -> IpNet { text.parse().expect("valid prefix") };
        let sites = Sites {
            domains: vec![at(td("a.org"), 1), at(td("b.org"), 2), at(td("a.org"), 3)],
            cgroups: Vec::new(),
            endpoints: vec![
                Claim {
                    domain: td("a.org"),
                    item: at(prefix("10.0.0.0/8"), 4),
                },
                Claim {
                    domain: td("a.org"),
                    item: at(prefix("10.0.0.0/8"), 5),
                },
                Claim {
                    domain: td("b.org"),
                    item: at(prefix("10.0.0.0/8"), 6),
                },
            ],
            edges: Vec::new(),
            edge_ids: Vec::new(),
            bundled: Vec::new(),
        };
        assert_eq!(
            run(&sites),
            [
                "p.yaml:3:3: duplicate domain `a.org` (first declared at line 1)",
                "p.yaml:5:3: prefix `10.0.0.0/8` is listed twice in domain `a.org` (first at line 4)",
                "p.yaml:6:3: prefix `10.0.0.0/8` is bound to both `a.org` (line 4) and `b.org`; an address can belong to only one trust domain",
            ]
        );
    }

    #[test]
    fn edges_with_unknown_or_same_ends() {
        let sites = Sites {
            domains: vec![at(td("a.org"), 1)],
            cgroups: Vec::new(),
            endpoints: Vec::new(),
            edges: vec![
                EdgeEnds {
                    from: Some(at(td("a.org"), 2)),
                    to: Some(at(td("a.org"), 3)),
                    require_bundles: None,
                },
                EdgeEnds {
                    from: Some(at(td("x.org"), 4)),
                    to: None,
                    require_bundles: None,
                },
            ],
            edge_ids: Vec::new(),
            bundled: Vec::new(),
        };
        assert_eq!(
            run(&sites),
            [
                "p.yaml:3:3: self-edge: same-domain traffic is always allowed",
                "p.yaml:4:3: edge names unknown domain `x.org`",
            ]
        );
    }

    #[test]
    fn edge_ids_are_unique() {
        let site = |id: &str, line, explicit| EdgeIdSite {
            id: at(id.parse().expect("valid edge id"), line),
            explicit,
        };
        let sites = Sites {
            edge_ids: vec![
                site("db", 1, true),
                site("edge-000000000001", 2, false),
                site("edge-000000000002", 3, false),
                site("db", 4, true),
                site("edge-000000000001", 5, false),
                site("edge-000000000002", 6, true),
                site("web", 7, true),
                site("edge-000000000003", 8, false),
            ],
            ..Sites::default()
        };
        assert_eq!(
            run(&sites),
            [
                "p.yaml:4:3: duplicate edge id `db` (first used at line 1)",
                "p.yaml:5:3: duplicate edge: same from, to, protocol and ports as the edge at line 2; remove one or give each an `id`",
                "p.yaml:6:3: edge id `edge-000000000002` is already the id derived for the edge at line 3; choose another id",
            ]
        );
        let sites = Sites {
            edge_ids: vec![
                site("edge-000000000001", 1, true),
                site("edge-000000000001", 2, false),
            ],
            ..Sites::default()
        };
        assert_eq!(
            run(&sites),
            [
                "p.yaml:2:3: this edge's derived id `edge-000000000001` is already the `id` of the edge at line 1; give this edge an `id`"
            ]
        );
    }
}
