//! Edges with a life cycle: time-limited edges (`ttl`, `expires`, `not_before`) that end in the
//! kernel even while the daemon is dead, grants and revocations through the CLI that end the
//! live flows only the removed edge allowed, grants that outlive daemon restarts and policy
//! applies, usage and staleness reporting, and audit mode, which lets through and counts what
//! enforcement would refuse.
//!
//! Live flows are probes in the stream modes: a client sends `seq <n> <unix-time-ms>` every
//! 20 ms and a sink reports every line it receives, so a test can tell to the millisecond
//! when the last line that got through was sent. Tests synchronise on what the probes print;
//! the only sleeps wait for wall-clock deadlines (an expiry) to pass.
//! Every test uses its own ports (31000-31199 belong to this file).

use std::{
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_tests::{Json, Lan, Outcome, Sandbox, Stream, privileged};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";

const DOMAINS: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
";

const LOCALHOST: &str = "127.0.0.1";
/// How long an allowed stream gets to show that it flows.
const FLOWING: Duration = Duration::from_secs(5);
/// How long a flow whose edge went away gets to end: generous, no timing assertion; the
/// measured latency is printed.
const ENDING: Duration = Duration::from_secs(5);
/// Clock-reading skew allowed between the test's clock readings and the probes' stamps.
const SKEW_MS: u64 = 50;
/// What a TCP client may see when the daemon destroys its connection (its own end destroyed:
/// ECONNABORTED; the peer's end destroyed: ECONNRESET).
const TCP_ENDED: [&str; 2] = ["ECONNABORTED", "ECONNRESET"];
/// What the server end of such a connection may see.
const TCP_PEER_ENDED: [&str; 3] = ["ECONNABORTED", "ECONNRESET", "eof"];

/// A staging -> prod edge in the policy file, with `extra` keys (`ttl: 3s`, ...).
fn file_edge(id: &str, protocol: &str, ports: &str, extra: &[&str]) -> String {
    let mut yaml = format!(
        "  - id: {id}
    from: {STAGING}
    to: {PROD}
    protocol: {protocol}
    ports: {ports}
    owner: platform-team
    reason: lifecycle test
"
    );
    for line in extra {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

/// The two-domain policy with `edges` (from [`file_edge`]).
fn with_edges(edges: &[String]) -> String {
    if edges.is_empty() {
        DOMAINS.to_owned()
    } else {
        format!("{DOMAINS}federation:\n{}", edges.concat())
    }
}

/// The arguments of `enforcer edge grant` for staging -> prod.
fn grant_args<'a>(protocol: &'a str, ports: &'a str, ttl: &'a str) -> Vec<&'a str> {
    vec![
        "--from",
        STAGING,
        "--to",
        PROD,
        "--protocol",
        protocol,
        "--ports",
        ports,
        "--ttl",
        ttl,
        "--owner",
        "platform-team",
        "--reason",
        "lifecycle test",
    ]
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).expect("a sane clock"))
}

/// Signed milliseconds from `from` to `to`.
fn delta_ms(from: u64, to: u64) -> i64 {
    i64::try_from(to).expect("ms") - i64::try_from(from).expect("ms")
}

/// Sleeps until the wall clock reads `at`: the one legitimate sleep, a deadline passing.
fn wait_until(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        thread::sleep(left);
    }
}

/// The edge `id` as `enforcer edge list -o json` reports it; panics if it is not listed.
fn listed(sb: &Sandbox, id: &str) -> Json {
    sb.listed_edge(id).unwrap_or_else(|| {
        panic!(
            "edge {id} is not in `enforcer edge list -o json`: {}",
            sb.edges()
        )
    })
}

fn field<'a>(edge: &'a Json, key: &str) -> &'a Json {
    edge.get(key)
        .unwrap_or_else(|| panic!("edge list entry without `{key}`: {edge}"))
}

fn text<'a>(edge: &'a Json, key: &str) -> &'a str {
    field(edge, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {edge}"))
}

/// The `expires` time of the edge `id`, from `enforcer edge list -o json`.
fn expires_of(sb: &Sandbox, id: &str) -> SystemTime {
    let edge = listed(sb, id);
    field(&edge, "expires")
        .as_time()
        .unwrap_or_else(|| panic!("edge {id} has no RFC 3339 `expires`: {edge}"))
}

/// Polls `read` (at most `limit`) until `done` holds for what it returns; returns the last
/// value read. For counters the daemon may fold in a moment after the event.
fn settle<T>(limit: Duration, mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let value = read();
        if done(&value) || std::time::Instant::now() >= deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that more than 300 ms are left before `deadline`, so that the daemon can be killed
/// before the edge expires.
fn expect_time_left(deadline: SystemTime) {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_millis(300),
        "setting up took too long: only {left:?} left before the edge expires"
    );
}

