//! What each of the daemon's programs costs per operation of a workload (issue 18's
//! per-program figures), from the kernel's own accounting: with `BPF_ENABLE_STATS` held
//! open, every program run adds its duration and a count to the program's `run_time_ns` and
//! `run_cnt`. Only the programs of the bench's own daemon are read (by the ids in its
//! fdinfo), so another daemon on the machine, a test suite's say, does not count.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};

/// Run time (ns) and run count per program name, and under [`DAEMON`] the daemon's own CPU
/// time (ns, every thread) and 1.
pub type Costs = BTreeMap<String, (u64, u64)>;

/// The key of the daemon's own CPU time in [`Costs`]: what it spends on events, above all.
pub const DAEMON: &str = "daemon (CPU, all threads)";

/// The kernel's accounting of program run time, on while this lives (it costs two clock
/// reads per program run, so it is on only while the enforcer's cases run).
pub struct Recording {
    _stats: OwnedFd,
    programs: Vec<u32>,
    pid: u32,
}

impl Recording {
    /// Starts the accounting for the programs the process `pid` holds.
    pub fn start(pid: u32) -> Result<Self> {
        let stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
        Ok(Self {
            _stats: stats,
            programs: program_ids(pid)?,
            pid,
        })
    }

    /// The programs' totals so far.
    pub fn totals(&self) -> Result<Costs> {
        let mut costs = Costs::new();
        for info in loaded_programs() {
            let info = info.context("reading a loaded program's info")?;
            if !self.programs.contains(&info.id()) {
                continue;
            }
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let entry = costs.entry(name).or_default();
            entry.0 += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            entry.1 += info.run_count();
        }
        costs.insert(DAEMON.to_owned(), (cpu_ns(self.pid)?, 1));
        Ok(costs)
    }
}

/// What ran between two totals.
pub fn since(before: &Costs, after: &Costs) -> Costs {
    after
        .iter()
        .map(|(name, &(ns, runs))| {
            let (ns0, runs0) = before.get(name).copied().unwrap_or_default();
            // A daemon thread that ended between the two took its time with it.
            (
                name.clone(),
                (ns.saturating_sub(ns0), runs.saturating_sub(runs0)),
            )
        })
        .collect()
}

/// Returns once the daemon `pid` has used under 1% of a CPU over a whole second (at most
/// after `SETTLE_LIMIT`), with what it used in that last second, in ns. A daemon that has
/// just started still frees what its start-up parsed and runs its first rounds of duties;
/// at 10,000 domains, charged to the first case measured, that read as eight times the
/// daemon's cost per operation of the second case (BENCHMARKS.md, "The daemon column").
pub fn settle(pid: u32) -> Result<u64> {
    const WINDOW: Duration = Duration::from_secs(1);
    const SETTLE_LIMIT: Duration = Duration::from_secs(30);
    let start = Instant::now();
    let mut before = cpu_ns(pid)?;
    loop {
        std::thread::sleep(WINDOW);
        let now = cpu_ns(pid)?;
        let used = now.saturating_sub(before);
        if used < 10_000_000 || start.elapsed() >= SETTLE_LIMIT {
            return Ok(used);
        }
        before = now;
    }
}

/// The CPU time of every thread of `pid` so far, in ns: the first field of each thread's
/// `schedstat` (clock ticks in `stat` are too coarse for a few seconds of events).
fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A thread that ended meanwhile took its time with it; the rest still count.
        let Ok(text) = fs::read_to_string(entry?.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// The ids of the programs whose descriptors `pid` holds (`prog_id:` in their fdinfo).
fn program_ids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|id| id.trim().parse::<u32>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
