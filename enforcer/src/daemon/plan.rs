//! `enforcer policy plan FILE`: what applying a policy file would change, and the live
//! connections it would end. The daemon resolves and compiles the file exactly as
//! `policy apply` does (`Daemon::prepare`), judges the same snapshot of live connections with
//! the same function apply ends them with (`revocation::Judge`), and stops there: nothing is
//! recorded, saved, written to the kernel or destroyed, and the generation stays.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use enforcer_common::verdict::Peer;
use enforcer_policy::{Defaults, Domain, EdgeId, Policy, TrustDomain, port_set};
use jiff::Timestamp;

use crate::{
    api::{
        edge::Source,
        plan::{
            Change, DomainChange, DomainChanges, DomainSpec, EdgeChange, EdgeChanges, EdgeSpec,
            EndingConnection, FieldChange, Plan, SetChange,
        },
    },
    kernel::revocation::{Ending, Judge, Snapshot, plain},
    pipeline::{compile::Compiled, edges::LiveEdge, grants::human, registry::Registry},
};

/// A policy with the edges it resolves to and its compiled form.
pub struct Side<'a> {
    pub policy: &'a Policy,
    pub live: &'a [LiveEdge],
    pub compiled: &'a Compiled,
}

/// The plan for moving from `now` to `next`, named `file`, with the connections of `snapshot`
/// judged at boot-clock nanosecond `boot`.
pub fn plan(
    file: &str,
    generation: u64,
    now: &Side,
    next: &Side,
    snapshot: &Snapshot,
    boot: u64,
) -> Plan {
    let defaults = defaults(&now.policy.defaults, &next.policy.defaults);
    let domains = domains(now.policy, next.policy);
    let edges = edges(now.live, next.live);
    let grants: Vec<EdgeSpec> = next
        .live
        .iter()
        .filter(|e| e.source == Source::Grant)
        .map(spec)
        .collect();
    let judge_now = Judge::new(now.compiled, boot);
    let connections = snapshot
        .would_end(&Judge::new(next.compiled, boot))
        .iter()
        .map(|ending| connection(ending, &judge_now, now.live, &next.compiled.registry))
        .collect();
    let changes = defaults.len()
        + domains.added.len()
        + domains.removed.len()
        + domains.altered.len()
        + edges.added.len()
        + edges.removed.len()
        + edges.altered.len();
    let notes = notes(file, next, &domains, &edges, &grants);
    Plan {
        file: file.to_owned(),
        generation,
        defaults,
        domains,
        edges,
        grants,
        connections,
        changes,
        notes,
    }
}

fn defaults(before: &Defaults, after: &Defaults) -> Vec<FieldChange> {
    [
        (
            "unlabeled",
            before.unlabeled.to_string(),
            after.unlabeled.to_string(),
        ),
        (
            "external",
            before.external.to_string(),
            after.external.to_string(),
        ),
        ("mode", before.mode.to_string(), after.mode.to_string()),
        (
            "max_grant_ttl",
            human(before.max_grant_ttl),
            human(after.max_grant_ttl),
        ),
        (
            "require_bundles",
            before.require_bundles.to_string(),
            after.require_bundles.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, b, a)| b != a)
    .map(|(field, before, after)| FieldChange {
        field: field.into(),
        before: Some(before),
        after: Some(after),
    })
    .collect()
}

fn domain_spec(policy: &Policy, d: &Domain) -> DomainSpec {
    DomainSpec {
        name: d.name.to_string(),
        mode: d.mode.unwrap_or(policy.defaults.mode).to_string(),
        cgroups: d.cgroups.iter().map(ToString::to_string).collect(),
        endpoints: d.endpoints.iter().map(ToString::to_string).collect(),
    }
}

/// Where the domain's bundle comes from, as `plan` shows it: a path, or the service.
fn bundle_path(d: &Domain) -> String {
    if let Some(from) = &d.bundle_from {
        return match from.source {
            enforcer_policy::BundleSource::WorkloadApi => "workload_api".to_owned(),
        };
    }
    d.bundle
        .as_ref()
        .map_or_else(|| "none".to_owned(), |b| b.path.display().to_string())
}

