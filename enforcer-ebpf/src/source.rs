//! Where an arriving packet comes from, judged at the receiving socket: the sending socket's
//! tag when it is in this namespace, a pod's domain, a domain's endpoint prefix, or external.

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::{maps::ADDR_POD, verdict::Peer};

use crate::{
    destination::{self, Target},
    local,
    maps::ADDRS,
    packet::Packet,
};

/// The loopback device has this index in every network namespace (`LOOPBACK_IFINDEX`), and
/// every packet between two sockets of one namespace travels through it.
const LOOPBACK_IFINDEX: u32 = 1;

#[inline(always)]
pub fn resolve(ctx: &SkBuffContext, slot: u32, protocol: u32, packet: &Packet) -> Target {
    // SAFETY: the context pointer is valid for the whole program run.
    let via_loopback = unsafe { (*ctx.skb.skb).ingress_ifindex } == LOOPBACK_IFINDEX;
    if via_loopback
        && let Some(tag) = local::sender(
            ctx.skb.skb.cast(),
            protocol,
            &packet.src,
            packet.sport,
            &packet.dst,
            packet.dport,
        )
    {
        return Target::Peer(destination::tagged(tag));
    }
    // SAFETY: the owner is copied out at once.
    match unsafe { ADDRS.get(packet.src.key()) }.copied() {
        Some(owner) if owner.kind == ADDR_POD => Target::Peer(Peer::of_domain(owner.domain)),
        // One of the host's own addresses, shared by every host workload: the sender's
        // connect() or sendmsg() was judged where its socket lives.
        Some(_) => Target::Deferred,
        None => Target::Peer(destination::endpoint(slot, &packet.src)),
    }
}
