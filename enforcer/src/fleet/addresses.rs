//! Identity across hosts: each node publishes the addresses of its pods with their domains
//! under `PREFIX/addresses/NAME` ([`AddressRecord`], JSON, under the node's lease), and every
//! node loads the other nodes' into its kernel address map, so that a flow from a pod on
//! another host is judged by that pod's domain with no address in the policy. A node whose
//! lease runs out loses its key, and its addresses are withdrawn everywhere: the policy's
//! `external` default (or an endpoint prefix) applies to them again.
//!
//! The host's own addresses are not published: on its own host too an address shared by every
//! host workload names no domain (`kernel::addresses`).

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::api::status::FleetAddressStatus;

/// The most addresses one node may publish; a record with more is refused whole.
pub const MAX_ADDRESSES_PER_NODE: usize = 16_384;
/// The most other nodes whose records a node holds: the fleet's node limit
/// ([`super::client::MAX_NODES`]), so that keys written under the prefix by anyone allowed to
/// cannot grow a node's memory without bound.
pub const MAX_PEER_NODES: usize = super::client::MAX_NODES as usize;

/// What one node publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub node: String,
    pub addresses: Vec<PodAddress>,
}

/// One pod address and the domain of the pod's workloads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodAddress {
    pub address: IpAddr,
    pub domain: String,
}

impl AddressRecord {
    /// `value` as published under `node`'s key: refused when it does not parse, names
    /// another node, holds too many addresses, or holds an address no pod can have.
    pub fn parse(node: &str, value: &[u8]) -> Result<Self, String> {
        let record: Self = serde_json::from_slice(value)
            .map_err(|err| format!("node {node}'s addresses: not an address record: {err}"))?;
        if record.node != node {
            return Err(format!(
                "node {node}'s addresses: the record names node {:?}",
                record.node
            ));
        }
        if record.addresses.len() > MAX_ADDRESSES_PER_NODE {
            return Err(format!(
                "node {node}'s addresses: {} addresses, more than the {MAX_ADDRESSES_PER_NODE} a \
                 node may publish",
                record.addresses.len()
            ));
        }
        if let Some(bad) = record.addresses.iter().find(|a| !routable(a.address)) {
            return Err(format!(
                "node {node}'s addresses: {} cannot be a pod's address on another host",
                bad.address
            ));
        }
        Ok(record)
    }
}

/// Whether `ip` can reach another host as a pod's source address: not loopback, link-local,
/// unspecified, multicast or broadcast.
fn routable(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
        && match ip {
            IpAddr::V4(v4) => !(v4.is_link_local() || v4.is_broadcast()),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// The other nodes' published addresses, as this node last read them.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    by_node: BTreeMap<String, Vec<PodAddress>>,
    /// Raised at every change, so that what the kernel holds is rewritten only after one.
    version: u64,
}

/// The peers' addresses in terms of this node's policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Each address with the id of its domain here.
    pub addresses: BTreeMap<IpAddr, u32>,
    /// Addresses two nodes published with different domains: loaded for neither, since
    /// either may be lying about the other's pod.
    pub conflicts: usize,
    /// Addresses whose domain this node's policy does not have.
    pub unknown_domain: usize,
}

impl Peers {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn nodes(&self) -> usize {
        self.by_node.len()
    }

    /// Puts `node`'s record in place of what it published before. A node not held yet is
    /// refused once [`MAX_PEER_NODES`] are: what a node holds stays bounded whatever keys
    /// appear under the prefix. Returns whether the record is held.
    pub fn set(&mut self, record: AddressRecord) -> bool {
        if !self.by_node.contains_key(&record.node) && self.by_node.len() >= MAX_PEER_NODES {
            return false;
        }
        if self.by_node.get(&record.node) != Some(&record.addresses) {
            self.by_node.insert(record.node, record.addresses);
            self.version += 1;
        }
        true
    }

    /// Withdraws everything `node` published.
    pub fn remove(&mut self, node: &str) {
        if self.by_node.remove(node).is_some() {
            self.version += 1;
        }
    }

