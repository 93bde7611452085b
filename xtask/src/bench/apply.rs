//! `cargo xtask bench apply`: the control plane at scale. For each size (domains / edges,
//! every edge between a distinct domain pair), a policy file and a copy with one edge changed
//! are written; then, with the release binaries:
//! - `policy check` of the file, end to end: the baseline every other figure is divided by
//!   (parsing is what no design can skip);
//! - daemon start-up until it serves its control socket, and its RSS;
//! - `policy apply` of the changed file, end to end (the CLI call, parsing included), with
//!   nothing else asking the daemon anything, the daemon's own account of its kernel side
//!   (compile, write the inactive slot, swap), and the RSS after it;
//! - the slowest `status` answered while the first file was applied again: each `status` of
//!   100,000 edges is 22 MB of JSON, so these race the apply for the host's CPUs, and are
//!   kept out of the apply's own time;
//! - the kernel memory of each map, as `status` reports it.
//!
//! Growth is read across sizes: time per edge should stay flat (n log n at worst).

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{BenchEnv, Killed, bin};

#[derive(Args, Clone)]
pub struct Sizes {
    /// Sizes as DOMAINS/EDGES, comma-separated.
    #[arg(long, default_value = "1000/10000,3000/30000,10000/100000")]
    sizes: String,
}

struct Size {
    domains: usize,
    edges: usize,
}

/// What one size measured.
struct Row {
    size: Size,
    file_mb: f64,
    check: Duration,
    start: Duration,
    apply: Duration,
    kernel_ms: f64,
    rss_start_mb: f64,
    rss_apply_mb: f64,
    slowest_status: Duration,
    statuses: usize,
    maps: Vec<(String, Option<u64>, u64)>,
}

pub fn run(env: &BenchEnv, sizes: &Sizes) -> Result<()> {
    let sizes = parse_sizes(&sizes.sizes)?;
    let mut rows = Vec::new();
    for size in sizes {
        eprintln!(
            "bench apply: {} domains / {} edges",
            size.domains, size.edges
        );
        rows.push(measure(env, size)?);
    }
    print(&rows);
    Ok(())
}

fn parse_sizes(text: &str) -> Result<Vec<Size>> {
    text.split(',')
        .map(|s| {
            let (d, e) = s
                .split_once('/')
                .with_context(|| format!("size {s:?} is not DOMAINS/EDGES"))?;
            let size = Size {
                domains: d.trim().parse().context("domains")?,
                edges: e.trim().parse().context("edges")?,
            };
            if size.domains < 2 || size.edges / size.domains >= size.domains - 1 {
                bail!("{s}: too many edges for distinct pairs of {d} domains");
            }
            Ok(size)
        })
        .collect()
}

fn measure(env: &BenchEnv, size: Size) -> Result<Row> {
    let first = env.dir.join(format!("scale-{}.yaml", size.edges));
    let changed = env.dir.join(format!("scale-{}-changed.yaml", size.edges));
    let text = scale_policy(&env.root, &size, 40_000);
    fs::write(&first, &text)?;
    fs::write(&changed, scale_policy(&env.root, &size, 40_001))?;
    let file_mb = text.len() as f64 / 1e6;

    let check = timed(
        Command::new(bin("enforcer"))
            .args(["policy", "check"])
            .arg(&first),
    )?;
    let state = env.dir.join(format!("state-{}", size.edges));
    let socket = env.dir.join("control.sock");
    let started = Instant::now();
    let daemon = Started::spawn(env, &first, &state, &socket)?;
    let start = started.elapsed();
    let rss_start_mb = rss_mb(daemon.pid)?;

    let apply_cmd = |file: &Path| {
        let mut c = Command::new(bin("enforcer"));
        c.args(["policy", "apply"])
            .arg(file)
            .arg("--socket")
            .arg(&socket);
        c
    };
    let apply = timed(&mut apply_cmd(&changed))?;
    let kernel_ms = daemon.kernel_ms()?;
    let rss_apply_mb = rss_mb(daemon.pid)?;

    let (done_tx, done_rx) = mpsc::channel();
    let mut raced = apply_cmd(&first);
    let applier = std::thread::spawn(move || {
        let result = timed(&mut raced);
        let _ = done_tx.send(());
        result
    });
    let mut slowest_status = Duration::ZERO;
    let mut statuses = 0;
    while done_rx.try_recv().is_err() {
        let took = timed(
            Command::new(bin("enforcer"))
                .args(["status", "-o", "json", "--socket"])
                .arg(&socket),
        )?;
        slowest_status = slowest_status.max(took);
        statuses += 1;
    }
    applier
        .join()
        .map_err(|_| anyhow::anyhow!("the apply thread panicked"))??;
    let maps = map_memory(&socket)?;
    drop(daemon);
    env.teardown()?;
    let _ = fs::remove_dir_all(&state);
    Ok(Row {
        size,
        file_mb,
        check,
        start,
        apply,
        kernel_ms,
        rss_start_mb,
        rss_apply_mb,
        slowest_status,
        statuses,
        maps,
    })
}

