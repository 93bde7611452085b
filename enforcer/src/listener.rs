//! The one way the daemon serves a listening socket (the metrics endpoint, the remote admin
//! endpoint, the attestation socket) so that no client can stall it: connections are accepted
//! in a loop that backs off after a failed accept, at most a bounded number are answered at
//! once, each on a thread of its own, and each gets a deadline for its exchange that holds for
//! the exchange as a whole rather than for each read. What is said to a client is each
//! endpoint's own.
//!
//! A leaf at the crate root: the endpoints live in different wings (`observe`, `daemon`), and
//! the control API's reader (`api`) uses [`remaining`] too.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// After a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listening socket whose connections can be served.
pub trait Listener: Send + 'static {
    type Stream: Send + 'static;

    /// The next connection, waiting for one.
    fn next(&self) -> io::Result<Self::Stream>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    fn next(&self) -> io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;

    fn next(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

/// How an endpoint is served.
pub struct Bounds {
    /// What the endpoint is called in its threads' names and in log lines: `remote admin`.
    pub name: &'static str,
    /// How many connections are answered at once; further ones are refused until one ends.
    pub max_clients: usize,
    /// How long a client has, from being accepted, for its exchange (or for the part of it
    /// the endpoint bounds, such as a TLS handshake): the answer gets the deadline.
    pub deadline: Duration,
}

/// Serves `listener` from a thread of its own until the process ends. Each connection
/// admitted is given to `answer` on a thread of its own, with its deadline; the answer sets
/// its socket timeouts from the deadline ([`remaining`]). A connection over the bound is given
/// to `refuse` on the accepting thread, which must not block: it logs, or closes at once.
pub fn serve<L, A, R>(listener: L, bounds: Bounds, answer: A, refuse: R) -> io::Result<()>
where
    L: Listener,
    A: Fn(L::Stream, Instant) + Send + Sync + 'static,
    R: Fn(L::Stream) + Send + 'static,
{
    let answer = Arc::new(answer);
    let clients = Arc::new(AtomicUsize::new(0));
    let thread_name = bounds.name.replace(' ', "-");
    let client_name = format!("{thread_name}-client");
    thread::Builder::new().name(thread_name).spawn(move || {
        loop {
            let stream = match listener.next() {
                Ok(stream) => stream,
                Err(err) => {
                    log::error!("{}: accept failed: {err}", bounds.name);
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            let deadline = Instant::now() + bounds.deadline;
            let Some(slot) = Slot::take(&clients, bounds.max_clients) else {
                refuse(stream);
                continue;
            };
            let answer = Arc::clone(&answer);
            // When the thread cannot start, the closure, and the slot with it, is dropped.
            let spawned = thread::Builder::new()
                .name(client_name.clone())
                .spawn(move || {
                    let _slot = slot;
                    answer(stream, deadline);
                });
            if let Err(err) = spawned {
                log::error!("{}: could not start a thread to answer: {err}", bounds.name);
            }
        }
    })?;
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let clients = Arc::new(AtomicUsize::new(0));
        let first = Slot::take(&clients, 2).expect("a first slot");
        let second = Slot::take(&clients, 2).expect("a second slot");
        assert!(
            Slot::take(&clients, 2).is_none(),
            "a third is over the bound"
        );
        drop(first);
        let third = Slot::take(&clients, 2).expect("a slot given back is taken again");
        drop((second, third));
        assert_eq!(clients.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_passed_deadline_has_no_time_left() {
        let past = Instant::now();
        assert_eq!(
            remaining(past).map_err(|err| err.kind()),
            Err(io::ErrorKind::TimedOut)
        );
        assert!(remaining(Instant::now() + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn connections_over_the_bound_are_refused_while_the_admitted_are_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let (said, heard) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let refused = said.clone();
        serve(
            listener,
            Bounds {
                name: "test",
                max_clients: 1,
                deadline: Duration::from_secs(60),
            },
            move |_stream: TcpStream, deadline: Instant| {
                said.send(("answered", remaining(deadline).is_ok()))
                    .expect("telling");
                // Holds its slot until the test lets it go.
                let _ = released.lock().expect("lock").recv();
            },
            move |_stream: TcpStream| refused.send(("refused", true)).expect("telling"),
        )
        .expect("serving");
        let _first = TcpStream::connect(addr).expect("connecting");
        assert_eq!(heard.recv().expect("hearing"), ("answered", true));
        let _second = TcpStream::connect(addr).expect("connecting");
        assert_eq!(heard.recv().expect("hearing"), ("refused", true));
        release.send(()).expect("releasing");
    }
}
