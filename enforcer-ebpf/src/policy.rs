//! Reading the active policy slot. A program calls [`active`] once and passes the slot to
//! every later lookup, so one decision never mixes two policies (see `enforcer_common::maps`).

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use enforcer_common::{
    maps::{BindingKey, DomainKey, EdgeKey, PolicyConfig, PortRules},
    verdict::{self, Peer, Rules, Verdict},
};

use crate::maps::{ACTIVE, BINDINGS, EDGES, MODES, POLICY};

pub struct Active {
    pub slot: u32,
    pub config: &'static PolicyConfig,
}

/// The active slot and its defaults, or `None` before any policy was written (the daemon
/// attaches programs only after writing one, so this is a "cannot happen" that fails open
/// only for a map that was never filled).
#[inline(always)]
pub fn active() -> Option<Active> {
    let slot = *ACTIVE.get(0)?;
    let config = POLICY.get(slot)?;
    Some(Active { slot, config })
}

impl Active {
    /// The decision for a flow at boot-time nanosecond `now`.
    #[inline(always)]
    pub fn decide(&self, from: Peer, to: Peer, protocol: u32, port: u16, now: u64) -> Verdict {
        verdict::decide(from, to, self.config, protocol, port, now, self)
    }
}

impl Rules for Active {
    #[inline(always)]
    fn edges(&self, from: u32, to: u32) -> Option<&PortRules> {
        let key = EdgeKey {
            slot: self.slot,
            from,
            to,
        };
        // SAFETY: values are only ever replaced whole by the daemon, for the slot no program
        // is reading; the reference does not outlive this program run.
        unsafe { EDGES.get(&key) }
    }

    #[inline(always)]
    fn mode(&self, domain: u32) -> Option<u32> {
        let key = DomainKey {
            slot: self.slot,
            domain,
        };
        // SAFETY: the value is a plain u32 copied out at once.
        unsafe { MODES.get(&key) }.copied()
    }
}

/// The clock edge validity windows are written in: `CLOCK_BOOTTIME`, which never jumps
/// (unlike the wall clock) and keeps counting through suspend (unlike `CLOCK_MONOTONIC`),
/// so an edge does not outlive its expiry by the time a laptop slept.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn binding(slot: u32, cgroup_id: u64) -> Option<u32> {
    let key = BindingKey {
        slot,
        _pad: 0,
        cgroup_id,
    };
    // SAFETY: the value is a plain u32 copied out at once.
    unsafe { BINDINGS.get(&key) }.copied()
}
