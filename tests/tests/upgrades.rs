//! Upgrades with no window (issue 19, item 2): a daemon of this build started on the pins of
//! an earlier build whose maps have another layout takes them over in place, with no
//! `enforcer teardown` and no moment without enforcement. The earlier build is commit 95478a9
//! ([`PREVIOUS_LAYOUT`]), the last before a25961a changed `ENF_EDGES`'s key from 16 bytes to
//! 12: the newest layout change, so the upgrade a host on the previous layout makes. It is
//! compiled from this repository's history by the test (once; later runs reuse it), or
//! shipped prebuilt by `cargo xtask vm-test`, whose guests have neither git nor cargo.
//!
//! While the upgrade runs, one staging workload retries a connection the policy forbids and
//! another one it allows, as fast as they can; every attempt of each is counted. Not one
//! forbidden attempt may connect, and not one allowed attempt may fail. A connection the
//! policy allows, open before the upgrade, keeps flowing; a grant made through the old daemon
//! still opens its port after the upgrade and its revocation still ends the connection it
//! allowed. Pins of a layout no migration knows are still refused, with enforcement left as
//! it was. Ports 38000-38099 belong to this file.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use enforcer_tests::{
    Json, Outcome, PREVIOUS_LAYOUT, Sandbox, Stream, enforcer_at, patient, pin_foreign_map,
    privileged,
};

const LOCALHOST: &str = "127.0.0.1";
const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
/// The policy's edge opens these two: a listener for the retried allowed connection, and a
/// sink for a connection held open across the upgrade.
const ALLOWED: u16 = 38001;
const HELD: u16 = 38003;
/// No edge opens this one.
const FORBIDDEN: u16 = 38002;
/// A grant made through the old daemon opens these two: a sink for a connection that its
/// revocation must end, and a listener for new connections.
const GRANTED_HELD: u16 = 38004;
const GRANTED: u16 = 38005;
const GRANT_ID: &str = "upgrade-grant";
/// Attempts each client makes before the upgrade starts and after it is done, at least.
const ATTEMPTS: usize = 200;
/// How long a stream or a storm gets to show progress: generous, no timing assertion.
const PROGRESS: Duration = Duration::from_secs(60);

/// The two domains, and the policy's one edge, staging -> prod on `ports`.
fn policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let ports = ports.join(", ");
    format!(
        "version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod']
  - name: {STAGING}
    cgroups: ['{{root}}/staging']
federation:
  - id: storm
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{ports}]
    owner: platform-team
    reason: upgrade test
"
    )
}

fn u64_at(json: &Json, key: &str) -> u64 {
    json.get(key)
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("{key} is a number in {json}"))
}

/// The `prog_id` of every program in a `status -o json`.
fn program_ids(status: &Json) -> Vec<u64> {
    status
        .get("programs")
        .map(Json::as_array)
        .unwrap_or_default()
        .iter()
        .map(|p| u64_at(p, "prog_id"))
        .collect()
}

/// A staging client retrying the connection the policy allows and one retrying the one it
/// forbids, each as fast as it can, one result line per attempt.
struct Storms {
    allowed: Stream,
    forbidden: Stream,
    /// The ports they connect to.
    ports: [u16; 2],
}

impl Storms {
    /// Both clients, connecting to `allowed` and `forbidden`, each with [`ATTEMPTS`] attempts
    /// made when this returns.
    fn start(sb: &Sandbox, staging: &str, allowed: u16, forbidden: u16) -> Self {
        let mut storms = Self {
            allowed: sb.connect_storm(staging, LOCALHOST, allowed),
            forbidden: sb.connect_storm(staging, LOCALHOST, forbidden),
            ports: [allowed, forbidden],
        };
        storms.go_on();
        storms
    }

    /// Waits until each client has made [`ATTEMPTS`] more attempts.
    fn go_on(&mut self) {
        for storm in [&mut self.allowed, &mut self.forbidden] {
            let made = storm.lines_so_far().len();
            storm.wait_for_count("", made + ATTEMPTS, PROGRESS);
        }
    }

