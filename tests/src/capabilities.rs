//! Running every daemon a test starts with only the capabilities its systemd unit grants, to
//! prove that set is enough. `ENFORCER_TEST_DAEMON_CAPS` names them as the unit does
//! (`CAP_BPF CAP_NET_ADMIN ...`; `cargo xtask test --daemon-caps` reads them from
//! `packaging/enforcer.service`); the daemon then runs under setpriv(1) as root with exactly
//! those in its bounding, inheritable, permitted and effective sets, and with no_new_privs, as
//! systemd starts it. The harness reads the running daemon's sets back from
//! `/proc/PID/status`, so a wrapper that grants more cannot pass unnoticed.

use std::{path::Path, process::Command};

/// The capabilities every daemon a test starts is limited to, when set.
pub const DAEMON_CAPS_ENV: &str = "ENFORCER_TEST_DAEMON_CAPS";

/// Capability names by number, as capabilities(7) lists them (Linux 5.9+: 0 to 40).
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// A set of capabilities, by their names without `CAP_`, lower case.
pub struct Capabilities {
    names: Vec<&'static str>,
}

/// The set [`DAEMON_CAPS_ENV`] names, if it is set; panics on a name that is no capability.
pub fn daemon_capabilities() -> Option<Capabilities> {
    std::env::var(DAEMON_CAPS_ENV)
        .ok()
        .map(|value| Capabilities::parse(&value))
}

impl Capabilities {
    /// The capabilities `list` names as systemd does (`CAP_BPF CAP_NET_ADMIN`, separated by
    /// spaces or commas); panics on a name that is no capability.
    pub fn parse(list: &str) -> Self {
        let names = list
            .split([' ', ','])
            .filter(|name| !name.is_empty())
            .map(|name| {
                let lower = name.to_ascii_lowercase();
                let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
                NAMES
                    .iter()
                    .copied()
                    .find(|known| *known == bare)
                    .unwrap_or_else(|| panic!("{name} is not a capability"))
            })
            .collect();
        Self { names }
    }
}

impl Capabilities {
    /// `program` run by setpriv with only these capabilities.
    pub fn wrap(&self, program: &Path) -> Command {
        let list: String = self.names.iter().map(|name| format!(",+{name}")).collect();
        let mut command = Command::new("setpriv");
        command
            .arg("--no-new-privs")
            .arg(format!("--inh-caps=-all{list}"))
            .arg(format!("--bounding-set=-all{list}"))
            .arg("--")
            .arg(program);
        command
    }

    /// The set as the kernel shows it in `/proc/PID/status`.
    fn mask(&self) -> u64 {
        self.names
            .iter()
            .filter_map(|name| NAMES.iter().position(|known| known == name))
            .fold(0, |mask, bit| mask | 1 << bit)
    }

    /// Panics unless process `pid` has exactly these capabilities in its bounding, permitted
    /// and effective sets.
    pub fn check(&self, pid: u32) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
        for set in ["CapBnd", "CapPrm", "CapEff"] {
            let mask = status
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{set}:")))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("/proc/{pid}/status has no {set}"));
            assert_eq!(
                mask,
                self.mask(),
                "the daemon (pid {pid}) runs with {set} {mask:#x}, not with {} ({:#x})",
                self.names.join(","),
                self.mask()
            );
        }
    }
}
