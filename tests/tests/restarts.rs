//! Restarts change nothing: a daemon killed with SIGKILL and started again with the same
//! `--policy FILE` keeps the policy last applied (even one applied from another file) unless
//! the file changed since the daemon last read it; the file is reloaded when it changes on
//! disk (written in place, or swapped in through a symlink as Kubernetes ConfigMaps do) and on
//! SIGHUP; a bad file is refused whole and the running policy stays; a saved policy that
//! cannot be read refuses the start instead of reverting, and enforcement stays meanwhile.
//!
//! Every check is what an application sees: a staging workload connecting to a prod listener
//! is greeted or gets EPERM. Tests wait on the daemon's log lines, never on sleeps.
//! Ports 37000-37099 belong to this file.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer_tests::{Exposition, Json, Outcome, Sandbox, http_get, patient, privileged};

const LOCALHOST: &str = "127.0.0.1";
/// How long a reload gets to be logged: generous, no timing assertion.
const RELOAD: Duration = Duration::from_secs(20);
const RELOADED: &str = "reloaded --policy";
const REFUSED: &str = "refused; the running policy stays";

/// A policy with one staging -> prod TCP edge on each of `ports` (none: every crossing is
/// refused).
fn policy(ports: &[u16]) -> String {
    enforcer_tests::policies::staging_to_prod(ports, "restart test")
}

/// What a staging workload sees connecting to each prod port: `open` ones greet, `closed`
/// ones refuse with EPERM.
fn expect(sb: &Sandbox, staging: &str, open: &[u16], closed: &[u16], when: &str) {
    for &port in open {
        let outcome = sb.connect(staging, LOCALHOST, port);
        assert_eq!(
            outcome,
            Outcome::greeted(),
            "{when}: staging -> prod:{port} is allowed; the application saw {outcome}"
        );
    }
    for &port in closed {
        let outcome = sb.connect(staging, LOCALHOST, port);
        assert_eq!(
            outcome,
            Outcome::EPERM,
            "{when}: staging -> prod:{port} is refused; the application saw {outcome}"
        );
    }
}

fn generation(sb: &Sandbox) -> u64 {
    sb.status()
        .get("generation")
        .and_then(Json::as_u64)
        .expect("status -o json has a generation")
}

/// `status -o json`'s `policy_source`, and its `policy_file`.
fn source(sb: &Sandbox) -> (Json, String) {
    let status = sb.status();
    let source = status
        .get("policy_source")
        .cloned()
        .unwrap_or_else(|| panic!("status -o json has a policy_source: {status}"));
    let file = status
        .get("policy_file")
        .and_then(Json::as_str)
        .expect("status -o json has a policy_file")
        .to_owned();
    (source, file)
}

fn text<'a>(json: &'a Json, key: &str) -> &'a str {
    json.get(key)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("{key} is a string in {json}"))
}

fn sighup(sb: &Sandbox) {
    let pid = libc::pid_t::try_from(sb.daemon_pid()).expect("a pid");
    // SAFETY: kill(2) with a pid this sandbox started and still owns.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGHUP) },
        0,
        "sending SIGHUP"
    );
}

#[test]
fn a_restart_keeps_the_policy_last_applied_until_the_file_changes() {
    if !privileged("a_restart_keeps_the_policy_last_applied_until_the_file_changes") {
        return;
    }
    let mut sb = Sandbox::new("restart-keeps");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[37001, 37002]));
    let other = sb.policy("other.yaml", &policy(&[37001]));
    sb.start_daemon(&file);
    let _a = sb.listen(&prod, LOCALHOST, 37001);
    let _b = sb.listen(&prod, LOCALHOST, 37002);
    expect(&sb, &staging, &[37001, 37002], &[], "started with p.yaml");

    let applied = sb.apply(&other);
    expect(&sb, &staging, &[37001], &[37002], "other.yaml applied");

    sb.kill_daemon();
    sb.start_daemon(&file);
    expect(
        &sb,
        &staging,
        &[37001],
        &[37002],
        "restarted with the unchanged p.yaml: the edge other.yaml removed stays removed",
    );
    let (kept, origin) = source(&sb);
    assert_eq!(text(&kept, "at_start"), "kept", "{kept}");
    assert!(
        text(&kept, "reason").contains("has not changed"),
        "the reason says the file did not change: {kept}"
    );
    assert!(
        origin.ends_with("other.yaml"),
        "the policy in force came from other.yaml: {origin}"
    );
    assert!(
        generation(&sb) > applied,
        "the generation never goes back ({applied} before the restart)"
    );

    // The file changed while the daemon was down: it takes over at start.
    fs::write(&file, policy(&[37002]).replace("{root}", &sb.root)).expect("writing p.yaml");
    sb.kill_daemon();
    sb.start_daemon(&file);
    expect(
        &sb,
        &staging,
        &[37002],
        &[37001],
        "restarted with a changed p.yaml",
    );
    let (taken, origin) = source(&sb);
    assert_eq!(text(&taken, "at_start"), "taken", "{taken}");
    assert!(
        text(&taken, "reason").contains("changed"),
        "the reason says the file changed: {taken}"
    );
    assert!(origin.ends_with("p.yaml"), "{origin}");

    // And, unchanged again, it is kept again, with nothing reverted.
    sb.kill_daemon();
    sb.start_daemon(&file);
    expect(&sb, &staging, &[37002], &[37001], "restarted again");
    assert_eq!(text(&source(&sb).0, "at_start"), "kept");
}

