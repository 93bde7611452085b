//! Where an outgoing flow is going, as a pure function of what the lookups find: a local
//! socket's tag, a pod's domain, a domain's endpoint prefix, or external. The programs call
//! [`classify`] at `connect()`/`sendmsg()` in the sender's network namespace with lookups
//! of their maps and the kernel's socket tables; `enforcer why` calls it with lookups of the
//! same pinned maps and of sock_diag. So both sides take the same branches in the same order,
//! as [`crate::verdict::decide`] makes them take the same decision.

use crate::{
    address::Addr,
    maps::{ADDR_POD, AddrOwner, SockTag, UNLABELED},
    verdict::Peer,
};

/// What [`classify`] looks up, for one flow: the implementation knows the flow's protocol,
/// its destination port and the policy slot in force.
pub trait Lookups {
    /// Why a lookup failed: `core::convert::Infallible` in the kernel, where a lookup only
    /// ever finds something or nothing.
    type Error;
    /// A local socket found by [`Lookups::receiver`].
    type Socket: LocalSocket;
    /// What the endpoint lookup tells beyond the domain (`why` reports the matching prefix).
    type Prefix;

    /// Cookie of the network namespace the flow starts in.
    fn netns(&self) -> u64;
    /// The owner of a local address of this host or one of its pods (`ENF_ADDRS`).
    fn owner(&self, addr: &Addr) -> Result<Option<AddrOwner>, Self::Error>;
    /// The socket in the flow's own network namespace that would receive a new flow to
    /// `addr` on the flow's protocol and port: a TCP listener or a bound UDP socket, found as
    /// `bpf_sk_lookup_tcp`/`bpf_sk_lookup_udp` find it with a wildcard source.
    fn receiver(&self, addr: &Addr) -> Result<Option<Self::Socket>, Self::Error>;
    /// The domain of the longest endpoint prefix that holds `addr` (`ENF_ENDPOINTS`, in the
    /// slot in force).
    fn endpoint(&self, addr: &Addr) -> Result<Option<(u32, Self::Prefix)>, Self::Error>;
}

/// A socket that would receive a flow.
pub trait LocalSocket {
    /// The domain its `ENF_TAGS` value names; [`UNLABELED`] when it has none (see [`tagged`]).
    /// A plain id rather than an `Option<SockTag>`: the programs carry it through
    /// [`Destination`], and LLVM may move the payload of a `None` through a register that holds
    /// a pointer, on which the verifier refuses the bit operations that follow ("R7 bitwise
    /// operator &= on pointer prohibited", seen in `cgroup/connect4` on Linux 6.18).
    fn domain(&self) -> u32;
    /// Bound to the destination address itself rather than a wildcard.
    fn bound_exactly(&self) -> bool;
}

/// Why a local socket was looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// 127.0.0.0/8 or ::1: always the namespace's own.
    Loopback,
    /// An address `ENF_ADDRS` knows as the source namespace's own.
    OwnAddress,
    /// An address no map knows, but a socket in the source's namespace is bound to exactly it.
    BoundExactly,
}

/// Where a flow goes, and the branch of [`classify`] that said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<S, P> {
    /// A local socket receives the flow: its tag is the destination.
    Socket { receiver: S, via: Via },
    /// A local address where no socket would receive the flow: the kernel refuses it, so
    /// nothing here needs to judge it.
    NoReceiver { via: Via },
    /// An address of a pod on this host, in another namespace than the source's, or of a pod
    /// on another node of the fleet (`netns` is then `NETNS_REMOTE`).
    Pod { domain: u32, netns: u64 },
    /// One of the host's own addresses seen from a pod: shared by every host workload, it
    /// names no domain, and the receiving socket's ingress check judges the flow.
    HostAddress,
    /// Inside a domain's endpoint prefix.
    Endpoint { domain: u32, prefix: P },
    /// None of the above.
    External,
}

impl<S: LocalSocket, P> Destination<S, P> {
    /// The destination as [`crate::verdict::decide`] gets it; `None` when the source's hook
    /// does not judge the flow.
    #[inline(always)]
    pub fn peer(&self) -> Option<Peer> {
        match self {
            Self::Socket { receiver, .. } => Some(Peer::of_domain(receiver.domain())),
            Self::Pod { domain, .. } => Some(Peer::of_domain(*domain)),
            Self::Endpoint { domain, .. } => Some(Peer::Domain(*domain)),
            Self::External => Some(Peer::External),
            Self::NoReceiver { .. } | Self::HostAddress => None,
        }
    }
}

