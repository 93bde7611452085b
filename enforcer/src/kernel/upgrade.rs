//! Upgrades across a change of pinned-map layout, with enforcement on at every moment.
//!
//! A pinned map whose key or value size differs from this build's cannot be adopted: the new
//! programs would read garbage from it. When [`MIGRATIONS`] knows the old layout, [`super::load`]
//! leaves that one map's pin alone and lets the loader create this build's map, unpinned;
//! every other pinned map is adopted as on any restart. [`Upgrade::run`] then, under the state
//! lock and before the daemon writes any policy:
//!
//! 1. carries the old map's entries into the new one, converted (nothing writes the old map
//!    meanwhile: the daemon is its only writer, this one holds the state lock, and the
//!    programs only read the maps that can be migrated);
//! 2. replaces the program in every pinned link, in [`attach::HOOKS`] order, with
//!    `BPF_LINK_UPDATE` (atomic per hook: a hook never runs neither program);
//! 3. only then pins each new map over the old one's pin (a rename: the pin path always
//!    names one of the two), and the old map is freed with the last old program.
//!
//! Why no moment is fail-open and none refuses an allowed flow: during step 2 some hooks run
//! the old build's programs and some this build's, but they read the same kernel objects for
//! every map but the migrated ones (socket tags, the domain-id registry, tracked connections,
//! UDP flows, addresses, the active slot), so a socket tagged by an old `sock_create` is the
//! same socket with the same tag to a new `connect4` or `ingress`, and a connection an old
//! program tracked is found by this daemon's revocation. The migrated maps are faithful
//! copies of the old ones in both policy slots, and the active slot does not move until
//! every hook runs a new program (the policy is applied after [`Upgrade::run`]), so an old
//! and a new program asked about the same flow give the same answer, the one the policy in
//! force before the upgrade gives. The copy is taken from the kernel, not rebuilt from the
//! state dir, because the state dir of an earlier version does not say which policy is in
//! force (versions before the restart records kept no `active-policy.json`, and a
//! `policy apply` under them was never saved).
//!
//! A crash at any step leaves enforcement on: before step 3 the pins still name the old map,
//! which is still complete and unchanged, and every hook runs either an old program (old
//! maps) or a new one (the copy, held alive by the program); the next start sees the old
//! layout again and does the whole upgrade again from the old map. After step 3 every hook
//! already runs a new program and the next start is an ordinary restart.

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use enforcer_common::{
    maps::{EdgeKey, MAX_CHUNKS, PortChunk, SLOTS},
    names,
};

use super::{attach, bpf_sys, cgroupfs::CgroupRoot};
use crate::paths::PinDir;

/// A layout an earlier build pinned a map with, and how to carry its entries into this
/// build's layout of the same map.
pub(super) struct Migration {
    pub map: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Reads every entry of the old map and writes it, converted, into the new one; returns
    /// how many entries it carried.
    carry: fn(&MapData, &MapData) -> Result<usize>,
    /// What changed, for the log.
    pub change: &'static str,
}

/// Every earlier layout this build can migrate. A pinned map in a layout not listed here is
/// refused, as before: `enforcer teardown` is then the only way to this build.
pub(super) const MIGRATIONS: [Migration; 1] = [Migration {
    map: names::MAP_EDGES,
    key_size: size_of::<EdgeKeyV1>(),
    value_size: size_of::<PortChunk>(),
    carry: carry_edges_v1,
    change: "ENF_EDGES keys from 16 bytes (slot, from, to, chunk: u32 each) to 12 \
             (from, to: u32; slot, chunk: u16), commit a25961a",
}];

/// The `ENF_EDGES` key of builds before commit a25961a: the same fields, each a u32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EdgeKeyV1 {
    slot: u32,
    from: u32,
    to: u32,
    chunk: u32,
}

// SAFETY: four u32s, no padding; every byte pattern is a valid key.
unsafe impl aya::Pod for EdgeKeyV1 {}

fn carry_edges_v1(old: &MapData, new: &MapData) -> Result<usize> {
    let entries = bpf_sys::hash_map_entries::<EdgeKeyV1, PortChunk>(old.fd())
        .context("reading the old ENF_EDGES")?;
    let mut keys = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        keys.push(edge_key_v1(key)?);
        values.push(value);
    }
    bpf_sys::map_update_batch(new.fd(), &keys, &values).map_err(|(written, err)| {
        anyhow::Error::from(err).context(format!(
            "writing the new ENF_EDGES ({written} of {} entries written)",
            keys.len()
        ))
    })?;
    Ok(keys.len())
}

