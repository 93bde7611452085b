//! What the CLI prints for people carries names from outside: process names, cgroup
//! directories, the daemon's messages. A terminal escape or a carriage return among them is
//! printed escaped, never raw, while `-o json` keeps the exact text; a reader that stops
//! reading ends the command quietly.
//! Ports 39800-39899 belong to this file.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Json, Outcome, Sandbox, enforcer,
    pki::{Issued, Spec},
    privileged, retry_busy,
};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
";

const LOCALHOST: &str = "127.0.0.1";
/// Events arrive within milliseconds; generous for a loaded machine, never a timing claim.
const ARRIVAL: Duration = Duration::from_secs(10);

#[test]
fn events_print_a_process_and_cgroup_name_escaped_and_json_exact() {
    if !privileged("events_print_a_process_and_cgroup_name_escaped_and_json_exact") {
        return;
    }
    let mut sb = Sandbox::new("terminal-events");
    let prod = sb.cgroup("prod");
    let cgroup = sb.cgroup("staging/job\u{1b}]0;PWN\u{7}\rFAKE");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon(&file);
    let comm = "p\u{1b}[2J\u{202e}x";
    let program = sb.dir().join(comm);
    std::os::unix::fs::symlink(enforcer_tests::probe(), &program).expect("linking the probe");
    let _server = sb.listen(&prod, LOCALHOST, 39800);
    let events = sb.follow_events();

    assert_eq!(
        sb.workload(&cgroup).connect_as(&program, LOCALHOST, 39800),
        Outcome::EPERM
    );
    let refused = events.until(
        |e| e.get("dst").and_then(Json::as_str) == Some("127.0.0.1:39800"),
        ARRIVAL,
    );
    let refused = refused.last().expect("the refusal");
    assert_eq!(
        refused.get("comm").and_then(Json::as_str),
        Some(comm),
        "JSON holds the exact name: {refused}"
    );
    assert_eq!(
        refused.get("cgroup").and_then(Json::as_str),
        Some(cgroup.as_str()),
        "JSON holds the exact path: {refused}"
    );

    let out = sb.enforcer(&["events"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let line = text
        .lines()
        .find(|l| l.contains("127.0.0.1:39800"))
        .unwrap_or_else(|| panic!("no refusal in {text:?}"));
    assert!(
        line.contains("(p\\u{1b}[2J\\u{202e}x)")
            && line.contains("job\\u{1b}]0;PWN\\u{7}\\u{d}FAKE generation"),
        "{line:?}"
    );
    assert!(
        !text.contains(['\u{1b}', '\r', '\u{7}', '\u{202e}']),
        "nothing raw: {text:?}"
    );
}

/// `enforcer status | head -1`: the reader is gone after one line.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    if !privileged("a_closed_stdout_ends_the_command_quietly") {
        return;
    }
    let mut sb = Sandbox::new("terminal-pipe");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon(&file);
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(enforcer())
        .args(["status", "--socket"])
        .arg(&sb.socket)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    assert!(out.status.success(), "{:?}", out.status);
}

/// A user in no group the daemon knows reads the daemon's own refusal, not its wire form.
#[test]
fn a_refused_reader_sees_the_daemons_message() {
    if !privileged("a_refused_reader_sees_the_daemons_message") {
        return;
    }
    const STRANGER: u32 = 12_345;
    let mut sb = Sandbox::new("terminal-refused");
    sb.cgroup("prod");
    let file = sb.policy("policy.yaml", POLICY);
    sb.start_daemon_with(&file, &["--read-group", "65534"]);
    fs::set_permissions(sb.dir(), fs::Permissions::from_mode(0o755)).expect("chmod sandbox");
    let cli = sb.dir().join("enforcer-cli");
    fs::copy(enforcer(), &cli).expect("copying the CLI");
    fs::set_permissions(&cli, fs::Permissions::from_mode(0o755)).expect("chmod CLI");
    let socket = sb.socket.to_str().expect("UTF-8 path");
    for args in [&["status"][..], &["edge", "list"], &["edge", "show", "x"]] {
        let out = retry_busy(
            Command::new(&cli)
                .args(args)
                .args(["--socket", socket])
                .uid(STRANGER)
                .gid(STRANGER),
            Command::output,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(
            stderr.starts_with(&format!(
                "enforcer: error: permission denied: uid {STRANGER}"
            )) && !stderr.contains("unexpected reply")
                && !stderr.contains("Error {"),
            "{args:?}: {stderr}"
        );
    }
}

/// Whoever writes a trust bundle chooses its CAs' subjects, which `status` shows: a newline
/// in one must not start a line of its own (the audit forged `enforcer: all good` that way).
#[test]
fn status_prints_a_bundle_subject_with_a_newline_on_its_own_line() {
    if !privileged("status_prints_a_bundle_subject_with_a_newline_on_its_own_line") {
        return;
    }
    let mut sb = Sandbox::new("terminal-subject");
    sb.cgroup("prod");
    let mut spec = Spec::ca("prod.example.org");
    spec.common_name = Some("evil\nenforcer: all good\u{1b}[2J".to_owned());
    let bundle = sb.dir().join("prod.pem");
    fs::write(&bundle, Issued::self_signed(&spec).pem).expect("writing the bundle");
    let file = sb.policy(
        "policy.yaml",
        &format!(
            "
version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: prod.example.org
    cgroups: ['{{root}}/prod']
    bundle: {}
",
            bundle.display()
        ),
    );
    sb.start_daemon(&file);
    let out = sb.enforcer(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status: {out:?}");
    assert!(
        stdout.contains("CN=evil\\u{a}enforcer: all good\\u{1b}[2J"),
        "the subject is shown escaped: {stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("enforcer:")),
        "no line of the subject's making: {stdout}"
    );
}

/// A file name is outside text too: the CLI's own messages on stderr carry it escaped.
#[test]
fn file_names_in_the_clis_messages_are_escaped() {
    let name = "/nonexistent/enforcer-terminal\u{1b}]0;PWN\u{7}.yaml";
    let out = Command::new(enforcer())
        .args(["policy", "check", name])
        .output()
        .expect("running the CLI");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing file is refused");
    assert!(
        stderr.contains("enforcer-terminal\\u{1b}]0;PWN\\u{7}.yaml") && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
}