    /// Fails the test if any attempt so far got another answer than the policy's (not one
    /// forbidden connection may succeed, not one allowed one may fail), or if no attempt was
    /// made between `from` and `to`, the `window` the test is about. Returns the counts.
    fn check(&mut self, from: SystemTime, to: SystemTime, window: &str) -> String {
        let mut report = Vec::new();
        let [allowed, forbidden] = self.ports;
        for (storm, port, expected) in [
            (&mut self.allowed, allowed, "connected hi"),
            (&mut self.forbidden, forbidden, "error 1"),
        ] {
            // The readiness line first, then one line per attempt.
            let lines = storm.lines_so_far();
            let attempts = &lines[1..];
            let during = attempts
                .iter()
                .filter(|l| l.at >= from && l.at <= to)
                .count();
            let wrong: Vec<&str> = attempts
                .iter()
                .map(|l| l.text.as_str())
                .filter(|text| *text != expected)
                .collect();
            report.push(format!(
                "staging -> prod:{port}: {} attempts, {during} during {window}, {} not \
                 `{expected}`",
                attempts.len(),
                wrong.len()
            ));
            assert!(
                wrong.is_empty(),
                "staging -> prod:{port} must always see `{expected}`; across {window} {} of {} \
                 attempts saw otherwise, first {:?}",
                wrong.len(),
                attempts.len(),
                &wrong[..wrong.len().min(5)]
            );
            assert!(
                during > 0,
                "no attempt to prod:{port} was made during {window}: the test proved nothing"
            );
        }
        report.join("; ")
    }
}

/// Starts the previous layout's daemon; `false` (after saying so loudly) on a kernel that
/// refuses that build.
fn start_previous(sb: &mut Sandbox, old: &Path, file: &Path) -> bool {
    let Err(why) = sb.try_start_daemon_from(old, file, &[]) else {
        return true;
    };
    // a25961a itself is what made the programs fit Linux 6.1's verifier: on a kernel that
    // refuses the previous build there was never anything to upgrade from.
    assert!(
        why.contains("kernel lacks"),
        "the previous build's daemon did not start: {why}"
    );
    eprintln!(
        "\n!!!!!!!! SKIPPED the upgrade test on this kernel: the build of the previous layout \
         ({PREVIOUS_LAYOUT}) does not load here, so no host could run it. !!!!!!!!\n{why}\n"
    );
    false
}