/// The domains of `policy` by name: 10,000 of them are matched with 10,000.
fn by_name(policy: &Policy) -> HashMap<&TrustDomain, &Domain> {
    policy.domains.iter().map(|d| (&d.name, d)).collect()
}

fn domains(before: &Policy, after: &Policy) -> DomainChanges {
    let (old_by_name, new_by_name) = (by_name(before), by_name(after));
    let mut changes = DomainChanges::default();
    for d in &after.domains {
        let Some(&old) = old_by_name.get(&d.name) else {
            changes.added.push(domain_spec(after, d));
            continue;
        };
        let (was, is) = (domain_spec(before, old), domain_spec(after, d));
        let change = DomainChange {
            name: is.name,
            mode: (was.mode != is.mode).then_some(Change {
                before: was.mode,
                after: is.mode,
            }),
            bundle: (bundle_path(old) != bundle_path(d)).then(|| Change {
                before: bundle_path(old),
                after: bundle_path(d),
            }),
            cgroups: SetChange::between(&old.cgroups, &d.cgroups),
            endpoints: SetChange::between(&old.endpoints, &d.endpoints),
        };
        if change.mode.is_some()
            || change.bundle.is_some()
            || !change.cgroups.is_empty()
            || !change.endpoints.is_empty()
        {
            changes.altered.push(change);
        }
    }
    changes.removed = before
        .domains
        .iter()
        .filter(|d| !new_by_name.contains_key(&d.name))
        .map(|d| domain_spec(before, d))
        .collect();
    changes
}

fn spec(live: &LiveEdge) -> EdgeSpec {
    EdgeSpec {
        edge: Arc::clone(&live.edge),
        expires: live.expires,
    }
}

fn from_file(edges: &[LiveEdge]) -> Vec<&LiveEdge> {
    edges.iter().filter(|e| e.source == Source::File).collect()
}

/// The file's edges compared by id; grants are the same on both sides. Matched through hash
/// maps: a plan may compare 100,000 edges with 100,000, under the daemon's lock.
fn edges(before: &[LiveEdge], after: &[LiveEdge]) -> EdgeChanges {
    let (before, after) = (from_file(before), from_file(after));
    let (old_by_id, new_by_id) = (by_id(&before), by_id(&after));
    let mut changes = EdgeChanges::default();
    for new in &after {
        let Some(old) = old_by_id.get(&new.edge.id) else {
            changes.added.push(spec(new));
            continue;
        };
        let fields = edge_changes(old, new);
        if !fields.is_empty() {
            changes.altered.push(EdgeChange {
                id: new.edge.id.to_string(),
                changes: fields,
            });
        }
    }
    changes.removed = before
        .iter()
        .filter(|old| !new_by_id.contains_key(&old.edge.id))
        .map(|old| spec(old))
        .collect();
    changes
}

fn by_id<'a>(edges: &[&'a LiveEdge]) -> HashMap<&'a EdgeId, &'a LiveEdge> {
    edges.iter().map(|e| (&e.edge.id, *e)).collect()
}

fn edge_changes(old: &LiveEdge, new: &LiveEdge) -> Vec<FieldChange> {
    let (a, b) = (&old.edge, &new.edge);
    // Ports are compared as the ports they cover: reordering or splitting ranges changes
    // nothing the kernel enforces.
    let ports_differ = a.ports != b.ports && port_set(&a.ports) != port_set(&b.ports);
    // Most edges of a large policy are unchanged: they are compared as they are, and only a
    // changed one is written out as text (each field's text is equal exactly when it is).
    if !ports_differ
        && (
            &a.from,
            &a.to,
            a.protocol,
            &a.owner,
            &a.reason,
            a.not_before,
        ) == (
            &b.from,
            &b.to,
            b.protocol,
            &b.owner,
            &b.reason,
            b.not_before,
        )
        && (old.expires, a.require_bundles) == (new.expires, b.require_bundles)
    {
        return Vec::new();
    }
    let time = |t: Option<Timestamp>| t.map(|t| t.to_string());
    let text = |t: &dyn ToString| Some(t.to_string());
    [
        ("from", text(&a.from), text(&b.from)),
        ("to", text(&a.to), text(&b.to)),
        ("protocol", text(&a.protocol), text(&b.protocol)),
        ("ports", Some(a.ports_text()), Some(b.ports_text())),
        ("owner", text(&a.owner), text(&b.owner)),
        ("reason", text(&a.reason), text(&b.reason)),
        ("not_before", time(a.not_before), time(b.not_before)),
        ("expires", time(old.expires), time(new.expires)),
        (
            "require_bundles",
            Some(old.edge.require_bundles.to_string()),
            Some(new.edge.require_bundles.to_string()),
        ),
    ]
    .into_iter()
    .filter(|(field, before, after)| {
        if *field == "ports" {
            ports_differ
        } else {
            before != after
        }
    })
    .map(|(field, before, after)| FieldChange {
        field: field.into(),
        before,
        after,
    })
    .collect()
}

