//! The kernel maps' capacities and what a refused change leaves behind. A policy that would
//! not fit is refused whole by `policy check` and by the daemon, naming the capacity; a change
//! that fails after the daemon began writing leaves no trace in any map, not even the domain
//! ids it recorded for it (ids are never reused, so a leaked id would stay taken until
//! teardown).

use std::{fmt::Write as _, fs};

use enforcer_tests::{Json, Sandbox, privileged};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
federation:
  - {from: staging.example.org, to: prod.example.org, protocol: tcp, ports: [5432], owner: o, reason: r}
";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn generation(status: &Json) -> u64 {
    status
        .get("generation")
        .and_then(Json::as_u64)
        .expect("status reports the generation")
}

fn domain_ids(status: &Json) -> u64 {
    status
        .get("maps")
        .map_or(&[][..], Json::as_array)
        .iter()
        .find(|m| m.get("map").and_then(Json::as_str) == Some("ENF_DOMAINS"))
        .and_then(|m| m.get("entries")?.as_u64())
        .expect("status lists ENF_DOMAINS with its entry count")
}

/// One domain more in endpoint prefixes than a policy slot holds (32,768).
#[test]
fn a_policy_over_a_capacity_is_refused_by_check_and_by_the_daemon() {
    if !privileged("a_policy_over_a_capacity_is_refused_by_check_and_by_the_daemon") {
        return;
    }
    let mut sb = Sandbox::new("capacity");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon(&file);
    let before = sb.status();

    let mut prefixes = String::new();
    for i in 0..32_769u32 {
        let _ = write!(
            prefixes,
            "10.{}.{}.{}/32, ",
            64 + i / 65_536,
            i / 256 % 256,
            i % 256
        );
    }
    let text = POLICY.replace(
        "cgroups: ['{root}/prod']",
        &format!("cgroups: ['{{root}}/prod']\n    endpoints: [{prefixes}]"),
    );
    let big = sb.policy("too-many-prefixes.yaml", &text);
    let big = big.to_str().expect("utf-8 path");
    let want = "the policy needs 32769 endpoint prefixes; the kernel maps hold at most 32768";

    let check = sb.enforcer(&["policy", "check", big]);
    assert!(!check.status.success(), "check must refuse it");
    assert!(stderr(&check).contains(want), "{}", stderr(&check));

    let apply = sb.enforcer(&["policy", "apply", big]);
    assert!(!apply.status.success(), "apply must refuse it");
    assert!(stderr(&apply).contains(want), "{}", stderr(&apply));
    assert!(
        stderr(&apply).contains("was not applied; nothing changed"),
        "{}",
        stderr(&apply)
    );
    let after = sb.status();
    assert_eq!(generation(&after), generation(&before), "nothing changed");
    assert_eq!(
        after.get("maps"),
        before.get("maps"),
        "the maps are as they were"
    );
}

/// A change that fails after its new domain's id was recorded (here: the edge record cannot
/// be saved, which happens before the swap) takes the id back out of ENF_DOMAINS. A daemon
/// started afterwards reads ENF_DOMAINS from the kernel, so it shows what the failed change
/// left there.
#[test]
fn a_change_that_fails_half_way_leaves_no_domain_id_behind() {
    if !privileged("a_change_that_fails_half_way_leaves_no_domain_id_behind") {
        return;
    }
    let mut sb = Sandbox::new("capacity-trace");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon(&file);
    let before = sb.status();
    assert_eq!(domain_ids(&before), 2);

    // The record is saved by renaming a new file over edges.json: a directory there makes
    // that fail, after the new domain's id was recorded.
    let record = sb.state_dir.join("edges.json");
    let _ = fs::remove_file(&record);
    fs::create_dir(&record).expect("a directory where the edge record goes");
    let more = sb.policy(
        "more.yaml",
        &format!("{POLICY}  - {{from: prod.example.org, to: dev.example.org, protocol: udp, ports: [53], owner: o, reason: r}}\n")
            .replace("domains:\n", "domains:\n  - name: dev.example.org\n"),
    );
    let apply = sb.enforcer(&["policy", "apply", more.to_str().expect("utf-8 path")]);
    assert!(
        !apply.status.success(),
        "the apply must fail: {}",
        stderr(&apply)
    );
    assert!(
        stderr(&apply).contains("the previous policy stays active"),
        "{}",
        stderr(&apply)
    );
    assert_eq!(generation(&sb.status()), generation(&before));

    fs::remove_dir(&record).expect("removing the directory");
    sb.kill_daemon();
    sb.start_daemon(&file);
    assert_eq!(
        domain_ids(&sb.status()),
        2,
        "a restarted daemon finds only the two domains' ids in ENF_DOMAINS"
    );
    // The refused change can be made once the record can be saved, and takes a new id.
    sb.apply(&more);
    assert_eq!(domain_ids(&sb.status()), 3);
}
