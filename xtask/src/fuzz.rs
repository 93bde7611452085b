//! `cargo xtask fuzz policy`: a time-bounded mutation loop against the policy parser, run in
//! this process. Inputs start from the example policies and the snippets in the policy crate's
//! tests, are mutated as bytes (so NUL and invalid UTF-8 reach the parser too) and checked by
//! oracles: no panic, no input slower than a bound, every diagnostic a one-line
//! `FILE:LINE:COL: message` inside the input, the same answer twice, and nothing after an
//! accepted policy silently ignored. A plain loop rather than cargo-fuzz, which needs nightly
//! sanitizers and would complicate CI; inputs that reach a new kind of outcome join the pool,
//! a crude stand-in for coverage feedback.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    os::unix::fs::FileExt as _,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use enforcer_policy::{Diagnostic, Policy};
use sha2::{Digest as _, Sha256};

use crate::workspace_root;

#[derive(Subcommand)]
pub enum Fuzz {
    /// Mutate policy files and check what the parser makes of them.
    Policy(PolicyRun),
}

#[derive(Args)]
pub struct PolicyRun {
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The PRNG seed; the default comes from the clock and is printed, so a run can be replayed.
    #[arg(long)]
    seed: Option<u64>,
    /// Extra seed inputs (every file in DIR); inputs that reach a new outcome are added to it,
    /// so successive runs start further along.
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
}

/// The file name diagnostics are labelled with.
const FILE: &str = "fuzz.yaml";
/// Bounds each input, and so the memory and time one run can take.
const MAX_INPUT: usize = 1 << 20;
/// An input slower than this is reported: a 10 MB policy parses in about a second, and inputs
/// are at most 1 MiB.
const SLOW: Duration = Duration::from_secs(2);
/// An input still running after this long is treated as a hang: the loop cannot be
/// interrupted in-process, so the watchdog reports it and ends the process.
const HANG: Duration = Duration::from_secs(30);
/// Keeps the pool, and so the loop's memory, bounded.
const MAX_POOL: usize = 4096;
/// Inputs written per finding signature; the rest are only counted.
const SAMPLES_PER_SIGNATURE: usize = 3;
/// Appended to an accepted policy, it must be refused: anything a parser silently drops (after
/// a NUL, a document end, …) is policy that would go unenforced.
const UNKNOWN_TAIL: &[u8] = b"\nzz_fuzz_unknown_key: 1\n";
/// The outcome of an input that parses.
const ACCEPTED: &str = "accepted";

pub fn run(fuzz: Fuzz) -> Result<()> {
    match fuzz {
        Fuzz::Policy(run) => policy(&run),
    }
}

fn policy(run: &PolicyRun) -> Result<()> {
    let seed = run.seed.unwrap_or_else(clock_seed);
    println!(
        "fuzz policy: seed {seed}, {} s (replay: cargo xtask fuzz policy --seed {seed} --seconds {})",
        run.seconds, run.seconds
    );
    let out = workspace_root().join("target/fuzz/policy");
    let findings = out.join("findings");
    fs::create_dir_all(&findings).with_context(|| format!("creating {}", findings.display()))?;
    let mut pool = seeds()?;
    if let Some(corpus) = &run.corpus {
        fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
        pool.extend(read_dir_files(corpus)?);
    }
    if pool.is_empty() {
        bail!("no seed inputs found");
    }
    pool.truncate(MAX_POOL);
    println!("{} seed inputs", pool.len());

    let current = out.join("current-input");
    let started = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    spawn_watchdog(
        Arc::clone(&started),
        epoch,
        current.clone(),
        findings.clone(),
    )?;
    quiet_panics();
    let fuzz = Loop {
        rng: Rng::new(seed),
        pool,
        corpus: run.corpus.clone(),
        current,
        started,
        epoch,
        deadline: epoch + Duration::from_secs(run.seconds),
        stats: Stats::default(),
        recorder: Recorder::new(findings),
    };
    // 2 MiB, the default for spawned threads: a daemon serving clients concurrently parses on
    // one, so a stack overflow there counts even if the main thread's 8 MiB would survive it.
    let (stats, recorder) = std::thread::Builder::new()
        .name("fuzz-policy".into())
        .stack_size(2 << 20)
        .spawn(move || fuzz.run())
        .context("starting the fuzz loop")?
        .join()
        .map_err(|_| anyhow::anyhow!("the fuzz loop panicked outside the parser"))??;

    let outcomes = out.join("outcomes.txt");
    let listed: String = stats.outcomes.iter().map(|o| format!("{o}\n")).collect();
    fs::write(&outcomes, listed).with_context(|| format!("writing {}", outcomes.display()))?;
    let secs = epoch.elapsed().as_secs_f64();
    println!(
        "{} runs in {secs:.0} s ({:.0} runs/s), {} accepted, {} distinct outcomes (listed in {}), \
         seed {seed}",
        stats.runs,
        stats.runs as f64 / secs,
        stats.accepted,
        stats.outcomes.len(),
        outcomes.display(),
    );
    println!(
        "{} inputs were not UTF-8 (each must be refused at its LINE:COL, as a policy reader \
         refuses it)",
        stats.not_utf8
    );
    if recorder.total == 0 {
        println!("no findings");
        return Ok(());
    }
    for (signature, count) in &recorder.signatures {
        println!("  {count:>6}  {signature}");
    }
    bail!(
        "{} findings ({} kinds), samples in {}",
        recorder.total,
        recorder.signatures.len(),
        recorder.dir.display()
    )
}

