//! Tests of the harness itself: the shared L2 segment ([`Lan`]) connects pods, remote nodes
//! and the host both ways, over TCP and UDP, IPv4 and IPv6, before any enforcement is in
//! place. Enforcement tests built on it can then blame a refusal on the daemon, not the wiring.

use std::time::Duration;

use enforcer_tests::{Lan, Outcome, Sandbox, Server, Workload, cgroup_of, privileged};

/// Ports 30100-30199 belong to this file.
const BASE_PORT: u16 = 30100;

/// A workload with the addresses others reach it at.
struct Site {
    name: &'static str,
    workload: Workload,
    v4: String,
    v6: String,
}

impl Site {
    fn addresses(&self) -> [&str; 2] {
        [&self.v4, &self.v6]
    }

    /// TCP and UDP listeners on both addresses.
    fn serve(&self, port: u16) -> Vec<Server> {
        self.addresses()
            .into_iter()
            .flat_map(|addr| {
                [
                    self.workload.listen(addr, port),
                    self.workload.udp_listen(addr, port),
                ]
            })
            .collect()
    }
}

#[test]
fn lan_topology_reaches_every_node_without_enforcement() {
    if !privileged("lan_topology_reaches_every_node_without_enforcement") {
        return;
    }
    let mut sb = Sandbox::new("topology");
    sb.set_probe_timeout(Duration::from_secs(2));
    let lan = Lan::new(1);
    let (node_a, node_b, node_r) = (lan.node(2), lan.node(3), lan.node(4));
    let site = |name, workload, v4: &str, v6: &str| Site {
        name,
        workload,
        v4: v4.to_owned(),
        v6: v6.to_owned(),
    };
    let sites = [
        site(
            "pod a",
            node_a.pod(&sb, &sb.cgroup("a")),
            &node_a.v4,
            &node_a.v6,
        ),
        site(
            "pod b",
            node_b.pod(&sb, &sb.cgroup("b")),
            &node_b.v4,
            &node_b.v6,
        ),
        site(
            "host",
            sb.workload(&sb.cgroup("host")),
            &lan.host_v4,
            &lan.host_v6,
        ),
        site("remote", node_r.remote(), &node_r.v4, &node_r.v6),
    ];
    let servers: Vec<Vec<Server>> = (BASE_PORT..)
        .zip(&sites)
        .map(|(port, s)| s.serve(port))
        .collect();
    assert_placement(&sb, &sites, &servers);

    let mut failures = Vec::new();
    for (port, server) in (BASE_PORT..).zip(&sites) {
        for client in sites.iter().filter(|c| c.name != server.name) {
            for addr in server.addresses() {
                failures.extend(unreachable(client, server.name, addr, port));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the LAN does not connect every pair:\n{}",
        failures.join("\n")
    );
}

/// Pods' listeners are inside the sandbox's subtree (enforced once a daemon runs); the remote
/// node's are outside it.
fn assert_placement(sb: &Sandbox, sites: &[Site], servers: &[Vec<Server>]) {
    for (site, servers) in sites.iter().zip(servers) {
        let inside = site.name != "remote";
        for server in servers {
            let cgroup = server.cgroup();
            assert_eq!(
                cgroup.starts_with(&format!("{}/", sb.root)),
                inside,
                "{} listener runs in {cgroup}",
                site.name
            );
        }
    }
    assert!(!cgroup_of(std::process::id()).starts_with(&sb.root));
}

/// Every way `client` can fail to reach `addr:port` (TCP, UDP sendto, UDP connect).
fn unreachable(client: &Site, server: &str, addr: &str, port: u16) -> Vec<String> {
    let w = &client.workload;
    [
        ("tcp", w.connect(addr, port), Outcome::greeted()),
        ("udp-send", w.udp_send(addr, port), Outcome::replied()),
        ("udp-connect", w.udp_connect(addr, port), Outcome::replied()),
    ]
    .into_iter()
    .filter(|(_, seen, expected)| seen != expected)
    .map(|(proto, seen, _)| {
        format!(
            "  {} -> {server} {addr}:{port} {proto}: {seen}",
            client.name
        )
    })
    .collect()
}
