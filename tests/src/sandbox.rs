//! One test's private world: a cgroup subtree the daemon attaches to, a pin directory, a
//! control socket, a state directory, and the processes started in them.

use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::{
    capabilities::{Capabilities, daemon_capabilities},
    events::EventFollower,
    json::Json,
    workload::{HeldSocket, Outcome, Server, Stream, Workload},
};

pub struct Sandbox {
    name: String,
    cgroup_mount: PathBuf,
    /// The subtree the daemon attaches to, as a cgroup path (`/enforcer-test-...`).
    pub root: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    daemon: Option<Child>,
    daemon_log: Option<mpsc::Receiver<String>>,
    /// Environment variables every daemon started from now on gets.
    daemon_env: Vec<(OsString, OsString)>,
    /// The only capabilities every daemon started from now on gets, if limited here rather
    /// than by `ENFORCER_TEST_DAEMON_CAPS`.
    daemon_caps: Option<String>,
    /// How long probes wait for a connect or a reply; `None` is the probe's default (5 s).
    probe_timeout: Option<Duration>,
}

impl Sandbox {
    pub fn new(test: &str) -> Self {
        let id = format!("{test}-{}", std::process::id());
        let cgroup_mount = cgroup_mount();
        let root = format!("/enforcer-test-{id}");
        fs::create_dir_all(cgroup_mount.join(&root[1..])).expect("creating the test cgroup");
        let dir = std::env::temp_dir().join(format!("enforcer-test-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the test directory");
        Self {
            name: test.into(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/enforcer-test-{id}")),
            socket: dir.join("control.sock"),
            state_dir: dir.join("state"),
            dir,
            cgroup_mount,
            root,
            daemon: None,
            daemon_log: None,
            daemon_env: Vec::new(),
            daemon_caps: None,
            probe_timeout: None,
        }
    }

    /// Creates `ROOT/rel` and returns its cgroup path.
    pub fn cgroup(&self, rel: &str) -> String {
        let path = format!("{}/{rel}", self.root);
        fs::create_dir_all(self.cgroup_dir(&path)).expect("creating a cgroup");
        path
    }

    fn cgroup_dir(&self, path: &str) -> PathBuf {
        self.cgroup_mount.join(path.trim_start_matches('/'))
    }

    /// The sandbox's scratch directory (removed with it), for files a test writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a policy file; `{root}` in `text` becomes this sandbox's cgroup root.
    pub fn policy(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        fs::write(&path, text.replace("{root}", &self.root)).expect("writing a policy");
        path
    }

    /// Starts the daemon and returns once its control socket answers (it logs
    /// `control socket` after enforcement is in place).
    pub fn start_daemon(&mut self, policy: &Path) {
        self.start_daemon_with(policy, &[]);
    }

    /// Sets `key` to `value` in the environment of every daemon started from now on.
    pub fn set_daemon_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.daemon_env.push((key.into(), value.into()));
    }

    /// Gives every daemon started from now on only the capabilities `list` names
    /// (`CAP_BPF CAP_NET_ADMIN ...`), whatever `ENFORCER_TEST_DAEMON_CAPS` says.
    pub fn limit_daemon_capabilities(&mut self, list: &str) {
        self.daemon_caps = Some(list.to_owned());
    }

    /// The capabilities the daemon is limited to, if it is.
    fn daemon_capabilities(&self) -> Option<Capabilities> {
        match &self.daemon_caps {
            Some(list) => Some(Capabilities::parse(list)),
            None => daemon_capabilities(),
        }
    }

    /// Starts the daemon and returns at once, without waiting for it to be ready; its log
    /// is followed as after [`Self::start_daemon`].
    pub fn launch_daemon(&mut self, policy: &Path) {
        assert!(self.daemon.is_none(), "daemon already running");
        let mut child = self
            .daemon_command(policy, &[] as &[&str])
            .spawn()
            .expect("starting the daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        self.daemon_log = Some(forward_lines(stderr, &self.name));
        self.daemon = Some(child);
    }

    /// Sends `signal` to the daemon.
    pub fn signal_daemon(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.daemon_pid()).expect("a pid");
        // SAFETY: kill(2) with a pid this sandbox started and still owns.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "signalling the daemon"
        );
    }