    /// Replaces every node's record at once (a fresh read of the whole prefix), keeping the
    /// first [`MAX_PEER_NODES`].
    pub fn replace(&mut self, records: impl IntoIterator<Item = AddressRecord>) {
        let by_node: BTreeMap<String, Vec<PodAddress>> = records
            .into_iter()
            .take(MAX_PEER_NODES)
            .map(|r| (r.node, r.addresses))
            .collect();
        if by_node != self.by_node {
            self.by_node = by_node;
            self.version += 1;
        }
    }

    /// Every address with its domain's id (`domain_id` of a name), leaving out conflicts
    /// and domains this node does not know.
    pub fn resolve(&self, domain_id: impl Fn(&str) -> Option<u32>) -> Resolved {
        let mut claims: BTreeMap<IpAddr, Option<&str>> = BTreeMap::new();
        for address in self.by_node.values().flatten() {
            match claims.entry(address.address.to_canonical()) {
                Entry::Vacant(v) => {
                    v.insert(Some(&address.domain));
                }
                Entry::Occupied(mut o) => {
                    if *o.get() != Some(address.domain.as_str()) {
                        o.insert(None);
                    }
                }
            }
        }
        let mut resolved = Resolved::default();
        for (ip, domain) in claims {
            let Some(domain) = domain else {
                resolved.conflicts += 1;
                continue;
            };
            match domain_id(domain) {
                Some(id) => {
                    resolved.addresses.insert(ip, id);
                }
                None => resolved.unknown_domain += 1,
            }
        }
        resolved
    }
}

/// A node's side of the fleet's addresses: the other nodes' as last read, what the last
/// write to the kernel made of them (`daemon::fleet_addresses`), and what it published.
#[derive(Debug, Clone, Default)]
pub struct FleetAddresses {
    pub peers: Peers,
    /// The peers' version and the policy generation at the last write: a new policy may
    /// know a domain it did not, or no longer know one.
    pub written: Option<(u64, u64)>,
    /// How many of the peers' addresses `ENF_ADDRS` held after the last write.
    pub held: usize,
    pub conflicts: usize,
    pub unknown_domain: usize,
    /// How many of this node's pod addresses it last published.
    pub published: usize,
    /// Why this node's addresses cannot be published, until they can.
    pub publish_error: Option<String>,
    /// Why the other nodes' addresses cannot be read or followed, until they can: kept apart
    /// from the publishing error, so that a write that succeeds does not hide a read that
    /// still fails.
    pub follow_error: Option<String>,
    /// Raised after each scan of this host's pods, so that a new pod's addresses are
    /// published at once rather than at the next heartbeat.
    pub scanned: Arc<Notify>,
}

impl FleetAddresses {
    pub fn status(&self) -> FleetAddressStatus {
        FleetAddressStatus {
            published: self.published,
            peer_nodes: self.peers.nodes(),
            loaded: self.held,
            conflicts: self.conflicts,
            unknown_domain: self.unknown_domain,
            last_error: match (&self.follow_error, &self.publish_error) {
                (Some(follow), Some(publish)) => Some(format!("{follow}; {publish}")),
                (Some(one), None) | (None, Some(one)) => Some(one.clone()),
                (None, None) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, addresses: &[(&str, &str)]) -> AddressRecord {
        AddressRecord {
            node: node.into(),
            addresses: addresses
                .iter()
                .map(|(a, d)| PodAddress {
                    address: a.parse().unwrap(),
                    domain: (*d).into(),
                })
                .collect(),
        }
    }

    fn ids(name: &str) -> Option<u32> {
        match name {
            "prod.example.org" => Some(1),
            "staging.example.org" => Some(2),
            _ => None,
        }
    }

    #[test]
    fn a_record_is_refused_unless_it_is_the_nodes_own_and_sane() {
        let good = serde_json::to_vec(&record("a", &[("10.1.0.2", "prod.example.org")])).unwrap();
        assert!(AddressRecord::parse("a", &good).is_ok());
        let err = AddressRecord::parse("b", &good).unwrap_err();
        assert!(err.contains("names node \"a\""), "{err}");
        assert!(AddressRecord::parse("a", b"{").is_err());
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "fe80::1",
            "169.254.1.1",
            "224.0.0.1",
        ] {
            let value = serde_json::to_vec(&record("a", &[(bad, "prod.example.org")])).unwrap();
            let err = AddressRecord::parse("a", &value).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let many: Vec<(String, &str)> = (0..=MAX_ADDRESSES_PER_NODE)
            .map(|i| (format!("10.{}.{}.1", i / 256, i % 256), "prod.example.org"))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, d)| (a.as_str(), *d)).collect();
        let value = serde_json::to_vec(&record("a", &many)).unwrap();
        assert!(AddressRecord::parse("a", &value).is_err());
    }

