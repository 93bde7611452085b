//! Decision events: every refusal, every audited flow and every allowed domain crossing seen
//! by real applications is reported exactly once, with the right reason and every field,
//! through `enforcer events --follow`, in the event log, and across a daemon outage.
//!
//! Event order is the kernel's: a test ends its actions with a marker (a refused connect to a
//! port used for nothing else) and, once the marker's event has arrived, knows every earlier
//! event has too, so "nothing else was reported" needs no waiting.
//! Every test uses its own ports (32600-32799 belong to this file), and the remote host
//! subnet 10.231.41.0/24 (`RemoteHost::new(41)`).

use std::{
    fs,
    time::{Duration, SystemTime},
};

use enforcer_tests::{Json, Outcome, RemoteHost, Sandbox, privileged};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const LOCALHOST: &str = "127.0.0.1";
/// Events arrive within milliseconds; generous for a loaded machine, never a timing claim.
const ARRIVAL: Duration = Duration::from_secs(10);

fn policy(extra_domains: &str, edges: &str) -> String {
    format!(
        "
version: 1
defaults: {{unlabeled: deny, external: allow}}
domains:
  - name: prod.example.org
    cgroups: ['{{root}}/prod']
  - name: staging.example.org
    cgroups: ['{{root}}/staging']
{extra_domains}federation:
{edges}"
    )
}

fn edge(id: &str, protocol: &str, port: u16, extra: &str) -> String {
    format!(
        "  - id: {id}
    from: staging.example.org
    to: prod.example.org
    protocol: {protocol}
    ports: [{port}]
    owner: events-test
    reason: decision events
{extra}"
    )
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).expect("a sane clock"))
}

fn text<'a>(event: &'a Json, key: &str) -> &'a str {
    event
        .get(key)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("event without a string `{key}`: {event}"))
}

fn number(event: &Json, key: &str) -> u64 {
    event
        .get(key)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("event without a number `{key}`: {event}"))
}

/// Whether `event` is the marker: the refused connect to `port`.
fn is_marker(event: &Json, port: u16) -> bool {
    event
        .get("dst")
        .and_then(Json::as_str)
        .is_some_and(|d| d.ends_with(&format!(":{port}")))
}

/// What an event is, in one comparable line.
fn summary(event: &Json) -> String {
    format!(
        "{} {} {}/{} {} -> {} {} edge {}",
        text(event, "verdict"),
        text(event, "reason"),
        text(event, "protocol"),
        text(event, "hook"),
        text(event, "from"),
        text(event, "to"),
        text(event, "dst"),
        event.get("edge").and_then(Json::as_str).unwrap_or("none")
    )
}

/// Every key of the `-o json` schema, with its type.
fn check_schema(event: &Json) {
    for key in [
        "time", "verdict", "reason", "hook", "protocol", "from", "to", "src", "dst",
    ] {
        text(event, key);
    }
    number(event, "cgroup_id");
    number(event, "generation");
    for key in ["edge", "cgroup", "pid", "comm"] {
        assert!(event.get(key).is_some(), "event without `{key}`: {event}");
    }
    assert!(
        event.get("time").and_then(Json::as_time).is_some(),
        "`time` is RFC 3339: {event}"
    );
}