#[test]
fn an_upgrade_across_a_map_layout_change_keeps_enforcing() {
    if !privileged("an_upgrade_across_a_map_layout_change_keeps_enforcing") {
        return;
    }
    let old = enforcer_at(PREVIOUS_LAYOUT);
    let mut sb = Sandbox::new("upgrade-layout");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[ALLOWED, HELD]));
    if !start_previous(&mut sb, &old, &file) {
        return;
    }
    let _allowed = sb.listen(&prod, LOCALHOST, ALLOWED);
    let _forbidden = sb.listen(&prod, LOCALHOST, FORBIDDEN);
    let _granted = sb.listen(&prod, LOCALHOST, GRANTED);
    let mut held_sink = sb.sink(&prod, LOCALHOST, HELD);
    let mut granted_sink = sb.sink(&prod, LOCALHOST, GRANTED_HELD);
    let ports = format!("{GRANTED_HELD}-{GRANTED}");
    let granted = sb.enforcer_from(
        &old,
        &[
            "edge",
            "grant",
            "--from",
            STAGING,
            "--to",
            PROD,
            "--protocol",
            "tcp",
            "--ports",
            &ports,
            "--ttl",
            "1h",
            "--owner",
            "platform-team",
            "--reason",
            "upgrade test",
            "--id",
            GRANT_ID,
        ],
    );
    assert!(
        granted.status.success(),
        "the old daemon granted nothing: {}",
        String::from_utf8_lossy(&granted.stderr)
    );
    for (port, expected) in [
        (ALLOWED, Outcome::greeted()),
        (GRANTED, Outcome::greeted()),
        (FORBIDDEN, Outcome::EPERM),
    ] {
        let outcome = sb.connect(&staging, LOCALHOST, port);
        assert_eq!(
            outcome, expected,
            "before the upgrade, staging -> prod:{port}: the application saw {outcome}"
        );
    }
    let _held = sb.stream(&staging, LOCALHOST, HELD);
    let mut granted_stream = sb.stream(&staging, LOCALHOST, GRANTED_HELD);
    held_sink.expect_received(3, PROGRESS, "the held connection before the upgrade");
    granted_sink.expect_received(3, PROGRESS, "the granted connection before the upgrade");
    let before = {
        let out = sb.enforcer_from(&old, &["status", "-o", "json"]);
        assert!(out.status.success(), "old status failed");
        Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("old status prints JSON")
    };

    let mut storms = Storms::start(&sb, &staging, ALLOWED, FORBIDDEN);

    // The upgrade: the old daemon is gone (pinned enforcement stays), this build starts on
    // its pins and state dir. start_daemon returns once the control socket answers, after
    // every hook runs this build's programs and the policy is applied.
    sb.kill_daemon();
    let upgrading = SystemTime::now();
    sb.start_daemon(&file);
    let upgraded = SystemTime::now();
    storms.go_on();
    let report = storms.check(upgrading, upgraded, "the upgrade");
    eprintln!("upgrade storm: {report}");

    let held = held_sink.received_count();
    held_sink.expect_received(held + 3, PROGRESS, "the held connection after the upgrade");

    let after = sb.status();
    let upgraded_maps = after
        .get("upgraded_maps")
        .map(Json::as_array)
        .unwrap_or_default();
    let edges = upgraded_maps
        .iter()
        .find(|m| m.get("map").and_then(Json::as_str) == Some("ENF_EDGES"))
        .unwrap_or_else(|| panic!("status lists ENF_EDGES among upgraded_maps: {after}"));
    assert!(
        u64_at(edges, "entries") > 0,
        "the policy's and the grant's edges were carried over: {edges}"
    );
    let layout = after
        .get("memory")
        .and_then(|m| m.find_by("map", "ENF_EDGES"))
        .unwrap_or_else(|| panic!("status lists the pinned ENF_EDGES under memory: {after}"));
    assert_eq!(
        u64_at(layout, "key_size"),
        12,
        "the pinned ENF_EDGES has this build's 12-byte keys: {layout}"
    );
    let (old_ids, new_ids) = (program_ids(&before), program_ids(&after));
    assert_eq!(new_ids.len(), 7, "every hook has a program: {after}");
    assert!(
        new_ids.iter().all(|id| !old_ids.contains(id)),
        "every hook runs a program of this build ({new_ids:?}), none of the old daemon's \
         ({old_ids:?})"
    );
    assert!(
        u64_at(&after, "generation") > u64_at(&before, "generation"),
        "the generation goes on from the old daemon's ({before})"
    );
    assert!(
        sb.listed_edge(GRANT_ID).is_some(),
        "the grant made through the old daemon is listed after the upgrade"
    );

    let outcome = sb.connect(&staging, LOCALHOST, GRANTED);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "after the upgrade the old daemon's grant still opens prod:{GRANTED}; the application \
         saw {outcome}"
    );
    let reply = sb.revoke(GRANT_ID);
    assert!(
        reply
            .get("ended")
            .and_then(Json::as_u64)
            .is_some_and(|n| n >= 1),
        "revoking the grant ends the connection it allowed: {reply}"
    );
    granted_stream.expect_end(
        patient(Duration::from_secs(10)),
        &["ECONNABORTED", "ECONNRESET"],
        "the granted connection after its grant was revoked",
    );
    let outcome = sb.connect(&staging, LOCALHOST, GRANTED);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "after the revocation staging -> prod:{GRANTED} is refused; the application saw \
         {outcome}"
    );
    let held = held_sink.received_count();
    held_sink.expect_received(
        held + 3,
        PROGRESS,
        "the held connection, which the policy's edge allows, after the revocation",
    );
}

