//! `cargo xtask bench apply` measures the control plane at scale (see `bench/apply.rs`);
//! `cargo xtask bench fleet` how quickly pod addresses travel between the fleet's nodes (see
//! `tests/src/bin/enforcer-fleet-bench.rs`, which reuses the tests' etcd cluster and hosts).
//! `cargo xtask bench connect | udp-send | ingress | rr | stream`: rates over loopback (and,
//! for ingress, over a veth pair) from and to bound cgroups, first with no programs attached
//! (the baseline), then with enforcement and a policy of `--scale` domains (1k: 1,000
//! domains and 10,000 edges; 10k: 10,000 and 100,000), each domain bound to a cgroup of its
//! own. With `--peers`, the same workloads also run under an nftables rule set of the same
//! semantics (`bench/nftables.rs`); with `--floor`, under programs that do nothing at the
//! enforcer's hooks (`bench/floor.rs`), which is what the hooks alone cost. Rounds interleave
//! the configurations; each figure is divided by the baseline of its own round, and the
//! median of those ratios is printed with their range. Pairing by round keeps a shared machine's drift (which moves the baseline by
//! ±20% between rounds here) out of the ratio.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::workspace_root;

mod apply;
mod floor;
mod nftables;
mod program_stats;

#[derive(Subcommand)]
pub enum Bench {
    /// TCP connect + accept rate, baseline vs enforced.
    Connect(Run),
    /// Unconnected UDP sendto() rate from a bound cgroup to a bound sink, baseline vs enforced.
    UdpSend(UdpRun),
    /// UDP datagrams a bound socket receives from an unlabeled sender outside the enforced
    /// subtree (so only the ingress program runs per datagram), over loopback and over veth.
    Ingress(UdpRun),
    /// Start-up, `policy apply` and memory at 1k to 10k domains and 10k to 100k edges.
    Apply(apply::Sizes),
    /// Transactions per second of 1-byte requests and responses on one TCP connection.
    Rr(Run),
    /// Bytes per second of one bulk TCP connection.
    Stream(Run),
    /// How quickly a new pod's address becomes known on the fleet's other nodes (a real etcd
    /// cluster and two daemons; `tests/src/bin/enforcer-fleet-bench.rs`).
    Fleet(FleetRun),
}

#[derive(Args, Clone, Copy)]
pub struct FleetRun {
    /// Pods started one after another, each timed on its own.
    #[arg(long, default_value_t = 10)]
    pods: u8,
}