/// With the daemon dead, waits a second past `deadline` (anything let through would arrive
/// within it, retransmissions included) and checks that `sink` got the flow until the
/// deadline and nothing sent after it; returns how many lines came before it.
fn expect_cut_at(sink: &mut Stream, deadline: SystemTime, context: &str) -> usize {
    wait_until(deadline + Duration::from_secs(1));
    sink.expect_nothing_sent_after(ms(deadline) + 200, context);
    let before = sink
        .received()
        .iter()
        .filter(|r| r.sent_ms < ms(deadline))
        .count();
    assert!(
        before >= 3,
        "the sink received {before} line(s) sent before the deadline, expected the flow to \
         work until then"
    );
    before
}

#[test]
fn ttl_edge_expires_in_the_kernel_with_the_daemon_stopped() {
    if !privileged("ttl_edge_expires_in_the_kernel_with_the_daemon_stopped") {
        return;
    }
    let mut sb = Sandbox::new("ttl-dead");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy(
        "p.yaml",
        &with_edges(&[file_edge("short", "tcp", "['31000-31001']", &["ttl: 6s"])]),
    );
    // Applied to a running daemon, so the 6 s count from a moment known to milliseconds
    // rather than from a start-up that takes seconds when many daemons load at once. Six,
    // not three: on a loaded CI machine, setting up the flows below has taken 3 s.
    sb.start_daemon(&sb.policy("base.yaml", DOMAINS));
    let before_start = SystemTime::now();
    sb.apply(&policy);
    let after_start = SystemTime::now();
    let mut sink = sb.sink(&prod, LOCALHOST, 31000);
    let _server = sb.listen(&prod, LOCALHOST, 31001);
    let outcome = sb.connect(&staging, LOCALHOST, 31001);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "staging -> prod:31001 while the 6 s edge lives: the application saw {outcome}"
    );
    let mut stream = sb.stream(&staging, LOCALHOST, 31000);
    sink.expect_received(3, FLOWING, "staging -> prod:31000 while the 6 s edge lives");

    let deadline = expires_of(&sb, "short");
    assert!(
        deadline >= before_start + Duration::from_secs(5)
            && deadline <= after_start + Duration::from_secs(7),
        "a `ttl: 6s` edge expires 6 s after the daemon first saw it: it was applied between \
         {} and {} ms, the edge expires at {} ms",
        ms(before_start),
        ms(after_start),
        ms(deadline)
    );
    expect_time_left(deadline);
    sb.kill_daemon();

    wait_until(deadline + Duration::from_millis(300));
    let outcome = sb.connect(&staging, LOCALHOST, 31001);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "staging -> prod:31001 300 ms after the edge expired, daemon dead: the application \
         saw {outcome}, expected EPERM"
    );
    let outcome = sb.connect(&prod, LOCALHOST, 31001);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "prod -> prod:31001 (same domain) with the daemon dead: the application saw {outcome}"
    );

    let before = expect_cut_at(
        &mut sink,
        deadline,
        "the edge expired with the daemon dead: the kernel drops the flow",
    );
    let client = if stream.has_ended() {
        "ended"
    } else {
        "still writing (no one left to destroy it)"
    };
    eprintln!(
        "ttl_edge_expires_in_the_kernel_with_the_daemon_stopped: {before} line(s) before the \
         deadline, none after; the client is {client}"
    );
}

/// The LAN of [`a_listener_that_was_a_client_first_still_has_its_connections_expire`]: its
/// own subnet, which no other test uses.
const REUSED_LISTENER_LAN: u8 = 44;

