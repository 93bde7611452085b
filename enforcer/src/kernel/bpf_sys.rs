//! The few `bpf(2)` commands aya 0.14 does not expose publicly: opening a pinned link by path,
//! replacing a link's program in place, force-detaching a link, reading which cgroup a
//! link is attached to, walking the keys of a map of any type, and reading, writing and
//! deleting many entries of a hash map with one call. Attribute offsets follow
//! `union bpf_attr` and `struct bpf_link_info` in `include/uapi/linux/bpf.h`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` (and, reused, `struct bpf_link_info`) as a zeroed, 8-byte aligned
/// buffer; the kernel accepts a larger attr as long as the bytes past the fields it knows are
/// zero.
#[repr(C, align(8))]
pub(crate) struct Attr([u8; 128]);

impl Attr {
    pub(crate) fn new() -> Self {
        Self([0; 128])
    }

    pub(crate) fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    pub(crate) fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    pub(crate) fn get_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(bytes)
    }

    fn get_u64(&self, offset: usize) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[offset..offset + 8]);
        u64::from_ne_bytes(bytes)
    }

    pub(crate) fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attr buffer outlives the call and is as large as we claim; any pointers
        // written into it point at live buffers owned by the caller.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }
}

fn raw(fd: &impl AsFd) -> u32 {
    fd.as_fd().as_raw_fd() as u32
}

/// Opens the BPF object (link, map or program) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c_path.as_ptr() as u64);
    let fd = attr.call(BPF_OBJ_GET)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program behind `link` with `prog`: there is no instant at which
/// the hook runs neither program.
pub fn link_update(link: impl AsFd, prog: impl AsFd) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, raw(&link));
    attr.put_u32(4, raw(&prog));
    attr.call(BPF_LINK_UPDATE).map(drop)
}

/// Detaches `link` from its hook even while other file descriptors or pins still hold it.
pub fn link_detach(link: impl AsFd) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, raw(&link));
    attr.call(BPF_LINK_DETACH).map(drop)
}

/// What the kernel reports about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the link has been detached.
    pub cgroup_id: u64,
}

pub fn cgroup_link_info(link: impl AsFd) -> io::Result<CgroupLinkInfo> {
    // struct bpf_link_info: type u32 @0, id u32 @4, prog_id u32 @8, then an 8-aligned
    // union whose cgroup member starts with cgroup_id u64 @16.
    let mut info = Attr::new();
    let mut attr = Attr::new();
    attr.put_u32(0, raw(&link));
    attr.put_u32(4, info.0.len() as u32);
    attr.put_u64(8, info.0.as_mut_ptr() as u64);
    attr.call(BPF_OBJ_GET_INFO_BY_FD)?;
    Ok(CgroupLinkInfo {
        link_id: info.get_u32(4),
        prog_id: info.get_u32(8),
        cgroup_id: info.get_u64(16),
    })
}

/// Counts the keys of `map`, whose keys are `key_size` bytes, walking at most `limit` of them
/// (its capacity): a walk restarts from the first key when the key it stands on is deleted
/// under it, so on a busy map the count is approximate, but it always ends.
pub fn map_count_keys(map: impl AsFd, key_size: usize, limit: u32) -> io::Result<u32> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0;
    while count < limit {
        // union bpf_attr for map element commands: map_fd u32 @0, key u64 @8, next_key
        // u64 @16. No key asks for the first one; the kernel writes key_size bytes at next_key.
        let mut attr = Attr::new();
        attr.put_u32(0, raw(&map));
        if count > 0 {
            attr.put_u64(8, key.as_ptr() as u64);
        }
        attr.put_u64(16, next.as_mut_ptr() as u64);
        match attr.call(BPF_MAP_GET_NEXT_KEY) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => return Err(err),
        }
        std::mem::swap(&mut key, &mut next);
        count += 1;
    }
    Ok(count)
}

