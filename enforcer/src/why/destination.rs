//! Where a flow goes, classified by `enforcer_common::destination::classify`, the function
//! the eBPF crate's `destination::resolve` calls at `connect()`/`sendmsg()`: a loopback or
//! own address is the receiving local socket's tag; a pod's address its domain; a host
//! address seen from a pod is left to the receiver; an address no map knows is still local
//! when a socket is bound to exactly it; otherwise the domain of the longest endpoint prefix
//! holding it, else external. Here the lookups read the pinned maps and sock_diag, and the
//! branch taken is kept with what it found, to explain it.

use std::net::IpAddr;

use anyhow::{Error, Result};
pub use enforcer_common::destination::Via;
use enforcer_common::{
    address::Addr,
    destination::{self, Destination, LocalSocket, Lookups},
    maps::AddrOwner,
};

use super::{
    Live, Transport,
    receiver::{self, Receiver},
    source::Namespace,
};

/// Where the flow goes, with what the deciding branch found: the receiving socket, or the
/// endpoint prefix that holds the address, as text.
pub type Target = Destination<Receiver, String>;

/// Classifies `dst:port` (IPv4-mapped addresses already unmapped) for a `protocol` flow
/// starting in `namespace`, reading policy slot `slot`.
pub fn resolve(
    live: &Live<'_>,
    namespace: &Namespace,
    slot: u32,
    protocol: Transport,
    dst: IpAddr,
    port: u16,
) -> Result<Target> {
    let lookups = Daemon {
        live,
        namespace,
        slot,
        protocol,
        port,
    };
    Ok(match destination::classify(&Addr::from(dst), &lookups)? {
        Destination::Socket { receiver, via } => Target::Socket { receiver, via },
        Destination::NoReceiver { via } => Target::NoReceiver { via },
        Destination::Pod { domain, netns } => Target::Pod { domain, netns },
        Destination::HostAddress => Target::HostAddress,
        Destination::Endpoint { domain, prefix } => Target::Endpoint {
            domain,
            prefix: format!("{}/{prefix}", network(dst, prefix)),
        },
        Destination::External => Target::External,
    })
}

/// The lookups of one flow, from the daemon: the maps the programs read, and sock_diag in
/// the flow's network namespace for the sockets `bpf_sk_lookup_*` would find.
struct Daemon<'a> {
    live: &'a Live<'a>,
    namespace: &'a Namespace,
    slot: u32,
    protocol: Transport,
    port: u16,
}

impl Lookups for Daemon<'_> {
    type Error = Error;
    type Socket = Receiver;
    /// The length of the matching prefix.
    type Prefix = u8;

    fn netns(&self) -> u64 {
        self.namespace.cookie
    }

    fn owner(&self, addr: &Addr) -> Result<Option<AddrOwner>> {
        self.live.addresses.owner(IpAddr::from(*addr))
    }

    fn receiver(&self, addr: &Addr) -> Result<Option<Receiver>> {
        receiver::find(
            &self.namespace.diag,
            self.live.ebpf,
            self.protocol,
            IpAddr::from(*addr),
            self.port,
        )
    }

    fn endpoint(&self, addr: &Addr) -> Result<Option<(u32, u8)>> {
        self.live.maps.endpoint(self.slot, addr.family, addr.bytes)
    }
}

impl LocalSocket for Receiver {
    fn domain(&self) -> u32 {
        destination::tag_domain(self.tag.as_ref())
    }

    fn bound_exactly(&self) -> bool {
        self.bound_exactly
    }
}

/// `ip` with every bit past the first `len` cleared.
fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_clear_the_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(ip("10.1.2.3"), 16), ip("10.1.0.0"));
        assert_eq!(network(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(network(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("fd00:1:2::5"), 48), ip("fd00:1:2::"));
        assert_eq!(network(ip("fd00::5"), 128), ip("fd00::5"));
    }
}
