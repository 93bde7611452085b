//! Who owns each local address, for the programs' `ENF_ADDRS`: the host's own addresses
//! (shared by every host workload, so they name no domain) and the addresses of every workload
//! network namespace (a pod), which name the domain of the pod's cgroup. With this the kernel
//! judges traffic between pods on this host by the domains at both ends, with no pod address
//! in the policy.
//!
//! The programs report each new workload namespace (`ENF_NETNS`, `ENF_NOTIFY`); the daemon
//! enters it, lists its addresses, and removes everything about it once no process is left in
//! it. The egress program also learns pod addresses from pods' first packets, so this scan is
//! what makes a pod reachable *before* it has sent anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap, Map, MapData};
use enforcer_common::{
    maps::{
        ADDR_HOST, ADDR_POD, AddrKey, AddrOwner, FAMILY_V4, FAMILY_V6, HostConfig, NETNS_REMOTE,
        NetnsSeen, UNLABELED,
    },
    names,
};
use nix::{
    ifaddrs::getifaddrs,
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

use crate::kernel::backfill;

/// A workload namespace the daemon has entered: how to recognise it among /proc/*/ns/net.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Namespace {
    dev: u64,
    inode: u64,
}

pub struct Addresses {
    addrs: HashMap<MapData, AddrKey, AddrOwner>,
    seen: HashMap<MapData, u64, NetnsSeen>,
    host_netns: u64,
    entered: BTreeMap<u64, Namespace>,
}

