//! The kernel matrix and how each kernel is fetched: the Debian suite's `linux-image-amd64`
//! resolved to its versioned image package, downloaded with apt from deb.debian.org (the only
//! registry the project uses) under a private apt configuration, so the host's own sources
//! and package state are never touched, then unpacked with `dpkg-deb` and indexed with
//! `depmod`. Everything is cached under `target/vm/kernels/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::say;
use crate::setup::run_cmd;

/// What a kernel's run must show.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The whole privileged suite passes.
    Pass,
    /// The daemon refuses to start, naming the kernel feature it lacks, and changes nothing.
    Refusal,
}

pub struct Kernel {
    /// What `--kernel` takes: the upstream series.
    pub version: &'static str,
    pub suite: &'static str,
    pub about: &'static str,
    pub expect: Expect,
    /// Part of a run without `--kernel`.
    pub default: bool,
}

pub const MATRIX: [Kernel; 3] = [
    Kernel {
        version: "6.12",
        suite: "trixie",
        about: "Debian 13, the minimum supported kernel and the newest packaged Debian kernel \
                (the host's own 6.18 has no image to boot)",
        expect: Expect::Pass,
        default: true,
    },
    Kernel {
        version: "6.1",
        suite: "bookworm",
        about: "Debian 12, the minimum supported kernel",
        expect: Expect::Pass,
        default: true,
    },
    Kernel {
        version: "5.10",
        suite: "bullseye",
        about: "Debian 11, below the minimum: the daemon must refuse and name what is missing",
        expect: Expect::Refusal,
        // Under software emulation its verifier works on the ingress program for more than
        // the refusal run's 15 minutes without answering, so only an explicit
        // `--kernel 5.10` runs it.
        default: false,
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel ready to boot: its image and its module tree (indexed by depmod).
pub struct Fetched {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The unpacked package: `lib/modules/RELEASE` (or `usr/lib/...`) below it.
    pub root: PathBuf,
    pub package: String,
}

impl Fetched {
    pub fn modules(&self) -> PathBuf {
        modules_dir(&self.root, &self.release)
    }
}

pub fn find(version: &str) -> Result<&'static Kernel> {
    MATRIX
        .iter()
        .find(|k| k.version == version)
        .with_context(|| {
            let known: Vec<_> = MATRIX.iter().map(|k| k.version).collect();
            format!(
                "no kernel {version} in the matrix; known: {}",
                known.join(", ")
            )
        })
}

/// The kernel, from the cache when it was fetched before (unless `refresh`).
pub fn fetch(kernel: &Kernel, cache: &Path, refresh: bool) -> Result<Fetched> {
    let dir = cache.join("kernels").join(kernel.version);
    let record = dir.join("package");
    if !refresh && let Ok(package) = fs::read_to_string(&record) {
        let root = dir.join("root");
        if let Ok(fetched) = unpacked(&root, package.trim())
            && fetched.modules().join("modules.dep").exists()
        {
            return Ok(fetched);
        }
    }
    let apt = Apt::new(&cache.join("apt").join(kernel.suite), kernel.suite)?;
    say(&format!(
        "resolving linux-image-amd64 in Debian {}",
        kernel.suite
    ));
    apt.run(&["update", "-qq"])?;
    let package = apt.image_package()?;
    say(&format!("downloading {package}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    apt.download(&package, &dir)?;
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt downloaded no .deb for {package}"))?;
    let root = dir.join("root");
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    let fetched = unpacked(&root, &package)?;
    // The package ships no module index; its postinst would run depmod.
    let base = fetched
        .modules()
        .ancestors()
        .nth(3)
        .context("module directory too shallow")?
        .to_path_buf();
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(&base)
            .arg(&fetched.release),
    )?;
    fs::write(&record, &package)?;
    Ok(fetched)
}

fn unpacked(root: &Path, package: &str) -> Result<Fetched> {
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    Ok(Fetched {
        release,
        vmlinuz,
        root: root.to_path_buf(),
        package: package.to_string(),
    })
}

/// Debian moved the module tree from /lib to /usr/lib (trixie's packages ship it there).
fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let usr = root.join("usr/lib/modules").join(release);
    if usr.exists() {
        usr
    } else {
        root.join("lib/modules").join(release)
    }
}

/// apt with its own sources, lists, cache and an empty dpkg status.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, suite: &str) -> Result<Self> {
        for sub in [
            "etc/preferences.d",
            "etc/apt.conf.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("etc/sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"),
        )?;
        let status = dir.join("state/status");
        fs::write(&status, "")?;
        let d = |p: &str| dir.join(p).display().to_string();
        let options = [
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/sources.list.d")),
            ("Dir::Etc::Preferences", d("etc/preferences")),
            ("Dir::Etc::PreferencesParts", d("etc/preferences.d")),
            ("Dir::Etc::Parts", d("etc/apt.conf.d")),
            ("Dir::State", d("state")),
            ("Dir::State::status", d("state/status")),
            ("Dir::Cache", d("cache")),
            // The downloads land in our own directory, which apt's sandbox user cannot write.
            ("APT::Sandbox::User", "root".into()),
            ("APT::Architecture", "amd64".into()),
            ("APT::Architectures", "amd64".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect();
        Ok(Self { options })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run_cmd(self.command("apt-get").args(args))
    }

    /// `linux-image-amd64` is a metapackage; its first dependency is the versioned image.
    fn image_package(&self) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", "linux-image-amd64"])
            .output()
            .context("running apt-cache")?;
        if !out.status.success() {
            bail!(
                "apt-cache show linux-image-amd64 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .and_then(|deps| {
                deps.split([',', ' '])
                    .find(|d| d.starts_with("linux-image-"))
            })
            .map(str::to_string)
            .context("linux-image-amd64 names no versioned image package")
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["download", "-qq", package]).current_dir(into);
        run_cmd(&mut cmd)
    }
}

/// The release string of a kernel image already fetched, for messages.
pub fn describe(fetched: &Fetched) -> String {
    format!("{} ({})", fetched.release, fetched.package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kernel_names_the_known_ones() {
        let err = find("4.19")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("6.12, 6.1, 5.10"), "{err}");
    }
}
