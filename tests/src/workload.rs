//! Where the probe runs and what it reports. A [`Workload`] is a place: a cgroup (or the test
//! runner's own, outside every enforced subtree) and a network namespace (or the host's).
//! Every probe process of every test is started by [`Workload::command`], so a listener, a
//! client, a pod and a remote host differ only in where they are placed.

use std::{
    ffi::CString,
    fmt,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// What a client application saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// TCP: connected and received this greeting.
    Connected(String),
    /// UDP: the server's reply to our datagram.
    Replied(String),
    /// `connect()`, `send()`/`sendto()` or `recv()` failed with this errno.
    Error(i32),
    /// Nothing came back in time: the TCP handshake or the UDP reply was dropped somewhere.
    Timeout,
}

impl Outcome {
    pub const EPERM: Self = Self::Error(libc::EPERM);
    pub const REFUSED: Self = Self::Error(libc::ECONNREFUSED);

    /// A TCP client's view of a server that accepted it.
    pub fn greeted() -> Self {
        Self::Connected("hi".into())
    }

    /// A UDP client's view of a server that answered it.
    pub fn replied() -> Self {
        Self::Replied("hi".into())
    }

    /// Reads one result line of the probe (`connected hi`, `replied hi`, `error 1`, `timeout`).
    pub fn from_probe_line(line: &str) -> Option<Self> {
        let line = line.trim();
        let data = |prefix: &str| line.strip_prefix(prefix).map(|d| d.trim().to_owned());
        if line == "timeout" {
            Some(Self::Timeout)
        } else if let Some(errno) = line.strip_prefix("error ") {
            errno.parse().ok().map(Self::Error)
        } else if let Some(d) = data("connected") {
            Some(Self::Connected(d))
        } else {
            data("replied").map(Self::Replied)
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected(data) => write!(f, "connected {data:?}"),
            Self::Replied(data) => write!(f, "replied {data:?}"),
            Self::Timeout => write!(f, "timeout"),
            Self::Error(errno) => match errno_name(*errno) {
                Some(name) => write!(f, "error {name}"),
                None => write!(f, "error {errno}"),
            },
        }
    }
}

fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return None,
    })
}

/// A place to run probes: which cgroup they join, which network namespace they enter, and
/// how long they wait for an answer.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The cgroup directory (under the cgroup2 mount); `None` keeps the test runner's cgroup.
    cgroup_dir: Option<PathBuf>,
    /// A name under `/run/netns`; `None` keeps the host's network namespace.
    netns: Option<String>,
    timeout: Option<Duration>,
}

impl Workload {
    pub(crate) fn new(cgroup_dir: Option<PathBuf>, netns: Option<String>) -> Self {
        Self {
            cgroup_dir,
            netns,
            timeout: None,
        }
    }

    /// The same place inside the network namespace `/run/netns/<name>`.
    pub(crate) fn in_netns(self, name: &str) -> Self {
        Self {
            netns: Some(name.to_owned()),
            ..self
        }
    }

    /// How long connects and reply waits last; the probe's default is 5 s.
    pub fn with_timeout(self, timeout: Option<Duration>) -> Self {
        Self { timeout, ..self }
    }

    /// [`Self::connect`] by the probe run as `program`, a link to it: the kernel names a
    /// process (its `comm`) after the file it executed, so a test can choose that name.
    pub fn connect_as(&self, program: &Path, addr: &str, port: u16) -> Outcome {
        self.run_placed(program.to_owned(), &["connect", addr, &port.to_string()])
    }

    /// A TCP listener on `addr:port`, ready when this returns.
    pub fn listen(&self, addr: &str, port: u16) -> Server {
        Server::start(self.command(&["listen", addr, &port.to_string()]))
    }

    /// A UDP responder on `addr:port`, bound when this returns.
    pub fn udp_listen(&self, addr: &str, port: u16) -> Server {
        Server::start(self.command(&["udp-listen", addr, &port.to_string()]))
    }

    /// What a TCP client sees when it connects to `addr:port`.
    pub fn connect(&self, addr: &str, port: u16) -> Outcome {
        self.run(&["connect", addr, &port.to_string()])
    }

