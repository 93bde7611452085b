//! The fleet's pod addresses on this node (`fleet::addresses`): what it publishes of its own
//! pods, and how the other nodes' reach `ENF_ADDRS`. `fleet_source` reads and writes etcd;
//! this is the part that holds the daemon's lock.

use std::collections::BTreeSet;

use super::machine::Daemon;
use crate::fleet::addresses::{PodAddress, Resolved};

impl Daemon {
    /// This node's pod addresses whose pods are in a domain of the policy in force, as the
    /// fleet's other nodes are told them: sorted, so an unchanged set compares equal.
    pub(super) fn own_pod_addresses(&self) -> Vec<PodAddress> {
        let registry = &self.state.compiled.registry;
        let addresses: BTreeSet<PodAddress> = self
            .host
            .addresses
            .labeled_pods()
            .into_iter()
            .filter_map(|(address, id)| {
                Some(PodAddress {
                    address,
                    domain: registry.name_of(id)?.to_owned(),
                })
            })
            .collect();
        addresses.into_iter().collect()
    }

    /// Writes the other nodes' addresses into `ENF_ADDRS` when they or the policy changed
    /// since the last write, or always with `force` (this host's pods were scanned again, and
    /// an address a pod of this host gave up may now be a peer's).
    pub(super) fn sync_peer_addresses(&mut self, force: bool) {
        let generation = self.state.generation;
        let Some(fleet) = self.source.fleet.as_mut() else {
            return;
        };
        let addresses = &mut fleet.addresses;
        let now = (addresses.peers.version(), generation);
        if !force && addresses.written == Some(now) {
            return;
        }
        let registry = &self.state.compiled.registry;
        let Resolved {
            addresses: wanted,
            conflicts,
            unknown_domain,
        } = addresses.peers.resolve(|name| registry.get(name));
        if conflicts > addresses.conflicts {
            log::warn!(
                "{conflicts} address(es) were published by two nodes of the fleet with different \
                 domains; neither claim is loaded"
            );
        }
        match self.host.addresses.sync_remote(&wanted) {
            Ok(held) => {
                addresses.held = held;
                addresses.written = Some(now);
            }
            Err(err) => log::error!("loading the fleet's other nodes' addresses failed: {err:#}"),
        }
        addresses.conflicts = conflicts;
        addresses.unknown_domain = unknown_domain;
    }
}
