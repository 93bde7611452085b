//! How much of the daemon control socket clients may hold at once, and how often their
//! refusals are logged. Each connection is served on a thread of its own while its request
//! arrives, waits for the daemon and is answered, so without a bound one local user could open
//! connections until the daemon ran out of threads, descriptors or memory.
//!
//! A reader (`--read-group`) may have [`PER_READER`] connections in progress and all readers
//! together [`READERS`]; root and each admin [`PER_ADMIN`], and everyone together [`ALL`].
//! Readers can thus never take the connections root needs. A connection holds its place until
//! it is closed, an `events --follow` stream included.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{api::control::Channel, daemon::access::Rights};

/// Enough for a person or a script running a few commands side by side, and for a handful of
/// `events --follow` streams.
const PER_READER: usize = 8;
/// Every reader's request may be buffered at once: this times `Rights::Read.max_request()`.
const READERS: usize = 32;
/// Admins are trusted with the daemon, so theirs is a bound against runaway scripts only.
const PER_ADMIN: usize = 32;
const ALL: usize = 128;
/// A uid refused again within this long is counted, not logged, until the next line.
const QUIET: Duration = Duration::from_secs(10);
/// Uids whose refusals are being counted; more distinct refused uids than this in [`QUIET`]
/// get a line each, so that the count itself cannot grow without bound.
const MAX_QUIET_UIDS: usize = 1024;

/// The connections in progress on the control socket.
#[derive(Clone, Default)]
pub struct Clients(Arc<Mutex<Held>>);

#[derive(Debug, Default)]
struct Held {
    by_uid: HashMap<u32, usize>,
    readers: usize,
    all: usize,
}

impl Clients {
    /// A place for one more connection of `uid`, or the message to refuse it with.
    pub fn admit(&self, uid: u32, rights: Rights) -> Result<Slot, String> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.by_uid.get(&uid).copied().unwrap_or(0);
        let per_uid = match rights {
            Rights::Read => PER_READER,
            Rights::Full => PER_ADMIN,
        };
        if mine >= per_uid {
            return Err(format!(
                "too many connections: uid {uid} already has {mine} in progress, the most it \
                 may have; try again once one is answered"
            ));
        }
        if rights == Rights::Read && held.readers >= READERS {
            return Err(format!(
                "too many connections: readers already have {READERS} in progress; try again \
                 once one is answered"
            ));
        }
        if held.all >= ALL {
            return Err(format!(
                "too many connections: {ALL} are in progress; try again once one is answered"
            ));
        }
        *held.by_uid.entry(uid).or_default() += 1;
        held.readers += usize::from(rights == Rights::Read);
        held.all += 1;
        Ok(Slot {
            clients: self.clone(),
            uid,
            rights,
        })
    }
}

/// One connection's place, given back when it is dropped.
pub struct Slot {
    clients: Clients,
    uid: u32,
    rights: Rights,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .clients
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.by_uid.remove(&self.uid);
            }
        }
        held.readers -= usize::from(self.rights == Rights::Read);
        held.all -= 1;
    }
}

/// A connection with its place, which it keeps wherever it goes (to the events thread, to the
/// followers) until it is closed.
pub struct Admitted<C> {
    stream: C,
    _slot: Slot,
}

impl<C> Admitted<C> {
    pub fn new(stream: C, slot: Slot) -> Self {
        Self {
            stream,
            _slot: slot,
        }
    }

    pub fn stream(&self) -> &C {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut C {
        &mut self.stream
    }
}

impl<C: Read> Read for Admitted<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<C: Write> Write for Admitted<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Which refusals are logged: the first of a uid, then at most one line per [`QUIET`] that
/// also counts those not logged since, so a client that reconnects in a loop cannot flood
/// the log. The count of a uid that stops is reported with its next refusal.
#[derive(Debug, Default)]
pub struct Refusals {
    by_uid: HashMap<u32, Quiet>,
}

#[derive(Debug)]
struct Quiet {
    logged: Instant,
    unlogged: u64,
}

impl Refusals {
    /// Notes that `uid` was refused with `message` at `now`; returns the line to log, if any.
    pub fn note(&mut self, uid: u32, message: &str, now: Instant) -> Option<String> {
        if let Some(quiet) = self.by_uid.get_mut(&uid) {
            if now.duration_since(quiet.logged) < QUIET {
                quiet.unlogged += 1;
                return None;
            }
            let unlogged = std::mem::take(&mut quiet.unlogged);
            quiet.logged = now;
            return Some(if unlogged == 0 {
                message.to_owned()
            } else {
                format!(
                    "{message} (and {unlogged} more refusal(s) of uid {uid} not logged since \
                     the last line)"
                )
            });
        }
        if self.by_uid.len() >= MAX_QUIET_UIDS {
            self.by_uid
                .retain(|_, quiet| now.duration_since(quiet.logged) < QUIET);
        }
        if self.by_uid.len() < MAX_QUIET_UIDS {
            self.by_uid.insert(
                uid,
                Quiet {
                    logged: now,
                    unlogged: 0,
                },
            );
        }
        Some(message.to_owned())
    }
}

/// An admitted connection carries the protocol of the connection it wraps.
impl<C: Channel> Channel for Admitted<C> {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.stream().set_timeouts(read, write)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stream_mut().finish()
    }

