//! `cgroup/connect4` and `cgroup/connect6`: judge a TCP `connect()` before the SYN leaves.
//! Returning [`REJECT`] makes the kernel fail the call with `EPERM` at once.

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use core::ffi::c_void;
use enforcer_common::{
    maps::{ORIGIN_FIRST_USE, PROTO_TCP, SockTag, UNLABELED},
    verdict::{self, Peer},
};

use crate::{destination, identity, policy};

const PROCEED: i32 = 1;
const REJECT: i32 = 0;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn enf_connect4(ctx: SockAddrContext) -> i32 {
    let Some((sa, active)) = tcp_connect(&ctx) else {
        return PROCEED;
    };
    let port = sa.user_port as u16;
    let dst = destination::tcp_v4(ctx.sock_addr.cast(), active.slot, sa.user_ip4, port);
    judge(sa, &active, dst, port)
}

#[cgroup_sock_addr(connect6)]
pub fn enf_connect6(ctx: SockAddrContext) -> i32 {
    let Some((sa, active)) = tcp_connect(&ctx) else {
        return PROCEED;
    };
    let port = sa.user_port as u16;
    let ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    // A dual-stack socket reaches IPv4 through ::ffff:a.b.c.d; tcp_v6_connect hands those to
    // tcp_v4_connect directly, so connect4 never runs for them and they are judged here as IPv4.
    let dst = if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffff_u32.to_be() {
        destination::tcp_v4(ctx.sock_addr.cast(), active.slot, ip6[3], port)
    } else {
        destination::tcp_v6(ctx.sock_addr.cast(), active.slot, ip6, port)
    };
    judge(sa, &active, dst, port)
}

/// The context and active policy of a TCP connect; `None` for anything this hook does not
/// judge (other protocols, or no policy written yet).
#[inline(always)]
fn tcp_connect(ctx: &SockAddrContext) -> Option<(&bpf_sock_addr, policy::Active)> {
    // SAFETY: the context pointer is valid for the whole program run.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return None;
    }
    Some((sa, policy::active()?))
}

/// `port` is `user_port` truncated to 16 bits: still in network byte order.
#[inline(always)]
fn judge(sa: &bpf_sock_addr, active: &policy::Active, dst: Peer, port: u16) -> i32 {
    let src = match source_domain(sa, active.slot) {
        UNLABELED => Peer::Unlabeled,
        domain => Peer::Domain(domain),
    };
    let verdict = verdict::decide(
        src,
        dst,
        active.config,
        PROTO_TCP,
        u16::from_be(port),
        |from, to| policy::edge_rules(active.slot, from, to),
    );
    if verdict.allow { PROCEED } else { REJECT }
}

/// The connecting socket's tag. A socket created before enforcement has none; it gets one now
/// from the calling task, which for a socket that is connected once is its creator.
#[inline(always)]
fn source_domain(sa: &bpf_sock_addr, slot: u32) -> u32 {
    // SAFETY: `sk` is always set in sock_addr contexts.
    let sk: *mut c_void = unsafe { sa.__bindgen_anon_1.sk }.cast();
    match identity::tag_of(sk) {
        Some(tag) => tag.domain,
        None => {
            let tag = SockTag {
                domain: identity::current_domain(slot),
                origin: ORIGIN_FIRST_USE,
            };
            identity::tag_if_untagged(sk, tag).domain
        }
    }
}