impl Addresses {
    /// Takes the address maps out of the loaded object and records the host's namespace for
    /// the programs. Must run before the programs are attached.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let mut host: Array<MapData, HostConfig> = Array::try_from(take(names::MAP_HOST)?)?;
        let host_netns = current_netns_cookie()?;
        host.set(0, HostConfig { netns: host_netns }, 0)
            .context("writing ENF_HOST")?;
        Ok(Self {
            addrs: HashMap::try_from(take(names::MAP_ADDRS)?)?,
            seen: HashMap::try_from(take(names::MAP_NETNS)?)?,
            host_netns,
            entered: BTreeMap::new(),
        })
    }

    /// Makes the host's `ADDR_HOST` entries match its interfaces' addresses now.
    pub fn refresh_host(&mut self) -> Result<()> {
        let owner = AddrOwner {
            domain: 0,
            kind: ADDR_HOST,
            netns: self.host_netns,
        };
        let keys = interface_addresses()?;
        let current = self.current();
        self.sync(&current, self.host_netns, &keys, owner)
    }

    /// Enters every workload namespace the programs reported, records its addresses with the
    /// domain `domain_of(pid)` of a process in it, and forgets namespaces no process is in.
    pub fn refresh_pods(&mut self, domain_of: impl Fn(i32) -> u32) -> Result<()> {
        let reported: Vec<(u64, NetnsSeen)> = self.seen.iter().filter_map(Result::ok).collect();
        let current = self.current();
        for (cookie, seen) in reported {
            let known = self.entered.get(&cookie).copied();
            let Some((pid, ns)) = live_member(seen.pid, known) else {
                self.forget(&current, cookie)?;
                continue;
            };
            let keys = match addresses_in(pid, cookie) {
                Ok(keys) => keys,
                Err(err) => {
                    log::warn!("could not list the addresses of netns of pid {pid}: {err:#}");
                    continue;
                }
            };
            self.entered.insert(cookie, ns);
            if pid as u32 != seen.pid {
                let _ = self.seen.insert(
                    cookie,
                    NetnsSeen {
                        pid: pid as u32,
                        _pad: 0,
                    },
                    0,
                );
            }
            let owner = AddrOwner {
                domain: domain_of(pid),
                kind: ADDR_POD,
                netns: cookie,
            };
            self.sync(&current, cookie, &keys, owner)?;
        }
        Ok(())
    }

    /// Every workload namespace entered, with a process in it as last seen.
    pub fn pod_namespaces(&self) -> Vec<(u64, i32)> {
        self.entered
            .keys()
            .filter_map(|&cookie| {
                let seen = self.seen.get(&cookie, 0).ok()?;
                Some((cookie, seen.pid as i32))
            })
            .collect()
    }

    /// This host's pod addresses whose pods are in a domain, with the domain's id: what the
    /// fleet's other nodes are told (`fleet::addresses`).
    pub fn labeled_pods(&self) -> Vec<(IpAddr, u32)> {
        self.addrs
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, o)| o.kind == ADDR_POD && o.netns != NETNS_REMOTE && o.domain != UNLABELED)
            .map(|(key, o)| (ip_of(&key), o.domain))
            .collect()
    }

    /// Makes the other nodes' pod addresses in ENF_ADDRS exactly `wanted` (address, domain
    /// id); returns how many of them it holds. An address this host or one of its pods holds
    /// stays theirs: what the kernel sees here is more certain than what a peer says.
    pub fn sync_remote(&mut self, wanted: &BTreeMap<IpAddr, u32>) -> Result<usize> {
        let current = self.current();
        let wanted: BTreeMap<AddrKey, u32> = wanted
            .iter()
            .filter_map(|(&ip, &domain)| Some((key_of(ip)?, domain)))
            .collect();
        for (key, old) in &current {
            if is_remote(old) && wanted.get(key) != Some(&old.domain) {
                let _ = self.addrs.remove(key);
            }
        }
        let mut held = 0;
        let mut full = None;
        for (key, &domain) in &wanted {
            match current.get(key) {
                Some(old) if !is_remote(old) => continue,
                Some(old) if old.domain == domain => {
                    held += 1;
                    continue;
                }
                // An earlier domain of the same address was removed above.
                Some(_) | None => {}
            }
            let owner = AddrOwner {
                domain,
                kind: ADDR_POD,
                netns: NETNS_REMOTE,
            };
            // NOEXIST: a pod of this host whose first packet the egress program learned since
            // `current` was read keeps its address.
            match self.addrs.insert(key, owner, backfill::BPF_NOEXIST) {
                Ok(()) => held += 1,
                Err(err) => full = Some(err),
            }
        }
        if let Some(err) = full {
            log::warn!(
                "ENF_ADDRS holds {held} of the {} addresses the fleet's other nodes published; \
                 the rest are judged as if unpublished: {err}",
                wanted.len()
            );
        }
        Ok(held)
    }

    /// Who owns `ip` in ENF_ADDRS, as the programs look it up.
    pub fn owner(&self, ip: IpAddr) -> Result<Option<AddrOwner>> {
        match self.addrs.get(&raw_key(ip), 0) {
            Ok(owner) => Ok(Some(owner)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("reading ENF_ADDRS"),
        }
    }

    /// The cookie of the host's (the daemon's) network namespace.
    pub fn host_netns(&self) -> u64 {
        self.host_netns
    }

    /// Number of known local addresses, for status.
    pub fn count(&self) -> usize {
        self.addrs.keys().count()
    }

    fn forget(&mut self, current: &BTreeMap<AddrKey, AddrOwner>, cookie: u64) -> Result<()> {
        self.sync(
            current,
            cookie,
            &BTreeSet::new(),
            AddrOwner {
                domain: 0,
                kind: ADDR_POD,
                netns: cookie,
            },
        )?;
        self.entered.remove(&cookie);
        match self.seen.remove(&cookie) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err).context("removing a namespace from ENF_NETNS"),
        }
    }

    /// Every entry of ENF_ADDRS, read once per refresh.
    fn current(&self) -> BTreeMap<AddrKey, AddrOwner> {
        self.addrs.iter().filter_map(Result::ok).collect()
    }

    /// Makes the entries owned by namespace `netns` exactly `keys`, each owned by `owner`.
    /// `current` is the map as read at the start of this refresh; only this daemon removes
    /// entries, and the programs only add pod addresses the next scan confirms.
    fn sync(
        &mut self,
        current: &BTreeMap<AddrKey, AddrOwner>,
        netns: u64,
        keys: &BTreeSet<AddrKey>,
        owner: AddrOwner,
    ) -> Result<()> {
        for (key, old) in current {
            if old.netns == netns && !keys.contains(key) {
                let _ = self.addrs.remove(key);
            }
        }
        for key in keys {
            let old = current.get(key).copied();
            if old == Some(owner) {
                continue;
            }
            // A pod never takes over an address the host holds.
            if owner.kind == ADDR_POD && old.is_some_and(|o| o.kind == ADDR_HOST) {
                continue;
            }
            self.addrs
                .insert(key, owner, 0)
                .context("writing ENF_ADDRS")?;
        }
        Ok(())
    }
}

