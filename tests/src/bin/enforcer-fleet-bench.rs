//! `cargo xtask bench fleet`: how quickly a new pod's address becomes known on the fleet's
//! other nodes (issue 20). A real three-member etcd cluster on 127.0.0.1 and two daemons
//! following it (`--source etcd`), each with its own cgroup root, pins and state dir; pods are
//! network namespaces on one bridge. For each new pod of node a, one at a time, the bench
//! times from the pod's first socket until node a's own kernel map holds its addresses (the
//! baseline: the local scan every node does) and until node b's does (the same scan, then
//! node a's publication, etcd and node b's watch). Both are read from each daemon's `status`,
//! polled every few milliseconds, so each figure is late by at most one poll.
//!
//! Usage: `enforcer-fleet-bench [PODS]` (default 10), as root, with etcd installed.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{Json, Lan, Sandbox, etcd::EtcdCluster};

const PREFIX: &str = "/fleet-bench";
const PORT: u16 = 31_900;
/// Far more than a pod's addresses ever took to travel here; a pod that takes longer fails
/// the bench rather than hang it.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);
/// Every pod has an IPv4 and an IPv6 address on the bridge.
const ADDRESSES_PER_POD: u64 = 2;

fn main() {
    let pods: u8 = std::env::args()
        .nth(1)
        .map_or(10, |n| n.parse().expect("PODS: a number from 1 to 200"));
    assert!((1..=200).contains(&pods), "PODS: a number from 1 to 200");
    let cluster = EtcdCluster::start("fleet-bench", 3);
    let endpoints = cluster.endpoints();
    let lan = Lan::new(43);
    let mut a = Sandbox::new("fleet-bench-a");
    let mut b = Sandbox::new("fleet-bench-b");
    let prod = a.cgroup("prod");
    let policy = format!(
        "version: 1\ndefaults: {{unlabeled: allow, external: deny}}\ndomains:\n  - name: \
         prod.example.org\n    cgroups: ['{prod}']\nfederation: []\n"
    );
    let path = a.dir().join("fleet.yaml");
    std::fs::write(&path, policy).expect("writing the policy");
    fleet_apply(&endpoints, &path);
    for (sb, node) in [(&mut a, "node-a"), (&mut b, "node-b")] {
        let flags = [
            "--source",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            PREFIX,
            "--node",
            node,
        ];
        if let Err(why) = sb.try_start_fleet_daemon(&flags) {
            panic!("{why}");
        }
    }

    let local_before = local_addresses(&a);
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 1..=pods {
        let node = lan.node(9 + i);
        let started = Instant::now();
        servers.push(node.pod(&a, &prod).listen(&node.v4, PORT));
        let want = ADDRESSES_PER_POD * u64::from(i);
        let (mut known_here, mut known_there) = (None, None);
        while known_there.is_none() || known_here.is_none() {
            assert!(
                started.elapsed() < PATIENCE,
                "pod {i}: not known after {PATIENCE:?}"
            );
            if known_here.is_none() && local_addresses(&a) >= local_before + want {
                known_here = Some(started.elapsed());
            }
            if known_there.is_none() && b.fleet_addresses_loaded() >= want {
                known_there = Some(started.elapsed());
            }
            std::thread::sleep(POLL);
        }
        let (here, there) = (
            known_here.unwrap_or_default(),
            known_there.unwrap_or_default(),
        );
        println!(
            "pod {i}: known on its own node after {} ms, on the other node after {} ms",
            here.as_millis(),
            there.as_millis()
        );
        local.push(here);
        remote.push(there);
        nodes.push(node);
    }
    println!();
    println!(
        "| pods | own node, median (range) ms | other node, median (range) ms | ratio of medians |"
    );
    println!("|---|---|---|---|");
    let (l, r) = (summary(&mut local), summary(&mut remote));
    println!(
        "| {pods} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.2} |",
        l.0,
        l.1,
        l.2,
        r.0,
        r.1,
        r.2,
        r.0 / l.0.max(1.0)
    );
    drop(servers);
}

/// Median, minimum and maximum in milliseconds.
fn summary(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    (median, ms(times[0]), ms(times[times.len() - 1]))
}

fn fleet_apply(endpoints: &str, path: &Path) {
    let out = Command::new(enforcer_tests::enforcer())
        .args(["fleet", "apply"])
        .arg(path)
        .args(["--etcd-endpoints", endpoints, "--etcd-prefix", PREFIX])
        .output()
        .expect("running enforcer fleet apply");
    assert!(out.status.success(), "fleet apply: {out:?}");
}

/// The entries of node `sb`'s kernel address map: its host's, its pods' and its peers'.
fn local_addresses(sb: &Sandbox) -> u64 {
    let status = sb.status();
    status
        .get("maps")
        .map_or(&[][..], Json::as_array)
        .iter()
        .find(|m| m.get("map").and_then(Json::as_str) == Some("ENF_ADDRS"))
        .and_then(|m| m.get("entries"))
        .and_then(Json::as_u64)
        .unwrap_or(0)
}
