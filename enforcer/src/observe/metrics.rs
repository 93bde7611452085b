//! Prometheus metrics for `enforcer daemon --metrics-addr`: decisions, refusals, edge use,
//! policy changes and map fill levels, in the Prometheus text format 0.0.4.
//!
//! A scrape copies what the daemon knows into a plain [`Snapshot`] under the daemon's lock and
//! renders it after letting go, so a slow scraper never holds up the control socket or the
//! maintenance thread. Map fill levels come from the serving thread's own handles on the
//! pinned maps ([`maps`]), so walking a large map never holds the lock either. Serving is
//! [`http`]: std sockets and threads, like the rest of the daemon.

mod http;
mod maps;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode_registry},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use self::maps::MapFill;
use crate::{
    api::{
        edge::{EdgeView, Source},
        status::PairStatus,
    },
    observe::tally::DecisionKey,
    paths::PinDir,
};

/// Everything a scrape reports about the daemon, copied out under its lock.
pub struct Snapshot {
    pub generation: u64,
    /// Decisions counted from the kernel's event stream.
    pub decisions: BTreeMap<DecisionKey, u64>,
    pub events_lost: u64,
    /// The kernel's exact refusal and audit counters, with peers named.
    pub pairs: Vec<PairStatus>,
    pub edges: Vec<EdgeView>,
    pub commits: Commits,
    /// Reloads of `--policy FILE` by outcome, and whether the last one was refused.
    pub reloads: Reloads,
    pub reload_refused: bool,
    /// The Workload API client, if the daemon has one: (connected, messages taken).
    pub workload_api: Option<(bool, u64)>,
    /// Bundle-endpoint fetches, by domain.
    pub bundle_fetches: Vec<BundleFetches>,
    /// Where the policy comes from and how current it is.
    pub source: SourceSnapshot,
}

/// The fetches of one domain's bundle endpoint so far.
#[derive(Debug, Clone, Default)]
pub struct BundleFetches {
    pub domain: String,
    pub fetches: u64,
    pub failures: u64,
    pub changes: u64,
    pub last_success: Option<jiff::Timestamp>,
}

/// The policy source's state, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct SourceSnapshot {
    /// The fleet document's revision in force (etcd only).
    pub revision: Option<i64>,
    pub last_sync: Option<jiff::Timestamp>,
    pub stale: bool,
    pub error: bool,
    /// The fleet's pod addresses (etcd only).
    pub addresses: Option<crate::api::status::FleetAddressStatus>,
}

/// How a policy change (apply, grant, revoke or expiry) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation is in force.
    Applied,
    /// The change was refused (a policy or grant error); nothing changed.
    Rejected,
    /// The kernel maps or the state dir could not be written; the previous policy stays.
    Failed,
}

impl Outcome {
    const ALL: [Self; 3] = [Self::Applied, Self::Rejected, Self::Failed];

    fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Policy changes by outcome and how long the applied ones took, kept by the daemon across
/// scrapes. Clones share the counts.
#[derive(Clone, Debug)]
pub struct Commits {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Histogram,
}

impl Default for Commits {
    fn default() -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        // Every outcome is reported from the start, so a rate over it never starts missing.
        for outcome in Outcome::ALL {
            let _ = outcomes.get_or_create(&OutcomeLabels {
                outcome: outcome.name(),
            });
        }
        Self {
            outcomes,
            // 1 ms to about 33 s: a small apply takes milliseconds, a large one (thousands
            // of edges, many connections to end) seconds.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl Commits {
    /// Counts one change; its duration is observed only if it `Applied`, since refused and
    /// failed changes stop part way.
    pub fn record(&self, outcome: Outcome, took: Duration) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.name(),
            })
            .inc();
        if outcome == Outcome::Applied {
            self.duration.observe(took.as_secs_f64());
        }
    }
}

/// Reloads of `--policy FILE` (a change on disk or SIGHUP) by outcome, kept by the daemon
/// across scrapes. Clones share the counts.
#[derive(Clone, Debug)]
pub struct Reloads {
    outcomes: Family<OutcomeLabels, Counter>,
}

impl Default for Reloads {
    fn default() -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["applied", "refused"] {
            let _ = outcomes.get_or_create(&OutcomeLabels { outcome });
        }
        Self { outcomes }
    }
}

