//! A fleet under one policy kept in etcd (`--source etcd`, `enforcer fleet`), against a real
//! three-member etcd cluster on 127.0.0.1 and two simulated hosts, each a daemon with its own
//! cgroup root, pins and state dir. Every check is what an application on a host sees (a
//! staging workload connecting to a prod listener is greeted or gets EPERM) or what the CLI
//! prints. Waits poll a readiness signal (`etcdctl endpoint health`, the node's `status`),
//! never sleep.
//!
//! Ports 31200-31299 belong to this file (below the ephemeral range, where etcd's free ports
//! come from).

use std::{
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Exposition, Json, Outcome, Sandbox,
    etcd::{Cut, EtcdCluster},
    http_get, patient, privileged,
};

const LOCALHOST: &str = "127.0.0.1";
const PREFIX: &str = "/fleet-test";
/// How long a change gets to reach a node: generous, no timing assertion.
const REACH: Duration = Duration::from_secs(30);

/// Whether the fleet tests can run: privileged, and etcd installed. Says so loudly, or fails
/// under ENFORCER_REQUIRE_PRIVILEGED, when they cannot.
fn runnable(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    if enforcer_tests::etcd::installed() {
        return true;
    }
    assert!(
        std::env::var_os(enforcer_tests::REQUIRE_ENV).is_none(),
        "{test}: etcd and etcdctl are not installed (cargo xtask setup installs them) and {} is \
         set",
        enforcer_tests::REQUIRE_ENV
    );
    eprintln!("\n!!!!!!!! SKIPPED fleet test {test}: etcd is not installed. !!!!!!!!\n");
    false
}

/// A simulated host: its sandbox, its staging workload's cgroup, and prod listeners on its
/// own two ports (the hosts share 127.0.0.1).
struct Host {
    sb: Sandbox,
    staging: String,
    ports: [u16; 2],
    _servers: Vec<enforcer_tests::Server>,
}

impl Host {
    fn new(test: &str, ports: [u16; 2]) -> Self {
        let sb = Sandbox::new(test);
        let prod = sb.cgroup("prod");
        let staging = sb.cgroup("staging");
        let servers = ports
            .iter()
            .map(|&port| sb.listen(&prod, LOCALHOST, port))
            .collect();
        Self {
            sb,
            staging,
            ports,
            _servers: servers,
        }
    }

    /// Starts this host's daemon following the fleet at `endpoints` as `node`.
    fn start(&mut self, endpoints: &str, node: &str) {
        if let Err(why) = self
            .sb
            .try_start_fleet_daemon(&fleet_flags(endpoints, node))
        {
            panic!("{why}");
        }
    }

    /// Asserts that edge `open` (0 or 1, or none) of this host's ports is the one allowed.
    fn expect(&self, open: Option<usize>, when: &str) {
        for (i, &port) in self.ports.iter().enumerate() {
            let outcome = self.sb.connect(&self.staging, LOCALHOST, port);
            let expected = if Some(i) == open {
                Outcome::greeted()
            } else {
                Outcome::EPERM
            };
            assert_eq!(
                outcome, expected,
                "{when}: staging -> prod:{port} on {}; the application saw {outcome}",
                self.sb.root
            );
        }
    }

    fn source(&self) -> Json {
        self.sb
            .status()
            .get("policy_source")
            .cloned()
            .expect("status has policy_source")
    }

    /// Waits until the node enforces fleet revision `revision`.
    fn wait_revision(&self, revision: u64, when: &str) -> Json {
        self.wait(when, |s| {
            s.get("revision").and_then(Json::as_u64) == Some(revision)
        })
    }

    fn wait_stale(&self, stale: bool, when: &str) -> Json {
        self.wait(when, |s| {
            s.get("stale").and_then(Json::as_bool) == Some(stale)
        })
    }

