//! `--policy FILE` followed while the daemon runs: reloaded when its content changes on disk
//! (inotify on its directory, so that replacing the file by a rename or swapping the symlink
//! it resolves through, as Kubernetes ConfigMaps and config-management tools do, is seen like
//! an edit in place) and on SIGHUP. A reload is an apply (`Daemon::apply_parsed`): atomic, and
//! a file that is refused changes nothing. The reason goes to the log, to `status`
//! (`last_reload_error`) and to the metrics, and the running policy stays.
//!
//! A change on disk is an entry of the file's directory closed after writing, renamed into
//! place or created as a symlink, that changed the file's stat (after following symlinks); it
//! is then confirmed by the content's SHA-256: touching the file or replacing it with the same
//! content reloads nothing. A file still being written is never read. A change through a
//! symlink into another directory is not seen: SIGHUP reloads it. SIGHUP reloads the file even
//! when it has not changed (for example to take it back after `enforcer policy apply
//! other.yaml`).

use std::{
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        inotify::{AddWatchFlags, InitFlags, Inotify},
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};

use super::{
    machine::{ApplyError, Committed, Daemon, parse_with_bundles},
    restart::{self, FileRead},
};

/// Blocks SIGHUP in this thread and every thread it starts from now on, so that it is read
/// from [`spawn`]'s signalfd instead of ending the process. Call before starting any thread.
pub fn block_sighup() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.thread_block().context("blocking SIGHUP")?;
    Ok(set)
}

/// Follows `path` on a thread of its own for the life of the daemon.
pub fn spawn(daemon: std::sync::Arc<Mutex<Daemon>>, path: PathBuf, signals: &SigSet) -> Result<()> {
    let signalfd = SignalFd::with_flags(signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("reading SIGHUP through a signalfd")?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .context("creating an inotify instance to watch the policy file")?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
        )
        .with_context(|| format!("watching {} for changes of the policy file", dir.display()))?;
    log::info!(
        "following --policy {} (changes in {} and SIGHUP reload it)",
        path.display(),
        dir.display()
    );
    std::thread::Builder::new()
        .name("policy-reload".into())
        .spawn(move || run(&daemon, &path, &inotify, &signalfd))
        .context("starting the policy reload thread")?;
    Ok(())
}

/// What identifies the file's content on disk without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

fn run(daemon: &Mutex<Daemon>, path: &Path, inotify: &Inotify, signalfd: &SignalFd) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // `None` at first: the file is read once at once, in case it changed after the start read
    // it and before the watch was in place.
    let mut seen: Option<Option<Stamp>> = None;
    loop {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(signalfd.as_fd(), PollFlags::POLLIN),
        ];
        if seen.is_some()
            && let Err(err) = poll(&mut fds, PollTimeout::NONE)
            && err != Errno::EINTR
        {
            log::error!("policy reload poll failed: {err}");
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut signalled = false;
        while let Ok(Some(_)) = signalfd.read_signal() {
            signalled = true;
        }
        let mut written = seen.is_none();
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            written |= events.iter().any(|e| finished(e, dir));
        }
        if !signalled && !written {
            continue;
        }
        // Something in the directory was written or replaced; the stamp says whether it was
        // the file (or what it resolves to).
        let now = stamp(path);
        if !signalled && seen.as_ref() == Some(&now) {
            continue;
        }
        seen = Some(now);
        reload(daemon, path, signalled);
    }
}

/// Whether `event` finished a change of an entry of `dir`: a file closed after writing, an
/// entry renamed into place (a file replaced atomically, or a symlink swapped in as
/// Kubernetes does with `..data`), or a symlink created. A file still being written (created,
/// truncated or modified, not yet closed) is not read: part of a file may be a valid policy
/// that is not the one being written.
fn finished(event: &nix::sys::inotify::InotifyEvent, dir: &Path) -> bool {
    if event
        .mask
        .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)
    {
        return true;
    }
    event.mask.contains(AddWatchFlags::IN_CREATE)
        && event.name.as_ref().is_some_and(|name| {
            std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_symlink())
        })
}

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    daemon.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `path` and, when it changed since last read or `signalled`, applies it. The service
/// manager hears `RELOADING=1` before and `READY=1` with the outcome after.
fn reload(daemon: &Mutex<Daemon>, path: &Path, signalled: bool) {
    let file = path.display().to_string();
    let trigger = if signalled {
        "SIGHUP"
    } else {
        "changed on disk"
    };
    let text = crate::pipeline::policy_file::read(path).map(|text| {
        let read = FileRead::new(
            &std::path::absolute(path).unwrap_or_else(|_| path.into()),
            &text,
        );
        (text, read)
    });
    if !signalled {
        match &text {
            // A file being replaced by a writer that does not rename may be missing for a
            // moment; only a reload asked for is refused for it.
            Err(why) => {
                log::warn!("--policy {file} cannot be read now ({why}); the running policy stays");
                return;
            }
            Ok((_, read)) if lock(daemon).source.read == *read => return,
            Ok(_) => {}
        }
    }
    let manager = lock(daemon).manager.clone();
    if let Some(manager) = &manager {
        manager.reloading();
    }
    let d = match text {
        Ok((text, read)) => apply(daemon, &file, trigger, text, read),
        Err(why) => {
            let mut d = lock(daemon);
            refused(&mut d, &file, trigger, why);
            d
        }
    };
    if let Some(manager) = &manager {
        let status = match &d.source.last_reload_error {
            Some(_) => format!("reload of --policy refused (see the log); {}", d.summary()),
            None => d.summary(),
        };
        manager.ready(&status);
    }
    drop(d);
    crate::daemon::heap::release_freed_memory();
}

/// Applies `text`, read from `file` as `read`; returns the daemon, still locked.
fn apply<'a>(
    daemon: &'a Mutex<Daemon>,
    file: &str,
    trigger: &str,
    text: String,
    read: FileRead,
) -> std::sync::MutexGuard<'a, Daemon> {
    // Parsed before the daemon is locked, as a `policy apply` is.
    let parsed = parse_with_bundles(file, &text);
    let mut d = lock(daemon);
    let result =
        parsed.and_then(|(policy, trust)| d.apply_parsed(policy, trust, file, &text, None));
    drop(text);
    match result {
        Ok(Committed {
            generation, ended, ..
        }) => {
            log::info!(
                "reloaded --policy {file} ({trigger}; sha256 {}): policy generation {generation} \
                 active; ended {ended} connection(s)",
                &read.sha256[..12]
            );
            for (level, line) in d.binding_warnings() {
                log::log!(level, "{line}");
            }
            d.source.last_reload_error = None;
            d.source.last_sync = Some(jiff::Timestamp::now());
            d.source.reloads.record(true);
        }
        Err(ApplyError::Failed(err)) => {
            // Not the file's fault: it is not recorded as read, so the next change, SIGHUP
            // or start tries it again.
            refused(&mut d, file, trigger, format!("{err:#}"));
            return d;
        }
        Err(err @ ApplyError::Rejected(_)) => {
            refused(&mut d, file, trigger, err.to_string());
        }
    }
    let refused = d.source.last_reload_error.clone();
    if let Err(err) = restart::save_file_read(&d.host.state_dir, &read, refused.as_deref()) {
        log::warn!("could not record the read of --policy {file}: {err:#}");
    }
    d.source.read = read;
    d
}

fn refused(d: &mut Daemon, file: &str, trigger: &str, why: String) {
    log::error!(
        "reload of --policy {file} ({trigger}) refused; the running policy stays (generation \
         {}): {why}",
        d.generation()
    );
    d.source.last_reload_error = Some(why);
    d.source.reloads.record(false);
}