    /// Kills the daemon with SIGKILL: no cleanup code of its own runs.
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().expect("killing the daemon");
        child.wait().expect("reaping the daemon");
        self.daemon_log = None;
    }

    /// Waits (at most `limit`) for the daemon to exit on its own and returns its exit status.
    pub fn wait_daemon_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("polling the daemon") {
                self.daemon_log = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// Runs the `enforcer` CLI with this sandbox's socket or pin dir where the command takes it.
    pub fn enforcer(&self, args: &[&str]) -> Output {
        self.enforcer_from(&enforcer(), args)
    }

    /// [`Self::enforcer`] with another build's `enforcer` binary (an earlier version).
    pub fn enforcer_from(&self, binary: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        match args.first().copied() {
            Some("status") => {
                cmd.arg("--socket").arg(&self.socket);
            }
            Some("policy") if matches!(args.get(1), Some(&"apply" | &"plan")) => {
                cmd.arg("--socket").arg(&self.socket);
            }
            Some("edge" | "events") => {
                cmd.arg("--socket").arg(&self.socket);
            }
            Some("teardown") => {
                cmd.arg("--pin-dir").arg(&self.pin_dir);
            }
            _ => {}
        }
        cmd.output().expect("running enforcer")
    }

    /// Applies a policy file through the daemon and returns the new generation.
    pub fn apply(&self, policy: &Path) -> u64 {
        let out = self.enforcer(&["policy", "apply", policy.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("apply prints the generation")
    }

    /// Applies a policy file through the daemon; returns the new generation and what the
    /// command printed on stderr (where it says how many connections it ended).
    pub fn apply_reporting(&self, policy: &Path) -> (u64, String) {
        let out = self.enforcer(&["policy", "apply", policy.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "apply failed: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let generation = stdout.trim().parse().unwrap_or_else(|_| {
            panic!("apply prints the generation on stdout, printed {stdout:?}")
        });
        (generation, stderr)
    }

    /// `enforcer edge grant ARGS` (text output): the id it prints.
    pub fn grant(&self, args: &[&str]) -> String {
        let out = self.edge_command("grant", args);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !stdout.is_empty() && !stdout.contains('\n'),
            "edge grant {args:?} prints the grant's id on one line; it printed {stdout:?}"
        );
        stdout
    }

    /// `enforcer edge grant ARGS -o json`, parsed (`{"id", "expires", "generation"}`).
    pub fn grant_json(&self, args: &[&str]) -> Json {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        parse_json("edge grant", &self.edge_command("grant", &args))
    }

    /// `enforcer edge revoke ID -o json`, parsed (`{"id", "ended", "generation"}`).
    pub fn revoke(&self, id: &str) -> Json {
        parse_json(
            "edge revoke",
            &self.edge_command("revoke", &[id, "-o", "json"]),
        )
    }

    /// `enforcer edge list -o json`, parsed (`{"edges": [...]}`).
    pub fn edges(&self) -> Json {
        self.edges_with(&[])
    }

    /// `enforcer edge list -o json EXTRA`, e.g. `--stale-after 2s`.
    pub fn edges_with(&self, extra: &[&str]) -> Json {
        let mut args = vec!["-o", "json"];
        args.extend(extra);
        parse_json("edge list", &self.edge_command("list", &args))
    }

    /// The edge `id` in `enforcer edge list -o json`, if listed.
    pub fn listed_edge(&self, id: &str) -> Option<Json> {
        self.edges()
            .get("edges")
            .and_then(|edges| edges.find_by("id", id))
            .cloned()
    }

    /// `enforcer edge show ID -o json`, parsed.
    pub fn show_edge(&self, id: &str) -> Json {
        parse_json("edge show", &self.edge_command("show", &[id, "-o", "json"]))
    }

    /// `enforcer edge SUB ARGS`, which must succeed.
    fn edge_command(&self, sub: &str, args: &[&str]) -> Output {
        let mut full = vec!["edge", sub];
        full.extend(args);
        let out = self.enforcer(&full);
        assert!(
            out.status.success(),
            "`enforcer {}` failed ({}): {}",
            full.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Makes every probe started from now on give up after `timeout` (connects and replies),
    /// so tests that expect silent drops run quickly.
    pub fn set_probe_timeout(&mut self, timeout: Duration) {
        self.probe_timeout = Some(timeout);
    }

    /// The place to run probes in `cgroup`, in the host's network namespace.
    pub fn workload(&self, cgroup: &str) -> Workload {
        Workload::new(Some(self.cgroup_dir(cgroup)), None).with_timeout(self.probe_timeout)
    }

    /// A TCP listener in `cgroup` on `addr:port`, ready when this returns.
    pub fn listen(&self, cgroup: &str, addr: &str, port: u16) -> Server {
        self.workload(cgroup).listen(addr, port)
    }

    /// A UDP responder in `cgroup` on `addr:port`, bound when this returns.
    pub fn udp_listen(&self, cgroup: &str, addr: &str, port: u16) -> Server {
        self.workload(cgroup).udp_listen(addr, port)
    }

    /// What a TCP application in `cgroup` sees when it connects to `addr:port`.
    pub fn connect(&self, cgroup: &str, addr: &str, port: u16) -> Outcome {
        self.workload(cgroup).connect(addr, port)
    }

    /// What a UDP application in `cgroup` sees when it `sendto`s `addr:port` unconnected.
    pub fn udp_send(&self, cgroup: &str, addr: &str, port: u16) -> Outcome {
        self.workload(cgroup).udp_send(addr, port)
    }

    /// What a UDP application in `cgroup` sees when it connects to `addr:port` and sends.
    pub fn udp_connect(&self, cgroup: &str, addr: &str, port: u16) -> Outcome {
        self.workload(cgroup).udp_connect(addr, port)
    }

    /// A TCP client in `cgroup` streaming time-stamped lines to `addr:port` (probe `stream`).
    pub fn stream(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).stream(addr, port)
    }

    /// A connected-UDP client in `cgroup` streaming to `addr:port` (probe `udp-stream`).
    pub fn udp_stream(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).udp_stream(addr, port)
    }

    /// An unconnected-UDP client in `cgroup` streaming to `addr:port` with `sendto` (probe
    /// `udp-sendto-stream`).
    pub fn udp_sendto_stream(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).udp_sendto_stream(addr, port)
    }

    /// A TCP client in `cgroup` connecting to `addr:port` over and over (probe
    /// `connect-storm`), one result line per attempt.
    pub fn connect_storm(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).connect_storm(addr, port)
    }

    /// A TCP server in `cgroup` on `addr:port` that takes one stream (probe `sink`).
    pub fn sink(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).sink(addr, port)
    }

    /// A UDP server in `cgroup` on `addr:port` reporting every datagram (probe `udp-sink`).
    pub fn udp_sink(&self, cgroup: &str, addr: &str, port: u16) -> Stream {
        self.workload(cgroup).udp_sink(addr, port)
    }

    /// A process in `cgroup` holding a TCP socket it has not connected yet.
    pub fn hold_socket(&self, cgroup: &str, addr: &str, port: u16) -> HeldSocket {
        self.workload(cgroup).hold_socket(addr, port)
    }

    /// Moves the process `pid` into `cgroup`.
    pub fn move_process(&self, pid: u32, cgroup: &str) {
        fs::write(
            self.cgroup_dir(cgroup).join("cgroup.procs"),
            pid.to_string(),
        )
        .expect("moving a process to another cgroup");
    }

    /// Removes the (empty) cgroup `path`.
    pub fn remove_cgroup(&self, path: &str) {
        fs::remove_dir(self.cgroup_dir(path)).expect("removing a cgroup");
    }

    /// `enforcer status -o json`, parsed.
    pub fn status(&self) -> Json {
        let out = self.enforcer(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("status prints JSON")
    }

    /// How many of the fleet's other nodes' pod addresses this daemon's kernel holds
    /// (`policy_source.etcd.addresses.loaded` of its status; 0 outside a fleet).
    pub fn fleet_addresses_loaded(&self) -> u64 {
        let status = self.status();
        ["policy_source", "etcd", "addresses", "loaded"]
            .iter()
            .try_fold(&status, |j, k| j.get(k))
            .and_then(Json::as_u64)
            .unwrap_or(0)
    }

    /// Waits (at most `limit`) for the daemon to log a line containing `text`; panics if it
    /// does not. Lines logged since the last wait are searched too.
    pub fn wait_daemon_log(&mut self, text: &str, limit: Duration) -> String {
        self.daemon_log_until(text, limit)
            .pop()
            .expect("the matching line")
    }

    /// [`Self::wait_daemon_log`], returning every line logged up to and including the match.
    pub fn daemon_log_until(&mut self, text: &str, limit: Duration) -> Vec<String> {
        let lines = self.daemon_log.as_ref().expect("daemon running");
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("the daemon did not log {text:?} within {limit:?}"),
            }
        }
    }

    /// A connection of the test's own (root's) that sends `request` and reads the answer's
    /// first line, returned beside it, and nothing after it: a client that stops reading.
    pub fn request_unread(&self, request: &str) -> (UnixStream, String) {
        let mut stream = UnixStream::connect(&self.socket).expect("connecting to the daemon");
        writeln!(stream, "{request}").expect("sending a request");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("a read timeout");
        let mut answer = Vec::new();
        let mut byte = [0];
        // A byte at a time, so nothing after the first line is read.
        while answer.last() != Some(&b'\n') {
            stream.read_exact(&mut byte).expect("the daemon's answer");
            answer.push(byte[0]);
        }
        (
            stream,
            String::from_utf8_lossy(&answer).trim_end().to_owned(),
        )
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the daemon process: the kernel keeps enforcing
    /// and writing events while it is stopped.
    pub fn pause_daemon(&self, paused: bool) {
        self.signal_daemon(if paused { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// Follows the daemon's decision events from now on.
    pub fn follow_events(&self) -> EventFollower {
        let mut cmd = Command::new(enforcer());
        cmd.args(["events", "--follow", "-o", "json", "--socket"])
            .arg(&self.socket);
        EventFollower::start(cmd)
    }

    /// `enforcer events -o json EXTRA`: the events in the daemon's log, one per line.
    pub fn event_log(&self, extra: &[&str]) -> Vec<Json> {
        let mut args = vec!["events", "-o", "json"];
        args.extend(extra);
        let out = self.enforcer(&args);
        assert!(
            out.status.success(),
            "events failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| Json::parse(l).unwrap_or_else(|e| panic!("event line not JSON ({e}): {l}")))
            .collect()
    }

    /// Removes every cgroup under the sandbox root, deepest first, after killing what runs there.
    fn remove_cgroups(&self) {
        let root = self.cgroup_dir(&self.root);
        let _ = fs::write(root.join("cgroup.kill"), "1");
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            // A killed process leaves its cgroup a moment after the signal; retry briefly.
            for _ in 0..100 {
                if fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// [`Self::start_daemon`] with `extra` arguments after the sandbox's own
    /// (`--metrics-addr ...`).
    pub fn start_daemon_with(&mut self, policy: &Path, extra: &[&str]) {
        self.start_daemon_from(&enforcer(), policy, extra);
    }

    /// [`Self::start_daemon_with`] running another build's `enforcer` binary (an earlier
    /// version, for upgrades).
    pub fn start_daemon_from(&mut self, binary: &Path, policy: &Path, extra: &[&str]) {
        if let Err(why) = self.try_start_daemon_from(binary, policy, extra) {
            panic!("{why}");
        }
    }

    /// [`Self::start_daemon_from`], returning what the daemon logged when it exits before it
    /// is ready instead of failing the test.
    pub fn try_start_daemon_from(
        &mut self,
        binary: &Path,
        policy: &Path,
        extra: &[&str],
    ) -> Result<(), String> {
        let command = self.daemon_command_from(binary, Some(policy), Path::new(&self.root), extra);
        self.try_start(command)
    }

    /// Starts a daemon that takes its policy from a fleet (`extra`: `--source etcd` and its
    /// flags) and waits until it serves its control socket; what it logged when it exits
    /// before that.
    pub fn try_start_fleet_daemon(
        &mut self,
        extra: &[impl AsRef<std::ffi::OsStr>],
    ) -> Result<(), String> {
        let command = self.daemon_command_from(&enforcer(), None, Path::new(&self.root), extra);
        self.try_start(command)
    }

    /// [`Self::start_daemon`] with every path given as an `ENFORCER_*` environment variable
    /// instead of a flag, and `extra` variables.
    pub fn start_daemon_from_env(&mut self, policy: &Path, extra: &[(&str, &str)]) {
        let mut command = match self.daemon_capabilities() {
            Some(caps) => caps.wrap(&enforcer()),
            None => Command::new(enforcer()),
        };
        command
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .arg("daemon")
            .env("ENFORCER_POLICY", policy)
            .env("ENFORCER_CGROUP_ROOT", &self.root)
            .env("ENFORCER_PIN_DIR", &self.pin_dir)
            .env("ENFORCER_SOCKET", &self.socket)
            .env("ENFORCER_STATE_DIR", &self.state_dir)
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Err(why) = self.try_start(command) {
            panic!("{why}");
        }
    }

    /// Starts `command` as this sandbox's daemon and waits until it serves its control
    /// socket; what it logged when it exits before that.
    fn try_start(&mut self, mut command: Command) -> Result<(), String> {
        assert!(self.daemon.is_none(), "daemon already running");
        let mut child = command.spawn().expect("starting the daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = forward_lines(stderr, &self.name);
        let mut seen = Vec::new();
        loop {
            match lines.recv() {
                Ok(line) if line.contains("control socket") => {
                    if let Some(caps) = self.daemon_capabilities() {
                        caps.check(child.id());
                    }
                    break;
                }
                Ok(line) => seen.push(line),
                Err(_) => {
                    let status = child.wait().expect("waiting for the daemon");
                    return Err(format!(
                        "the daemon exited ({status}) before it was ready:\n{}",
                        seen.join("\n")
                    ));
                }
            }
        }
        self.daemon = Some(child);
        self.daemon_log = Some(lines);
        Ok(())
    }
}

impl Sandbox {
    /// `enforcer daemon` on this sandbox's root, pins, socket and state, with `extra` flags;
    /// stderr piped.
    fn daemon_command(&self, policy: &Path, extra: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        self.daemon_command_at(policy, Path::new(&self.root), extra)
    }

    /// [`Self::daemon_command`] attached at `cgroup_root` instead of the sandbox's root.
    pub fn daemon_command_at(
        &self,
        policy: &Path,
        cgroup_root: &Path,
        extra: &[impl AsRef<std::ffi::OsStr>],
    ) -> Command {
        self.daemon_command_from(&enforcer(), Some(policy), cgroup_root, extra)
    }

    /// [`Self::daemon_command_at`] running `binary`.
    fn daemon_command_from(
        &self,
        binary: &Path,
        policy: Option<&Path>,
        cgroup_root: &Path,
        extra: &[impl AsRef<std::ffi::OsStr>],
    ) -> Command {
        let mut command = match self.daemon_capabilities() {
            Some(caps) => caps.wrap(binary),
            None => Command::new(binary),
        };
        command
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .arg("daemon")
            .args(
                policy
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--policy"), p.as_os_str()]),
            )
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts a daemon with `extra` flags that must make it exit with an error (within a
    /// minute; it is killed and the test fails otherwise); returns its stderr.
    pub fn daemon_must_fail(&self, policy: &Path, extra: &[impl AsRef<std::ffi::OsStr>]) -> String {
        let mut child = self
            .daemon_command(policy, extra)
            .spawn()
            .expect("starting the daemon");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("polling the daemon") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon kept running; it had to fail");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let out = child
            .wait_with_output()
            .expect("reading the daemon's stderr");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!status.success(), "the daemon had to fail: {stderr}");
        stderr
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(enforcer())
            .args(["teardown", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .status();
        self.remove_cgroups();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The JSON `what` printed on stdout.
fn parse_json(what: &str, out: &Output) -> Json {
    let stdout = String::from_utf8_lossy(&out.stdout);
    Json::parse(&stdout)
        .unwrap_or_else(|e| panic!("`enforcer {what} -o json` printed no JSON ({e}): {stdout}"))
}

fn forward_lines(stderr: ChildStderr, test: &str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let test = test.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{test} daemon] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Where the cgroup v2 hierarchy is mounted on this host.
pub fn cgroup_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// Binaries live next to the test executable's parent (`target/<profile>/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The target directory above the profile's (`target/`).
pub(crate) fn target_root() -> PathBuf {
    target_dir()
        .parent()
        .expect("the profile dir is inside the target dir")
        .to_path_buf()
}

pub fn enforcer() -> PathBuf {
    let path = std::env::var_os("ENFORCER_BIN")
        .map_or_else(|| target_dir().join("enforcer"), PathBuf::from);
    assert!(
        path.exists(),
        "{} does not exist; run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

pub fn probe() -> PathBuf {
    target_dir().join("enforcer-probe")
}

pub fn flood() -> PathBuf {
    target_dir().join("enforcer-flood")
}

/// The raw control socket client (`tests/src/bin/enforcer-client.rs`).
pub fn client() -> PathBuf {
    target_dir().join("enforcer-client")
}
