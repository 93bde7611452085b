//! Booting a guest: its init script, qemu (KVM when the host really can create a VM, software
//! emulation otherwise), and the two serial ports. The first carries the kernel's console to
//! a log file; the second carries only what the init script and the tests write, one marker
//! line per step, so the host reads readiness and results from a channel nothing else writes.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Every line the guest's init writes for the host starts with this.
pub const MARK: &str = "@@enforcer-vm ";

/// One test executable to run in the guest.
pub struct TestRun {
    pub exe: PathBuf,
    /// Where `cargo test` would run it: its package's directory.
    pub dir: PathBuf,
}

/// What the guest's init does after mounting the file systems.
pub enum Work<'a> {
    /// The test executables, each with `args` after libtest's own `--color never`.
    Suite {
        runs: &'a [TestRun],
        args: &'a [String],
    },
    /// Starts the daemon once and reports how it ended and whether it left pins behind.
    Refusal {
        enforcer: &'a Path,
        policy: &'a Path,
    },
}

/// Longest any one test executable may run in the guest before it is killed.
const EXE_LIMIT_SECS: u64 = 1200;
/// The daemon's probe loads every program once; under software emulation the verifier
/// alone takes minutes.
const REFUSAL_LIMIT_SECS: u64 = 900;
const REFUSAL_PINS: &str = "/sys/fs/bpf/enforcer-vm";

pub fn init_script(work: &Work) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# PID 1 of the test guest, written by `cargo xtask vm-test`.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 ENFORCER_REQUIRE_PRIVILEGED=1
# The guest may be emulated (TCG): bulk work such as draining a full ring buffer is slower.
export ENFORCER_TEST_PATIENCE=10
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp is left as it is in the (writable) initramfs: the binaries sit at their host paths,
# which may be under /tmp, as in a CI clone.
mount -t tmpfs tmpfs /run
# A distribution's init mounts these; the tests find cgroup2 through /proc/mounts.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
stty -F /dev/ttyS1 raw -echo 115200
exec 3>/dev/ttyS1
mark() { echo "@@enforcer-vm $*" >&3; }
mark ready "$(uname -r)"
"#,
    );
    match work {
        Work::Suite { runs, args } => {
            let args: String = args.iter().map(|a| format!(" {}", quote(a))).collect();
            for (i, run) in runs.iter().enumerate() {
                s += &format!(
                    "mark begin {i}\n(cd {} && timeout -k 10 {EXE_LIMIT_SECS} {} --color never{args}) >&3 2>&3\nmark end {i} $?\n",
                    quote(&run.dir.display().to_string()),
                    quote(&run.exe.display().to_string()),
                );
            }
        }
        Work::Refusal { enforcer, policy } => {
            s += &format!(
                "mkdir -p /sys/fs/cgroup/enforcer-vm\n\
                 mark begin refusal\n\
                 timeout -k 5 {REFUSAL_LIMIT_SECS} {} daemon --policy {} --cgroup-root /enforcer-vm \
                 --pin-dir {REFUSAL_PINS} --socket /run/enforcer-vm.sock --state-dir /run/enforcer-vm >&3 2>&3\n\
                 code=$?\n\
                 if [ -e {REFUSAL_PINS} ]; then pins=present; else pins=absent; fi\n\
                 mark end refusal $code $pins\n",
                quote(&enforcer.display().to_string()),
                quote(&policy.display().to_string()),
            );
        }
    }
    s += "mark done\necho o > /proc/sysrq-trigger\nsleep 60\n";
    s
}

/// Where the package and its check sit in the guest.
pub const PACKAGE_DEB: &str = "/enforcer-package/enforcer.deb";
pub const PACKAGE_CHECK: &str = "/enforcer-package/check";
/// Under software emulation the verifier alone takes minutes.
const PACKAGE_START_LIMIT_SECS: u64 = 900;

