//! `cargo xtask deb`: the Debian package, built by cargo-deb from `[package.metadata.deb]` in
//! `enforcer/Cargo.toml`, with the man pages and completions `dist-docs` generates. cargo-deb
//! is installed on first use (a pinned version, `--locked`), not by `setup`: only packaging
//! and the VM tests need it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, workspace_root};

const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds the package and returns its path (`target/debian/enforcer_VERSION_ARCH.deb`).
pub fn run() -> Result<PathBuf> {
    setup::run()?;
    cargo_deb()?;
    // Where `[package.metadata.deb]` takes them from, in the source tree whatever the target
    // directory.
    crate::dist_docs(&workspace_root().join("target/dist-docs"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["deb", "-p", "enforcer"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb -p enforcer failed");
    }
    // cargo-deb prints the package's path last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no package path: {stdout}"))?;
    if !deb.is_file() {
        bail!("cargo deb named {}, which does not exist", deb.display());
    }
    Ok(deb)
}

fn cargo_deb() -> Result<()> {
    if let Ok(version) = setup::output("cargo", &["deb", "--version"])
        && version.contains(CARGO_DEB_VERSION)
    {
        return Ok(());
    }
    setup::step(&format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (about two minutes, once)"
    ));
    setup::run_cmd(Command::new("cargo").args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
    ]))
}

/// What the packaged binary prints for `--version`, read from the package itself.
pub fn packaged_version(deb: &Path, scratch: &Path) -> Result<String> {
    let _ = fs::remove_dir_all(scratch);
    setup::run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(scratch))?;
    let binary = scratch.join("usr/bin/enforcer");
    let version = setup::output(
        binary.to_str().context("non-UTF-8 scratch path")?,
        &["--version"],
    )?;
    fs::remove_dir_all(scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(version.trim_end().to_owned())
}
