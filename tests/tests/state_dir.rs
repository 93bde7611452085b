//! The state dir holds what the daemon trusts at a restart and serves to readers, and the
//! daemon writes there as root: a state dir another user could write into is refused before
//! anything on the host changes, and a link planted in one is never followed.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
};

use enforcer_tests::{Sandbox, privileged};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
";

const NOBODY: u32 = 65_534;

#[test]
fn a_state_dir_others_can_write_is_refused_before_anything_changes() {
    if !privileged("a_state_dir_others_can_write_is_refused_before_anything_changes") {
        return;
    }
    let sb = Sandbox::new("state-dir-writable");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    fs::create_dir(&sb.state_dir).expect("creating the state dir");
    for (owner, mode, says) in [
        (0, 0o1777, "owned by uid 0 with mode 1777"),
        (0, 0o770, "owned by uid 0 with mode 0770"),
        (
            NOBODY,
            0o700,
            &*format!("owned by uid {NOBODY} with mode 0700"),
        ),
    ] {
        std::os::unix::fs::chown(&sb.state_dir, Some(owner), Some(owner)).expect("chown");
        fs::set_permissions(&sb.state_dir, fs::Permissions::from_mode(mode)).expect("chmod");
        let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
        assert!(
            stderr.contains(&format!("refusing state dir {}", sb.state_dir.display()))
                && stderr.contains(says),
            "{stderr}"
        );
        assert!(!sb.pin_dir.exists(), "nothing was pinned");
        assert!(!sb.socket.exists(), "no socket was bound");
        assert_eq!(
            fs::read_dir(&sb.state_dir).expect("listing").count(),
            0,
            "nothing was written in the state dir"
        );
    }
}

#[test]
fn links_planted_in_the_state_dir_are_not_followed() {
    if !privileged("links_planted_in_the_state_dir_are_not_followed") {
        return;
    }
    let mut sb = Sandbox::new("state-dir-links");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let file = sb.policy("policy.yaml", POLICY);
    fs::create_dir(&sb.state_dir).expect("creating the state dir");
    let victim = sb.dir().join("victim");
    fs::write(&victim, "precious\n").expect("writing the victim");
    let secret = sb.dir().join("secret");
    fs::write(&secret, "root:secret\n").expect("writing the secret");
    let state = sb.state_dir.clone();
    let link = |name: &str, to: &std::path::Path| {
        std::os::unix::fs::symlink(to, state.join(name)).expect("planting a link");
    };
    link("edges.json.new", &victim);
    link("events.jsonl.4", &secret);
    sb.start_daemon(&file);
    sb.grant(&[
        "--from",
        "staging.example.org",
        "--to",
        "prod.example.org",
        "--protocol",
        "tcp",
        "--ports",
        "39900",
        "--ttl",
        "10m",
        "--owner",
        "state-test",
        "--reason",
        "links",
    ]);
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious\n");
    let record = fs::symlink_metadata(sb.state_dir.join("edges.json")).expect("the record");
    assert!(record.is_file(), "the record is a file of its own");
    assert_eq!(record.mode() & 0o777, 0o600, "only root reads the record");
    let events = sb.enforcer(&["events"]);
    assert!(
        !String::from_utf8_lossy(&events.stdout).contains("root:secret"),
        "a reader never gets the linked file"
    );

    sb.kill_daemon();
    fs::remove_file(sb.state_dir.join("daemon.lock")).expect("removing the lock");
    let created = sb.dir().join("created-by-root");
    link("daemon.lock", &created);
    let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
    assert!(stderr.contains("daemon.lock"), "{stderr}");
    assert!(!created.exists(), "the link's target was not created");
}

/// A link on the way to the state dir, in a directory another user owns, would let that
/// user point the next start at another directory (one with no saved policy, say): such a
/// path is refused, whichever hop the link is.
#[test]
fn a_state_dir_reached_through_a_link_another_user_controls_is_refused() {
    if !privileged("a_state_dir_reached_through_a_link_another_user_controls_is_refused") {
        return;
    }
    let sb = Sandbox::new("state-dir-link-hop");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    let real = sb.dir().join("real-state");
    fs::create_dir(&real).expect("creating the real state dir");
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).expect("chmod");
    let theirs = sb.dir().join("theirs");
    fs::create_dir(&theirs).expect("creating another user's dir");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::os::unix::fs::symlink(&real, theirs.join("link")).expect("linking");
    std::os::unix::fs::symlink(theirs.join("link"), &sb.state_dir).expect("linking");
    let stderr = sb.daemon_must_fail(&file, &[] as &[&str]);
    assert!(
        stderr.contains(&format!(
            "refusing state dir {}: {} above it is owned by uid {NOBODY}",
            real.display(),
            theirs.display()
        )),
        "{stderr}"
    );
    assert!(!sb.pin_dir.exists(), "nothing was pinned");
    assert_eq!(
        fs::read_dir(&real).expect("listing").count(),
        0,
        "nothing was written in the state dir"
    );
}