#[test]
fn each_refusal_and_crossing_is_reported_once_with_every_field() {
    if !privileged("each_refusal_and_crossing_is_reported_once_with_every_field") {
        return;
    }
    let mut sb = Sandbox::new("events-fields");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let other = sb.cgroup("other");
    let edges = [
        edge("db", "tcp", 32601, ""),
        edge("metrics", "udp", 32602, ""),
        edge(
            "old-db",
            "tcp",
            32605,
            "    expires: 2020-01-01T00:00:00Z\n",
        ),
    ]
    .concat();
    let file = sb.policy("policy.yaml", &policy("", &edges));
    sb.start_daemon(&file);
    let generation = sb
        .status()
        .get("generation")
        .and_then(Json::as_u64)
        .unwrap();
    let _servers = [
        sb.listen(&prod, LOCALHOST, 32601),
        sb.listen(&prod, LOCALHOST, 32603),
        sb.listen(&prod, LOCALHOST, 32605),
        sb.listen(&prod, LOCALHOST, 32699),
        sb.udp_listen(&prod, LOCALHOST, 32602),
        sb.udp_listen(&prod, LOCALHOST, 32604),
    ];
    let events = sb.follow_events();

    let before = SystemTime::now();
    assert_eq!(sb.connect(&staging, LOCALHOST, 32601), Outcome::greeted());
    assert_eq!(sb.connect(&staging, LOCALHOST, 32603), Outcome::EPERM);
    assert_eq!(sb.connect(&prod, LOCALHOST, 32601), Outcome::greeted());
    assert_eq!(sb.connect(&other, LOCALHOST, 32601), Outcome::EPERM);
    assert_eq!(sb.udp_send(&staging, LOCALHOST, 32602), Outcome::replied());
    assert_eq!(sb.udp_send(&staging, LOCALHOST, 32604), Outcome::EPERM);
    assert_eq!(sb.connect(&staging, LOCALHOST, 32605), Outcome::EPERM);
    assert_eq!(sb.connect(&staging, LOCALHOST, 32699), Outcome::EPERM);
    let after = SystemTime::now();

    let seen = events.until(|e| is_marker(e, 32699), ARRIVAL);
    let summaries: Vec<String> = seen.iter().map(summary).collect();
    let expected = [
        format!("allowed edge_allowed tcp/connect {STAGING} -> {PROD} 127.0.0.1:32601 edge db"),
        format!("refused no_edge tcp/connect {STAGING} -> {PROD} 127.0.0.1:32603 edge none"),
        format!(
            "refused unlabeled_default tcp/connect unlabeled -> {PROD} 127.0.0.1:32601 edge none"
        ),
        format!(
            "allowed edge_allowed udp/sendmsg {STAGING} -> {PROD} 127.0.0.1:32602 edge metrics"
        ),
        format!("refused no_edge udp/sendmsg {STAGING} -> {PROD} 127.0.0.1:32604 edge none"),
        format!("refused edge_expired tcp/connect {STAGING} -> {PROD} 127.0.0.1:32605 edge none"),
        format!("refused no_edge tcp/connect {STAGING} -> {PROD} 127.0.0.1:32699 edge none"),
    ];
    assert_eq!(
        summaries, expected,
        "one event per refusal and per crossing, none for the same-domain connect, none from \
         the receiving side"
    );

    for (event, cgroup) in seen.iter().zip([
        &staging, &staging, &other, &staging, &staging, &staging, &staging,
    ]) {
        check_schema(event);
        assert_eq!(
            text(event, "cgroup"),
            cgroup.as_str(),
            "cgroup path: {event}"
        );
        assert_eq!(
            text(event, "comm"),
            "enforcer-probe",
            "process name: {event}"
        );
        assert!(number(event, "pid") > 1, "pid: {event}");
        assert_eq!(
            number(event, "generation"),
            generation,
            "generation: {event}"
        );
        let at = event.get("time").and_then(Json::as_time).unwrap();
        assert!(
            at >= before - Duration::from_secs(1) && at <= after + Duration::from_secs(1),
            "time within the test's actions: {event}"
        );
        // connect() runs before the local address and port are chosen.
        assert!(
            text(event, "src").parse::<std::net::SocketAddr>().is_ok(),
            "source address: {event}"
        );
    }

    // The log holds exactly what was followed, in the same order and schema.
    let logged = sb.event_log(&[]);
    assert_eq!(logged, seen, "`enforcer events -o json` replays the log");
    let about_other = sb.event_log(&["--domain", "unlabeled"]);
    assert_eq!(about_other.len(), 1, "--domain filters: {about_other:?}");
    // Every flag takes a domain as `spiffe://NAME` too.
    let about_staging = sb.event_log(&["--domain", STAGING]);
    assert!(!about_staging.is_empty(), "--domain {STAGING} matches");
    assert_eq!(
        sb.event_log(&["--domain", &format!("spiffe://{STAGING}")]),
        about_staging,
        "--domain spiffe://{STAGING} matches what --domain {STAGING} matches"
    );

    let status = sb.status();
    let lost = status
        .get("events")
        .and_then(|e| e.get("lost"))
        .and_then(Json::as_u64);
    assert_eq!(lost, Some(0), "status reports no lost event: {status}");
}

