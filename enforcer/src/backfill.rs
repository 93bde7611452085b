//! Tagging sockets that existed before enforcement started (services that were running before
//! the daemon). `sock_create` never ran for them, so the daemon finds them through `/proc`,
//! borrows each one with `pidfd_getfd(2)` and writes its tag into socket storage with
//! `BPF_NOEXIST`, so a tag the kernel already set always wins.
//!
//! The domain comes from the cgroup of the process holding the socket, which is the creating
//! cgroup unless the process moved after creating it.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, SkStorage};
use enforcer_common::{
    maps::{ORIGIN_BACKFILL, SockTag, UNLABELED},
    names,
};
use enforcer_policy::CgroupPath;

use crate::{cgroupfs::CgroupRoot, compile::Compiled, paths::PinDir};

const BPF_NOEXIST: u64 = 1;

/// Tags every inet socket held by a process under `root`; returns how many were tagged now.
pub fn tag_existing(root: &CgroupRoot, compiled: &Compiled, pins: &PinDir) -> Result<usize> {
    let data = MapData::from_pin(pins.map(names::MAP_TAGS))
        .with_context(|| format!("opening the pinned {}", names::MAP_TAGS))?;
    let mut tags: SkStorage<MapData, SockTag> = SkStorage::try_from(Map::SkStorage(data))?;
    let bound: BTreeMap<&str, u32> = compiled
        .bindings
        .iter()
        .filter(|b| b.cgroup_id.is_some())
        .map(|b| (b.path.as_str(), b.domain))
        .collect();
    let mut seen = HashSet::new();
    let mut tagged = 0;
    for pid in pids()? {
        let Some(cgroup) = cgroup_of(pid) else {
            continue;
        };
        if !root.covers(&cgroup) {
            continue;
        }
        let domain = nearest_bound(&bound, cgroup.as_str());
        for (fd, inode) in socket_fds(pid) {
            if !seen.insert(inode) {
                continue;
            }
            let Some(socket) = borrow_fd(pid, fd) else {
                continue;
            };
            if !is_inet(&socket) {
                continue;
            }
            let tag = SockTag {
                domain,
                origin: ORIGIN_BACKFILL,
            };
            if tags
                .insert(&std::os::fd::AsRawFd::as_raw_fd(&socket), tag, BPF_NOEXIST)
                .is_ok()
            {
                tagged += 1;
            }
        }
    }
    Ok(tagged)
}

/// The domain of the deepest bound ancestor of `path` (itself included), as the kernel's
/// `current_domain` computes it from cgroup ids.
fn nearest_bound(bound: &BTreeMap<&str, u32>, path: &str) -> u32 {
    let mut candidate = path;
    loop {
        if let Some(&domain) = bound.get(candidate) {
            return domain;
        }
        match candidate.rfind('/') {
            Some(0) if candidate != "/" => candidate = "/",
            Some(i) if i > 0 => candidate = &candidate[..i],
            _ => return UNLABELED,
        }
    }
}

fn pids() -> Result<Vec<i32>> {
    Ok(fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// The process's cgroup v2 path (the `0::` line of /proc/PID/cgroup).
fn cgroup_of(pid: i32) -> Option<CgroupPath> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .and_then(|path| path.parse().ok())
}

/// (fd number, socket inode) for every socket the process holds.
fn socket_fds(pid: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let inode = socket_inode(&target)?;
            Some((fd, inode))
        })
        .collect()
}

fn socket_inode(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A duplicate of another process's file descriptor. Processes that exit meanwhile are
/// skipped: their sockets are gone or about to be.
fn borrow_fd(pid: i32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; each returned descriptor is owned exactly once below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let borrowed = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        (borrowed >= 0).then(|| OwnedFd::from_raw_fd(borrowed as i32))
    }
}

fn is_inet(socket: &OwnedFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers sized for an int.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            std::ptr::from_mut(&mut domain).cast(),
            &mut len,
        )
    };
    ret == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_bound_ancestor_wins() {
        let bound: BTreeMap<&str, u32> = [("/a", 1), ("/a/b/c", 2)].into_iter().collect();
        assert_eq!(nearest_bound(&bound, "/a"), 1);
        assert_eq!(nearest_bound(&bound, "/a/b"), 1);
        assert_eq!(nearest_bound(&bound, "/a/b/c/d"), 2);
        assert_eq!(nearest_bound(&bound, "/ab"), UNLABELED);
        assert_eq!(nearest_bound(&bound, "/"), UNLABELED);
        let root: BTreeMap<&str, u32> = [("/", 9)].into_iter().collect();
        assert_eq!(nearest_bound(&root, "/x/y"), 9);
    }

    #[test]
    fn socket_links_are_recognised() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[1]")), None);
    }
}
