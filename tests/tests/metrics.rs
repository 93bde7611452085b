//! `enforcer daemon --metrics-addr`: what a Prometheus scrape reads after real refused and
//! allowed connections, policy applies, a grant and a revoke, parsed with a strict parser of
//! the text format; and an address that cannot be used, which must stop the daemon before it
//! changes anything. Ports 32400-32599 belong to this file.

use std::{
    net::{SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Exposition, Json, Outcome, Sandbox, http_get, privileged};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const DEV: &str = "dev.example.org";
const LOCALHOST: &str = "127.0.0.1";

/// prod and staging, and a file edge `staging-db` from staging to prod on port 32410.
const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
federation:
  - id: staging-db
    from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [32410]
    owner: platform-team
    reason: metrics test
";

/// [`POLICY`] with a third domain and a second edge: three bindings, two domain pairs.
const POLICY_WITH_DEV: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
  - name: dev.example.org
    cgroups: ['{root}/dev']
federation:
  - id: staging-db
    from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [32410]
    owner: platform-team
    reason: metrics test
  - id: dev-db
    from: dev.example.org
    to: prod.example.org
    protocol: tcp
    ports: [32410]
    owner: platform-team
    reason: metrics test
";

/// Scrapes `addr` until `done` holds or 10 s pass (the programs' counters are read from
/// per-CPU maps the daemon sums on each scrape, and decisions are counted as the daemon reads
/// the event ring buffer, at most 200 ms late), then returns the last scrape.
fn scrape_until(addr: SocketAddr, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = scrape(addr);
        if done(&exposition) || Instant::now() >= deadline {
            return exposition;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(addr: SocketAddr) -> Exposition {
    let response = http_get(addr, "/metrics");
    assert_eq!(response.status, 200, "GET /metrics: {response:?}");
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text format's content type"
    );
    Exposition::parse(&response.body).unwrap_or_else(|e| {
        panic!(
            "the scrape is not valid text format ({e}):\n{}",
            response.body
        )
    })
}

fn status_generation(sb: &Sandbox) -> u64 {
    sb.status()
        .get("generation")
        .and_then(Json::as_u64)
        .expect("status -o json has a generation")
}

/// `enforcer_map_entries` for `map`.
fn entries(e: &Exposition, map: &str) -> Option<f64> {
    e.value("enforcer_map_entries", &[("map", map)])
}

fn applies(e: &Exposition, outcome: &str) -> Option<f64> {
    e.value("enforcer_policy_applies_total", &[("outcome", outcome)])
}

/// An edge's labels: (edge, from, to, source).
fn edge<'a>(id: &'a str, from: &'a str, source: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("edge", id),
        ("from", from),
        ("to", PROD),
        ("source", source),
    ]
}

