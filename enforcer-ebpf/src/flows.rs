//! UDP has no connection for the kernel to remember, so replies would be judged as new flows
//! in the opposite direction and need an edge of their own. A flow is remembered per socket
//! and peer when its first datagram is allowed; a datagram the other way that its own
//! direction would refuse passes when the flow's opening direction is still allowed now.

use aya_ebpf::bindings::BPF_NOEXIST;
use enforcer_common::{
    maps::{FlowKey, FlowState, PROTO_UDP},
    verdict::Peer,
};

use crate::{address::Addr, maps::FLOWS, policy};

#[inline(always)]
pub fn key(cookie: u64, peer: &Addr, peer_port: u16) -> FlowKey {
    FlowKey {
        cookie,
        addr: peer.bytes,
        port: peer_port,
        family: peer.family,
        _pad: [0; 5],
    }
}

/// Remembers an allowed first datagram from `from` to `to` on `port` (host order), unless the
/// socket already has a flow with this peer; says whether the flow is new.
#[inline(always)]
pub fn open(key: &FlowKey, from: Peer, to: Peer, port: u16, initiator: u32) -> bool {
    let state = FlowState {
        from: from.encode(),
        to: to.encode(),
        port,
        _pad: 0,
        initiator,
    };
    // Looked up first because an insert of an existing key still takes a free node under the
    // map's lock before it finds the key (measured: a third of the ingress program's cost).
    // An existing flow keeps its opening direction; a full LRU map evicts the oldest flow.
    if FLOWS.get_ptr(key).is_some() {
        return false;
    }
    FLOWS.insert(key, state, BPF_NOEXIST.into()).is_ok()
}

/// Whether a datagram belongs to a flow the peer's side opened (`initiator`), and the
/// policy in `active` still allows that opening direction at `now`.
#[inline(always)]
pub fn continues(key: &FlowKey, initiator: u32, active: &policy::Active, now: u64) -> bool {
    // SAFETY: the state is copied out at once.
    let Some(state) = (unsafe { FLOWS.get(key) }).copied() else {
        return false;
    };
    state.initiator == initiator
        && active
            .decide(
                Peer::decode(state.from),
                Peer::decode(state.to),
                PROTO_UDP,
                state.port,
                now,
            )
            .allow
}
