//! One L2 segment shared by the host and any number of "nodes". A [`Lan`] is a Linux bridge
//! in the host's network namespace holding `10.232.N.1/24` and `fd00:232:N::1/64`; each
//! [`Node`] is a network namespace with a veth port on that bridge and `10.232.N.H` /
//! `fd00:232:N::H`. Every node reaches every other and the host directly on the segment, so no
//! forwarding sysctl is needed.
//!
//! A node runs two shapes of workload: *pods* (in the node's network namespace and in a cgroup
//! of the test's sandbox, so the daemon enforces them, like containers with their own network
//! namespace) and *remote* processes (in the node's network namespace and the test runner's
//! own cgroup, outside every enforced subtree, so to the host they are another machine).

use std::process::{Command, Stdio};

use crate::{netns::ip, sandbox::Sandbox, workload::Workload};

/// A bridge in the host's network namespace, deleted on drop.
pub struct Lan {
    index: u8,
    bridge: String,
    /// The host's address on the segment.
    pub host_v4: String,
    pub host_v6: String,
}

impl Lan {
    /// `index` (1-250) picks the subnet `10.232.index.0/24`: every test uses its own, so tests
    /// running at once never share addresses. Names also carry the process id.
    pub fn new(index: u8) -> Self {
        let lan = Self {
            index,
            bridge: format!("enb{}-{index}", pid_tag()),
            host_v4: format!("10.232.{index}.1"),
            host_v6: format!("fd00:232:{index}::1"),
        };
        // A fixed MAC: a bridge otherwise takes its lowest port's address, which changes as
        // nodes come and go and would leave stale neighbour entries behind.
        let mac = format!("02:00:0a:e8:{index:02x}:01");
        ip(&[
            "link",
            "add",
            "name",
            &lan.bridge,
            "address",
            &mac,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        add_addresses(&[], &lan.bridge, &lan.host_v4, &lan.host_v6);
        ip(&["link", "set", &lan.bridge, "up"]);
        lan
    }

    /// A new node `10.232.N.host_part` / `fd00:232:N::host_part` (host_part 2-254; 1 is the
    /// host) whose default routes go through the host.
    pub fn node(&self, host_part: u8) -> Node {
        let index = self.index;
        let node = Node {
            netns: format!("enl{}-{index}-{host_part}", pid_tag()),
            v4: format!("10.232.{index}.{host_part}"),
            v6: format!("fd00:232:{index}::{host_part}"),
        };
        let ns = node.netns.as_str();
        let port = format!("env{}-{index:x}-{host_part:x}", pid_tag());
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["link", "set", &port, "master", &self.bridge]);
        ip(&["link", "set", &port, "up"]);
        add_addresses(&["-n", ns], "eth0", &node.v4, &node.v6);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", &self.host_v4]);
        ip(&[
            "-n",
            ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &self.host_v6,
        ]);
        node
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A network namespace on a [`Lan`], deleted (with its veth pair) on drop.
pub struct Node {
    netns: String,
    pub v4: String,
    pub v6: String,
}

impl Node {
    /// A pod: runs in this node's network namespace and in `cgroup` of `sandbox`, so the
    /// daemon enforces it. Probes use the sandbox's timeout.
    pub fn pod(&self, sandbox: &Sandbox, cgroup: &str) -> Workload {
        sandbox.workload(cgroup).in_netns(&self.netns)
    }

    /// Another machine: runs in this node's network namespace and in the test runner's own
    /// cgroup, outside every enforced subtree.
    pub fn remote(&self) -> Workload {
        Workload::new(None, Some(self.netns.clone()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

/// `v4/24` and `v6/64` (without duplicate address detection, so it is usable at once) on
/// `dev`; `netns` is empty for the host or `["-n", NAME]`.
fn add_addresses(netns: &[&str], dev: &str, v4: &str, v6: &str) {
    let v4 = format!("{v4}/24");
    let v6 = format!("{v6}/64");
    ip(&[netns, &["addr", "add", &v4, "dev", dev]].concat());
    ip(&[netns, &["-6", "addr", "add", &v6, "dev", dev, "nodad"]].concat());
}

/// Part of every name, so the same test in two processes (or two test binaries) never
/// collides. Interface names are at most 15 bytes, hence the modulus.
fn pid_tag() -> u32 {
    std::process::id() % 100_000
}
