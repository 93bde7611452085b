//! Hostile and mistaken input to the CLI and the daemon: policy files that are not regular
//! files, too large, not UTF-8 or cut short by a NUL; a `--socket` path that is taken; a
//! `--cgroup-root` with `..` in it; user text with line breaks that would forge log lines.
//! Whatever is refused is refused before anything on the host changes.
//! Ports 36000-36099 belong to this file.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Outcome, Sandbox, cgroup_mount, enforcer, privileged};

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

/// A scratch directory for the tests that need no daemon (and no root).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("enforcer-inputs-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a scratch dir");
        Self(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).expect("writing a file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Runs `enforcer ARGS`, which must finish within 20 s (it is killed and the test fails
/// otherwise: a reader that blocks on a FIFO never would).
fn enforcer_within(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(enforcer())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running enforcer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("polling enforcer").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`enforcer {args:?}` did not finish within 20 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("reading enforcer's output")
}

/// `enforcer policy check FILE`: must fail, and returns what it printed on stderr.
fn check_fails(file: &Path) -> String {
    let out = enforcer_within(&["policy".as_ref(), "check".as_ref(), file.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "check of {} must fail: {stderr}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn check_refuses_what_is_not_a_regular_file_without_blocking() {
    let dir = Scratch::new("special");
    let fifo = dir.0.join("fifo.yaml");
    mkfifo(&fifo);
    // The FIFO comes first: before the fix, /dev/zero filled memory.
    for (path, kind) in [
        (fifo.as_path(), "a FIFO"),
        (dir.0.as_path(), "a directory"),
        (Path::new("/dev/zero"), "a character device"),
    ] {
        let stderr = check_fails(path);
        assert_eq!(
            stderr.trim_end(),
            format!(
                "{}: cannot read: it is {kind}; a policy must be a regular file",
                path.display()
            )
        );
    }
}

#[test]
fn a_nul_byte_does_not_end_a_policy() {
    let dir = Scratch::new("nul");
    let file = dir.file(
        "p.yaml",
        b"version: 1\ndomains: []\n\0federation: [not, even, yaml\n",
    );
    let stderr = check_fails(&file);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:3:1: policy contains a NUL byte; YAML allows no control characters other than tab and line breaks",
            file.display()
        )
    );
}

#[test]
fn a_file_that_is_not_utf8_is_placed_at_its_line_and_column() {
    let dir = Scratch::new("utf8");
    let file = dir.file(
        "p.yaml",
        b"version: 1\ndomains:\n  - name: caf\xe9.example.org\n",
    );
    let stderr = check_fails(&file);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:3:14: policy is not valid UTF-8 (byte 0xe9)",
            file.display()
        )
    );
}

#[test]
fn an_oversized_file_is_refused_with_its_reason_by_check_and_apply() {
    let dir = Scratch::new("big");
    let file = dir.0.join("big.yaml");
    // Sparse: the size is what counts, the reader must not read it.
    fs::File::create(&file)
        .and_then(|f| f.set_len(64 << 20 | 1))
        .expect("a sparse file");
    let reason = format!(
        "{}:1:1: policy is larger than 32 MiB (33554432 bytes), the most a policy may hold",
        file.display()
    );
    assert_eq!(check_fails(&file).trim_end(), reason);
    let socket = dir.0.join("no-daemon.sock");
    let out = enforcer_within(&[
        "policy".as_ref(),
        "apply".as_ref(),
        file.as_os_str(),
        "--socket".as_ref(),
        socket.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{reason}\nenforcer: {} was not applied; nothing changed",
            file.display()
        )
    );
}

#[test]
fn only_the_first_hundred_mistakes_are_listed() {
    let dir = Scratch::new("many");
    let mut text = "version: 1\n".to_owned();
    for i in 0..1000 {
        text.push_str(&format!("unknown{i}: x\n"));
    }
    let file = dir.file("p.yaml", text.as_bytes());
    let stderr = check_fails(&file);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 101, "{stderr}");
    assert_eq!(
        lines[100],
        format!(
            "{}:102:1: ... and 900 more error(s), the first of them here (only the first 100 are listed)",
            file.display()
        )
    );
}