#[test]
fn sighup_and_a_change_on_disk_reload_the_file() {
    if !privileged("sighup_and_a_change_on_disk_reload_the_file") {
        return;
    }
    let mut sb = Sandbox::new("restart-reload");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[37011]));
    let other = sb.policy("other.yaml", &policy(&[]));
    sb.start_daemon(&file);
    let _a = sb.listen(&prod, LOCALHOST, 37011);
    let _b = sb.listen(&prod, LOCALHOST, 37012);
    expect(&sb, &staging, &[37011], &[37012], "started");

    let applied = sb.apply(&other);
    expect(&sb, &staging, &[], &[37011, 37012], "other.yaml applied");
    // SIGHUP takes the file back even though it did not change.
    sighup(&sb);
    let line = sb.wait_daemon_log(RELOADED, patient(RELOAD));
    assert!(line.contains("SIGHUP"), "{line}");
    expect(&sb, &staging, &[37011], &[37012], "after SIGHUP");
    assert_eq!(generation(&sb), applied + 1, "the reload is one apply");
    assert!(source(&sb).1.ends_with("p.yaml"));

    // Written in place: reloaded without a signal.
    fs::write(&file, policy(&[37012]).replace("{root}", &sb.root)).expect("writing p.yaml");
    let line = sb.wait_daemon_log(RELOADED, patient(RELOAD));
    assert!(line.contains("changed on disk"), "{line}");
    expect(&sb, &staging, &[37012], &[37011], "after the file changed");
    assert_eq!(generation(&sb), applied + 2);

    // The daemon read it: a restart keeps it.
    sb.kill_daemon();
    sb.start_daemon(&file);
    expect(&sb, &staging, &[37012], &[37011], "restarted");
    assert_eq!(text(&source(&sb).0, "at_start"), "kept");
}

/// A ConfigMap volume: `policy.yaml -> ..data/policy.yaml`, `..data -> ..v1`; an update
/// writes `..v2`, points `..data_tmp` at it and renames `..data_tmp` over `..data`.
#[test]
fn an_atomic_symlink_swap_is_picked_up_without_a_signal() {
    if !privileged("an_atomic_symlink_swap_is_picked_up_without_a_signal") {
        return;
    }
    let mut sb = Sandbox::new("restart-swap");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let volume = sb.dir().join("config");
    let root = sb.root.clone();
    let version = |name: &str, ports: &[u16]| -> PathBuf {
        let dir = volume.join(name);
        fs::create_dir_all(&dir).expect("creating a version dir");
        fs::write(
            dir.join("policy.yaml"),
            policy(ports).replace("{root}", &root),
        )
        .expect("writing a version");
        dir
    };
    version("..v1", &[37021]);
    symlink("..v1", volume.join("..data")).expect("linking ..data");
    symlink("..data/policy.yaml", volume.join("policy.yaml")).expect("linking policy.yaml");
    let file = volume.join("policy.yaml");
    sb.start_daemon(&file);
    let _a = sb.listen(&prod, LOCALHOST, 37021);
    let _b = sb.listen(&prod, LOCALHOST, 37022);
    expect(&sb, &staging, &[37021], &[37022], "started from ..v1");

    version("..v2", &[37022]);
    symlink("..v2", volume.join("..data_tmp")).expect("linking ..data_tmp");
    fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swapping ..data");
    let line = sb.wait_daemon_log(RELOADED, patient(RELOAD));
    assert!(line.contains("changed on disk"), "{line}");
    expect(&sb, &staging, &[37022], &[37021], "after the swap to ..v2");
    assert_eq!(
        Path::new(&source(&sb).1),
        file.as_path(),
        "the policy in force is named by the watched path"
    );
}

