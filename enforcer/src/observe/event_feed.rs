//! The daemon's reader of the kernel's decision events: it drains the ring buffer as records
//! arrive, names them, counts them, appends them to the event log and passes them to every
//! `enforcer events --follow` client. It runs on its own thread so that a burst of events
//! never delays cgroup following or expiries, and it holds the daemon lock only to name a
//! batch. It hands lines to the followers without waiting on them (`event_followers`).

use std::{
    collections::HashMap,
    os::fd::AsFd as _,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use enforcer_common::{
    event::{Event, HOOK_ESTABLISHED},
    names,
};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

use crate::{
    kernel::cgroup_paths::CgroupPaths,
    observe::{
        event_followers::Followers,
        event_log::EventLog,
        event_record::{self, EventRecord, Names},
        tally::Tally,
    },
    pipeline::clock::Clocks,
};

/// Where the daemon posts the names of the policy in force, for the feed to name events with.
pub type NamesBoard = Arc<std::sync::RwLock<Arc<dyn Names + Send + Sync>>>;

/// Held by the feed from taking records out of the ring buffer until they are logged.
pub type Draining = Arc<Mutex<()>>;

/// How often the ring buffer is read without being woken: the programs wake the feed only
/// for refusals, so this is how late an allowed crossing can be reported.
const IDLE: Duration = Duration::from_millis(200);
/// Records named per daemon lock, so that a flood never holds the lock for long.
const BATCH: usize = 4096;
/// Both ends of a local connection report its end when a policy change refuses it, and the
/// daemon reports the connections it ends; a second report of one connection within this
/// long is the same end.
const SAME_END: Duration = Duration::from_secs(5);
pub struct Feed {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    log: EventLog,
    cgroups: CgroupPaths,
    followers: Followers,
    /// Connections the daemon ended.
    ended_by_daemon: mpsc::Receiver<EventRecord>,
    /// Connections whose end was reported, with when.
    ended: HashMap<(String, std::net::SocketAddr, std::net::SocketAddr), Instant>,
    lost_reported: u64,
    /// The lines of a batch, kept between batches so that a steady stream of events reuses
    /// one buffer instead of allocating a string per event.
    lines: Vec<u8>,
    /// The kernel's records of a batch and their named forms, kept between batches for the
    /// same reason: grown once to a busy batch's size, not again at every batch.
    batch: Vec<Event>,
    records: Vec<EventRecord>,
}

impl Feed {
    pub fn new(
        ebpf: &mut aya::Ebpf,
        log: EventLog,
        cgroups: CgroupPaths,
        followers: Followers,
        ended_by_daemon: mpsc::Receiver<EventRecord>,
    ) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            ring: RingBuf::try_from(take(names::MAP_EVENTS)?)?,
            lost: PerCpuArray::try_from(take(names::MAP_EVENTS_LOST)?)?,
            log,
            cgroups,
            followers,
            ended_by_daemon,
            ended: HashMap::new(),
            lost_reported: 0,
            lines: Vec::new(),
            batch: Vec::new(),
            records: Vec::new(),
        })
    }

    /// Reads events on a thread of its own for the life of the daemon. Each is named from
    /// `names`, which the daemon replaces at each new policy, and counted into `tally`;
    /// neither needs the daemon's lock. Returns the lock the feed holds from taking records
    /// out of the ring buffer until they are logged: holding it, a daemon that stops knows
    /// that every event taken is in the log and the rest wait in the pinned ring buffer.
    pub fn spawn(mut self, names: NamesBoard, tally: Arc<Mutex<Tally>>) -> Result<Draining> {
        let draining = Arc::new(Mutex::new(()));
        let held = Arc::clone(&draining);
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                loop {
                    self.wait();
                    let _draining = held.lock().unwrap_or_else(PoisonError::into_inner);
                    self.drain(&names, &tally);
                }
            })
            .context("starting the event thread")?;
        Ok(draining)
    }

    fn wait(&self) {
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(IDLE).unwrap_or(PollTimeout::NONE);
        if let Err(err) = poll(&mut fds, timeout)
            && err != Errno::EINTR
        {
            log::error!("event poll failed: {err}");
            std::thread::sleep(IDLE);
        }
    }

    fn drain(&mut self, names: &NamesBoard, tally: &Mutex<Tally>) {
        loop {
            let mut batch = std::mem::take(&mut self.batch);
            batch.clear();
            while batch.len() < BATCH {
                let Some(item) = self.ring.next() else { break };
                match event_record::decode(&item) {
                    Some(event) => batch.push(event),
                    None => log::warn!(
                        "skipped a decision event of {} bytes (not this build's layout)",
                        item.len()
                    ),
                }
            }
            let lost = self.lost_total();
            let full = batch.len() == BATCH;
            let mut records = std::mem::take(&mut self.records);
            records.clear();
            {
                let names = Arc::clone(&names.read().unwrap_or_else(PoisonError::into_inner));
                let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                let clocks = Clocks::now();
                tally.set_lost(lost);
                // Reported before the kernel's batch: the daemon ended these connections
                // before the feed woke, usually before the kernel's events in the batch.
                while let Ok(record) = self.ended_by_daemon.try_recv() {
                    if self.first_end(&record) {
                        tally.record(record.decision());
                        records.push(record);
                    }
                }
                for event in &batch {
                    let Some(record) = EventRecord::describe(event, &*names, &clocks) else {
                        log::warn!("skipped a decision event with codes this build does not know");
                        continue;
                    };
                    if event.hook == HOOK_ESTABLISHED && !self.first_end(&record) {
                        continue;
                    }
                    tally.record(record.decision());
                    records.push(record);
                }
            }
            self.publish(&mut records);
            records.clear();
            self.records = records;
            self.batch = batch;
            if !full {
                // Reported once the buffer is drained, so everything that did arrive is
                // already logged when the loss is.
                if lost > self.lost_reported {
                    log::warn!(
                        "{} decision event(s) lost: the ring buffer was full ({lost} in all)",
                        lost - self.lost_reported
                    );
                    self.lost_reported = lost;
                }
                return;
            }
        }
    }

    /// Whether `record` is the first report of its connection's end.
    fn first_end(&mut self, record: &EventRecord) -> bool {
        let now = Instant::now();
        self.ended
            .retain(|_, at| now.duration_since(*at) < SAME_END);
        let (protocol, a, b) = record.connection();
        self.ended
            .insert((protocol.to_owned(), a, b), now)
            .is_none()
    }

    fn publish(&mut self, records: &mut [EventRecord]) {
        if records.is_empty() {
            return;
        }
        self.lines.clear();
        for record in records {
            record.cgroup = self.cgroups.path(record.cgroup_id);
            let line_start = self.lines.len();
            match serde_json::to_writer(&mut self.lines, record) {
                Ok(()) => self.lines.push(b'\n'),
                Err(err) => {
                    self.lines.truncate(line_start);
                    log::error!("could not write a decision event: {err}");
                }
            }
        }
        if let Err(err) = self.log.append(&self.lines) {
            log::error!("could not append to the event log: {err}");
        }
        self.followers.send(&self.lines);
    }

    fn lost_total(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
