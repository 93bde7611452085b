//! The one way the daemon serves a listening socket (the metrics endpoint, the remote admin
//! endpoint, the attestation socket) so that no client can stall it: connections are accepted
//! in a loop that backs off after a failed accept, at most a bounded number are answered at
//! once, each on a thread of its own, and each gets a deadline for its exchange that holds for
//! the exchange as a whole rather than for each read. What is said to a client is each
//! endpoint's own.
//!
//! A bound alone lets anyone who can connect hold every place with connections that say
//! nothing, again and again as their deadlines pass (an audit kept `/healthz` from answering
//! with twelve idle connections on loopback). So while every place is taken, a new connection
//! takes the place of the one that has waited longest on its client: one still to send its
//! request, finish its handshake or read its answer. A connection the daemon is working for,
//! or whose client proved who it is ([`Admitted::keep`]), keeps its place; a new connection
//! is refused only when every place is such.
//!
//! A leaf at the crate root: the endpoints live in different wings (`observe`, `daemon`), and
//! the control API's reader (`api`) uses [`remaining`] too.

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// After a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Answer threads alive at once, as a multiple of the places: a connection that lost its place
/// is shut down, and its thread ends at its next read or write, but until then it runs.
const THREADS_PER_PLACE: usize = 16;

/// A listening socket whose connections can be served.
pub trait Listener: Send + 'static {
    type Stream: AsFd + Send + 'static;

    /// The next connection, waiting for one.
    fn next(&self) -> io::Result<Self::Stream>;

    /// A second handle on `stream`, through which the accepting thread can end it.
    fn handle(stream: &Self::Stream) -> io::Result<Self::Stream>;

    /// Ends the connection: its answer's blocked read or write returns at once.
    fn shut(handle: &Self::Stream);
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    fn next(&self) -> io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }

    fn handle(stream: &TcpStream) -> io::Result<TcpStream> {
        stream.try_clone()
    }

    fn shut(handle: &TcpStream) {
        let _ = handle.shutdown(Shutdown::Both);
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;

    fn next(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }

    fn handle(stream: &UnixStream) -> io::Result<UnixStream> {
        stream.try_clone()
    }

    fn shut(handle: &UnixStream) {
        let _ = handle.shutdown(Shutdown::Both);
    }
}

/// How an endpoint is served.
pub struct Bounds {
    /// What the endpoint is called in its threads' names and in log lines: `remote admin`.
    pub name: &'static str,
    /// How many connections are answered at once.
    pub max_clients: usize,
    /// How long a client has, from being accepted, for its exchange (or for the part of it
    /// the endpoint bounds, such as a TLS handshake): the answer gets the deadline.
    pub deadline: Duration,
}

/// What an answer tells the accepting thread about its connection: whether it may give its
/// place to a newer one.
#[derive(Default)]
pub struct Admitted {
    kept: AtomicBool,
    working: AtomicBool,
}

impl Admitted {
    /// The connection keeps its place from now on: its client proved who it is.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }

    /// Runs `work`, the daemon's own part of an answer, with the connection keeping its place.
    pub fn working<T>(&self, work: impl FnOnce() -> T) -> T {
        self.working.store(true, Ordering::Release);
        let done = work();
        self.working.store(false, Ordering::Release);
        done
    }

    fn waits_on_client(&self) -> bool {
        !self.kept.load(Ordering::Acquire) && !self.working.load(Ordering::Acquire)
    }
}

/// Serves `listener` from a thread of its own until the process ends. Each connection
/// admitted is given to `answer` on a thread of its own, with its deadline; the answer sets
/// its socket timeouts from the deadline ([`remaining`]). A connection that finds no place
/// is given to `refuse` on the accepting thread, which must not block: it logs, or closes at
/// once.
pub fn serve<L, A, R>(listener: L, bounds: Bounds, answer: A, refuse: R) -> io::Result<()>
where
    L: Listener,
    A: Fn(L::Stream, Instant, &Admitted) + Send + Sync + 'static,
    R: Fn(L::Stream) + Send + 'static,
{
    let answer = Arc::new(answer);
    let places = Arc::new(Places::<L::Stream>::new(bounds.max_clients));
    let threads = Arc::new(AtomicUsize::new(0));
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
            let Some(thread_slot) = Slot::take(&threads, bounds.max_clients * THREADS_PER_PLACE)
            else {
                refuse(stream);
                continue;
            };
            let Ok(handle) = L::handle(&stream) else {
                refuse(stream);
                continue;
            };
            let admitted = Arc::new(Admitted::default());
            let Some(place) = Places::take(&places, handle, Arc::clone(&admitted), L::shut) else {
                refuse(stream);
                continue;
            };
            let answer = Arc::clone(&answer);
            // When the thread cannot start, the closure, and the place with it, is dropped.
            let spawned = thread::Builder::new()
                .name(client_name.clone())
                .spawn(move || {
                    let _held = (thread_slot, place);
                    answer(stream, deadline, &admitted);
                });
            if let Err(err) = spawned {
                log::error!("{}: could not start a thread to answer: {err}", bounds.name);
            }
        }
    })?;
    Ok(())
}

/// The connections being answered, oldest first, each with a handle that can end it.
struct Places<S> {
    max: usize,
    held: Mutex<Vec<Place<S>>>,
    next_id: AtomicUsize,
}

struct Place<S> {
    id: usize,
    handle: S,
    admitted: Arc<Admitted>,
}

impl<S: AsFd> Places<S> {
    fn new(max: usize) -> Self {
        Self {
            max,
            held: Mutex::new(Vec::with_capacity(max)),
            next_id: AtomicUsize::new(0),
        }
    }

