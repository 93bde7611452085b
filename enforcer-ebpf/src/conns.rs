//! Connections outlive the call that judged them. A TCP connection or connected UDP socket
//! whose flow something can revoke or expire keeps the flow it was judged as in socket
//! storage (`ENF_CONNS`), and each packet it sends or receives is checked against it: while
//! the policy generation and the allowing edge's validity are unchanged that costs one storage
//! read; when either changed the flow is judged again from the stored peers. So a revoked or
//! expired edge stops a connection in the kernel itself, with or without the daemon.
//!
//! A flow nothing can revoke (same domain, or no domain) keeps no state of its own: the
//! socket's tag says so in its `flow` byte, which every packet reads anyway, so such a
//! connection costs one storage read per packet and no allocation.
//!
//! An accepted TCP socket does not exist yet when its listener judges the handshake, so the
//! listener leaves the judged flow in `ENF_ACCEPTS` under the connection's four-tuple, and
//! the accepted socket takes it over at its first packet. Its tag, copied from the listener's,
//! says `FLOW_UNKNOWN` until then (the listener's own is reset at every SYN it is sent).

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, helpers::generated::bpf_sk_storage_get,
    programs::SkBuffContext,
};
use core::ffi::c_void;
use enforcer_common::{
    event::HOOK_ESTABLISHED,
    maps::{
        AcceptKey, CONN_ALLOWED, CONN_AUDITED, CONN_REFUSED, CONN_UNTRACKED, ConnState, FLOW_FREE,
        FLOW_TRACKED, FLOW_UNKNOWN, NEVER, PROTO_TCP, SockTag,
    },
    verdict::{Peer, Verdict},
};

use crate::{
    counters,
    events::{self, Decision},
    identity,
    maps::{ACCEPTS, CONNS, UDP_CONNS},
    packet,
    policy::{self, Active},
};

/// The state of a flow judged by `verdict` under `active`.
#[inline(always)]
pub fn judged(
    verdict: &Verdict,
    from: Peer,
    to: Peer,
    protocol: u32,
    port: u16,
    active: &Active,
) -> ConnState {
    ConnState {
        generation: active.config.generation,
        until: if verdict.allow { verdict.until } else { NEVER },
        from: from.encode(),
        to: to.encode(),
        edge: verdict.edge,
        port,
        protocol: protocol as u8,
        status: status(verdict),
    }
}

#[inline(always)]
fn status(verdict: &Verdict) -> u8 {
    if !verdict.revocable() {
        CONN_UNTRACKED
    } else if verdict.audited {
        CONN_AUDITED
    } else if verdict.allow {
        CONN_ALLOWED
    } else {
        CONN_REFUSED
    }
}

