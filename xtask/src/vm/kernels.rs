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

/// Which of the suite's test executables a kernel runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tests {
    All,
    /// All but [`SERVICES`]: for the minimum kernel.
    AllButServices,
    /// All but [`SERVICES`] and [`LOCAL_CONTROL`]: for a kernel between the minimum and the
    /// host's, where the kernel-facing suites are what can differ.
    KernelFacing,
}

/// Test executables of the daemon's network services: etcd, TLS admin and bundle endpoints,
/// the Workload API, SVIDs. Their outcome is protocol logic in user space; what they put in
/// force goes through the programs and maps the kernel-facing suites exercise. They run
/// natively on the host (`cargo xtask test`); under emulation they took about 500 s of each
/// guest's run on 2026-12-06 (`fleet`'s etcd leases alone 246 s on 6.12, 296 s on 6.1), and
/// CI has an hour for everything.
const SERVICES: [&str; 5] = [
    "bundle_endpoint",
    "fleet",
    "remote_admin",
    "svid_verify",
    "workload_api",
];

/// Test executables of the local control plane: the control socket and its peers' rights,
/// state and policy files, terminal output, plans, attestation of local peers. They use
/// long-standing system calls (`SO_PEERCRED`, `O_PATH`, `FIONREAD`), which the minimum kernel
/// is the one worth trying them on, besides the host's.
const LOCAL_CONTROL: [&str; 8] = [
    "access",
    "attestation",
    "control_socket",
    "conventions",
    "inputs",
    "plan",
    "state_dir",
    "terminal",
];

impl Tests {
    pub fn includes(self, executable: &str) -> bool {
        match self {
            Self::All => true,
            Self::AllButServices => !SERVICES.contains(&executable),
            Self::KernelFacing => {
                !SERVICES.contains(&executable) && !LOCAL_CONTROL.contains(&executable)
            }
        }
    }
}

/// Fails when a list above names an executable the build does not have: a suite renamed
/// would otherwise run everywhere again unnoticed.
pub fn check_lists<'a>(built: impl IntoIterator<Item = &'a str> + Clone) -> Result<()> {
    let missing: Vec<&str> = SERVICES
        .into_iter()
        .chain(LOCAL_CONTROL)
        .filter(|name| !built.clone().into_iter().any(|b| b == *name))
        .collect();
    if !missing.is_empty() {
        bail!("xtask/src/vm/kernels.rs names test executables that do not exist: {missing:?}");
    }
    Ok(())
}

pub struct Kernel {
    /// What `--kernel` takes: the upstream series.
    pub version: &'static str,
    pub suite: &'static str,
    pub about: &'static str,
    pub expect: Expect,
    pub tests: Tests,
    /// Part of a run without `--kernel`.
    pub default: bool,
}

pub const MATRIX: [Kernel; 4] = [
    Kernel {
        version: "7.3",
        suite: "trixie-backports",
        about: "Debian 13 backports, newer than the development machines' 6.18 (which has no \
                image to boot)",
        expect: Expect::Pass,
        tests: Tests::All,
        // A third whole-suite run (about 19 minutes under emulation) only on demand.
        default: false,
    },
    Kernel {
        version: "6.12",
        suite: "trixie",
        about: "Debian 13's kernel, between the minimum and the development machines' 6.18",
        expect: Expect::Pass,
        tests: Tests::KernelFacing,
        default: true,
    },
    Kernel {
        version: "6.1",
        suite: "bookworm",
        about: "Debian 12, the minimum supported kernel",
        expect: Expect::Pass,
        tests: Tests::AllButServices,
        default: true,
    },
    Kernel {
        version: "5.10",
        suite: "bullseye",
        about: "Debian 11, below the minimum: the daemon must refuse and name what is missing",
        expect: Expect::Refusal,
        tests: Tests::All,
        // The probe refuses it before any program reaches the verifier (no `bpf_loop`), so
        // the run takes under a minute even under emulation.
        default: true,
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
    let parts = apt.parts(&package)?;
    say(&format!("downloading {}", parts.join(" ")));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = dir.join("root");
    for part in &parts {
        apt.download(part, &dir)?;
    }
    let debs: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    if debs.len() != parts.len() {
        bail!(
            "apt downloaded {} .deb files for {} packages ({})",
            debs.len(),
            parts.len(),
            parts.join(" ")
        );
    }
    for deb in debs {
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::remove_file(&deb)?;
    }
    let fetched = unpacked(&root, &package)?;
    if !release_is(&fetched.release, kernel.version) {
        bail!(
            "Debian {} now ships Linux {}, not {}: the matrix entry in xtask/src/vm/kernels.rs \
             needs updating",
            kernel.suite,
            fetched.release,
            kernel.version
        );
    }
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
    let release = release_of(package)?.to_string();
    // Up to Debian 13 the image is /boot/vmlinuz-RELEASE; 7.x packages put it beside the
    // modules, as /usr/lib/modules/RELEASE/vmlinuz.
    let vmlinuz = [
        root.join("boot").join(format!("vmlinuz-{release}")),
        modules_dir(root, &release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| {
        format!(
            "{package} has neither /boot/vmlinuz-{release} nor /usr/lib/modules/{release}/vmlinuz"
        )
    })?;
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

    /// `linux-image-amd64` is a metapackage; it depends on the versioned image.
    fn image_package(&self) -> Result<String> {
        self.depends("linux-image-amd64")?
            .into_iter()
            .find(|d| d.starts_with("linux-image-"))
            .context("linux-image-amd64 names no versioned image package")
    }

    /// The packages that make up a versioned image. Until Debian 13 the image package held
    /// both the kernel and its modules; from 7.x on it is a metapackage whose dependencies
    /// `linux-binary-RELEASE` and `linux-modules-RELEASE` hold them.
    fn parts(&self, image: &str) -> Result<Vec<String>> {
        let release = release_of(image)?;
        let depends = self.depends(image)?;
        let mut parts = vec![image.to_string()];
        parts.extend(
            ["linux-binary-", "linux-modules-"]
                .map(|prefix| format!("{prefix}{release}"))
                .into_iter()
                .filter(|p| depends.iter().any(|d| d == p)),
        );
        Ok(parts)
    }

    fn depends(&self, package: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .context("running apt-cache")?;
        if !out.status.success() {
            bail!(
                "apt-cache show {package} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| d.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["download", "-qq", package]).current_dir(into);
        run_cmd(&mut cmd)
    }
}

/// The kernel release a versioned image package is named after: `linux-image-RELEASE`.
fn release_of(package: &str) -> Result<&str> {
    package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image package"))
}

/// Whether a release string (`6.1.0-41-amd64`, `7.3.4+deb13-amd64`) is of the series
/// `version` (`6.1`), and not of `6.12`.
fn release_is(release: &str, version: &str) -> bool {
    release
        .strip_prefix(version)
        .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
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
        assert!(err.contains("7.3, 6.12, 6.1, 5.10"), "{err}");
    }

    #[test]
    fn a_release_belongs_to_its_own_series_only() {
        assert!(release_is("6.1.0-41-amd64", "6.1"));
        assert!(release_is("7.3.4+deb13-amd64", "7.3"));
        assert!(!release_is("6.12.57+deb13-amd64", "6.1"));
        assert!(!release_is("6.12.57+deb13-amd64", "7.3"));
    }
}