/// Writes `keys[i] -> values[i]` for every `i` into `map` with one `BPF_MAP_UPDATE_BATCH`, as
/// that many `BPF_MAP_UPDATE_ELEM` (flags `BPF_ANY`) would, without a system call per entry:
/// at 100,000 entries about 40% less time. Hash and array maps have it since Linux 5.6
/// (`generic_map_update_batch`, kernel/bpf/syscall.c), which copies the entries one by one in
/// order and stops at the first that fails. The kernel steps through `keys` and `values` by
/// the map's key and value sizes, so `K` and `V` must be laid out exactly as the map's (see
/// `kernel::MAP_LAYOUTS`). On error, the first number is how many entries were written: the
/// kernel writes it back into `batch.count`.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: impl AsFd,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    let count = match u32::try_from(keys.len()) {
        Ok(0) => return Ok(()),
        Ok(count) if keys.len() == values.len() => count,
        _ => {
            let why = "a batch needs as many keys as values, at most u32::MAX";
            return Err((0, io::Error::new(io::ErrorKind::InvalidInput, why)));
        }
    };
    // union bpf_attr, batch commands: in_batch u64 @0, out_batch u64 @8, keys u64 @16,
    // values u64 @24, count u32 @32, map_fd u32 @36, elem_flags u64 @40, flags u64 @48.
    let mut attr = Attr::new();
    attr.put_u64(16, keys.as_ptr() as u64);
    attr.put_u64(24, values.as_ptr() as u64);
    attr.put_u32(32, count);
    attr.put_u32(36, raw(&map));
    attr.call(BPF_MAP_UPDATE_BATCH)
        .map(drop)
        .map_err(|err| (attr.get_u32(32) as usize, err))
}

/// Entries a [`hash_map_keys`] round asks for: enough that a round is never refused for a
/// bucket holding more entries than fit (`ENOSPC`), few enough to keep the buffers small.
const LOOKUP_ROUND: usize = 16_384;