#[test]
fn pins_of_a_layout_no_migration_knows_are_refused_and_enforcement_stays() {
    if !privileged("pins_of_a_layout_no_migration_knows_are_refused_and_enforcement_stays") {
        return;
    }
    const OPEN: u16 = 38011;
    const CLOSED: u16 = 38012;
    let mut sb = Sandbox::new("upgrade-unknown");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[OPEN]));
    sb.start_daemon(&file);
    let _open = sb.listen(&prod, LOCALHOST, OPEN);
    let _closed = sb.listen(&prod, LOCALHOST, CLOSED);
    let expect = |sb: &Sandbox, when: &str| {
        for (port, expected) in [(OPEN, Outcome::greeted()), (CLOSED, Outcome::EPERM)] {
            let outcome = sb.connect(&staging, LOCALHOST, port);
            assert_eq!(
                outcome, expected,
                "{when}: staging -> prod:{port}: the application saw {outcome}"
            );
        }
    };
    expect(&sb, "started");
    sb.kill_daemon();
    // ENF_EDGES as a build with 20-byte keys would have pinned it: the running programs keep
    // the real map, only the pin names another.
    let pin = sb.pin_dir.join("maps/ENF_EDGES");
    std::fs::remove_file(&pin).expect("removing the ENF_EDGES pin");
    pin_foreign_map(&pin, "ENF_EDGES", 20, 136);
    let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
    assert!(
        stderr.contains("key/value sizes 20/136")
            && stderr.contains("knows no migration")
            && stderr.contains("enforcer teardown"),
        "the refusal names the layout and the way out: {stderr}"
    );
    assert!(
        !sb.pin_dir.join("maps/ENF_EDGES-upgrade").exists(),
        "a refused start stages nothing"
    );
    expect(&sb, "after the refused start");
}

#[test]
fn an_upgrade_stopped_before_its_new_maps_are_pinned_is_finished_by_the_next_start() {
    if !privileged(
        "an_upgrade_stopped_before_its_new_maps_are_pinned_is_finished_by_the_next_start",
    ) {
        return;
    }
    let old = enforcer_at(PREVIOUS_LAYOUT);
    const ALLOWED: u16 = 38021;
    const FORBIDDEN: u16 = 38022;
    let mut sb = Sandbox::new("upgrade-resume");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[ALLOWED]));
    if !start_previous(&mut sb, &old, &file) {
        return;
    }
    let _allowed = sb.listen(&prod, LOCALHOST, ALLOWED);
    let _forbidden = sb.listen(&prod, LOCALHOST, FORBIDDEN);
    let mut storms = Storms::start(&sb, &staging, ALLOWED, FORBIDDEN);
    sb.kill_daemon();

    // A directory where the upgrade stages its new ENF_EDGES pin makes the start stop after
    // every hook got this build's programs and before the new map is pinned: as a crash at
    // that step would, with the pin still naming the old map.
    let staged = sb.pin_dir.join("maps/ENF_EDGES-upgrade");
    std::fs::create_dir(&staged).expect("making a directory on bpffs");
    let stopping = SystemTime::now();
    let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
    let stopped = SystemTime::now();
    assert!(
        stderr.contains("ENF_EDGES-upgrade"),
        "the start stopped where the new pin is staged: {stderr}"
    );
    storms.go_on();
    let halfway = storms.check(stopping, stopped, "the stopped upgrade");
    eprintln!("stopped upgrade storm: {halfway}");

    std::fs::remove_dir(&staged).expect("removing the directory");
    let resuming = SystemTime::now();
    sb.start_daemon(&file);
    let resumed = SystemTime::now();
    storms.go_on();
    let report = storms.check(resuming, resumed, "the resumed upgrade");
    eprintln!("resumed upgrade storm: {report}");
    let status = sb.status();
    assert!(
        status
            .get("upgraded_maps")
            .and_then(|m| m.find_by("map", "ENF_EDGES"))
            .is_some(),
        "the next start upgraded ENF_EDGES: {status}"
    );
    let layout = status
        .get("memory")
        .and_then(|m| m.find_by("map", "ENF_EDGES"))
        .unwrap_or_else(|| panic!("status lists the pinned ENF_EDGES under memory: {status}"));
    assert_eq!(u64_at(layout, "key_size"), 12, "{layout}");
}
