//! What the programs counted, summed over CPUs (the maps are per CPU, see the eBPF crate's
//! `counters`): refusals and flows audit mode let through, per pair of peers, and how often
//! and how recently each edge allowed a flow.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuHashMap};
use enforcer_common::{
    maps::{EdgeUse, PairCounts, PairKey},
    names,
};

pub struct Usage {
    counts: PerCpuHashMap<MapData, PairKey, PairCounts>,
    edges: PerCpuHashMap<MapData, u32, EdgeUse>,
}

impl Usage {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            counts: PerCpuHashMap::try_from(take(names::MAP_COUNTS)?)?,
            edges: PerCpuHashMap::try_from(take(names::MAP_EDGE_USE)?)?,
        })
    }

    /// Refusal and audit counts per (from, to) pair of encoded peers.
    pub fn pairs(&self) -> BTreeMap<PairKey, PairCounts> {
        self.counts
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let total = per_cpu
                    .iter()
                    .fold(PairCounts::default(), |sum, c| PairCounts {
                        denied: sum.denied + c.denied,
                        would_deny: sum.would_deny + c.would_deny,
                    });
                (key, total)
            })
            .collect()
    }

    /// Use of every edge index the programs counted.
    pub fn edges(&self) -> BTreeMap<u32, EdgeUse> {
        self.edges
            .iter()
            .filter_map(Result::ok)
            .map(|(index, per_cpu)| {
                let total = per_cpu.iter().fold(EdgeUse::default(), |sum, u| EdgeUse {
                    connections: sum.connections + u.connections,
                    last_used: sum.last_used.max(u.last_used),
                });
                (index, total)
            })
            .collect()
    }

    /// Drops the counters of edge indexes not in `live`, so an index given to a new edge
    /// later starts from zero.
    pub fn forget_edges(&mut self, live: &[u32]) -> Result<()> {
        let live: std::collections::HashSet<u32> = live.iter().copied().collect();
        let gone: Vec<u32> = self
            .edges
            .keys()
            .filter_map(Result::ok)
            .filter(|index| !live.contains(index))
            .collect();
        for index in gone {
            match self.edges.remove(&index) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("removing an edge's counters"),
            }
        }
        Ok(())
    }
}
