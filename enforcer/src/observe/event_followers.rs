//! The `enforcer events --follow` clients. The feed hands each batch of lines to every
//! follower's queue and goes on: it never writes to a client, so a client that stops reading
//! can delay neither the ring buffer's drain nor the event log. Each follower's thread writes
//! its queue out; a follower whose queue passes [`MAX_QUEUED`] has fallen behind for good and
//! is dropped, told why if it still reads.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use crate::api::control::{self, Channel, Response};

/// The lines a follower may have waiting: about 20,000 events, more than a client that reads
/// falls behind in a burst that fills the ring buffer. The queues share their batches, and
/// each holds only batches within the last this many bytes sent (an older one would have
/// overflowed it), so all of them together hold no more than this and one batch, however many
/// followers there are.
const MAX_QUEUED: usize = 8 << 20;
/// A write that makes no progress for this long ends the follower: its client has stopped
/// reading, and its thread and connection are given back. Only the follower's own thread
/// waits this long, never the feed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The followers, each with its queue.
#[derive(Clone, Default)]
pub struct Followers(Arc<Mutex<Vec<Arc<Queue>>>>);

impl Followers {
    /// Follows on the calling thread: answers that it follows, then writes each batch sent to
    /// the followers to `stream` until the client is gone, its credential expires, or it
    /// falls behind. The queue is in place before the answer, so the client misses no event
    /// after it.
    pub fn follow(&self, mut stream: impl Channel) {
        let queue = Arc::new(Queue::default());
        lock(&self.0).push(Arc::clone(&queue));
        let end = match control::write_response(&mut stream, &Response::Events) {
            Ok(()) => queue.write_out(&mut stream),
            Err(_) => End::Gone,
        };
        queue.close(end);
        if let End::Behind { between_lines } = end {
            log::warn!(
                "dropped an events follower that fell more than {} MiB behind",
                MAX_QUEUED >> 20
            );
            let response = Response::Error {
                message: format!(
                    "the daemon stopped following: this client fell more than {} MiB of events \
                     behind; the events missed are in the log (enforcer events)",
                    MAX_QUEUED >> 20
                ),
            };
            // Told only after a whole line, and if there is room within the timeout: the
            // client may never read again.
            if between_lines {
                let _gone = control::write_response(&mut stream, &response);
            }
        }
    }

    /// Queues `lines` (whole lines) for every follower, without waiting on any.
    pub fn send(&self, lines: &[u8]) {
        let mut followers = lock(&self.0);
        if followers.is_empty() || lines.is_empty() {
            return;
        }
        let batch: Arc<[u8]> = Arc::from(lines);
        followers.retain(|queue| queue.offer(&batch));
    }
}

#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    batches: VecDeque<Arc<[u8]>>,
    bytes: usize,
    end: Option<End>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client's connection failed or its credential expired.
    Gone,
    /// The queue overflowed; `between_lines` if the last write to the client ended whole.
    Behind { between_lines: bool },
}

impl Queue {
    /// Adds `batch`; false once the follower has ended, which it does here if `batch` would
    /// overflow its queue.
    fn offer(&self, batch: &Arc<[u8]>) -> bool {
        let mut pending = lock(&self.pending);
        if pending.end.is_some() {
            return false;
        }
        // A batch larger than the bound still fits an empty queue: a follower that keeps up
        // is never dropped for the size of one batch.
        if pending.bytes > 0 && pending.bytes + batch.len() > MAX_QUEUED {
            pending.end = Some(End::Behind {
                between_lines: true,
            });
            pending.batches.clear();
            self.ready.notify_one();
            return false;
        }
        pending.bytes += batch.len();
        pending.batches.push_back(Arc::clone(batch));
        self.ready.notify_one();
        true
    }

    fn close(&self, end: End) {
        let mut pending = lock(&self.pending);
        pending.end.get_or_insert(end);
        pending.batches.clear();
    }

    /// Writes batches as they come until the follower ends; returns why it did.
    fn write_out(&self, stream: &mut impl Channel) -> End {
        if stream.set_timeouts(None, Some(WRITE_TIMEOUT)).is_err() {
            return End::Gone;
        }
        loop {
            let batch = {
                let mut pending = lock(&self.pending);
                loop {
                    if let Some(end) = pending.end {
                        return end;
                    }
                    if let Some(batch) = pending.batches.pop_front() {
                        pending.bytes -= batch.len();
                        break batch;
                    }
                    pending = self
                        .ready
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let authenticated = stream
                .expires()
                .is_none_or(|expires| jiff::Timestamp::now() < expires);
            if !authenticated {
                return End::Gone;
            }
            if stream
                .write_all(&batch)
                .and_then(|()| stream.flush())
                .is_err()
            {
                return match lock(&self.pending).end {
                    Some(End::Behind { .. }) => End::Behind {
                        between_lines: false,
                    },
                    _ => End::Gone,
                };
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        os::unix::net::UnixStream,
        sync::mpsc,
        thread,
    };

    use super::*;

    #[test]
    fn a_follower_that_stops_reading_is_dropped_and_told_why_and_the_others_get_every_line() {
        let followers = Followers::default();
        let (stalled, stalled_server) = UnixStream::pair().unwrap();
        let (reading, reading_server) = UnixStream::pair().unwrap();
        let stalled_thread = {
            let followers = followers.clone();
            thread::spawn(move || followers.follow(stalled_server))
        };
        {
            let followers = followers.clone();
            thread::spawn(move || followers.follow(reading_server));
        }
        let (got, read) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reading).lines().map_while(Result::ok) {
                if got.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stalled = BufReader::new(stalled).lines();
        let answer = r#"{"result":"events"}"#;
        assert_eq!(read.recv().unwrap(), answer);
        assert_eq!(stalled.next().unwrap().unwrap(), answer);

        let line = format!("{}\n", "x".repeat(999));
        let most = 4 * MAX_QUEUED / line.len();
        let mut sent = 0;
        // The reader keeps up, one line at a time; the other never reads until it is dropped.
        while lock(&followers.0).len() == 2 {
            assert!(sent < most, "a follower that never reads was never dropped");
            followers.send(line.as_bytes());
            assert_eq!(read.recv().unwrap().len(), 999);
            sent += 1;
        }
        let last = stalled.map_while(Result::ok).last().unwrap();
        assert!(
            last.contains("the daemon stopped following") && last.contains("8 MiB"),
            "{last}"
        );
        stalled_thread.join().unwrap();
        followers.send(b"after\n");
        assert_eq!(
            read.recv().unwrap(),
            "after",
            "the reading follower still follows"
        );
    }
}
