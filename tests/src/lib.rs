//! The harness for privileged end-to-end tests. Each test gets its own cgroup subtree, pin
//! directory, control socket and state directory, and every one of them is removed when the
//! [`Sandbox`] is dropped, including when the test fails. [`Lan`] and [`RemoteHost`] add
//! pods and other machines in network namespaces of their own, also removed on drop; every
//! probe process, wherever it runs, is placed by a [`Workload`].

pub mod bundle_server;
mod busy;
mod capabilities;
pub mod etcd;
mod events;
mod json;
mod lan;
mod netns;
pub mod pki;
pub mod policies;
mod previous;
mod prometheus;
mod sandbox;
mod workload;

pub use busy::retry_busy;
pub use events::EventFollower;
pub use json::Json;
pub use lan::{Lan, Node};
pub use netns::RemoteHost;
pub use previous::{PREVIOUS_LAYOUT, enforcer_at, pin_foreign_map};
pub use prometheus::{Exposition, HttpResponse, Sample, http_get};
pub use sandbox::{Sandbox, cgroup_mount, client, enforcer, probe};
pub use workload::{HeldSocket, Outcome, Server, Stream, Workload, cgroup_of};

/// Set by CI: a privileged test that cannot run is a failure, not a skip.
pub const REQUIRE_ENV: &str = "ENFORCER_REQUIRE_PRIVILEGED";

/// A whole-number factor for the longest waits on bulk work, set by `cargo xtask vm-test`:
/// its guests may run under software emulation, many times slower than the host.
pub const PATIENCE_ENV: &str = "ENFORCER_TEST_PATIENCE";

/// `limit` times [`PATIENCE_ENV`] (1 when unset or not a number). Only a limit on waiting for
/// a signal, so a larger one costs nothing when the signal comes.
pub fn patient(limit: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var(PATIENCE_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    limit * factor
}

/// The fixed ports the tests listen on that lie in Linux's default ephemeral range
/// (32768-60999), and the etcd members' ports (`etcd::free_port`).
const TEST_PORTS: &str = "32768-40999";

/// Takes [`TEST_PORTS`] out of the kernel's choice of ephemeral ports (`ip_local_reserved_ports`;
/// a bind that names a port still gets it). A client connection's ephemeral port lingers in
/// TIME_WAIT for a minute after it closes and, unless the client set SO_REUSEADDR, makes
/// `bind()` of that port fail with EADDRINUSE: a test's fixed port then collides, at random,
/// with one of the thousands of connections the suite makes (seen: a sink on 34020 after the
/// bundle-endpoint tests' HTTPS fetches). The setting lasts until reboot; once per process.
fn reserve_test_ports() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
        let Ok(current) = std::fs::read_to_string(path) else {
            return;
        };
        let current = current.trim();
        if current.split(',').any(|r| r == TEST_PORTS) {
            return;
        }
        let wanted = if current.is_empty() {
            TEST_PORTS.to_owned()
        } else {
            format!("{current},{TEST_PORTS}")
        };
        if let Err(err) = std::fs::write(path, wanted) {
            eprintln!("could not reserve the tests' ports {TEST_PORTS} in {path}: {err}");
        }
    });
}

/// Whether privileged tests can run here. When they cannot, says so loudly, and panics if
/// [`REQUIRE_ENV`] is set.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cgroup2 = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    });
    let reason = match (root, cgroup2) {
        (true, true) => {
            reserve_test_ports();
            return true;
        }
        (false, _) => "not running as root",
        (true, false) => "no cgroup v2 hierarchy is mounted",
    };
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test}: privileged test cannot run ({reason}) and {REQUIRE_ENV} is set");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED privileged test {test}: {reason}. Nothing about kernel enforcement \
         was tested. Set {REQUIRE_ENV}=1 to make this a failure. !!!!!!!!\n"
    );
    false
}