struct Loop {
    rng: Rng,
    pool: Vec<Vec<u8>>,
    corpus: Option<PathBuf>,
    /// Where the input being run is kept: a stack overflow or abort cannot be caught, and a
    /// hang cannot be interrupted, so it must already be on disk.
    current: PathBuf,
    /// When the input being run started, in milliseconds since `epoch`; 0 between inputs.
    started: Arc<AtomicU64>,
    epoch: Instant,
    deadline: Instant,
    stats: Stats,
    recorder: Recorder,
}

impl Loop {
    fn run(mut self) -> Result<(Stats, Recorder)> {
        let current = fs::File::create(&self.current)
            .with_context(|| format!("creating {}", self.current.display()))?;
        // The seeds themselves are run first, unmutated.
        let mut unmutated = self.pool.len();
        while Instant::now() < self.deadline {
            let input = if unmutated > 0 {
                unmutated -= 1;
                self.pool[unmutated].clone()
            } else {
                mutate(&mut self.rng, &self.pool)
            };
            current
                .set_len(0)
                .and_then(|()| current.write_all_at(&input, 0))
                .context("recording the current input")?;
            self.started
                .store(millis_since(self.epoch), Ordering::Relaxed);
            let began = Instant::now();
            let result = target(&input);
            let took = began.elapsed();
            self.started.store(0, Ordering::Relaxed);
            self.observe(input, result, took)?;
        }
        fs::remove_file(&self.current).ok();
        Ok((self.stats, self.recorder))
    }

    fn observe(
        &mut self,
        input: Vec<u8>,
        result: Result<String, Finding>,
        took: Duration,
    ) -> Result<()> {
        self.stats.runs += 1;
        if std::str::from_utf8(&input).is_err() {
            self.stats.not_utf8 += 1;
        }
        if took > SLOW {
            self.recorder.record(&input, &Finding::Slow(took))?;
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(finding) => return self.recorder.record(&input, &finding),
        };
        if outcome == ACCEPTED {
            self.stats.accepted += 1;
        }
        if self.stats.outcomes.insert(outcome) {
            if let Some(corpus) = &self.corpus {
                save(corpus, &input)?;
            }
            if self.pool.len() < MAX_POOL {
                self.pool.push(input);
            }
        }
        Ok(())
    }
}

/// The policy crate's entry points as every reader of a policy file uses them: bytes are
/// decoded (refused at their LINE:COL when not UTF-8), then parsed.
fn entry(bytes: &[u8]) -> Result<Policy, Vec<Diagnostic>> {
    let text = enforcer_policy::decode(FILE, bytes).map_err(|d| vec![d])?;
    enforcer_policy::parse(FILE, text)
}

