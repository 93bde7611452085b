//! Project tasks: `cargo xtask setup | demo | test | lint | vm-test | bench | fuzz | dist-docs |
//! deb`.

mod bench;
mod deb;
mod fuzz;
mod lint;
mod setup;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the kernel programs needs (rust-src, llvm-22, bpf-linker); skips
    /// what is already there.
    Setup,
    /// Build, then show enforcement live: a refused and an allowed connection.
    Demo,
    /// Set up, build and run every test, including the privileged end-to-end tests.
    Test {
        /// Run every daemon the tests start with only the capabilities that
        /// packaging/enforcer.service grants (its CapabilityBoundingSet=), under setpriv.
        #[arg(long)]
        daemon_caps: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check formatting, and run clippy with warnings denied on the host crates and on the
    /// eBPF crate.
    Lint,
    /// Boot each kernel of the matrix in a virtual machine, run the privileged suite in it,
    /// and print a pass/fail table per kernel.
    VmTest(vm::Options),
    /// Run a benchmark and print each measurement as a ratio to its baseline.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Run a time-bounded fuzzer; exits 1 with a summary when it finds something.
    Fuzz {
        #[command(subcommand)]
        fuzz: fuzz::Fuzz,
    },
    /// Write enforcer's man pages (OUT/man, one per subcommand) and its bash, zsh and fish
    /// completions (OUT/completions), generated from its command line.
    DistDocs {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Build the Debian package (cargo-deb, installed on first use): the binary, the systemd
    /// unit, an example policy, man pages and completions. Prints the package's path.
    Deb,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Demo => {
            build_release()?;
            let status = Command::new("bash")
                .arg(workspace_root().join("scripts/demo.sh"))
                .status()
                .context("running scripts/demo.sh")?;
            if !status.success() {
                bail!("the demo failed");
            }
            Ok(())
        }
        Task::Test { daemon_caps, args } => {
            setup::run()?;
            cargo(&["build", "-p", "enforcer", "-p", "enforcer-tests"])?;
            let mut test = vec!["test"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            if !daemon_caps {
                return cargo(&test);
            }
            let caps = unit_capabilities()?;
            println!("xtask: every daemon runs with only {caps}");
            cargo_with_env(&test, &[("ENFORCER_TEST_DAEMON_CAPS", &caps)])
        }
        Task::Lint => lint::run(),
        Task::VmTest(options) => vm::run(&options),
        Task::Bench { bench } => {
            build_release()?;
            bench::run(bench)
        }
        Task::Fuzz { fuzz } => fuzz::run(fuzz),
        Task::DistDocs { out } => dist_docs(&out),
        Task::Deb => {
            println!("{}", deb::run()?.display());
            Ok(())
        }
    }
}

/// Runs `enforcer/examples/dist-docs.rs`, which generates both from enforcer's clap command.
fn dist_docs(out: &std::path::Path) -> Result<()> {
    setup::run()?;
    // cargo runs in the workspace root; OUT is relative to where xtask was started.
    let out = std::path::absolute(out).context("resolving --out")?;
    let out = out.to_str().context("--out is not UTF-8")?;
    cargo(&[
        "run",
        "--quiet",
        "-p",
        "enforcer",
        "--example",
        "dist-docs",
        "--",
        out,
    ])
}

/// Set-up, then the release binaries the demo and the benchmarks run.
fn build_release() -> Result<()> {
    setup::run()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "enforcer-tests",
    ])
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The capabilities the shipped unit grants the daemon: its `CapabilityBoundingSet=`.
fn unit_capabilities() -> Result<String> {
    let unit = workspace_root().join("packaging/enforcer.service");
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .map(|caps| caps.trim().to_owned())
        .with_context(|| format!("{} sets no CapabilityBoundingSet=", unit.display()))
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

/// `cargo ARGS` with `env` added to its environment.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