/// Every key of the (not per-CPU) hash map `map`, whose values are `V`s: see
/// [`hash_map_entries`], whose values are dropped.
pub fn hash_map_keys<K: aya::Pod, V: aya::Pod>(map: impl AsFd) -> io::Result<Vec<K>> {
    Ok(hash_map_entries::<K, V>(map)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Every entry of the (not per-CPU) hash map `map`, read with `BPF_MAP_LOOKUP_BATCH`
/// (hash maps since Linux 5.6, `htab_map_lookup_batch`) in rounds of [`LOOKUP_ROUND`]
/// entries instead of a `BPF_MAP_GET_NEXT_KEY` and a lookup call per key: at 200,000 keys
/// about a quarter of the time. The batch cursor is a bucket index (u32) the kernel writes to
/// `out_batch`; the round that reaches the end fails with `ENOENT` after filling in what it
/// found. Like a key walk, this is a consistent view only of a map nothing else writes
/// meanwhile. `K` and `V` must be laid out exactly as the map's keys and values.
pub fn hash_map_entries<K: aya::Pod, V: aya::Pod>(map: impl AsFd) -> io::Result<Vec<(K, V)>> {
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys_buf = vec![0u8; LOOKUP_ROUND * key_size];
    let mut values_buf = vec![0u8; LOOKUP_ROUND * value_size];
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut entries = Vec::new();
    for round in 0.. {
        // union bpf_attr, batch commands: see map_update_batch. No in_batch starts at the
        // first bucket.
        let mut attr = Attr::new();
        if round > 0 {
            attr.put_u64(0, (&raw const cursor) as u64);
        }
        attr.put_u64(8, (&raw mut next) as u64);
        attr.put_u64(16, keys_buf.as_mut_ptr() as u64);
        attr.put_u64(24, values_buf.as_mut_ptr() as u64);
        attr.put_u32(32, LOOKUP_ROUND as u32);
        attr.put_u32(36, raw(&map));
        let result = attr.call(BPF_MAP_LOOKUP_BATCH);
        let found = (attr.get_u32(32) as usize).min(LOOKUP_ROUND);
        let keys = keys_buf.chunks_exact(key_size);
        let values = values_buf.chunks_exact(value_size);
        entries.extend(keys.zip(values).take(found).map(|(key, value)| {
            // SAFETY: each slice holds size_of::<K>() (or ::<V>()) bytes the kernel wrote, and
            // K and V are Pod: every byte pattern is valid. read_unaligned: the buffers are
            // only byte-aligned.
            unsafe {
                (
                    std::ptr::read_unaligned(key.as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(value.as_ptr().cast::<V>()),
                )
            }
        }));
        match result {
            Ok(_) => cursor = next,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => return Err(err),
        }
    }
    Ok(entries)
}

/// Deletes every key in `keys` from `map` with one `BPF_MAP_DELETE_BATCH` (hash maps since
/// Linux 5.6, `generic_map_delete_batch`), which deletes in order and stops at the first key
/// it cannot delete (`ENOENT` for one not there). On error, the first number is how many
/// were deleted before it, as [`map_update_batch`] reports.
pub fn map_delete_batch<K: aya::Pod>(map: impl AsFd, keys: &[K]) -> Result<(), (usize, io::Error)> {
    let count = match u32::try_from(keys.len()) {
        Ok(0) => return Ok(()),
        Ok(count) => count,
        Err(_) => {
            let why = "a batch holds at most u32::MAX keys";
            return Err((0, io::Error::new(io::ErrorKind::InvalidInput, why)));
        }
    };
    let mut attr = Attr::new();
    attr.put_u64(16, keys.as_ptr() as u64);
    attr.put_u32(32, count);
    attr.put_u32(36, raw(&map));
    attr.call(BPF_MAP_DELETE_BATCH)
        .map(drop)
        .map_err(|err| (attr.get_u32(32) as usize, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash map of u32 -> u64 with room for `max` entries, freed when the fd is dropped.
    fn hash_map(max: u32) -> OwnedFd {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        // map_type u32 @0, key_size u32 @4, value_size u32 @8, max_entries u32 @12.
        let mut attr = Attr::new();
        attr.put_u32(0, BPF_MAP_TYPE_HASH);
        attr.put_u32(4, 4);
        attr.put_u32(8, 8);
        attr.put_u32(12, max);
        let fd = attr.call(BPF_MAP_CREATE).expect("creating a hash map");
        // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn lookup(map: &OwnedFd, key: u32) -> Option<u64> {
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut value = 0u64;
        let mut attr = Attr::new();
        attr.put_u32(0, raw(map));
        attr.put_u64(8, (&raw const key) as u64);
        attr.put_u64(16, (&raw mut value) as u64);
        attr.call(BPF_MAP_LOOKUP_ELEM).ok().map(|_| value)
    }

    #[test]
    fn a_batch_writes_every_entry_and_says_how_many_before_a_failure() {
        if !crate::privileged_tests::privileged(
            "a_batch_writes_every_entry_and_says_how_many_before_a_failure",
            "BPF_MAP_UPDATE_BATCH",
        ) {
            return;
        }
        let map = hash_map(4);
        map_update_batch(&map, &[1u32, 2, 3], &[10u64, 20, 30]).expect("a batch of three");
        assert_eq!(
            [1, 2, 3, 4].map(|k| lookup(&map, k)),
            [Some(10), Some(20), Some(30), None]
        );
        // Two keys are new and one is written again: the fifth entry does not fit.
        let (written, err) = map_update_batch(&map, &[3u32, 4, 5], &[31u64, 40, 50])
            .expect_err("a fifth entry in a map of four");
        assert_eq!(written, 2, "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::E2BIG), "{err}");
        assert_eq!(
            [3, 4, 5].map(|k| lookup(&map, k)),
            [Some(31), Some(40), None]
        );
        let (written, err) =
            map_update_batch(&map, &[6u32], &[] as &[u64]).expect_err("keys without values");
        assert_eq!((written, err.kind()), (0, io::ErrorKind::InvalidInput));
    }

    #[test]
    fn every_key_is_read_across_rounds_and_a_batch_delete_stops_at_a_missing_key() {
        if !crate::privileged_tests::privileged(
            "every_key_is_read_across_rounds_and_a_batch_delete_stops_at_a_missing_key",
            "BPF_MAP_LOOKUP_BATCH and BPF_MAP_DELETE_BATCH",
        ) {
            return;
        }
        let count = 2 * LOOKUP_ROUND as u32 + 7;
        let map = hash_map(count);
        assert!(
            hash_map_keys::<u32, u64>(&map)
                .expect("an empty map")
                .is_empty()
        );
        let keys: Vec<u32> = (0..count).collect();
        let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) * 3).collect();
        map_update_batch(&map, &keys, &values).expect("filling the map");
        let mut read = hash_map_keys::<u32, u64>(&map).expect("reading the keys");
        read.sort_unstable();
        assert_eq!(read, keys, "every key, once, over three rounds");

        // Key 5 is deleted twice: the second batch stops there, having deleted 4 and 6 not.
        map_delete_batch(&map, &[5u32]).expect("deleting key 5");
        let (deleted, err) = map_delete_batch(&map, &[4u32, 5, 6]).expect_err("key 5 is gone");
        assert_eq!(deleted, 1, "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!([4, 5, 6].map(|k| lookup(&map, k)), [None, None, Some(18)]);
        assert_eq!(
            hash_map_keys::<u32, u64>(&map)
                .expect("reading the keys")
                .len(),
            count as usize - 2
        );
    }
}