/// Runs one input past every oracle. `Ok` carries a short description of the outcome (the
/// first diagnostic with its specifics blanked out), whose variety is the coverage signal.
fn target(bytes: &[u8]) -> Result<String, Finding> {
    let first = guarded(bytes)?;
    let second = guarded(bytes)?;
    if first != second {
        return Err(Finding::Nondeterministic(format!(
            "first: {}\nsecond: {}",
            summary(&first),
            summary(&second)
        )));
    }
    match first {
        Ok(_) => {
            let mut tailed = bytes.to_vec();
            tailed.extend_from_slice(UNKNOWN_TAIL);
            if guarded(&tailed)?.is_ok() {
                return Err(Finding::TailIgnored);
            }
            Ok(ACCEPTED.to_owned())
        }
        Err(diagnostics) => {
            let text = String::from_utf8_lossy(bytes);
            let Some(head) = diagnostics.first() else {
                return Err(Finding::NoDiagnostic);
            };
            for d in &diagnostics {
                check_diagnostic(&text, d).map_err(Finding::BadDiagnostic)?;
            }
            Ok(template(&head.message))
        }
    }
}

fn guarded(bytes: &[u8]) -> Result<Result<Policy, Vec<Diagnostic>>, Finding> {
    GUARDED.set(true);
    let result = panic::catch_unwind(AssertUnwindSafe(|| entry(bytes)));
    GUARDED.set(false);
    result.map_err(|_| Finding::Panic(LAST_PANIC.take().unwrap_or_default()))
}

