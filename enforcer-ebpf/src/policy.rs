//! Reading the active policy slot. A program calls [`active`] once and passes the slot to
//! every later lookup, so one decision never mixes two policies (see `enforcer_common::maps`).

use enforcer_common::maps::{BindingKey, EdgeKey, PolicyConfig, PortRules};

use crate::maps::{ACTIVE, BINDINGS, EDGES, POLICY};

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

#[inline(always)]
pub fn edge_rules(slot: u32, from: u32, to: u32) -> Option<&'static PortRules> {
    let key = EdgeKey { slot, from, to };
    // SAFETY: values are only ever replaced whole by the daemon, for the slot no program is
    // reading; the reference does not outlive this program run.
    unsafe { EDGES.get(&key) }
}