    fn expires(&self) -> Option<jiff::Timestamp> {
        self.stream().expires()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_holds_at_most_its_bound_and_root_is_still_admitted() {
        let clients = Clients::default();
        let held: Vec<Slot> = (0..PER_READER)
            .map(|_| clients.admit(65_534, Rights::Read).unwrap())
            .collect();
        let refused = clients.admit(65_534, Rights::Read).err().unwrap();
        assert!(
            refused.contains("too many connections: uid 65534 already has 8"),
            "{refused}"
        );
        assert!(clients.admit(1000, Rights::Read).is_ok(), "another reader");
        assert!(clients.admit(0, Rights::Full).is_ok(), "root");
        drop(held);
        assert!(
            clients.admit(65_534, Rights::Read).is_ok(),
            "places are given back when connections close"
        );
    }

    #[test]
    fn readers_together_never_take_the_places_root_needs() {
        let clients = Clients::default();
        let readers: Vec<Slot> = (0..READERS)
            .map(|n| clients.admit(10_000 + u32::try_from(n).unwrap(), Rights::Read))
            .collect::<Result<_, _>>()
            .unwrap();
        let refused = clients.admit(20_000, Rights::Read).err().unwrap();
        assert!(refused.contains("readers already have 32"), "{refused}");
        let root: Vec<Slot> = (0..PER_ADMIN)
            .map(|_| clients.admit(0, Rights::Full).unwrap())
            .collect();
        assert!(clients.admit(0, Rights::Full).is_err(), "root's own bound");
        let admins: Vec<Slot> = (0..ALL - READERS - PER_ADMIN)
            .map(|n| clients.admit(1 + u32::try_from(n / PER_ADMIN).unwrap(), Rights::Full))
            .collect::<Result<_, _>>()
            .unwrap();
        let refused = clients.admit(99, Rights::Full).err().unwrap();
        assert!(refused.contains("128 are in progress"), "{refused}");
        drop((readers, root, admins));
        let held = clients.0.lock().unwrap();
        assert_eq!((held.all, held.readers), (0, 0));
        assert!(held.by_uid.is_empty(), "{held:?}");
    }

    #[test]
    fn repeated_refusals_of_a_uid_are_counted_into_one_line_per_quiet_period() {
        let mut refusals = Refusals::default();
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(refusals.note(7, "no", start).as_deref(), Some("no"));
        for n in 1..=5 {
            assert_eq!(refusals.note(7, "no", start + second * n), None);
        }
        assert_eq!(
            refusals.note(8, "other", start + second).as_deref(),
            Some("other"),
            "another uid is logged on its own"
        );
        assert_eq!(
            refusals.note(7, "no", start + QUIET).as_deref(),
            Some("no (and 5 more refusal(s) of uid 7 not logged since the last line)")
        );
        assert_eq!(refusals.note(7, "no", start + QUIET + second), None);
        assert_eq!(
            refusals.note(7, "no", start + QUIET * 3).as_deref(),
            Some("no (and 1 more refusal(s) of uid 7 not logged since the last line)")
        );
    }

    #[test]
    fn the_refusal_count_stays_bounded_however_many_uids_are_refused() {
        let mut refusals = Refusals::default();
        let now = Instant::now();
        for uid in 0..u32::try_from(MAX_QUIET_UIDS * 2).unwrap() {
            assert!(refusals.note(uid, "no", now).is_some());
        }
        assert_eq!(refusals.by_uid.len(), MAX_QUIET_UIDS);
        assert!(
            refusals.note(u32::MAX, "no", now + QUIET).is_some(),
            "expired uids make room"
        );
        assert_eq!(refusals.by_uid.len(), 1);
    }
}