fn peer_name(registry: &Registry, code: u32) -> String {
    match Peer::decode(code) {
        Peer::Unlabeled => "unlabeled".into(),
        Peer::External => "external".into(),
        Peer::Domain(id) => registry
            .name_of(id)
            .map_or_else(|| format!("domain #{id}"), str::to_owned),
    }
}

fn connection(
    ending: &Ending,
    judge_now: &Judge,
    live_now: &[LiveEdge],
    registry: &Registry,
) -> EndingConnection {
    let now = judge_now.verdict(&ending.state);
    let edge = (now.allow && now.edge != 0)
        .then(|| live_now.iter().find(|e| e.index == now.edge))
        .flatten()
        .map(|e| e.edge.id.to_string());
    let socket = &ending.socket;
    EndingConnection {
        protocol: if socket.protocol == libc::IPPROTO_UDP as u8 {
            "udp"
        } else {
            "tcp"
        }
        .into(),
        local: plain(socket.local).to_string(),
        remote: plain(socket.remote).to_string(),
        from: peer_name(registry, ending.state.from),
        to: peer_name(registry, ending.state.to),
        port: ending.state.port,
        edge,
        reason_now: now.reason.name().into(),
        reason: ending.verdict.reason.name().into(),
    }
}

fn notes(
    file: &str,
    next: &Side,
    domains: &DomainChanges,
    edges: &EdgeChanges,
    grants: &[EdgeSpec],
) -> Vec<String> {
    let mut notes = Vec::new();
    let binds = |d: &DomainSpec| !d.cgroups.is_empty() || !d.endpoints.is_empty();
    let membership = domains.added.iter().any(binds)
        || domains.removed.iter().any(binds)
        || domains
            .altered
            .iter()
            .any(|d| !d.cgroups.is_empty() || !d.endpoints.is_empty());
    if membership {
        notes.push(
            "cgroup bindings or endpoints change: live connections keep the domains they were \
             judged with and are not ended for it; new connections are judged with the new \
             ones (which of them would be refused is not predicted here)"
                .into(),
        );
    }
    for grant in grants {
        for name in [&grant.edge.from, &grant.edge.to] {
            if !next.policy.domains.iter().any(|d| d.name == *name) {
                notes.push(format!(
                    "grant {} names {name}, which {file} does not define; applying keeps the \
                     grant until it expires or is revoked",
                    grant.edge.id
                ));
            }
        }
    }
    let added: HashSet<&str> = edges.added.iter().map(|a| a.edge.id.as_str()).collect();
    if next
        .live
        .iter()
        .any(|e| added.contains(e.edge.id.as_str()) && is_ttl(e))
    {
        notes.push(
            "a new edge's ttl counts from when `policy apply` puts it in force; its expiry here \
             counts from now"
                .into(),
        );
    }
    notes
}

