//! Installs what building the eBPF programs needs, idempotently: each step checks first and
//! is skipped in well under a second when its piece is present. Versions follow the verified
//! recipe in the project brief: the eBPF crate builds on the `nightly` toolchain (LLVM 22), so
//! bpf-linker must be built against LLVM 22 as well.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

const APT_PACKAGES: [&str; 3] = ["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
/// The fleet tests run a real etcd cluster and drive it with `etcdctl`; the `etcd-client`
/// crate generates its gRPC code with `protoc` at build time, which needs the well-known
/// types (`google/protobuf/descriptor.proto`) of `libprotobuf-dev`.
const FLEET_PACKAGES: [&str; 4] = [
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];
/// The daemon's allocator, jemalloc, is built from C source by `tikv-jemalloc-sys`, whose
/// build runs `make` (and the C compiler that linking Rust needs anyway).
const ALLOCATOR_PACKAGES: [&str; 2] = ["make", "gcc"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    component("nightly", "rust-src")?;
    llvm()?;
    apt_install(&FLEET_PACKAGES)?;
    apt_install(&ALLOCATOR_PACKAGES)?;
    bpf_linker()
}

/// Installs the rustup `component` for `toolchain` unless it is there.
pub fn component(toolchain: &str, component: &str) -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", toolchain, "--installed"],
    )
    .with_context(|| format!("rustup is needed for the {toolchain} toolchain's {component}"))?;
    if installed.lines().any(|l| l.starts_with(component)) {
        return Ok(());
    }
    step(&format!(
        "installing {component} for the {toolchain} toolchain"
    ));
    run_cmd(Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain]))
}

/// `llvm-22-dev` brings `llvm-config`, which bpf-linker's build needs.
fn llvm() -> Result<()> {
    apt_install(&APT_PACKAGES)
}

/// Installs those of `packages` that dpkg does not list as installed.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing {}", missing.join(" ")));
    apt_get_install(&missing)
}

fn apt_get_install(packages: &[&str]) -> Result<()> {
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages);
        run_cmd(&mut cmd)
    };
    if install().is_err() {
        // A fresh machine's package lists may predate the packages.
        run_cmd(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if let Ok(version) = output("bpf-linker", &["--version"])
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about two minutes)"
    ));
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new("cargo")
            .env("PATH", path)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}

pub fn step(what: &str) {
    eprintln!("xtask setup: {what}");
}

pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