#[derive(Args, Clone, Copy)]
pub struct Run {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Interleaved rounds (medians over rounds are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Policy size: `1k` (1,000 domains, 10,000 edges) or `10k` (10,000 domains, 100,000
    /// edges).
    #[arg(long, value_enum, default_value = "1k")]
    scale: Scale,
    /// Also run every workload under an nftables rule set with the same semantics.
    #[arg(long)]
    peers: bool,
    /// Also run every workload under programs that do nothing at the enforcer's hooks: the
    /// cost of the hooks themselves, below which no program can go.
    #[arg(long)]
    floor: bool,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Scale {
    #[value(name = "1k")]
    Thousand,
    #[value(name = "10k")]
    TenThousand,
}

impl Scale {
    fn domains(self) -> usize {
        match self {
            Self::Thousand => 1_000,
            Self::TenThousand => 10_000,
        }
    }

    /// Ten edges per domain, every one between a distinct pair of domains.
    fn edges(self) -> usize {
        self.domains() * 10
    }
}

#[derive(Args, Clone, Copy)]
pub struct UdpRun {
    #[command(flatten)]
    run: Run,
    /// The sink sleeps in blocking recv() calls, as a typical server does, instead of polling
    /// a non-blocking socket; a sink that keeps up then costs the sender a wake-up per datagram.
    #[arg(long)]
    blocking_sink: bool,
}

const PORT: u16 = 31_000;
/// A port no edge opens: what the start-of-run check must see refused.
const FORBIDDEN_PORT: u16 = 31_001;
/// A second port of the staging -> prod edge: the start-of-run check's allowed flow, which
/// must not collide with a workload's server on PORT.
const CHECK_PORT: u16 = 31_002;
const LOOPBACK: &str = "127.0.0.1";
const PROBE: &str = "enforcer-probe";
const FLOOD: &str = "enforcer-flood";
/// The bytes `enforcer-flood` sends per datagram.
const PAYLOAD_BYTES: usize = 64;
const FLOOR_LABEL: &str = "floor: no-op programs at the enforcer's hooks";

pub fn run(bench: Bench) -> Result<()> {
    let env = BenchEnv::new()?;
    let result = match bench {
        Bench::Connect(run) => connect(&env, run),
        Bench::UdpSend(udp) => udp_send(&env, udp),
        Bench::Ingress(udp) => ingress(&env, udp),
        Bench::Apply(sizes) => apply::run(&env, &sizes),
        Bench::Rr(run) => rr(&env, run),
        Bench::Stream(run) => stream(&env, run),
        Bench::Fleet(run) => fleet(run),
    };
    env.cleanup();
    result
}

/// Runs `enforcer-fleet-bench`, which needs none of the other workloads' set-up.
fn fleet(run: FleetRun) -> Result<()> {
    let status = Command::new(bin("enforcer-fleet-bench"))
        .arg(run.pods.to_string())
        .status()
        .context("starting enforcer-fleet-bench")?;
    if !status.success() {
        bail!("enforcer-fleet-bench failed: {status}");
    }
    Ok(())
}

fn connect(env: &BenchEnv, run: Run) -> Result<()> {
    let port = PORT.to_string();
    let listener = Place::Cgroup(env.cgroup_dir("prod"));
    let _server = Ready::spawn(&listener, PROBE, &["listen", LOOPBACK, &port], "listening")?;
    let connect_loop = |cgroup: &str| {
        let args = ["connect-loop", LOOPBACK, &port, &run.seconds.to_string()];
        let out = output(spawn(&Place::Cgroup(env.cgroup_dir(cgroup)), PROBE, &args)?)?;
        Ok(vec![field(&out, "rate")?])
    };
    let cases = client_cases(connect_loop, run);
    let measured = measure(env, "tcp", &cases, run)?;
    let title = format!(
        "connect+accept per second over loopback, {}",
        run.describe()
    );
    print_table(&title, &[("connections/s", 0)], &cases, &measured);
    Ok(())
}

/// The sender's rate is the figure; the sink is also in the enforced subtree, so every
/// enforced datagram passes sendmsg4, egress and the sink's ingress program.
fn udp_send(env: &BenchEnv, udp: UdpRun) -> Result<()> {
    let sink = Place::Cgroup(env.cgroup_dir("prod"));
    let flood = |cgroup: &str| {
        let flow = udp_flood(&sink, &Place::Cgroup(env.cgroup_dir(cgroup)), LOOPBACK, udp)?;
        Ok(vec![flow.sent, flow.received, flow.lost])
    };
    let cases = client_cases(flood, udp.run);
    let measured = measure(env, "udp", &cases, udp.run)?;
    let title = format!(
        "unconnected UDP sendto() of {PAYLOAD_BYTES}-byte datagrams over loopback, sink in prod \
         (enforced: sendmsg4 + egress at the sender, ingress at the sink), {}",
        udp.describe()
    );
    let columns = [("sent/s", 0), ("received/s", 0), ("lost %", 2)];
    print_table(&title, &columns, &cases, &measured);
    Ok(())
}

/// One byte there and back on one connection, as fast as the two can take turns.
fn rr(env: &BenchEnv, run: Run) -> Result<()> {
    let transactions = |cgroup: &str| {
        let (sent, _) = tcp_pair(env, cgroup, ["tcp-echo", "tcp-rr"], run.seconds)?;
        Ok(vec![field(&sent, "rate")?])
    };
    let cases = client_cases(transactions, run);
    let measured = measure(env, "tcp", &cases, run)?;
    let title = format!(
        "1-byte request/response transactions per second on one TCP connection over loopback \
         (server in prod), {}",
        run.describe()
    );
    print_table(&title, &[("transactions/s", 0)], &cases, &measured);
    Ok(())
}

/// One bulk-transfer connection, writes of 128 KiB.
fn stream(env: &BenchEnv, run: Run) -> Result<()> {
    let bytes = |cgroup: &str| {
        let (sent, _) = tcp_pair(env, cgroup, ["tcp-drain", "tcp-bulk"], run.seconds)?;
        Ok(vec![field(&sent, "rate")? / 1e6])
    };
    let cases = client_cases(bytes, run);
    let measured = measure(env, "tcp", &cases, run)?;
    let title = format!(
        "one bulk TCP connection over loopback (receiver in prod), {}",
        run.describe()
    );
    print_table(&title, &[("MB/s", 0)], &cases, &measured);
    Ok(())
}

/// Runs `modes[0]` as a server in prod and `modes[1]` as its client in `cgroup` for
/// `seconds`; returns what the client and the server printed.
fn tcp_pair(
    env: &BenchEnv,
    cgroup: &str,
    modes: [&str; 2],
    seconds: f64,
) -> Result<(String, String)> {
    let (port, seconds) = (PORT.to_string(), seconds.to_string());
    let server = Ready::spawn(
        &Place::Cgroup(env.cgroup_dir("prod")),
        FLOOD,
        &[modes[0], LOOPBACK, &port, &seconds],
        "listening",
    )?;
    let client = spawn(
        &Place::Cgroup(env.cgroup_dir(cgroup)),
        FLOOD,
        &[modes[1], LOOPBACK, &port, &seconds],
    )?;
    let sent = output(client)?;
    Ok((sent, server.finish()?))
}

/// The cases of a client talking to a server in prod: baseline and same-domain with the
/// client in prod, cross-domain (through the policy's one staging -> prod edge) from staging;
/// with `floor`, the client in staging under no-op programs; with `peers`, the two enforced
/// ones again under nftables. `take` measures with the client in the named cgroup.
fn client_cases<'a>(
    take: impl Fn(&str) -> Result<Vec<f64>> + Copy + 'a,
    run: Run,
) -> Vec<Case<'a>> {
    let mut cases = vec![Case::new(
        "baseline, no programs attached",
        By::Nothing,
        move || take("prod"),
    )];
    if run.floor {
        cases.push(Case::new(FLOOR_LABEL, By::Floor, move || take("staging")));
    }
    cases.extend([
        Case::new("enforcer, same domain", By::Enforcer, move || take("prod")),
        Case::new("enforcer, cross-domain via edge", By::Enforcer, move || {
            take("staging")
        }),
    ]);
    if run.peers {
        cases.push(Case::new(
            "nftables, same domain",
            By::Nftables,
            move || take("prod"),
        ));
        cases.push(Case::new(
            "nftables, cross-domain via set element",
            By::Nftables,
            move || take("staging"),
        ));
    }
    cases
}

/// The receiver's rate is the figure; the sender runs outside the enforced subtree (in the
/// bench's own cgroup), unlabeled, so only the sink's ingress program runs per datagram.
fn ingress(env: &BenchEnv, udp: UdpRun) -> Result<()> {
    let remote = RemoteHost::new()?;
    let sink = Place::Cgroup(env.cgroup_dir("prod"));
    let flood = |sender: &Place, addr: &str| {
        let flow = udp_flood(&sink, sender, addr, udp)?;
        Ok(vec![flow.received, flow.sent, flow.lost])
    };
    let via_loopback = || flood(&Place::Outside, LOOPBACK);
    let via_veth = || flood(&Place::Netns(&remote.name), &remote.host_v4);
    let mut cases = vec![
        Case::new(
            "loopback: baseline, no programs attached",
            By::Nothing,
            via_loopback,
        ),
        Case::new(
            "loopback: enforcer, unlabeled sender",
            By::Enforcer,
            via_loopback,
        ),
    ];
    if udp.run.floor {
        cases.insert(1, Case::new("loopback: floor", By::Floor, via_loopback));
    }
    if udp.run.peers {
        cases.push(Case::new(
            "loopback: nftables, unlabeled sender",
            By::Nftables,
            via_loopback,
        ));
    }
    cases.push(Case::new(
        "veth: baseline, no programs attached",
        By::Nothing,
        via_veth,
    ));
    if udp.run.floor {
        cases.push(Case::new("veth: floor", By::Floor, via_veth));
    }
    cases.push(Case::new(
        "veth: enforcer, external sender",
        By::Enforcer,
        via_veth,
    ));
    if udp.run.peers {
        cases.push(Case::new(
            "veth: nftables, external sender",
            By::Nftables,
            via_veth,
        ));
    }
    let measured = measure(env, "udp", &cases, udp.run)?;
    let title = format!(
        "UDP datagrams of {PAYLOAD_BYTES} bytes received by a socket in prod from a sender \
         outside the enforced subtree (only ingress runs per datagram), {}",
        udp.describe()
    );
    let columns = [("received/s", 0), ("sent/s", 0), ("lost %", 2)];
    print_table(&title, &columns, &cases, &measured);
    Ok(())
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{} interleaved rounds of {}s; policy {} domains, {} edges",
            self.rounds,
            self.seconds,
            self.scale.domains(),
            self.scale.edges()
        )
    }
}

