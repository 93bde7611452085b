//! Where an arriving packet comes from, judged at the receiving socket: the sending socket's
//! tag when it is in this namespace, a pod's domain (on this host or, as the fleet published
//! it, on another), a domain's endpoint prefix, or external.

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::{
    maps::{ADDR_POD, NETNS_REMOTE},
    verdict::Peer,
};

use crate::{
    destination::{self, Target},
    local,
    maps::ADDRS,
    packet::Packet,
};

/// The loopback device has this index in every network namespace (`LOOPBACK_IFINDEX`), and
/// every packet between two sockets of one namespace travels through it.
const LOOPBACK_IFINDEX: u32 = 1;

/// Who sent an arriving packet, and whether the sender's own hook already judged its flow
/// (then it must not be counted twice).
pub struct Sender {
    pub target: Target,
    pub judged: bool,
}

/// The sender of `packet`, arriving at a socket in a pod's namespace (`at_pod`) or the host's.
#[inline(always)]
pub fn resolve(
    ctx: &SkBuffContext,
    slot: u32,
    protocol: u32,
    packet: &Packet,
    at_pod: bool,
) -> Sender {
    // SAFETY: the context pointer is valid for the whole program run.
    let via_loopback = unsafe { (*ctx.skb.skb).ingress_ifindex } == LOOPBACK_IFINDEX;
    if via_loopback {
        let from = match local::sender(
            ctx.skb.skb.cast(),
            protocol,
            &packet.src,
            packet.sport,
            &packet.dst,
            packet.dport,
        ) {
            Some(tag) => destination::tagged(tag),
            // Loopback carries only this namespace's own packets, so a sender that cannot be
            // found is a local socket that closed between sending and this check, which
            // softirq may run milliseconds later (a UDP socket closed right after `sendto`):
            // never another host, so never external. Whose socket it was is lost with it; it
            // is judged as a local socket of no known domain.
            None => Peer::Unlabeled,
        };
        return Sender {
            target: Target::Peer(from),
            judged: true,
        };
    }
    // SAFETY: the owner is copied out at once.
    match unsafe { ADDRS.get(packet.src.key()) }.copied() {
        // A pod reaching another pod knows its destination's domain and judged the flow; a pod
        // reaching a host address cannot, and left it to this check (`Target::Deferred`). A
        // pod on another node of the fleet was judged there, not by any hook of this host.
        Some(owner) if owner.kind == ADDR_POD => Sender {
            target: Target::Peer(Peer::of_domain(owner.domain)),
            judged: at_pod && owner.netns != NETNS_REMOTE,
        },
        // One of the host's own addresses, shared by every host workload: the sender's
        // connect() or sendmsg() was judged where its socket lives.
        Some(_) => Sender {
            target: Target::Deferred,
            judged: true,
        },
        None => Sender {
            target: Target::Peer(destination::endpoint(slot, &packet.src)),
            judged: false,
        },
    }
}