/// A listener's tag is copied to every socket it accepts. A socket whose connect was judged
/// as a flow nothing can revoke (here to an address of its own domain, which then failed)
/// and which then listens must not hand that judgement to the connections it accepts: a
/// connection from another machine through a 6 s edge must still stop in the kernel at the
/// edge's expiry, with the daemon dead. The client is outside every enforced subtree, so only
/// the listener's host judges its packets.
#[test]
fn a_listener_that_was_a_client_first_still_has_its_connections_expire() {
    if !privileged("a_listener_that_was_a_client_first_still_has_its_connections_expire") {
        return;
    }
    let mut sb = Sandbox::new("ttl-relisten");
    let prod = sb.cgroup("prod");
    let lan = Lan::new(REUSED_LISTENER_LAN);
    let node = lan.node(2);
    let policy = format!(
        "
version: 1
defaults: {{unlabeled: allow, external: deny}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod']
    endpoints: ['224.0.0.1/32']
  - name: {STAGING}
    endpoints: ['{}/32']
federation:
{}",
        node.v4,
        file_edge("short", "tcp", "['31090']", &["ttl: 6s"])
    );
    sb.start_daemon(&sb.policy("base.yaml", DOMAINS));
    let before_start = SystemTime::now();
    sb.apply(&sb.policy("p.yaml", &policy));
    let mut sink = sb.workload(&prod).sink_after_connect(&lan.host_v4, 31090);
    let mut stream = node.remote().stream(&lan.host_v4, 31090);
    sink.expect_received(
        3,
        FLOWING,
        "staging (another machine) -> prod while the edge lives",
    );

    let deadline = expires_of(&sb, "short");
    assert!(
        deadline >= before_start + Duration::from_secs(5),
        "a `ttl: 6s` edge expires 6 s after it was applied, at {} ms; applied at {} ms",
        ms(deadline),
        ms(before_start)
    );
    expect_time_left(deadline);
    sb.kill_daemon();

    let before = expect_cut_at(
        &mut sink,
        deadline,
        "the edge expired with the daemon dead: the kernel drops the accepted connection of \
         a listener that was a client first",
    );
    let client = if stream.has_ended() {
        "ended"
    } else {
        "still writing"
    };
    eprintln!(
        "a_listener_that_was_a_client_first_still_has_its_connections_expire: {before} \
         line(s) before the deadline, none after; the client is {client}"
    );
}

#[test]
fn revoking_a_grant_ends_live_tcp_and_udp_flows() {
    if !privileged("revoking_a_grant_ends_live_tcp_and_udp_flows") {
        return;
    }
    let mut sb = Sandbox::new("revoke");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy("p.yaml", DOMAINS);
    sb.start_daemon(&policy);
    let mut tcp_sink = sb.sink(&prod, LOCALHOST, 31010);
    let mut udp_sink = sb.udp_sink(&prod, LOCALHOST, 31011);
    let mut sendto_sink = sb.udp_sink(&prod, LOCALHOST, 31012);
    let _tcp_server = sb.listen(&prod, LOCALHOST, 31013);
    let _udp_server = sb.udp_listen(&prod, LOCALHOST, 31013);
    let outcome = sb.connect(&staging, LOCALHOST, 31013);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "staging -> prod:31013 before any grant: the application saw {outcome}"
    );

    let id = sb.grant(&grant_args("any", "31010-31013", "10m"));
    let outcome = sb.connect(&staging, LOCALHOST, 31013);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "tcp staging -> prod:31013 after the grant: the application saw {outcome}"
    );
    let outcome = sb.udp_send(&staging, LOCALHOST, 31013);
    assert_eq!(
        outcome,
        Outcome::replied(),
        "udp staging -> prod:31013 after the grant: the application saw {outcome}"
    );
    let mut tcp = sb.stream(&staging, LOCALHOST, 31010);
    let mut udp = sb.udp_stream(&staging, LOCALHOST, 31011);
    let mut sendto = sb.udp_sendto_stream(&staging, LOCALHOST, 31012);
    tcp_sink.expect_received(3, FLOWING, "tcp stream across the grant");
    udp_sink.expect_received(3, FLOWING, "connected udp stream across the grant");
    sendto_sink.expect_received(3, FLOWING, "sendto udp stream across the grant");

    let asked = SystemTime::now();
    let reply = sb.revoke(&id);
    let revoked = ms(SystemTime::now());
    eprintln!(
        "revoking_a_grant_ends_live_tcp_and_udp_flows: revoke took {} ms: {reply}",
        revoked - ms(asked)
    );
    assert_eq!(
        reply.get("id").and_then(Json::as_str),
        Some(id.as_str()),
        "revoke names the edge it revoked: {reply}"
    );
    let ended = reply.get("ended").and_then(Json::as_u64);
    assert!(
        ended.is_some_and(|n| n >= 2),
        "revoke ended {ended:?} connection(s), expected at least 2 (the TCP connection and \
         the connected UDP socket): {reply}"
    );

    let tcp_end = tcp.expect_end(ENDING, &TCP_ENDED, "tcp stream after its grant was revoked");
    let udp_end = udp.expect_end(
        ENDING,
        &["EPERM", "ECONNABORTED"],
        "connected udp stream after its grant was revoked",
    );
    let sendto_end = sendto.expect_end(
        ENDING,
        &["EPERM"],
        "unconnected udp stream (sendto) after its grant was revoked",
    );
    for (what, end) in [
        ("tcp", &tcp_end),
        ("udp", &udp_end),
        ("sendto", &sendto_end),
    ] {
        eprintln!(
            "revoking_a_grant_ends_live_tcp_and_udp_flows: {what} client saw {} {} ms after \
             revoke returned",
            end.reason,
            delta_ms(revoked, end.at_ms)
        );
    }
    let peer = tcp_sink.expect_end(
        ENDING,
        &TCP_PEER_ENDED,
        "the server end of the tcp stream after the grant was revoked",
    );
    eprintln!(
        "revoking_a_grant_ends_live_tcp_and_udp_flows: tcp server saw {} {} ms after revoke \
         returned",
        peer.reason,
        delta_ms(revoked, peer.at_ms)
    );
    // Every client has stopped; the barriers make sure every datagram already sent has been
    // reported before looking.
    assert!(
        udp_sink.barrier(ENDING) && sendto_sink.barrier(ENDING),
        "the udp sinks report a datagram from the test runner"
    );
    for (sink, what) in [
        (&mut tcp_sink, "tcp"),
        (&mut udp_sink, "connected udp"),
        (&mut sendto_sink, "sendto udp"),
    ] {
        sink.expect_nothing_sent_after(
            revoked + SKEW_MS,
            &format!("{what} stream after revoke returned"),
        );
    }

    let outcome = sb.connect(&staging, LOCALHOST, 31013);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "a new tcp connection staging -> prod:31013 after the revoke: the application saw \
         {outcome}"
    );
    let outcome = sb.udp_send(&staging, LOCALHOST, 31013);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "a new udp sendto staging -> prod:31013 after the revoke: the application saw {outcome}"
    );
    assert!(
        sb.listed_edge(&id).is_none(),
        "a revoked grant is no longer listed: {}",
        sb.edges()
    );
}

