//! The guest's initramfs, in three newc cpio archives concatenated (the kernel unpacks each in
//! turn): a Debian bookworm root file system made by debootstrap, cached by a hash of what
//! goes into it; the kernel's modules that the tests need, cached per kernel; and this run's
//! binaries, policies and init script. The guest runs entirely from memory, so no disk,
//! file-system or 9p driver has to be loaded before its init starts.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use super::kernels::Fetched;
use super::say;
use crate::setup::run_cmd;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the guest runs besides the test binaries: `ip` (the tests make network namespaces,
/// veth pairs and bridges), `modprobe` (the kernel calls it to load the modules those need),
/// coreutils' `timeout` (minbase) to bound each test binary, and `etcd` and `etcdctl` (the
/// fleet tests run a three-member cluster on the guest's loopback; about 40 MB of memory).
const PACKAGES: [&str; 4] = ["iproute2", "kmod", "etcd-server", "etcd-client"];
/// Documentation and package caches: nothing in the guest reads them.
const PRUNE: [&str; 6] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt",
    "var/lib/apt/lists",
];
/// Modules (with their dependencies) the tests and the daemon need on Debian's kernels,
/// where they are not built in: veth pairs and bridges for pods and remote hosts, and the
/// inet_diag family behind `SOCK_DESTROY`.
const MODULES: [&str; 5] = ["veth", "bridge", "inet_diag", "tcp_diag", "udp_diag"];

/// The cached root file system archive, built when missing.
pub fn rootfs(cache: &Path) -> Result<PathBuf> {
    let mut hash = Sha256::new();
    hash.update(format!("{SUITE} {MIRROR} {PACKAGES:?} {PRUNE:?}"));
    let key: String = hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let archive = cache.join(format!("rootfs-{SUITE}-{key}.cpio"));
    if archive.exists() {
        return Ok(archive);
    }
    let dir = cache.join(format!("rootfs-{SUITE}-{key}"));
    let _ = fs::remove_dir_all(&dir);
    say(&format!(
        "debootstrap {SUITE} with {} into {} (about a minute, once)",
        PACKAGES.join(" "),
        dir.display()
    ));
    run_cmd(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={}", PACKAGES.join(",")),
            ])
            .arg(SUITE)
            .arg(&dir)
            .arg(MIRROR)
            .stdout(Stdio::null()),
    )?;
    for sub in PRUNE {
        let _ = fs::remove_dir_all(dir.join(sub));
    }
    pack(&dir, &archive)?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(archive)
}

/// The cached archive of the modules in [`MODULES`] and everything they depend on, with the
/// module index so the guest's modprobe finds them.
pub fn modules(cache: &Path, kernel: &Fetched) -> Result<PathBuf> {
    let archive = cache
        .join("kernels")
        .join(format!("modules-{}.cpio", kernel.release));
    if archive.exists() {
        return Ok(archive);
    }
    let source = kernel.modules();
    let base = source
        .ancestors()
        .nth(3)
        .context("module directory too shallow")?;
    let staging = cache
        .join("kernels")
        .join(format!("modules-{}", kernel.release));
    let _ = fs::remove_dir_all(&staging);
    // bookworm's root has /lib -> usr/lib, so the guest's modprobe looks in usr/lib/modules.
    let target = staging.join("usr/lib/modules").join(&kernel.release);
    fs::create_dir_all(&target)?;
    for entry in fs::read_dir(&source)? {
        let path = entry?.path();
        // The module indexes; 7.x packages also keep the kernel image there, which the
        // guest boots from outside and does not need twice.
        if path.is_file() && path.file_name().is_some_and(|n| n != "vmlinuz") {
            fs::copy(&path, target.join(path.file_name().context("file name")?))?;
        }
    }
    for module in MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(base)
            .args(["-S", &kernel.release, "--show-depends", module])
            .output()
            .context("running modprobe --show-depends")?;
        if !out.status.success() {
            bail!(
                "kernel {} has no module {module}: {}",
                kernel.release,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "insmod PATH [OPTIONS]", or "builtin NAME" for what needs no loading.
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = Path::new(path.split_whitespace().next().unwrap_or_default());
            let relative = path
                .strip_prefix(&source)
                .with_context(|| format!("{} is outside {}", path.display(), source.display()))?;
            let dest = target.join(relative);
            fs::create_dir_all(dest.parent().context("module path")?)?;
            fs::copy(path, &dest).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    pack(&staging, &archive)?;
    fs::remove_dir_all(&staging)?;
    Ok(archive)
}

/// A file for this run's archive: `source` (stripped of debug information when it is a
/// binary, which shrinks the test executables several times) placed at `path` in the guest.
pub struct Entry {
    pub source: Source,
    pub path: PathBuf,
}

pub enum Source {
    Binary(PathBuf),
    File(PathBuf),
    Script(String),
}

/// This run's archive, rebuilt every run from the fresh build.
pub fn payload(cache: &Path, entries: &[Entry], dirs: &[PathBuf]) -> Result<PathBuf> {
    let staging = cache.join("payload");
    let _ = fs::remove_dir_all(&staging);
    for entry in entries {
        let dest = staging.join(entry.path.strip_prefix("/").unwrap_or(&entry.path));
        fs::create_dir_all(dest.parent().context("payload path")?)?;
        match &entry.source {
            Source::Binary(from) => run_cmd(
                Command::new("objcopy")
                    .arg("--strip-debug")
                    .arg(from)
                    .arg(&dest),
            )?,
            Source::File(from) => {
                fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
            }
            Source::Script(text) => {
                fs::write(&dest, text)?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    for dir in dirs {
        fs::create_dir_all(staging.join(dir.strip_prefix("/").unwrap_or(dir)))?;
    }
    let archive = cache.join("payload.cpio");
    pack(&staging, &archive)?;
    fs::remove_dir_all(&staging)?;
    Ok(archive)
}

/// Concatenates archives into one initramfs file.
pub fn join(parts: &[&Path], into: &Path) -> Result<()> {
    let mut out = fs::File::create(into).with_context(|| format!("creating {}", into.display()))?;
    for part in parts {
        let mut input =
            fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut input, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// `dir`'s tree as a newc archive, every file owned by root (the guest runs as root).
fn pack(dir: &Path, archive: &Path) -> Result<()> {
    let partial = archive.with_extension("partial");
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --quiet --null -o -H newc -R 0:0",
        )
        .current_dir(dir)
        .stdout(file)
        .status()
        .context("running find | cpio")?;
    if !status.success() {
        bail!("packing {} failed", dir.display());
    }
    fs::rename(&partial, archive)?;
    Ok(())
}