/// `size.domains` domains, each with a binding (pending: the cgroups are never created) and a
/// /24 endpoint; `size.edges` edges, each between a distinct domain pair. `port` is the port of
/// edge 0, so two calls with different ports give a file and the same file with one edge
/// changed.
fn scale_policy(root: &str, size: &Size, port: u16) -> String {
    let name = |i: usize| format!("d{i}.scale.example.org");
    let mut p = String::with_capacity(size.edges * 130 + size.domains * 110);
    p.push_str("version: 1\ndefaults: {unlabeled: allow, external: allow}\ndomains:\n");
    for i in 0..size.domains {
        let _ = writeln!(
            p,
            "  - name: {}\n    cgroups: ['{root}/d{i}']\n    endpoints: [10.{}.{}.0/24]",
            name(i),
            100 + i / 256,
            i % 256,
        );
    }
    p.push_str("federation:\n");
    for i in 0..size.edges {
        let from = i % size.domains;
        let to = (from + 1 + i / size.domains) % size.domains;
        let port = if i == 0 {
            port
        } else {
            10_000 + (i % 20_000) as u16
        };
        let _ = writeln!(
            p,
            "  - {{from: {}, to: {}, protocol: tcp, ports: [{port}], owner: bench, reason: scale}}",
            name(from),
            name(to)
        );
    }
    p
}

/// A daemon whose log lines are kept for reading.
struct Started {
    pid: u32,
    lines: mpsc::Receiver<String>,
    _child: Killed,
}

impl Started {
    /// Starts the daemon and returns once it serves its control socket.
    fn spawn(env: &BenchEnv, policy: &Path, state: &Path, socket: &Path) -> Result<Self> {
        let mut child = env
            .daemon_command(policy, socket, state)
            .spawn()
            .context("starting the daemon")?;
        let pid = child.id();
        let stderr = child.stderr.take().context("piped stderr")?;
        let child = Killed(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        for line in lines.iter() {
            // The daemon's own account of its start: what the start-up time is made of.
            if line.contains("started in") {
                eprintln!("daemon: {line}");
            }
            if line.contains("control socket") {
                return Ok(Self {
                    pid,
                    lines,
                    _child: child,
                });
            }
            if line.contains("error") {
                bail!("daemon: {line}");
            }
        }
        bail!("the daemon exited before it was ready")
    }

    /// The kernel side of the last apply, from the daemon's log line
    /// (`... kernel side N ms ...`).
    fn kernel_ms(&self) -> Result<f64> {
        let mut last = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.split("kernel side ").nth(1) {
                last = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        }
        last.context("the daemon logged no kernel-side time for the apply")
    }
}

/// Runs `cmd` to completion and returns how long it took; fails when it failed.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let out = cmd.output().context("running the enforcer CLI")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

fn rss_mb(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// (map, entries in the slot in force where `status` counts them, kernel bytes) of every
/// pinned map, from `status -o json`.
fn map_memory(socket: &PathBuf) -> Result<Vec<(String, Option<u64>, u64)>> {
    let out = Command::new(bin("enforcer"))
        .args(["status", "-o", "json", "--socket"])
        .arg(socket)
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).context("status json")?;
    let entries = |map: &str| {
        status["maps"]
            .as_array()?
            .iter()
            .find(|m| m["map"] == map)?["entries"]
            .as_u64()
    };
    let mut maps: Vec<(String, Option<u64>, u64)> = status["memory"]
        .as_array()
        .context("status -o json has no memory")?
        .iter()
        .map(|m| {
            let map = m["map"].as_str().unwrap_or_default().to_owned();
            let bytes = m["bytes"].as_u64().unwrap_or_default();
            (map.clone(), entries(&map), bytes)
        })
        .collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.2));
    Ok(maps)
}

fn print(rows: &[Row]) {
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "control plane at scale: release build; every edge between a distinct domain pair; \
         ratios are to `policy check` of the same file in the same run\n"
    );
    println!(
        "| domains / edges | file MB | check s | start s (ratio) | apply s (ratio) | apply µs/edge | kernel side ms | RSS start / after apply MB | slowest status during apply ms (n) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} / {} | {:.1} | {:.2} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} ({}) |",
            r.size.domains,
            r.size.edges,
            r.file_mb,
            secs(r.check),
            secs(r.start),
            secs(r.start) / secs(r.check),
            secs(r.apply),
            secs(r.apply) / secs(r.check),
            secs(r.apply) * 1e6 / r.size.edges as f64,
            r.kernel_ms,
            r.rss_start_mb,
            r.rss_apply_mb,
            secs(r.slowest_status) * 1e3,
            r.statuses,
        );
    }
    if let Some(last) = rows.last() {
        let total: u64 = last.maps.iter().map(|m| m.2).sum();
        println!(
            "\nkernel memory of every pinned map at {} domains / {} edges, after the apply: \
             {:.1} MB (entries: the slot in force, for the policy maps)\n",
            last.size.domains,
            last.size.edges,
            total as f64 / 1e6
        );
        println!("| map | entries | MB |\n|---|---|---|");
        for (map, entries, bytes) in &last.maps {
            let entries = entries.map_or_else(String::new, |n| n.to_string());
            println!("| {map} | {entries} | {:.2} |", *bytes as f64 / 1e6);
        }
    }
}
