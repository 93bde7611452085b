//! `cargo xtask vm-test`: the privileged suite in real virtual machines, one per kernel of
//! the matrix in [`kernels::MATRIX`], and a pass/fail table at the end.

mod guest;
mod image;
mod kernels;
mod report;

use std::{
    fs,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{deb, setup, workspace_root};
use guest::{Accel, Boot, TestRun, Work};
use image::{Entry, Source};
use kernels::{Expect, Kernel};

/// What the host needs to build guests and boot them (`dpkg-deb` comes with dpkg).
const HOST_PACKAGES: [&str; 5] = ["qemu-system-x86", "debootstrap", "cpio", "kmod", "binutils"];
/// The packages whose test executables hold privileged tests; the others test no kernel.
const SUITE_PACKAGES: [&str; 2] = ["enforcer", "enforcer-tests"];
/// Software emulation unpacks the initramfs and boots in well under a minute.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// A KVM guest that has not booted in this long is not going to: `auto` falls back to TCG.
const KVM_TRIAL_LIMIT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Options {
    /// A kernel of the matrix to test (repeatable); 6.12, 6.1 and 5.10 when left out.
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<String>,
    /// Longest a guest may run its tests before it is killed and reported as failed.
    #[arg(long, value_name = "MINUTES", default_value_t = 45)]
    timeout: u64,
    /// Run only this test executable (repeatable; its target name, e.g. `fleet`, or
    /// `enforcer (unit tests)`); every one when left out. A check of new tests in the guests
    /// before the whole matrix.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Download each kernel again even if one is cached.
    #[arg(long)]
    refresh: bool,
    /// How qemu runs the guests.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Arguments for every test executable (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    let selected: Vec<&Kernel> = if options.kernels.is_empty() {
        kernels::MATRIX.iter().filter(|k| k.default).collect()
    } else {
        options
            .kernels
            .iter()
            .map(|v| kernels::find(v))
            .collect::<Result<_>>()?
    };
    setup::apt_install(&HOST_PACKAGES)?;
    setup::run()?;
    let mut built = build()?;
    kernels::check_lists(built.tests.iter().map(|(name, _)| name.as_str()))?;
    if !options.tests.is_empty() {
        let unknown: Vec<&String> = options
            .tests
            .iter()
            .filter(|t| !built.tests.iter().any(|(name, _)| name == *t))
            .collect();
        if !unknown.is_empty() {
            bail!("no test executable named {unknown:?}");
        }
        built.tests.retain(|(name, _)| options.tests.contains(name));
    }
    let cache = workspace_root().join("target/vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // Each kernel that runs the suite also installs and runs the Debian package.
    let package = if selected.iter().any(|k| k.expect == Expect::Pass) {
        let deb = deb::run()?;
        let version = deb::packaged_version(&deb, &cache.join("package"))?;
        Some(Package { deb, version })
    } else {
        None
    };
    let mut accel = match options.accel {
        Accel::Auto if guest::kvm_available() => Accel::Kvm,
        Accel::Auto => {
            say("KVM is not usable here (no /dev/kvm, or no VM can be created): using TCG");
            Accel::Tcg
        }
        chosen => chosen,
    };
    let rootfs = image::rootfs(&cache)?;

    let mut outcomes = Vec::new();
    for kernel in selected {
        let outcome = run_kernel(
            kernel,
            options,
            &cache,
            &rootfs,
            &built,
            package.as_ref(),
            &mut accel,
        )
        .with_context(|| format!("kernel {}", kernel.version))?;
        outcomes.push(outcome);
    }
    print_table(&outcomes);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.version)
        .collect();
    if !failed.is_empty() {
        bail!("kernel(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

fn say(what: &str) {
    eprintln!("xtask vm-test: {what}");
}

/// The Debian package, and what its binary's `--version` prints.
struct Package {
    deb: PathBuf,
    version: String,
}

/// What the host built: the test executables to run and the binaries they start.
struct Built {
    tests: Vec<(String, TestRun)>,
    binaries: Vec<PathBuf>,
}

impl Built {
    fn enforcer(&self) -> Result<&Path> {
        self.binaries
            .iter()
            .find(|b| b.file_name().is_some_and(|n| n == "enforcer"))
            .map(PathBuf::as_path)
            .context("the build produced no enforcer binary")
    }
}

fn build() -> Result<Built> {
    let mut package_args = Vec::new();
    for p in SUITE_PACKAGES {
        package_args.extend(["-p", p]);
    }
    let mut binaries: Vec<PathBuf> = artifacts(&[&["build"], package_args.as_slice()].concat())?
        .into_iter()
        .filter(|a| !a.test)
        .map(|a| a.executable)
        .collect();
    binaries.push(previous_layout(&binaries)?);
    let tests = artifacts(&[&["test", "--no-run"], package_args.as_slice()].concat())?
        .into_iter()
        .filter(|a| a.test)
        .map(|a| {
            let name = if a.kind == "test" {
                a.target
            } else {
                format!("{} (unit tests)", a.target)
            };
            (
                name,
                TestRun {
                    exe: a.executable,
                    dir: a.package_dir,
                },
            )
        })
        .collect();
    Ok(Built { tests, binaries })
}

/// The previous map layout's `enforcer`, which the upgrade test starts: built here (once;
/// `enforcer-previous` reuses it), since guests have neither git nor cargo, and shipped at
/// the path the test looks for it.
fn previous_layout(binaries: &[PathBuf]) -> Result<PathBuf> {
    let builder = binaries
        .iter()
        .find(|b| b.file_name().is_some_and(|n| n == "enforcer-previous"))
        .context("the build produced no enforcer-previous binary")?;
    let out = Command::new(builder)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", builder.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not build the previous layout's enforcer",
            builder.display()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

struct Artifact {
    executable: PathBuf,
    target: String,
    kind: String,
    test: bool,
    package_dir: PathBuf,
}

/// Runs cargo with JSON messages and returns the executables it built.
fn artifacts(args: &[&str]) -> Result<Vec<Artifact>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        found.push(Artifact {
            executable: executable.into(),
            target: msg["target"]["name"].as_str().unwrap_or_default().into(),
            kind: msg["target"]["kind"][0].as_str().unwrap_or_default().into(),
            test: msg["profile"]["test"].as_bool().unwrap_or(false),
            package_dir: manifest.parent().unwrap_or(Path::new("/")).to_path_buf(),
        });
    }
    Ok(found)
}

struct Outcome {
    accel: Accel,
    version: &'static str,
    release: String,
    expect: Expect,
    boot: Option<Duration>,
    run: Option<Duration>,
    summary: String,
    ok: bool,
}

fn run_kernel(
    kernel: &Kernel,
    options: &Options,
    cache: &Path,
    rootfs: &Path,
    built: &Built,
    package: Option<&Package>,
    accel: &mut Accel,
) -> Result<Outcome> {
    let fetched = kernels::fetch(kernel, cache, options.refresh)?;
    say(&format!(
        "kernel {}: {} — {}",
        kernel.version,
        kernels::describe(&fetched),
        kernel.about
    ));
    let modules = image::modules(cache, &fetched)?;
    let policies = workspace_root().join("policies");
    let mut entries: Vec<Entry> = built
        .binaries
        .iter()
        .map(|b| Entry {
            source: Source::Binary(b.clone()),
            path: b.clone(),
        })
        .collect();
    for file in fs::read_dir(&policies)? {
        let path = file?.path();
        entries.push(Entry {
            source: Source::File(path.clone()),
            path,
        });
    }
    // Executables named with --test run on every kernel asked for.
    let chosen: Vec<&(String, TestRun)> = built
        .tests
        .iter()
        .filter(|(name, _)| !options.tests.is_empty() || kernel.tests.includes(name))
        .collect();
    let mut runs: Vec<TestRun> = chosen
        .iter()
        .map(|(_, r)| TestRun {
            exe: r.exe.clone(),
            dir: r.dir.clone(),
        })
        .collect();
    let mut names: Vec<String> = chosen.iter().map(|(n, _)| n.clone()).collect();
    let policy = policies.join("demo.yaml");
    let work = match kernel.expect {
        Expect::Pass => {
            entries.extend(runs.iter().map(|r| Entry {
                source: Source::Binary(r.exe.clone()),
                path: r.exe.clone(),
            }));
            // Last, so that nothing it leaves behind (it runs a daemon on the whole guest) can
            // touch the suite.
            if let Some(package) = package {
                entries.push(Entry {
                    source: Source::File(package.deb.clone()),
                    path: PathBuf::from(guest::PACKAGE_DEB),
                });
                entries.push(Entry {
                    source: Source::Script(guest::package_script(&package.version)),
                    path: PathBuf::from(guest::PACKAGE_CHECK),
                });
                runs.push(TestRun {
                    exe: PathBuf::from(guest::PACKAGE_CHECK),
                    dir: PathBuf::from("/"),
                });
                names.push("package (enforcer.deb)".to_owned());
            }
            Work::Suite {
                runs: &runs,
                args: &options.args,
            }
        }
        Expect::Refusal => Work::Refusal {
            enforcer: built.enforcer()?,
            policy: &policy,
        },
    };
    entries.push(Entry {
        source: Source::Script(guest::init_script(&work)),
        path: PathBuf::from("/init"),
    });
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.dir.clone()).collect();
    let payload = image::payload(cache, &entries, &dirs)?;
    let initrd = cache.join(format!("initrd-{}.img", kernel.version));
    image::join(&[rootfs, &modules, &payload], &initrd)?;

    let logs = cache.join("logs").join(kernel.version);
    fs::create_dir_all(&logs)?;
    let console_log = logs.join("console.log");
    say(&format!(
        "kernel {}: kernel console in {}",
        kernel.version,
        console_log.display()
    ));
    let results_path = logs.join("results.log");
    say(&format!(
        "kernel {}: the guest's results go to {}",
        kernel.version,
        results_path.display()
    ));
    let session = loop {
        let trial = options.accel == Accel::Auto && *accel == Accel::Kvm;
        say(&format!(
            "kernel {}: booting with {}",
            kernel.version,
            accel.name()
        ));
        let mut results = BufWriter::new(
            fs::File::create(&results_path)
                .with_context(|| format!("creating {}", results_path.display()))?,
        );
        let mut on_line = |line: &str| {
            // The log is a record for the reader; a failed write must not stop the run.
            let _ = writeln!(results, "{line}").and_then(|()| results.flush());
            progress(kernel.version, &names, line);
        };
        let session = guest::boot(
            &Boot {
                accel: *accel,
                vmlinuz: &fetched.vmlinuz,
                initrd: &initrd,
                console_log: &console_log,
                boot_limit: if trial { KVM_TRIAL_LIMIT } else { BOOT_LIMIT },
                run_limit: Duration::from_secs(options.timeout * 60),
            },
            &mut on_line,
        )?;
        if trial && session.boot.is_none() {
            say(&format!(
                "the guest did not boot under KVM ({}): falling back to TCG for this and \
                 every further kernel",
                report::ending(&session).unwrap_or_default()
            ));
            *accel = Accel::Tcg;
            continue;
        }
        break session;
    };
    let ending = report::ending(&session);
    let (summary, ok) = match kernel.expect {
        Expect::Pass => {
            let results = report::executables(&session, &names);
            for r in results.iter().filter(|r| !r.ok()) {
                eprintln!(
                    "\n==== kernel {}: {} failed (exit {}); its output:",
                    kernel.version,
                    r.name,
                    r.status
                        .map_or("none: it never finished".into(), |s| s.to_string())
                );
                for line in report::failure_excerpt(&r.output) {
                    eprintln!("    {line}");
                }
            }
            let passed_exes = results.iter().filter(|r| r.ok()).count();
            let passed: usize = results.iter().map(|r| r.passed).sum();
            let failed: usize = results.iter().map(|r| r.failed).sum();
            let failing: Vec<&str> = results
                .iter()
                .filter(|r| !r.ok())
                .map(|r| r.name.as_str())
                .collect();
            let mut summary = format!(
                "{passed_exes}/{} executables, {passed} tests passed, {failed} failed",
                results.len()
            );
            if !failing.is_empty() {
                summary += &format!("; failing: {}", failing.join(", "));
            }
            // A filter after `--` that matches nothing must not read as a pass.
            if passed == 0 {
                summary += "; no test ran";
            }
            (
                summary,
                ending.is_none() && passed_exes == results.len() && passed > 0,
            )
        }
        Expect::Refusal => match report::refusal(&session) {
            Some(r) => {
                eprintln!(
                    "\n==== kernel {}: the daemon's output (exit {}):",
                    kernel.version,
                    r.status.map_or("none".into(), |s| s.to_string())
                );
                for line in &r.output {
                    eprintln!("    {line}");
                }
                let said = r
                    .output
                    .iter()
                    .find(|l| l.contains(report::REFUSAL_TEXT))
                    .map_or("no feature named", String::as_str);
                let summary = if r.ok() {
                    format!("refused as expected: {}", said.trim())
                } else if r.pins_left {
                    format!(
                        "NOT refused cleanly: pins were left behind ({})",
                        said.trim()
                    )
                } else {
                    format!("NOT refused as expected ({})", said.trim())
                };
                (summary, ending.is_none() && r.ok())
            }
            None => ("the daemon's run was not reported".into(), false),
        },
    };
    let summary = match ending {
        Some(why) => format!("{summary}; {why}"),
        None => summary,
    };
    Ok(Outcome {
        accel: *accel,
        version: kernel.version,
        release: fetched.release,
        expect: kernel.expect,
        boot: session.boot,
        run: session.run,
        summary,
        ok,
    })
}

/// One line on stderr per step the guest reports, so a long run shows where it is.
fn progress(version: &str, names: &[String], line: &str) {
    let Some(rest) = line.strip_prefix(guest::MARK) else {
        return;
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let name = |i: &str| {
        i.parse::<usize>()
            .ok()
            .and_then(|i| names.get(i))
            .map_or(i.to_string(), String::clone)
    };
    match words.as_slice() {
        ["ready", release] => say(&format!("kernel {version}: booted {release}")),
        ["begin", i] => say(&format!("kernel {version}: running {}", name(i))),
        ["end", i, code] => say(&format!("kernel {version}: {} exited {code}", name(i))),
        ["end", "refusal", code, pins] => say(&format!(
            "kernel {version}: the daemon exited {code}, pins {pins}"
        )),
        _ => {}
    }
}

fn print_table(outcomes: &[Outcome]) {
    println!("\nvm-test results:");
    println!(
        "{:<7} {:<22} {:<4} {:<8} {:>9} {:>9}  {:<6} details",
        "kernel", "release", "vm", "expects", "boot", "run", "result"
    );
    for o in outcomes {
        println!(
            "{:<7} {:<22} {:<4} {:<8} {:>9} {:>9}  {:<6} {}",
            o.version,
            o.release,
            match o.accel {
                Accel::Kvm => "kvm",
                Accel::Auto | Accel::Tcg => "tcg",
            },
            match o.expect {
                Expect::Pass => "pass",
                Expect::Refusal => "refusal",
            },
            report::seconds(o.boot),
            report::seconds(o.run),
            if o.ok { "PASS" } else { "FAIL" },
            o.summary
        );
    }
}