    #[test]
    fn a_node_holds_the_records_of_at_most_max_peer_nodes_others() {
        let mut peers = Peers::default();
        peers.replace((0..=MAX_PEER_NODES).map(|i| record(&format!("n{i}"), &[])));
        assert_eq!(peers.nodes(), MAX_PEER_NODES);
        let version = peers.version();
        assert!(!peers.set(record("one-too-many", &[("10.9.0.2", "prod.example.org")])));
        assert_eq!((peers.nodes(), peers.version()), (MAX_PEER_NODES, version));
        // A node already held may still change what it publishes, and a place freed is
        // taken again.
        assert!(peers.set(record("n0", &[("10.9.0.3", "prod.example.org")])));
        peers.remove("n1");
        assert!(peers.set(record("one-too-many", &[])));
        assert_eq!(peers.nodes(), MAX_PEER_NODES);
    }

    #[test]
    fn a_publish_that_succeeds_does_not_hide_a_read_that_fails() {
        let mut addresses = FleetAddresses {
            follow_error: Some("reading the fleet's addresses: permission denied".into()),
            ..FleetAddresses::default()
        };
        assert_eq!(
            addresses.status().last_error.as_deref(),
            Some("reading the fleet's addresses: permission denied")
        );
        addresses.publish_error = Some("publishing: no answer".into());
        assert_eq!(
            addresses.status().last_error.as_deref(),
            Some("reading the fleet's addresses: permission denied; publishing: no answer")
        );
        addresses.publish_error = None;
        assert!(addresses.status().last_error.is_some());
        addresses.follow_error = None;
        assert!(addresses.status().last_error.is_none());
    }

    #[test]
    fn conflicting_claims_and_unknown_domains_are_left_out() {
        let mut peers = Peers::default();
        peers.set(record(
            "a",
            &[
                ("10.1.0.2", "prod.example.org"),
                ("10.1.0.3", "prod.example.org"),
                ("fd00::2", "retired.example.org"),
            ],
        ));
        peers.set(record(
            "b",
            &[
                ("10.1.0.3", "staging.example.org"),
                ("10.2.0.2", "staging.example.org"),
                ("::ffff:10.1.0.2", "prod.example.org"),
            ],
        ));
        let resolved = peers.resolve(ids);
        assert_eq!(
            resolved.addresses,
            BTreeMap::from([
                ("10.1.0.2".parse().unwrap(), 1),
                ("10.2.0.2".parse().unwrap(), 2),
            ]),
            "an IPv4-mapped claim is the same address, and agrees"
        );
        assert_eq!(resolved.conflicts, 1);
        assert_eq!(resolved.unknown_domain, 1);
    }

    #[test]
    fn only_a_change_moves_the_version() {
        let mut peers = Peers::default();
        peers.set(record("a", &[("10.1.0.2", "prod.example.org")]));
        let v = peers.version();
        peers.set(record("a", &[("10.1.0.2", "prod.example.org")]));
        peers.replace([record("a", &[("10.1.0.2", "prod.example.org")])]);
        peers.remove("b");
        assert_eq!(peers.version(), v);
        peers.remove("a");
        assert_eq!(peers.version(), v + 1);
        assert_eq!(peers.nodes(), 0);
    }
}