impl UdpRun {
    fn describe(&self) -> String {
        let sink = if self.blocking_sink {
            "sleeps in recv()"
        } else {
            "polls a non-blocking socket"
        };
        format!("{}; the sink {sink}", self.run.describe())
    }

    fn sink_mode(&self) -> &'static str {
        if self.blocking_sink {
            "udp-sink-blocking"
        } else {
            "udp-sink"
        }
    }
}

/// What enforces a case's flows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum By {
    /// Nothing: the baseline.
    Nothing,
    /// Programs that do nothing at the enforcer's hooks (`bench/floor.rs`).
    Floor,
    /// The enforcer daemon with the bench policy.
    Enforcer,
    /// The nftables rule set of `bench/nftables.rs`, same semantics.
    Nftables,
}

/// One measurement taken in every round: its row label, what enforces it, and how to take
/// it (values in table column order; the first one gets the ratio). A case is compared with
/// the nearest baseline listed before it.
struct Case<'a> {
    label: &'static str,
    by: By,
    take: Box<dyn Fn() -> Result<Vec<f64>> + 'a>,
}

impl<'a> Case<'a> {
    fn new(label: &'static str, by: By, take: impl Fn() -> Result<Vec<f64>> + 'a) -> Self {
        Self {
            label,
            by,
            take: Box::new(take),
        }
    }
}

