//! What inotify says changed under the watched cgroup directories. The directories along the
//! bound paths are watched, the cgroup mount's root among them, so a host whose other cgroups
//! come and go (containers, transient units, other daemons' tests) reports a stream of
//! changes; at 10,000 bindings looking at every bound cgroup again costs 10,000 `stat`s and
//! as many watches re-added. Each change names the directory created, removed or moved, so
//! only a change at or above a bound path calls for that look.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, Inotify, WatchDescriptor},
};

/// The changes read since the last look.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    None,
    /// Directories created, removed or moved in or out (absolute paths).
    Dirs(HashSet<PathBuf>),
    /// Changes that cannot be placed (the kernel's queue overflowed, or an event came from a
    /// watch this side does not know): every bound cgroup must be looked at again.
    Unknown,
}

/// The watched directories by watch descriptor.
#[derive(Default)]
pub struct Watches {
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl Watches {
    /// Watches `dirs` for children created, removed or renamed. Adding an existing watch
    /// again is a no-op in the kernel that returns the same descriptor; watches on removed
    /// directories disappear by themselves (`IN_IGNORED`, see [`Self::read`]).
    pub fn watch<'a>(&mut self, inotify: &Inotify, dirs: impl IntoIterator<Item = &'a PathBuf>) {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR;
        for dir in dirs {
            if let Ok(wd) = inotify.add_watch(dir.as_path(), mask) {
                self.dirs.insert(wd, dir.clone());
            }
        }
    }

    /// Drains the events queued on `inotify` (non-blocking).
    pub fn read(&mut self, inotify: &Inotify) -> Changes {
        let mut dirs = HashSet::new();
        let mut unknown = false;
        loop {
            let events = match inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(_) => {
                    unknown = true;
                    break;
                }
            };
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    unknown = true;
                } else if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The watched directory is gone; its parent's watch reported the removal.
                    self.dirs.remove(&event.wd);
                } else {
                    match (self.dirs.get(&event.wd), event.name) {
                        (Some(dir), Some(name)) => {
                            dirs.insert(dir.join(name));
                        }
                        _ => unknown = true,
                    }
                }
            }
        }
        if unknown {
            Changes::Unknown
        } else if dirs.is_empty() {
            Changes::None
        } else {
            Changes::Dirs(dirs)
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::inotify::InitFlags;

    use super::*;

    #[test]
    fn names_each_directory_created_or_removed_under_a_watch() {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        let root = std::env::temp_dir().join(format!("enforcer-watch-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut watches = Watches::default();
        assert_eq!(watches.read(&inotify), Changes::None);
        watches.watch(&inotify, [&root]);
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        std::fs::remove_dir(root.join("a")).unwrap();
        assert_eq!(
            watches.read(&inotify),
            Changes::Dirs([root.join("a"), root.join("b")].into_iter().collect())
        );
        assert_eq!(watches.read(&inotify), Changes::None);
        std::fs::remove_dir(root.join("b")).unwrap();
        std::fs::remove_dir(&root).unwrap();
        // The root's own removal ends its watch (IN_IGNORED), which names nothing.
        let after = watches.read(&inotify);
        assert!(
            after == Changes::Dirs([root.join("b")].into_iter().collect()),
            "{after:?}"
        );
        assert!(watches.dirs.is_empty());
    }
}
