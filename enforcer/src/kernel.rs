//! Everything that talks to the kernel: loading the embedded object and pinning its maps, the
//! attach table, the policy maps, the cgroup hierarchy, the other maps the programs share with
//! the daemon (addresses, usage counters, tracked connections), and netlink sock_diag.

pub mod addresses;
pub mod attach;
pub mod backfill;
pub mod bpf_sys;
pub mod bpffs;
pub mod cgroup_paths;
pub mod cgroupfs;
pub mod features;
pub mod memory;
pub mod policy_maps;
pub mod revocation;
pub mod sockdiag;
pub mod upgrade;
pub mod usage;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::MapData};
use enforcer_common::{
    maps::{
        AcceptKey, AddrKey, AddrOwner, BindingKey, ConnState, DomainKey, DomainName, EdgeKey,
        EdgeUse, EndpointKey, FlowKey, FlowState, HostConfig, NetnsSeen, PairCounts, PairKey,
        PolicyConfig, PortChunk, SockTag,
    },
    names,
};

use self::upgrade::{MIGRATIONS, Replaced, Upgrade};
use crate::paths::PinDir;

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// (map, key size, value size) as this build lays them out. A pinned map from another build
/// with a different layout must not be adopted: programs would read garbage from it. It is
/// migrated when [`upgrade::MIGRATIONS`] knows its layout, and refused otherwise.
const MAP_LAYOUTS: [(&str, usize, usize); 21] = [
    (names::MAP_TAGS, size_of::<i32>(), size_of::<SockTag>()),
    (
        names::MAP_BINDINGS,
        size_of::<BindingKey>(),
        size_of::<u32>(),
    ),
    // LPM keys carry a u32 prefix length before the data.
    (
        names::MAP_ENDPOINTS,
        4 + size_of::<EndpointKey>(),
        size_of::<u32>(),
    ),
    (
        names::MAP_EDGES,
        size_of::<EdgeKey>(),
        size_of::<PortChunk>(),
    ),
    (
        names::MAP_POLICY,
        size_of::<u32>(),
        size_of::<PolicyConfig>(),
    ),
    (names::MAP_ACTIVE, size_of::<u32>(), size_of::<u32>()),
    (
        names::MAP_DOMAINS,
        size_of::<u32>(),
        size_of::<DomainName>(),
    ),
    (
        names::MAP_ADDRS,
        size_of::<AddrKey>(),
        size_of::<AddrOwner>(),
    ),
    (names::MAP_HOST, size_of::<u32>(), size_of::<HostConfig>()),
    (
        names::MAP_FLOWS,
        size_of::<FlowKey>(),
        size_of::<FlowState>(),
    ),
    (names::MAP_NETNS, size_of::<u64>(), size_of::<NetnsSeen>()),
    // Ring buffers have neither keys nor values.
    (names::MAP_NOTIFY, 0, 0),
    (names::MAP_MODES, size_of::<DomainKey>(), size_of::<u32>()),
    (names::MAP_CONNS, size_of::<i32>(), size_of::<ConnState>()),
    (
        names::MAP_ACCEPTS,
        size_of::<AcceptKey>(),
        size_of::<ConnState>(),
    ),
    (
        names::MAP_UDP_CONNS,
        size_of::<u64>(),
        size_of::<ConnState>(),
    ),
    (
        names::MAP_COUNTS,
        size_of::<PairKey>(),
        size_of::<PairCounts>(),
    ),
    (names::MAP_EDGE_USE, size_of::<u32>(), size_of::<EdgeUse>()),
    // The ring buffer's records are `Event`s; their layout is the daemon's to read.
    (names::MAP_EVENTS, 0, 0),
    (names::MAP_EVENTS_LOST, size_of::<u32>(), size_of::<u64>()),
    (
        names::MAP_REFUSALS,
        size_of::<AcceptKey>(),
        size_of::<u64>(),
    ),
];

/// The embedded object with its maps and every program loaded into the kernel, pinning
/// nothing new yet: see [`load`] and [`Loaded::pin_created`].
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Maps this run created because no pin existed for them; they are pinned only by
    /// [`Loaded::pin_created`].
    created: Vec<&'static str>,
    /// Pinned maps of an earlier layout, left pinned as they are; this run created this
    /// build's instead, which [`Upgrade::run`] fills and pins in their place.
    pub upgrade: Upgrade,
}