/// Runs every case once per round: the baselines first, then the enforcer's cases under one
/// daemon start, then nftables's under one rule set, so slow drift of a shared machine
/// affects every configuration alike instead of whichever was measured last. Before the
/// first round, each enforcing configuration must refuse a forbidden flow and allow the
/// edge's. Returns each case's values, round by round.
/// Every case's values, round by round; for the enforcer's cases, the values of one more run
/// and what each program ran in it; and the seconds each measurement lasted.
struct Measured {
    samples: Vec<Vec<Vec<f64>>>,
    programs: Vec<Option<ProgramRun>>,
    /// The daemon's CPU in its last idle second before that run, in ns.
    idle_daemon: u64,
    seconds: f64,
}

/// A case's values in the run with the accounting on, and what each program ran in it.
type ProgramRun = (Vec<f64>, program_stats::Costs);

fn measure(env: &BenchEnv, protocol: &str, cases: &[Case], run: Run) -> Result<Measured> {
    let (domains, edges) = (run.scale.domains(), run.scale.edges());
    env.domain_cgroups(domains)?;
    let policy = env.dir.join("bench-policy.yaml");
    fs::write(&policy, big_policy(env, protocol, domains, edges))?;
    let rules = env.dir.join("bench-rules.nft");
    if run.peers {
        fs::write(&rules, nftables::rules(env, protocol, domains, edges)?)?;
    }
    let rounds = run.rounds.max(1);
    let mut samples = vec![Vec::new(); cases.len()];
    for round in 1..=rounds {
        for by in [By::Nothing, By::Floor, By::Enforcer, By::Nftables] {
            if !cases.iter().any(|c| c.by == by) {
                continue;
            }
            let daemon = (by == By::Enforcer)
                .then(|| Daemon::start(env, &policy))
                .transpose()?;
            let table = (by == By::Nftables)
                .then(|| nftables::Table::load(&rules))
                .transpose()?;
            let floor = (by == By::Floor)
                .then(|| floor::Floor::attach(&env.cgroup_dir("")))
                .transpose()?;
            if round == 1 && matches!(by, By::Enforcer | By::Nftables) {
                check_enforces(env, protocol, by)?;
            }
            for (case, samples) in cases.iter().zip(&mut samples) {
                if case.by == by {
                    let values = (case.take)()?;
                    eprintln!("round {round}/{rounds}: {}: {values:.1?}", case.label);
                    samples.push(values);
                }
            }
            drop((table, floor));
            daemon.map(Daemon::stop).transpose()?;
        }
    }
    let (programs, idle_daemon) = program_costs(env, &policy, cases)?;
    Ok(Measured {
        samples,
        programs,
        idle_daemon,
        seconds: run.seconds,
    })
}

