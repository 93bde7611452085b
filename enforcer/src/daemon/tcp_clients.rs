//! What the daemon's endpoints (metrics, remote admin, the control socket) share so that no
//! client can stall the daemon: a bounded number of clients answered at once, and deadlines
//! that hold for a whole exchange rather than for each read.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// One of a bounded number of connections being answered, given back when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, unless `max` clients already hold one.
    pub fn take(clients: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(clients)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The time left until `deadline`, or `TimedOut` once it has passed (a zero socket timeout
/// would mean "wait for ever").
pub fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}