fn summary(result: &Result<Policy, Vec<Diagnostic>>) -> String {
    match result {
        Ok(policy) => format!("{policy:?}"),
        Err(diagnostics) => diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[derive(Debug, PartialEq)]
enum Finding {
    Panic(String),
    Slow(Duration),
    NoDiagnostic,
    BadDiagnostic(String),
    Nondeterministic(String),
    TailIgnored,
}

impl Finding {
    /// Groups findings that are most likely one bug.
    fn signature(&self) -> String {
        match self {
            Finding::Panic(message) => format!("panic: {}", template(first_line(message))),
            Finding::Slow(_) => "slower than the bound".to_owned(),
            Finding::NoDiagnostic => "refused without a diagnostic".to_owned(),
            Finding::BadDiagnostic(why) => format!("bad diagnostic: {}", template(why)),
            Finding::Nondeterministic(_) => "different results for the same input".to_owned(),
            Finding::TailIgnored => {
                "accepted with an unknown key appended: trailing content is ignored".to_owned()
            }
        }
    }

    fn details(&self) -> String {
        match self {
            Finding::Panic(message) => format!("panic: {message}"),
            Finding::Slow(took) => format!("took {took:?}, over the {SLOW:?} bound"),
            Finding::BadDiagnostic(why) => format!("bad diagnostic: {why}"),
            Finding::Nondeterministic(both) => {
                format!("different results for the same input:\n{both}")
            }
            Finding::NoDiagnostic | Finding::TailIgnored => self.signature(),
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A diagnostic must be one line (a line break in it would forge another report line) and
/// point inside the input: editors and CI logs jump to it. Lines end as YAML ends them, at
/// `\n`, `\r\n` or a lone `\r`; one line past the end is allowed (an unterminated construct),
/// at its first column.
fn check_diagnostic(text: &str, d: &Diagnostic) -> Result<(), String> {
    let shown = d.to_string();
    if shown.contains(['\n', '\r']) {
        return Err(format!("spans several lines: {shown:?}"));
    }
    if d.file != FILE || d.message.trim().is_empty() {
        return Err(format!("not `{FILE}:LINE:COL: message`: {shown:?}"));
    }
    let lines = yaml_lines(text);
    let width = match d.line.checked_sub(1).map(|index| lines.get(index)) {
        Some(Some(line)) => line.chars().count(),
        Some(None) if d.line == lines.len() + 1 => 0,
        _ => {
            return Err(format!(
                "line {} is outside the input's {} lines: {shown}",
                d.line,
                lines.len()
            ));
        }
    };
    if d.column == 0 || d.column > width + 1 {
        return Err(format!(
            "column {} is outside line {} ({width} characters): {shown}",
            d.column, d.line
        ));
    }
    Ok(())
}

fn yaml_lines(text: &str) -> Vec<&str> {
    let mut segments: Vec<&str> = text.split('\n').collect();
    // Only a segment that a `\n` follows can end in the `\r` of a `\r\n`; a `\r` that ends
    // the text is a line break of its own.
    let last = segments.pop().unwrap_or_default();
    let mut lines: Vec<&str> = segments
        .into_iter()
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
        .chain(last.split('\r'))
        .collect();
    // A final line break ends the last line rather than starting an empty one.
    if lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

/// The message with its specifics blanked, so that ``unknown key `a` `` and ``unknown key
/// `b` `` count as one outcome: only the text before the first backquote and after the last is
/// kept (quoted text may hold backquotes of its own, so pairing them up is unreliable), and of
/// that only plain words, not numbers or names.
fn template(message: &str) -> String {
    let plain = |text: &str| {
        let mut words: Vec<&str> = Vec::new();
        for word in text.split_whitespace() {
            let word = if word.chars().all(|c| {
                c.is_ascii_alphabetic()
                    || matches!(c, ',' | ';' | ':' | '.' | '(' | ')' | '-' | '\'')
            }) {
                word
            } else {
                "_"
            };
            if word != "_" || words.last() != Some(&"_") {
                words.push(word);
            }
        }
        words.join(" ")
    };
    match (message.find('`'), message.rfind('`')) {
        (Some(first), Some(last)) => {
            let before = plain(&message[..first]);
            let after = plain(&message[last + 1..]);
            [before.as_str(), "_", after.as_str()]
                .iter()
                .filter(|part| !part.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => plain(message),
    }
}

#[derive(Default)]
struct Stats {
    runs: u64,
    accepted: u64,
    not_utf8: u64,
    outcomes: BTreeSet<String>,
}

/// Writes each finding's input and explanation, a few per signature.
struct Recorder {
    dir: PathBuf,
    signatures: BTreeMap<String, usize>,
    total: usize,
}

impl Recorder {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            signatures: BTreeMap::new(),
            total: 0,
        }
    }

    fn record(&mut self, input: &[u8], finding: &Finding) -> Result<()> {
        self.total += 1;
        let signature = finding.signature();
        let seen = self.signatures.entry(signature.clone()).or_default();
        *seen += 1;
        if *seen > SAMPLES_PER_SIGNATURE {
            return Ok(());
        }
        let name = hex_digest(input);
        let input_path = self.dir.join(&name);
        fs::write(&input_path, input)
            .with_context(|| format!("writing {}", input_path.display()))?;
        let report = self.dir.join(format!("{name}.txt"));
        fs::write(&report, format!("{}\n", finding.details()))
            .with_context(|| format!("writing {}", report.display()))?;
        if *seen == 1 {
            println!("finding: {signature} ({})", input_path.display());
        }
        Ok(())
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .fold(String::new(), |mut hex, byte| {
            hex.push_str(&format!("{byte:02x}"));
            hex
        })
}

fn save(corpus: &Path, input: &[u8]) -> Result<()> {
    let path = corpus.join(hex_digest(input));
    fs::write(&path, input).with_context(|| format!("writing {}", path.display()))
}

/// The example policies, and the policy snippets written as string literals in the policy
/// crate's tests.
fn seeds() -> Result<Vec<Vec<u8>>> {
    let root = workspace_root();
    let mut seeds = read_dir_files(&root.join("policies"))?;
    let tests = root.join("enforcer-policy/tests");
    for path in sorted_files(&tests)? {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if path.extension().is_some_and(|ext| ext == "rs") {
            let source = String::from_utf8_lossy(&bytes);
            seeds.extend(snippets(&source).into_iter().map(String::into_bytes));
        } else {
            seeds.push(bytes);
        }
    }
    Ok(seeds)
}

fn read_dir_files(dir: &Path) -> Result<Vec<Vec<u8>>> {
    sorted_files(dir)?
        .iter()
        .map(|path| fs::read(path).with_context(|| format!("reading {}", path.display())))
        .collect()
}

/// Sorted so that a seed replays the same run.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Policy-looking text in Rust source: a string literal, or a run of literals separated only
/// by commas (the tests write a policy as an array of its lines), joined by line breaks. Only
/// plain `"…"` literals with the common escapes are read; anything else is skipped.
fn snippets(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut group: Vec<String> = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => match literal(&mut chars) {
                Some(text) => group.push(text),
                None => group.clear(),
            },
            ',' => {}
            c if c.is_whitespace() => {}
            _ => flush(&mut group, &mut found),
        }
    }
    flush(&mut group, &mut found);
    found
}

fn flush(group: &mut Vec<String>, found: &mut Vec<String>) {
    if group.is_empty() {
        return;
    }
    let mut text = group.join("\n");
    group.clear();
    if text.contains(": ") || text.contains(":\n") {
        text.push('\n');
        found.push(text);
    }
}

/// Reads a string literal after its opening quote; `None` for an escape it does not know.
fn literal(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(text),
            '\\' => match chars.next()? {
                'n' => text.push('\n'),
                'r' => text.push('\r'),
                't' => text.push('\t'),
                '0' => text.push('\0'),
                '\\' => text.push('\\'),
                '"' => text.push('"'),
                '\'' => text.push('\''),
                'u' => {
                    let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    text.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                '\n' => while chars.next_if(|c| c.is_whitespace()).is_some() {},
                _ => return None,
            },
            c => text.push(c),
        }
    }
    None
}

/// xorshift64*: deterministic for a seed, which is all a replayable fuzzer needs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values worth putting where a policy expects one: edges of the port, prefix, time and
/// trust-domain grammars, YAML's other scalar kinds, and structures where scalars belong.
const VALUES: &[&str] = &[
    "0",
    "1",
    "65535",
    "65536",
    "-1",
    "4294967297",
    "99999999999999999999999999999",
    "1e400",
    "0x1F",
    "0o17",
    ".inf",
    ".nan",
    "\"8000-7000\"",
    "\"1-65535\"",
    "\"0-0\"",
    "\"8000-\"",
    "\"-\"",
    "[0]",
    "[65536, \"1-2-3\"]",
    "[]",
    "{}",
    "\"\"",
    "~",
    "null",
    "yes",
    "true",
    "True",
    "10.0.0.0/33",
    "10.0.0.1/8",
    "0.0.0.0/0",
    "\"::/0\"",
    "\"fd00::/129\"",
    "\"::ffff:10.0.0.0/104\"",
    "[10.10.0.0/16, \"fd00:10::/64\"]",
    "256.0.0.0/8",
    "2024-02-30T00:00:00Z",
    "2024-02-29T23:59:60Z",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1970-01-01T00:00:00+25:00",
    "2024-01-01",
    "\"-009999-01-01T00:00:00Z\"",
    "0s",
    "1ns",
    "1y",
    "1mo",
    "99999999999999999h",
    "1h30m",
    "P1D",
    "spiffe://prod.example.org",
    "spiffe://prod.example.org/ns/default",
    "SPIFFE://PROD.EXAMPLE.ORG",
    "spiffe://prod.example.org:443",
    "spiffe://",
    "spiffe:///",
    "spiffe://a..org",
    "spiffe://user@a.org",
    "spiffe://a.org?x=1",
    "spiffe://a.org#f",
    "xn--bcher-kva.example",
    "a.org.",
    "-a.org",
    "\"\u{e9}.org\"",
    "/workloads/prod",
    "/",
    "//x",
    "/a/../b",
    "/a/./b",
    "a/b",
    "/a/",
    "\"/a\\u0000b\"",
    "allow",
    "deny",
    "audit",
    "enforce",
    "tcp",
    "udp",
    "any",
    "workload_api",
    "TCP",
    "&anchor x",
    "*alias",
    "!!str 1",
    "!custom x",
    "|\n  block\n",
    ">-\n  folded\n",
    "'single ''quoted'''",
    "\"esc \\x00 \\u202e \\N\"",
    "\"multi\n  line\"",
];

/// Keys from every level of the policy, and some that are not.
const KEYS: &[&str] = &[
    "version",
    "defaults",
    "domains",
    "federation",
    "unlabeled",
    "external",
    "mode",
    "max_grant_ttl",
    "require_bundles",
    "name",
    "cgroups",
    "endpoints",
    "bundle",
    "bundle_from",
    "attested",
    "id",
    "from",
    "to",
    "protocol",
    "ports",
    "owner",
    "reason",
    "not_before",
    "expires",
    "ttl",
    "unknown",
    "Version",
    "\"version\"",
    "? version",
    "<<",
    "- name",
];

/// Byte sequences that text-based tests rarely contain: NUL, malformed UTF-8 (a lone
/// continuation byte, a truncated sequence, an encoded surrogate, an overlong `/`), the BOM,
/// and the line separators YAML 1.1 knew and 1.2 does not.
const BYTES: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xef\xbb\xbf",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xe2\x80\xa9",
    b"\r",
    b"\r\n",
    b"\t",
    b"\x0b",
    b"\x1b[31m",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x92\xa5",
];

const STRUCTURE: &[&str] = &[
    ":", ": ", "- ", "? ", "[", "]", "{", "}", ",", "#", "&", "*", "!", "|", ">", "'", "\"", "%",
    "@", "`", "---", "...", "\\", "\n", " ",
];

/// One to four stacked mutations of an input from the pool, cut to `MAX_INPUT`.
fn mutate(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut input = rng.pick(pool).clone();
    for _ in 0..1 + rng.below(4) {
        apply(rng, pool, &mut input);
    }
    input.truncate(MAX_INPUT);
    input
}

fn apply(rng: &mut Rng, pool: &[Vec<u8>], input: &mut Vec<u8>) {
    let at = rng.below(input.len() + 1);
    match rng.below(14) {
        0 if at < input.len() => input[at] ^= 1 << rng.below(8),
        1 => input.insert(at, u8::try_from(rng.below(256)).unwrap_or(0)),
        2 if at < input.len() => {
            let end = (at + 1 + rng.below(16)).min(input.len());
            input.drain(at..end);
        }
        3 => splice_line(rng, pool, input),
        4 => duplicate_line(rng, input),
        5 => reindent(rng, input),
        6 => insert(input, at, rng.pick::<&[u8]>(BYTES)),
        7 => insert(input, at, rng.pick(STRUCTURE).as_bytes()),
        8 | 9 => replace_value(rng, input),
        10 => replace_key(rng, input),
        11 => insert(input, at, &long_token(rng)),
        12 => insert(input, line_start(input, at), &nesting(rng)),
        _ => repeat_lines(rng, input),
    }
}

fn insert(input: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    input.splice(at..at, bytes.iter().copied());
}

/// The byte ranges of `input`'s lines, line breaks included.
fn line_spans(input: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (index, &byte) in input.iter().enumerate() {
        if byte == b'\n' {
            spans.push((start, index + 1));
            start = index + 1;
        }
    }
    if start < input.len() {
        spans.push((start, input.len()));
    }
    spans
}

fn line_start(input: &[u8], at: usize) -> usize {
    input[..at.min(input.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1)
}

fn random_line(rng: &mut Rng, input: &[u8]) -> Option<(usize, usize)> {
    let spans = line_spans(input);
    (!spans.is_empty()).then(|| *rng.pick(&spans))
}

/// Replaces a line with one from another input, which recombines the keys and values of
/// different seeds.
fn splice_line(rng: &mut Rng, pool: &[Vec<u8>], input: &mut Vec<u8>) {
    let donor = rng.pick(pool);
    let (Some(line), Some((start, end))) = (random_line(rng, donor), random_line(rng, input))
    else {
        return;
    };
    let replacement = donor[line.0..line.1].to_vec();
    input.splice(start..end, replacement);
}

fn duplicate_line(rng: &mut Rng, input: &mut Vec<u8>) {
    if let Some((start, end)) = random_line(rng, input) {
        let line = input[start..end].to_vec();
        insert(input, end, &line);
    }
}

fn reindent(rng: &mut Rng, input: &mut Vec<u8>) {
    let Some((start, end)) = random_line(rng, input) else {
        return;
    };
    let indent = input[start..end].iter().take_while(|&&b| b == b' ').count();
    match rng.below(4) {
        0 => {
            input.drain(start..start + indent.min(1 + rng.below(4)));
        }
        1 => insert(input, start, &b" ".repeat(1 + rng.below(4))),
        2 => insert(input, start, b"\t"),
        _ => insert(input, start, &b" ".repeat(rng.below(120))),
    }
}

/// Swaps the value after a line's `: ` (or `- `) for one from `VALUES`.
fn replace_value(rng: &mut Rng, input: &mut Vec<u8>) {
    let Some((start, end)) = random_line(rng, input) else {
        return;
    };
    let line = &input[start..end];
    let content_end = end - usize::from(line.ends_with(b"\n"));
    let Some(value) = find(line, b": ")
        .or_else(|| find(line, b"- "))
        .map(|at| start + at + 2)
    else {
        return;
    };
    let replacement = rng.pick(VALUES).as_bytes().to_vec();
    input.splice(value..content_end, replacement);
}

/// Swaps the key before a line's `:` for one from `KEYS`.
fn replace_key(rng: &mut Rng, input: &mut Vec<u8>) {
    let Some((start, end)) = random_line(rng, input) else {
        return;
    };
    let line = &input[start..end];
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return;
    };
    let key_start = start
        + line
            .iter()
            .position(|&b| !matches!(b, b' ' | b'-'))
            .unwrap_or(0)
            .min(colon);
    let replacement = rng.pick(KEYS).as_bytes().to_vec();
    input.splice(key_start..start + colon, replacement);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn long_token(rng: &mut Rng) -> Vec<u8> {
    const UNITS: &[&[u8]] = &[b"a", b"9", b"\xc3\xa9", b"a.", b"\\u0041"];
    let unit = *rng.pick(UNITS);
    unit.repeat(1 << (6 + rng.below(11)))
}

fn nesting(rng: &mut Rng) -> Vec<u8> {
    const UNITS: &[&[u8]] = &[b"- ", b"? ", b"[", b"{a: ", b"  ", b"a:\n "];
    let unit = *rng.pick(UNITS);
    unit.repeat(1 << rng.below(14))
}

/// Repeats a run of lines many times: many domains, edges or keys at once.
fn repeat_lines(rng: &mut Rng, input: &mut Vec<u8>) {
    let spans = line_spans(input);
    if spans.is_empty() {
        return;
    }
    let first = rng.below(spans.len());
    let last = (first + rng.below(4)).min(spans.len() - 1);
    let block = input[spans[first].0..spans[last].1].to_vec();
    let times = 1 << rng.below(10);
    let repeated = block.repeat(times);
    insert(input, spans[last].1, &repeated);
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            since.as_secs() ^ u64::from(since.subsec_nanos()) << 20
        })
}

fn millis_since(epoch: Instant) -> u64 {
    // Never 0, which means "no input running".
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Reports an input that runs longer than `HANG` and ends the process, which nothing else can
/// do to a parse stuck in a loop.
fn spawn_watchdog(
    started: Arc<AtomicU64>,
    epoch: Instant,
    current: PathBuf,
    findings: PathBuf,
) -> Result<()> {
    std::thread::Builder::new()
        .name("fuzz-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let began = started.load(Ordering::Relaxed);
                if began == 0 || millis_since(epoch).saturating_sub(began) < millis(HANG) {
                    continue;
                }
                let saved = findings.join("hang");
                let copied = fs::copy(&current, &saved).is_ok();
                let mut stdout = std::io::stdout().lock();
                writeln!(
                    stdout,
                    "finding: an input ran for over {HANG:?} (a hang); it is in {}",
                    if copied { &saved } else { &current }.display()
                )
                .ok();
                std::process::exit(1);
            }
        })
        .context("starting the watchdog")?;
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

thread_local! {
    /// Set while the parser runs under `catch_unwind`; its panics become findings.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the parser's caught panics off the terminal (thousands would drown the summary) and
/// keeps each one's message and location for its finding; other panics are reported as usual.
fn quiet_panics() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !GUARDED.get() {
            return default(info);
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.set(Some(format!("{message}{location}")));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(line: usize, column: usize, message: &str) -> Diagnostic {
        Diagnostic {
            file: FILE.to_owned(),
            line,
            column,
            message: message.to_owned(),
        }
    }

    #[test]
    fn positions_inside_the_input_pass() {
        let text = "version: 1\r\ndomains: [\rx\n";
        for (line, column) in [(1, 1), (1, 11), (2, 11), (3, 2), (4, 1)] {
            assert_eq!(
                check_diagnostic(text, &diagnostic(line, column, "bad")),
                Ok(()),
                "{line}:{column}"
            );
        }
    }

    #[test]
    fn a_column_beyond_its_line_is_flagged() {
        let found = check_diagnostic("version: 1\nx: y\n", &diagnostic(2, 6, "bad"));
        assert_eq!(
            found,
            Err("column 6 is outside line 2 (4 characters): fuzz.yaml:2:6: bad".to_owned())
        );
        // Columns count characters, not bytes.
        assert!(check_diagnostic("é\n", &diagnostic(1, 3, "bad")).is_err());
        assert!(check_diagnostic("é\n", &diagnostic(1, 0, "bad")).is_err());
    }

    #[test]
    fn a_line_beyond_the_input_is_flagged() {
        assert!(check_diagnostic("a: 1\n", &diagnostic(2, 1, "bad")).is_ok());
        assert!(check_diagnostic("a: 1\n", &diagnostic(2, 2, "bad")).is_err());
        assert!(check_diagnostic("a: 1\n", &diagnostic(3, 1, "bad")).is_err());
        assert!(check_diagnostic("a: 1\n", &diagnostic(0, 1, "bad")).is_err());
    }

    #[test]
    fn every_kind_of_line_break_ends_a_line() {
        assert_eq!(yaml_lines("a\r\nb\rc\nd"), ["a", "b", "c", "d"]);
        assert_eq!(yaml_lines("a\r\n"), ["a"]);
        assert_eq!(yaml_lines("a\r"), ["a"]);
        // A lone `\r` after a `\n` ends an empty second line (a fuzz finding: `? \n\r`, whose
        // diagnostic at 3:1, just past the end, was taken for a line outside the input).
        assert_eq!(yaml_lines("? \n\r"), ["? ", ""]);
        assert!(check_diagnostic("? \n\r", &diagnostic(3, 1, "bad")).is_ok());
        assert!(check_diagnostic("? \n\r", &diagnostic(4, 1, "bad")).is_err());
    }

    #[test]
    fn a_diagnostic_must_be_one_labelled_line() {
        assert!(check_diagnostic("a: 1\n", &diagnostic(1, 1, "bad\nfake: line")).is_err());
        assert!(check_diagnostic("a: 1\n", &diagnostic(1, 1, " ")).is_err());
        let mut other_file = diagnostic(1, 1, "bad");
        other_file.file = "other.yaml".to_owned();
        assert!(check_diagnostic("a: 1\n", &other_file).is_err());
    }

    #[test]
    fn templates_drop_quoted_text_and_numbers() {
        assert_eq!(
            template("unknown key `a` in policy; expected one of: version"),
            "unknown key _ in policy; expected one of: version"
        );
        assert_eq!(
            template("unknown key `b c` in policy; expected one of: version"),
            "unknown key _ in policy; expected one of: version"
        );
        // Backquotes inside the quoted text must not leak it into the template.
        assert_eq!(
            template("duplicate key `x` y z` (first defined at line 3)"),
            "duplicate key _ (first defined at line _"
        );
        assert_eq!(
            template("`a.org` must be `tcp` or `udp`, found a list"),
            "_ , found a list"
        );
        assert_eq!(
            template("port 65536 is out of range; ports are 1-65535"),
            "port _ is out of range; ports are _"
        );
    }

    #[test]
    fn the_parser_passes_the_oracles_on_its_examples() {
        let example = fs::read(workspace_root().join("policies/demo.yaml")).unwrap();
        assert_eq!(target(&example), Ok(ACCEPTED.to_owned()));
        assert_eq!(
            target(b"version: 2\n"),
            Ok("unsupported policy version _ (this enforcer understands version _".to_owned())
        );
    }

    #[test]
    fn snippets_are_read_from_test_sources() {
        let source = r#"
            errors(&["version: 1", "domains:", "  - name: \"a\\b\""]);
            let t = "version: 1\ndefaults: {}\u{e9}\n";
            assert_eq!(x, ["p.yaml:1:1: policy is empty"]);
            let skipped = "no yaml here";
        "#;
        assert_eq!(
            snippets(source),
            [
                "version: 1\ndomains:\n  - name: \"a\\b\"\n",
                "version: 1\ndefaults: {}é\n\n",
                "p.yaml:1:1: policy is empty\n",
            ]
        );
    }

    #[test]
    fn the_policy_tests_give_seeds() {
        assert!(seeds().unwrap().len() > 50);
    }

    #[test]
    fn mutation_is_deterministic_for_a_seed() {
        let pool = vec![b"version: 1\ndomains:\n  - name: a.org\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| mutate(&mut rng, &pool))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(0).iter().all(|input| input.len() <= MAX_INPUT));
    }

    #[test]
    fn value_and_key_swaps_keep_the_line_structure() {
        let mut rng = Rng::new(1);
        let mut input = b"  ports: [1]\n".to_vec();
        replace_value(&mut rng, &mut input);
        assert!(input.starts_with(b"  ports: "), "{input:?}");
        let mut input = b"  - name: a.org\n".to_vec();
        replace_key(&mut rng, &mut input);
        assert!(input.starts_with(b"  - ") && input.ends_with(b": a.org\n"));
    }
}