#[test]
fn a_connection_also_covered_by_another_edge_survives() {
    if !privileged("a_connection_also_covered_by_another_edge_survives") {
        return;
    }
    let mut sb = Sandbox::new("covered");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy(
        "p.yaml",
        &with_edges(&[file_edge("wide", "tcp", "['31020-31029']", &[])]),
    );
    sb.start_daemon(&policy);
    let mut args = grant_args("tcp", "31025", "10m");
    args.extend(["--id", "narrow"]);
    let id = sb.grant(&args);
    assert_eq!(
        id, "narrow",
        "edge grant --id narrow prints the id it was given"
    );
    let mut sink = sb.sink(&prod, LOCALHOST, 31025);
    let mut stream = sb.stream(&staging, LOCALHOST, 31025);
    sink.expect_received(3, FLOWING, "staging -> prod:31025 under two edges");

    let reply = sb.revoke("narrow");
    assert_eq!(
        reply.get("ended").and_then(Json::as_u64),
        Some(0),
        "revoking an edge whose only connection another edge also allows ends nothing: {reply}"
    );
    let have = sink.received_count();
    sink.expect_received(
        have + 5,
        FLOWING,
        "staging -> prod:31025 after revoking one of its two edges",
    );
    stream.expect_not_ended("staging -> prod:31025 after revoking one of its two edges");

    // An edge from the policy file is the file's: revoking it is refused.
    let out = sb.enforcer(&["edge", "revoke", "wide"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "`edge revoke` of an edge from the policy file exits 1; stderr: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("edit") || stderr.contains(&*policy.to_string_lossy()),
        "refusing to revoke a file edge says to edit the policy file: {stderr}"
    );
    assert_eq!(
        text(&listed(&sb, "wide"), "source"),
        "file",
        "the file edge is still listed"
    );
    let have = sink.received_count();
    sink.expect_received(
        have + 5,
        FLOWING,
        "staging -> prod:31025 after a refused revoke of its file edge",
    );
    stream.expect_not_ended("staging -> prod:31025 after a refused revoke of its file edge");
}

#[test]
fn removing_an_edge_by_apply_ends_its_connections() {
    if !privileged("removing_an_edge_by_apply_ends_its_connections") {
        return;
    }
    let mut sb = Sandbox::new("apply-ends");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let with = sb.policy(
        "with.yaml",
        &with_edges(&[file_edge("migrations", "tcp", "[31030, 31031]", &[])]),
    );
    let without = sb.policy("without.yaml", DOMAINS);
    sb.start_daemon(&with);
    let mut sink = sb.sink(&prod, LOCALHOST, 31030);
    let _server = sb.listen(&prod, LOCALHOST, 31031);
    let mut stream = sb.stream(&staging, LOCALHOST, 31030);
    sink.expect_received(3, FLOWING, "staging -> prod:31030 across the file edge");

    let (_, stderr) = sb.apply_reporting(&without);
    let applied = ms(SystemTime::now());
    assert!(
        stderr.contains("ended 1 connection"),
        "applying a policy without the edge of one live connection reports `ended 1 \
         connection(s)` on stderr: {stderr}"
    );
    let end = stream.expect_end(
        ENDING,
        &TCP_ENDED,
        "staging -> prod:31030 after apply removed its edge",
    );
    eprintln!(
        "removing_an_edge_by_apply_ends_its_connections: client saw {} {} ms after apply \
         returned",
        end.reason,
        delta_ms(applied, end.at_ms)
    );
    sink.expect_end(
        ENDING,
        &TCP_PEER_ENDED,
        "the server end of staging -> prod:31030 after apply removed its edge",
    );
    sink.expect_nothing_sent_after(applied + SKEW_MS, "after apply removed the edge");
    let outcome = sb.connect(&staging, LOCALHOST, 31031);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "a new staging -> prod:31031 connection after apply removed the edge: the application \
         saw {outcome}"
    );
    assert!(
        sb.listed_edge("migrations").is_none(),
        "an edge removed from the file is no longer listed: {}",
        sb.edges()
    );
}

