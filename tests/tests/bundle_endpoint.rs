//! Bundles fetched from SPIFFE bundle endpoints (Federation 5.2), against endpoints of the
//! tests' own (`enforcer_tests::bundle_server`) for both profiles: a fetched bundle gates an
//! edge as a file bundle does; a rotation is picked up; an endpoint that serves another
//! domain's bundle, garbage or nothing keeps the last good bundle in force until it expires,
//! and then the edges that need it are suspended and their live connections end; a slow
//! endpoint stalls neither the daemon nor another domain's fetches. The daemon runs with
//! `--bundle-endpoint-min-refresh 100ms` and the endpoints serve a refresh hint of one
//! second, so nothing waits for real poll intervals. Ports 35000-35099 belong to this file.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Exposition, Json, Outcome, Sandbox,
    bundle_server::{BundleServer, Serve},
    http_get,
    pki::{Issued, Spec},
    privileged,
};
use sha2::{Digest as _, Sha256};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const LOCALHOST: &str = "127.0.0.1";
const ENDPOINT_ID: &str = "spiffe://prod.example.org/bundle-endpoint";
const FLOWING: Duration = Duration::from_secs(5);
/// How long the daemon gets to fetch (every second here), notice (it looks every second) and
/// act.
const NOTICED: Duration = Duration::from_secs(15);
const TCP_ENDED: [&str; 2] = ["ECONNABORTED", "ECONNRESET"];
const METRICS: &str = "127.0.0.1:35090";

/// A bundle document of `cas` that asks to be fetched again in a second.
fn document(cas: &[&Issued]) -> String {
    enforcer_tests::pki::jwks(cas)
        .replace("\"spiffe_refresh_hint\":300", "\"spiffe_refresh_hint\":1")
}

/// prod's bundle from `endpoint` (a `bundle_endpoint:` flow mapping, plus a bootstrap
/// `bundle:` line when given), staging's from a file; a bundle-gated edge staging -> prod on
/// `gated` and an ungated one on `open`.
fn policy(
    endpoint: &str,
    bootstrap: Option<&str>,
    staging: &str,
    gated: &str,
    open: &str,
) -> String {
    let bootstrap = bootstrap.map_or_else(String::new, |b| format!("\n    bundle: {b}"));
    format!(
        "version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod']{bootstrap}
    bundle_endpoint: {endpoint}
  - name: {STAGING}
    cgroups: ['{{root}}/staging']
    {staging}
federation:
  - id: gated
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{gated}]
    owner: pki-team
    reason: bundle endpoint test
    require_bundles: true
  - id: open
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{open}]
    owner: pki-team
    reason: bundle endpoint test
"
    )
}

fn web_endpoint(server: &BundleServer) -> String {
    format!("{{url: '{}', profile: https_web}}", server.url())
}

fn spiffe_endpoint(server: &BundleServer) -> String {
    format!(
        "{{url: '{}', profile: https_spiffe, endpoint_id: '{ENDPOINT_ID}'}}",
        server.url()
    )
}

/// A Web PKI CA (written to `roots.pem` for `--bundle-endpoint-roots`) and a certificate
/// for 127.0.0.1 it issued.
fn web_pki(sb: &Sandbox) -> (Issued, String) {
    let mut spec = Spec::ca("web-pki.test");
    spec.uris.clear();
    let ca = Issued::self_signed(&spec);
    let roots = sb.dir().join("roots.pem");
    fs::write(&roots, &ca.pem).expect("roots");
    let server = ca.issue_web_server(IpAddr::V4(Ipv4Addr::LOCALHOST));
    (server, roots.display().to_string())
}

fn staging_bundle(sb: &Sandbox) -> String {
    let path = sb.dir().join("staging.pem");
    fs::write(&path, Issued::self_signed(&Spec::ca(STAGING)).pem).expect("bundle");
    format!("bundle: {}", path.display())
}

fn start(sb: &mut Sandbox, policy: &str, roots: Option<&str>, metrics: bool) {
    let file = sb.policy("p.yaml", policy);
    let mut flags = vec!["--bundle-endpoint-min-refresh", "100ms"];
    if let Some(roots) = roots {
        flags.extend(["--bundle-endpoint-roots", roots]);
    }
    if metrics {
        flags.extend(["--metrics-addr", METRICS]);
    }
    sb.start_daemon_with(&file, &flags);
}