#[test]
fn audit_mode_reports_would_deny_once_per_flow() {
    if !privileged("audit_mode_reports_would_deny_once_per_flow") {
        return;
    }
    let mut sb = Sandbox::new("events-audit");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let dev = sb.cgroup("dev");
    let text_policy = policy(
        "  - name: dev.example.org\n    cgroups: ['{root}/dev']\n    mode: audit\n",
        &edge("db", "tcp", 32611, ""),
    );
    let file = sb.policy("policy.yaml", &text_policy);
    sb.start_daemon(&file);
    let _servers = [
        sb.listen(&prod, LOCALHOST, 32612),
        sb.listen(&prod, LOCALHOST, 32699 - 1),
        sb.udp_listen(&prod, LOCALHOST, 32613),
    ];
    let events = sb.follow_events();
    // dev is in audit mode: its refused flows go through and are reported as audited.
    assert_eq!(sb.connect(&dev, LOCALHOST, 32612), Outcome::greeted());
    assert_eq!(sb.udp_send(&dev, LOCALHOST, 32613), Outcome::replied());
    assert_eq!(sb.connect(&staging, LOCALHOST, 32698), Outcome::EPERM);
    let seen: Vec<String> = events
        .until(|e| is_marker(e, 32698), ARRIVAL)
        .iter()
        .map(summary)
        .collect();
    assert_eq!(
        seen,
        [
            format!(
                "audited no_edge tcp/connect dev.example.org -> {PROD} 127.0.0.1:32612 edge none"
            ),
            format!(
                "audited no_edge udp/sendmsg dev.example.org -> {PROD} 127.0.0.1:32613 edge none"
            ),
            format!("refused no_edge tcp/connect {STAGING} -> {PROD} 127.0.0.1:32698 edge none"),
        ]
    );
}