#[test]
fn grants_survive_restart_and_apply() {
    if !privileged("grants_survive_restart_and_apply") {
        return;
    }
    let mut sb = Sandbox::new("grant-persist");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy("p.yaml", DOMAINS);
    sb.start_daemon(&policy);
    let _granted = sb.listen(&prod, LOCALHOST, 31040);
    let _not_granted = sb.listen(&prod, LOCALHOST, 31041);

    let mut args = grant_args("tcp", "31040", "10m");
    args.extend(["--id", "kept"]);
    let asked = SystemTime::now();
    let reply = sb.grant_json(&args);
    assert_eq!(
        reply.get("id").and_then(Json::as_str),
        Some("kept"),
        "grant -o json names the id it was given: {reply}"
    );
    assert!(
        reply.get("generation").and_then(Json::as_u64).is_some(),
        "grant -o json reports the generation: {reply}"
    );
    let expires = reply
        .get("expires")
        .and_then(Json::as_time)
        .unwrap_or_else(|| panic!("grant -o json reports an RFC 3339 `expires`: {reply}"));
    let ten_minutes = asked + Duration::from_secs(600);
    assert!(
        expires + Duration::from_secs(5) > ten_minutes
            && expires < ten_minutes + Duration::from_secs(5),
        "a --ttl 10m grant made at {} ms expires 10 minutes later, not at {} ms",
        ms(asked),
        ms(expires)
    );

    // The list's own `expires` is the reference from here on (the grant's reply may print it
    // to another precision); it must not move when the daemon restarts or the file is applied.
    let listed_expires = expires_of(&sb, "kept");
    let apart = listed_expires
        .duration_since(expires)
        .or_else(|_| expires.duration_since(listed_expires))
        .unwrap_or_default();
    assert!(
        apart <= Duration::from_secs(1),
        "edge grant -o json said it expires at {} ms, edge list says {} ms",
        ms(expires),
        ms(listed_expires)
    );
    let check = |sb: &Sandbox, when: &str| {
        let edge = listed(sb, "kept");
        assert_eq!(text(&edge, "source"), "grant", "{when}: {edge}");
        assert_eq!(
            field(&edge, "expires").as_time(),
            Some(listed_expires),
            "{when}: the grant keeps its expiry ({} ms): {edge}",
            ms(listed_expires)
        );
        let outcome = sb.connect(&staging, LOCALHOST, 31040);
        assert_eq!(
            outcome,
            Outcome::greeted(),
            "{when}: staging -> prod:31040 across the grant: the application saw {outcome}"
        );
        let outcome = sb.connect(&staging, LOCALHOST, 31041);
        assert_eq!(
            outcome,
            Outcome::EPERM,
            "{when}: staging -> prod:31041 (not granted): the application saw {outcome}"
        );
    };
    check(&sb, "after the grant");

    sb.kill_daemon();
    let outcome = sb.connect(&staging, LOCALHOST, 31040);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "daemon dead: staging -> prod:31040 across the grant: the application saw {outcome}"
    );
    sb.start_daemon(&policy);
    check(&sb, "after the daemon restarted with the same state dir");

    sb.apply(&policy);
    check(&sb, "after applying the policy file again");
}

/// One flow of the audit test: who, to which port, over what.
#[derive(Clone, Copy)]
enum Flow<'a> {
    Tcp(&'a str, &'a str, u16),
    Udp(&'a str, &'a str, u16),
}

impl Flow<'_> {
    fn run(self, sb: &Sandbox) -> Outcome {
        match self {
            Self::Tcp(cgroup, addr, port) => sb.connect(cgroup, addr, port),
            Self::Udp(cgroup, addr, port) => sb.udp_send(cgroup, addr, port),
        }
    }

    fn allowed(self) -> Outcome {
        match self {
            Self::Tcp(..) => Outcome::greeted(),
            Self::Udp(..) => Outcome::replied(),
        }
    }

    fn describe(self, sb: &Sandbox) -> String {
        let (proto, cgroup, addr, port) = match self {
            Self::Tcp(c, a, p) => ("tcp", c, a, p),
            Self::Udp(c, a, p) => ("udp", c, a, p),
        };
        let from = cgroup.strip_prefix(&sb.root).unwrap_or(cgroup);
        format!("{proto} {from} -> {addr}:{port}")
    }
}

