//! Where an outgoing flow is going, judged at `connect()`/`sendmsg()` in the sender's network
//! namespace. The branches are `enforcer_common::destination::classify`, shared with
//! `enforcer why`; this module gives it the kernel's lookups: the maps, the netns cookie and
//! `bpf_sk_lookup_*`.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_get_netns_cookie};
use core::{convert::Infallible, ffi::c_void};
use enforcer_common::{
    destination::{self, LocalSocket, Lookups},
    maps::{AddrOwner, ENDPOINT_KEY_HEADER_BITS, EndpointKey, FAMILY_V4},
    verdict::Peer,
};

use crate::{
    address::Addr,
    local::{self, Found},
    maps::{ADDRS, ENDPOINTS},
};

pub use enforcer_common::destination::tagged;

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
    let kernel = Kernel {
        ctx,
        slot,
        protocol,
        dport,
    };
    let Ok(found) = destination::classify(dst, &kernel);
    match found.peer() {
        Some(peer) => Target::Peer(peer),
        None => Target::Deferred,
    }
}

/// The lookups of one flow from a sock_addr context.
struct Kernel {
    ctx: *mut c_void,
    slot: u32,
    protocol: u32,
    /// Network byte order.
    dport: u16,
}

impl Lookups for Kernel {
    type Error = Infallible;
    type Socket = Found;
    type Prefix = ();

    #[inline(always)]
    fn netns(&self) -> u64 {
        // SAFETY: `ctx` is the program's own context.
        unsafe { bpf_get_netns_cookie(self.ctx) }
    }

    #[inline(always)]
    fn owner(&self, addr: &Addr) -> Result<Option<AddrOwner>, Infallible> {
        // SAFETY: the owner is copied out at once.
        Ok(unsafe { ADDRS.get(addr.key()) }.copied())
    }

    #[inline(always)]
    fn receiver(&self, addr: &Addr) -> Result<Option<Found>, Infallible> {
        Ok(local::receiver(self.ctx, self.protocol, addr, self.dport))
    }

    #[inline(always)]
    fn endpoint(&self, addr: &Addr) -> Result<Option<(u32, ())>, Infallible> {
        Ok(endpoint_domain(self.slot, addr).map(|domain| (domain, ())))
    }
}

impl LocalSocket for Found {
    #[inline(always)]
    fn domain(&self) -> u32 {
        self.domain
    }

    #[inline(always)]
    fn bound_exactly(&self) -> bool {
        self.bound_exactly
    }
}

/// The domain whose endpoint prefixes hold `addr` (longest prefix), else external.
#[inline(always)]
pub fn endpoint(slot: u32, addr: &Addr) -> Peer {
    match endpoint_domain(slot, addr) {
        Some(domain) => Peer::Domain(domain),
        None => Peer::External,
    }
}

#[inline(always)]
fn endpoint_domain(slot: u32, addr: &Addr) -> Option<u32> {
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
    ENDPOINTS.get(&key).copied()
}
