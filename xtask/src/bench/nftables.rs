//! The peer `--peers` measures against: an nftables rule set with the bench policy's
//! semantics, written the way a skilled administrator would (cgroupv2 socket matches, marks,
//! and O(1) sets and maps, no linear rule lists):
//! - on output, the sending socket's cgroup is mapped to its domain, carried in the packet's
//!   mark (unlabeled: mark 0);
//! - on input, established and related flows pass (conntrack), unlabeled senders pass
//!   (`unlabeled: allow`), a sender of the receiving socket's own domain passes, and otherwise
//!   `sender domain . receiving cgroup . protocol . port` must be an element of the edge set,
//!   one element per edge and port, or the packet is dropped.
//!
//! It does less than the enforcer: no refusal at `connect()` (a forbidden connection times
//! out), no events, no expiry, no revocation of live flows. And it has a flaw no rule can
//! mend: a SYN that arrives for a 4-tuple still in TIME_WAIT finds a timewait socket, which
//! has no cgroup (nft_socket breaks on anything but a full socket), so it is dropped and the
//! client retries a second later. `connect`, whose server closes first, reuses such tuples
//! within seconds at these rates, and its nftables figures collapse; accepting those SYNs
//! unchecked would let any sender through on a recycled tuple.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{BenchEnv, bench_edges, domain_cgroup};

/// The table's name, unique to this bench run.
fn table() -> String {
    format!("enforcer_bench_{}", std::process::id())
}

/// The rule set for `domains` and `edges` as `bench_edges` lays them out.
pub fn rules(env: &BenchEnv, protocol: &str, domains: usize, edges: usize) -> Result<String> {
    // nft resolves a cgroupv2 path relative to /sys/fs/cgroup, at load time.
    let mount = env
        .cgroup_mount
        .strip_prefix("/sys/fs/cgroup")
        .with_context(|| {
            format!(
                "nft resolves cgroup paths under /sys/fs/cgroup; the cgroup2 mount is {}",
                env.cgroup_mount.display()
            )
        })?;
    let root = mount.join(&env.root[1..]);
    let path = |i: usize| format!("\"{}\"", root.join(domain_cgroup(i)).display());
    // Domain i carries mark i + 1: mark 0 is an unlabeled sender.
    let mut domain_of = Vec::with_capacity(domains);
    let mut same = Vec::with_capacity(domains);
    for i in 0..domains {
        domain_of.push(format!("{} : {}", path(i), i + 1));
        same.push(format!("{} . {}", i + 1, path(i)));
    }
    let allowed: Vec<String> = bench_edges(protocol, domains, edges)
        .iter()
        .flat_map(|e| {
            let (from, to) = (e.from + 1, path(e.to));
            e.ports
                .iter()
                .map(move |port| format!("{from} . {to} . {} . {port}", e.protocol))
        })
        .collect();
    let mut text = String::new();
    let _ = write!(
        text,
        "table inet {table} {{
  map domain_of {{
    type cgroupsv2 : mark
    elements = {{ {domain_of} }}
  }}
  set same {{
    type mark . cgroupsv2
    elements = {{ {same} }}
  }}
  set allowed {{
    type mark . cgroupsv2 . inet_proto . inet_service
    elements = {{ {allowed} }}
  }}
  chain out {{
    type filter hook output priority 0; policy accept;
    meta mark set socket cgroupv2 level 2 map @domain_of
  }}
  chain in {{
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    meta mark 0 accept
    meta mark . socket cgroupv2 level 2 @same accept
    meta mark . socket cgroupv2 level 2 . meta l4proto . th dport @allowed accept
    drop
  }}
}}
",
        table = table(),
        domain_of = domain_of.join(", "),
        same = same.join(", "),
        allowed = allowed.join(", "),
    );
    Ok(text)
}

/// The rule set, loaded; deleted when dropped.
pub struct Table;

impl Table {
    pub fn load(rules: &Path) -> Result<Self> {
        ensure_nft()?;
        nft(&["-f", &rules.display().to_string()])?;
        Ok(Self)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &table()]);
    }
}

/// Installs Debian's nftables when `nft` is missing.
fn ensure_nft() -> Result<()> {
    if Command::new("nft").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("bench: installing nftables (apt-get) for --peers");
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "nftables",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install nftables failed; --peers needs nft");
    }
    Ok(())
}

fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .context("running nft")?;
    if !out.status.success() {
        bail!(
            "nft {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
