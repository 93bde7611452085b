//! Reading the active policy slot. A program calls [`active`] once and passes the slot to
//! every later lookup, so one decision never mixes two policies (see `enforcer_common::maps`).

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_loop},
};
use enforcer_common::{
    maps::{BindingKey, DomainKey, EdgeKey, MAX_PORT_RANGES, PolicyConfig, PortRules},
    verdict::{self, Peer, PortMatch, Rules, Verdict},
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

    /// The ranges are scanned with `bpf_loop` (Linux 5.17+), so the verifier checks one pass
    /// of the scan, not one per range: an unrolled scan of up to `MAX_PORT_RANGES` ranges,
    /// each way out of it explored on its own through the rest of the program, took the
    /// ingress program past the million instructions the verifier of Linux 6.1 accepts.
    #[inline(always)]
    fn ports(&self, rules: &PortRules, protocol: u32, port: u16, now: u64) -> PortMatch {
        let mut scan = Scan {
            rules,
            protocol,
            now,
            port,
            found: FOUND_CLOSED,
            edge: 0,
            until: 0,
        };
        // SAFETY: the callback only reads `rules` and writes `scan`, which outlive the call.
        unsafe {
            bpf_loop(
                MAX_PORT_RANGES as u32,
                scan_range as *mut c_void,
                (&mut scan as *mut Scan).cast(),
                0,
            );
        }
        match scan.found {
            FOUND_OPEN => PortMatch::Open {
                edge: scan.edge,
                until: scan.until,
            },
            FOUND_OUTSIDE => PortMatch::OutsideWindow,
            _ => PortMatch::Closed,
        }
    }
}

const FOUND_CLOSED: u32 = 0;
const FOUND_OUTSIDE: u32 = 1;
const FOUND_OPEN: u32 = 2;

/// The state of a port scan, shared with its `bpf_loop` callback.
#[repr(C)]
struct Scan<'a> {
    rules: &'a PortRules,
    protocol: u32,
    port: u16,
    now: u64,
    found: u32,
    edge: u32,
    until: u64,
}

/// One step of the scan: range `index`; returns 1 to stop (the first open range decides, as
/// in `ports_allow`), 0 to go on.
extern "C" fn scan_range(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` `ports` passed to `bpf_loop`, alive for the whole loop.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let Some(range) = scan.rules.ranges.get(index as usize) else {
        return 1;
    };
    if index >= u64::from(scan.rules.count) {
        return 1;
    }
    if range.protocols & scan.protocol != 0 && range.first <= scan.port && scan.port <= range.last {
        if range.not_before <= scan.now && scan.now < range.not_after {
            scan.found = FOUND_OPEN;
            scan.edge = range.edge;
            scan.until = range.not_after;
            return 1;
        }
        scan.found = FOUND_OUTSIDE;
    }
    0
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