/// Loads the object and every program, changing nothing on the host: maps already pinned
/// under `pins` are opened (their contents, and so the enforced policy and every socket's
/// tag, carry over), missing ones are created without a pin, and then every program goes
/// through the verifier against those maps. A pinned map of an earlier layout that
/// [`upgrade::MIGRATIONS`] knows is left pinned and this build's map is created without a pin
/// (filled and pinned over it by [`Upgrade::run`]); one of any other layout stops the daemon.
/// So a program this kernel refuses, or a pinned map that cannot be migrated, stops the
/// daemon with existing pins and enforcement exactly as they were (a map or program no fd or
/// pin holds is freed by the kernel when this process exits). Programs are not attached here.
pub fn load(pins: &PinDir) -> Result<Loaded> {
    if OBJECT.is_empty() {
        bail!(
            "this enforcer binary was built with AYA_BUILD_SKIP and contains no kernel \
             programs; build it normally (`cargo xtask setup` installs what that needs)"
        );
    }
    let mut loader = EbpfLoader::new();
    let mut created = Vec::new();
    let mut replaced = Vec::new();
    let map_pins = MAP_LAYOUTS
        .map(|(name, key_size, value_size)| (name, key_size, value_size, pins.map(name)));
    for (name, key_size, value_size, path) in &map_pins {
        let (name, key_size, value_size) = (*name, *key_size, *value_size);
        // aya pins a map it had to create when it was given a pin path, so the path is
        // given only for pins that exist and are adopted. A pin removed between this check
        // and the load (a concurrent teardown) would be created and pinned by aya at once.
        if !path.exists() {
            created.push(name);
            continue;
        }
        let old = MapData::from_pin(path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        let info = old.info()?;
        let pinned = (info.key_size() as usize, info.value_size() as usize);
        if pinned == (key_size, value_size) {
            loader.map_pin_path(name, path.as_path());
            continue;
        }
        let Some(migration) = MIGRATIONS
            .iter()
            .find(|m| m.map == name && (m.key_size, m.value_size) == pinned)
        else {
            bail!(
                "the pinned map {} has key/value sizes {}/{}, this enforcer needs \
                 {key_size}/{value_size}; it was created by another version, and this one \
                 knows no migration from that layout. Run `enforcer teardown --pin-dir {}` \
                 first (nothing is enforced from the teardown until this daemon has started)",
                path.display(),
                pinned.0,
                pinned.1,
                pins.path().display()
            );
        };
        replaced.push(Replaced { migration, old });
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("creating or opening the pinned maps")?;
    attach::load_all(&mut ebpf).map_err(features::refused_by_verifier)?;
    Ok(Loaded {
        ebpf,
        created,
        upgrade: Upgrade { replaced },
    })
}

impl Loaded {
    /// Pins the maps [`load`] created, under `pins` (on bpffs: see `bpffs::ensure_pin_dir`).
    /// Called once every program has loaded and the policy was accepted, before anything
    /// reads the pins. If one cannot be pinned (its path was taken meanwhile, say by another
    /// daemon's pin), the pins made here are removed again, so the pin directory holds what
    /// it held before.
    pub fn pin_created(&self, pins: &PinDir) -> Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        let dir = pins.maps();
        let made_dir = !dir.exists();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pinned: Vec<PathBuf> = Vec::new();
        for name in &self.created {
            let path = pins.map(name);
            let result = self
                .ebpf
                .map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
                .and_then(|map| {
                    map.pin(&path)
                        .with_context(|| format!("pinning map {name} at {}", path.display()))
                });
            if let Err(err) = result {
                // Unlinking a pin only drops the file's reference: the map lives on while
                // this process holds it, and is freed when it exits.
                let mut left = Vec::new();
                for path in &pinned {
                    if let Err(why) = std::fs::remove_file(path) {
                        left.push(format!("{} ({why})", path.display()));
                    }
                }
                if made_dir && let Err(why) = std::fs::remove_dir(&dir) {
                    left.push(format!("{} ({why})", dir.display()));
                }
                if left.is_empty() {
                    return Err(err);
                }
                return Err(err.context(format!(
                    "and what this start pinned could not all be removed: {}",
                    left.join(", ")
                )));
            }
            pinned.push(path);
        }
        Ok(())
    }
}

/// Removes the map pins and the pin directory. Maps are freed once no program or file
/// descriptor holds them.
pub fn unpin_maps(pins: &PinDir) -> Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    for name in names::ALL_MAPS {
        let pin = pins.map(name);
        if pin.exists() {
            std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
            removed.push(name);
        }
        // Left only by an upgrade that crashed before its rename (see `upgrade`).
        let staged = pins.staged_map(name);
        if staged.exists() {
            std::fs::remove_file(&staged)
                .with_context(|| format!("removing {}", staged.display()))?;
        }
    }
    for dir in [pins.maps(), pins.links(), pins.path().to_path_buf()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("removing {}", dir.display()));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_layout_to_check() {
        let laid_out: Vec<&str> = MAP_LAYOUTS.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(laid_out, names::ALL_MAPS);
    }
}
