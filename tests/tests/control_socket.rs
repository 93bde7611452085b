//! The control socket against hostile local users: with `--read-group` it is mode 0666, so
//! anyone may connect. Each client is served on its own, within a bound per user, refused
//! before anything is read when it has no rights, and given a deadline for its whole request
//! and a size limit by its rights; meanwhile root is answered at once.
//!
//! The clients run as uid/gid 65534 (`nobody`, here the read group) and 12345 (no account at
//! all): the CLI, or `enforcer-client`, which sends exactly what the test tells it to, when.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Sandbox, client, enforcer, patient, privileged, retry_busy};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
";

/// The read group, and a user in it.
const NOBODY: u32 = 65_534;
/// A user in no group the daemon knows.
const STRANGER: u32 = 12_345;
/// The daemon's whole-request deadline (`control::REQUEST_DEADLINE`).
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a test waits for a reply the daemon owes at once; the daemon before these fixes
/// answered such clients only after its 60 s read timeout, or never.
const PROMPT: Duration = Duration::from_secs(30);

/// A daemon whose socket the read group may use, and copies of the CLI and the raw client
/// that other users may run.
struct Setup {
    sb: Sandbox,
    file: PathBuf,
    cli: PathBuf,
    client: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Self {
        let mut sb = Sandbox::new(test);
        sb.cgroup("prod");
        let file = sb.policy("policy.yaml", POLICY);
        sb.start_daemon_with(&file, &["--read-group", &NOBODY.to_string()]);
        fs::set_permissions(&sb.dir, fs::Permissions::from_mode(0o755)).expect("chmod sandbox");
        let copy = |from: PathBuf, name: &str| {
            let to = sb.dir.join(name);
            fs::copy(from, &to).expect("copying a binary for other users");
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
            to
        };
        let cli = copy(enforcer(), "enforcer-cli");
        let client = copy(client(), "enforcer-client");
        Self {
            sb,
            file,
            cli,
            client,
        }
    }

    fn socket(&self) -> &str {
        self.sb.socket.to_str().expect("utf-8 path")
    }

    /// Runs the CLI as `uid` with `args` and `--socket`.
    fn cli_as(&self, uid: u32, args: &[&str]) -> Output {
        let mut command = Command::new(&self.cli);
        command
            .args(args)
            .args(["--socket", self.socket()])
            .uid(uid)
            .gid(uid);
        retry_busy(&mut command, Command::output)
    }

    /// A raw client connected as `uid`.
    fn connect_as(&self, uid: u32) -> RawClient {
        let mut command = Command::new(&self.client);
        command
            .arg(self.socket())
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = retry_busy(&mut command, Command::spawn);
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let client = RawClient {
            child,
            stdin,
            lines,
        };
        let first = client.next(patient(PROMPT));
        assert_eq!(first.as_deref(), Some("connected"), "the client connects");
        client
    }
}

/// `enforcer-client` as another user: what it prints, line by line.
struct RawClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl RawClient {
    /// Sends `text` to the daemon as it is.
    fn send(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").expect("writing to the client");
    }