/// Records the flow a socket is connecting (`sk` from a sock_addr context): in its tag alone
/// when nothing can revoke it, otherwise in `ENF_CONNS` as well.
#[inline(always)]
pub fn remember(sk: *mut c_void, state: ConnState) {
    let mut tag = identity::tag_mut(sk);
    if state.status == CONN_UNTRACKED
        && let Some(tag) = tag.as_deref_mut()
    {
        // A socket connected before (a UDP socket connects again, a TCP one after a refused
        // attempt) may hold an earlier value: it is overwritten, so that it names no flow the
        // daemon would end.
        // SAFETY: flags 0 never creates; a non-null result points at a live ConnState.
        let earlier = unsafe { bpf_sk_storage_get(CONNS.as_ptr(), sk, core::ptr::null_mut(), 0) };
        if !earlier.is_null() {
            // SAFETY: checked non-null; the storage holds a ConnState.
            unsafe { *earlier.cast::<ConnState>() = state };
        }
        tag.flow = FLOW_FREE;
        return;
    }
    let mut init = state;
    // SAFETY: with F_CREATE the helper initialises new storage from `init` or returns the
    // existing value, which is overwritten whole: a reconnected UDP socket has a new peer.
    let stored = unsafe {
        bpf_sk_storage_get(
            CONNS.as_ptr(),
            sk,
            core::ptr::from_mut(&mut init).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    };
    if stored.is_null() {
        return;
    }
    // SAFETY: checked non-null; the storage holds a ConnState.
    unsafe { *stored.cast::<ConnState>() = state };
    // Set after the value is in place, so a packet that reads FLOW_TRACKED finds it.
    if let Some(tag) = tag {
        tag.flow = FLOW_TRACKED;
    }
}

/// Records a connected UDP socket's flow by cookie as well, where the daemon can read it:
/// inet_diag dumps socket storage only for TCP sockets (`inet_sk_diag_fill` reaches the
/// storage attribute only on the connection-socket path).
#[inline(always)]
pub fn remember_udp(cookie: u64, state: &ConnState) {
    // A full LRU map forgets the oldest connect; its packets are still checked in-kernel.
    let _ = UDP_CONNS.insert(cookie, state, 0);
}

/// Forgets what an earlier connect of a UDP socket recorded by cookie, once it connects to a
/// peer nothing can revoke: the daemon must not end it for its earlier peer.
#[inline(always)]
pub fn forget_udp(cookie: u64) {
    let _ = UDP_CONNS.remove(cookie);
}

/// Leaves a handshake's judged flow for the socket the listener will accept.
#[inline(always)]
pub fn accepted(key: &AcceptKey, state: &ConnState) {
    // A full LRU map evicts the oldest entry; its connection's socket then starts untracked.
    let _ = ACCEPTS.insert(key, state, 0);
}

/// Whether the packet in `ctx`, which the connected full socket `sk` with tag `tag` sends
/// (`outgoing`) or receives, may pass.
#[inline(always)]
pub fn check(
    ctx: &SkBuffContext,
    sk: *mut c_void,
    tag: Option<&mut SockTag>,
    protocol: u32,
    outgoing: bool,
) -> bool {
    let flow = tag.as_ref().map_or(FLOW_UNKNOWN, |t| t.flow);
    if flow == FLOW_FREE {
        return true;
    }
    // SAFETY: flags 0 never creates; a non-null result points at a live ConnState.
    let mut stored = unsafe { bpf_sk_storage_get(CONNS.as_ptr(), sk, core::ptr::null_mut(), 0) };
    if stored.is_null() {
        // Unconnected UDP sockets have no storage: each datagram is judged on its own.
        if protocol != PROTO_TCP {
            return true;
        }
        // An accepted TCP socket seen for the first time: its key is the packet's four-tuple.
        let key = packet::parse(ctx).map(|p| packet::four_tuple(&p, outgoing));
        stored = adopt(sk, tag, key);
        if stored.is_null() {
            return true;
        }
    } else if flow == FLOW_UNKNOWN
        && let Some(tag) = tag
    {
        // SAFETY: checked non-null; the storage holds a ConnState.
        let untracked = unsafe { (*stored.cast::<ConnState>()).status } == CONN_UNTRACKED;
        tag.flow = if untracked { FLOW_FREE } else { FLOW_TRACKED };
    }
    // SAFETY: checked non-null; the storage holds a ConnState for the socket's lifetime.
    let state = unsafe { &mut *stored.cast::<ConnState>() };
    if state.status == CONN_UNTRACKED {
        return true;
    }
    let Some(active) = policy::active() else {
        return true;
    };
    // A flow allowed with no end (an edge with no window) needs no clock read per packet.
    if state.generation == active.config.generation
        && (state.until == NEVER || policy::now() < state.until)
    {
        return state.status != CONN_REFUSED;
    }
    let now = policy::now();
    let from = Peer::decode(state.from);
    let to = Peer::decode(state.to);
    let protocol = u32::from(state.protocol);
    let verdict = active.decide(from, to, protocol, state.port, now);
    let next = status(&verdict);
    // Counted and reported once per connection end, when its status changes, not once per
    // packet.
    if next != state.status && (next == CONN_AUDITED || next == CONN_REFUSED) {
        if next == CONN_AUDITED {
            counters::would_deny(from, to);
        } else {
            counters::denied(from, to);
        }
        if let Some(ends) = packet::parse(ctx) {
            let decision = Decision {
                hook: HOOK_ESTABLISHED,
                verdict: &verdict,
                from,
                to,
                protocol,
                generation: active.config.generation,
                now,
            };
            events::emit_packet(&decision, &ends, ctx.skb.skb.cast());
        }
    }
    *state = judged(&verdict, from, to, protocol, state.port, &active);
    verdict.allow
}

/// The judged flow of a TCP socket seen for the first time: what its listener left for it,
/// now in its own storage; or none, when nothing can revoke its flow (a connection from
/// before enforcement, or one judged elsewhere), which its tag then says. Null when the
/// packets need no check.
#[inline(always)]
fn adopt(sk: *mut c_void, mut tag: Option<&mut SockTag>, key: Option<AcceptKey>) -> *mut c_void {
    let mut init = ConnState {
        status: CONN_UNTRACKED,
        ..ConnState::default()
    };
    if let Some(key) = key {
        // SAFETY: the state is copied out at once.
        if let Some(found) = unsafe { ACCEPTS.get(key) }.copied() {
            init = found;
            let _ = ACCEPTS.remove(key);
        }
    }
    if init.status == CONN_UNTRACKED
        && let Some(tag) = tag.as_deref_mut()
    {
        tag.flow = FLOW_FREE;
        return core::ptr::null_mut();
    }
    // A socket with no tag (created before enforcement, not reached by the daemon yet) keeps
    // an untracked value, so that its later packets skip the lookup above.
    // SAFETY: F_CREATE initialises the storage from `init`.
    let stored = unsafe {
        bpf_sk_storage_get(
            CONNS.as_ptr(),
            sk,
            core::ptr::from_mut(&mut init).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    };
    if !stored.is_null()
        && let Some(tag) = tag
    {
        tag.flow = FLOW_TRACKED;
    }
    stored
}