#[test]
fn a_scrape_reports_refusals_edge_use_generations_applies_and_map_fill() {
    if !privileged("a_scrape_reports_refusals_edge_use_generations_applies_and_map_fill") {
        return;
    }
    let mut sb = Sandbox::new("metrics");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let dev = sb.cgroup("dev");
    let policy = sb.policy("p.yaml", POLICY);
    let with_dev = sb.policy("dev.yaml", POLICY_WITH_DEV);
    let addr: SocketAddr = "127.0.0.1:32400".parse().expect("address");
    sb.start_daemon_with(&policy, &["--metrics-addr", "127.0.0.1:32400"]);

    let _servers = [
        sb.listen(&prod, LOCALHOST, 32410),
        sb.listen(&prod, LOCALHOST, 32411),
        sb.listen(&prod, LOCALHOST, 32412),
    ];
    let refused = 3;
    for i in 0..refused {
        let outcome = sb.connect(&staging, LOCALHOST, 32411);
        assert_eq!(outcome, Outcome::EPERM, "refused connection {i}: {outcome}");
    }
    let allowed = 2;
    for i in 0..allowed {
        let outcome = sb.connect(&staging, LOCALHOST, 32410);
        assert_eq!(
            outcome,
            Outcome::greeted(),
            "allowed connection {i}: {outcome}"
        );
    }

    let pair = [("from", STAGING), ("to", PROD)];
    let staging_db = edge("staging-db", STAGING, "file");
    let decisions = |verdict, reason| {
        [
            ("verdict", verdict),
            ("reason", reason),
            ("from", STAGING),
            ("to", PROD),
        ]
    };
    let refusals = decisions("refused", "no_edge");
    let crossings = decisions("allowed", "edge_allowed");
    let e = scrape_until(addr, |e| {
        e.value("enforcer_denied_total", &pair) >= Some(refused as f64)
            && e.value("enforcer_edge_connections_total", &staging_db) >= Some(allowed as f64)
            && e.value("enforcer_decisions_total", &refusals) >= Some(refused as f64)
            && e.value("enforcer_decisions_total", &crossings) >= Some(allowed as f64)
    });
    assert_eq!(
        e.value("enforcer_decisions_total", &refusals),
        Some(refused as f64),
        "one refusal event per refused connection"
    );
    assert_eq!(
        e.value("enforcer_decisions_total", &crossings),
        Some(allowed as f64),
        "one crossing event per allowed connection"
    );
    assert_eq!(
        e.value("enforcer_events_lost_total", &[]),
        Some(0.0),
        "no event lost"
    );
    assert_eq!(
        e.value("enforcer_denied_total", &pair),
        Some(refused as f64),
        "{refused} refused connections staging -> prod"
    );
    assert_eq!(
        e.value("enforcer_would_deny_total", &pair),
        Some(0.0),
        "nothing is in audit mode"
    );
    assert_eq!(
        e.value("enforcer_edge_connections_total", &staging_db),
        Some(allowed as f64),
        "{allowed} connections across staging-db"
    );
    let last_used = e
        .value("enforcer_edge_last_used_timestamp_seconds", &staging_db)
        .expect("a used edge has a last-use time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    assert!(
        (now - 3600.0..=now + 3600.0).contains(&last_used),
        "last use {last_used} is a Unix time near now ({now})"
    );
    let generation = status_generation(&sb);
    assert_eq!(
        e.value("enforcer_policy_generation", &[]),
        Some(generation as f64),
        "the generation status reports"
    );
    assert_eq!(applies(&e, "applied"), Some(1.0), "the start-up apply");
    assert_eq!(applies(&e, "rejected"), Some(0.0));
    assert_eq!(applies(&e, "failed"), Some(0.0));
    assert_eq!(
        e.value("enforcer_policy_apply_duration_seconds_count", &[]),
        Some(1.0),
        "the start-up apply was timed"
    );
    // Between changes both policy slots hold the policy in force, and a map's fill counts
    // every entry the kernel holds.
    assert_eq!(
        entries(&e, "ENF_BINDINGS"),
        Some(4.0),
        "two bound cgroups, in each of the two slots"
    );
    assert_eq!(
        entries(&e, "ENF_EDGES"),
        Some(2.0),
        "one domain pair with edges, in each of the two slots"
    );
    assert_eq!(entries(&e, "ENF_DOMAINS"), Some(2.0), "two domains");
    assert_eq!(
        entries(&e, "ENF_EDGE_USE"),
        Some(1.0),
        "one edge was used (a per-CPU map, counted by key)"
    );
    for map in ["ENF_BINDINGS", "ENF_EDGES", "ENF_FLOWS", "ENF_COUNTS"] {
        let capacity = e
            .value("enforcer_map_max_entries", &[("map", map)])
            .unwrap_or_else(|| panic!("{map} has a capacity"));
        assert!(capacity >= 1024.0, "{map} holds {capacity} entries");
    }
    for map in ["ENF_TAGS", "ENF_CONNS", "ENF_POLICY", "ENF_NOTIFY"] {
        assert_eq!(entries(&e, map), None, "{map} cannot be counted by key");
    }
    assert_eq!(e.value("enforcer_events_lost_total", &[]), Some(0.0));

    // An apply: a new generation, counted and timed; the maps follow the policy.
    let next = sb.apply(&with_dev);
    let e = scrape(addr);
    assert_eq!(next, status_generation(&sb));
    assert_eq!(
        e.value("enforcer_policy_generation", &[]),
        Some(next as f64)
    );
    assert_eq!(applies(&e, "applied"), Some(2.0));
    assert_eq!(
        e.value("enforcer_policy_apply_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        entries(&e, "ENF_BINDINGS"),
        Some(6.0),
        "three bound cgroups, in each slot"
    );
    assert_eq!(
        entries(&e, "ENF_EDGES"),
        Some(4.0),
        "two domain pairs with edges, in each slot"
    );
    let dev_db = edge("dev-db", DEV, "file");
    assert_eq!(
        e.value("enforcer_edge_connections_total", &dev_db),
        Some(0.0),
        "a new edge starts unused"
    );
    assert_eq!(
        e.value("enforcer_edge_last_used_timestamp_seconds", &dev_db),
        None,
        "an edge never used has no last-use time"
    );

    // A policy the daemon refuses at compile time (more port ranges than one pair may have)
    // changes nothing and is counted as rejected.
    let ports: Vec<String> = (0..65).map(|i| (40000 + 2 * i).to_string()).collect();
    let too_many = sb.policy(
        "too-many.yaml",
        &POLICY.replace("[32410]", &format!("[{}]", ports.join(", "))),
    );
    let out = sb.enforcer(&["policy", "apply", too_many.to_str().expect("utf-8 path")]);
    assert!(
        !out.status.success(),
        "a policy over the port-range limit is refused"
    );
    let e = scrape(addr);
    assert_eq!(applies(&e, "rejected"), Some(1.0));
    assert_eq!(
        e.value("enforcer_policy_generation", &[]),
        Some(next as f64)
    );
    assert_eq!(
        e.value("enforcer_policy_apply_duration_seconds_count", &[]),
        Some(2.0),
        "only applied changes are timed"
    );

    // A grant and its revocation are policy changes too, and the grant's edge is labeled so.
    let granted = sb.grant(&[
        "--from",
        DEV,
        "--to",
        PROD,
        "--protocol",
        "tcp",
        "--ports",
        "32412",
        "--ttl",
        "10m",
        "--owner",
        "oncall",
        "--reason",
        "metrics test",
        "--id",
        "dev-break-glass",
    ]);
    assert_eq!(granted, "dev-break-glass");
    assert_eq!(
        sb.connect(&dev, LOCALHOST, 32412),
        Outcome::greeted(),
        "dev -> prod:32412 across the grant"
    );
    let break_glass = edge("dev-break-glass", DEV, "grant");
    let e = scrape_until(addr, |e| {
        e.value("enforcer_edge_connections_total", &break_glass) >= Some(1.0)
    });
    assert_eq!(
        e.value("enforcer_edge_connections_total", &break_glass),
        Some(1.0)
    );
    assert_eq!(
        e.value("enforcer_policy_generation", &[]),
        Some((next + 1) as f64)
    );
    sb.revoke("dev-break-glass");
    let e = scrape(addr);
    assert_eq!(
        applies(&e, "applied"),
        Some(4.0),
        "start-up, apply, grant, revoke"
    );
    assert_eq!(
        e.value("enforcer_policy_generation", &[]),
        Some((next + 2) as f64)
    );
    assert_eq!(status_generation(&sb), next + 2);
    assert_eq!(
        e.matching(
            "enforcer_edge_connections_total",
            &[("edge", "dev-break-glass")]
        )
        .count(),
        0,
        "a revoked grant is no longer reported"
    );
    // The kernel's per-pair counters are still exactly the refusals made.
    assert_eq!(
        e.value("enforcer_denied_total", &pair),
        Some(refused as f64)
    );

    // Only GET /metrics is served.
    for path in ["/", "/metrics/x", "/status"] {
        let response = http_get(addr, path);
        assert_eq!(response.status, 404, "GET {path}: {response:?}");
    }
}

#[test]
fn an_unusable_metrics_address_stops_the_daemon_before_it_changes_anything() {
    if !privileged("an_unusable_metrics_address_stops_the_daemon_before_it_changes_anything") {
        return;
    }
    let sb = Sandbox::new("metrics-inuse");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let policy = sb.policy("p.yaml", POLICY);
    let taken = TcpListener::bind("127.0.0.1:32401").expect("taking port 32401");
    let stderr = sb.daemon_must_fail(&policy, &["--metrics-addr", "127.0.0.1:32401"]);
    assert!(
        stderr.contains("--metrics-addr 127.0.0.1:32401")
            && stderr.contains("in use")
            && stderr.contains("nothing was changed"),
        "the error names the flag, the address and the cause: {stderr}"
    );
    for (what, path) in [
        ("pin dir", &sb.pin_dir),
        ("state dir", &sb.state_dir),
        ("control socket", &sb.socket),
    ] {
        assert!(!path.exists(), "{what} {} was created", path.display());
    }
    drop(taken);
}
