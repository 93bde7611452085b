//! The daemon under a service manager: the sd_notify(3) messages it sends to `NOTIFY_SOCKET`
//! (here a datagram socket the test owns, at an abstract address as systemd's own), and how
//! SIGTERM and SIGINT stop it, and what it says when it runs short of a capability.
//!
//! `READY=1` must arrive only once enforcement is in place: the test stops the daemon
//! (SIGSTOP) the moment `READY=1` arrives, so a daemon that said it too early could not finish
//! attaching, and the refusal checked then would not be there. Every check of enforcement is
//! what an application sees. Tests wait for messages and log lines, never on sleeps.
//! Ports 38000-38099 belong to this file.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{Outcome, Sandbox, patient, privileged};

const LOCALHOST: &str = "127.0.0.1";
/// How long a message or a log line gets to arrive: generous, no timing assertion.
const WAIT: Duration = Duration::from_secs(30);

/// A policy with one staging -> prod TCP edge on each of `ports`.
fn policy(ports: &[u16]) -> String {
    enforcer_tests::policies::staging_to_prod(ports, "systemd test")
}

/// The test's end of `NOTIFY_SOCKET`: a datagram socket at an abstract address.
struct Manager {
    socket: UnixDatagram,
    address: String,
}

impl Manager {
    fn new(test: &str) -> Self {
        let name = format!("enforcer-test-notify-{test}-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
        let socket = UnixDatagram::bind_addr(&address).expect("binding the notify socket");
        Self {
            socket,
            address: format!("@{name}"),
        }
    }

    /// The next message, or `None` when none arrives within `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(limit))
            .expect("a read timeout");
        let mut buf = vec![0; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one with the line `line`, which is returned; panics if none comes
    /// within [`WAIT`]. Messages before it go to `before`.
    fn until(&self, line: &str, before: &mut Vec<String>) -> String {
        let deadline = Instant::now() + patient(WAIT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .next(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|| {
                    panic!("no message with {line} within {WAIT:?}; before it: {before:?}")
                });
            if message.lines().any(|l| l == line) {
                return message;
            }
            before.push(message);
        }
    }
}

/// The value of `STATUS=` in `message`.
fn status_of(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {message:?}"))
}

fn generation(sb: &Sandbox) -> u64 {
    sb.status()
        .get("generation")
        .and_then(enforcer_tests::Json::as_u64)
        .expect("status -o json has a generation")
}

fn refused(sb: &Sandbox, staging: &str, port: u16, when: &str) {
    let outcome = sb.connect(staging, LOCALHOST, port);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "{when}: staging -> prod:{port} is refused; the application saw {outcome}"
    );
}

fn allowed(sb: &Sandbox, staging: &str, port: u16, when: &str) {
    let outcome = sb.connect(staging, LOCALHOST, port);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "{when}: staging -> prod:{port} is allowed; the application saw {outcome}"
    );
}

#[test]
fn ready_comes_once_enforcement_is_in_place_and_status_carries_the_generation() {
    if !privileged("ready_comes_once_enforcement_is_in_place_and_status_carries_the_generation") {
        return;
    }
    let mut sb = Sandbox::new("sd-ready");
    let (prod, staging) = (sb.cgroup("prod"), sb.cgroup("staging"));
    let _server = sb.listen(&prod, LOCALHOST, 38000);
    let _edge = sb.listen(&prod, LOCALHOST, 38001);
    allowed(&sb, &staging, 38000, "before any daemon");
    let file = sb.policy("policy.yaml", &policy(&[]));
    let manager = Manager::new("ready");
    sb.set_daemon_env("NOTIFY_SOCKET", &manager.address);
    sb.launch_daemon(&file);

    let mut before = Vec::new();
    let ready = manager.until("READY=1", &mut before);
    // Frozen at once: a daemon that said READY=1 before enforcing could not catch up now.
    sb.pause_daemon(true);
    refused(&sb, &staging, 38000, "when READY=1 arrived");
    sb.pause_daemon(false);
    assert!(
        before.iter().all(|m| !m.contains("READY=1")),
        "READY=1 came more than once: {before:?}"
    );
    sb.wait_daemon_log("control socket", patient(WAIT));
    let first = generation(&sb);
    assert_eq!(
        status_of(&ready),
        format!("enforcing policy generation {first}: 2 domain(s), 0 edge(s)"),
        "READY=1 says what is enforced"
    );

    // Every change is a new STATUS=.
    let edge = sb.policy("edge.yaml", &policy(&[38001]));
    let applied = sb.apply(&edge);
    let mut seen = Vec::new();
    let status = loop {
        let message = manager
            .next(patient(WAIT))
            .unwrap_or_else(|| panic!("no STATUS= after the apply; seen {seen:?}"));
        if message.contains(&format!("generation {applied}")) {
            break message;
        }
        seen.push(message);
    };
    assert_eq!(
        status_of(&status),
        format!("enforcing policy generation {applied}: 2 domain(s), 1 edge(s)")
    );
    allowed(&sb, &staging, 38001, "after the apply");

    // SIGHUP reloads --policy between RELOADING=1 and READY=1.
    sb.signal_daemon(libc::SIGHUP);
    let mut before = Vec::new();
    let reloading = manager.until("RELOADING=1", &mut before);
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"
    );
    let mut between = Vec::new();
    let reloaded = manager.until("READY=1", &mut between);
    let reloaded_generation = generation(&sb);
    assert_eq!(reloaded_generation, applied + 1, "SIGHUP applied --policy");
    assert_eq!(
        status_of(&reloaded),
        format!("enforcing policy generation {reloaded_generation}: 2 domain(s), 0 edge(s)")
    );
    refused(&sb, &staging, 38001, "after the reload took the edge away");
}

