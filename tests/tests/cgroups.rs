//! Bindings follow the cgroup tree as it changes under a running daemon: cgroups created after
//! the policy, nested bindings, processes moved between cgroups, and cgroups removed.
//! Every test uses its own ports (30600-30699 belong to this file).

use std::{
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Json, Outcome, Sandbox, privileged};

/// `{prod}` and `{staging}` are each domain's list of bound cgroups.
const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: [{prod}]
  - name: staging.example.org
    cgroups: [{staging}]
";

/// A policy binding the cgroups (relative to the sandbox root) to prod and staging.
fn policy(prod: &[&str], staging: &[&str]) -> String {
    let list = |rels: &[&str]| {
        let paths: Vec<_> = rels.iter().map(|r| format!("'{{root}}/{r}'")).collect();
        paths.join(", ")
    };
    POLICY
        .replace("{prod}", &list(prod))
        .replace("{staging}", &list(staging))
}

const LOOPBACKS: [&str; 2] = ["127.0.0.1", "::1"];

#[test]
fn a_binding_to_a_cgroup_created_later_takes_effect_when_it_appears() {
    if !privileged("a_binding_to_a_cgroup_created_later_takes_effect_when_it_appears") {
        return;
    }
    let mut sb = Sandbox::new("late");
    let staging = sb.cgroup("staging");
    let late = format!("{}/late", sb.root);
    let policy = sb.policy("p.yaml", &policy(&["late"], &["staging"]));
    sb.start_daemon(&policy);
    assert_eq!(
        binding_state(&sb.status(), &late).as_deref(),
        Some("pending"),
        "{late} before it exists"
    );
    let _server = sb.listen(&staging, "127.0.0.1", 30600);

    // The binding lands when the daemon sees the cgroup appear, and it says so; a connection
    // made in the milliseconds before is judged with the ancestors' domain (README, Known
    // limits), so the test waits for that signal rather than race it.
    sb.cgroup("late");
    sb.wait_daemon_log(&format!("cgroup {late} appeared"), Duration::from_secs(10));
    assert_eq!(
        sb.connect(&late, "127.0.0.1", 30600),
        Outcome::EPERM,
        "prod (late) -> staging"
    );
    assert_eq!(
        binding_state(&sb.status(), &late).as_deref(),
        Some("bound"),
        "{late} once it exists"
    );
}

#[test]
fn a_deeper_binding_overrides_its_ancestor() {
    if !privileged("a_deeper_binding_overrides_its_ancestor") {
        return;
    }
    let mut sb = Sandbox::new("deeper");
    let prod = sb.cgroup("prod");
    let db = sb.cgroup("team/db");
    let web = sb.cgroup("team/web");
    let policy = sb.policy("p.yaml", &policy(&["prod", "team/db"], &["team"]));
    sb.start_daemon(&policy);
    let _prod_server = sb.listen(&prod, "127.0.0.1", 30610);
    let _web_server = sb.listen(&web, "127.0.0.1", 30611);
    let _db_server = sb.listen(&db, "::1", 30612);
    assert_eq!(
        sb.connect(&db, "127.0.0.1", 30610),
        Outcome::greeted(),
        "team/db is prod"
    );
    assert_eq!(
        sb.connect(&db, "127.0.0.1", 30611),
        Outcome::EPERM,
        "prod (team/db) -> staging (team/web)"
    );
    assert_eq!(
        sb.connect(&web, "127.0.0.1", 30610),
        Outcome::EPERM,
        "team/web stays staging"
    );
    assert_eq!(
        sb.connect(&prod, "::1", 30612),
        Outcome::greeted(),
        "team/db's listener is prod's"
    );
    assert_eq!(sb.connect(&web, "::1", 30612), Outcome::EPERM);
}

#[test]
fn a_moved_process_keeps_old_sockets_and_creates_new_ones_in_its_new_domain() {
    if !privileged("a_moved_process_keeps_old_sockets_and_creates_new_ones_in_its_new_domain") {
        return;
    }
    let mut sb = Sandbox::new("moved");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let policy = sb.policy("p.yaml", &policy(&["prod"], &["staging"]));
    sb.start_daemon(&policy);
    for (addr, port) in LOOPBACKS.into_iter().zip([30620, 30621]) {
        let _server = sb.listen(&prod, addr, port);
        let held = sb.hold_socket(&staging, addr, port);
        sb.move_process(held.pid(), &prod);
        let (old, new) = held.connect_old_and_new();
        assert_eq!(old, Outcome::EPERM, "{addr}: the socket created in staging");
        assert_eq!(
            new,
            Outcome::greeted(),
            "{addr}: a socket created after the move to prod"
        );
    }
}

#[test]
fn a_removed_cgroup_leaves_no_binding_behind() {
    if !privileged("a_removed_cgroup_leaves_no_binding_behind") {
        return;
    }
    let mut sb = Sandbox::new("gone");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let gone = sb.cgroup("gone");
    let policy = sb.policy("p.yaml", &policy(&["prod", "gone"], &["staging"]));
    sb.start_daemon(&policy);
    let before = sb.status();
    assert_eq!(binding_state(&before, &gone).as_deref(), Some("bound"));
    let entries = bindings_fill(&before);

    sb.remove_cgroup(&gone);
    // The kernel frees a removed cgroup asynchronously, so the daemon hears of it a moment
    // later: poll its status, within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = (Some("pending".to_owned()), entries - 1);
    let seen = loop {
        let status = sb.status();
        let seen = (binding_state(&status, &gone), bindings_fill(&status));
        if seen == expected || Instant::now() >= deadline {
            break seen;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        seen, expected,
        "(state of {gone}, ENF_BINDINGS entries) 5 s after rmdir"
    );
}

/// The state (`bound`, `pending`, ...) `status` reports for the binding of `cgroup`.
fn binding_state(status: &Json, cgroup: &str) -> Option<String> {
    let domains = status.get("domains").map_or(&[][..], Json::as_array);
    domains
        .iter()
        .flat_map(|d| d.get("bindings").map_or(&[][..], Json::as_array))
        .find(|b| b.get("cgroup").and_then(Json::as_str) == Some(cgroup))
        .and_then(|b| b.get("state")?.as_str())
        .map(str::to_owned)
}

/// How many entries `status` reports in the bindings map.
fn bindings_fill(status: &Json) -> u64 {
    let maps = status.get("maps").map_or(&[][..], Json::as_array);
    maps.iter()
        .find(|m| m.get("map").and_then(Json::as_str) == Some("ENF_BINDINGS"))
        .and_then(|m| m.get("entries")?.as_u64())
        .expect("status lists the ENF_BINDINGS map with its entry count")
}
