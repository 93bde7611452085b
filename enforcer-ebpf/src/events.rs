//! Decision events for the daemon (see `enforcer_common::event`). A record is written in
//! place into the ring buffer; when the buffer is full the record is dropped and counted in
//! `ENF_EVENTS_LOST`, which the daemon reports, so a loss is never silent. The decision itself
//! never waits on the buffer.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_skb_cgroup_id,
    },
};
use core::ffi::c_void;
use enforcer_common::{
    event::{VERDICT_ALLOWED, VERDICT_AUDITED, VERDICT_REFUSED},
    verdict::{Peer, Verdict},
};

use crate::{
    maps::{EVENTS, EVENTS_LOST},
    packet::Packet,
};

/// Who made the decision happen.
#[derive(Clone, Copy)]
pub enum Origin {
    /// A task calling `connect()` or `sendmsg()`: its pid, name and cgroup are known.
    Task,
    /// A packet, handled in whatever task happened to run: only the socket's cgroup is known.
    Packet(*mut c_void),
}

/// The judgement of one flow, as the event reports it.
pub struct Decision<'a> {
    pub hook: u8,
    pub verdict: &'a Verdict,
    pub from: Peer,
    pub to: Peer,
    pub protocol: u32,
    pub generation: u64,
    pub now: u64,
}

/// [`emit`] for a packet's decision (`Origin::Packet`), as a subprogram of its own: inlined
/// at its two call sites in ingress, `emit` took that program's frame to 488 bytes, and
/// Linux 6.1 adds the 32 bytes it counts for the port scan's `bpf_loop` callback to the frame
/// that calls it, against a limit of 512 ("combined stack size of 2 calls is 544. Too
/// large"). As a subprogram it costs one call per event and 24 bytes of stack of its own, on
/// a chain beside the callback's, not on top of it. Only the skb programs call it, so no
/// socket-address program contains `bpf_skb_cgroup_id`, which they may not call.
#[inline(never)]
pub fn emit_packet(decision: &Decision, ends: &Packet, skb: *mut c_void) {
    emit(decision, ends, Origin::Packet(skb));
}

/// Reports `decision` about the flow with `ends`' addresses and ports.
#[inline(always)]
pub fn emit(decision: &Decision, ends: &Packet, origin: Origin) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        lost();
        return;
    };
    let event = entry.as_mut_ptr();
    let verdict = decision.verdict;
    // SAFETY: `event` points at a reserved record of `size_of::<Event>()` bytes that only this
    // program run writes; every field is written before it is submitted.
    unsafe {
        (*event).time = decision.now;
        (*event).generation = decision.generation;
        (*event).from = decision.from.encode();
        (*event).to = decision.to.encode();
        (*event).edge = verdict.edge;
        (*event).sport = u16::from_be(ends.sport);
        (*event).dport = u16::from_be(ends.dport);
        (*event).verdict = if !verdict.allow {
            VERDICT_REFUSED
        } else if verdict.audited {
            VERDICT_AUDITED
        } else {
            VERDICT_ALLOWED
        };
        (*event).reason = verdict.reason.code();
        (*event).protocol = decision.protocol as u8;
        (*event).family = ends.dst.family;
        (*event).hook = decision.hook;
        (*event)._pad = [0; 7];
        (*event).src = ends.src.bytes;
        (*event).dst = ends.dst.bytes;
        match origin {
            Origin::Task => {
                (*event).cgroup = bpf_get_current_cgroup_id();
                (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
                let comm = &raw mut (*event).comm;
                if bpf_get_current_comm(comm.cast(), 16) != 0 {
                    (*event).comm = [0; 16];
                }
            }
            Origin::Packet(skb) => {
                (*event).cgroup = bpf_skb_cgroup_id(skb.cast());
                (*event).pid = 0;
                (*event).comm = [0; 16];
            }
        }
    }
    // Waking the daemon costs an interrupt and a context switch per record when it keeps up,
    // which at thousands of allowed connections a second is most of the cost of an event.
    // Crossings therefore wait for the daemon's next poll (it polls every 200 ms). Refusals
    // force the wake-up, and carry the waiting crossings with them: the default (adaptive)
    // wake-up fires only when the daemon has consumed everything before the record
    // (`bpf_ringbuf_commit`), which is never the case behind a crossing not yet read.
    entry.submit(if verdict.allow {
        BPF_RB_NO_WAKEUP.into()
    } else {
        BPF_RB_FORCE_WAKEUP.into()
    });
}

#[inline(always)]
fn lost() {
    if let Some(count) = EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of a live array element; programs on one CPU do not
        // interleave (they run with migration disabled and are not re-entered by these hooks).
        unsafe { *count += 1 };
    }
}