/// A local socket without a tag was created before enforcement and never used: unlabeled.
#[inline(always)]
pub fn tagged(tag: Option<SockTag>) -> Peer {
    Peer::of_domain(tag_domain(tag.as_ref()))
}

/// The domain `tag` names, [`UNLABELED`] without one.
#[inline(always)]
pub fn tag_domain(tag: Option<&SockTag>) -> u32 {
    tag.map_or(UNLABELED, |t| t.domain)
}

/// Classifies a flow to `dst` (IPv4-mapped addresses already IPv4, see [`Addr`]).
#[inline(always)]
pub fn classify<L: Lookups>(
    dst: &Addr,
    lookups: &L,
) -> Result<Destination<L::Socket, L::Prefix>, L::Error> {
    if dst.is_loopback() {
        return local(dst, lookups, Via::Loopback);
    }
    if let Some(owner) = lookups.owner(dst)? {
        if owner.netns == lookups.netns() {
            // A wildcard listener in this namespace matches every address, so a local lookup
            // is only trusted for addresses known to be this namespace's own.
            return local(dst, lookups, Via::OwnAddress);
        }
        if owner.kind == ADDR_POD {
            return Ok(Destination::Pod {
                domain: owner.domain,
                netns: owner.netns,
            });
        }
        return Ok(Destination::HostAddress);
    }
    // An address no map knows (added since the daemon last looked) is still provably local
    // when a socket is bound to exactly it.
    if let Some(socket) = lookups.receiver(dst)?
        && socket.bound_exactly()
    {
        return Ok(Destination::Socket {
            receiver: socket,
            via: Via::BoundExactly,
        });
    }
    Ok(match lookups.endpoint(dst)? {
        Some((domain, prefix)) => Destination::Endpoint { domain, prefix },
        None => Destination::External,
    })
}

#[inline(always)]
fn local<L: Lookups>(
    dst: &Addr,
    lookups: &L,
    via: Via,
) -> Result<Destination<L::Socket, L::Prefix>, L::Error> {
    Ok(match lookups.receiver(dst)? {
        Some(receiver) => Destination::Socket { receiver, via },
        None => Destination::NoReceiver { via },
    })
}

#[cfg(test)]
mod tests {
    use core::{cell::RefCell, convert::Infallible, net::IpAddr};

    use super::*;
    use crate::maps::{ADDR_HOST, FLOW_UNKNOWN, NETNS_REMOTE, ORIGIN_CREATOR};

    const OURS: u64 = 10;
    const POD: u64 = 20;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Socket {
        tag: Option<SockTag>,
        exact: bool,
    }

    impl LocalSocket for Socket {
        fn domain(&self) -> u32 {
            tag_domain(self.tag.as_ref())
        }

        fn bound_exactly(&self) -> bool {
            self.exact
        }
    }

    /// A host in memory: owned addresses, one receiving socket, endpoint prefixes as
    /// (address, prefix length, domain). Records every lookup it is asked for.
    #[derive(Default)]
    struct Fake {
        owners: Vec<(IpAddr, AddrOwner)>,
        socket: Option<Socket>,
        endpoints: Vec<(IpAddr, u8, u32)>,
        asked: RefCell<Vec<&'static str>>,
    }

    impl Lookups for Fake {
        type Error = Infallible;
        type Socket = Socket;
        type Prefix = u8;

        fn netns(&self) -> u64 {
            self.asked.borrow_mut().push("netns");
            OURS
        }

        fn owner(&self, addr: &Addr) -> Result<Option<AddrOwner>, Infallible> {
            self.asked.borrow_mut().push("owner");
            let ip = IpAddr::from(*addr);
            Ok(self.owners.iter().find(|(a, _)| *a == ip).map(|(_, o)| *o))
        }

        fn receiver(&self, _addr: &Addr) -> Result<Option<Socket>, Infallible> {
            self.asked.borrow_mut().push("receiver");
            Ok(self.socket)
        }

