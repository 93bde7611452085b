//! Addresses as the kernel's socket lookups take them. The address itself is
//! `enforcer_common::address::Addr`, shared with `enforcer why`.

use aya_ebpf::bindings::{
    bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
};
pub use enforcer_common::address::Addr;
use enforcer_common::maps::FAMILY_V4;

/// A lookup tuple for `bpf_sk_lookup_*` and the size that says which member is used. Ports are
/// in network byte order. Both addresses must have the same family.
#[inline(always)]
pub fn tuple(src: &Addr, sport: u16, dst: &Addr, dport: u16) -> (bpf_sock_tuple, u32) {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    if dst.family == FAMILY_V4 {
        tuple.__bindgen_anon_1.ipv4 = Tuple4 {
            saddr: src.v4_word(),
            daddr: dst.v4_word(),
            sport,
            dport,
        };
        (tuple, size_of::<Tuple4>() as u32)
    } else {
        tuple.__bindgen_anon_1.ipv6 = Tuple6 {
            saddr: src.v6_words(),
            daddr: dst.v6_words(),
            sport,
            dport,
        };
        (tuple, size_of::<Tuple6>() as u32)
    }
}

/// The unspecified address of `family` (as a lookup's source: any peer).
#[inline(always)]
pub fn any(family: u8) -> Addr {
    Addr {
        family,
        bytes: [0; 16],
    }
}