    /// The client's next line, if one comes within `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The daemon's reply, which must come within `limit`.
    fn reply(&self, limit: Duration, what: &str) -> String {
        let line = self
            .next(limit)
            .unwrap_or_else(|| panic!("{what}: no reply within {limit:?}"));
        line.strip_prefix("reply ")
            .unwrap_or_else(|| panic!("{what}: expected a reply, got {line:?}"))
            .to_owned()
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The daemon's peak resident memory (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_reader_trickling_a_request_holds_up_nobody_and_is_cut_off_at_the_deadline() {
    if !privileged("a_reader_trickling_a_request_holds_up_nobody_and_is_cut_off_at_the_deadline") {
        return;
    }
    let setup = Setup::new("socket-trickle");
    let sb = &setup.sb;
    let mut idle = setup.connect_as(NOBODY);
    idle.send("{");

    // Root is answered while the reader's request is still arriving.
    let status = sb.enforcer(&["status"]);
    assert!(
        status.status.success(),
        "root's status: {}",
        stderr(&status)
    );
    idle.send("\"");
    sb.apply(&setup.file);
    let revoke = sb.enforcer(&["edge", "revoke", "no-such-edge"]);
    assert!(
        stderr(&revoke).contains("no edge has id no-such-edge"),
        "root's revoke is answered: {}",
        stderr(&revoke)
    );
    let early = idle.lines.try_recv().ok();
    assert_eq!(
        early, None,
        "root was answered before the reader was cut off"
    );

    // A byte at a time, each long before a per-read timeout, until the daemon cuts it off.
    let cut = (0..patient(DEADLINE * 6).as_secs())
        .find_map(|_| {
            idle.send(" ");
            idle.next(Duration::from_secs(1))
        })
        .expect("the trickling reader is cut off");
    assert!(
        cut.starts_with("reply ") && cut.contains("the request did not arrive within 10 s"),
        "the reader is told why: {cut}"
    );
}

#[test]
fn a_stranger_is_refused_before_it_sends_anything() {
    if !privileged("a_stranger_is_refused_before_it_sends_anything") {
        return;
    }
    let mut setup = Setup::new("socket-stranger");
    let stranger = setup.connect_as(STRANGER);
    let reply = stranger.reply(patient(PROMPT), "a stranger that sends nothing");
    assert!(
        reply.contains(&format!("permission denied: uid {STRANGER}"))
            && reply.contains("may not use"),
        "{reply}"
    );
    assert_eq!(
        stranger.next(patient(PROMPT)).as_deref(),
        Some("closed"),
        "and the daemon closes the connection"
    );
    let logged = setup
        .sb
        .wait_daemon_log("refused a control request", patient(PROMPT));
    assert!(logged.contains(&format!("uid {STRANGER}")), "{logged}");
}

#[test]
fn an_oversized_request_gets_the_daemons_reason_and_memory_stays_bounded() {
    if !privileged("an_oversized_request_gets_the_daemons_reason_and_memory_stays_bounded") {
        return;
    }
    let setup = Setup::new("socket-oversized");
    // A valid policy, so the CLI's own check passes and the request is sent: 24 MiB, under
    // the policy file limit and root's request limit, far over a reader's.
    let big = setup.sb.dir().join("big.yaml");
    let mut text = POLICY.replace("{root}", &setup.sb.root);
    text.push('#');
    text.push_str(&"x".repeat(24 << 20));
    text.push('\n');
    fs::write(&big, text).expect("writing a large policy");
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).expect("chmod policy");
    let big = big.to_str().expect("utf-8 path");
    let pid = setup.sb.daemon_pid();
    let before = peak_kib(pid);

    let plan = setup.cli_as(NOBODY, &["policy", "plan", big]);
    assert!(
        !plan.status.success(),
        "a reader's oversized plan is refused"
    );
    assert!(
        stderr(&plan).contains("request larger than 1048576 bytes"),
        "the reader sees the daemon's reason, not a broken pipe: {}",
        stderr(&plan)
    );
    let stranger = setup.cli_as(STRANGER, &["policy", "plan", big]);
    assert!(
        stderr(&stranger).contains(&format!("permission denied: uid {STRANGER}")),
        "{}",
        stderr(&stranger)
    );
    let grown = peak_kib(pid).saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "the daemon's peak memory grew by {grown} KiB for requests it refused"
    );
}

#[test]
fn a_reader_may_hold_only_its_bound_of_connections_and_root_is_still_served() {
    if !privileged("a_reader_may_hold_only_its_bound_of_connections_and_root_is_still_served") {
        return;
    }
    let setup = Setup::new("socket-bound");
    let held: Vec<RawClient> = (0..8).map(|_| setup.connect_as(NOBODY)).collect();
    let extra = setup.connect_as(NOBODY);
    let reply = extra.reply(patient(PROMPT), "a reader's ninth connection");
    assert!(
        reply.contains("too many connections: uid 65534 already has 8 in progress"),
        "{reply}"
    );
    let status = setup.sb.enforcer(&["status"]);
    assert!(
        status.status.success(),
        "root is served while the reader holds its bound: {}",
        stderr(&status)
    );
    let cli = setup.cli_as(NOBODY, &["status"]);
    assert!(
        stderr(&cli).contains("too many connections"),
        "the CLI says why: {}",
        stderr(&cli)
    );
    drop(held);
}