/// One more run of each of the enforcer's cases, with the kernel's accounting of program run
/// time on: it adds two clock reads to every program run, so it stays out of the rounds
/// whose ratios are reported. The daemon first settles (`program_stats::settle`). Returns
/// what each program ran per case (nothing for the others) and the case's values in that run,
/// and what the settled daemon used in its last idle second (ns of CPU).
fn program_costs(
    env: &BenchEnv,
    policy: &Path,
    cases: &[Case],
) -> Result<(Vec<Option<ProgramRun>>, u64)> {
    if !cases.iter().any(|c| c.by == By::Enforcer) {
        return Ok((cases.iter().map(|_| None).collect(), 0));
    }
    let daemon = Daemon::start(env, policy)?;
    let idle = program_stats::settle(daemon.pid())?;
    eprintln!(
        "programs' run: the daemon settled, using {:.1} ms of CPU in its last idle second",
        idle as f64 / 1e6
    );
    let recording = program_stats::Recording::start(daemon.pid())?;
    let mut costs = Vec::new();
    for case in cases {
        if case.by != By::Enforcer {
            costs.push(None);
            continue;
        }
        let before = recording.totals()?;
        let values = (case.take)()?;
        eprintln!("programs' run: {}: {values:.1?}", case.label);
        costs.push(Some((
            values,
            program_stats::since(&before, &recording.totals()?),
        )));
    }
    drop(recording);
    daemon.stop()?;
    Ok((costs, idle))
}

/// Fails unless `by`, in place now, refuses staging -> prod on a port no edge opens and
/// allows it on the edge's port: a configuration that enforces nothing would make every
/// figure meaningless.
fn check_enforces(env: &BenchEnv, protocol: &str, by: By) -> Result<()> {
    let (serve, ask, allowed) = match protocol {
        "udp" => ("udp-listen", "udp-send", "replied hi"),
        _ => ("listen", "connect", "connected hi"),
    };
    for (port, want_allowed) in [(CHECK_PORT, true), (FORBIDDEN_PORT, false)] {
        let port = port.to_string();
        let _server = Ready::spawn(
            &Place::Cgroup(env.cgroup_dir("prod")),
            PROBE,
            &[serve, LOOPBACK, &port],
            "listening",
        )?;
        let client = spawn(
            &Place::Cgroup(env.cgroup_dir("staging")),
            PROBE,
            &[ask, LOOPBACK, &port],
        )?;
        let seen = String::from_utf8_lossy(&client.wait_with_output()?.stdout)
            .trim()
            .to_owned();
        if (seen == allowed) != want_allowed {
            bail!(
                "{by:?} does not enforce the bench policy: staging -> prod {protocol}/{port} \
                 gave {seen:?}, expected {}",
                if want_allowed {
                    "it allowed"
                } else {
                    "it refused"
                }
            );
        }
        eprintln!("check: {by:?}: staging -> prod {protocol}/{port}: {seen}");
    }
    Ok(())
}

