//! Reading the active policy slot. A program calls [`active`] once and passes the slot to
//! every later lookup, so one decision never mixes two policies (see `enforcer_common::maps`).

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_loop},
};
use enforcer_common::{
    maps::{
        BindingKey, DomainKey, EdgeKey, MAX_PORT_RANGES, PolicyConfig, PortChunk, RANGES_PER_CHUNK,
    },
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
    /// The ranges are scanned with `bpf_loop` (Linux 5.17+), so the verifier checks one pass
    /// of the scan, not one per range: an unrolled scan of up to `MAX_PORT_RANGES` ranges,
    /// each way out of it explored on its own through the rest of the program, took the
    /// ingress program past the million instructions the verifier of Linux 6.1 accepts.
    #[inline(always)]
    fn ports(&self, from: u32, to: u32, protocol: u32, port: u16, now: u64) -> Option<PortMatch> {
        // The pair's first chunk is looked up by the scan itself, like every later one.
        let mut scan = Scan {
            key: EdgeKey {
                from,
                to,
                // SLOTS is 2.
                slot: self.slot as u16,
                chunk: 0,
            },
            port,
            // A `PROTO_*` bit.
            protocol: protocol as u8,
            found: FOUND_NO_EDGE,
            chunk: None,
            now,
            until: 0,
            edge: 0,
        };
        // SAFETY: the callback only reads map values and writes `scan`, which outlives the
        // call.
        unsafe {
            bpf_loop(
                MAX_PORT_RANGES as u32,
                scan_range as *mut c_void,
                (&mut scan as *mut Scan).cast(),
                0,
            );
        }
        match scan.found {
            FOUND_NO_EDGE => None,
            FOUND_CLOSED => Some(PortMatch::Closed),
            FOUND_OUTSIDE => Some(PortMatch::OutsideWindow),
            _ => Some(PortMatch::Open {
                edge: scan.edge,
                until: scan.until,
            }),
        }
    }

    #[inline(always)]
    fn mode(&self, domain: u32) -> Option<u32> {
        let key = DomainKey {
            slot: self.slot,
            domain,
        };
        // SAFETY: the value is a plain u32 copied out at once.
        unsafe { MODES.get(key) }.copied()
    }
}

/// No chunk 0: no edge joins the pair.
const FOUND_NO_EDGE: u8 = 0;
const FOUND_CLOSED: u8 = 1;
const FOUND_OUTSIDE: u8 = 2;
/// A range opens the flow: `Scan::edge` until `Scan::until`.
const FOUND_OPEN: u8 = 3;

/// The state of a port scan, shared with its `bpf_loop` callback, on the stack of the
/// program that judges. Linux 6.1 counts that program's frame and the callback's together
/// against the 512-byte limit (see `events::emit`).
#[repr(C)]
struct Scan<'a> {
    /// The key of the chunk in `chunk`.
    key: EdgeKey,
    port: u16,
    protocol: u8,
    /// `FOUND_*`.
    found: u8,
    chunk: Option<&'a PortChunk>,
    now: u64,
    until: u64,
    edge: u32,
}

/// One step of the scan: range `index` of the pair, in chunk `index / RANGES_PER_CHUNK`,
/// which is looked up when the scan reaches it; returns 1 to stop (the first open range
/// decides, as in `ports_allow`), 0 to go on.
extern "C" fn scan_range(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` `ports` passed to `bpf_loop`, alive for the whole loop.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let within = (index % RANGES_PER_CHUNK as u64) as usize;
    if within == 0 {
        scan.key.chunk = (index / RANGES_PER_CHUNK as u64) as u16;
        // SAFETY: values are only ever replaced whole by the daemon, for the slot no program
        // is reading; the reference does not outlive this program run.
        match unsafe { EDGES.get(scan.key) } {
            Some(chunk) => scan.chunk = Some(chunk),
            None => return 1,
        }
        if index == 0 {
            scan.found = FOUND_CLOSED;
        }
    }
    let Some(chunk) = scan.chunk else {
        return 1;
    };
    // Every chunk of a pair carries the pair's count.
    if index >= u64::from(chunk.count) {
        return 1;
    }
    let Some(range) = chunk.ranges.get(within) else {
        return 1;
    };
    match verdict::judge_range(range, u32::from(scan.protocol), scan.port, scan.now) {
        PortMatch::Open { edge, until } => {
            scan.found = FOUND_OPEN;
            scan.edge = edge;
            scan.until = until;
            1
        }
        PortMatch::OutsideWindow => {
            scan.found = FOUND_OUTSIDE;
            0
        }
        PortMatch::Closed => 0,
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
    unsafe { BINDINGS.get(key) }.copied()
}
