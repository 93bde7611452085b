//! Stopping on SIGTERM (`systemctl stop`, `kill`) or SIGINT (Ctrl-C): the daemon finishes the
//! change in progress, tells the service manager, removes its sockets and exits 0. Enforcement
//! stays: the programs, links and maps are pinned and outlive the process, as after a crash;
//! only `enforcer teardown` removes them. Nothing else needs saving on the way out: every
//! change saved its state (`active-policy.json`, `edges.json`, `attested.json`) before it was
//! put in force, and events not yet read wait in the pinned ring buffer for the next daemon.
//!
//! Both signals are blocked in every thread and read from a signalfd on a thread of their
//! own, so a stop never interrupts a thread halfway through a change. One that arrives while
//! the daemon starts is acted on once the start is done (a few seconds at most): the start
//! pins, applies and attaches in steps that belong together.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Context as _, Result};
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};

use super::machine::Daemon;
use crate::observe::event_feed::Draining;

/// Blocks SIGTERM and SIGINT in this thread and every thread it starts from now on, so that
/// they are read from [`spawn`]'s signalfd instead of ending the process. Call before starting
/// any thread.
pub fn block_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    Ok(set)
}

/// What a stop waits for and removes.
pub struct Stop {
    pub daemon: Arc<Mutex<Daemon>>,
    /// Held by the event feed while events it took from the kernel are not yet logged.
    pub events: Draining,
    /// The control socket, and the attestation socket if there is one.
    pub sockets: Vec<PathBuf>,
}

/// Waits for SIGTERM or SIGINT on a thread of its own, then stops the daemon.
pub fn spawn(stop: Stop, signals: &SigSet) -> Result<()> {
    let signalfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC)
        .context("reading SIGTERM and SIGINT through a signalfd")?;
    std::thread::Builder::new()
        .name("stop".into())
        .spawn(move || {
            let signal = loop {
                match signalfd.read_signal() {
                    Ok(Some(info)) => break info.ssi_signo,
                    Ok(None) => {}
                    Err(err) => {
                        log::error!("reading SIGTERM and SIGINT failed: {err}");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            };
            let name = Signal::try_from(i32::try_from(signal).unwrap_or_default())
                .map_or("a stop signal", Signal::as_str);
            stop.run(name);
        })
        .context("starting the thread that waits for SIGTERM and SIGINT")?;
    Ok(())
}

impl Stop {
    fn run(self, signal: &str) -> ! {
        log::info!("{signal}: stopping; enforcement stays in place");
        // Held until the process exits: no change starts after this one, and none is cut off.
        let daemon = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
        let summary = daemon.summary();
        if let Some(manager) = &daemon.manager {
            manager.stopping(&format!("stopping; {summary}"));
        }
        let _events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        for socket in &self.sockets {
            if let Err(err) = std::fs::remove_file(socket) {
                log::warn!("could not remove {}: {err}", socket.display());
            }
        }
        log::info!("stopped on {signal}; the kernel goes on {summary}");
        std::process::exit(0)
    }
}
