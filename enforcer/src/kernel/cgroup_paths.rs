//! Cgroup ids (as the programs report them) back to paths, for events. A cgroup id is the
//! kernfs node id of the cgroup's directory, and cgroup2 exports kernfs file handles: a handle
//! of type `FILEID_KERNFS` whose 8 bytes are that id opens the directory directly
//! (`kernfs_fh_to_dentry`), so no walk of the hierarchy is needed. Needs CAP_DAC_READ_SEARCH.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    sync::Arc,
};

/// `FILEID_KERNFS` from include/linux/exportfs.h.
const FILEID_KERNFS: i32 = 0xfe;
/// Past this many remembered ids the cache starts over rather than grow without bound.
const CACHE_LIMIT: usize = 16_384;

pub struct CgroupPaths {
    mount: PathBuf,
    mount_dir: Option<File>,
    cache: HashMap<u64, Option<Arc<str>>>,
}

/// `struct file_handle` with room for the 8-byte kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupPaths {
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_owned(),
            mount_dir: File::open(mount).ok(),
            cache: HashMap::new(),
        }
    }

    /// The path of cgroup `id` relative to the cgroup2 mount (`/a/b`), or `None` when it no
    /// longer exists. A removed cgroup is remembered as gone: ids are never reused.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(known) = self.cache.get(&id) {
            return known.clone();
        }
        let found = self.lookup(id);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(id, found.clone());
        found
    }

    fn lookup(&self, id: u64) -> Option<Arc<str>> {
        let mount_dir = self.mount_dir.as_ref()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: `handle` is a valid `struct file_handle` with `handle_bytes` bytes after
        // the header; the returned descriptor is owned by the File below.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_dir.as_raw_fd(),
                std::ptr::from_mut(&mut handle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let dir = unsafe { File::from_raw_fd(fd) };
        let full = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let relative = full.strip_prefix(&self.mount).ok()?;
        Some(format!("/{}", relative.display()).into())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::kernel::cgroupfs::CgroupFs;

    #[test]
    fn resolves_a_real_cgroup_and_forgets_nothing_that_exists() {
        if !crate::privileged_tests::privileged(
            "resolves_a_real_cgroup_and_forgets_nothing_that_exists",
            "cgroup id resolution",
        ) {
            return;
        }
        let fs = CgroupFs::discover().expect("cgroup2 mount");
        let name = format!("enforcer-cgroup-paths-{}", std::process::id());
        let dir = fs.mount().join(&name).join("child");
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let mut paths = CgroupPaths::new(fs.mount());
        let found = paths.path(id);
        std::fs::remove_dir(&dir).unwrap();
        std::fs::remove_dir(fs.mount().join(&name)).unwrap();
        assert_eq!(found.as_deref(), Some(format!("/{name}/child").as_str()));
        let root = std::fs::metadata(fs.mount()).unwrap().ino();
        assert_eq!(paths.path(root).as_deref(), Some("/"));
        assert_eq!(paths.path(u64::MAX - 7), None);
    }
}
