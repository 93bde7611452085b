//! Everything that talks to the kernel's BPF subsystem: loading the embedded object with its
//! maps pinned, the attach table, and the policy maps.

pub mod attach;
pub mod bpf_sys;
pub mod features;
pub mod memory;
pub mod policy_maps;

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader};
use enforcer_common::{
    maps::{
        AcceptKey, AddrKey, AddrOwner, BindingKey, ConnState, DomainKey, DomainName, EdgeKey,
        EdgeUse, EndpointKey, FlowKey, FlowState, HostConfig, NetnsSeen, PairCounts, PairKey,
        PolicyConfig, PortChunk, SockTag,
    },
    names,
};

use crate::paths::PinDir;

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// (map, key size, value size) as this build lays them out. A pinned map from another build
/// with a different layout must not be adopted: programs would read garbage from it.
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

/// Loads the object. Maps already pinned under `pins` are reused (their contents, and so the
/// enforced policy and every socket's tag, carry over); missing ones are created and pinned.
/// Programs are not loaded or attached here.
pub fn open(pins: &PinDir) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "this enforcer binary was built with AYA_BUILD_SKIP and contains no kernel \
             programs; build it normally (`cargo xtask setup` installs what that needs)"
        );
    }
    std::fs::create_dir_all(pins.maps())
        .with_context(|| format!("creating {}", pins.maps().display()))?;
    let mut loader = EbpfLoader::new();
    let map_pins: Vec<_> = names::ALL_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    for (name, path) in &map_pins {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .load(OBJECT)
        .context("creating or opening the pinned maps")?;
    for (name, key_size, value_size) in MAP_LAYOUTS {
        let map = ebpf
            .map(name)
            .with_context(|| format!("the eBPF object has no map {name}"))?;
        let info = match map {
            aya::maps::Map::SkStorage(data)
            | aya::maps::Map::HashMap(data)
            | aya::maps::Map::LpmTrie(data)
            | aya::maps::Map::Array(data)
            | aya::maps::Map::LruHashMap(data)
            | aya::maps::Map::PerCpuHashMap(data)
            | aya::maps::Map::PerCpuArray(data)
            | aya::maps::Map::RingBuf(data) => data.info()?,
            _ => bail!("map {name} has an unexpected type"),
        };
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            bail!(
                "the pinned map {} has key/value sizes {}/{}, this enforcer needs {key_size}/{value_size}; \
                 it was created by another version. Run `enforcer teardown --pin-dir {}` first",
                pins.map(name).display(),
                info.key_size(),
                info.value_size(),
                pins.path().display()
            );
        }
    }
    Ok(ebpf)
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