/// `audit` in `status -o json`: (would_deny, denied, staging -> prod would_deny).
fn audit_counts(sb: &Sandbox) -> (u64, u64, u64) {
    let status = sb.status();
    let audit = status
        .get("audit")
        .unwrap_or_else(|| panic!("status -o json has an `audit` object: {status}"));
    let count = |json: &Json, key: &str| {
        json.get(key)
            .and_then(Json::as_u64)
            .unwrap_or_else(|| panic!("status audit has a count `{key}`: {audit}"))
    };
    let pair = audit
        .get("pairs")
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .find(|p| {
            p.get("from").and_then(Json::as_str) == Some(STAGING)
                && p.get("to").and_then(Json::as_str) == Some(PROD)
        })
        .map_or(0, |p| count(p, "would_deny"));
    (count(audit, "would_deny"), count(audit, "denied"), pair)
}

fn audit_policy(defaults_mode: &str, prod_mode: Option<&str>) -> String {
    let prod_mode = prod_mode.map_or(String::new(), |m| format!("    mode: {m}\n"));
    format!(
        "
version: 1
defaults: {{unlabeled: deny, external: allow, mode: {defaults_mode}}}
domains:
  - name: prod.example.org
    cgroups: ['{{root}}/prod']
{prod_mode}  - name: staging.example.org
    cgroups: ['{{root}}/staging']
  - name: dev.example.org
    cgroups: ['{{root}}/dev']
"
    )
}

#[test]
fn audit_mode_lets_through_and_counts_what_enforce_refuses() {
    if !privileged("audit_mode_lets_through_and_counts_what_enforce_refuses") {
        return;
    }
    let mut sb = Sandbox::new("audit");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let dev = sb.cgroup("dev");
    let unbound = sb.cgroup("unbound");
    let enforce = sb.policy("enforce.yaml", &audit_policy("enforce", None));
    let audit = sb.policy("audit.yaml", &audit_policy("audit", None));
    let prod_audit = sb.policy("prod-audit.yaml", &audit_policy("enforce", Some("audit")));
    sb.start_daemon(&enforce);
    let _servers = [
        sb.listen(&prod, LOCALHOST, 31050),
        sb.listen(&prod, "::1", 31051),
        sb.listen(&prod, LOCALHOST, 31052),
        sb.listen(&dev, LOCALHOST, 31055),
    ];
    let _udp_servers = [
        sb.udp_listen(&prod, LOCALHOST, 31053),
        sb.udp_listen(&prod, "::1", 31054),
    ];
    // Every flow here is refused by the policy in enforce mode; 5 of them staging -> prod.
    let refused = [
        Flow::Tcp(&staging, LOCALHOST, 31050),
        Flow::Tcp(&staging, "::1", 31051),
        Flow::Tcp(&staging, LOCALHOST, 31052),
        Flow::Udp(&staging, LOCALHOST, 31053),
        Flow::Udp(&staging, "::1", 31054),
        Flow::Tcp(&unbound, LOCALHOST, 31050), // unlabeled -> prod, `unlabeled: deny`
    ];
    let staging_to_prod = 5;
    // Same-domain flows are always allowed and never counted.
    let control = Flow::Tcp(&prod, LOCALHOST, 31050);
    let staging_to_dev = Flow::Tcp(&staging, LOCALHOST, 31055);
    let run_all = |sb: &Sandbox, phase: &str, expect_refused: bool| -> u64 {
        let mut k = 0;
        for flow in refused {
            let outcome = flow.run(sb);
            let expected = if expect_refused {
                Outcome::EPERM
            } else {
                flow.allowed()
            };
            assert_eq!(
                outcome,
                expected,
                "{phase}: {}: the application saw {outcome}, expected {expected}",
                flow.describe(sb)
            );
            k += u64::from(outcome == Outcome::EPERM);
        }
        let outcome = control.run(sb);
        assert_eq!(
            outcome,
            Outcome::greeted(),
            "{phase}: prod -> prod: the application saw {outcome}"
        );
        k
    };
    let n = refused.len() as u64;

    // Enforce: every flow refused, each refusal counted once as denied.
    let (would0, denied0, _) = audit_counts(&sb);
    let k = run_all(&sb, "enforce mode", true);
    assert_eq!(k, n);
    let counts = settle(
        Duration::from_secs(2),
        || audit_counts(&sb),
        |c| c.1 >= denied0 + k,
    );
    assert_eq!(
        (counts.0 - would0, counts.1 - denied0),
        (0, k),
        "enforce mode: (would_deny, denied) increase after {k} refused flows"
    );

    // Audit everywhere: the same flows get through, each counted once as would-deny.
    sb.apply(&audit);
    let status = sb.status();
    assert_eq!(
        status.get("mode").and_then(Json::as_str),
        Some("audit"),
        "status reports `defaults.mode: audit`: {status}"
    );
    let (would1, denied1, pair1) = audit_counts(&sb);
    assert_eq!(run_all(&sb, "audit mode", false), 0);
    let counts = settle(
        Duration::from_secs(2),
        || audit_counts(&sb),
        |c| c.0 >= would1 + k,
    );
    assert_eq!(
        (counts.0 - would1, counts.1 - denied1, counts.2 - pair1),
        (k, 0, staging_to_prod),
        "audit mode: (would_deny, denied, staging -> prod would_deny) increase after the {k} \
         flows enforce mode refused"
    );

    // Audit for prod only: flows into prod get through and are counted; others are refused.
    sb.apply(&prod_audit);
    let status = sb.status();
    assert_eq!(
        status.get("mode").and_then(Json::as_str),
        Some("enforce"),
        "status reports `defaults.mode: enforce`: {status}"
    );
    let domain_mode = |name: &str| {
        status
            .get("domains")
            .and_then(|d| d.find_by("name", name))
            .and_then(|d| d.get("mode"))
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    assert_eq!(
        (
            domain_mode(PROD).as_deref(),
            domain_mode(STAGING).as_deref()
        ),
        (Some("audit"), Some("enforce")),
        "status reports each domain's mode: {status}"
    );
    let (would2, denied2, pair2) = audit_counts(&sb);
    assert_eq!(run_all(&sb, "prod in audit mode", false), 0);
    let outcome = staging_to_dev.run(&sb);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "prod in audit mode, dev enforced: {}: the application saw {outcome}",
        staging_to_dev.describe(&sb)
    );
    let counts = settle(
        Duration::from_secs(2),
        || audit_counts(&sb),
        |c| c.0 >= would2 + k && c.1 > denied2,
    );
    assert_eq!(
        (counts.0 - would2, counts.1 - denied2, counts.2 - pair2),
        (k, 1, staging_to_prod),
        "prod in audit mode: (would_deny, denied, staging -> prod would_deny) increase after \
         the {k} flows into prod and one refused staging -> dev flow"
    );
}