#[test]
fn a_connection_ended_by_expiry_while_the_daemon_is_down_is_reported_after_restart() {
    if !privileged(
        "a_connection_ended_by_expiry_while_the_daemon_is_down_is_reported_after_restart",
    ) {
        return;
    }
    let mut sb = Sandbox::new("events-outage");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy(
        "policy.yaml",
        &policy("", &edge("short", "tcp", 32621, "    ttl: 3s\n")),
    );
    sb.start_daemon(&file);
    let mut sink = sb.sink(&prod, LOCALHOST, 32621);
    let mut stream = sb.stream(&staging, LOCALHOST, 32621);
    sink.expect_received(
        5,
        Duration::from_secs(5),
        "the stream flows through the edge",
    );
    let expires = sb
        .listed_edge("short")
        .and_then(|e| e.get("expires").and_then(Json::as_time))
        .expect("the edge lists its expiry");
    sb.kill_daemon();
    // The kernel alone ends the connection at the edge's deadline; the stream keeps trying.
    let deadline = expires + Duration::from_millis(500);
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
    sink.expect_nothing_sent_after(
        ms(expires) + 200,
        "the expired edge ends the stream with the daemon down",
    );
    stream.expect_not_ended("TCP retransmits while its packets are dropped");
    sb.start_daemon(&file);
    // The events written while no daemon ran wait in the pinned ring buffer; the new daemon
    // drains them into the log. Polled: the log has no readiness signal of its own.
    let deadline = std::time::Instant::now() + ARRIVAL;
    let ended = loop {
        let log = sb.event_log(&[]);
        let ended: Vec<Json> = log
            .into_iter()
            .filter(|e| matches!(text(e, "hook"), "established" | "ended"))
            .collect();
        if !ended.is_empty() || std::time::Instant::now() > deadline {
            break ended;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The kernel refused the connection's packets at the deadline, and the restarted daemon
    // ended it; whichever report came first stands for both.
    let summaries: Vec<String> = ended
        .iter()
        .map(summary)
        .map(|s| s.replace("tcp/ended", "tcp/established"))
        .collect();
    assert_eq!(
        summaries,
        [format!(
            "refused edge_expired tcp/established {STAGING} -> {PROD} 127.0.0.1:32621 edge none"
        )],
        "exactly one event for the connection's end, though both its ends were refused and the \
         daemon ended it"
    );
    let event = &ended[0];
    check_schema(event);
    assert!(
        event.get("pid").is_some_and(Json::is_null),
        "no task in a packet hook: {event}"
    );
}

#[test]
fn a_remote_peer_is_reported_at_the_receiver_once_per_connection_attempt() {
    if !privileged("a_remote_peer_is_reported_at_the_receiver_once_per_connection_attempt") {
        return;
    }
    let mut sb = Sandbox::new("events-remote");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let remote = RemoteHost::new(41);
    // The remote's IPv4 address is a staging endpoint; its IPv6 address is external.
    let text_policy = policy("", &edge("db", "tcp", 32632, ""))
        .replace("external: allow", "external: deny")
        .replace(
            "    cgroups: ['{root}/staging']\n",
            &format!(
                "    cgroups: ['{{root}}/staging']\n    endpoints: ['{}/32']\n",
                remote.remote_v4
            ),
        );
    let file = sb.policy("policy.yaml", &text_policy);
    sb.start_daemon(&file);
    let _servers = [
        sb.listen(&prod, &remote.host_v4, 32631),
        sb.listen(&prod, &remote.host_v4, 32632),
        sb.listen(&prod, &remote.host_v6, 32631),
        sb.listen(&prod, LOCALHOST, 32697),
    ];
    let events = sb.follow_events();
    // Long enough for the peer to retransmit its SYN twice (after 1 s and 3 s).
    let peer = remote.workload().with_timeout(Some(Duration::from_secs(4)));
    assert_eq!(peer.connect(&remote.host_v4, 32632), Outcome::greeted());
    assert_eq!(peer.connect(&remote.host_v4, 32631), Outcome::Timeout);
    assert_eq!(peer.connect(&remote.host_v6, 32631), Outcome::Timeout);
    assert_eq!(sb.connect(&staging, LOCALHOST, 32697), Outcome::EPERM);
    let seen = events.until(|e| is_marker(e, 32697), ARRIVAL);
    let summaries: Vec<String> = seen.iter().map(summary).collect();
    let v4 = &remote.host_v4;
    let v6 = &remote.host_v6;
    assert_eq!(
        summaries,
        [
            format!("allowed edge_allowed tcp/ingress {STAGING} -> {PROD} {v4}:32632 edge db"),
            format!("refused no_edge tcp/ingress {STAGING} -> {PROD} {v4}:32631 edge none"),
            format!(
                "refused external_default tcp/ingress external -> {PROD} [{v6}]:32631 edge none"
            ),
            format!("refused no_edge tcp/connect {STAGING} -> {PROD} 127.0.0.1:32697 edge none"),
        ],
        "one event per connection attempt, however often its SYN was retransmitted"
    );
    for event in &seen[..3] {
        check_schema(event);
        assert_eq!(
            text(event, "cgroup"),
            prod.as_str(),
            "the receiver's cgroup: {event}"
        );
        assert!(
            event.get("pid").is_some_and(Json::is_null),
            "no task: {event}"
        );
        let src = text(event, "src");
        assert!(
            src.starts_with(&remote.remote_v4)
                || src.starts_with(&format!("[{}]", remote.remote_v6)),
            "the remote's address: {event}"
        );
    }
}

#[test]
fn each_connection_a_revocation_ends_is_reported_once() {
    if !privileged("each_connection_a_revocation_ends_is_reported_once") {
        return;
    }
    let mut sb = Sandbox::new("events-revoke");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("policy.yaml", &policy("", &edge("other", "tcp", 32649, "")));
    sb.start_daemon(&file);
    let grant = |protocol: &str, port: &str| {
        sb.grant(&[
            "--from",
            STAGING,
            "--to",
            PROD,
            "--protocol",
            protocol,
            "--ports",
            port,
            "--ttl",
            "10m",
            "--owner",
            "events-test",
            "--reason",
            "revocation events",
        ])
    };
    let tcp_grant = grant("tcp", "32641");
    let udp_grant = grant("udp", "32642");
    let mut tcp_sink = sb.sink(&prod, LOCALHOST, 32641);
    let mut udp_sink = sb.udp_sink(&prod, LOCALHOST, 32642);
    let _marker_server = sb.listen(&prod, LOCALHOST, 32648);
    let _tcp = sb.stream(&staging, LOCALHOST, 32641);
    let _udp = sb.udp_stream(&staging, LOCALHOST, 32642);
    tcp_sink.expect_received(3, Duration::from_secs(5), "tcp stream through its grant");
    udp_sink.expect_received(3, Duration::from_secs(5), "udp stream through its grant");
    let events = sb.follow_events();
    sb.revoke(&tcp_grant);
    sb.revoke(&udp_grant);
    let is_end = |e: &Json| matches!(text(e, "hook"), "established" | "ended");
    let mut seen = events.until(|e| is_end(e) && text(e, "protocol") == "tcp", ARRIVAL);
    if !seen
        .iter()
        .any(|e| is_end(e) && text(e, "protocol") == "udp")
    {
        seen.extend(events.until(|e| is_end(e) && text(e, "protocol") == "udp", ARRIVAL));
    }
    assert_eq!(sb.connect(&staging, LOCALHOST, 32648), Outcome::EPERM);
    seen.extend(events.until(|e| is_marker(e, 32648), ARRIVAL));
    let ends: Vec<String> = seen
        .iter()
        .filter(|e| is_end(e))
        .map(|e| {
            format!(
                "{} {} {} {} -> {} {}",
                text(e, "verdict"),
                text(e, "reason"),
                text(e, "protocol"),
                text(e, "from"),
                text(e, "to"),
                text(e, "dst")
            )
        })
        .collect();
    let mut sorted = ends.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            format!("refused no_edge tcp {STAGING} -> {PROD} 127.0.0.1:32641"),
            format!("refused no_edge udp {STAGING} -> {PROD} 127.0.0.1:32642"),
        ],
        "exactly one event per ended connection, whoever saw it first: {seen:?}"
    );
    for e in seen.iter().filter(|e| is_end(e)) {
        check_schema(e);
    }
}

