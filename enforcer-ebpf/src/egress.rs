//! `cgroup_skb/egress`: learns which domain a pod address belongs to from the pod's own
//! packets, before they reach anyone. A receiver on this host then knows the sender's domain
//! for the very first packet, whatever the daemon has or has not scanned yet. Never drops.

use aya_ebpf::{helpers::generated::bpf_sk_fullsock, macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::maps::{ADDR_HOST, ADDR_POD, AddrOwner};

use crate::{
    identity,
    maps::{ADDRS, HOST},
    packet,
};

const PASS: i32 = 1;

#[cgroup_skb(egress)]
pub fn enf_egress(ctx: SkBuffContext) -> i32 {
    learn(&ctx);
    PASS
}

#[inline(always)]
fn learn(ctx: &SkBuffContext) {
    // SAFETY: reading the context's socket field; the helper accepts a null-checked pointer.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the context's non-null socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return;
    }
    let Some(tag) = identity::tag_of(sk.cast()) else {
        return;
    };
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
