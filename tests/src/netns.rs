//! "Remote hosts" for tests: a network namespace joined to the host by a veth pair, with an
//! IPv4 and an IPv6 address on each side. Its processes run outside the enforced cgroup
//! subtree and outside the host's network namespace, so to the host it is another machine.

use std::process::{Command, Stdio};

use crate::workload::{Server, Workload};

pub struct RemoteHost {
    name: String,
    pub host_v4: String,
    pub remote_v4: String,
    pub host_v6: String,
    pub remote_v6: String,
}

impl RemoteHost {
    /// `index` (1-250) picks the subnet, so tests running at once do not collide.
    pub fn new(index: u8) -> Self {
        let name = format!("enft{}-{index}", std::process::id() % 100_000);
        let host_if = format!("{name}h");
        let remote_if = format!("{name}r");
        let host = Self {
            host_v4: format!("10.231.{index}.1"),
            remote_v4: format!("10.231.{index}.2"),
            host_v6: format!("fd00:231:{index}::1"),
            remote_v6: format!("fd00:231:{index}::2"),
            name,
        };
        let ns = host.name.as_str();
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &remote_if,
        ]);
        ip(&["link", "set", &remote_if, "netns", ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", host.host_v4),
            "dev",
            &host_if,
        ]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", host.host_v6),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.remote_v4),
            "dev",
            &remote_if,
        ]);
        ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{}/64", host.remote_v6),
            "dev",
            &remote_if,
            "nodad",
        ]);
        ip(&["-n", ns, "link", "set", &remote_if, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        host
    }

    /// A listener on `addr:port` inside the remote host.
    pub fn listen(&self, addr: &str, port: u16) -> Server {
        self.workload().listen(addr, port)
    }

    /// The place to run probes on the remote machine.
    pub fn workload(&self) -> Workload {
        Workload::new(None, Some(self.name.clone()))
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `ip ARGS` and fails the test, with ip's own message, if it fails.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {}: {e} (iproute2 is needed)", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
