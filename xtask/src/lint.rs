//! `cargo xtask lint`: what keeps the tree clean, as CI checks it. Every crate's formatting,
//! then clippy with warnings denied on every target: the host crates on the toolchain that
//! runs this, and the eBPF crate on nightly for the BPF target, as `enforcer/build.rs` builds
//! it (clippy only checks, so bpf-linker is not involved there).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, setup, workspace_root};

pub fn run() -> Result<()> {
    setup::run()?;
    for (toolchain, component) in [
        ("stable", "rustfmt"),
        ("stable", "clippy"),
        ("nightly", "clippy"),
    ] {
        setup::component(toolchain, component)?;
    }
    cargo(&["fmt", "--all", "--check"])?;
    // The default members: every crate but the eBPF one.
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    ebpf_clippy()
}

fn ebpf_clippy() -> Result<()> {
    let root = workspace_root();
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", "enforcer-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        // Apart from the host build, so neither invalidates the other's artifacts.
        .arg("--target-dir")
        .arg(root.join("target/lint-ebpf"))
        .args(["--", "-D", "warnings"])
        // Set for this process by the stable cargo that runs xtask; they would override
        // the nightly toolchain asked for.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .current_dir(&root)
        .status()
        .context("running clippy on the eBPF crate with the nightly toolchain")?;
    if !status.success() {
        bail!("clippy found problems in enforcer-ebpf");
    }
    Ok(())
}