#[test]
fn the_watchdog_is_pinged_when_systemd_asks_for_it() {
    if !privileged("the_watchdog_is_pinged_when_systemd_asks_for_it") {
        return;
    }
    let mut sb = Sandbox::new("sd-watchdog");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let file = sb.policy("policy.yaml", &policy(&[]));
    let manager = Manager::new("watchdog");
    sb.set_daemon_env("NOTIFY_SOCKET", &manager.address);
    // One second: a ping at least every half second. No WATCHDOG_PID, as systemd leaves it
    // out when the main process is the one it started.
    sb.set_daemon_env("WATCHDOG_USEC", "1000000");
    sb.launch_daemon(&file);
    let mut before = Vec::new();
    manager.until("READY=1", &mut before);
    for ping in 1..=3 {
        let mut other = Vec::new();
        manager.until("WATCHDOG=1", &mut other);
        assert!(
            other.iter().all(|m| !m.contains("STOPPING=1")),
            "the daemon stopped before ping {ping}: {other:?}"
        );
    }
}

/// Stops the daemon with `signal`; checks it says so, removes its control socket and exits 0.
fn stop_with(sb: &mut Sandbox, manager: &Manager, signal: libc::c_int, name: &str) {
    sb.signal_daemon(signal);
    let mut before = Vec::new();
    let stopping = manager.until("STOPPING=1", &mut before);
    assert!(
        status_of(&stopping).contains("enforcing policy generation"),
        "{stopping:?}"
    );
    sb.wait_daemon_log(&format!("stopped on {name}"), patient(WAIT));
    let exit = sb.wait_daemon_exit(patient(WAIT));
    assert!(exit.success(), "{name} ends the daemon with exit 0: {exit}");
    assert!(
        !sb.socket.exists(),
        "{name} removes the control socket {}",
        sb.socket.display()
    );
}

#[test]
fn sigterm_and_sigint_stop_the_daemon_cleanly_and_enforcement_stays() {
    if !privileged("sigterm_and_sigint_stop_the_daemon_cleanly_and_enforcement_stays") {
        return;
    }
    let mut sb = Sandbox::new("sd-stop");
    let (prod, staging) = (sb.cgroup("prod"), sb.cgroup("staging"));
    let _server = sb.listen(&prod, LOCALHOST, 38050);
    let _edge = sb.listen(&prod, LOCALHOST, 38051);
    let file = sb.policy("policy.yaml", &policy(&[38051]));
    let manager = Manager::new("stop");
    sb.set_daemon_env("NOTIFY_SOCKET", &manager.address);
    sb.start_daemon(&file);
    let mut before = Vec::new();
    manager.until("READY=1", &mut before);
    refused(&sb, &staging, 38050, "with the daemon running");
    allowed(&sb, &staging, 38051, "with the daemon running");

    stop_with(&mut sb, &manager, libc::SIGTERM, "SIGTERM");
    refused(&sb, &staging, 38050, "after SIGTERM");
    allowed(&sb, &staging, 38051, "after SIGTERM");
    assert!(
        Path::new(&sb.pin_dir).join("links").exists(),
        "the links stay pinned"
    );

    // The next daemon adopts what the stopped one left, and keeps its policy.
    sb.launch_daemon(&file);
    sb.wait_daemon_log("adopted enforcement", patient(WAIT));
    manager.until("READY=1", &mut Vec::new());
    refused(&sb, &staging, 38050, "after the restart");
    allowed(&sb, &staging, 38051, "after the restart");

    stop_with(&mut sb, &manager, libc::SIGINT, "SIGINT");
    refused(&sb, &staging, 38050, "after SIGINT");
    allowed(&sb, &staging, 38051, "after SIGINT");
}

#[test]
fn a_daemon_short_of_a_capability_says_what_it_cannot_do() {
    if !privileged("a_daemon_short_of_a_capability_says_what_it_cannot_do") {
        return;
    }
    let mut sb = Sandbox::new("sd-caps");
    let (prod, staging) = (sb.cgroup("prod"), sb.cgroup("staging"));
    let _server = sb.listen(&prod, LOCALHOST, 38090);
    let file = sb.policy("policy.yaml", &policy(&[]));
    // The unit's set but CAP_DAC_READ_SEARCH: enforcement works, events lose their cgroups.
    sb.limit_daemon_capabilities("CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE");
    sb.launch_daemon(&file);
    let warning = sb.wait_daemon_log("running without", patient(WAIT));
    assert!(
        warning.contains("running without CAP_DAC_READ_SEARCH: events cannot name the cgroup"),
        "{warning}"
    );
    sb.wait_daemon_log("control socket", patient(WAIT));
    refused(&sb, &staging, 38090, "without CAP_DAC_READ_SEARCH");
}
