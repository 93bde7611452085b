//! Where a flow goes, classified in the order the eBPF crate's `destination::resolve` does at
//! `connect()`/`sendmsg()`: a loopback or own address is the receiving local socket's tag; a
//! pod's address its domain; a host address seen from a pod is left to the receiver; an
//! address no map knows is still local when a socket is bound to exactly it; otherwise the
//! domain of the longest endpoint prefix holding it, else external.

use std::net::IpAddr;

use anyhow::Result;
use enforcer_common::{
    maps::{ADDR_POD, FAMILY_V4, FAMILY_V6},
    verdict::Peer,
};

use super::{
    Live, Transport,
    receiver::{self, Receiver},
    source::Namespace,
};

pub enum Target {
    Socket {
        receiver: Receiver,
        via: Via,
    },
    Pod {
        domain: u32,
        netns: u64,
    },
    Endpoint {
        domain: u32,
        prefix: String,
    },
    External,
    /// A local address where no socket would receive the flow: the programs let the kernel
    /// refuse it.
    NoReceiver {
        via: Via,
    },
    /// A host address seen from a pod: the receiving socket's ingress judges it.
    HostAddress,
}

/// Why a local socket is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Loopback,
    OwnAddress,
    BoundExactly,
}

impl Target {
    /// The destination as `decide` gets it; `None` when the source's hook does not judge.
    pub fn peer(&self) -> Option<Peer> {
        match self {
            Self::Socket { receiver, .. } => Some(
                receiver
                    .tag
                    .map_or(Peer::Unlabeled, |tag| Peer::of_domain(tag.domain)),
            ),
            Self::Pod { domain, .. } => Some(Peer::of_domain(*domain)),
            Self::Endpoint { domain, .. } => Some(Peer::Domain(*domain)),
            Self::External => Some(Peer::External),
            Self::NoReceiver { .. } | Self::HostAddress => None,
        }
    }
}

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
    let local = |via| -> Result<Target> {
        Ok(
            match receiver::find(&namespace.diag, live.ebpf, protocol, dst, port)? {
                Some(receiver) => Target::Socket { receiver, via },
                None => Target::NoReceiver { via },
            },
        )
    };
    // 127.0.0.0/8 and ::1 (`Addr::is_loopback`) are always the namespace's own.
    if dst.is_loopback() {
        return local(Via::Loopback);
    }
    if let Some(owner) = live.addresses.owner(dst)? {
        // A wildcard listener matches every address, so a local socket is only trusted for
        // addresses known to be the namespace's own.
        if owner.netns == namespace.cookie {
            return local(Via::OwnAddress);
        }
        if owner.kind == ADDR_POD {
            return Ok(Target::Pod {
                domain: owner.domain,
                netns: owner.netns,
            });
        }
        return Ok(Target::HostAddress);
    }
    if let Some(receiver) = receiver::find(&namespace.diag, live.ebpf, protocol, dst, port)?
        && receiver.bound_exactly
    {
        return Ok(Target::Socket {
            receiver,
            via: Via::BoundExactly,
        });
    }
    let (family, bytes) = match dst {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    };
    Ok(match live.maps.endpoint(slot, family, bytes)? {
        Some((domain, len)) => Target::Endpoint {
            domain,
            prefix: format!("{}/{len}", network(dst, len)),
        },
        None => Target::External,
    })
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