fn field(json: &Json, key: &str) -> String {
    json.get(key)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string `{key}` in {json}"))
        .to_owned()
}

fn number(json: &Json, key: &str) -> u64 {
    json.get(key)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("no number `{key}` in {json}"))
}

fn bundle_status(sb: &Sandbox, domain: &str) -> Json {
    sb.status()
        .get("bundles")
        .and_then(|b| b.find_by("domain", domain))
        .cloned()
        .unwrap_or_else(|| panic!("status lists no bundle of {domain}: {}", sb.status()))
}

fn endpoint_status(sb: &Sandbox) -> Json {
    bundle_status(sb, PROD)
        .get("endpoint")
        .cloned()
        .unwrap_or_else(|| panic!("prod's bundle shows no endpoint: {}", sb.status()))
}

fn fingerprints(bundle: &Json) -> Vec<String> {
    bundle
        .get("authorities")
        .expect("authorities")
        .as_array()
        .iter()
        .map(|a| field(a, "sha256"))
        .collect()
}

fn sha256(ca: &Issued) -> String {
    Sha256::digest(&ca.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn edge_state(sb: &Sandbox, id: &str) -> String {
    let edge = sb
        .listed_edge(id)
        .unwrap_or_else(|| panic!("edge {id} not listed: {}", sb.edges()));
    field(&edge, "state")
}

/// The plain `status` text, as an operator reads it.
fn status_text(sb: &Sandbox) -> String {
    let out = sb.enforcer(&["status"]);
    assert!(out.status.success(), "status: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scrape() -> Exposition {
    let response = http_get(METRICS.parse().expect("address"), "/metrics");
    assert_eq!(response.status, 200, "GET /metrics: {response:?}");
    Exposition::parse(&response.body).expect("the text format")
}

#[test]
fn an_https_web_bundle_is_fetched_gates_its_edge_and_rotates() {
    if !privileged("an_https_web_bundle_is_fetched_gates_its_edge_and_rotates") {
        return;
    }
    let mut sb = Sandbox::new("bep-web");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let (web_cert, roots) = web_pki(&sb);
    let first = Issued::self_signed(&Spec::ca(PROD));
    let server = BundleServer::start(&web_cert, &[], Serve::Document(document(&[&first])));
    let text = policy(
        &web_endpoint(&server),
        None,
        &staging_bundle(&sb),
        "35000",
        "35001",
    );
    start(&mut sb, &text, Some(&roots), true);
    sb.wait_daemon_log(
        "trust bundle of prod.example.org fetched, changed from",
        NOTICED,
    );
    sb.wait_daemon_log("edge gated active while its bundles are valid", NOTICED);
    let _gated = sb.listen(&prod, LOCALHOST, 35000);
    assert_eq!(
        sb.connect(&staging, LOCALHOST, 35000),
        Outcome::greeted(),
        "the gated edge with prod's fetched bundle"
    );
    let bundle = bundle_status(&sb, PROD);
    assert_eq!(field(&bundle, "source"), "endpoint", "{bundle}");
    assert_eq!(field(&bundle, "state"), "valid", "{bundle}");
    assert_eq!(field(&bundle, "path"), server.url());
    assert_eq!(fingerprints(&bundle), [sha256(&first)]);
    let endpoint = endpoint_status(&sb);
    assert_eq!(field(&endpoint, "profile"), "https_web");
    assert_eq!(number(&endpoint, "refresh_seconds"), 1, "{endpoint}");
    assert!(number(&endpoint, "fetches") >= 1, "{endpoint}");
    let text = status_text(&sb);
    assert!(
        text.contains(&format!("endpoint https_web {}", server.url())),
        "{text}"
    );

    // The endpoint rotates its CA: the next fetch puts the new one in force.
    let second = Issued::self_signed(&Spec::ca(PROD));
    server.serve(Serve::Document(document(&[&second])));
    sb.wait_daemon_log(
        "trust bundle of prod.example.org fetched, changed from",
        NOTICED,
    );
    assert_eq!(fingerprints(&bundle_status(&sb, PROD)), [sha256(&second)]);
    assert!(number(&endpoint_status(&sb), "changes") >= 2);
    assert_eq!(edge_state(&sb, "gated"), "active");
    assert_eq!(sb.connect(&staging, LOCALHOST, 35000), Outcome::greeted());
    let metrics = scrape();
    assert!(
        metrics
            .value(
                "enforcer_bundle_endpoint_fetches_total",
                &[("domain", PROD), ("outcome", "ok")]
            )
            .is_some_and(|n| n >= 2.0),
        "fetches counted in the metrics"
    );
    assert!(
        metrics
            .value(
                "enforcer_bundle_endpoint_changes_total",
                &[("domain", PROD)]
            )
            .is_some_and(|n| n >= 2.0),
        "changes counted in the metrics"
    );

    // A server at the same address whose certificate no configured root issued: refused by
    // Web PKI, and the bundle fetched before stays.
    let addr = server.addr();
    drop(server);
    let mut stranger = Spec::ca("web-pki.test");
    stranger.uris.clear();
    let untrusted =
        Issued::self_signed(&stranger).issue_web_server(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let third = Issued::self_signed(&Spec::ca(PROD));
    let _untrusted =
        BundleServer::start_at(addr, &untrusted, &[], Serve::Document(document(&[&third])));
    let line = sb.wait_daemon_log("TLS handshake with 127.0.0.1", NOTICED);
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert_eq!(fingerprints(&bundle_status(&sb, PROD)), [sha256(&second)]);
    assert_eq!(sb.connect(&staging, LOCALHOST, 35000), Outcome::greeted());
}

#[test]
fn an_https_spiffe_endpoint_must_prove_its_id_and_serve_its_own_domain() {
    if !privileged("an_https_spiffe_endpoint_must_prove_its_id_and_serve_its_own_domain") {
        return;
    }
    let mut sb = Sandbox::new("bep-spiffe");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let ca = Issued::self_signed(&Spec::ca(PROD));
    let next_ca = Issued::self_signed(&Spec::ca(PROD));
    let bootstrap = sb.dir().join("prod-bootstrap.pem");
    fs::write(&bootstrap, &ca.pem).expect("bootstrap");
    let svid = ca.issue(&Spec::leaf(ENDPOINT_ID));
    let server = BundleServer::start(&svid, &[], Serve::Document(document(&[&ca, &next_ca])));
    let bootstrap = bootstrap.display().to_string();
    let text = policy(
        &spiffe_endpoint(&server),
        Some(&bootstrap),
        &staging_bundle(&sb),
        "35010",
        "35011",
    );
    start(&mut sb, &text, None, false);
    sb.wait_daemon_log(
        "trust bundle of prod.example.org fetched, changed from",
        NOTICED,
    );
    let bundle = bundle_status(&sb, PROD);
    assert_eq!(fingerprints(&bundle), [sha256(&ca), sha256(&next_ca)]);
    let endpoint = endpoint_status(&sb);
    assert_eq!(field(&endpoint, "endpoint_id"), ENDPOINT_ID);
    assert_eq!(field(&endpoint, "bootstrap"), bootstrap);
    let _gated = sb.listen(&prod, LOCALHOST, 35010);
    assert_eq!(sb.connect(&staging, LOCALHOST, 35010), Outcome::greeted());

    // The endpoint serves staging's bundle: refused, the last good one stays.
    let staging_ca = Issued::self_signed(&Spec::ca(STAGING));
    server.serve(Serve::Document(document(&[&staging_ca])));
    let line = sb.wait_daemon_log(
        "fetching the trust bundle of prod.example.org from",
        NOTICED,
    );
    assert!(line.contains("names another trust domain"), "{line}");
    assert!(line.contains("the bundle in force stays"), "{line}");
    // A CA naming no domain at all, which cannot verify the endpoint's own SVID.
    let mut anonymous = Spec::ca(PROD);
    anonymous.uris.clear();
    server.serve(Serve::Document(document(&[&Issued::self_signed(
        &anonymous,
    )])));
    sb.wait_daemon_log("it is not the bundle of prod.example.org", NOTICED);
    let bundle = bundle_status(&sb, PROD);
    assert_eq!(field(&bundle, "state"), "valid");
    assert_eq!(fingerprints(&bundle), [sha256(&ca), sha256(&next_ca)]);
    let endpoint = endpoint_status(&sb);
    assert!(
        field(&endpoint, "last_error").contains("not the bundle of prod.example.org"),
        "{endpoint}"
    );
    assert!(number(&endpoint, "failures") >= 2, "{endpoint}");
    assert_eq!(edge_state(&sb, "gated"), "active");
    assert_eq!(sb.connect(&staging, LOCALHOST, 35010), Outcome::greeted());

    // Another server takes the address with an SVID of the domain but another ID: its
    // handshake is refused.
    let addr = server.addr();
    drop(server);
    let impostor = ca.issue(&Spec::leaf("spiffe://prod.example.org/not-the-endpoint"));
    let _impostor = BundleServer::start_at(addr, &impostor, &[], Serve::Document(document(&[&ca])));
    sb.wait_daemon_log(
        "not of endpoint_id spiffe://prod.example.org/bundle-endpoint",
        NOTICED,
    );
    assert_eq!(fingerprints(&bundle_status(&sb, PROD)).len(), 2);
    assert!(
        status_text(&sb).contains("last fetch failed: TLS handshake"),
        "{}",
        status_text(&sb)
    );
}

#[test]
fn an_unreachable_endpoint_keeps_its_bundle_until_expiry_then_ends_the_traffic() {
    if !privileged("an_unreachable_endpoint_keeps_its_bundle_until_expiry_then_ends_the_traffic") {
        return;
    }
    let mut sb = Sandbox::new("bep-lapse");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let (web_cert, roots) = web_pki(&sb);
    let lasting = Issued::self_signed(&Spec::ca(PROD));
    let server = BundleServer::start(&web_cert, &[], Serve::Document(document(&[&lasting])));
    let text = policy(
        &web_endpoint(&server),
        None,
        &staging_bundle(&sb),
        "'35020-35021'",
        "35022",
    );
    start(&mut sb, &text, Some(&roots), false);
    sb.wait_daemon_log("edge gated active while its bundles are valid", NOTICED);

    // Served once the daemon runs, so its seconds are not spent on start-up.
    let lapsing = Issued::self_signed(&Spec::ca(PROD).valid(-60, 12));
    server.serve(Serve::Document(document(&[&lapsing])));
    sb.wait_daemon_log(
        "trust bundle of prod.example.org fetched, changed from",
        NOTICED,
    );
    let mut sink = sb.sink(&prod, LOCALHOST, 35020);
    let _gated = sb.listen(&prod, LOCALHOST, 35021);
    let _open = sb.listen(&prod, LOCALHOST, 35022);
    let mut stream = sb.stream(&staging, LOCALHOST, 35020);
    sink.expect_received(3, FLOWING, "staging -> prod over the gated edge");

    // Garbage, then nothing at all: each a failed fetch, and the bundle in force stays.
    server.serve(Serve::Garbage);
    let line = sb.wait_daemon_log("fetching the trust bundle of prod.example.org", NOTICED);
    assert!(line.contains("no SPIFFE bundle document"), "{line}");
    server.serve(Serve::Close);
    sb.wait_daemon_log("fetching the trust bundle of prod.example.org", NOTICED);
    let addr = server.addr();
    drop(server);
    let line = sb.wait_daemon_log("cannot connect to 127.0.0.1", NOTICED);
    assert!(
        line.contains("the bundle in force stays, until it expires"),
        "{line}"
    );
    assert_eq!(edge_state(&sb, "gated"), "active");
    sink.expect_received(3, FLOWING, "the gated edge while the endpoint is down");

    // Unreachable past the bundle's expiry: suspended, the live connection ended.
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    stream.expect_end(NOTICED, &TCP_ENDED, "prod's fetched bundle lapsed");
    assert_eq!(sb.connect(&staging, LOCALHOST, 35021), Outcome::EPERM);
    assert_eq!(sb.connect(&staging, LOCALHOST, 35022), Outcome::greeted());
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "expired");
    let endpoint = endpoint_status(&sb);
    assert!(
        field(&endpoint, "last_error").contains("cannot connect"),
        "{endpoint}"
    );

    // It returns serving an expired bundle: taken in, and still nothing is allowed.
    let expired = Issued::self_signed(&Spec::ca(PROD).valid(-120, -60));
    let server =
        BundleServer::start_at(addr, &web_cert, &[], Serve::Document(document(&[&expired])));
    sb.wait_daemon_log(
        "trust bundle of prod.example.org fetched, changed from",
        NOTICED,
    );
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "expired");
    assert_eq!(sb.connect(&staging, LOCALHOST, 35021), Outcome::EPERM);

    // And then a valid one: the edge resumes.
    server.serve(Serve::Document(document(&[&lasting])));
    sb.wait_daemon_log("edge gated active while its bundles are valid", NOTICED);
    assert_eq!(sb.connect(&staging, LOCALHOST, 35021), Outcome::greeted());
}

#[test]
fn a_hanging_endpoint_stalls_neither_the_daemon_nor_other_domains() {
    if !privileged("a_hanging_endpoint_stalls_neither_the_daemon_nor_other_domains") {
        return;
    }
    let mut sb = Sandbox::new("bep-slow");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let (web_cert, roots) = web_pki(&sb);
    let slow = BundleServer::start(&web_cert, &[], Serve::Hang);
    let staging_ca = Issued::self_signed(&Spec::ca(STAGING));
    let quick = BundleServer::start(&web_cert, &[], Serve::Document(document(&[&staging_ca])));
    let text = policy(
        &web_endpoint(&slow),
        None,
        &format!("bundle_endpoint: {}", web_endpoint(&quick)),
        "35030",
        "35031",
    );
    start(&mut sb, &text, Some(&roots), false);
    slow.wait_requests(1, NOTICED);
    let before = quick.requests();
    quick.wait_requests(before + 3, NOTICED);
    for _ in 0..3 {
        let asked = Instant::now();
        let bundle = bundle_status(&sb, PROD);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "status took {:?} while prod's endpoint hangs",
            asked.elapsed()
        );
        assert_eq!(field(&bundle, "state"), "unusable", "{bundle}");
    }
    assert_eq!(field(&bundle_status(&sb, STAGING), "state"), "valid");
    let line = sb.wait_daemon_log("fetching the trust bundle of prod.example.org", NOTICED);
    assert!(line.contains("no complete answer within 10s"), "{line}");
    assert!(line.contains("no bundle yet"), "{line}");
    // The next attempt (after 100 ms) hangs too; the one that timed out was closed.
    let asked = slow.requests();
    slow.wait_requests(asked + 1, NOTICED);
    slow.wait_hanging(1, Duration::from_secs(5));
}

#[test]
fn policy_check_reports_bundle_endpoint_mistakes_at_their_line() {
    let dir = std::env::temp_dir().join(format!("enforcer-bep-check-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("p.yaml");
    fs::write(
        &file,
        "version: 1
domains:
  - name: prod.example.org
    bundle_endpoint: {url: 'http://bundles.example.org', profile: https_web}
  - name: staging.example.org
    bundle_endpoint:
      url: https://bundles.example.org/staging
      profile: https_spiffe
      endpoint_id: spiffe://prod.example.org/server
",
    )
    .expect("policy");
    let name = file.display().to_string();
    let out = Command::new(enforcer_tests::enforcer())
        .args(["policy", "check", &name])
        .output()
        .expect("enforcer runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for line in [
        format!(
            "{name}:4:28: bundle endpoint URL `http://bundles.example.org` must start with https://"
        ),
        format!("{name}:7:7: a bundle_endpoint with profile `https_spiffe` needs a `bundle` file"),
        format!(
            "{name}:7:7: `endpoint_id` spiffe://prod.example.org/server is not in trust domain staging.example.org"
        ),
    ] {
        assert!(stderr.contains(&line), "expected {line}\nin:\n{stderr}");
    }
    fs::remove_dir_all(dir).expect("cleanup");
}