/// A live process in the namespace: `pid` if it is still there, else any process whose
/// /proc/PID/ns/net is the namespace entered before.
fn live_member(pid: u32, known: Option<Namespace>) -> Option<(i32, Namespace)> {
    let pid = pid as i32;
    if let Some(ns) = namespace_of(pid)
        && known.is_none_or(|k| k == ns)
    {
        return Some((pid, ns));
    }
    let known = known?;
    backfill::pids()
        .ok()?
        .into_iter()
        .find_map(|p| (namespace_of(p) == Some(known)).then_some((p, known)))
}

fn namespace_of(pid: i32) -> Option<Namespace> {
    let meta = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some(Namespace {
        dev: meta.dev(),
        inode: meta.ino(),
    })
}

/// The addresses of `pid`'s network namespace, if its cookie is `cookie`.
fn addresses_in(pid: i32, cookie: u64) -> Result<BTreeSet<AddrKey>> {
    in_namespace(pid, cookie, interface_addresses)
}

/// Runs `f` in `pid`'s network namespace, if its cookie is `cookie`.
pub fn in_namespace<T: Send + 'static>(
    pid: i32,
    cookie: u64,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    in_namespace_of(pid, move |entered| {
        if entered != cookie {
            return Err(anyhow!("process {pid} is no longer in that namespace"));
        }
        f()
    })
}

/// Runs `f` in whichever network namespace `pid` is in, with that namespace's cookie.
/// Entering a namespace changes only the calling thread, so it is done on a thread of its
/// own; what `f` opens there (a socket) stays in that namespace after the thread ends.
pub fn in_namespace_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce(u64) -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening /proc/{pid}/ns/net"))?;
    std::thread::spawn(move || -> Result<T> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
        f(current_netns_cookie()?)
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// The calling thread's network namespace cookie (`SO_NETNS_COOKIE` of a new socket).
fn current_netns_cookie() -> Result<u64> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a socket to read the network namespace cookie")?;
    backfill::netns_cookie(&socket).context("reading SO_NETNS_COOKIE (Linux 5.14 or later)")
}

/// Every address on the calling thread's namespace's interfaces, except loopback and IPv6
/// link-local ones (every namespace has its own and they never leave the link).
fn interface_addresses() -> Result<BTreeSet<AddrKey>> {
    let mut keys = BTreeSet::new();
    for ifa in getifaddrs().context("listing interface addresses")? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if let Some(key) = key_of(ip) {
            keys.insert(key);
        }
    }
    Ok(keys)
}

fn key_of(ip: IpAddr) -> Option<AddrKey> {
    match ip {
        _ if ip.is_loopback() => None,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => None,
        _ => Some(raw_key(ip)),
    }
}

/// Whether `owner` is a pod address another node of the fleet published.
fn is_remote(owner: &AddrOwner) -> bool {
    owner.kind == ADDR_POD && owner.netns == NETNS_REMOTE
}

/// The address an ENF_ADDRS key holds.
fn ip_of(key: &AddrKey) -> IpAddr {
    if key.family == FAMILY_V4 {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
    }
}

/// The ENF_ADDRS key of `ip`: IPv4 in the first four bytes.
fn raw_key(ip: IpAddr) -> AddrKey {
    let mut addr = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            FAMILY_V4
        }
        IpAddr::V6(v6) => {
            addr.copy_from_slice(&v6.octets());
            FAMILY_V6
        }
    };
    AddrKey {
        family,
        _pad: [0; 3],
        addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_programs_layout() {
        let v4 = key_of("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(v4.family, FAMILY_V4);
        assert_eq!(&v4.addr[..4], &[10, 1, 2, 3]);
        assert_eq!(&v4.addr[4..], &[0; 12]);
        let v6 = key_of("fd00::1".parse().unwrap()).unwrap();
        assert_eq!(v6.family, FAMILY_V6);
        assert_eq!(v6.addr[0], 0xfd);
        assert_eq!(v6.addr[15], 1);
        for ip in ["10.1.2.3", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_of(&key_of(ip).unwrap()), ip);
        }
    }

    #[test]
    fn loopback_and_link_local_are_nobodys() {
        for ip in ["127.0.0.1", "127.5.5.5", "::1", "fe80::1"] {
            assert_eq!(key_of(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
