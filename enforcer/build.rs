//! Builds the eBPF programs with the nightly toolchain and bpf-linker (through aya-build) and
//! leaves the object in `OUT_DIR` for `include_bytes_aligned!`. With `AYA_BUILD_SKIP=1` it
//! writes an empty stub instead, so `cargo check`, clippy and docs work without bpf-linker; a
//! binary built that way refuses to load programs and says why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("enforcer");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        if !object.exists() {
            fs::write(&object, []).context("writing the stub eBPF object")?;
        }
        return Ok(());
    }
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (or set AYA_BUILD_SKIP=1 to \
             build without the kernel programs)"
        ));
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?)
        .join("../enforcer-ebpf");
    let root = root.to_str().context("non-UTF-8 path to enforcer-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "enforcer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}