/// The Debian package's check, run in the guest after the suite as one more executable: it
/// installs the package and uses it as an administrator would, one libtest-style line per
/// step (so the host counts them as it counts tests), and exits 1 if any failed. The daemon
/// runs on the whole guest with the package's own defaults, as the unit starts it.
/// `version` is what the packaged binary's `--version` must print.
pub fn package_script(version: &str) -> String {
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask vm-test`: the Debian package, installed and used in the guest.
expected_version={version}
failed=0
# Each step runs in this shell (not a subshell), so that the daemon it starts stays its child.
check() {{
    name=$1
    shift
    if "$@" >/run/enforcer-package.out 2>&1; then
        echo "test package::$name ... ok"
    else
        cat /run/enforcer-package.out
        echo "test package::$name ... FAILED"
        failed=1
    fi
}}
ships() {{
    for path in "$@"; do
        dpkg -L enforcer | grep -qx "$path" || {{ echo "the package lacks $path"; return 1; }}
    done
}}
version_matches() {{
    actual=$(/usr/bin/enforcer --version) || return 1
    [ "$actual" = "$expected_version" ] || {{ printf 'got:\n%s\nexpected:\n%s\n' "$actual" "$expected_version"; return 1; }}
}}
is_conffile() {{
    dpkg-query -W -f='${{Conffiles}}\n' enforcer | grep -q '^ /etc/enforcer/policy.yaml '
}}
unit_runs_the_binary() {{
    exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' /usr/lib/systemd/system/enforcer.service)
    [ -x "$exec_start" ] || {{ echo "the unit's ExecStart names $exec_start, which is not installed"; return 1; }}
}}
not_enabled() {{
    ! ls /etc/systemd/system/*.wants/enforcer.service 2>/dev/null
}}
daemon_serves() {{
    /usr/bin/enforcer daemon --policy /etc/enforcer/policy.yaml >/run/enforcer-package.log 2>&1 &
    daemon=$!
    i=0
    while [ $i -lt {PACKAGE_START_LIMIT_SECS} ]; do
        if /usr/bin/enforcer status >/run/enforcer-package.status 2>&1; then
            grep -q '^generation: *1$' /run/enforcer-package.status && return 0
            cat /run/enforcer-package.status
            return 1
        fi
        if ! kill -0 $daemon 2>/dev/null; then
            echo "the daemon exited:"
            cat /run/enforcer-package.log
            return 1
        fi
        sleep 1
        i=$((i + 1))
    done
    echo "the daemon did not answer within {PACKAGE_START_LIMIT_SECS} s:"
    cat /run/enforcer-package.log
    return 1
}}
stopped_enforcement_stays() {{
    kill $daemon
    wait $daemon
    [ -e /sys/fs/bpf/enforcer ] || {{ echo "the pins went with the daemon"; return 1; }}
}}
removal_tears_down() {{
    dpkg -r enforcer || return 1
    [ ! -e /sys/fs/bpf/enforcer ] || {{ echo "pins left:"; ls -R /sys/fs/bpf/enforcer; return 1; }}
    [ -f /etc/enforcer/policy.yaml ] || {{ echo "remove took the conffile"; return 1; }}
}}
purge_removes_the_policy() {{
    dpkg -P enforcer && [ ! -e /etc/enforcer/policy.yaml ]
}}
check install dpkg -i {deb}
check contents ships /usr/bin/enforcer /etc/enforcer/policy.yaml \
    /usr/lib/systemd/system/enforcer.service /usr/share/man/man1/enforcer-daemon.1.gz \
    /usr/share/bash-completion/completions/enforcer
check policy_is_a_conffile is_conffile
check unit_runs_the_binary unit_runs_the_binary
check unit_not_enabled not_enabled
check version version_matches
check policy_check /usr/bin/enforcer policy check /etc/enforcer/policy.yaml
check daemon_serves daemon_serves
check stopped_enforcement_stays stopped_enforcement_stays
check removal_tears_down removal_tears_down
check purge_removes_the_policy purge_removes_the_policy
exit $failed
"#,
        version = quote(version),
        deb = quote(PACKAGE_DEB),
    )
}

/// `text` as one word for the guest's shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when the host can create a VM and a guest boots with it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        }
    }
}

/// Whether the host can create a KVM virtual machine at all. A guest may still fail to boot
/// under it (a `/dev/kvm` inside a VM whose nested virtualisation is incomplete), which only
/// a boot shows.
pub fn kvm_available() -> bool {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(kvm) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // SAFETY: both ioctls take no argument pointer; KVM_CREATE_VM returns a new fd we own.
    unsafe {
        if libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) != 12 {
            return false;
        }
        let vm = libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0);
        if vm < 0 {
            return false;
        }
        drop(OwnedFd::from_raw_fd(vm));
    }
    true
}

pub struct Boot<'a> {
    pub accel: Accel,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub console_log: &'a Path,
    pub boot_limit: Duration,
    pub run_limit: Duration,
}

pub enum Ended {
    /// The guest said `done` and powered off.
    Done,
    /// No `ready` within the boot limit.
    BootTimeout,
    /// No `done` within the run limit.
    RunTimeout,
    /// qemu exited before the guest said `done`.
    Exited(String),
}

pub struct Session {
    pub ended: Ended,
    /// From starting qemu to the guest's `ready`.
    pub boot: Option<Duration>,
    /// From `ready` to `done` (or to the end).
    pub run: Option<Duration>,
    /// Everything the guest wrote on the results port.
    pub lines: Vec<String>,
}

/// Boots the guest and collects its results port; `on_line` sees each line as it arrives.
pub fn boot(b: &Boot, on_line: &mut dyn FnMut(&str)) -> Result<Session> {
    let mut cmd = Command::new("qemu-system-x86_64");
    match b.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Auto | Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args([
        "-m",
        "4096",
        "-smp",
        "2",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
    ])
    .arg("-kernel")
    .arg(b.vmlinuz)
    .arg("-initrd")
    .arg(b.initrd)
    .args([
        "-append",
        "console=ttyS0,115200 rdinit=/init panic=-1 oops=panic",
    ])
    .arg("-serial")
    .arg(format!("file:{}", b.console_log.display()))
    .args(["-serial", "stdio"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("qemu stdout")?;
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });

    let mut lines = Vec::new();
    let mut ready: Option<Instant> = None;
    let ended = loop {
        let deadline = match ready {
            None => start + b.boot_limit,
            Some(at) => at + b.run_limit,
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(line) => {
                on_line(&line);
                if let Some(rest) = line.strip_prefix(MARK) {
                    if rest.starts_with("ready") {
                        ready = Some(Instant::now());
                    } else if rest == "done" {
                        lines.push(line);
                        break Ended::Done;
                    }
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break if ready.is_none() {
                    Ended::BootTimeout
                } else {
                    Ended::RunTimeout
                };
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Ended::Exited(String::new());
            }
        }
    };
    let finished = Instant::now();
    // After `done` the guest powers itself off and qemu exits, which closes its stdout; a
    // guest that does not is killed, as is one that timed out.
    if matches!(ended, Ended::Done) {
        let grace = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            on_line(&line);
            lines.push(line);
        }
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let ended = match ended {
        Ended::Exited(_) => Ended::Exited(errors.join().unwrap_or_default()),
        other => other,
    };
    Ok(Session {
        ended,
        boot: ready.map(|at| at - start),
        run: ready.map(|at| finished - at),
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_one_word() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    /// The package check is only ever run in a guest; its shell syntax, at least, is checked
    /// on every `cargo test`.
    #[test]
    fn the_package_check_is_valid_shell() {
        let script = package_script("enforcer 0.1.0\ncommit: it's");
        let out = Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .expect("running sh -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(script.contains("expected_version='enforcer 0.1.0\ncommit: it'\\''s'"));
    }
}