impl Reloads {
    /// Counts one reload: applied, or refused (the running policy stayed).
    pub fn record(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

fn register_source(registry: &mut Registry, source: &SourceSnapshot) {
    let gauge = |value: u64| {
        let gauge = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
        gauge.set(value);
        gauge
    };
    registry.register(
        "policy_source_stale",
        "1 while the daemon cannot confirm it enforces its source's latest policy (etcd \
         unreachable or without a quorum; the last good policy stays in force), 0 otherwise",
        gauge(u64::from(source.stale)),
    );
    registry.register(
        "policy_source_error",
        "1 while the source's last document was refused or the source cannot be read (the \
         reason is in status as policy_source.last_error), 0 otherwise",
        gauge(u64::from(source.error)),
    );
    if let Some(revision) = source.revision {
        registry.register(
            "policy_source_revision",
            "The etcd revision of the fleet policy document in force",
            gauge(u64::try_from(revision).unwrap_or(0)),
        );
    }
    if let Some(addresses) = &source.addresses {
        let count = |n: usize| gauge(u64::try_from(n).unwrap_or(u64::MAX));
        registry.register(
            "fleet_addresses_published",
            "This node's pod addresses (of pods in a domain) it last published to the fleet",
            count(addresses.published),
        );
        registry.register(
            "fleet_peer_addresses_loaded",
            "The fleet's other nodes' pod addresses in the kernel's address map",
            count(addresses.loaded),
        );
        registry.register(
            "fleet_peer_address_conflicts",
            "Addresses two nodes of the fleet published with different domains (loaded for \
             neither)",
            count(addresses.conflicts),
        );
    }
    if let Some(at) = source.last_sync {
        registry.register(
            "policy_source_last_sync_timestamp_seconds",
            "When the daemon last found its source's policy current (Unix time)",
            gauge(u64::try_from(at.as_second()).unwrap_or(0)),
        );
    }
}

/// Binds the metrics address. Called before anything on the host changes, so an address that
/// cannot be used stops the daemon with nothing changed.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|err| {
        anyhow::anyhow!("cannot serve metrics on --metrics-addr {addr}: {err}; nothing was changed")
    })
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` from a thread of its own, for the
/// life of the daemon. Each scrape takes what the daemon knows from `snapshot`; each probe
/// asks `health`.
pub fn spawn(
    listener: TcpListener,
    snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
    health: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    pins: &PinDir,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the metrics address")?;
    let maps = maps::PinnedMaps::open(pins)?;
    let pages = http::Pages {
        render: move || render(&snapshot(), &maps.fill()),
        health,
    };
    http::spawn(listener, pages)?;
    log::info!("serving metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: String,
    reason: String,
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    edge: String,
    from: String,
    to: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    domain: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

type Counters<L> = Family<L, Counter>;
type Gauges<L> = Family<L, Gauge<u64, std::sync::atomic::AtomicU64>>;

/// The exposition of one scrape, in the Prometheus text format 0.0.4.
fn render(snapshot: &Snapshot, maps: &[MapFill]) -> Result<String> {
    let mut registry = Registry::with_prefix("enforcer");

    let decisions = Counters::<DecisionLabels>::default();
    for (key, &count) in &snapshot.decisions {
        decisions
            .get_or_create(&DecisionLabels {
                verdict: key.verdict.to_string(),
                reason: key.reason.to_string(),
                from: key.from.to_string(),
                to: key.to.to_string(),
            })
            .inc_by(count);
    }
    registry.register(
        "decisions",
        "Decisions reported in the kernel's event stream, by verdict (allowed, refused, \
         audited), reason, and source and destination peer (a domain, unlabeled or external)",
        decisions,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(snapshot.events_lost);
    registry.register(
        "events_lost",
        "Decision events the kernel dropped because the event ring buffer was full; \
         enforcer_decisions_total misses them, enforcer_denied_total does not",
        lost,
    );

    let denied = Counters::<PairLabels>::default();
    let would_deny = Counters::<PairLabels>::default();
    for pair in &snapshot.pairs {
        let labels = PairLabels {
            from: pair.from.clone(),
            to: pair.to.clone(),
        };
        denied.get_or_create(&labels).inc_by(pair.denied);
        would_deny.get_or_create(&labels).inc_by(pair.would_deny);
    }
    registry.register(
        "denied",
        "Calls, handshakes and datagrams the kernel refused, and packets of ended connections \
         it dropped, by source and destination peer; exact counters kept by the programs",
        denied,
    );
    registry.register(
        "would_deny",
        "Flows the policy refuses that audit mode let through, once per flow, by source and \
         destination peer; exact counters kept by the programs",
        would_deny,
    );

    let connections = Counters::<EdgeLabels>::default();
    let last_used = Family::<EdgeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for edge in &snapshot.edges {
        let labels = EdgeLabels {
            edge: edge.edge.id.to_string(),
            from: edge.edge.from.to_string(),
            to: edge.edge.to.to_string(),
            source: match edge.source {
                Source::File => "file",
                Source::Grant => "grant",
            },
        };
        connections.get_or_create(&labels).inc_by(edge.connections);
        if let Some(at) = edge.last_used {
            last_used
                .get_or_create(&labels)
                .set(at.as_millisecond() as f64 / 1000.0);
        }
    }
    registry.register(
        "edge_connections",
        "Connections and UDP flows each federation edge allowed since it was created",
        connections,
    );
    registry.register(
        "edge_last_used_timestamp_seconds",
        "When each federation edge last allowed a flow, in seconds since the Unix epoch; \
         absent for an edge never used",
        last_used,
    );

    let generation = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
    generation.set(snapshot.generation);
    registry.register(
        "policy_generation",
        "Generation of the policy in force; each apply, grant, revoke or grant expiry adds one",
        generation,
    );
    registry.register(
        "policy_applies",
        "Policy changes (apply, grant, revoke, grant expiry) by outcome: applied, rejected \
         (nothing changed) or failed (the previous policy stays)",
        snapshot.commits.outcomes.clone(),
    );
    registry.register(
        "policy_apply_duration_seconds",
        "Time from the start of an applied policy change to its new generation being in force \
         and the connections it refuses ended",
        snapshot.commits.duration.clone(),
    );

    registry.register(
        "policy_reloads",
        "Reloads of the --policy file (changed on disk or SIGHUP) by outcome: applied, or \
         refused (a bad file; the running policy stays)",
        snapshot.reloads.outcomes.clone(),
    );
    let reload_refused = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
    reload_refused.set(u64::from(snapshot.reload_refused));
    registry.register(
        "policy_reload_refused",
        "1 while the last reload of the --policy file was refused (the reason is in status as \
         last_reload_error), 0 otherwise",
        reload_refused,
    );
    register_source(&mut registry, &snapshot.source);

    let fetches = Counters::<FetchLabels>::default();
    let changes = Counters::<DomainLabels>::default();
    let last_success = Family::<DomainLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for f in &snapshot.bundle_fetches {
        for (outcome, count) in [("ok", f.fetches - f.failures), ("failed", f.failures)] {
            fetches
                .get_or_create(&FetchLabels {
                    domain: f.domain.clone(),
                    outcome,
                })
                .inc_by(count);
        }
        let labels = DomainLabels {
            domain: f.domain.clone(),
        };
        changes.get_or_create(&labels).inc_by(f.changes);
        if let Some(at) = f.last_success {
            last_success
                .get_or_create(&labels)
                .set(at.as_millisecond() as f64 / 1000.0);
        }
    }
    registry.register(
        "bundle_endpoint_fetches",
        "Fetches of each domain's trust bundle from its bundle endpoint, by outcome: ok, or \
         failed (unreachable, slow, refused or not a bundle of the domain; the last good \
         bundle stays)",
        fetches,
    );
    registry.register(
        "bundle_endpoint_changes",
        "Fetches that brought a bundle different from the one before, by domain",
        changes,
    );
    registry.register(
        "bundle_endpoint_last_success_timestamp_seconds",
        "When each domain's bundle was last fetched and accepted, in seconds since the Unix \
         epoch; absent before the first success",
        last_success,
    );

    if let Some((connected, updates)) = snapshot.workload_api {
        let open = Gauge::<u64, std::sync::atomic::AtomicU64>::default();
        open.set(u64::from(connected));
        registry.register(
            "workload_api_connected",
            "1 while a stream to the SPIFFE Workload API (--workload-api) is open, 0 while the \
             daemon is reconnecting",
            open,
        );
        let taken = Counter::<u64>::default();
        taken.inc_by(updates);
        registry.register(
            "workload_api_updates",
            "Messages (bundle sets and SVIDs) taken from the SPIFFE Workload API",
            taken,
        );
    }

    let entries = Gauges::<MapLabels>::default();
    let max_entries = Gauges::<MapLabels>::default();
    for fill in maps {
        let labels = MapLabels { map: fill.map };
        entries.get_or_create(&labels).set(fill.entries);
        max_entries.get_or_create(&labels).set(fill.max_entries);
    }
    registry.register(
        "map_entries",
        "Entries in each pinned map that can be counted by key (hash, LRU and per-CPU hash \
         maps, LPM tries); policy maps count both slots, the inactive one normally empty",
        entries,
    );
    registry.register(
        "map_max_entries",
        "Capacity of each pinned map in enforcer_map_entries",
        max_entries,
    );

    let mut openmetrics = String::new();
    encode_registry(&mut openmetrics, &registry).context("encoding the metrics")?;
    Ok(prometheus_text(&openmetrics))
}

/// prometheus-client writes OpenMetrics text, which names a counter family without the
/// `_total` its samples carry (`# TYPE x counter`, `x_total 1`). The Prometheus text format
/// 0.0.4 names a family exactly as its samples; nothing else this module emits differs
/// between the two (no units, exemplars, `_created` samples or `# EOF` are written).
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            if let Some(previous) = help.replace(line) {
                out.push_str(previous);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(help) = help.take() {
                let text = help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or_default();
                let _ = writeln!(out, "# HELP {family}{text}");
            }
            let _ = writeln!(out, "# TYPE {family} {kind}");
            continue;
        }
        if let Some(previous) = help.take() {
            out.push_str(previous);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(previous) = help {
        out.push_str(previous);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, source: Source, connections: u64, last_used: Option<&str>) -> EdgeView {
        let created = "2026-11-23T10:00:00Z".parse().expect("timestamp");
        let edge = serde_json::from_value(serde_json::json!({
            "id": id, "from": "staging.example.org", "to": "prod.example.org",
            "protocol": "tcp", "ports": ["5432"], "owner": "platform", "reason": "migrations",
            "not_before": null,
        }))
        .expect("an edge");
        EdgeView {
            edge: std::sync::Arc::new(edge),
            source,
            created,
            expires: None,
            state: "active".into(),
            trust: None,
            connections,
            last_used: last_used.map(|t| t.parse().expect("timestamp")),
            stale: false,
        }
    }

    fn snapshot() -> Snapshot {
        let mut decisions = BTreeMap::new();
        decisions.insert(
            DecisionKey {
                verdict: "refused".into(),
                reason: "no_edge".into(),
                from: "staging.example.org".into(),
                to: "prod.example.org".into(),
            },
            7,
        );
        let commits = Commits::default();
        commits.record(Outcome::Applied, Duration::from_millis(3));
        commits.record(Outcome::Rejected, Duration::from_millis(1));
        Snapshot {
            generation: 4,
            decisions,
            events_lost: 2,
            pairs: vec![PairStatus {
                from: "staging.example.org".into(),
                to: "prod.example.org".into(),
                would_deny: 1,
                denied: 5,
            }],
            edges: vec![
                edge("db", Source::File, 3, Some("2026-11-23T10:00:01.5Z")),
                edge("break-glass", Source::Grant, 0, None),
            ],
            commits,
            reloads: {
                let reloads = Reloads::default();
                reloads.record(false);
                reloads
            },
            reload_refused: true,
            workload_api: Some((true, 3)),
            bundle_fetches: vec![BundleFetches {
                domain: "prod.example.org".into(),
                fetches: 5,
                failures: 2,
                changes: 1,
                last_success: Some("2026-11-23T10:00:02Z".parse().expect("time")),
            }],
            source: SourceSnapshot {
                revision: Some(42),
                last_sync: Some("2026-11-23T10:00:00Z".parse().expect("timestamp")),
                stale: true,
                error: false,
                addresses: Some(crate::api::status::FleetAddressStatus {
                    published: 3,
                    peer_nodes: 2,
                    loaded: 7,
                    conflicts: 1,
                    unknown_domain: 0,
                    last_error: None,
                }),
            },
        }
    }

    fn maps() -> Vec<MapFill> {
        vec![MapFill {
            map: "ENF_BINDINGS",
            entries: 2,
            max_entries: 65_536,
        }]
    }

    fn rendered() -> String {
        render(&snapshot(), &maps()).expect("render")
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn every_sample_carries_its_value_and_labels() {
        let text = rendered();
        for line in [
            r#"enforcer_decisions_total{verdict="refused",reason="no_edge",from="staging.example.org",to="prod.example.org"} 7"#,
            "enforcer_events_lost_total 2",
            r#"enforcer_denied_total{from="staging.example.org",to="prod.example.org"} 5"#,
            r#"enforcer_would_deny_total{from="staging.example.org",to="prod.example.org"} 1"#,
            r#"enforcer_edge_connections_total{edge="db",from="staging.example.org",to="prod.example.org",source="file"} 3"#,
            r#"enforcer_edge_connections_total{edge="break-glass",from="staging.example.org",to="prod.example.org",source="grant"} 0"#,
            r#"enforcer_edge_last_used_timestamp_seconds{edge="db",from="staging.example.org",to="prod.example.org",source="file"} 1795428001.5"#,
            "enforcer_policy_generation 4",
            "enforcer_workload_api_connected 1",
            "enforcer_workload_api_updates_total 3",
            r#"enforcer_policy_applies_total{outcome="applied"} 1"#,
            r#"enforcer_policy_applies_total{outcome="rejected"} 1"#,
            r#"enforcer_policy_applies_total{outcome="failed"} 0"#,
            "enforcer_policy_apply_duration_seconds_count 1",
            r#"enforcer_policy_apply_duration_seconds_bucket{le="+Inf"} 1"#,
            r#"enforcer_policy_reloads_total{outcome="applied"} 0"#,
            r#"enforcer_policy_reloads_total{outcome="refused"} 1"#,
            "enforcer_policy_reload_refused 1",
            r#"enforcer_bundle_endpoint_fetches_total{domain="prod.example.org",outcome="ok"} 3"#,
            r#"enforcer_bundle_endpoint_fetches_total{domain="prod.example.org",outcome="failed"} 2"#,
            r#"enforcer_bundle_endpoint_changes_total{domain="prod.example.org"} 1"#,
            r#"enforcer_bundle_endpoint_last_success_timestamp_seconds{domain="prod.example.org"} 1795428002.0"#,
            "enforcer_policy_source_stale 1",
            "enforcer_policy_source_error 0",
            "enforcer_policy_source_revision 42",
            "enforcer_policy_source_last_sync_timestamp_seconds 1795428000",
            "enforcer_fleet_addresses_published 3",
            "enforcer_fleet_peer_addresses_loaded 7",
            "enforcer_fleet_peer_address_conflicts 1",
            r#"enforcer_map_entries{map="ENF_BINDINGS"} 2"#,
            r#"enforcer_map_max_entries{map="ENF_BINDINGS"} 65536"#,
        ] {
            has(&text, line);
        }
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("enforcer_edge_last_used") && l.contains("break-glass")),
            "an edge never used has no last-use time:\n{text}"
        );
    }

    /// The 0.0.4 format: every family's HELP and TYPE name its samples exactly, each family
    /// has both, and no OpenMetrics-only line is left.
    #[test]
    fn families_are_declared_as_the_text_format_names_them() {
        let text = rendered();
        let mut declared: BTreeMap<String, (bool, String)> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                declared.entry(name.into()).or_default().0 = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                declared.entry(name.into()).or_default().1 = kind.into();
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let name = line.split(['{', ' ']).next().expect("a sample has a name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| declared.get(*f).is_some_and(|d| d.1 == "histogram"))
                    })
                    .unwrap_or(name);
                let (help, kind) = declared
                    .get(family)
                    .unwrap_or_else(|| panic!("sample {line:?} of an undeclared family"));
                assert!(*help, "family {family} has no HELP");
                if kind == "counter" {
                    assert!(family.ends_with("_total"), "counter {family}");
                }
            }
        }
        assert_eq!(
            declared
                .iter()
                .filter(|(_, (help, kind))| *help && !kind.is_empty())
                .count(),
            25,
            "{declared:?}"
        );
    }

    #[test]
    fn help_and_type_follow_the_family_whatever_comes_between() {
        let openmetrics = "# HELP a_thing Things.\n# TYPE a_thing counter\na_thing_total 1\n\
                           # HELP b Bees.\n# TYPE b gauge\nb 2\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_thing_total Things.\n# TYPE a_thing_total counter\na_thing_total 1\n\
             # HELP b Bees.\n# TYPE b gauge\nb 2\n"
        );
    }
}
