//! Where an outgoing flow is going, judged at `connect()`/`sendmsg()` in the sender's network
//! namespace: a local socket's tag, a pod's domain, a domain's endpoint prefix, or external.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_get_netns_cookie};
use core::ffi::c_void;
use enforcer_common::{
    maps::{ADDR_POD, ENDPOINT_KEY_HEADER_BITS, EndpointKey, FAMILY_V4, SockTag},
    verdict::Peer,
};

use crate::{
    address::Addr,
    local,
    maps::{ADDRS, ENDPOINTS},
};

pub enum Target {
    Peer(Peer),
    /// Nothing here can judge the flow, and nothing needs to: a host address seen from a pod
    /// (the receiving socket's own ingress check judges it), or a local address where no
    /// socket would receive it (the kernel refuses it).
    Deferred,
}

/// The destination `dst:dport` (port in network order) of a `protocol` flow from the socket
/// behind the sock_addr context `ctx`.
#[inline(always)]
pub fn resolve(ctx: *mut c_void, slot: u32, protocol: u32, dst: &Addr, dport: u16) -> Target {
    if dst.is_loopback() {
        return local_socket(ctx, protocol, dst, dport);
    }
    // SAFETY: `ctx` is the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx) };
    // SAFETY: the owner is copied out at once.
    if let Some(owner) = unsafe { ADDRS.get(dst.key()) }.copied() {
        if owner.netns == netns {
            // A wildcard listener in this namespace matches every address, so a local lookup
            // is only trusted for addresses known to be this namespace's own.
            return local_socket(ctx, protocol, dst, dport);
        }
        if owner.kind == ADDR_POD {
            return Target::Peer(Peer::of_domain(owner.domain));
        }
        return Target::Deferred;
    }
    // An address no map knows (added since the daemon last looked) is still provably local
    // when a socket is bound to exactly it.
    if let Some(found) = local::receiver(ctx, protocol, dst, dport)
        && found.bound_exactly
    {
        return Target::Peer(tagged(found.tag));
    }
    Target::Peer(endpoint(slot, dst))
}

#[inline(always)]
fn local_socket(ctx: *mut c_void, protocol: u32, dst: &Addr, dport: u16) -> Target {
    match local::receiver(ctx, protocol, dst, dport) {
        Some(found) => Target::Peer(tagged(found.tag)),
        None => Target::Deferred,
    }
}

/// A local socket without a tag was created before enforcement and never used: unlabeled.
#[inline(always)]
pub fn tagged(tag: Option<SockTag>) -> Peer {
    tag.map_or(Peer::Unlabeled, |t| Peer::of_domain(t.domain))
}

/// The domain whose endpoint prefixes hold `addr` (longest prefix), else external.
#[inline(always)]
pub fn endpoint(slot: u32, addr: &Addr) -> Peer {
    let bits = if addr.family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        ENDPOINT_KEY_HEADER_BITS + bits,
        EndpointKey {
            slot: slot as u8,
            family: addr.family,
            addr: addr.bytes,
            _pad: [0; 2],
        },
    );
    match ENDPOINTS.get(&key) {
        Some(&domain) => Peer::Domain(domain),
        None => Peer::External,
    }
}