#[test]
fn a_daemon_refuses_a_fifo_policy_changing_nothing() {
    if !privileged("a_daemon_refuses_a_fifo_policy_changing_nothing") {
        return;
    }
    let sb = Sandbox::new("inputs-fifo");
    let fifo = sb.dir().join("fifo.yaml");
    mkfifo(&fifo);
    let stderr = sb.daemon_must_fail(&fifo, &[] as &[&str]);
    assert!(
        stderr.contains(&format!(
            "{}: cannot read: it is a FIFO; a policy must be a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
    assert!(!sb.pin_dir.exists(), "nothing was pinned");
}

#[test]
fn a_socket_path_taken_by_a_regular_file_is_left_alone() {
    if !privileged("a_socket_path_taken_by_a_regular_file_is_left_alone") {
        return;
    }
    let sb = Sandbox::new("inputs-taken");
    fs::write(&sb.socket, "precious\n").expect("writing a regular file");
    let policy = sb.policy("p.yaml", DOMAINS);
    let stderr = sb.daemon_must_fail(&policy, &[] as &[&str]);
    assert!(
        stderr.contains(&format!(
            "{} exists and is not a socket; refusing to replace it",
            sb.socket.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&sb.socket).expect("the file is still there"),
        "precious\n"
    );
    assert!(!sb.pin_dir.exists(), "nothing was pinned");
    assert!(!sb.state_dir.exists(), "no state dir was made");
}

#[test]
fn a_cgroup_root_outside_the_cgroup2_mount_is_refused_before_anything_is_pinned() {
    if !privileged("a_cgroup_root_outside_the_cgroup2_mount_is_refused_before_anything_is_pinned") {
        return;
    }
    let sb = Sandbox::new("inputs-root-outside");
    let policy = sb.policy("p.yaml", DOMAINS);
    let mount = cgroup_mount();
    // `../memory` is a cgroup v1 hierarchy on hybrid hosts; `..` is never cgroup2.
    let mut roots = vec![PathBuf::from("..")];
    if mount.join("../memory/cgroup.procs").exists() {
        roots.push(PathBuf::from("../memory"));
    }
    for root in roots {
        let out = sb
            .daemon_command_at(&policy, &root, &[] as &[&str])
            .output()
            .expect("running the daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--cgroup-root {}: {stderr}",
            root.display()
        );
        assert!(
            stderr.contains("outside the mount"),
            "--cgroup-root {}: {stderr}",
            root.display()
        );
        assert!(!sb.pin_dir.exists(), "nothing was pinned: {stderr}");
    }
}

/// A daemon started by a test itself; killed when dropped (before the sandbox tears down).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_cgroup_root_with_dotdot_is_the_directory_it_names() {
    if !privileged("a_cgroup_root_with_dotdot_is_the_directory_it_names") {
        return;
    }
    let sb = Sandbox::new("inputs-root-dotdot");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    sb.cgroup("a");
    let policy = sb.policy("p.yaml", DOMAINS);
    let root = cgroup_mount().join(&sb.root[1..]).join("a/..");
    let mut child = sb
        .daemon_command_at(&policy, &root, &[] as &[&str])
        .spawn()
        .expect("starting the daemon");
    let stderr = child.stderr.take().expect("piped stderr");
    let daemon = Running(child);
    // Read to the end on a thread of its own: a daemon whose stderr is closed dies when it
    // next logs.
    let (lines, logged) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[daemon] {line}");
            let _ = lines.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = logged.recv_timeout(Duration::from_secs(60)) {
        if line.contains("control socket") {
            break;
        }
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("policy generation")),
        "the daemon started: {seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("outside --cgroup-root")),
        "the bindings under the root are inside it: {seen:?}"
    );
    let _server = sb.listen(&prod, "127.0.0.1", 36000);
    assert_eq!(sb.connect(&prod, "127.0.0.1", 36000), Outcome::greeted());
    assert_eq!(
        sb.connect(&staging, "127.0.0.1", 36000),
        Outcome::EPERM,
        "{STAGING} -> {PROD} is enforced"
    );
    drop(daemon);
}

#[test]
fn user_text_never_forges_a_daemon_log_line() {
    if !privileged("user_text_never_forges_a_daemon_log_line") {
        return;
    }
    let mut sb = Sandbox::new("inputs-log");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let policy = sb.policy("p.yaml", DOMAINS);
    sb.start_daemon(&policy);

    let out = sb.enforcer(&[
        "edge",
        "grant",
        "--from",
        STAGING,
        "--to",
        PROD,
        "--protocol",
        "tcp",
        "--ports",
        "36001",
        "--ttl",
        "5m",
        "--owner",
        "dba",
        "--reason",
        "migration\nenforcer: revoked grant-forged; ended 0 connection(s)",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a reason with a line break is refused"
    );
    assert!(
        stderr.contains(
            "--reason contains the control character U+000A; write it as one line without control characters"
        ),
        "{stderr}"
    );

    // A file name is user text too; the daemon logs it with the new generation.
    let forged = sb.policy("p\nenforcer: revoked grant-forged.yaml", DOMAINS);
    assert_eq!(sb.apply(&forged), 2);
    let line = sb.wait_daemon_log("policy generation 2 active", Duration::from_secs(10));
    assert!(
        line.contains("p\\nenforcer: revoked grant-forged.yaml"),
        "the file name is logged on the same line, escaped: {line:?}"
    );
}

#[test]
fn under_systemd_every_daemon_log_line_starts_with_its_journal_priority() {
    if !privileged("under_systemd_every_daemon_log_line_starts_with_its_journal_priority") {
        return;
    }
    let sb = Sandbox::new("inputs-journal");
    // Refused: one error line per diagnostic, then the daemon's last word, an error too.
    let bad = sb.policy("bad.yaml", &format!("{DOMAINS}colour: blue\n"));
    let run = |stream: &str, journal_stream: Option<&str>| {
        let path = sb.dir().join(stream);
        let file = fs::File::create(&path).expect("creating the stream");
        let meta = file.metadata().expect("the stream's metadata");
        let mut daemon = sb.daemon_command_at(&bad, Path::new(&sb.root), &[] as &[&str]);
        daemon.env(
            "JOURNAL_STREAM",
            journal_stream.map_or_else(|| format!("{}:{}", meta.dev(), meta.ino()), str::to_owned),
        );
        let status = daemon.stderr(file).status().expect("running the daemon");
        assert!(!status.success(), "the policy is refused");
        fs::read_to_string(&path).expect("reading the stream")
    };
    let refused = format!("policy {} was refused; nothing was changed", bad.display());

    let journal = run("journal", None);
    assert!(journal.lines().count() >= 2, "{journal}");
    assert!(
        journal.lines().all(|line| line.starts_with("<3>error: ")),
        "{journal}"
    );
    assert!(journal.contains(&refused), "{journal}");

    // A JOURNAL_STREAM inherited from elsewhere names another stream: plain lines.
    let terminal = run("terminal", Some("1:1"));
    assert!(
        terminal
            .lines()
            .all(|line| line.starts_with("enforcer: error: ")),
        "{terminal}"
    );
    assert!(terminal.contains(&refused), "{terminal}");
}

#[test]
fn revoking_a_file_edge_says_where_it_comes_from_in_one_sentence() {
    if !privileged("revoking_a_file_edge_says_where_it_comes_from_in_one_sentence") {
        return;
    }
    let mut sb = Sandbox::new("inputs-revoke-file");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let policy = sb.policy(
        "p.yaml",
        &format!(
            "{DOMAINS}federation:
  - id: db
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [36002]
    owner: dba
    reason: migrations
"
        ),
    );
    sb.start_daemon(&policy);
    let out = sb.enforcer(&["edge", "revoke", "db"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "enforcer: error: edge db comes from the policy file {}; remove it there and run `enforcer policy apply`",
            policy.display()
        )
    );
}