#[test]
fn a_full_ring_buffer_loses_events_visibly_never_silently() {
    if !privileged("a_full_ring_buffer_loses_events_visibly_never_silently") {
        return;
    }
    let mut sb = Sandbox::new("events-lost");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("policy.yaml", &policy("", &edge("other", "tcp", 32659, "")));
    sb.start_daemon(&file);
    let _sink = sb.udp_listen(&prod, LOCALHOST, 32651);
    // More refusals than the 4 MiB ring buffer holds (about 37,000 records), while the daemon
    // cannot read any.
    let sends = 50_000;
    sb.pause_daemon(true);
    let (refused, other) = sb.workload(&staging).udp_refused(LOCALHOST, 32651, sends);
    sb.pause_daemon(false);
    assert_eq!(
        (refused, other),
        (sends, 0),
        "every datagram refused with EPERM"
    );
    // The daemon reads and logs the whole full buffer first, which takes many times longer
    // under emulation.
    sb.wait_daemon_log("decision event(s) lost", enforcer_tests::patient(ARRIVAL));
    let status = sb.status();
    let lost = status
        .get("events")
        .and_then(|e| e.get("lost"))
        .and_then(Json::as_u64)
        .expect("status reports lost events");
    // The daemon has read the buffer by the time it logs the loss; what it read is logged.
    let logged = sb
        .event_log(&[])
        .iter()
        .filter(|e| is_marker(e, 32651) && text(e, "verdict") == "refused")
        .count() as u64;
    assert!(lost > 0, "a full buffer loses events: {status}");
    assert_eq!(
        logged + lost,
        refused,
        "every refusal is either an event ({logged}) or counted as lost ({lost})"
    );
}

