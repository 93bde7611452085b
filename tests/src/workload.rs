//! Where the probe runs and what it reports. A [`Workload`] is a place: a cgroup (or the test
//! runner's own, outside every enforced subtree) and a network namespace (or the host's).
//! Every probe process of every test is started by [`Workload::command`], so a listener, a
//! client, a pod and a remote host differ only in where they are placed.

use std::{
    ffi::CString,
    fmt,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
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

    /// What a UDP client sees when it `connect`s to `addr:port` and then `send`s.
    pub fn udp_connect(&self, addr: &str, port: u16) -> Outcome {
        self.run(&["udp-connect", addr, &port.to_string()])
    }

    /// A process that has created a TCP socket for `addr:port` and waits before connecting it.
    pub fn hold_socket(&self, addr: &str, port: u16) -> HeldSocket {
        HeldSocket::start(self.command(&["hold-then-connect", addr, &port.to_string()]))
    }

    /// The probe with `args`, placed in this workload's cgroup and network namespace before it
    /// runs a single instruction of its own, so every socket it creates belongs there.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::sandbox::probe());
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
        let out = self.command(args).output().expect("running the probe");
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
