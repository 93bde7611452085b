//! Sockets in the caller's own network namespace, found the way the kernel would deliver a
//! packet (`bpf_sk_lookup_tcp` / `bpf_sk_lookup_udp`), and the tags they carry.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock},
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use core::ffi::c_void;
use enforcer_common::{
    destination,
    maps::{FAMILY_V4, PROTO_TCP, SockTag},
};

use crate::{
    address::{self, Addr},
    identity,
    protocol::TCP_LISTEN,
};

pub struct Found {
    /// The domain its tag names, `UNLABELED` without a tag.
    pub domain: u32,
    /// The socket is bound to the exact destination address, not a wildcard: proof that the
    /// address is local even when no map knows it.
    pub bound_exactly: bool,
}

/// The socket that would receive a new connection or datagram for `dst:dport` (network order),
/// if any: a TCP listener or a bound UDP socket. A wildcard listener matches any address, so
/// callers must know the address is local before trusting a match that is not `bound_exactly`.
#[inline(always)]
pub fn receiver(ctx: *mut c_void, protocol: u32, dst: &Addr, dport: u16) -> Option<Found> {
    let (mut tuple, size) = address::tuple(&address::any(dst.family), 0, dst, dport);
    let sk = lookup(ctx, protocol, &mut tuple, size);
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a referenced socket from the lookup, released just below.
    let bound_exactly = unsafe { bound_to(&*sk, dst) };
    // Read in place (see `identity::tag_in_place`), before the socket is released.
    let domain = destination::tag_domain(identity::tag_in_place(sk.cast()));
    // SAFETY: released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(Found {
        domain,
        bound_exactly,
    })
}

/// The socket in this namespace that sent a packet from `src:sport` to `dst:dport`: found by
/// looking the packet up in reverse, as if the reply were arriving at the sender. For TCP only
/// a connecting or connected socket counts; a listener on the sender's port is someone else.
#[inline(always)]
pub fn sender(
    ctx: *mut c_void,
    protocol: u32,
    src: &Addr,
    sport: u16,
    dst: &Addr,
    dport: u16,
) -> Option<Option<SockTag>> {
    let (mut tuple, size) = address::tuple(dst, dport, src, sport);
    let sk = lookup(ctx, protocol, &mut tuple, size);
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a referenced socket from the lookup, released just below.
    let listening = protocol == PROTO_TCP && unsafe { (*sk).state } == TCP_LISTEN;
    let tag = identity::tag_of(sk.cast());
    // SAFETY: released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    if listening { None } else { Some(tag) }
}

#[inline(always)]
fn lookup(
    ctx: *mut c_void,
    protocol: u32,
    tuple: &mut aya_ebpf::bindings::bpf_sock_tuple,
    size: u32,
) -> *mut bpf_sock {
    let tuple = core::ptr::from_mut(tuple);
    // SAFETY: the tuple lives on this stack frame for the whole call; the caller releases a
    // non-null result.
    unsafe {
        if protocol == PROTO_TCP {
            bpf_sk_lookup_tcp(ctx, tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_udp(ctx, tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        }
    }
}

#[inline(always)]
fn bound_to(sk: &bpf_sock, addr: &Addr) -> bool {
    if addr.family == FAMILY_V4 {
        sk.src_ip4 == addr.v4_word()
    } else {
        sk.src_ip6 == addr.v6_words()
    }
}
