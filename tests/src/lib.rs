//! The harness for privileged end-to-end tests. Each test gets its own cgroup subtree, pin
//! directory, control socket and state directory, and every one of them is removed when the
//! [`Sandbox`] is dropped, including when the test fails. [`Lan`] and [`RemoteHost`] add
//! pods and other machines in network namespaces of their own, also removed on drop; every
//! probe process, wherever it runs, is placed by a [`Workload`].

pub mod bundle_server;
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

pub use events::EventFollower;
pub use json::Json;
pub use lan::{Lan, Node};
pub use netns::RemoteHost;
pub use previous::{PREVIOUS_LAYOUT, enforcer_at, pin_foreign_map};
pub use prometheus::{Exposition, HttpResponse, Sample, http_get};
pub use sandbox::{Sandbox, cgroup_mount, client, enforcer};
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
        (true, true) => return true,
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