/// `key` in this build's layout. A slot is 0 or 1 and a chunk number below `MAX_CHUNKS` (16):
/// both fit a u16. Anything else is not a map this build understands, and nothing has changed
/// yet when it is refused.
fn edge_key_v1(key: EdgeKeyV1) -> Result<EdgeKey> {
    match (u16::try_from(key.slot), u16::try_from(key.chunk)) {
        (Ok(slot), Ok(chunk)) if u32::from(slot) < SLOTS && usize::from(chunk) < MAX_CHUNKS => {
            Ok(EdgeKey {
                from: key.from,
                to: key.to,
                slot,
                chunk,
            })
        }
        _ => bail!("the old ENF_EDGES holds a key this build cannot convert: {key:?}"),
    }
}

/// A pinned map [`super::load`] did not adopt because it has an earlier layout: the old map,
/// still pinned, and how to migrate it into the map this build created.
pub(super) struct Replaced {
    pub migration: &'static Migration,
    pub old: MapData,
}

/// What a start must do before it writes any policy when pinned maps have an earlier layout.
pub struct Upgrade {
    pub(super) replaced: Vec<Replaced>,
}

/// What [`Upgrade::run`] did to one map, for the log and `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    pub map: &'static str,
    pub change: &'static str,
    pub entries: usize,
}

impl Upgrade {
    /// Whether the pins hold a map of an earlier layout.
    pub fn needed(&self) -> bool {
        !self.replaced.is_empty()
    }

    /// Carries the old maps' entries into this build's, swaps every hook to this build's
    /// programs, then pins the new maps over the old ones (see the module's comment for why
    /// each step comes where it does). `ebpf` holds this build's loaded programs and maps.
    pub fn run(
        self,
        ebpf: &mut aya::Ebpf,
        root: &CgroupRoot,
        pins: &PinDir,
    ) -> Result<Vec<Migrated>> {
        let mut migrated = Vec::new();
        for replaced in &self.replaced {
            let name = replaced.migration.map;
            let new = map_data(ebpf, name)?;
            let entries = (replaced.migration.carry)(&replaced.old, new)
                .with_context(|| format!("carrying {name} into this build's layout"))?;
            migrated.push(Migrated {
                map: name,
                change: replaced.migration.change,
                entries,
            });
        }
        attach::attach_all(ebpf, root, pins)
            .context("replacing the old programs in the pinned links")?;
        for replaced in &self.replaced {
            let name = replaced.migration.map;
            pin_over(map_data(ebpf, name)?, pins, name)?;
        }
        Ok(migrated)
    }
}

fn map_data<'a>(ebpf: &'a aya::Ebpf, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name) {
        Some(aya::maps::Map::HashMap(data)) => Ok(data),
        Some(_) => bail!("map {name} is not a hash map"),
        None => bail!("the eBPF object has no map {name}"),
    }
}

/// Pins `map` at the pin path of `name`, replacing the old map's pin in one rename: the path
/// never names no map, so a crash here leaves either the old pin (and the next start upgrades
/// again) or the new one.
fn pin_over(map: &MapData, pins: &PinDir, name: &str) -> Result<()> {
    let pin = pins.map(name);
    let staged = pins.staged_map(name);
    // Left by a start that crashed between pinning and renaming: its map is no longer the
    // one the pins should name.
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", staged.display())),
    }
    map.pin(&staged)
        .with_context(|| format!("pinning the new {name} at {}", staged.display()))?;
    // bpffs supports rename(2) within one file system (simple_rename); it replaces the old
    // pin atomically, and the old map lives on only while old programs or fds hold it.
    std::fs::rename(&staged, &pin)
        .with_context(|| format!("renaming {} to {}", staged.display(), pin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_edge_keys_keep_their_fields() {
        let old = EdgeKeyV1 {
            slot: 1,
            from: 7,
            to: 70_000,
            chunk: 15,
        };
        assert_eq!(
            edge_key_v1(old).expect("a valid key"),
            EdgeKey {
                from: 7,
                to: 70_000,
                slot: 1,
                chunk: 15
            }
        );
        for bad in [
            EdgeKeyV1 { slot: 2, ..old },
            EdgeKeyV1 { chunk: 16, ..old },
            EdgeKeyV1 {
                slot: 0x1_0000,
                ..old
            },
        ] {
            assert!(edge_key_v1(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_migration_is_from_a_layout_this_build_does_not_use() {
        for m in &MIGRATIONS {
            let (_, key_size, value_size) = super::super::MAP_LAYOUTS
                .into_iter()
                .find(|(name, _, _)| *name == m.map)
                .expect("a map of this build");
            assert_ne!(
                (m.key_size, m.value_size),
                (key_size, value_size),
                "{}",
                m.map
            );
        }
        assert_eq!(size_of::<EdgeKeyV1>(), 16);
    }
}