        fn endpoint(&self, addr: &Addr) -> Result<Option<(u32, u8)>, Infallible> {
            self.asked.borrow_mut().push("endpoint");
            let bits = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            };
            let ip = IpAddr::from(*addr);
            Ok(self
                .endpoints
                .iter()
                .filter(|(net, len, _)| {
                    net.is_ipv4() == ip.is_ipv4() && {
                        // Both families' addresses start at the top bit.
                        let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                        bits(*net) & mask == bits(ip) & mask
                    }
                })
                .max_by_key(|(_, len, _)| *len)
                .map(|&(_, len, domain)| (domain, len)))
        }
    }

    type Found = Destination<Socket, u8>;

    fn classify_ip(text: &str, fake: &Fake) -> Found {
        let Ok(found) = classify(&Addr::from(text.parse::<IpAddr>().unwrap()), fake);
        found
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn tag(domain: u32) -> Option<SockTag> {
        Some(SockTag {
            domain,
            origin: ORIGIN_CREATOR,
            flow: FLOW_UNKNOWN,
            _pad: [0; 2],
            cgroup_id: 1,
            netns: OURS,
        })
    }

    fn owner(domain: u32, kind: u32, netns: u64) -> AddrOwner {
        AddrOwner {
            domain,
            kind,
            netns,
        }
    }

    const LISTENER: Socket = Socket {
        tag: None,
        exact: false,
    };

    #[test]
    fn loopback_is_the_receiving_socket_whatever_the_maps_say() {
        let fake = Fake {
            socket: Some(Socket {
                tag: tag(3),
                ..LISTENER
            }),
            owners: vec![(ip("127.0.0.1"), owner(9, ADDR_POD, POD))],
            endpoints: vec![(ip("127.0.0.0"), 8, 9)],
            ..Fake::default()
        };
        for dst in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            let found = classify_ip(dst, &fake);
            assert!(
                matches!(
                    found,
                    Destination::Socket {
                        via: Via::Loopback,
                        ..
                    }
                ),
                "{dst}: {found:?}"
            );
            assert_eq!(found.peer(), Some(Peer::Domain(3)));
        }
        assert!(
            !fake.asked.borrow().contains(&"owner"),
            "loopback needs no map"
        );
    }

    #[test]
    fn a_local_address_without_a_receiver_is_not_judged() {
        let fake = Fake {
            owners: vec![(ip("10.0.0.5"), owner(0, ADDR_HOST, OURS))],
            ..Fake::default()
        };
        let found = classify_ip("127.0.0.1", &fake);
        assert_eq!(found, Destination::NoReceiver { via: Via::Loopback });
        assert_eq!(found.peer(), None);
        let found = classify_ip("10.0.0.5", &fake);
        assert_eq!(
            found,
            Destination::NoReceiver {
                via: Via::OwnAddress
            }
        );
        assert_eq!(found.peer(), None);
    }

    #[test]
    fn an_own_address_is_the_receiving_socket_even_a_wildcard_one() {
        let fake = Fake {
            owners: vec![(ip("fd00::5"), owner(7, ADDR_POD, OURS))],
            socket: Some(Socket {
                tag: tag(4),
                ..LISTENER
            }),
            ..Fake::default()
        };
        let found = classify_ip("fd00::5", &fake);
        assert!(matches!(
            found,
            Destination::Socket {
                via: Via::OwnAddress,
                ..
            }
        ));
        assert_eq!(
            found.peer(),
            Some(Peer::Domain(4)),
            "the socket's tag, not the address owner's domain"
        );
    }

    #[test]
    fn an_untagged_receiver_is_unlabeled() {
        let fake = Fake {
            socket: Some(LISTENER),
            ..Fake::default()
        };
        assert_eq!(classify_ip("::1", &fake).peer(), Some(Peer::Unlabeled));
    }

    #[test]
    fn another_pods_address_is_its_domain_without_a_socket_lookup() {
        let fake = Fake {
            owners: vec![(ip("10.244.0.7"), owner(5, ADDR_POD, POD))],
            socket: Some(Socket {
                tag: tag(8),
                exact: true,
            }),
            ..Fake::default()
        };
        let found = classify_ip("10.244.0.7", &fake);
        assert_eq!(
            found,
            Destination::Pod {
                domain: 5,
                netns: POD
            }
        );
        assert_eq!(found.peer(), Some(Peer::Domain(5)));
        assert!(!fake.asked.borrow().contains(&"receiver"));
        let unlabeled_pod = Fake {
            owners: vec![(ip("10.244.0.8"), owner(0, ADDR_POD, POD))],
            ..Fake::default()
        };
        assert_eq!(
            classify_ip("10.244.0.8", &unlabeled_pod).peer(),
            Some(Peer::Unlabeled)
        );
    }

    #[test]
    fn a_pod_on_another_node_is_its_domain_from_any_namespace() {
        let fake = Fake {
            owners: vec![(ip("10.244.1.9"), owner(6, ADDR_POD, NETNS_REMOTE))],
            endpoints: vec![(ip("10.244.0.0"), 16, 2)],
            ..Fake::default()
        };
        let found = classify_ip("10.244.1.9", &fake);
        assert_eq!(
            found,
            Destination::Pod {
                domain: 6,
                netns: NETNS_REMOTE
            }
        );
        assert_eq!(
            found.peer(),
            Some(Peer::Domain(6)),
            "the published domain, not the endpoint prefix around it"
        );
        assert!(!fake.asked.borrow().contains(&"receiver"));
    }

    #[test]
    fn a_host_address_from_a_pod_is_left_to_the_receiver() {
        let fake = Fake {
            owners: vec![(ip("192.168.1.2"), owner(0, ADDR_HOST, POD))],
            socket: Some(Socket {
                tag: tag(8),
                exact: true,
            }),
            endpoints: vec![(ip("192.168.0.0"), 16, 2)],
            ..Fake::default()
        };
        let found = classify_ip("192.168.1.2", &fake);
        assert_eq!(found, Destination::HostAddress);
        assert_eq!(found.peer(), None);
    }

    #[test]
    fn an_unknown_address_is_local_only_when_bound_exactly() {
        let exact = Fake {
            socket: Some(Socket {
                tag: tag(6),
                exact: true,
            }),
            endpoints: vec![(ip("10.9.0.0"), 16, 2)],
            ..Fake::default()
        };
        let found = classify_ip("10.9.0.1", &exact);
        assert!(matches!(
            found,
            Destination::Socket {
                via: Via::BoundExactly,
                ..
            }
        ));
        assert_eq!(found.peer(), Some(Peer::Domain(6)));
        assert!(!exact.asked.borrow().contains(&"endpoint"));
        let wildcard = Fake {
            socket: Some(Socket {
                tag: tag(6),
                exact: false,
            }),
            endpoints: vec![(ip("10.9.0.0"), 16, 2)],
            ..Fake::default()
        };
        assert_eq!(
            classify_ip("10.9.0.1", &wildcard),
            Destination::Endpoint {
                domain: 2,
                prefix: 16
            },
            "a wildcard listener matches every address and proves nothing"
        );
    }

    #[test]
    fn otherwise_the_longest_endpoint_prefix_else_external() {
        let fake = Fake {
            endpoints: vec![
                (ip("10.0.0.0"), 8, 1),
                (ip("10.10.0.0"), 16, 2),
                (ip("fd00:10::"), 64, 3),
            ],
            ..Fake::default()
        };
        let found = classify_ip("10.10.3.4", &fake);
        assert_eq!(
            found,
            Destination::Endpoint {
                domain: 2,
                prefix: 16
            }
        );
        assert_eq!(found.peer(), Some(Peer::Domain(2)));
        assert_eq!(
            classify_ip("10.11.0.1", &fake).peer(),
            Some(Peer::Domain(1))
        );
        assert_eq!(
            classify_ip("fd00:10::9", &fake).peer(),
            Some(Peer::Domain(3))
        );
        let found = classify_ip("192.0.2.1", &fake);
        assert_eq!(found, Destination::External);
        assert_eq!(found.peer(), Some(Peer::External));
        assert_eq!(
            *fake.asked.borrow(),
            ["owner", "receiver", "endpoint"].repeat(4),
            "each unknown address is looked up in this order"
        );
    }

    #[test]
    fn lookup_errors_stop_the_classification() {
        struct Failing;
        impl Lookups for Failing {
            type Error = &'static str;
            type Socket = Socket;
            type Prefix = ();
            fn netns(&self) -> u64 {
                OURS
            }
            fn owner(&self, _: &Addr) -> Result<Option<AddrOwner>, &'static str> {
                Err("owner")
            }
            fn receiver(&self, _: &Addr) -> Result<Option<Socket>, &'static str> {
                Err("receiver")
            }
            fn endpoint(&self, _: &Addr) -> Result<Option<(u32, ())>, &'static str> {
                Err("endpoint")
            }
        }
        let at = |text: &str| classify(&Addr::from(ip(text)), &Failing).map(|_| ());
        assert_eq!(at("127.0.0.1"), Err("receiver"));
        assert_eq!(at("10.0.0.1"), Err("owner"));
    }
}
