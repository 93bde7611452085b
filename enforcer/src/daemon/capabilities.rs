//! The capabilities the daemon uses beyond loading programs, and what quietly goes missing
//! without each: a unit or container that grants too few gets a warning at start rather than
//! events without cgroups or pods nobody judges. Without CAP_BPF or CAP_PERFMON the start
//! itself fails (the feature probe names the helper the verifier withheld), so they are not
//! listed here. The set the systemd unit grants, and why, is in the README ("Running under
//! systemd").

/// Capability numbers from include/uapi/linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// Each capability, and what the daemon cannot do without it.
const USES: [(u32, &str, &str); 4] = [
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "connections a policy change refuses are not ended (SOCK_DESTROY); the kernel still \
         drops their packets",
    ),
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "pod network namespaces cannot be entered (setns), so pod addresses are not learnt",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "sockets that existed before enforcement cannot be tagged (pidfd_getfd) and other \
         users' network namespaces cannot be opened",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "events cannot name the cgroup they came from (open_by_handle_at)",
    ),
];

/// A warning for each capability missing from this process's effective set.
pub fn warnings() -> Vec<String> {
    match effective() {
        Some(set) => missing(set),
        None => vec!["could not read this process's capabilities from /proc/self/status".into()],
    }
}

/// `CapEff` from /proc/self/status.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing(effective: u64) -> Vec<String> {
    USES.iter()
        .filter(|(bit, ..)| effective & (1 << bit) == 0)
        .map(|(_, name, without)| format!("running without {name}: {without}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_capability_missing_and_nothing_else() {
        assert!(missing(u64::MAX).is_empty());
        let all = USES.iter().fold(0u64, |set, (bit, ..)| set | 1 << bit);
        assert!(missing(all).is_empty());
        let without = missing(all & !(1 << CAP_DAC_READ_SEARCH));
        assert_eq!(without.len(), 1);
        assert!(
            without[0].starts_with("running without CAP_DAC_READ_SEARCH: events"),
            "{without:?}"
        );
        assert_eq!(missing(0).len(), USES.len());
    }

    #[test]
    fn reads_its_own_set() {
        assert!(effective().is_some());
    }
}