    /// What a UDP client sees when it `sendto`s `addr:port` from an unconnected socket.
    pub fn udp_send(&self, addr: &str, port: u16) -> Outcome {
        self.run(&["udp-send", addr, &port.to_string()])
    }

    /// Sends one datagram to `addr:port` (IPv4) from a port no socket holds (probe mode
    /// `udp-orphan`): as if its sender had closed before it arrived.
    pub fn udp_orphan(&self, addr: &str, port: u16) {
        let out = self
            .command(&["udp-orphan", addr, &port.to_string()])
            .output()
            .expect("running the probe");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            "sent",
            "udp-orphan {addr} {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What a UDP client sees when it `connect`s to `addr:port` and then `send`s.
    pub fn udp_connect(&self, addr: &str, port: u16) -> Outcome {
        self.run(&["udp-connect", addr, &port.to_string()])
    }

    /// A process that has created a TCP socket for `addr:port` and waits before connecting it.
    pub fn hold_socket(&self, addr: &str, port: u16) -> HeldSocket {
        HeldSocket::start(self.command(&["hold-then-connect", addr, &port.to_string()]))
    }

    /// A TCP client connected to `addr:port` that sends a time-stamped line every 20 ms
    /// (probe mode `stream`); connected when this returns.
    pub fn stream(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("stream", addr, port, "connected")
    }

    /// A TCP client that connects to `addr:port` over and over, a new socket each time, and
    /// reports every attempt as a `connect` probe would (probe mode `connect-storm`); running
    /// when this returns.
    pub fn connect_storm(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("connect-storm", addr, port, "started")
    }

    /// The same through a connected UDP socket (probe mode `udp-stream`).
    pub fn udp_stream(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("udp-stream", addr, port, "connected")
    }

    /// The same through an unconnected UDP socket and `sendto` (probe mode
    /// `udp-sendto-stream`); its socket exists when this returns.
    pub fn udp_sendto_stream(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("udp-sendto-stream", addr, port, "connected")
    }

    /// A TCP server on `addr:port` that accepts one connection and reports every line it
    /// receives (probe mode `sink`); listening when this returns.
    pub fn sink(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("sink", addr, port, "listening")
    }

    /// A [`Self::sink`] whose listening socket was a connected client first (probe mode
    /// `sink-after-connect`).
    pub fn sink_after_connect(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("sink-after-connect", addr, port, "listening")
    }

    /// A UDP socket on `addr:port` that reports every datagram (probe mode `udp-sink`); bound
    /// when this returns.
    pub fn udp_sink(&self, addr: &str, port: u16) -> Stream {
        self.start_stream("udp-sink", addr, port, "listening")
    }

    fn start_stream(&self, mode: &str, addr: &str, port: u16, ready: &str) -> Stream {
        let what = match &self.cgroup_dir {
            Some(dir) => format!("{mode} {addr} {port} (in {})", dir.display()),
            None => format!("{mode} {addr} {port}"),
        };
        let target = (mode == "udp-sink" && self.netns.is_none())
            .then(|| format!("{}:{port}", bracket(addr)).parse().ok())
            .flatten();
        Stream::start(
            self.command(&[mode, addr, &port.to_string()]),
            what,
            ready,
            target,
        )
    }

    /// The probe with `args`, placed in this workload's cgroup and network namespace before it
    /// runs a single instruction of its own, so every socket it creates belongs there.
    fn command(&self, args: &[&str]) -> Command {
        self.placed(crate::sandbox::probe(), args)
    }

    /// The `enforcer` CLI with `args`, run from this place: for `enforcer attest`, whose
    /// cgroup is what it proves an identity for.
    pub fn enforcer(&self, args: &[&str]) -> std::process::Output {
        self.placed(crate::sandbox::enforcer(), args)
            .output()
            .expect("running enforcer")
    }

    /// `enforcer-flood udp-refused`: `count` sendto() calls to `addr:port`; returns how many
    /// failed with EPERM and how many did not.
    pub fn udp_refused(&self, addr: &str, port: u16, count: u64) -> (u64, u64) {
        let out = self
            .placed(
                crate::sandbox::flood(),
                &["udp-refused", addr, &port.to_string(), &count.to_string()],
            )
            .output()
            .expect("running enforcer-flood");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["refused", refused, "other", other] => (
                refused.parse().expect("a count"),
                other.parse().expect("a count"),
            ),
            _ => panic!("enforcer-flood udp-refused printed {line:?}"),
        }
    }

