//! `cgroup_skb/egress`: learns which domain a pod address belongs to from the pod's own
//! packets, before they reach anyone, so a receiver on this host knows the sender's domain for
//! the very first packet, whatever the daemon has or has not scanned yet. And checks every
//! packet a connected socket sends against its connection's judgement (see `conns`), so
//! nothing more leaves on a connection whose edge ended.

use aya_ebpf::{helpers::generated::bpf_sk_fullsock, macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::maps::{ADDR_HOST, ADDR_POD, AddrOwner, SockTag};

use crate::{
    conns, identity,
    maps::{ADDRS, HOST},
    packet,
    protocol::{self, TCP_LISTEN},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn enf_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: reading the context's socket field; the helper accepts a null-checked pointer.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: `sk` is the context's non-null socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS;
    }
    let tag = identity::tag_mut(sk.cast());
    if let Some(tag) = tag.as_deref() {
        learn(&ctx, tag);
    }
    // SAFETY: checked non-null; a full socket's fields are readable.
    let (ip_protocol, state) = unsafe { ((*sk).protocol, (*sk).state) };
    let Some(proto) = protocol::bit(ip_protocol) else {
        return PASS;
    };
    // A listener's handshake replies are judged at its ingress.
    if state == TCP_LISTEN {
        return PASS;
    }
    let allowed = conns::check(&ctx, sk.cast(), tag, proto, true);
    if allowed { PASS } else { DROP }
}

/// Records the packet's source address as the sending pod's, unless it is the host's.
#[inline(always)]
fn learn(ctx: &SkBuffContext, tag: &SockTag) {
    let Some(host) = HOST.get(0) else {
        return;
    };
    // Host addresses are shared by every host workload and name no domain.
    if tag.netns == 0 || tag.netns == host.netns {
        return;
    }
    let Some(src) = packet::source(ctx) else {
        return;
    };
    if src.is_loopback() || src.is_link_local() {
        return;
    }
    let key = src.key();
    // SAFETY: the owner is copied out at once.
    if let Some(owner) = unsafe { ADDRS.get(key) }.copied()
        && (owner.kind == ADDR_HOST || (owner.domain == tag.domain && owner.netns == tag.netns))
    {
        return;
    }
    let owner = AddrOwner {
        domain: tag.domain,
        kind: ADDR_POD,
        netns: tag.netns,
    };
    // A full map only delays learning until the daemon's scan or cleanup makes room.
    let _ = ADDRS.insert(key, owner, 0);
}