fn column_medians(samples: &[Vec<f64>]) -> Vec<f64> {
    let columns = samples.first().map_or(0, Vec::len);
    (0..columns)
        .map(|c| median(samples.iter().map(|s| s[c]).collect()))
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A table column: its heading and the decimals its values are printed with.
type Column = (&'static str, usize);

/// A markdown table: the flow, the median of the first column, the median and range of its
/// per-round ratio to the baseline, the medians of the other columns.
/// Then, for each of the enforcer's cases, what each program cost per operation (one unit
/// of the first column times the measurement's seconds).
fn print_table(title: &str, columns: &[Column], cases: &[Case], measured: &Measured) {
    let samples = &measured.samples;
    let headings: Vec<_> = columns.iter().map(|c| c.0).collect();
    let mut report = format!(
        "{title}\n| flow | {} | ratio to baseline (median, range over rounds) |",
        headings[0]
    );
    for heading in &headings[1..] {
        report += &format!(" {heading} |");
    }
    report += &format!("\n|---|---|---|{}\n", "---|".repeat(columns.len() - 1));
    let mut baseline: &[Vec<f64>] = &[];
    for (case, rounds) in cases.iter().zip(samples) {
        if case.by == By::Nothing {
            baseline = rounds;
        }
        let ratios: Vec<f64> = rounds
            .iter()
            .zip(baseline)
            .map(|(r, b)| r[0] / b[0])
            .collect();
        report += &format!("| {} |", case.label);
        report += &cells(columns, &column_medians(rounds), &ratios);
    }
    for (case, programs) in cases.iter().zip(&measured.programs) {
        if let Some((values, costs)) = programs {
            let operations = values[0] * measured.seconds;
            report += &program_table(case.label, columns[0].0, operations, costs);
        }
    }
    if measured.programs.iter().any(Option::is_some) {
        report += &format!(
            "\nBefore that run the daemon settled (its start-up done): {:.1} ms of CPU in its last \
             idle second.\n",
            measured.idle_daemon as f64 / 1e6
        );
    }
    print!("{report}");
}

/// Per program: runs per operation, ns per run and ns per operation; then all of them.
fn program_table(label: &str, unit: &str, operations: f64, costs: &program_stats::Costs) -> String {
    let operations = operations.max(1.0);
    let mut table = format!(
        "\nprograms (bpf_stats, one more run with the accounting on), {label}; an operation is \
         one of `{unit}`\n| program | runs per operation | ns per run | ns per operation |\n\
         |---|---|---|---|\n"
    );
    let programs = costs
        .iter()
        .filter(|(name, c)| c.1 > 0 && *name != program_stats::DAEMON);
    let mut total = 0;
    for (name, &(ns, runs)) in programs {
        total += ns;
        table += &format!(
            "| {name} | {:.2} | {:.0} | {:.0} |\n",
            runs as f64 / operations,
            ns as f64 / runs.max(1) as f64,
            ns as f64 / operations
        );
    }
    table += &format!("| all programs | | | {:.0} |\n", total as f64 / operations);
    if let Some(&(ns, _)) = costs.get(program_stats::DAEMON) {
        table += &format!(
            "| {} | | | {:.0} |\n",
            program_stats::DAEMON,
            ns as f64 / operations
        );
    }
    table
}

/// One row's cells after the label, the ratios after the first value.
fn cells(columns: &[Column], values: &[f64], ratios: &[f64]) -> String {
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut row = String::new();
    for (i, (value, (_, decimals))) in values.iter().zip(columns).enumerate() {
        row += &format!(" {value:.decimals$} |");
        if i == 0 {
            row += &format!(" {:.2} ({low:.2}-{high:.2}) |", median(ratios.to_vec()));
        }
    }
    row + "\n"
}

/// `domains` domains, each bound to its cgroup; `edges` edges between distinct pairs, one of
/// which (staging -> prod) opens the benchmark port (and the check's) for `protocol`. Domain 0 is prod, bound to
/// ROOT/prod; domain 1 is staging.
fn big_policy(env: &BenchEnv, protocol: &str, domains: usize, edges: usize) -> String {
    let mut p =
        String::from("version: 1\ndefaults: {unlabeled: allow, external: allow}\ndomains:\n");
    for i in 0..domains {
        let _ = writeln!(
            p,
            "  - {{name: {}, cgroups: ['{}/{}']}}",
            domain_name(i),
            env.root,
            domain_cgroup(i)
        );
    }
    p.push_str("federation:\n");
    for edge in bench_edges(protocol, domains, edges) {
        let _ = writeln!(
            p,
            "  - {{from: {}, to: {}, protocol: {}, ports: {:?}, owner: bench, reason: bench}}",
            domain_name(edge.from),
            domain_name(edge.to),
            edge.protocol,
            edge.ports
        );
    }
    p
}

fn domain_name(i: usize) -> String {
    format!("d{i}.bench.example.org")
}

/// The cgroup of domain `i`, under the bench's root.
fn domain_cgroup(i: usize) -> String {
    match i {
        0 => "prod".into(),
        1 => "staging".into(),
        _ => format!("d{i}"),
    }
}

struct BenchEdge {
    from: usize,
    to: usize,
    protocol: &'static str,
    ports: Vec<u16>,
}

/// The bench policy's edges, by domain index: staging -> prod on PORT and CHECK_PORT, then
/// edges between distinct pairs on ports 40000-40999.
fn bench_edges(protocol: &str, domains: usize, edges: usize) -> Vec<BenchEdge> {
    let protocol = if protocol == "udp" { "udp" } else { "tcp" };
    let mut list = vec![BenchEdge {
        from: 1,
        to: 0,
        protocol,
        ports: vec![PORT, CHECK_PORT],
    }];
    for i in 1..edges {
        let from = i % domains;
        list.push(BenchEdge {
            from,
            to: (from + 1 + i / domains) % domains,
            protocol: "tcp",
            ports: vec![40_000 + (i % 1000) as u16],
        });
    }
    list
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

    /// `enforcer daemon` on the bench's subtree and pins, its log piped.
    fn daemon_command(&self, policy: &Path, socket: &Path, state: &Path) -> Command {
        let mut cmd = Command::new(bin("enforcer"));
        cmd.arg("daemon")
            .arg("--policy")
            .arg(policy)
            .arg("--cgroup-root")
            .arg(&self.root)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .stderr(Stdio::piped());
        cmd
    }

    fn cgroup_dir(&self, sub: &str) -> PathBuf {
        self.cgroup_mount.join(&self.root[1..]).join(sub)
    }

    /// Creates the cgroup of every domain up to `domains` (prod and staging exist already).
    fn domain_cgroups(&self, domains: usize) -> Result<()> {
        for i in 2..domains {
            let dir = self.cgroup_dir(&domain_cgroup(i));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Removes enforcement: detaches the programs and unpins the maps.
    fn teardown(&self) -> Result<()> {
        let out = Command::new(bin("enforcer"))
            .args(["teardown", "--pin-dir"])
            .arg(&self.pin_dir)
            .output()
            .context("running enforcer teardown")?;
        if !out.status.success() {
            bail!("teardown failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn cleanup(&self) {
        let _ = self.teardown();
        let root = self.cgroup_dir("");
        let _ = fs::write(root.join("cgroup.kill"), "1");
        let subs = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path());
        for dir in subs.chain([root.clone()]) {
            // A killed cgroup is removable once its last process has exited.
            for _ in 0..100 {
                if fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The daemon enforcing the bench policy on the bench's cgroup subtree.
struct Daemon<'a> {
    env: &'a BenchEnv,
    child: Killed,
}

impl<'a> Daemon<'a> {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Starts the daemon and returns once it serves its control socket (programs attached).
    fn start(env: &'a BenchEnv, policy: &Path) -> Result<Self> {
        let mut child = env
            .daemon_command(
                policy,
                &env.dir.join("control.sock"),
                &env.dir.join("state"),
            )
            .spawn()
            .context("starting the daemon")?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let child = Killed(child);
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("control socket") {
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(Self { env, child });
            }
            if line.contains("error") {
                bail!("daemon: {line}");
            }
        }
        bail!("the daemon exited before it was ready")
    }

    /// Stops the daemon and removes the enforcement it left pinned.
    fn stop(self) -> Result<()> {
        let env = self.env;
        drop(self);
        env.teardown()
    }
}

struct Flow {
    /// Datagrams per second the sender's `sendto()` calls succeeded.
    sent: f64,
    /// Datagrams per second the sink's application received.
    received: f64,
    /// Percentage of the datagrams sent that the sink never received.
    lost: f64,
}

/// Floods a UDP sink at `addr:PORT` in `sink` from one sender at `sender` for `seconds`.
/// The sender starts only once the sink has bound its socket; the sink, allowed a second
/// more, stops once the sender has stopped, so it sees every datagram the kernel delivered.
fn udp_flood(sink: &Place, sender: &Place, addr: &str, udp: UdpRun) -> Result<Flow> {
    let (port, seconds) = (PORT.to_string(), udp.run.seconds);
    let sink_args = [udp.sink_mode(), addr, &port, &(seconds + 1.0).to_string()];
    let sink = Ready::spawn(sink, FLOOD, &sink_args, "listening")?;
    let blast = ["udp-blast", addr, &port, &seconds.to_string()];
    let sent = output(spawn(sender, FLOOD, &blast)?)?;
    let received = sink.finish()?;
    let (sent_n, received_n) = (field(&sent, "sent")?, field(&received, "received")?);
    Ok(Flow {
        sent: field(&sent, "rate")?,
        received: field(&received, "rate")?,
        lost: 100.0 * (sent_n - received_n) / sent_n.max(1.0),
    })
}

/// Where a workload process runs.
enum Place<'a> {
    /// In this cgroup (moved there between fork and exec, before it creates any socket).
    Cgroup(PathBuf),
    /// Where the bench itself runs: outside the enforced subtree.
    Outside,
    /// Outside the enforced subtree, in this network namespace.
    Netns(&'a str),
}

/// Starts workload binary `name` with `args` at `place`, its stdout piped.
fn spawn(place: &Place, name: &str, args: &[&str]) -> Result<Child> {
    let mut cmd = match place {
        Place::Netns(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin(name));
            cmd
        }
        _ => Command::new(bin(name)),
    };
    cmd.args(args).stdout(Stdio::piped());
    if let Place::Cgroup(cgroup) = place {
        let procs = cgroup.join("cgroup.procs");
        // SAFETY: only a write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, "0"));
        }
    }
    cmd.spawn().with_context(|| format!("starting {name}"))
}

/// Waits for a workload to exit and returns its stdout; fails when it failed.
fn output(child: Child) -> Result<String> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("workload failed: {}", text.trim());
    }
    Ok(text)
}

/// The number after the word `name` in a workload's output (`rate 123`).
fn field(text: &str, name: &str) -> Result<f64> {
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == name)
        .and(words.next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in workload output {text:?}"))
}

/// A workload that has printed its readiness line; killed when dropped.
struct Ready {
    child: Killed,
    stdout: BufReader<ChildStdout>,
}

impl Ready {
    fn spawn(place: &Place, name: &str, args: &[&str], ready: &str) -> Result<Self> {
        let mut child = Killed(spawn(place, name, args)?);
        let mut stdout = BufReader::new(child.0.stdout.take().context("piped stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != ready {
            bail!("{name} {} did not start: {line:?}", args[0]);
        }
        Ok(Self { child, stdout })
    }

    /// Waits for the workload to exit and returns the rest of its output.
    fn finish(mut self) -> Result<String> {
        let mut text = String::new();
        self.stdout.read_to_string(&mut text)?;
        if !self.child.0.wait()?.success() {
            bail!("workload failed: {}", text.trim());
        }
        Ok(text)
    }
}

/// A network namespace joined to this one by a veth pair: a sender there reaches a socket
/// here through a real device, not loopback. Removed when dropped.
struct RemoteHost {
    name: String,
    host_v4: String,
}

impl RemoteHost {
    fn new() -> Result<Self> {
        let id = std::process::id();
        // A subnet of its own per bench run (the end-to-end tests use 10.231.0.0/16).
        let subnet = format!("10.232.{}", id % 250 + 1);
        let name = format!("enfb{id}");
        let (host_if, remote_if) = (format!("{name}h"), format!("{name}r"));
        ip(&["netns", "add", &name])?;
        let remote = Self {
            name,
            host_v4: format!("{subnet}.1"),
        };
        let ns = remote.name.as_str();
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &remote_if,
        ])?;
        ip(&["link", "set", &remote_if, "netns", ns])?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            &remote_if,
        ])?;
        ip(&["-n", ns, "link", "set", &remote_if, "up"])?;
        Ok(remote)
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2 is needed)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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
