//! The control socket's access control, exercised by real processes running as other users:
//! the daemon decides from the kernel's account of the peer (`SO_PEERCRED`,
//! `SO_PEERGROUPS`), so a refused client gets a clear message and changes nothing.
//!
//! The clients run as uid/gid 65534 (`nobody`/`nogroup` on Debian) and 12345 (no account at
//! all); they run a copy of the CLI in the sandbox directory so that where the workspace is
//! checked out (perhaps under a private home) does not matter.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Command, Output},
};

use enforcer_tests::{Json, Sandbox, enforcer, privileged, retry_busy};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
";

/// The group both test users' runs check against.
const NOBODY: u32 = 65_534;
/// A user in no group the daemon knows.
const STRANGER: u32 = 12_345;

/// Makes the sandbox directory and the CLI usable by other users; returns the CLI's copy.
fn open_to_others(sb: &Sandbox) -> PathBuf {
    fs::set_permissions(&sb.dir, fs::Permissions::from_mode(0o755)).expect("chmod sandbox");
    let cli = sb.dir.join("enforcer-cli");
    fs::copy(enforcer(), &cli).expect("copying the CLI");
    fs::set_permissions(&cli, fs::Permissions::from_mode(0o755)).expect("chmod CLI");
    cli
}

/// Runs the CLI copy as `uid`/`gid` (and no supplementary groups) with `args`.
fn run_as(cli: &PathBuf, uid: u32, args: &[&str]) -> Output {
    retry_busy(
        Command::new(cli).args(args).uid(uid).gid(uid),
        Command::output,
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn generation(sb: &Sandbox) -> u64 {
    sb.status()
        .get("generation")
        .and_then(Json::as_u64)
        .expect("status reports the generation")
}

#[test]
fn without_groups_only_root_may_use_the_control_socket() {
    if !privileged("without_groups_only_root_may_use_the_control_socket") {
        return;
    }
    let mut sb = Sandbox::new("access-root");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon(&file);
    let cli = open_to_others(&sb);
    let socket = sb.socket.to_str().expect("utf-8 path");
    let out = run_as(&cli, NOBODY, &["status", "--socket", socket]);
    assert!(!out.status.success(), "a non-root status must fail");
    assert!(
        stderr(&out).contains("permission denied"),
        "a clear refusal: {}",
        stderr(&out)
    );
    let mode = fs::metadata(&sb.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the socket is root's alone");
}

#[test]
fn a_read_group_reads_an_admin_group_changes_and_others_are_refused() {
    if !privileged("a_read_group_reads_an_admin_group_changes_and_others_are_refused") {
        return;
    }
    let mut sb = Sandbox::new("access-groups");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    let nobody = NOBODY.to_string();
    sb.start_daemon_with(&file, &["--read-group", &nobody]);
    let cli = open_to_others(&sb);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod policy");
    let socket_path = sb.socket.clone();
    let socket = socket_path.to_str().expect("utf-8 path");
    let policy = file.to_str().expect("utf-8 path");
    let before = generation(&sb);

    let status = run_as(&cli, NOBODY, &["status", "-o", "json", "--socket", socket]);
    assert!(
        status.status.success(),
        "the read group reads: {}",
        stderr(&status)
    );
    let read = Json::parse(&String::from_utf8_lossy(&status.stdout)).expect("status JSON");
    assert_eq!(read.get("generation").and_then(Json::as_u64), Some(before));

    let apply = run_as(
        &cli,
        NOBODY,
        &["policy", "apply", policy, "--socket", socket],
    );
    assert!(!apply.status.success(), "the read group may not apply");
    assert!(
        stderr(&apply).contains(&format!("permission denied: uid {NOBODY}"))
            && stderr(&apply).contains("may only read"),
        "{}",
        stderr(&apply)
    );
    let revoke = run_as(&cli, NOBODY, &["edge", "revoke", "x", "--socket", socket]);
    assert!(
        stderr(&revoke).contains("may only read"),
        "{}",
        stderr(&revoke)
    );
    assert_eq!(generation(&sb), before, "a refused change changes nothing");

    let stranger = run_as(&cli, STRANGER, &["status", "--socket", socket]);
    assert!(!stranger.status.success(), "a user in no group is refused");
    assert!(
        stderr(&stranger).contains(&format!("permission denied: uid {STRANGER}"))
            && stderr(&stranger).contains("may not use"),
        "{}",
        stderr(&stranger)
    );

    sb.kill_daemon();
    sb.start_daemon_with(&file, &["--admin-group", &nobody]);
    let restarted = generation(&sb);
    let apply = run_as(
        &cli,
        NOBODY,
        &["policy", "apply", policy, "--socket", socket],
    );
    assert!(
        apply.status.success(),
        "the admin group applies: {}",
        stderr(&apply)
    );
    assert_eq!(
        generation(&sb),
        restarted + 1,
        "the admin's apply took effect"
    );
}

#[test]
fn an_unknown_group_stops_the_daemon_before_it_changes_anything() {
    if !privileged("an_unknown_group_stops_the_daemon_before_it_changes_anything") {
        return;
    }
    let sb = Sandbox::new("access-unknown");
    let file = sb.policy("policy.yaml", POLICY);
    let err = sb.daemon_must_fail(&file, &["--admin-group", "no-such-group-enforcer"]);
    assert!(
        err.contains("--admin-group no-such-group-enforcer: no such group"),
        "{err}"
    );
    assert!(!sb.pin_dir.exists(), "nothing was pinned");
    assert!(!sb.socket.exists(), "no socket was created");
}
