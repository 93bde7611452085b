//! Where a flow is going: a local listening socket's tag, else the domain whose endpoint
//! prefixes hold the address (longest prefix), else external.

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
    },
    btf_maps::lpm_trie::Key,
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release},
};
use core::ffi::c_void;
use enforcer_common::{
    maps::{ENDPOINT_KEY_HEADER_BITS, EndpointKey, FAMILY_V4, FAMILY_V6, UNLABELED},
    verdict::Peer,
};

use crate::{identity, maps::ENDPOINTS};

/// An IPv4 destination (network byte order) reached from the program context `ctx`.
#[inline(always)]
pub fn tcp_v4(ctx: *mut c_void, slot: u32, addr: u32, port: u16) -> Peer {
    // SAFETY: an all-zero tuple is valid; the lookup reads only the ipv4 member because the
    // size passed says so.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4 = Tuple4 {
        saddr: 0,
        daddr: addr,
        sport: 0,
        dport: port,
    };
    if let Some(peer) = local_listener(ctx, &mut tuple, size_of::<Tuple4>()) {
        return peer;
    }
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&addr.to_ne_bytes());
    endpoint(slot, FAMILY_V4, bytes, 32)
}

/// An IPv6 destination (network byte order words) reached from the program context `ctx`.
#[inline(always)]
pub fn tcp_v6(ctx: *mut c_void, slot: u32, addr: [u32; 4], port: u16) -> Peer {
    // SAFETY: as in `tcp_v4`.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv6 = Tuple6 {
        saddr: [0; 4],
        daddr: addr,
        sport: 0,
        dport: port,
    };
    if let Some(peer) = local_listener(ctx, &mut tuple, size_of::<Tuple6>()) {
        return peer;
    }
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    endpoint(slot, FAMILY_V6, bytes, 128)
}

/// The tag of a TCP socket in the caller's network namespace that would accept the tuple's
/// destination (exact or wildcard bind). Only listeners can match: the source half of the
/// tuple is zero, so no established socket does.
#[inline(always)]
fn local_listener(ctx: *mut c_void, tuple: &mut bpf_sock_tuple, size: usize) -> Option<Peer> {
    // SAFETY: the tuple lives on this stack frame for the whole call; a non-null result is a
    // referenced socket released below on every path.
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx,
            core::ptr::from_mut(tuple),
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    let tag = identity::tag_of(sk.cast());
    // SAFETY: `sk` came from bpf_sk_lookup_tcp and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(match tag {
        Some(tag) if tag.domain != UNLABELED => Peer::Domain(tag.domain),
        _ => Peer::Unlabeled,
    })
}

#[inline(always)]
fn endpoint(slot: u32, family: u8, addr: [u8; 16], bits: u32) -> Peer {
    let key = Key::new(
        ENDPOINT_KEY_HEADER_BITS + bits,
        EndpointKey {
            slot: slot as u8,
            family,
            addr,
            _pad: [0; 2],
        },
    );
    match ENDPOINTS.get(&key) {
        Some(&domain) => Peer::Domain(domain),
        None => Peer::External,
    }
}
