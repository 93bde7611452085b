//! `cargo xtask bench connect`: TCP connect + accept per second over loopback from a bound
//! cgroup, first with no programs attached (the baseline), then with enforcement and a policy
//! of 1,000 domains and 10,000 edges, for a same-domain flow and an edge-allowed cross-domain
//! flow. Each result is printed as a ratio to the baseline measured in the same run.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::workspace_root;

#[derive(Subcommand)]
pub enum Bench {
    /// TCP connect + accept rate, baseline vs enforced.
    Connect {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Interleaved rounds (the median of each measurement is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

const DOMAINS: usize = 1_000;
const EDGES: usize = 10_000;
const PORT: u16 = 31_000;

pub fn run(bench: Bench) -> Result<()> {
    let Bench::Connect { seconds, rounds } = bench;
    let env = BenchEnv::new()?;
    let result = connect(&env, seconds, rounds.max(1));
    env.cleanup();
    result
}

struct BenchEnv {
    cgroup_mount: PathBuf,
    root: String,
    dir: PathBuf,
    pin_dir: PathBuf,
}

impl BenchEnv {
    fn new() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/mounts")?;
        let cgroup_mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .context("no cgroup2 mount")?;
        let id = std::process::id();
        let root = format!("/enforcer-bench-{id}");
        for sub in ["prod", "staging"] {
            fs::create_dir_all(cgroup_mount.join(&root[1..]).join(sub))?;
        }
        let dir = std::env::temp_dir().join(format!("enforcer-bench-{id}"));
        fs::create_dir_all(&dir)?;
        Ok(Self {
            cgroup_mount,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/enforcer-bench-{id}")),
            root,
            dir,
        })
    }

    fn cgroup_dir(&self, sub: &str) -> PathBuf {
        self.cgroup_mount.join(&self.root[1..]).join(sub)
    }

    fn cleanup(&self) {
        let _ = Command::new(bin("enforcer"))
            .args(["teardown", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .status();
        let root = self.cgroup_mount.join(&self.root[1..]);
        let _ = fs::write(root.join("cgroup.kill"), "1");
        for sub in ["prod", "staging", ""] {
            for _ in 0..100 {
                if fs::remove_dir(root.join(sub)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn connect(env: &BenchEnv, seconds: f64, rounds: usize) -> Result<()> {
    let _server = Killed(spawn_in(
        &env.cgroup_dir("prod"),
        &["listen", "127.0.0.1", &PORT.to_string()],
    )?);
    let policy = env.dir.join("bench-policy.yaml");
    fs::write(&policy, big_policy(&env.root))?;
    // Rounds interleave the three measurements, so slow drift of a shared machine affects
    // baseline and enforced figures alike instead of whichever was measured last.
    let (mut base, mut same, mut cross) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: baseline (no programs attached)");
        base.push(rate(&env.cgroup_dir("prod"), seconds)?);
        let daemon = Killed(start_daemon(env, &policy)?);
        eprintln!("round {round}/{rounds}: enforced, same domain");
        same.push(rate(&env.cgroup_dir("prod"), seconds)?);
        eprintln!("round {round}/{rounds}: enforced, cross-domain through an edge");
        cross.push(rate(&env.cgroup_dir("staging"), seconds)?);
        drop(daemon);
        let out = Command::new(bin("enforcer"))
            .args(["teardown", "--pin-dir"])
            .arg(&env.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!("teardown failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let (base, same, cross) = (median(base), median(same), median(cross));
    let mut report = String::new();
    writeln!(
        report,
        "connect+accept per second over loopback, median of {rounds} interleaved rounds of {seconds}s; policy {DOMAINS} domains, {EDGES} edges"
    )?;
    writeln!(report, "| flow | connections/s | ratio to baseline |")?;
    writeln!(report, "|---|---|---|")?;
    writeln!(
        report,
        "| baseline, no programs attached | {base:.0} | 1.00 |"
    )?;
    writeln!(
        report,
        "| enforced, same domain | {same:.0} | {:.2} |",
        same / base
    )?;
    writeln!(
        report,
        "| enforced, cross-domain via edge | {cross:.0} | {:.2} |",
        cross / base
    )?;
    print!("{report}");
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// 1,000 domains; 10,000 edges between distinct pairs, one of which (staging -> prod) opens
/// the benchmark port. Domain 0 is prod, bound to ROOT/prod; domain 1 is staging.
fn big_policy(root: &str) -> String {
    let name = |i: usize| format!("d{i}.bench.example.org");
    let mut p =
        String::from("version: 1\ndefaults: {unlabeled: allow, external: allow}\ndomains:\n");
    for i in 0..DOMAINS {
        let _ = writeln!(p, "  - name: {}", name(i));
        match i {
            0 => p.push_str(&format!("    cgroups: ['{root}/prod']\n")),
            1 => p.push_str(&format!("    cgroups: ['{root}/staging']\n")),
            _ => {}
        }
    }
    p.push_str("federation:\n");
    let edge = |p: &mut String, from: usize, to: usize, port: u16| {
        let _ = writeln!(
            p,
            "  - {{from: {}, to: {}, protocol: tcp, ports: [{port}], owner: bench, reason: bench}}",
            name(from),
            name(to)
        );
    };
    edge(&mut p, 1, 0, PORT);
    for i in 1..EDGES {
        let from = i % DOMAINS;
        let to = (from + 1 + i / DOMAINS) % DOMAINS;
        edge(&mut p, from, to, 40_000 + (i % 1000) as u16);
    }
    p
}

fn start_daemon(env: &BenchEnv, policy: &Path) -> Result<Child> {
    let mut child = Command::new(bin("enforcer"))
        .arg("daemon")
        .arg("--policy")
        .arg(policy)
        .arg("--cgroup-root")
        .arg(&env.root)
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .arg("--socket")
        .arg(env.dir.join("control.sock"))
        .arg("--state-dir")
        .arg(env.dir.join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the daemon")?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.contains("control socket") {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(child);
        }
        if line.contains("error") {
            bail!("daemon: {line}");
        }
    }
    bail!("the daemon exited before it was ready")
}

fn rate(cgroup: &Path, seconds: f64) -> Result<f64> {
    let out = spawn_in(
        cgroup,
        &[
            "connect-loop",
            "127.0.0.1",
            &PORT.to_string(),
            &seconds.to_string(),
        ],
    )?
    .wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("rate ")
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("probe said {text:?}"))
}

fn spawn_in(cgroup: &Path, args: &[&str]) -> Result<Child> {
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = Command::new(bin("enforcer-probe"));
    cmd.args(args).stdout(Stdio::piped());
    // SAFETY: only a write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, "0"));
    }
    let mut child = cmd.spawn().context("starting the probe")?;
    if args[0] == "listen" {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("listener failed: {line}");
        }
    }
    Ok(child)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}
