//! Connections outlive the call that judged them. A TCP connection or connected UDP socket
//! keeps the flow it was judged as in socket storage, and each packet it sends or receives
//! is checked against it: while the policy generation and the allowing edge's validity are
//! unchanged that costs one storage read; when either changed the flow is judged again from
//! the stored peers. So a revoked or expired edge stops a connection in the kernel itself,
//! with or without the daemon.
//!
//! An accepted TCP socket does not exist yet when its listener judges the handshake, so the
//! listener leaves the judged flow in `ENF_ACCEPTS` under the connection's four-tuple, and
//! the accepted socket takes it over at its first packet.

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, helpers::generated::bpf_sk_storage_get,
    programs::SkBuffContext,
};
use core::ffi::c_void;
use enforcer_common::{
    event::HOOK_ESTABLISHED,
    maps::{
        AcceptKey, CONN_ALLOWED, CONN_AUDITED, CONN_REFUSED, CONN_UNTRACKED, ConnState, NEVER,
        PROTO_TCP,
    },
    verdict::{Peer, Verdict},
};

use crate::{
    counters,
    events::{self, Decision},
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

/// Records the flow a socket is connecting (`sk` from a sock_addr context).
#[inline(always)]
pub fn remember(sk: *mut c_void, state: ConnState) {
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
    if !stored.is_null() {
        // SAFETY: checked non-null; the storage holds a ConnState.
        unsafe { *stored.cast::<ConnState>() = state };
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

/// Leaves a handshake's judged flow for the socket the listener will accept.
#[inline(always)]
pub fn accepted(key: &AcceptKey, state: &ConnState) {
    // A full LRU map evicts the oldest entry; its connection's socket then starts untracked.
    let _ = ACCEPTS.insert(key, state, 0);
}

/// Whether the packet in `ctx`, which the connected full socket `sk` sends (`outgoing`) or
/// receives, may pass.
#[inline(always)]
pub fn check(ctx: &SkBuffContext, sk: *mut c_void, protocol: u32, outgoing: bool) -> bool {
    // SAFETY: flags 0 never creates; a non-null result points at a live ConnState.
    let mut stored = unsafe { bpf_sk_storage_get(CONNS.as_ptr(), sk, core::ptr::null_mut(), 0) };
    if stored.is_null() {
        // Unconnected UDP sockets have no storage: each datagram is judged on its own.
        if protocol != PROTO_TCP {
            return true;
        }
        // An accepted TCP socket seen for the first time: its key is the packet's four-tuple.
        let key = packet::parse(ctx).map(|p| packet::four_tuple(&p, outgoing));
        stored = adopt(sk, key);
        if stored.is_null() {
            return true;
        }
    }
    // SAFETY: checked non-null; the storage holds a ConnState for the socket's lifetime.
    let state = unsafe { &mut *stored.cast::<ConnState>() };
    if state.status == CONN_UNTRACKED {
        return true;
    }
    let Some(active) = policy::active() else {
        return true;
    };
    let now = policy::now();
    if state.generation == active.config.generation && now < state.until {
        return state.status != CONN_REFUSED;
    }
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

/// Creates the storage of a TCP socket seen for the first time: the flow its listener
/// judged, or untracked (a connection from before enforcement, or one judged elsewhere).
#[inline(always)]
fn adopt(sk: *mut c_void, key: Option<AcceptKey>) -> *mut c_void {
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
    // SAFETY: F_CREATE initialises the storage from `init`.
    unsafe {
        bpf_sk_storage_get(
            CONNS.as_ptr(),
            sk,
            core::ptr::from_mut(&mut init).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
}
