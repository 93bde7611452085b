//! Addresses as the maps key them: a family and 16 bytes in network order, IPv4 in the first
//! four. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4: a dual-stack socket that
//! reaches an IPv4 peer through one is talking IPv4 on the wire.
//!
//! Shared so that the programs and `enforcer why` agree on what an address is before they
//! classify it (see [`crate::destination`]).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::maps::{AddrKey, FAMILY_V4, FAMILY_V6};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    /// `FAMILY_V4` or `FAMILY_V6`.
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

/// An IPv4-mapped IPv6 address becomes the IPv4 address it maps, as in [`Addr::v6`].
impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        let v4 = |v4: Ipv4Addr| {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            Self {
                family: FAMILY_V4,
                bytes,
            }
        };
        match ip {
            IpAddr::V4(ip) => v4(ip),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(mapped) => v4(mapped),
                None => Self {
                    family: FAMILY_V6,
                    bytes: ip.octets(),
                },
            },
        }
    }
}

impl From<Addr> for IpAddr {
    fn from(addr: Addr) -> Self {
        if addr.family == FAMILY_V4 {
            let b = addr.bytes;
            Self::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            Self::V6(Ipv6Addr::from(addr.bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn kernel_words_and_ip_addresses_agree() {
        // The kernel hands over addresses as network-order words read from memory.
        let v4 = Addr::v4(u32::from_ne_bytes([10, 1, 2, 3]));
        assert_eq!(v4, Addr::from(ip("10.1.2.3")));
        assert_eq!(IpAddr::from(v4), ip("10.1.2.3"));
        let octets = "fd00::1:2".parse::<Ipv6Addr>().unwrap().octets();
        let words = [0, 4, 8, 12]
            .map(|i| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]));
        let v6 = Addr::v6(words);
        assert_eq!(v6, Addr::from(ip("fd00::1:2")));
        assert_eq!(IpAddr::from(v6), ip("fd00::1:2"));
        assert_eq!(v6.v6_words(), words);
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped = Addr::from(ip("::ffff:10.1.2.3"));
        assert_eq!(mapped, Addr::from(ip("10.1.2.3")));
        let words = [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes([10, 1, 2, 3])];
        assert_eq!(Addr::v6(words), mapped);
    }

    #[test]
    fn loopback_and_link_local() {
        for (text, loopback, link_local) in [
            ("127.0.0.1", true, false),
            ("127.255.0.9", true, false),
            ("::1", true, false),
            ("::ffff:127.0.0.1", true, false),
            ("10.0.0.1", false, false),
            ("::2", false, false),
            ("fe80::1", false, true),
            ("febf::1", false, true),
            ("fec0::1", false, false),
        ] {
            let addr = Addr::from(ip(text));
            assert_eq!(addr.is_loopback(), loopback, "{text}");
            assert_eq!(addr.is_link_local(), link_local, "{text}");
        }
    }
}