    fn wait(&self, when: &str, done: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + patient(REACH);
        loop {
            let source = self.source();
            if done(&source) {
                return source;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: {} never got there; its policy_source: {source:?}",
                self.sb.root
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn generation(&self) -> u64 {
        self.sb
            .status()
            .get("generation")
            .and_then(Json::as_u64)
            .expect("status has a generation")
    }
}

fn fleet_flags(endpoints: &str, node: &str) -> Vec<String> {
    [
        "--source",
        "etcd",
        "--etcd-endpoints",
        endpoints,
        "--etcd-prefix",
        PREFIX,
        "--node",
        node,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The fleet's document: prod and staging bound on every host, and one staging -> prod TCP
/// edge to each host's port number `open` (none: every crossing refused).
fn document(hosts: &[&Host], open: Option<usize>) -> String {
    let cgroups = |name: &str| {
        hosts
            .iter()
            .map(|h| format!("'{}/{name}'", h.sb.root))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut yaml = format!(
        "version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: prod.example.org
    cgroups: [{}]
  - name: staging.example.org
    cgroups: [{}]
",
        cgroups("prod"),
        cgroups("staging")
    );
    let ports: Vec<String> = open
        .map(|i| hosts.iter().map(|h| h.ports[i].to_string()).collect())
        .unwrap_or_default();
    if ports.is_empty() {
        yaml.push_str("federation: []\n");
    } else {
        yaml.push_str(&format!(
            "federation:
  - id: migrations
    from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [{}]
    owner: platform-team
    reason: fleet test
",
            ports.join(", ")
        ));
    }
    yaml
}

/// Writes `text` to `NAME.yaml` in `dir`.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("writing a policy");
    path
}

/// `enforcer fleet ARGS` against the cluster at `endpoints`.
fn fleet(endpoints: &str, args: &[&str]) -> Output {
    std::process::Command::new(enforcer_tests::enforcer())
        .arg("fleet")
        .args(args)
        .args(["--etcd-endpoints", endpoints, "--etcd-prefix", PREFIX])
        .output()
        .expect("running enforcer fleet")
}

/// `fleet apply FILE`, which must succeed; returns the revision it wrote.
fn apply(endpoints: &str, path: &Path) -> u64 {
    let out = fleet(endpoints, &["apply", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet apply {} failed: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    revision_in(&stdout)
}

/// The revision a successful `fleet apply` printed.
fn revision_in(stdout: &str) -> u64 {
    stdout
        .split(" revision ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fleet apply printed no revision: {stdout}"))
}

fn fleet_status(endpoints: &str) -> Json {
    let out = fleet(endpoints, &["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "fleet status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("fleet status prints JSON")
}

/// Waits until `fleet status` lists `node` enforcing `revision`; returns its record.
fn wait_listed(endpoints: &str, node: &str, revision: u64) -> Json {
    let deadline = Instant::now() + patient(REACH);
    loop {
        let status = fleet_status(endpoints);
        if let Some(record) = status.get("nodes").and_then(|n| n.find_by("node", node))
            && record.get("revision").and_then(Json::as_u64) == Some(revision)
        {
            return record.clone();
        }
        assert!(
            Instant::now() < deadline,
            "fleet status never listed {node} at revision {revision}: {status:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fleet_apply_reaches_every_node_and_losing_one_member_changes_nothing() {
    if !runnable("fleet_apply") {
        return;
    }
    let mut cluster = EtcdCluster::start("fleet-apply", 3);
    let endpoints = cluster.endpoints();
    let mut a = Host::new("fleet-apply-a", [31201, 31202]);
    let mut b = Host::new("fleet-apply-b", [31211, 31212]);
    let dir = a.sb.dir().to_path_buf();
    let first = apply(
        &endpoints,
        &file(&dir, "first", &document(&[&a, &b], Some(0))),
    );
    a.start(&endpoints, "host-a");
    b.start(&endpoints, "host-b");
    for host in [&a, &b] {
        host.wait_revision(first, "at start");
        host.expect(Some(0), "the fleet's first document");
    }

    let second = apply(
        &endpoints,
        &file(&dir, "second", &document(&[&a, &b], Some(1))),
    );
    assert!(second > first, "revisions grow: {first} then {second}");
    for (host, node) in [(&a, "host-a"), (&b, "host-b")] {
        let source = host.wait_revision(second, "after the second fleet apply");
        assert_eq!(source.get("kind").and_then(Json::as_str), Some("etcd"));
        assert_eq!(source.get("stale").and_then(Json::as_bool), Some(false));
        host.expect(Some(1), "the fleet's second document");
        let record = wait_listed(&endpoints, node, second);
        assert_eq!(
            record.get("current").and_then(Json::as_bool),
            Some(true),
            "{record:?}"
        );
        assert_eq!(
            record.get("generation").and_then(Json::as_u64),
            Some(host.generation()),
            "the heartbeat reports the generation the node enforces: {record:?}"
        );
    }

    let text = fleet(&endpoints, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{PREFIX}/policy at revision {second}"))
            && text
                .lines()
                .filter(|l| l.starts_with("host-") && l.ends_with("current"))
                .count()
                == 2,
        "fleet status shows both nodes current: {text}"
    );

    // A local apply would make this node differ from the fleet: refused, nothing changes.
    let before = a.generation();
    let local = file(&dir, "local", &document(&[&a, &b], Some(0)));
    let out =
        a.sb.enforcer(&["policy", "apply", &local.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a local apply is refused: {stderr}");
    assert!(
        stderr.contains("fleet apply") && stderr.contains("nothing changed"),
        "the refusal says why and what to do: {stderr}"
    );
    assert_eq!(a.generation(), before);
    a.expect(Some(1), "after the refused local apply");

    // One member of three lost: the cluster keeps its quorum, and the fleet does not notice.
    cluster.kill_member(0);
    let third = apply(&endpoints, &file(&dir, "third", &document(&[&a, &b], None)));
    for host in [&a, &b] {
        let source = host.wait_revision(third, "after a fleet apply with one member down");
        assert_eq!(
            source.get("stale").and_then(Json::as_bool),
            Some(false),
            "{source:?}"
        );
        host.expect(None, "the fleet's third document, one member down");
    }

    // A node that dies drops out of `fleet status` when its lease runs out; the others stay.
    b.sb.kill_daemon();
    let deadline = Instant::now() + patient(REACH);
    loop {
        let status = fleet_status(&endpoints);
        let nodes = status.get("nodes").expect("fleet status lists nodes");
        if nodes.find_by("node", "host-b").is_none() {
            assert!(nodes.find_by("node", "host-a").is_some(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-b is still listed after its daemon was killed: {status:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_partitioned_node_keeps_enforcing_reports_stale_and_catches_up() {
    if !runnable("fleet_partition") {
        return;
    }
    let mut cluster = EtcdCluster::start("fleet-partition", 3);
    let endpoints = cluster.endpoints();
    // Host b reaches every member only through a link the test can cut.
    let cuts: Vec<Cut> = (0..3).map(|i| Cut::to(cluster.client_port(i))).collect();
    let b_endpoints = cuts.iter().map(Cut::endpoint).collect::<Vec<_>>().join(",");
    let mut a = Host::new("fleet-partition-a", [31221, 31222]);
    let mut b = Host::new("fleet-partition-b", [31231, 31232]);
    let dir = a.sb.dir().to_path_buf();
    let first = apply(
        &endpoints,
        &file(&dir, "first", &document(&[&a, &b], Some(0))),
    );
    a.start(&endpoints, "host-a");
    let metrics = "127.0.0.1:31239";
    let mut flags = fleet_flags(&b_endpoints, "host-b");
    flags.extend(["--metrics-addr".to_owned(), metrics.to_owned()]);
    if let Err(why) = b.sb.try_start_fleet_daemon(&flags) {
        panic!("{why}");
    }
    b.wait_revision(first, "at start");
    let scrape = |what: &str| {
        let body = http_get(metrics.parse().expect("an address"), "/metrics").body;
        let exposition = Exposition::parse(&body).expect("the text format");
        let value = |name: &str| exposition.value(name, &[]);
        (
            value("enforcer_policy_source_stale"),
            value("enforcer_policy_source_revision"),
            format!("{what}: {body}"),
        )
    };
    let (stale, revision, body) = scrape("connected");
    assert_eq!((stale, revision), (Some(0.0), Some(first as f64)), "{body}");

    for cut in &cuts {
        cut.set_cut(true);
    }
    let stale = b.wait_stale(true, "cut off from every member");
    assert!(
        stale.get("last_error").and_then(Json::as_str).is_some(),
        "a stale node says why: {stale:?}"
    );
    let (stale, revision, body) = scrape("cut off");
    assert_eq!((stale, revision), (Some(1.0), Some(first as f64)), "{body}");
    let shown = b.sb.enforcer(&["status"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("as node host-b") && shown.contains("STALE"),
        "status says the node is stale: {shown}"
    );
    let second = apply(
        &endpoints,
        &file(&dir, "second", &document(&[&a, &b], Some(1))),
    );
    a.wait_revision(second, "the connected node");
    a.expect(Some(1), "the connected node follows the fleet");
    b.expect(Some(0), "the partitioned node keeps its last good document");
    assert_eq!(
        b.source().get("revision").and_then(Json::as_u64),
        Some(first)
    );

    for cut in &cuts {
        cut.set_cut(false);
    }
    b.wait_revision(second, "after the partition healed");
    b.wait_stale(false, "after the partition healed");
    b.expect(Some(1), "the healed node caught up");

    // Quorum lost: the nodes keep enforcing what they have, and say they are stale.
    cluster.kill_member(1);
    cluster.kill_member(2);
    for host in [&a, &b] {
        host.wait_stale(true, "without a quorum");
        host.expect(Some(1), "without a quorum, the last good document stays");
    }
    cluster.start_member(1);
    cluster.start_member(2);
    cluster.wait_healthy(1);
    cluster.wait_healthy(2);
    for host in [&a, &b] {
        host.wait_stale(false, "quorum back");
    }
    let third = apply(&endpoints, &file(&dir, "third", &document(&[&a, &b], None)));
    for host in [&a, &b] {
        host.wait_revision(third, "after quorum came back");
        host.expect(None, "the fleet's third document");
    }
}

#[test]
fn two_concurrent_fleet_applies_one_wins_and_the_other_gets_a_conflict() {
    if !runnable("fleet_conflict") {
        return;
    }
    let cluster = EtcdCluster::start("fleet-conflict", 3);
    let endpoints = cluster.endpoints();
    let a = Host::new("fleet-conflict", [31241, 31242]);
    let dir = a.sb.dir().to_path_buf();
    let base = apply(&endpoints, &file(&dir, "base", &document(&[&a], None)));
    let texts = [document(&[&a], Some(0)), document(&[&a], Some(1))];
    let paths = [
        file(&dir, "mine", &texts[0]),
        file(&dir, "theirs", &texts[1]),
    ];
    let expect = base.to_string();
    let outputs: Vec<Output> = thread::scope(|scope| {
        let writers: Vec<_> = paths
            .iter()
            .map(|path| {
                let (endpoints, expect) = (&endpoints, &expect);
                scope.spawn(move || {
                    fleet(
                        endpoints,
                        &[
                            "apply",
                            &path.display().to_string(),
                            "--expect-revision",
                            expect,
                        ],
                    )
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("a writer"))
            .collect()
    });
    let won: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one of two writers of revision {base} wins: {outputs:?}"
    );
    let (winner, loser) = (won[0], 1 - won[0]);
    let refusal = String::from_utf8_lossy(&outputs[loser].stderr);
    assert!(
        refusal.contains("conflict") && refusal.contains("Nothing was written"),
        "the loser hears of the conflict: {refusal}"
    );
    let written = revision_in(&String::from_utf8_lossy(&outputs[winner].stdout));
    let stored = cluster.etcdctl(&["get", "--print-value-only", &format!("{PREFIX}/policy")]);
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim_end(),
        texts[winner].trim_end(),
        "the winner's document is the fleet's"
    );
    assert!(
        refusal.contains(&format!("revision {written}")),
        "{refusal}"
    );

    // Without --expect-revision an apply compares against the revision it read.
    let again = apply(&endpoints, &paths[loser]);
    assert!(again > written);
}

#[test]
fn a_bad_document_is_refused_on_every_node_and_nothing_changes() {
    if !runnable("fleet_bad_document") {
        return;
    }
    let cluster = EtcdCluster::start("fleet-bad", 3);
    let endpoints = cluster.endpoints();
    let mut a = Host::new("fleet-bad-a", [31251, 31252]);
    let mut b = Host::new("fleet-bad-b", [31261, 31262]);
    let dir = a.sb.dir().to_path_buf();
    let good = apply(
        &endpoints,
        &file(&dir, "good", &document(&[&a, &b], Some(0))),
    );
    a.start(&endpoints, "host-a");
    b.start(&endpoints, "host-b");
    let generations = [&a, &b].map(|h| {
        h.wait_revision(good, "at start");
        h.generation()
    });

    // `fleet apply` checks the file first: a bad one never reaches the fleet.
    let bad_text = document(&[&a, &b], Some(0)).replace("protocol: tcp", "protocol: sctp");
    let bad = file(&dir, "bad", &bad_text);
    let out = fleet(&endpoints, &["apply", &bad.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", bad.display())) && stderr.contains("nothing was written"),
        "FILE:LINE:COL and nothing written: {stderr}"
    );
    assert_eq!(
        fleet_status(&endpoints)
            .get("revision")
            .and_then(Json::as_u64),
        Some(good)
    );

    // A writer that does not check (etcdctl here) gets it in: every node refuses it whole.
    let put = cluster.etcdctl(&["put", &format!("{PREFIX}/policy"), &bad_text]);
    assert!(put.status.success(), "{put:?}");
    for (host, generation) in [&a, &b].into_iter().zip(generations) {
        let source = host.wait("after a bad document", |s| {
            s.get("last_error").and_then(Json::as_str).is_some()
        });
        let error = source
            .get("last_error")
            .and_then(Json::as_str)
            .unwrap_or("");
        assert!(
            error.contains("refused") && error.contains("sctp"),
            "the node says why: {error}"
        );
        assert_eq!(source.get("revision").and_then(Json::as_u64), Some(good));
        assert_eq!(host.generation(), generation, "nothing changed");
        host.expect(Some(0), "the bad document changed nothing");
    }
    let listed = fleet_status(&endpoints);
    for node in ["host-a", "host-b"] {
        let deadline = Instant::now() + patient(REACH);
        loop {
            let status = fleet_status(&endpoints);
            let record = status
                .get("nodes")
                .and_then(|n| n.find_by("node", node))
                .cloned();
            if record
                .as_ref()
                .and_then(|r| r.get("error"))
                .and_then(Json::as_str)
                .is_some()
            {
                assert_eq!(
                    record.and_then(|r| r.get("current").and_then(Json::as_bool)),
                    Some(false)
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fleet status never showed {node}'s error: {listed:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    let fixed = apply(
        &endpoints,
        &file(&dir, "fixed", &document(&[&a, &b], Some(1))),
    );
    for host in [&a, &b] {
        let source = host.wait_revision(fixed, "after a good document again");
        assert!(
            source.get("last_error").is_none_or(Json::is_null),
            "{source:?}"
        );
        host.expect(Some(1), "the next good document");
    }
}

#[test]
fn a_restart_with_etcd_unreachable_starts_from_the_saved_document() {
    if !runnable("fleet_restart") {
        return;
    }
    let mut cluster = EtcdCluster::start("fleet-restart", 3);
    let endpoints = cluster.endpoints();
    let mut a = Host::new("fleet-restart-a", [31271, 31272]);
    let mut b = Host::new("fleet-restart-b", [31281, 31282]);
    let dir = a.sb.dir().to_path_buf();
    apply(
        &endpoints,
        &file(&dir, "first", &document(&[&a, &b], Some(0))),
    );
    a.start(&endpoints, "host-a");
    let second = apply(
        &endpoints,
        &file(&dir, "second", &document(&[&a, &b], Some(1))),
    );
    a.wait_revision(second, "before the restart");
    a.sb.kill_daemon();
    // Enforcement is removed too, so what the next start enforces is what it chose.
    let down = a.sb.enforcer(&["teardown"]);
    assert!(down.status.success(), "{down:?}");
    for port in a.ports {
        assert_eq!(
            a.sb.connect(&a.staging, LOCALHOST, port),
            Outcome::greeted(),
            "torn down: nothing enforces"
        );
    }
    for i in 0..3 {
        cluster.kill_member(i);
    }

    a.start(&endpoints, "host-a");
    let source = a.source();
    assert_eq!(
        source.get("stale").and_then(Json::as_bool),
        Some(true),
        "{source:?}"
    );
    assert_eq!(source.get("revision").and_then(Json::as_u64), Some(second));
    a.expect(Some(1), "started from the saved document");

    // Nothing saved and nothing to read: the start is refused, and says why.
    let refused =
        b.sb.try_start_fleet_daemon(&fleet_flags(&endpoints, "host-b"))
            .expect_err("a start with nothing to enforce must fail");
    assert!(
        refused.contains("no document of this fleet") && refused.contains("nothing was changed"),
        "{refused}"
    );

    for i in 0..3 {
        cluster.start_member(i);
    }
    a.wait_stale(false, "etcd back");
}

/// Writes `password` to a file of its own in `dir`; returns its path.
fn password_file(dir: &Path, user: &str, password: &str) -> String {
    let path = dir.join(format!("{user}.password"));
    std::fs::write(&path, format!("{password}\n")).expect("writing a password file");
    path.display().to_string()
}

#[test]
fn with_auth_on_a_node_can_write_only_its_own_key() {
    if !runnable("fleet_auth") {
        return;
    }
    let cluster = EtcdCluster::start("fleet-auth", 3);
    let endpoints = cluster.endpoints();
    let mut a = Host::new("fleet-auth-a", [31291, 31292]);
    let dir = a.sb.dir().to_path_buf();
    let ctl = |args: &[&str]| {
        let out = cluster.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    };
    // The roles the README's "Fleet" section sets up: the administrator writes the policy,
    // each node reads it and every node's addresses, and writes only its own keys. Node a's
    // role is first given no read of the addresses: it must say so, go on publishing its own,
    // and load the others' once the role allows it, without a restart.
    let policy_key = format!("{PREFIX}/policy");
    let nodes = format!("{PREFIX}/nodes/");
    let addresses = format!("{PREFIX}/addresses/");
    let addresses_end = format!("{PREFIX}/addresses0");
    let prefix_end = format!("{PREFIX}0");
    ctl(&["user", "add", "root", "--new-user-password", "root-pw"]);
    ctl(&["role", "add", "fleet-admin"]);
    ctl(&[
        "role",
        "grant-permission",
        "fleet-admin",
        "readwrite",
        &format!("{PREFIX}/"),
        &prefix_end,
    ]);
    ctl(&["user", "add", "admin", "--new-user-password", "admin-pw"]);
    ctl(&["user", "grant-role", "admin", "fleet-admin"]);
    for node in ["host-a", "host-b"] {
        let role = format!("node-{node}");
        ctl(&["role", "add", &role]);
        ctl(&["role", "grant-permission", &role, "read", &policy_key]);
        ctl(&[
            "role",
            "grant-permission",
            &role,
            "readwrite",
            &format!("{nodes}{node}"),
        ]);
        ctl(&[
            "role",
            "grant-permission",
            &role,
            "readwrite",
            &format!("{addresses}{node}"),
        ]);
        if node != "host-a" {
            ctl(&[
                "role",
                "grant-permission",
                &role,
                "read",
                &addresses,
                &addresses_end,
            ]);
        }
        ctl(&[
            "user",
            "add",
            &role,
            "--new-user-password",
            &format!("{node}-pw"),
        ]);
        ctl(&["user", "grant-role", &role, &role]);
    }
    ctl(&["auth", "enable"]);

    let admin = password_file(&dir, "admin", "admin-pw");
    let node_a = password_file(&dir, "node-host-a", "host-a-pw");
    let as_admin = [
        "--etcd-user",
        "admin",
        "--etcd-password-file",
        admin.as_str(),
    ];
    let as_node_a = [
        "--etcd-user",
        "node-host-a",
        "--etcd-password-file",
        node_a.as_str(),
    ];
    let path = file(&dir, "first", &document(&[&a], Some(0)));
    let path_text = path.display().to_string();
    let out = fleet(
        &endpoints,
        &[&["apply", path_text.as_str()][..], &as_admin].concat(),
    );
    assert!(
        out.status.success(),
        "the administrator writes the policy: {out:?}"
    );
    let first = revision_in(&String::from_utf8_lossy(&out.stdout));

    let mut flags = fleet_flags(&endpoints, "host-a");
    flags.extend(as_node_a.iter().map(|s| (*s).to_owned()));
    if let Err(why) = a.sb.try_start_fleet_daemon(&flags) {
        panic!("{why}");
    }
    a.wait_revision(first, "a node with its own credentials");
    a.expect(Some(0), "a node with its own credentials");

    // Node a's credentials: not another node's key, not the policy.
    let node_user = "node-host-a:host-a-pw";
    for key in [
        format!("{nodes}host-b"),
        format!("{addresses}host-b"),
        policy_key.clone(),
    ] {
        let out = cluster.etcdctl(&["--user", node_user, "put", &key, "forged"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("permission denied"),
            "node a's credentials must not write {key}: {out:?}"
        );
    }
    let second = file(&dir, "second", &document(&[&a], Some(1)));
    let second_text = second.display().to_string();
    let out = fleet(
        &endpoints,
        &[&["apply", second_text.as_str()][..], &as_node_a].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("permission denied"),
        "a node's credentials cannot apply a fleet policy: {stderr}"
    );
    let root = "root:root-pw";
    let stored = cluster.etcdctl(&["--user", root, "get", "--print-value-only", &policy_key]);
    assert_eq!(
        String::from_utf8_lossy(&stored.stdout).trim_end(),
        document(&[&a], Some(0)).trim_end(),
        "the policy is the administrator's"
    );
    for key in [format!("{nodes}host-b"), format!("{addresses}host-b")] {
        let forged = cluster.etcdctl(&["--user", root, "get", &key]);
        assert!(
            forged.stdout.is_empty(),
            "nothing was written at {key}: {forged:?}"
        );
    }
    // Its own address record is within its role: published, with no error.
    let deadline = Instant::now() + patient(REACH);
    let published = loop {
        let out = cluster.etcdctl(&[
            "--user",
            root,
            "get",
            "--print-value-only",
            &format!("{addresses}host-a"),
        ]);
        if !out.stdout.is_empty() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "node a never published its addresses: {out:?}; {:?}",
            a.source()
        );
        thread::sleep(Duration::from_millis(50));
    };
    let record = Json::parse(&String::from_utf8_lossy(&published.stdout))
        .unwrap_or_else(|e| panic!("node a's address record: {e}: {published:?}"));
    assert_eq!(
        record.get("node").and_then(Json::as_str),
        Some("host-a"),
        "{record:?}"
    );
    let address_error = |source: &Json| {
        source
            .get("etcd")
            .and_then(|e| e.get("addresses"))
            .and_then(|a| a.get("last_error"))
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    // Published, and still saying that it cannot read the others' records.
    let source = a.source();
    assert!(
        address_error(&source).is_some_and(|e| e.contains("reading the fleet's addresses")),
        "node a's role does not let it read the addresses, its own published record \
         notwithstanding: {source:?}"
    );
    ctl(&[
        "--user",
        root,
        "role",
        "grant-permission",
        "node-host-a",
        "read",
        &addresses,
        &addresses_end,
    ]);
    let deadline = Instant::now() + patient(REACH);
    loop {
        let source = a.source();
        if address_error(&source).is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node a's role now lets it read the addresses, but it still reports an error: \
             {source:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Node a still publishes its own heartbeat, and the administrator sees it.
    let deadline = Instant::now() + patient(REACH);
    loop {
        let out = fleet(
            &endpoints,
            &[&["status", "-o", "json"][..], &as_admin].concat(),
        );
        let status = Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("JSON");
        let record = status
            .get("nodes")
            .and_then(|n| n.find_by("node", "host-a"));
        if record.is_some_and(|r| r.get("revision").and_then(Json::as_u64) == Some(first)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node a never published its heartbeat: {status:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    a.expect(
        Some(0),
        "nothing a node's credentials tried changed the policy",
    );
}

#[test]
fn over_tls_a_node_follows_the_fleet_with_its_client_certificate() {
    if !runnable("fleet_tls") {
        return;
    }
    let cluster = EtcdCluster::start_tls("fleet-tls", 3);
    let endpoints = cluster.endpoints();
    let tls = cluster.tls.as_ref().expect("a TLS cluster");
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let with_cert = [
        "--etcd-cacert",
        ca.as_str(),
        "--etcd-cert",
        cert.as_str(),
        "--etcd-key",
        key.as_str(),
    ];
    let mut a = Host::new("fleet-tls-a", [31293, 31294]);
    let dir = a.sb.dir().to_path_buf();
    let path = file(&dir, "first", &document(&[&a], Some(0)));
    let path_text = path.display().to_string();

    // Without a client certificate the cluster refuses the administrator, and nothing is
    // written.
    let out = fleet(
        &endpoints,
        &["apply", path_text.as_str(), "--etcd-cacert", ca.as_str()],
    );
    assert!(!out.status.success(), "no client certificate: {out:?}");
    let stored = cluster.etcdctl(&["get", &format!("{PREFIX}/policy")]);
    assert!(
        stored.status.success() && stored.stdout.is_empty(),
        "{stored:?}"
    );

    let out = fleet(
        &endpoints,
        &[&["apply", path_text.as_str()][..], &with_cert].concat(),
    );
    assert!(out.status.success(), "with a client certificate: {out:?}");
    let first = revision_in(&String::from_utf8_lossy(&out.stdout));
    let mut flags = fleet_flags(&endpoints, "host-a");
    flags.extend(with_cert.iter().map(|s| (*s).to_owned()));
    if let Err(why) = a.sb.try_start_fleet_daemon(&flags) {
        panic!("{why}");
    }
    a.wait_revision(first, "over TLS");
    a.expect(Some(0), "the fleet's document, over TLS");
    let second = file(&dir, "second", &document(&[&a], Some(1)));
    let second_text = second.display().to_string();
    let out = fleet(
        &endpoints,
        &[&["apply", second_text.as_str()][..], &with_cert].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    a.wait_revision(
        revision_in(&String::from_utf8_lossy(&out.stdout)),
        "over TLS",
    );
    a.expect(Some(1), "the fleet's second document, over TLS");
}

/// Identity across hosts (issue 20, item 3): two hosts whose pods are network namespaces on
/// one bridge, and a policy that lists no address (`external: deny`). Host a's staging pod
/// reaches host b's prod pod exactly where the edge allows it, over TCP and UDP, IPv4 and
/// IPv6, because each node published its pods' addresses and the other loaded them. A
/// process in host a's pod namespace that host a does not enforce shows that host b's
/// ingress judges by the published domain on its own. When host a's daemon dies its lease
/// runs out, host b withdraws its addresses, and the same flows are external again.
#[test]
fn a_cross_host_flow_is_judged_by_the_domains_nodes_publish() {
    if !runnable("fleet_cross_host") {
        return;
    }
    const OPEN: u16 = 31295;
    const CLOSED: u16 = 31296;
    const PROBE: Duration = Duration::from_secs(2);
    let cluster = EtcdCluster::start("fleet-xhost", 3);
    let endpoints = cluster.endpoints();
    let lan = enforcer_tests::Lan::new(41);
    let (pod_a, pod_b) = (lan.node(2), lan.node(3));
    let mut a = Sandbox::new("fleet-xhost-a");
    let mut b = Sandbox::new("fleet-xhost-b");
    a.set_probe_timeout(PROBE);
    let staging = a.cgroup("staging");
    let prod = b.cgroup("prod");
    let text = format!(
        "version: 1
defaults: {{unlabeled: allow, external: deny}}
domains:
  - name: prod.example.org
    cgroups: ['{}/prod']
  - name: staging.example.org
    cgroups: ['{}/staging']
federation:
  - id: cross-host
    from: staging.example.org
    to: prod.example.org
    protocol: any
    ports: [{OPEN}]
    owner: platform-team
    reason: fleet cross-host test
",
        b.root, a.root
    );
    let path = file(a.dir(), "cross-host", &text);
    let out = fleet(&endpoints, &["apply", path.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "fleet apply: {out:?}");
    for (sb, node) in [(&mut a, "host-a"), (&mut b, "host-b")] {
        if let Err(why) = sb.try_start_fleet_daemon(&fleet_flags(&endpoints, node)) {
            panic!("{why}");
        }
    }
    // The pods' first sockets make each node scan its pod's namespace and publish it.
    let published = Instant::now();
    let mut servers = Vec::new();
    for addr in [&pod_b.v4, &pod_b.v6] {
        for port in [OPEN, CLOSED] {
            let server = pod_b.pod(&b, &prod);
            servers.push(server.listen(addr, port));
            servers.push(server.udp_listen(addr, port));
        }
    }
    let _held = pod_a.pod(&a, &staging).listen(&pod_a.v4, OPEN);
    let wait_loaded = |sb: &Sandbox, done: &dyn Fn(u64) -> bool, when: &str| {
        let deadline = Instant::now() + patient(REACH);
        loop {
            let n = sb.fleet_addresses_loaded();
            if done(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: {} holds {n} of the other node's addresses; status: {:?}",
                sb.root,
                sb.status().get("policy_source")
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_loaded(&a, &|n| n >= 2, "host a learns host b's pod");
    wait_loaded(&b, &|n| n >= 2, "host b learns host a's pod");
    println!(
        "both pods' addresses were known on the other node {} ms after the pods' first sockets",
        published.elapsed().as_millis()
    );

    let client = pod_a.pod(&a, &staging);
    let unenforced = pod_a.remote().with_timeout(Some(PROBE));
    for addr in [&pod_b.v4, &pod_b.v6] {
        let cases = [
            ("tcp", OPEN, client.connect(addr, OPEN), Outcome::greeted()),
            ("tcp", CLOSED, client.connect(addr, CLOSED), Outcome::EPERM),
            ("udp", OPEN, client.udp_send(addr, OPEN), Outcome::replied()),
            ("udp", CLOSED, client.udp_send(addr, CLOSED), Outcome::EPERM),
            // Judged by host b alone: its ingress drops what no edge allows.
            (
                "tcp",
                OPEN,
                unenforced.connect(addr, OPEN),
                Outcome::greeted(),
            ),
            (
                "tcp",
                CLOSED,
                unenforced.connect(addr, CLOSED),
                Outcome::Timeout,
            ),
            (
                "udp",
                OPEN,
                unenforced.udp_send(addr, OPEN),
                Outcome::replied(),
            ),
            (
                "udp",
                CLOSED,
                unenforced.udp_send(addr, CLOSED),
                Outcome::Timeout,
            ),
        ];
        for (i, (proto, port, seen, expected)) in cases.into_iter().enumerate() {
            let who = if i < 4 {
                "staging pod"
            } else {
                "unenforced process"
            };
            assert_eq!(
                seen, expected,
                "{who} on host a -> prod pod on host b {proto} [{addr}]:{port}; the application \
                 saw {seen}"
            );
        }
    }

    // `why` on host a names the published address as what decided.
    let held = client.hold_socket("127.0.0.1", CLOSED);
    let pid = held.pid().to_string();
    for (port, decision) in [(OPEN, "allowed"), (CLOSED, "refused")] {
        let to = format!("{}:{port}", pod_b.v4);
        let socket = a.socket.display().to_string();
        let out = a.enforcer(&[
            "why",
            "--socket",
            &socket,
            "--from-pid",
            &pid,
            "--to",
            &to,
            "-o",
            "json",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let why = Json::parse(&text).unwrap_or_else(|e| panic!("why -o json: {e}: {out:?}"));
        let at = |path: &[&str]| {
            path.iter()
                .try_fold(&why, |j, k| j.get(k))
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        assert_eq!(
            at(&["destination", "found_by"]).as_deref(),
            Some("fleet_address"),
            "{text}"
        );
        assert_eq!(
            at(&["destination", "end", "domain"]).as_deref(),
            Some("prod.example.org"),
            "{text}"
        );
        assert_eq!(
            at(&["verdict", "decision"]).as_deref(),
            Some(decision),
            "{text}"
        );
    }

    // Host a dies: its lease runs out and host b withdraws host a's pod addresses, which are
    // external again there.
    a.kill_daemon();
    wait_loaded(&b, &|n| n == 0, "host a's lease ran out");
    for addr in [&pod_b.v4, &pod_b.v6] {
        let seen = unenforced.connect(addr, OPEN);
        assert_eq!(
            seen,
            Outcome::Timeout,
            "after host a's addresses were withdrawn, host b judges them external (denied): \
             [{addr}]:{OPEN}; the application saw {seen}"
        );
    }
}
