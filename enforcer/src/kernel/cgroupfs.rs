//! The cgroup v2 hierarchy: finding its mount (it is not always `/sys/fs/cgroup`; hybrid hosts
//! mount it at `/sys/fs/cgroup/unified`) and turning cgroup paths into ids.

use std::{
    ffi::CString,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use enforcer_policy::CgroupPath;

#[derive(Debug, Clone)]
pub struct CgroupFs {
    mount: PathBuf,
}

impl CgroupFs {
    /// Finds the cgroup2 mount in `/proc/mounts`.
    pub fn discover() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        Self::from_mounts(&mounts).context(
            "no cgroup v2 hierarchy is mounted (no `cgroup2` entry in /proc/mounts); enforcer \
             needs cgroup v2",
        )
    }

    fn from_mounts(mounts: &str) -> Option<Self> {
        mounts.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| Self {
                mount: PathBuf::from(unescape_mount_path(target)),
            })
        })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The directory of a cgroup path (`/a/b` as in `/proc/PID/cgroup`).
    pub fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }

    /// The cgroup id of a bound path, or `None` if the cgroup does not exist. A cgroup v2 id
    /// is its kernfs node id, which is also the inode number of its directory on 64-bit
    /// kernels; `bpf_get_current_ancestor_cgroup_id` returns the same number.
    ///
    /// Every directory of the cgroup2 mount is a cgroup, so one `stat` answers; this runs
    /// for every binding whenever cgroups may have changed (10,000 of them at scale), so a
    /// missing cgroup is a plain `None`, not an error with a captured backtrace.
    pub fn id(&self, path: &CgroupPath) -> Option<u64> {
        fs::metadata(self.dir(path.as_str()))
            .ok()
            .filter(fs::Metadata::is_dir)
            .map(|meta| meta.ino())
    }

    /// Resolves `--cgroup-root`: a directory inside the cgroup2 mount, or a cgroup path
    /// relative to it (`/enforced`). `..` and symlinks are resolved first: `MOUNT/X/a/..`
    /// must be X itself, or the bindings under X would look outside the root and go
    /// unenforced, and `../memory` must be seen to leave the mount before anything is pinned.
    pub fn root(&self, flag: Option<&Path>) -> Result<CgroupRoot> {
        let given = match flag {
            None => self.mount.clone(),
            Some(path) if path.starts_with(&self.mount) => path.to_path_buf(),
            Some(path) => self.dir(&path.to_string_lossy()),
        };
        let refuse = |why: String| {
            anyhow!(
                "--cgroup-root {}: {why}; it must be a cgroup directory under {}",
                given.display(),
                self.mount.display()
            )
        };
        let mount = fs::canonicalize(&self.mount)
            .with_context(|| format!("resolving the cgroup2 mount {}", self.mount.display()))?;
        let dir = fs::canonicalize(&given).map_err(|err| refuse(err.to_string()))?;
        let Ok(inside) = dir.strip_prefix(&mount) else {
            return Err(refuse(format!(
                "it is {}, outside the mount",
                dir.display()
            )));
        };
        if !is_cgroup2(&dir).map_err(|err| refuse(format!("{err:#}")))? {
            return Err(refuse(format!(
                "{} is not on a cgroup v2 file system",
                dir.display()
            )));
        }
        let id = id_of_dir(&dir).map_err(|err| refuse(format!("{err:#}")))?;
        let relative = format!("/{}", inside.display());
        Ok(CgroupRoot { dir, id, relative })
    }
}

/// Whether `dir` is on a cgroup v2 file system (a cgroup v1 hierarchy has `cgroup.procs`
/// too, so the file alone does not tell).
fn is_cgroup2(dir: &Path) -> Result<bool> {
    let c_path = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain old data; an all-zero value is valid and is overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and an out-pointer to a live statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", dir.display()));
    }
    Ok(stat.f_type == libc::CGROUP2_SUPER_MAGIC)
}

/// Where the programs attach.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    pub dir: PathBuf,
    pub id: u64,
    /// As a cgroup path (`/` for the whole host).
    pub relative: String,
}

impl CgroupRoot {
    /// Whether sockets created in `path` run the programs attached at this root.
    pub fn covers(&self, path: &CgroupPath) -> bool {
        contains(&self.relative, path.as_str())
    }
}

/// Whether cgroup path `path` is `ancestor` or below it.
pub fn contains(ancestor: &str, path: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    ancestor.is_empty()
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn id_of_dir(dir: &Path) -> Result<u64> {
    let meta = fs::metadata(dir).with_context(|| format!("{} does not exist", dir.display()))?;
    if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup v2 directory", dir.display());
    }
    Ok(meta.ino())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let fs = CgroupFs::from_mounts(mounts).expect("found");
        assert_eq!(fs.mount(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(fs.dir("/a/b"), Path::new("/sys/fs/cgroup/unified/a/b"));
        assert!(CgroupFs::from_mounts("proc /proc proc rw 0 0\n").is_none());
        assert_eq!(
            unescape_mount_path("/mnt/with\\040space"),
            "/mnt/with space"
        );
    }

    #[test]
    fn only_the_cgroup2_file_system_counts() {
        assert!(!is_cgroup2(Path::new("/")).expect("statfs /"));
        if let Ok(fs) = CgroupFs::discover() {
            assert!(is_cgroup2(fs.mount()).expect("statfs of the mount"));
        }
    }

    #[test]
    fn root_coverage_is_by_path_component() {
        let root = |relative: &str| CgroupRoot {
            dir: PathBuf::new(),
            id: 1,
            relative: relative.into(),
        };
        let path = |p: &str| p.parse::<CgroupPath>().expect("valid");
        assert!(root("/").covers(&path("/anything")));
        assert!(root("/t").covers(&path("/t")));
        assert!(root("/t").covers(&path("/t/a")));
        assert!(!root("/t").covers(&path("/tt/a")));
        assert!(!root("/t").covers(&path("/")));
    }
}