/// Sockets the daemon process holds open (its control connections among them).
fn open_sockets(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the daemon's descriptors")
        .filter_map(Result::ok)
        .filter(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Followers that stopped reading must cost the others nothing. The daemon before this fix
/// wrote each batch to every follower in turn, waiting up to a second on each whose socket
/// was full, and let the event go on only once it had dropped them all (24 s here, while a
/// burst overflowed the ring buffer). Now each follower has a queue of its own: the events
/// reach the log and a reading follower while the stalled followers are still held, queued
/// for (they are dropped only once they fall 8 MiB behind). What is checked is that order,
/// which no machine's speed changes: the burst fits the ring buffer, and the reading
/// follower is never more than the burst behind.
#[test]
fn followers_that_never_read_hold_up_neither_the_log_nor_a_follower_that_reads() {
    if !privileged("followers_that_never_read_hold_up_neither_the_log_nor_a_follower_that_reads") {
        return;
    }
    let mut sb = Sandbox::new("events-stalled-followers");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("policy.yaml", &policy("", &edge("other", "tcp", 32679, "")));
    sb.start_daemon(&file);
    let _sink = sb.udp_listen(&prod, LOCALHOST, 32671);
    let _marker = sb.listen(&prod, LOCALHOST, 32672);
    let stalled: Vec<_> = (0..24)
        .map(|_| sb.request_unread(r#"{"request":"events","follow":true}"#))
        .collect();
    for (_, answer) in &stalled {
        assert_eq!(answer, r#"{"result":"events"}"#, "a follower is accepted");
    }
    let follower = sb.follow_events();
    let held = open_sockets(sb.daemon_pid());
    // About 1.6 MB of lines: enough to fill every stalled follower's socket, far below what
    // the 4 MiB ring buffer holds (about 37,000 records) and a queue's 8 MiB.
    let sends = 5_000;
    let (refused, other) = sb.workload(&staging).udp_refused(LOCALHOST, 32671, sends);
    assert_eq!((refused, other), (sends, 0), "every datagram refused");
    assert_eq!(sb.connect(&staging, LOCALHOST, 32672), Outcome::EPERM);
    let followed = std::cell::Cell::new(0);
    // The marker comes after every event of the burst.
    follower.until(
        |e| {
            followed.set(followed.get() + u64::from(is_marker(e, 32671)));
            is_marker(e, 32672)
        },
        enforcer_tests::patient(Duration::from_secs(60)),
    );
    // Counted with room for a connection or two of the daemon's own coming and going; the
    // daemon before this fix had closed all 24 by now.
    let now = open_sockets(sb.daemon_pid());
    assert!(
        now + stalled.len() / 2 > held,
        "the events reached a reading follower while the {} stalled followers were still held \
         ({held} sockets then, {now} now)",
        stalled.len(),
    );
    let followed = followed.get();
    let lost = sb
        .status()
        .get("events")
        .and_then(|e| e.get("lost"))
        .and_then(Json::as_u64)
        .expect("status reports lost events");
    let logged = sb
        .event_log(&[])
        .iter()
        .filter(|e| is_marker(e, 32671) && text(e, "verdict") == "refused")
        .count() as u64;
    assert_eq!(
        (logged, followed, lost),
        (sends, sends, 0),
        "every refusal is logged and followed (logged, followed, lost)"
    );
    drop(stalled);
}