#[test]
fn a_bad_file_is_refused_whole_and_the_running_policy_stays() {
    if !privileged("a_bad_file_is_refused_whole_and_the_running_policy_stays") {
        return;
    }
    let mut sb = Sandbox::new("restart-bad");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[37031]));
    let metrics = "127.0.0.1:37090";
    sb.start_daemon_with(&file, &["--metrics-addr", metrics]);
    let _a = sb.listen(&prod, LOCALHOST, 37031);
    let _b = sb.listen(&prod, LOCALHOST, 37032);
    expect(&sb, &staging, &[37031], &[37032], "started");
    let before = generation(&sb);

    // Opens the other port and carries an unknown key: refused whole, nothing of it applies.
    let bad = policy(&[37031, 37032]).replace("defaults:", "surprise: 1\ndefaults:");
    fs::write(&file, bad.replace("{root}", &sb.root)).expect("writing p.yaml");
    sb.wait_daemon_log(REFUSED, patient(RELOAD));
    expect(&sb, &staging, &[37031], &[37032], "after a bad file");
    assert_eq!(generation(&sb), before, "nothing was applied");
    let (status, _) = source(&sb);
    let error = text(&status, "last_reload_error");
    assert!(
        error.contains("surprise"),
        "the reason names the key: {status}"
    );
    let scrape = http_get(metrics.parse().expect("an address"), "/metrics");
    let exposition = Exposition::parse(&scrape.body).expect("the text format");
    assert_eq!(
        exposition.value("enforcer_policy_reloads_total", &[("outcome", "refused")]),
        Some(1.0),
        "{}",
        scrape.body
    );
    assert_eq!(
        exposition.value("enforcer_policy_reload_refused", &[]),
        Some(1.0)
    );
    let out = sb.enforcer(&["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("last reload refused") && shown.contains("surprise"),
        "status shows the refused reload:\n{shown}"
    );

    // A restart over the same bad file keeps the running policy: the daemon read it already.
    sb.kill_daemon();
    sb.start_daemon_with(&file, &["--metrics-addr", metrics]);
    expect(
        &sb,
        &staging,
        &[37031],
        &[37032],
        "restarted over the bad file",
    );
    let (status, _) = source(&sb);
    assert_eq!(text(&status, "at_start"), "kept", "{status}");
    assert!(
        text(&status, "last_reload_error").contains("surprise"),
        "the refusal is still reported: {status}"
    );

    // Fixed: applied, and the error is gone.
    fs::write(&file, policy(&[37032]).replace("{root}", &sb.root)).expect("writing p.yaml");
    sb.wait_daemon_log(RELOADED, patient(RELOAD));
    expect(&sb, &staging, &[37032], &[37031], "after the fix");
    let (status, _) = source(&sb);
    assert!(
        status.get("last_reload_error").is_none_or(Json::is_null),
        "{status}"
    );
}

#[test]
fn a_damaged_saved_policy_refuses_the_start_and_enforcement_stays() {
    if !privileged("a_damaged_saved_policy_refuses_the_start_and_enforcement_stays") {
        return;
    }
    let mut sb = Sandbox::new("restart-damaged");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let file = sb.policy("p.yaml", &policy(&[37041, 37042]));
    let other = sb.policy("other.yaml", &policy(&[37041]));
    sb.start_daemon(&file);
    let _a = sb.listen(&prod, LOCALHOST, 37041);
    let _b = sb.listen(&prod, LOCALHOST, 37042);
    sb.apply(&other);
    sb.kill_daemon();

    let saved = sb.state_dir.join("active-policy.json");
    assert!(
        saved.exists(),
        "every apply saves its policy in the state dir"
    );
    fs::write(&saved, "{\"origin\":").expect("damaging the saved policy");
    let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
    assert!(
        stderr.contains("refuses to start") && stderr.contains("active-policy.json"),
        "the daemon says why and what to do: {stderr}"
    );
    expect(
        &sb,
        &staging,
        &[37041],
        &[37042],
        "after the refused start: the pinned enforcement of other.yaml stays",
    );

    // A changed file takes over; the damaged record is not needed then.
    fs::write(&file, policy(&[37042]).replace("{root}", &sb.root)).expect("writing p.yaml");
    sb.start_daemon(&file);
    expect(
        &sb,
        &staging,
        &[37042],
        &[37041],
        "started from the changed file",
    );
    assert_eq!(text(&source(&sb).0, "at_start"), "taken");
}
