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
    os::fd::{AsFd, AsRawFd as _, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, SkStorage};
use enforcer_common::{
    maps::{FLOW_UNKNOWN, ORIGIN_BACKFILL, SockTag, UNLABELED},
    names,
};
use enforcer_policy::CgroupPath;

use crate::{
    kernel::cgroupfs::{self, CgroupFs, CgroupRoot},
    paths::PinDir,
    pipeline::compile::Compiled,
};

/// `bpf_map_update_elem` flag (uapi/linux/bpf.h): create only, never replace.
pub const BPF_NOEXIST: u64 = 1;
const BPF_ANY: u64 = 0;
/// `SO_NETNS_COOKIE` (asm-generic/socket.h, Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Tags every inet socket held by a process under `root` that has no tag yet; returns how
/// many were tagged now.
pub fn tag_existing(
    cgroups: &CgroupFs,
    root: &CgroupRoot,
    compiled: &Compiled,
    pins: &PinDir,
) -> Result<usize> {
    let mut tags = open_tags(pins)?;
    let bound = bound_paths(compiled);
    let mut tagged = 0;
    for_each_socket(root, |cgroup, socket| {
        let tag = SockTag {
            domain: nearest_bound(&bound, cgroup.as_str()),
            origin: ORIGIN_BACKFILL,
            flow: FLOW_UNKNOWN,
            _pad: [0; 2],
            cgroup_id: cgroups.id(cgroup).unwrap_or_default(),
            netns: netns_cookie(socket).unwrap_or_default(),
        };
        if tags.insert(&socket.as_raw_fd(), tag, BPF_NOEXIST).is_ok() {
            tagged += 1;
        }
    })?;
    Ok(tagged)
}

/// Gives the sockets created in a cgroup the domain its binding says now. Used when a binding
/// lands after its cgroup appeared: anything created in the moment between was tagged with the
/// ancestors' domain. Only sockets created in the cgroup their holder is still in are touched
/// (`SockTag::cgroup_id`), so a socket made elsewhere keeps the domain it was created with.
/// Returns how many tags changed.
pub fn retag_under(
    cgroups: &CgroupFs,
    root: &CgroupRoot,
    compiled: &Compiled,
    pins: &PinDir,
    changed: &[CgroupPath],
) -> Result<usize> {
    let mut tags = open_tags(pins)?;
    let bound = bound_paths(compiled);
    let mut retagged = 0;
    for_each_socket(root, |cgroup, socket| {
        if !changed
            .iter()
            .any(|c| cgroupfs::contains(c.as_str(), cgroup.as_str()))
        {
            return;
        }
        let fd = socket.as_raw_fd();
        let Ok(tag) = tags.get(&fd, 0) else {
            return;
        };
        let domain = nearest_bound(&bound, cgroup.as_str());
        if tag.domain == domain || Some(tag.cgroup_id) != cgroups.id(cgroup) {
            return;
        }
        // The whole value is written back, so a flow byte a program set since the read would
        // be overwritten: FLOW_UNKNOWN makes the programs look the flow up again instead of
        // trusting a stale FLOW_FREE.
        let retagged_tag = SockTag {
            domain,
            flow: FLOW_UNKNOWN,
            ..tag
        };
        if tags.insert(&fd, retagged_tag, BPF_ANY).is_ok() {
            retagged += 1;
        }
    })?;
    Ok(retagged)
}

/// The domain a process's new sockets get: its cgroup's nearest bound ancestor.
pub fn domain_of_pid(compiled: &Compiled, pid: i32) -> u32 {
    cgroup_of(pid).map_or(UNLABELED, |cgroup| {
        nearest_bound(&bound_paths(compiled), cgroup.as_str())
    })
}

fn open_tags(pins: &PinDir) -> Result<SkStorage<MapData, SockTag>> {
    let data = MapData::from_pin(pins.map(names::MAP_TAGS))
        .with_context(|| format!("opening the pinned {}", names::MAP_TAGS))?;
    Ok(SkStorage::try_from(Map::SkStorage(data))?)
}

fn bound_paths(compiled: &Compiled) -> BTreeMap<&str, u32> {
    compiled
        .bindings
        .iter()
        .filter(|b| b.cgroup_id.is_some())
        .map(|b| (b.path.as_str(), b.domain))
        .collect()
}

/// Calls `visit(holder's cgroup, socket)` once for every inet socket held by a process whose
/// cgroup is under `root`, with the socket borrowed into this process.
fn for_each_socket(root: &CgroupRoot, mut visit: impl FnMut(&CgroupPath, &OwnedFd)) -> Result<()> {
    let mut seen = HashSet::new();
    for pid in pids()? {
        let Some(cgroup) = cgroup_of(pid) else {
            continue;
        };
        if !root.covers(&cgroup) {
            continue;
        }
        for (fd, inode) in socket_fds(pid) {
            if !seen.insert(inode) {
                continue;
            }
            let Some(socket) = borrow_fd(pid, fd) else {
                continue;
            };
            if is_inet(&socket) {
                visit(&cgroup, &socket);
            }
        }
    }
    Ok(())
}

/// A process holding the socket with inode `inode`, and the socket borrowed from it.
pub fn holder_of(inode: u64) -> Result<Option<(i32, OwnedFd)>> {
    for pid in pids()? {
        for (fd, held) in socket_fds(pid) {
            if held == inode
                && let Some(socket) = borrow_fd(pid, fd)
            {
                return Ok(Some((pid, socket)));
            }
        }
    }
    Ok(None)
}

pub fn netns_cookie(socket: &impl AsFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid out-pointers sized for a u64.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(cookie)
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

pub fn pids() -> Result<Vec<i32>> {
    Ok(fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// The process's cgroup v2 path (the `0::` line of /proc/PID/cgroup).
pub fn cgroup_of(pid: i32) -> Option<CgroupPath> {
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
        let borrowed = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        (borrowed >= 0).then(|| OwnedFd::from_raw_fd(borrowed as i32))
    }
}

fn is_inet(socket: &OwnedFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers sized for an int.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
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