#[test]
fn expiry_while_the_daemon_runs_ends_connections() {
    if !privileged("expiry_while_the_daemon_runs_ends_connections") {
        return;
    }
    let mut sb = Sandbox::new("ttl-live");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy(
        "p.yaml",
        &with_edges(&[file_edge("brief", "tcp", "[31060, 31061]", &["ttl: 6s"])]),
    );
    sb.start_daemon(&sb.policy("base.yaml", DOMAINS));
    sb.apply(&policy);
    let mut sink = sb.sink(&prod, LOCALHOST, 31060);
    let _server = sb.listen(&prod, LOCALHOST, 31061);
    let mut stream = sb.stream(&staging, LOCALHOST, 31060);
    sink.expect_received(3, FLOWING, "staging -> prod:31060 while the 6 s edge lives");
    let edge = listed(&sb, "brief");
    assert_eq!(
        text(&edge, "state"),
        "active",
        "the edge before its expiry: {edge}"
    );
    let deadline = expires_of(&sb, "brief");
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_else(|_| panic!("setting up took longer than the edge's 6 s"));

    let end = stream.expect_end(
        left + ENDING,
        &TCP_ENDED,
        "staging -> prod:31060 when its edge expired with the daemon running",
    );
    let lateness = delta_ms(ms(deadline), end.at_ms);
    eprintln!(
        "expiry_while_the_daemon_runs_ends_connections: the client saw {} {lateness} ms after \
         the deadline",
        end.reason
    );
    assert!(
        lateness >= -i64::try_from(SKEW_MS).expect("small"),
        "the connection ended {} ms before its edge expired",
        -lateness
    );
    sink.expect_end(
        ENDING,
        &TCP_PEER_ENDED,
        "the server end of staging -> prod:31060 after the edge expired",
    );
    sink.expect_nothing_sent_after(
        ms(deadline) + 200,
        "the edge expired: the kernel drops the flow",
    );
    let outcome = sb.connect(&staging, LOCALHOST, 31061);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "a new staging -> prod:31061 connection after the edge expired: the application saw \
         {outcome}"
    );
    let edge = listed(&sb, "brief");
    assert_eq!(
        text(&edge, "state"),
        "expired",
        "the file edge after its expiry: {edge}"
    );
}

