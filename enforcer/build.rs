//! Builds the eBPF programs with the nightly toolchain and bpf-linker (through aya-build) and
//! leaves the object in `OUT_DIR` for `include_bytes_aligned!`. With `AYA_BUILD_SKIP=1` it
//! writes an empty stub instead, so `cargo check`, clippy and docs work without bpf-linker; a
//! binary built that way refuses to load programs and says why.
//!
//! It also stamps the build for `enforcer --version` and `status`: the git commit (with
//! `-dirty` when the sources of this binary differ from it), the build time, and the SHA-256
//! of the embedded object.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use sha2::{Digest as _, Sha256};

/// What goes into the binary, relative to the workspace root: a change to any of them makes
/// the build `-dirty`, and (being watched) re-runs this script so that the flag is current.
const SOURCES: &[&str] = &[
    "enforcer",
    "enforcer-common",
    "enforcer-policy",
    "enforcer-ebpf",
    "Cargo.toml",
    "Cargo.lock",
];

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let object = out_dir.join("enforcer");
    build_object(&manifest_dir, &object)?;
    stamp(&manifest_dir.join(".."), &object)
}

fn build_object(manifest_dir: &Path, object: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        if !object.exists() {
            fs::write(object, []).context("writing the stub eBPF object")?;
        }
        return Ok(());
    }
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (or set AYA_BUILD_SKIP=1 to \
             build without the kernel programs)"
        ));
    }
    let root = manifest_dir.join("../enforcer-ebpf");
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

fn stamp(workspace: &Path, object: &Path) -> anyhow::Result<()> {
    let bytes = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=ENFORCER_EBPF_SHA256={sha256}");
    println!("cargo:rustc-env=ENFORCER_COMMIT={}", commit(workspace));
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Reproducible builds set SOURCE_DATE_EPOCH; otherwise the time this script last ran.
    let built = match env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => {
            let seconds: i64 = epoch
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number"))?;
            jiff::Timestamp::from_second(seconds).context("SOURCE_DATE_EPOCH out of range")?
        }
        Err(_) => jiff::Timestamp::now(),
    };
    println!(
        "cargo:rustc-env=ENFORCER_BUILT={}",
        built.strftime("%Y-%m-%dT%H:%M:%SZ")
    );
    Ok(())
}

/// `git rev-parse HEAD` of the workspace, `-dirty` when [`SOURCES`] differ from it, or
/// "unknown" where there is no git or the workspace is not a repository of its own (a .crate
/// unpacked inside some other checkout must not take that checkout's commit).
fn commit(workspace: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let toplevel = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let ours = match (toplevel.map(fs::canonicalize), fs::canonicalize(workspace)) {
        (Some(Ok(top)), Ok(workspace)) => top == workspace,
        _ => false,
    };
    let Some(head) = ours.then(|| git(&["rev-parse", "HEAD"])).flatten() else {
        return "unknown".to_owned();
    };
    // Re-run when HEAD moves (commit, checkout, reset) and when the sources change, and only
    // then: the files HEAD and its branch live in (loose or packed) and this worktree's log of
    // HEAD. Other branches' refs are not watched, so commits elsewhere rebuild nothing.
    let mut watched = vec![
        "HEAD".to_owned(),
        "logs/HEAD".to_owned(),
        "packed-refs".to_owned(),
    ];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = workspace.join(path);
            // A watched path that does not exist would re-run the script on every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for source in SOURCES {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(source).display()
        );
    }
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    match git(&status) {
        Some(changes) if changes.is_empty() => head,
        Some(_) => format!("{head}-dirty"),
        None => "unknown".to_owned(),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}