fn is_ttl(live: &LiveEdge) -> bool {
    matches!(live.edge.end, Some(enforcer_policy::EdgeEnd::Ttl(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::edges::Book;

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().expect("timestamp")
    }

    fn policy(text: &str) -> Policy {
        enforcer_policy::parse("p.yaml", text).expect("test policy is valid")
    }

    const BEFORE: &str = "
version: 1
defaults: {unlabeled: allow}
domains:
  - {name: prod.org, cgroups: [/w/prod], endpoints: [10.0.0.0/8]}
  - {name: staging.org, cgroups: [/w/staging]}
  - {name: old.org}
federation:
  - {id: migrations, from: staging.org, to: prod.org, protocol: tcp, ports: [5432, 5433], owner: dba, reason: r}
  - {id: kept, from: staging.org, to: prod.org, protocol: udp, ports: ['8000-8010'], owner: o, reason: r}
  - {from: prod.org, to: staging.org, protocol: tcp, ports: [443], owner: o, reason: r}
";

    const AFTER: &str = "
version: 1
defaults: {unlabeled: deny, max_grant_ttl: 1h}
domains:
  - {name: prod.org, cgroups: [/w/prod, /w/prod2], mode: audit}
  - {name: staging.org, cgroups: [/w/staging]}
  - {name: dev.org, cgroups: [/w/dev]}
federation:
  - {id: kept, from: staging.org, to: prod.org, protocol: udp, ports: ['8005-8010', '8000-8004'], owner: o, reason: r}
  - {from: prod.org, to: staging.org, protocol: tcp, ports: [443], owner: sec, reason: r, expires: '2027-01-01T00:00:00Z'}
  - {id: dev-db, from: dev.org, to: prod.org, protocol: tcp, ports: [5432], owner: dba, reason: r, ttl: 1h}
";

    fn diff(
        before: &str,
        after: &str,
        book: &Book,
    ) -> (Vec<FieldChange>, DomainChanges, EdgeChanges) {
        let (b, a) = (policy(before), policy(after));
        let (was, _) = book.resolve(&b, now()).expect("resolves");
        let (is, _) = book.resolve(&a, now()).expect("resolves");
        (
            defaults(&b.defaults, &a.defaults),
            domains(&b, &a),
            edges(&was, &is),
        )
    }

    #[test]
    fn every_kind_of_change_is_listed_once() {
        let (defaults, domains, edges) = diff(BEFORE, AFTER, &Book::default());
        let fields: Vec<(&str, Option<&str>, Option<&str>)> = defaults
            .iter()
            .map(|c| (c.field.as_str(), c.before.as_deref(), c.after.as_deref()))
            .collect();
        assert_eq!(
            fields,
            [
                ("unlabeled", Some("allow"), Some("deny")),
                ("max_grant_ttl", Some("12h"), Some("1h"))
            ]
        );
        let names = |ds: &[DomainSpec]| ds.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&domains.added), ["dev.org"]);
        assert_eq!(domains.added[0].cgroups, ["/w/dev"]);
        assert_eq!(names(&domains.removed), ["old.org"]);
        assert_eq!(domains.altered.len(), 1, "staging.org is unchanged");
        let prod = &domains.altered[0];
        assert_eq!(prod.name, "prod.org");
        assert_eq!(
            prod.mode,
            Some(Change {
                before: "enforce".into(),
                after: "audit".into()
            })
        );
        assert_eq!(prod.cgroups.added, ["/w/prod2"]);
        assert!(prod.cgroups.removed.is_empty());
        assert_eq!(prod.endpoints.removed, ["10.0.0.0/8"]);

        let ids = |es: &[EdgeSpec]| es.iter().map(|e| e.edge.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&edges.added), ["dev-db"]);
        assert_eq!(
            edges.added[0].expires,
            Some("2026-11-23T11:00:00Z".parse().expect("timestamp")),
            "a new ttl edge's expiry is resolved as apply would"
        );
        assert_eq!(ids(&edges.removed), ["migrations"]);
        assert_eq!(edges.removed[0].edge.ports_text(), "5432,5433");
        assert_eq!(
            edges.altered.len(),
            1,
            "`kept` only split its range: unchanged"
        );
        let altered = &edges.altered[0];
        assert!(
            altered.id.starts_with("edge-"),
            "a derived id: {}",
            altered.id
        );
        let fields: Vec<(&str, Option<&str>, Option<&str>)> = altered
            .changes
            .iter()
            .map(|c| (c.field.as_str(), c.before.as_deref(), c.after.as_deref()))
            .collect();
        assert_eq!(
            fields,
            [
                ("owner", Some("o"), Some("sec")),
                ("expires", None, Some("2027-01-01T00:00:00Z"))
            ]
        );
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let (defaults, domains, edges) = diff(BEFORE, BEFORE, &Book::default());
        assert!(defaults.is_empty());
        assert_eq!(domains, DomainChanges::default());
        assert_eq!(edges, EdgeChanges::default());
    }

    #[test]
    fn a_named_edge_reports_each_field_it_changes() {
        let before = "
version: 1
domains: [{name: a.org}, {name: b.org}]
federation:
  - {id: e, from: a.org, to: b.org, protocol: tcp, ports: [80], owner: o, reason: r, ttl: 1h}
";
        let after = "
version: 1
domains: [{name: a.org}, {name: b.org}]
federation:
  - {id: e, from: b.org, to: a.org, protocol: any, ports: [80, 81], owner: o, reason: s, ttl: 2h, not_before: '2026-11-23T10:30:00Z'}
";
        // The edge was first put in force an hour before the plan: its ttl counts from then.
        let earlier = now() - jiff::SignedDuration::from_hours(1);
        let (_, book) = Book::default()
            .resolve(&policy(before), earlier)
            .expect("resolves");
        let (_, _, edges) = diff(before, after, &book);
        let changes = &edges.altered[0].changes;
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "from",
                "to",
                "protocol",
                "ports",
                "reason",
                "not_before",
                "expires"
            ]
        );
        assert_eq!(changes[3].after.as_deref(), Some("80,81"));
        assert_eq!(
            (changes[6].before.as_deref(), changes[6].after.as_deref()),
            (Some("2026-11-23T10:00:00Z"), Some("2026-11-23T11:00:00Z")),
            "a ttl keeps counting from when the edge was first in force"
        );
    }

    fn empty_plan() -> Plan {
        Plan {
            file: "p.yaml".into(),
            generation: 4,
            defaults: Vec::new(),
            domains: DomainChanges::default(),
            edges: EdgeChanges::default(),
            grants: Vec::new(),
            connections: Vec::new(),
            changes: 0,
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_text_ends_with_a_one_line_summary() {
        let text = empty_plan().to_string();
        assert_eq!(
            text,
            "plan for p.yaml against generation 4 (nothing applied)\nno changes\n"
        );
        let mut plan = empty_plan();
        plan.changes = 2;
        plan.connections.push(EndingConnection {
            protocol: "tcp".into(),
            local: "127.0.0.1:40000".into(),
            remote: "127.0.0.1:5432".into(),
            from: "staging.org".into(),
            to: "prod.org".into(),
            port: 5432,
            edge: Some("migrations".into()),
            reason_now: "edge_allowed".into(),
            reason: "no_edge".into(),
        });
        let text = plan.to_string();
        assert!(
            text.contains(
                "  tcp 127.0.0.1:40000 <-> 127.0.0.1:5432: staging.org -> prod.org port 5432, \
                 allowed now by edge migrations; refused: no_edge\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("\n2 change(s); applying would end 1 live connection(s)\n"),
            "{text}"
        );
    }

    #[test]
    fn bundles_and_their_requirement_are_diffed() {
        let before = "
version: 1
domains:
  - {name: a.org, bundle: /b/a.pem}
  - {name: b.org, bundle: /b/b.pem}
federation:
  - {id: e, from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r}
";
        let after = "
version: 1
defaults: {require_bundles: true}
domains:
  - {name: a.org, bundle: /b/a2.pem}

  - {name: b.org, bundle: /b/b.pem}
federation:
  - {id: e, from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r}
";
        let (defaults, domains, edges) = diff(before, after, &Book::default());
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0].field, "require_bundles");
        let [a] = &domains.altered[..] else {
            panic!("only a.org's bundle changed (b.org only moved a line): {domains:?}");
        };
        assert_eq!(
            a.bundle,
            Some(Change {
                before: "/b/a.pem".into(),
                after: "/b/a2.pem".into()
            })
        );
        let [e] = &edges.altered[..] else {
            panic!("the edge now requires bundles: {edges:?}");
        };
        assert_eq!(e.changes[0].field, "require_bundles");

        let from_agent = after.replace("bundle: /b/b.pem", "bundle_from: workload_api");
        let (_, domains, _) = diff(after, &from_agent, &Book::default());
        let [b] = &domains.altered[..] else {
            panic!("b.org's bundle now comes from the Workload API: {domains:?}");
        };
        assert_eq!(
            b.bundle,
            Some(Change {
                before: "/b/b.pem".into(),
                after: "workload_api".into()
            })
        );
    }
}
