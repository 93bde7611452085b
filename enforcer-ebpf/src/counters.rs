//! What the programs count for the daemon: refusals and audited flows per pair of peers, and
//! how often and how recently each edge let a flow through. The maps are per CPU: the BPF
//! target has no atomic read-modify-write in Rust's `core`, and per-CPU values need none
//! (a program runs with migration disabled). The daemon sums the CPUs' values.

use aya_ebpf::bindings::BPF_NOEXIST;
use enforcer_common::{
    maps::{EdgeUse, PairCounts, PairKey},
    verdict::{Peer, Verdict},
};

use crate::maps::{COUNTS, EDGE_USE};

/// A call, handshake or datagram refused, or a live connection ended.
#[inline(always)]
pub fn denied(from: Peer, to: Peer) {
    if let Some(counts) = pair(from, to) {
        // SAFETY: `counts` points into a live map value.
        add(unsafe { &raw mut (*counts).denied });
    }
}

/// A new flow the policy refuses, let through by audit mode.
#[inline(always)]
pub fn would_deny(from: Peer, to: Peer) {
    if let Some(counts) = pair(from, to) {
        // SAFETY: `counts` points into a live map value.
        add(unsafe { &raw mut (*counts).would_deny });
    }
}

/// Counts a new flow that `verdict` allowed: against its edge, or as a would-be refusal.
#[inline(always)]
pub fn allowed(verdict: &Verdict, from: Peer, to: Peer, now: u64) {
    if verdict.audited {
        would_deny(from, to);
    } else if verdict.edge != 0 {
        edge_used(verdict.edge, now);
    }
}

#[inline(always)]
fn edge_used(edge: u32, now: u64) {
    let usage = match EDGE_USE.get_ptr_mut(edge) {
        Some(usage) => usage,
        None => {
            // Two CPUs may race to create the entry; NOEXIST lets exactly one win.
            let _ = EDGE_USE.insert(edge, EdgeUse::default(), BPF_NOEXIST.into());
            let Some(usage) = EDGE_USE.get_ptr_mut(edge) else {
                return;
            };
            usage
        }
    };
    // SAFETY: `usage` points into this CPU's copy of a live map value.
    unsafe {
        add(&raw mut (*usage).connections);
        (*usage).last_used = now;
    }
}

#[inline(always)]
fn pair(from: Peer, to: Peer) -> Option<*mut PairCounts> {
    let key = PairKey {
        from: from.encode(),
        to: to.encode(),
    };
    if let Some(counts) = COUNTS.get_ptr_mut(key) {
        return Some(counts);
    }
    // A full map drops the count; the daemon reports the map's fill level.
    let _ = COUNTS.insert(key, PairCounts::default(), BPF_NOEXIST.into());
    COUNTS.get_ptr_mut(key)
}

#[inline(always)]
fn add(counter: *mut u64) {
    // SAFETY: the caller passes a pointer into this CPU's copy of a live map value.
    unsafe { *counter += 1 };
}