#[test]
fn edge_list_reports_usage_and_staleness() {
    if !privileged("edge_list_reports_usage_and_staleness") {
        return;
    }
    let mut sb = Sandbox::new("usage");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy(
        "p.yaml",
        &with_edges(&[file_edge("used", "tcp", "[31070]", &[])]),
    );
    sb.start_daemon(&policy);
    let _servers = [
        sb.listen(&prod, LOCALHOST, 31070),
        sb.listen(&prod, LOCALHOST, 31072),
    ];
    for (id, port) in [("unused-grant", "31071"), ("used-grant", "31072")] {
        let mut args = grant_args("tcp", port, "10m");
        args.extend(["--id", id]);
        sb.grant(&args);
    }
    let first_use = SystemTime::now();
    let k = 3;
    for i in 0..k {
        let outcome = sb.connect(&staging, LOCALHOST, 31070);
        assert_eq!(
            outcome,
            Outcome::greeted(),
            "connection {i} staging -> prod:31070: the application saw {outcome}"
        );
    }
    let last_use = SystemTime::now();
    let connections = |edge: &Json| field(edge, "connections").as_u64();
    let edge = settle(
        Duration::from_secs(2),
        || listed(&sb, "used"),
        |e| connections(e) >= Some(k),
    );
    assert_eq!(
        connections(&edge),
        Some(k),
        "after {k} allowed connections across it, the edge lists: {edge}"
    );
    let last_used = field(&edge, "last_used").as_time().unwrap_or_else(|| {
        panic!("an edge with {k} connections lists an RFC 3339 `last_used`: {edge}")
    });
    assert!(
        last_used + Duration::from_secs(1) >= first_use
            && last_used <= last_use + Duration::from_secs(2),
        "last_used ({} ms) is when the connections were made ({} to {} ms)",
        ms(last_used),
        ms(first_use),
        ms(last_use)
    );
    let shown = sb.show_edge("used");
    assert_eq!(
        shown.get("connections").and_then(Json::as_u64),
        Some(k),
        "edge show reports what edge list does: {shown}"
    );
    let unused = listed(&sb, "unused-grant");
    assert_eq!(
        (connections(&unused), field(&unused, "last_used").is_null()),
        (Some(0), true),
        "a grant never used has no connections and a null last_used: {unused}"
    );

    // Staleness: 4 s after the uses (well past --stale-after 2s, even with times rounded to
    // the second), use one grant and list.
    wait_until(last_use.max(last_used) + Duration::from_secs(4));
    let outcome = sb.connect(&staging, LOCALHOST, 31072);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "staging -> prod:31072 across used-grant: the application saw {outcome}"
    );
    settle(
        Duration::from_secs(2),
        || listed(&sb, "used-grant"),
        |e| connections(e) >= Some(1),
    );
    let list = sb.edges_with(&["--stale-after", "2s"]);
    let stale = |id: &str| {
        let edge = list
            .get("edges")
            .and_then(|e| e.find_by("id", id))
            .unwrap_or_else(|| panic!("{id} listed with --stale-after 2s: {list}"));
        field(edge, "stale").as_bool()
    };
    assert_eq!(
        (stale("unused-grant"), stale("used-grant"), stale("used")),
        (Some(true), Some(false), Some(true)),
        "(unused-grant: never used, made 4 s ago; used-grant: used just now; used: last used \
         4 s ago) stale with --stale-after 2s: {list}"
    );
    let default = listed(&sb, "used-grant");
    assert_eq!(
        field(&default, "stale").as_bool(),
        Some(false),
        "an edge used just now is not stale by default (7d): {default}"
    );
}

#[test]
fn an_edge_not_yet_valid_refuses_until_its_start() {
    if !privileged("an_edge_not_yet_valid_refuses_until_its_start") {
        return;
    }
    let mut sb = Sandbox::new("not-before");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    sb.start_daemon(&sb.policy("base.yaml", DOMAINS));
    // Applied to a running daemon (milliseconds) rather than at start (seconds under load),
    // so the window opens well after the checks before it: a whole second 4-5 s from now.
    let start = Json::format_time(SystemTime::now() + Duration::from_secs(5));
    let not_before = Json::String(start.clone()).as_time().expect("a time");
    let policy = sb.policy(
        "p.yaml",
        &with_edges(&[file_edge(
            "later",
            "tcp",
            "[31080]",
            &[
                &format!("not_before: '{start}'"),
                "expires: '2099-01-01T00:00:00Z'",
            ],
        )]),
    );
    sb.apply(&policy);
    let _server = sb.listen(&prod, LOCALHOST, 31080);
    let edge = listed(&sb, "later");
    assert_eq!(
        (text(&edge, "state"), field(&edge, "not_before").as_time()),
        ("not-yet-valid", Some(not_before)),
        "an edge whose not_before is ahead: {edge}"
    );
    let outcome = sb.connect(&staging, LOCALHOST, 31080);
    assert!(
        SystemTime::now() < not_before,
        "setting up took too long to test before not_before"
    );
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "staging -> prod:31080 before the edge's not_before: the application saw {outcome}"
    );

    wait_until(not_before + Duration::from_millis(300));
    // Taking effect may need the daemon's timer: allow about a second.
    let outcome = settle(
        Duration::from_secs(2),
        || sb.connect(&staging, LOCALHOST, 31080),
        |o| *o == Outcome::greeted(),
    );
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "staging -> prod:31080 after the edge's not_before: the application saw {outcome}"
    );
    let edge = listed(&sb, "later");
    assert_eq!(
        text(&edge, "state"),
        "active",
        "the edge after not_before: {edge}"
    );
}