    /// A place for a new connection: a free one, or the place of the connection that has
    /// waited longest on its client, which `shut` ends. None when every place is kept.
    fn take(
        places: &Arc<Self>,
        handle: S,
        admitted: Arc<Admitted>,
        shut: fn(&S),
    ) -> Option<Held<S>> {
        let mut held = places.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= places.max {
            // A request already on its way in is a client's, not a held-open connection's:
            // under a flood of connections, the one that carries it keeps its place until
            // its answer reads it.
            let oldest = held
                .iter()
                .position(|p| p.admitted.waits_on_client() && !has_unread(p.handle.as_fd()))?;
            shut(&held.remove(oldest).handle);
        }
        let id = places.next_id.fetch_add(1, Ordering::Relaxed);
        held.push(Place {
            id,
            handle,
            admitted,
        });
        Some(Held {
            places: Arc::clone(places),
            id,
        })
    }
}

/// Whether the client sent bytes its answer has not read yet.
fn has_unread(fd: BorrowedFd<'_>) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ on TCP and Unix stream sockets) writes one int through the
    // pointer, which points at one.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut unread) };
    done == 0 && unread > 0
}

/// A place taken, given back when its answer ends (unless a newer connection took it).
struct Held<S> {
    places: Arc<Places<S>>,
    id: usize,
}

impl<S> Drop for Held<S> {
    fn drop(&mut self) {
        let mut held = self
            .places
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.retain(|p| p.id != self.id);
    }
}

/// One of a bounded number of things held at once, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, unless `max` are already held.
    fn take(clients: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
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
    fn connections_over_the_bound_are_refused_while_the_kept_are_answered() {
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
            move |_stream: TcpStream, deadline: Instant, admitted: &Admitted| {
                admitted.keep();
                said.send(("answered", remaining(deadline).is_ok()))
                    .expect("telling");
                // Holds its place until the test lets it go.
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

    #[test]
    fn a_connection_that_keeps_its_answer_waiting_gives_its_place_to_a_new_one() {
        use std::io::{Read as _, Write as _};

        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let (said, heard) = mpsc::channel();
        let refused = said.clone();
        serve(
            listener,
            Bounds {
                name: "test",
                max_clients: 2,
                deadline: Duration::from_secs(60),
            },
            move |mut stream: TcpStream, _deadline: Instant, _admitted: &Admitted| {
                let mut byte = [0u8; 1];
                // A silent client's read ends only when its place is taken (0: shut down).
                let read = stream.read(&mut byte).map_err(|err| err.kind());
                said.send(format!("{} read {read:?}", byte[0]))
                    .expect("telling");
                let _ = stream.write_all(b"answered");
            },
            move |_stream: TcpStream| refused.send("refused".to_owned()).expect("telling"),
        )
        .expect("serving");
        let silent: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connecting"))
            .collect();
        let mut speaking = TcpStream::connect(addr).expect("connecting");
        assert_eq!(
            heard.recv().expect("hearing"),
            "0 read Ok(0)",
            "the oldest silent connection is ended for the new one"
        );
        speaking.write_all(b"x").expect("asking");
        assert_eq!(heard.recv().expect("hearing"), "120 read Ok(1)");
        let mut answer = String::new();
        speaking
            .read_to_string(&mut answer)
            .expect("reading the answer");
        assert_eq!(answer, "answered");
        drop(silent);
    }

    #[test]
    fn a_connection_whose_request_is_waiting_to_be_read_keeps_its_place() {
        use std::{
            io::{Read as _, Write as _},
            sync::RwLock,
        };

        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let (said, heard) = mpsc::channel();
        // Held by the test: no answer reads until the third connection has been admitted.
        let hold = Arc::new(RwLock::new(()));
        let held = hold.write().expect("lock");
        let answers_wait = Arc::clone(&hold);
        serve(
            listener,
            Bounds {
                name: "test",
                max_clients: 2,
                deadline: Duration::from_secs(60),
            },
            move |mut stream: TcpStream, _deadline: Instant, _admitted: &Admitted| {
                let port = stream.peer_addr().expect("peer").port();
                said.send((port, None)).expect("telling");
                drop(answers_wait.read().expect("lock"));
                // A silent connection that kept its place would wait here for ever.
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut byte = [0u8; 1];
                let read = stream.read(&mut byte).map_err(|err| err.kind());
                said.send((port, Some(read))).expect("telling");
            },
            drop,
        )
        .expect("serving");
        let mut asking = TcpStream::connect(addr).expect("connecting");
        asking.write_all(b"x").expect("asking");
        let asking_port = asking.local_addr().expect("local").port();
        assert_eq!(heard.recv().expect("hearing"), (asking_port, None));
        let silent = TcpStream::connect(addr).expect("connecting");
        let silent_port = silent.local_addr().expect("local").port();
        assert_eq!(heard.recv().expect("hearing"), (silent_port, None));
        let mut newest = TcpStream::connect(addr).expect("connecting");
        newest.write_all(b"y").expect("asking");
        let newest_port = newest.local_addr().expect("local").port();
        assert_eq!(heard.recv().expect("hearing"), (newest_port, None));
        drop(held);
        let mut reads: Vec<_> = (0..3).map(|_| heard.recv().expect("hearing")).collect();
        reads.sort_unstable();
        let mut expected = vec![
            (asking_port, Some(Ok(1))),
            (silent_port, Some(Ok(0))),
            (newest_port, Some(Ok(1))),
        ];
        expected.sort_unstable();
        assert_eq!(
            reads, expected,
            "the silent connection, not the older one with a request, gave its place"
        );
    }
}
