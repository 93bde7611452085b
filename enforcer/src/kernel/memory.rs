//! What each pinned map costs the kernel, for `status` and `cargo xtask bench apply`.
//!
//! The `memlock` line of a map's fdinfo is what the kernel charges for the map: since Linux
//! 6.4 (`bpf_map_memory_usage`) the memory it really uses, so a map created with
//! `BPF_F_NO_PREALLOC` grows with its entries while a preallocated one (an LRU hash, an
//! array) costs its whole size from the start.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;
use enforcer_common::names;

use crate::{api::status::MapMemory, paths::PinDir};

/// Every pinned map that can be opened, with its cost; a map that cannot be read is left out.
pub fn of_pins(pins: &PinDir) -> Vec<MapMemory> {
    names::ALL_MAPS
        .iter()
        .filter_map(|name| {
            let map = MapData::from_pin(pins.map(name)).ok()?;
            let layout = map.info().ok()?;
            let fd = map.fd().as_fd().as_raw_fd();
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some(MapMemory {
                map: (*name).to_owned(),
                bytes: memlock(&info)?,
                max_entries: layout.max_entries(),
                key_size: layout.key_size(),
                value_size: layout.value_size(),
            })
        })
        .collect()
}

fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t1081344\nmap_id:\t7\n";
        assert_eq!(memlock(fdinfo), Some(1_081_344));
        assert_eq!(memlock("pos:\t0\n"), None);
    }
}
