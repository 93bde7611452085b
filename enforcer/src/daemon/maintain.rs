//! The daemon's background duties, on one thread beside the control socket: bindings follow
//! cgroups as they appear and vanish (inotify on every existing directory along each bound
//! path), workload namespaces are entered as the programs report them and forgotten when
//! empty, the host's addresses are kept current, and the daemon exits once `enforcer teardown`
//! has removed its links. Each round that gets through its duties pings the service manager's
//! watchdog when one is due: a daemon whose lock is stuck, or whose loop stopped, misses
//! pings, and systemd restarts it.

use std::{
    os::fd::AsFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{InitFlags, Inotify},
};

use crate::daemon::{
    cgroup_watch::{Changes, Watches},
    machine::Daemon,
};

/// How often everything is checked even without an event: a safety net for a lost inotify
/// or ring buffer event, and the period of the host address and teardown checks.
const TICK: Duration = Duration::from_secs(1);
/// How often every known workload namespace is re-listed without a new one being reported.
const POD_RESCAN: Duration = Duration::from_secs(5);
/// How often every bound cgroup is looked at again without inotify reporting a change (a
/// safety net for an overflowed inotify queue): at 10,000 bindings a look is 10,000 `stat`s
/// under the daemon lock, too many to repeat every tick for nothing.
const CGROUP_RESCAN: Duration = Duration::from_secs(30);

pub fn spawn(daemon: Arc<Mutex<Daemon>>, notify: RingBuf<MapData>) -> Result<()> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .context("creating an inotify instance to watch cgroups")?;
    std::thread::Builder::new()
        .name("maintain".into())
        .spawn(move || run(&daemon, &inotify, notify))
        .context("starting the maintenance thread")?;
    Ok(())
}

fn run(daemon: &Mutex<Daemon>, inotify: &Inotify, mut notify: RingBuf<MapData>) {
    let mut last_pod_scan = Instant::now();
    // The once-a-tick duties (bundles, expiries, the host's addresses) look at every edge and
    // address: they run once per TICK, not at every wake-up, since a host whose other cgroups
    // churn wakes this loop many times a second.
    let mut last_tick: Option<Instant> = None;
    let mut last_cgroup_scan = Instant::now();
    // Cgroups are looked at when inotify reports a change, when the bindings changed (a new
    // generation), and every CGROUP_RESCAN.
    let mut cgroups_changed = true;
    let mut watched_generation = None;
    let mut watches = Watches::default();
    let manager = lock(daemon).manager.clone();
    let watchdog = manager.as_ref().and_then(|m| m.watchdog());
    let mut ping_due = Instant::now();
    loop {
        let generation = lock(daemon).generation();
        // New bindings may name cgroups created before their parents were watched.
        let rewatched = cgroups_changed || watched_generation != Some(generation);
        if rewatched {
            let dirs = lock(daemon).watched_dirs();
            watches.watch(inotify, &dirs);
            watched_generation = Some(generation);
        }
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(notify.as_fd(), PollFlags::POLLIN),
        ];
        let wait = match watchdog {
            Some(_) => TICK.min(ping_due.saturating_duration_since(Instant::now())),
            None => TICK,
        };
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::NONE);
        if let Err(err) = poll(&mut fds, timeout)
            && err != Errno::EINTR
        {
            log::error!("maintenance poll failed: {err}");
        }
        // The events only say where something changed; each duty re-reads the current state.
        let bound_changed = match watches.read(inotify) {
            Changes::None => false,
            Changes::Unknown => true,
            Changes::Dirs(dirs) => lock(daemon).bindings_affected_by(&dirs),
        };
        cgroups_changed = bound_changed || last_cgroup_scan.elapsed() >= CGROUP_RESCAN;
        if cgroups_changed {
            last_cgroup_scan = Instant::now();
        }
        let mut new_namespace = false;
        while notify.next().is_some() {
            new_namespace = true;
        }
        let tick_due = last_tick.is_none_or(|at| at.elapsed() >= TICK);
        // Bundle files are read before the daemon is locked: they are at paths others may be
        // able to replace, and whatever is there, reading it must not hold up the daemon.
        let bundles = tick_due.then(|| {
            let files = lock(daemon).bundle_files();
            files.reread()
        });
        let mut guard = lock(daemon);
        let d = &mut *guard;
        if d.torn_down() {
            log::info!("enforcement was torn down (the pinned links are gone); exiting");
            if let Some(manager) = &manager {
                manager.stopping("enforcement was torn down");
            }
            std::process::exit(0);
        }
        if let Some(bundles) = bundles {
            last_tick = Some(Instant::now());
            d.refresh_bundles(bundles);
            d.expire_edges();
            d.expire_attested();
        }
        if (cgroups_changed || rewatched)
            && let Err(err) = d.follow_cgroups()
        {
            log::error!("updating bindings after a cgroup change failed: {err:#}");
        }
        let scan_pods = new_namespace || last_pod_scan.elapsed() >= POD_RESCAN;
        if scan_pods {
            last_pod_scan = Instant::now();
        }
        if (tick_due || scan_pods)
            && let Err(err) = d.refresh_addresses(scan_pods)
        {
            log::error!("refreshing local addresses failed: {err:#}");
        }
        if let (Some(manager), Some(every)) = (&manager, watchdog)
            && Instant::now() >= ping_due
        {
            manager.ping_watchdog();
            ping_due = Instant::now() + every;
        }
    }
}

fn lock(daemon: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    // A panic while holding the lock leaves the daemon's state as consistent as the kernel's
    // (every update is a complete map write), so carrying on is safe.
    daemon
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