    /// `binary` with `args`, placed like every probe.
    fn placed(&self, binary: PathBuf, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        if let Some(timeout) = self.timeout {
            cmd.env("ENFORCER_PROBE_TIMEOUT_MS", timeout.as_millis().to_string());
        }
        let procs = self.cgroup_dir.as_deref().map(procs_path);
        // Opened here, before the fork: the child only calls setns(2) on it. The closure owns
        // the file, so it stays open for as long as the command can spawn; O_CLOEXEC (std's
        // default) keeps it out of the probe itself.
        let netns = self.netns.as_deref().map(|name| {
            File::open(Path::new("/run/netns").join(name))
                .unwrap_or_else(|e| panic!("opening network namespace {name}: {e}"))
        });
        // SAFETY: between fork and exec the closure calls only open(2), write(2), close(2)
        // and setns(2) on memory prepared before the fork, all async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = &procs {
                    join_cgroup(procs)?;
                }
                if let Some(netns) = &netns {
                    enter_netns(netns.as_raw_fd())?;
                }
                Ok(())
            });
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Outcome {
        self.run_placed(crate::sandbox::probe(), args)
    }

    fn run_placed(&self, binary: PathBuf, args: &[&str]) -> Outcome {
        let out = self
            .placed(binary, args)
            .output()
            .expect("running the probe");
        let text = String::from_utf8_lossy(&out.stdout);
        Outcome::from_probe_line(&text).unwrap_or_else(|| {
            panic!(
                "unexpected probe output {:?} for {args:?}: {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn procs_path(cgroup_dir: &Path) -> CString {
    CString::new(cgroup_dir.join("cgroup.procs").as_os_str().as_bytes())
        .expect("a cgroup path without NUL bytes")
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`.
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: `procs` is a valid C string; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}

fn enter_netns(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: `fd` is an open network namespace file.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A listening probe, killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a listener");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("reading the listener's readiness line");
        assert_eq!(first.trim(), "listening", "listener failed to start");
        Self { child }
    }

    /// The listener's cgroup, as in `/proc/PID/cgroup`.
    pub fn cgroup(&self) -> String {
        cgroup_of(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's cgroup v2 path (`0::/path` in `/proc/PID/cgroup`).
pub fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("reading cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry")
        .to_owned()
}

/// A probe in `hold-then-connect` mode: it has created its socket and waits for the test.
pub struct HeldSocket {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl HeldSocket {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the probe");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut held = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(
            held.line(),
            "ready",
            "the probe could not create its socket"
        );
        held
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the probe go on: it connects the socket it already had, then a new one. Returns
    /// what each connection saw, old first.
    pub fn connect_old_and_new(mut self) -> (Outcome, Outcome) {
        writeln!(self.stdin, "go").expect("releasing the probe");
        let old = self.result("old ");
        let new = self.result("new ");
        (old, new)
    }

    fn result(&mut self, prefix: &str) -> Outcome {
        let line = self.line();
        line.strip_prefix(prefix)
            .and_then(Outcome::from_probe_line)
            .unwrap_or_else(|| panic!("expected `{prefix}<result>` from the probe, got {line:?}"))
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading the probe");
        line.trim().to_owned()
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// Milliseconds since the Unix epoch: the clock stream lines are stamped with.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One line a stream probe printed, and when the harness read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at: SystemTime,
    pub text: String,
}

/// One line a sink received: `got seq <seq> <sent_ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub seq: u64,
    /// When the client sent it (ms since the Unix epoch, the client's clock: the host's).
    pub sent_ms: u64,
}

/// How a stream ended, from its `ended <reason> <ms>` (client) or `closed <reason>` (sink)
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// `ECONNABORTED`, `ECONNRESET`, `EPERM`, ..., `eof`.
    pub reason: String,
    /// When the probe noticed (ms since the Unix epoch): its own stamp for a client, the time
    /// the harness read the line for a sink.
    pub at_ms: u64,
}

/// A probe in one of the stream modes (`stream`, `udp-stream`, `udp-sendto-stream`, `sink`,
/// `udp-sink`, `connect-storm`), killed on drop. A thread reads its output as it comes, stamping each line
/// with the time it was read; the test waits for lines instead of sleeping.
pub struct Stream {
    child: Child,
    what: String,
    lines: mpsc::Receiver<Line>,
    seen: Vec<Line>,
    /// Where a `udp-sink` on the host can be reached, for [`Stream::barrier`].
    target: Option<SocketAddr>,
    barriers: u32,
}

impl Stream {
    fn start(mut cmd: Command, what: String, ready: &str, target: Option<SocketAddr>) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the probe {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = Line {
                    at: SystemTime::now(),
                    text,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stream = Self {
            child,
            what,
            lines,
            seen: Vec::new(),
            target,
            barriers: 0,
        };
        // A connect gives up after the probe's timeout (5 s by default): wait longer than that.
        let first = stream.next_line(Duration::from_secs(30));
        match first {
            Some(line) if line.text == ready => stream,
            Some(line) => panic!(
                "{}: the probe said {:?} where `{ready}` was expected (error numbers: 1 is \
                 EPERM, 111 ECONNREFUSED, 98 EADDRINUSE)",
                stream.what, line.text
            ),
            None => panic!(
                "{}: the probe printed nothing within 30 s or exited ({:?})",
                stream.what,
                stream.child.try_wait()
            ),
        }
    }

    /// What this probe is, for assertion messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line not yet taken from the reader thread, waiting at most `timeout`.
    fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Takes every line the reader thread has so far, without waiting.
    fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Every line printed so far (the readiness line first).
    pub fn lines_so_far(&mut self) -> Vec<Line> {
        self.pump();
        self.seen.clone()
    }

    /// The first line starting with `prefix` (among every line printed so far, then as they
    /// come), or `None` if none came within `timeout`.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Option<Line> {
        self.pump();
        if let Some(line) = self.seen.iter().find(|l| l.text.starts_with(prefix)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.next_line(left)?;
            if line.text.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// Waits (at most `timeout`) until `count` lines starting with `prefix` have been printed
    /// in all; returns how many there are then.
    pub fn wait_for_count(&mut self, prefix: &str, count: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            let have = self.count(prefix);
            if have >= count {
                return have;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return have;
            };
            if self.next_line(left).is_none() {
                return self.count(prefix);
            }
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.seen
            .iter()
            .filter(|l| l.text.starts_with(prefix))
            .count()
    }

    /// A sink's `got seq <n> <ms>` lines so far, in the order they arrived.
    pub fn received(&mut self) -> Vec<Received> {
        self.pump();
        self.seen
            .iter()
            .filter_map(|l| {
                let mut words = l.text.strip_prefix("got seq ")?.split_whitespace();
                Some(Received {
                    seq: words.next()?.parse().ok()?,
                    sent_ms: words.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// How many stream lines a sink has received so far.
    pub fn received_count(&mut self) -> usize {
        self.received().len()
    }

    /// A sink's received lines that their client sent after `ms` (ms since the Unix epoch).
    pub fn received_after(&mut self, ms: u64) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.sent_ms > ms)
            .collect()
    }

    /// Waits (at most `timeout`) for a client's `ended <reason> <ms>` line or a sink's
    /// `closed <reason>` line.
    pub fn wait_ended(&mut self, timeout: Duration) -> Option<Ended> {
        let deadline = Instant::now() + timeout;
        let ended = |line: &Line| {
            if let Some(rest) = line.text.strip_prefix("ended ") {
                let mut words = rest.split_whitespace();
                let reason = words.next()?.to_owned();
                let at_ms = words.next()?.parse().ok()?;
                Some(Ended { reason, at_ms })
            } else {
                line.text.strip_prefix("closed ").map(|reason| Ended {
                    reason: reason.trim().to_owned(),
                    at_ms: unix_ms(line.at),
                })
            }
        };
        self.pump();
        if let Some(e) = self.seen.iter().find_map(ended) {
            return Some(e);
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.next_line(left)?;
            if let Some(e) = ended(&line) {
                return Some(e);
            }
        }
    }

    /// Whether the probe has reported the end of its stream yet (without waiting).
    pub fn has_ended(&mut self) -> bool {
        self.pump();
        self.seen
            .iter()
            .any(|l| l.text.starts_with("ended ") || l.text.starts_with("closed "))
    }

    /// For a `udp-sink` on the host: sends `sync <n>` to it from the test runner itself
    /// (outside every enforced cgroup, so the flow is unlabeled: the policy must allow
    /// unlabeled flows) and waits (at most `timeout`) until the sink reports it. Datagrams on
    /// loopback reach a socket in the order they were sent, so once this returns `true` every
    /// datagram sent before the call has been reported.
    pub fn barrier(&mut self, timeout: Duration) -> bool {
        let target = self
            .target
            .unwrap_or_else(|| panic!("{}: barrier needs a udp-sink on the host", self.what));
        self.barriers += 1;
        let marker = format!("sync {}", self.barriers);
        let wildcard: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = UdpSocket::bind(wildcard).expect("binding a UDP socket for the barrier");
        socket
            .send_to(marker.as_bytes(), target)
            .unwrap_or_else(|e| panic!("{}: sending {marker:?}: {e}", self.what));
        self.wait_for(&format!("got {marker}"), timeout).is_some()
    }

    /// For a sink: waits until it has received at least `count` stream lines in all, and
    /// panics, saying `context` and what arrived, if that takes longer than `timeout`.
    /// Returns how many it has.
    pub fn expect_received(&mut self, count: usize, timeout: Duration, context: &str) -> usize {
        let have = self.wait_for_count("got seq ", count, timeout);
        self.pump();
        assert!(
            have >= count,
            "{context}: the application {} received {have} line(s) in {timeout:?}, expected at \
             least {count}; it printed {:?}",
            self.what,
            self.tail(8)
        );
        have
    }

    /// For a sink: panics, saying `context`, if it received a line its client sent after `ms`
    /// (ms since the Unix epoch).
    pub fn expect_nothing_sent_after(&mut self, ms: u64, context: &str) {
        let late = self.received_after(ms);
        assert!(
            late.is_empty(),
            "{context}: the application {} received {} line(s) sent after {ms} (by up to {} ms), \
             expected none; the first: {:?}",
            self.what,
            late.len(),
            late.iter().map(|r| r.sent_ms - ms).max().unwrap_or(0),
            late.first()
        );
    }

    /// Waits (at most `timeout`) for the end of the stream and checks its reason is one of
    /// `reasons`; panics, saying `context` and what the application saw, otherwise.
    pub fn expect_end(&mut self, timeout: Duration, reasons: &[&str], context: &str) -> Ended {
        match self.wait_ended(timeout) {
            Some(end) if reasons.contains(&end.reason.as_str()) => end,
            Some(end) => panic!(
                "{context}: the application {} saw its stream end with {}, expected {}",
                self.what,
                end.reason,
                reasons.join(" or ")
            ),
            None => {
                self.pump();
                panic!(
                    "{context}: the application {} saw no error and no end of its stream in \
                 {timeout:?}, expected {}; its last lines: {:?}",
                    self.what,
                    reasons.join(" or "),
                    self.tail(4)
                )
            }
        }
    }

    /// Panics, saying `context`, if the stream has ended.
    pub fn expect_not_ended(&mut self, context: &str) {
        let ended = self.has_ended();
        assert!(
            !ended,
            "{context}: the application {} saw its stream end ({:?}), expected it to go on",
            self.what,
            self.tail(2)
        );
    }

    /// The last `n` lines printed so far, for messages.
    fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.seen.len().saturating_sub(n);
        self.seen[skip..].iter().map(|l| l.text.clone()).collect()
    }

    /// Kills the probe (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.kill();
    }
}
