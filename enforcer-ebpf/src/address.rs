//! Addresses as the maps key them: a family and 16 bytes in network order, IPv4 in the first
//! four. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4: a dual-stack socket that
//! reaches an IPv4 peer through one is talking IPv4 on the wire.

use aya_ebpf::bindings::{
    bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
};
use enforcer_common::maps::{AddrKey, FAMILY_V4, FAMILY_V6};

#[derive(Clone, Copy)]
pub struct Addr {
    pub family: u8,
    pub bytes: [u8; 16],
}

impl Addr {
    /// `ip` as the kernel stores it (network byte order in memory).
    #[inline(always)]
    pub fn v4(ip: u32) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&ip.to_ne_bytes());
        Self {
            family: FAMILY_V4,
            bytes,
        }
    }

    /// Four network-order words, as in `bpf_sock_addr::user_ip6`.
    #[inline(always)]
    pub fn v6(words: [u32; 4]) -> Self {
        if words[0] == 0 && words[1] == 0 && words[2] == 0xffff_u32.to_be() {
            return Self::v4(words[3]);
        }
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Self {
            family: FAMILY_V6,
            bytes,
        }
    }

    #[inline(always)]
    pub fn v4_word(&self) -> u32 {
        u32::from_ne_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    #[inline(always)]
    pub fn v6_words(&self) -> [u32; 4] {
        let b = &self.bytes;
        [
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ]
    }

    /// 127.0.0.0/8 or ::1: always this namespace's own.
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        if self.family == FAMILY_V4 {
            return self.bytes[0] == 127;
        }
        let w = self.v6_words();
        w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 1u32.to_be()
    }

    /// fe80::/10: every namespace has its own and they name no one beyond the link.
    #[inline(always)]
    pub fn is_link_local(&self) -> bool {
        self.family == FAMILY_V6 && self.bytes[0] == 0xfe && self.bytes[1] & 0xc0 == 0x80
    }

    #[inline(always)]
    pub fn key(&self) -> AddrKey {
        AddrKey {
            family: self.family,
            _pad: [0; 3],
            addr: self.bytes,
        }
    }
}

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