/// The daemon's thread count (`Threads` in /proc/PID/status).
fn threads(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads in /proc/PID/status")
}

#[test]
fn events_requests_that_are_never_read_keep_the_daemons_memory_bounded() {
    if !privileged("events_requests_that_are_never_read_keep_the_daemons_memory_bounded") {
        return;
    }
    let setup = Setup::new("socket-events-unread");
    // A full log, written as the daemon rotates it: 4 older files of 8 MiB of event lines.
    let line = r#"{"time":"2026-01-01T00:00:00Z","verdict":"refused","reason":"no_edge","hook":"sendmsg","protocol":"udp","from":"staging.example.org","to":"prod.example.org","edge":null,"src":"0.0.0.0:0","dst":"127.0.0.1:32651","cgroup_id":1,"cgroup":null,"pid":1,"comm":"enforcer-flood","generation":1}"#;
    let file = format!("{line}\n").repeat((8 << 20) / (line.len() + 1));
    for n in 1..=4 {
        fs::write(setup.sb.state_dir.join(format!("events.jsonl.{n}")), &file)
            .expect("writing a rotated event log");
    }
    let pid = setup.sb.daemon_pid();
    let before = peak_kib(pid);
    // Each client reads its answer and the first bytes of the log, then nothing more. The
    // daemon before this fix had read the whole log into memory, twice over, by then.
    let unread: Vec<_> = (0..6)
        .map(|_| {
            let (mut stream, answer) = setup
                .sb
                .request_unread(r#"{"request":"events","follow":false}"#);
            assert_eq!(answer, r#"{"result":"events"}"#);
            let mut first = [0; 4096];
            let read = std::io::Read::read(&mut stream, &mut first).expect("the log's first bytes");
            assert!(
                first[..read].starts_with(b"{\"time\""),
                "the log follows the answer"
            );
            stream
        })
        .collect();
    let grown = peak_kib(pid).saturating_sub(before);
    assert!(
        grown < 64 << 10,
        "the daemon's peak memory grew by {grown} KiB for 6 unread answers of a 32 MiB log"
    );
    let status = setup.sb.enforcer(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    drop(unread);
}

#[test]
fn clients_that_leave_before_their_answer_do_not_flood_the_daemons_log() {
    if !privileged("clients_that_leave_before_their_answer_do_not_flood_the_daemons_log") {
        return;
    }
    let mut setup = Setup::new("socket-gone-clients");
    let pid = setup.sb.daemon_pid();
    let idle = threads(pid);
    for _ in 0..300 {
        let mut stream =
            std::os::unix::net::UnixStream::connect(&setup.sb.socket).expect("connecting");
        writeln!(stream, r#"{{"request":"status"}}"#).expect("sending status");
    }
    // Each client is answered on a thread of its own, which ends once its answer failed.
    let deadline = std::time::Instant::now() + patient(PROMPT);
    while threads(pid) > idle {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon still has {} threads, {idle} when idle",
            threads(pid)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // A line the daemon logs after everything the clients caused.
    let stranger = setup.cli_as(STRANGER, &["status"]);
    assert!(!stranger.status.success());
    let logged = setup.sb.daemon_log_until(
        &format!("permission denied: uid {STRANGER}"),
        patient(PROMPT),
    );
    let unanswered: Vec<_> = logged
        .iter()
        .filter(|l| l.contains("could not answer"))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} lines for clients that left, such as {:?}",
        unanswered.len(),
        unanswered.first()
    );
}

/// A reader's plan that names bundle files: the daemon reads bundle files as root, so it must
/// not read those of a reader's choosing. Before this was refused, a FIFO held the reader's
/// request (and its connection slot) for ever, and a FIFO the reader wrote into or `/dev/zero`
/// grew the daemon's memory without bound; other paths told the reader what root-only files
/// hold (`/etc/shadow`: "is neither PEM certificates nor ...") or whether they exist.
#[test]
fn a_readers_plan_may_not_make_the_daemon_read_bundle_files_of_its_choosing() {
    if !privileged("a_readers_plan_may_not_make_the_daemon_read_bundle_files_of_its_choosing") {
        return;
    }
    let setup = Setup::new("socket-plan-bundle");
    let sb = &setup.sb;
    let fifo = sb.dir().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    let pid = sb.daemon_pid();
    let before = peak_kib(pid);
    let missing = sb.dir().join("missing.pem");
    for bundle in [
        fifo.as_path(),
        Path::new("/dev/zero"),
        Path::new("/etc/shadow"),
        missing.as_path(),
    ] {
        let file = sb.dir().join("bundle.yaml");
        let text = format!(
            "{}    bundle: {}\n",
            POLICY.replace("{root}", &sb.root),
            bundle.display()
        );
        fs::write(&file, text).expect("writing the policy");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod policy");
        let started = Instant::now();
        let plan = setup.cli_as(NOBODY, &["policy", "plan", file.to_str().expect("utf-8")]);
        let took = started.elapsed();
        let said = stderr(&plan);
        assert!(!plan.status.success(), "a reader's plan naming {bundle:?}");
        assert!(
            said.contains(&format!(
                "trust bundle of prod.example.org: {}: the policy in force names no such bundle \
                 file, and a member of the read group may plan only with those",
                bundle.display()
            )) && said.contains("run `policy plan` as root or a member of the admin group"),
            "a reader's plan naming {bundle:?} said:\n{said}"
        );
        assert!(
            took < patient(PROMPT),
            "a reader's plan naming {bundle:?} took {took:?}"
        );
    }
    let status = sb.enforcer(&["status"]);
    assert!(
        status.status.success(),
        "root's status: {}",
        stderr(&status)
    );
    let reader = setup.cli_as(NOBODY, &["status"]);
    assert!(
        reader.status.success(),
        "the reader's status: {}",
        stderr(&reader)
    );
    let grown = peak_kib(pid).saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "the daemon's peak memory grew by {grown} KiB for plans it refused"
    );
}

/// A grant that would start after it ends would be shown `not-yet-valid` and never allow
/// anything; a policy file's edge with such a window is refused, and so is the grant, by the
/// CLI and by the daemon (sent raw, as another client could).
#[test]
fn a_grant_that_would_start_after_it_ends_is_refused() {
    if !privileged("a_grant_that_would_start_after_it_ends_is_refused") {
        return;
    }
    let setup = Setup::new("socket-grant-window");
    let sb = &setup.sb;
    sb.cgroup("staging");
    let two = sb.policy(
        "two.yaml",
        &format!("{POLICY}  - name: staging.example.org\n    cgroups: ['{{root}}/staging']\n"),
    );
    sb.apply(&two);
    let late = "9999-12-30T00:00:00Z";
    let cli = sb.enforcer(&[
        "edge",
        "grant",
        "--from",
        "staging.example.org",
        "--to",
        "prod.example.org",
        "--protocol",
        "tcp",
        "--ports",
        "5432",
        "--ttl",
        "1m",
        "--owner",
        "dba",
        "--reason",
        "r",
        "--not-before",
        late,
    ]);
    assert!(!cli.status.success(), "the CLI refuses the grant");
    assert!(
        stderr(&cli).contains(&format!(
            "--not-before {late} must be before the grant's end"
        )),
        "{}",
        stderr(&cli)
    );
    let mut raw = std::os::unix::net::UnixStream::connect(&sb.socket).expect("connecting");
    raw.set_read_timeout(Some(patient(PROMPT)))
        .expect("a read timeout");
    writeln!(
        raw,
        r#"{{"request":"grant","from":"staging.example.org","to":"prod.example.org","protocol":"tcp","ports":["5432"],"ttl_ms":60000,"owner":"dba","reason":"r","id":null,"not_before":"{late}"}}"#
    )
    .expect("sending a raw grant");
    let mut reply = String::new();
    BufReader::new(raw)
        .read_line(&mut reply)
        .expect("the daemon's reply to a raw grant that starts after it ends");
    assert!(
        reply.contains(r#""result":"rejected""#)
            && reply.contains(&format!(
                "--not-before {late} must be before the grant's end"
            )),
        "{reply}"
    );
    let edges = sb.edges();
    assert!(
        edges.get("edges").map(|e| e.as_array().len()) == Some(0),
        "nothing was granted: {edges}"
    );
}
