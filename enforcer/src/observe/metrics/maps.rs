//! Fill levels of the pinned maps, counted by key through handles the metrics thread opens
//! for itself, so a scrape walking a large table never holds the daemon's lock.
//!
//! Only maps whose keys can be walked are counted: hash maps (plain, LRU and per-CPU; a
//! per-CPU map has one key per entry, only its values are per CPU) and LPM tries. Socket
//! storage (ENF_TAGS, ENF_CONNS) has no keys to walk, arrays (ENF_POLICY, ENF_ACTIVE,
//! ENF_HOST) are always full, and the ring buffer (ENF_NOTIFY) holds bytes, not entries.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, MapType};
use enforcer_common::names;

use crate::{kernel::bpf_sys, paths::PinDir};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

pub struct PinnedMaps(Vec<Counted>);

struct Counted {
    name: &'static str,
    map: MapData,
    key_size: usize,
    max_entries: u32,
}

impl PinnedMaps {
    /// Opens every countable map pinned under `pins`.
    pub fn open(pins: &PinDir) -> Result<Self> {
        let mut maps = Vec::new();
        for name in names::ALL_MAPS {
            let path = pins.map(name);
            let map = MapData::from_pin(&path)
                .with_context(|| format!("opening {} for metrics", path.display()))?;
            let info = map
                .info()
                .with_context(|| format!("reading what {} is", path.display()))?;
            let countable = matches!(
                info.map_type(),
                Ok(MapType::Hash
                    | MapType::LruHash
                    | MapType::PerCpuHash
                    | MapType::LruPerCpuHash
                    | MapType::LpmTrie)
            );
            if countable {
                maps.push(Counted {
                    name,
                    key_size: info.key_size() as usize,
                    max_entries: info.max_entries(),
                    map,
                });
            }
        }
        Ok(Self(maps))
    }

    /// Entries and capacity of each map. A map that cannot be read is left out (and logged)
    /// rather than reported as empty.
    pub fn fill(&self) -> Vec<MapFill> {
        self.0
            .iter()
            .filter_map(
                |m| match bpf_sys::map_count_keys(m.map.fd(), m.key_size, m.max_entries) {
                    Ok(entries) => Some(MapFill {
                        map: m.name,
                        entries: u64::from(entries),
                        max_entries: u64::from(m.max_entries),
                    }),
                    Err(err) => {
                        log::warn!("counting the entries of {} failed: {err}", m.name);
                        None
                    }
                },
            )
            .collect()
    }
}
