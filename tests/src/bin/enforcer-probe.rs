//! A workload for the end-to-end tests and the demo. Every mode prints one line per result,
//! saying what the application saw:
//!
//! - `listen ADDR PORT`: a TCP listener; prints `listening` once the socket accepts
//!   connections (the readiness signal) and greets every client with `hi`.
//! - `connect ADDR PORT`: a TCP client; prints `connected <data>`, `error <errno>`, or
//!   `timeout` when the handshake does not complete in time.
//! - `udp-listen ADDR PORT`: a UDP socket; prints `listening` once bound and answers every
//!   datagram with `hi`, sent to the datagram's source address.
//! - `udp-send ADDR PORT`: sends `ping` from an unconnected socket (`sendto`) and waits for
//!   one reply; prints `replied <data>`, `error <errno>` (the send or the receive failed),
//!   or `timeout`.
//! - `udp-connect ADDR PORT`: the same through a connected socket (`connect`, `send`, `recv`).
//! - `udp-orphan ADDR PORT` (IPv4): sends the datagram `orphan` from a port no socket holds
//!   (bound once to find a free one, then closed), through a raw socket: what a receiver
//!   sees of a datagram whose sender closed before it arrived. Prints `sent` or `error <errno>`.
//! - `hold-then-connect ADDR PORT`: creates a TCP socket, prints `ready`, waits for a line on
//!   stdin, then connects that old socket and a new one and prints `old <result>` and
//!   `new <result>` (results as for `connect`). Between `ready` and the line the test can move
//!   the process to another cgroup.
//! - `connect-loop ADDR PORT SECONDS` (for `cargo xtask bench connect`): opens connections one
//!   after another, each read to the end, and prints `rate <per second>`.
//! - `connect-storm ADDR PORT`: prints `started`, then connects over and over, a new socket
//!   each time, and prints one line per attempt as `connect` does, until it is killed or its
//!   output is closed: what an application retrying a connection sees, attempt by attempt.
//!
//! Streams, for tests of what happens to flows that are already open. Every line a stream
//! client sends is `seq <n> <unix-time-ms>` (`n` from 0, the time it was sent), one every
//! 20 ms, so a receiver can tell exactly when each line left the application.
//!
//! - `stream ADDR PORT`: a TCP client; prints `connected` once connected (the readiness
//!   signal; `error <errno>` or `timeout` instead, as for `connect`, when it cannot connect),
//!   then sends lines until a write fails or, between writes, the socket reports an error or
//!   the peer closes (it polls the socket while it waits, so a reset or an abort is noticed
//!   at once). Then prints `ended <reason> <unix-time-ms>` and exits; the reason is the
//!   errno's name (`ECONNABORTED`, `ECONNRESET`, `EPERM`, ..., or its number when it has no
//!   name here) or `eof` when the peer closed. A pending socket error (`SO_ERROR`) is
//!   preferred to the errno of the call that failed, since it is the cause.
//! - `sink ADDR PORT`: a TCP server; prints `listening`, accepts one connection and closes
//!   the listener, prints `accepted`, then `got <line>` for every line received, as it
//!   arrives, and `closed <reason>` (`eof` or the errno's name) when the connection ends.
//! - `udp-stream ADDR PORT`: the same as `stream` through a connected UDP socket (`connect`,
//!   then `send`); `connected` once `connect` succeeded.
//! - `udp-sendto-stream ADDR PORT`: the same through an unconnected UDP socket (`sendto`);
//!   `connected` once the socket is bound (nothing is sent before), and the first refused
//!   `sendto` ends it (`ended EPERM ...`).
//! - `udp-sink ADDR PORT`: a UDP socket; prints `listening` once bound, then `got <line>` for
//!   every datagram (its text without the trailing newline). It never replies and never ends.
//!
//! Connects and reply waits give up after `ENFORCER_PROBE_TIMEOUT_MS` milliseconds (default
//! 5000), so tests that expect silent drops can run quickly.

use std::{
    io::{self, Read as _, Write as _},
    mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const TIMEOUT_ENV: &str = "ENFORCER_PROBE_TIMEOUT_MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(port)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!(
            "usage: enforcer-probe listen|connect|udp-listen|udp-send|udp-connect|\
             udp-orphan|hold-then-connect|connect-loop|connect-storm|stream|sink|sink-after-connect|udp-stream|udp-sendto-stream|udp-sink \
             ADDR PORT [SECONDS]"
        );
        return ExitCode::from(2);
    };
    let Ok(addr) = format!("{}:{port}", bracket(addr)).parse::<SocketAddr>() else {
        eprintln!("bad address {addr} {port}");
        return ExitCode::from(2);
    };
    let timeout = timeout();
    match mode.as_str() {
        "listen" => listen(addr),
        "udp-listen" => udp_listen(addr),
        "connect" => report(&connect(addr, timeout)),
        "udp-send" => report(&udp_send(addr, timeout)),
        "udp-connect" => report(&udp_connect(addr, timeout)),
        "udp-orphan" => report(&udp_orphan(addr)),
        "hold-then-connect" => hold_then_connect(addr, timeout),
        "connect-loop" => {
            let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            connect_loop(addr, Duration::from_secs_f64(secs))
        }
        "connect-storm" => connect_storm(addr, timeout),
        "stream" => tcp_stream(addr, timeout),
        "sink" => tcp_sink(addr),
        "sink-after-connect" => tcp_sink_after_connect(addr),
        "udp-stream" => udp_stream(addr, timeout, true),
        "udp-sendto-stream" => udp_stream(addr, timeout, false),
        "udp-sink" => udp_sink(addr),
        _ => ExitCode::from(2),
    }
}

fn timeout() -> Duration {
    let millis = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    Duration::from_millis(millis)
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

fn report(result: &str) -> ExitCode {
    println!("{result}");
    ExitCode::SUCCESS
}

/// `error <errno>`, or `timeout` for the ways a socket call says it ran out of time
/// (`connect_timeout` reports its own deadline without an errno).
fn failure(err: &io::Error) -> String {
    let timed_out = matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) || matches!(
        err.raw_os_error(),
        Some(libc::ETIMEDOUT | libc::EINPROGRESS | libc::EAGAIN)
    );
    if timed_out {
        "timeout".to_owned()
    } else {
        format!("error {}", err.raw_os_error().unwrap_or(0))
    }
}

fn listen(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            return ExitCode::FAILURE;
        }
    };
    ready("listening");
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(b"hi");
    }
    ExitCode::SUCCESS
}

fn udp_listen(addr: SocketAddr) -> ExitCode {
    let Some(socket) = bind_udp(addr) else {
        return ExitCode::FAILURE;
    };
    ready("listening");
    let mut buf = [0u8; 64];
    loop {
        // A refused reply is the client's to notice (it times out); keep serving others.
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(b"hi", from);
        }
    }
}

/// Prints a readiness line and makes sure it leaves the process before anything else happens.
fn ready(line: &str) {
    println!("{line}");
    let _ = io::stdout().flush();
}

fn connect(addr: SocketAddr, timeout: Duration) -> String {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => greeting(stream, timeout),
        Err(err) => failure(&err),
    }
}

/// `connected <data>` with whatever the server sent before closing (or before `timeout`);
/// a reset before any data is what the application saw, so it is reported as an error.
fn greeting(mut stream: TcpStream, timeout: Duration) -> String {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Err(err) if data.is_empty() && err.raw_os_error() == Some(libc::ECONNRESET) => {
            failure(&err)
        }
        _ => format!("connected {}", String::from_utf8_lossy(&data)),
    }
}

fn connect_storm(addr: SocketAddr, timeout: Duration) -> ExitCode {
    ready("started");
    let mut out = io::stdout().lock();
    loop {
        let result = connect(addr, timeout);
        if writeln!(out, "{result}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
}

fn udp_socket(addr: SocketAddr, timeout: Duration) -> io::Result<UdpSocket> {
    let wildcard: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(wildcard)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

fn udp_send(addr: SocketAddr, timeout: Duration) -> String {
    let exchange = || {
        let socket = udp_socket(addr, timeout)?;
        socket.send_to(b"ping", addr)?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(format!("replied {}", String::from_utf8_lossy(&buf[..n])))
    };
    exchange().unwrap_or_else(|err| failure(&err))
}

fn udp_connect(addr: SocketAddr, timeout: Duration) -> String {
    let exchange = || {
        let socket = udp_socket(addr, timeout)?;
        socket.connect(addr)?;
        socket.send(b"ping")?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf)?;
        Ok(format!("replied {}", String::from_utf8_lossy(&buf[..n])))
    };
    exchange().unwrap_or_else(|err| failure(&err))
}

/// The socket is created (and so tagged) before the pause, and connected after it.
fn udp_orphan(addr: SocketAddr) -> String {
    let SocketAddr::V4(to) = addr else {
        return format!("error {}", libc::EAFNOSUPPORT);
    };
    let sport = match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|s| s.local_addr()) {
        Ok(bound) => bound.port(),
        Err(err) => return failure(&err),
    };
    let payload = b"orphan";
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    // No checksum: optional for UDP over IPv4.
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        return failure(&io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (sa, len) = sockaddr(addr);
    // SAFETY: the buffer and the address live across the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            std::ptr::from_ref(&sa).cast(),
            len,
        )
    };
    if sent < 0 {
        return failure(&io::Error::last_os_error());
    }
    "sent".into()
}

fn hold_then_connect(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let old = match tcp_socket(addr, timeout) {
        Ok(fd) => fd,
        Err(err) => return report(&failure(&err)),
    };
    ready("ready");
    let mut line = String::new();
    if io::stdin().read_line(&mut line).is_err() {
        return ExitCode::FAILURE;
    }
    println!("old {}", connect_socket(old, addr, timeout));
    let new = tcp_socket(addr, timeout).map(|fd| connect_socket(fd, addr, timeout));
    println!("new {}", new.unwrap_or_else(|err| failure(&err)));
    ExitCode::SUCCESS
}

/// A TCP socket of `addr`'s family whose blocking `connect` gives up after `timeout`
/// (Linux applies `SO_SNDTIMEO` to `connect`).
fn tcp_socket(addr: SocketAddr, timeout: Duration) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn connect_socket(fd: OwnedFd, addr: SocketAddr, timeout: Duration) -> String {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for `fd`'s family.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc < 0 {
        return failure(&io::Error::last_os_error());
    }
    greeting(TcpStream::from(fd), timeout)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn connect_loop(addr: SocketAddr, duration: Duration) -> ExitCode {
    let start = std::time::Instant::now();
    let mut count = 0u64;
    let mut buf = [0u8; 16];
    while start.elapsed() < duration {
        match TcpStream::connect(addr) {
            // Reading to EOF waits for the server's accept, greeting and close, so each
            // iteration is one full connect + accept and the listen queue never overflows.
            Ok(mut stream) => while stream.read(&mut buf).is_ok_and(|n| n > 0) {},
            Err(err) => {
                println!("error {}", err.raw_os_error().unwrap_or(0));
                return ExitCode::FAILURE;
            }
        }
        count += 1;
    }
    println!("rate {:.0}", count as f64 / start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// How often a stream sends a line.
const PERIOD: Duration = Duration::from_millis(20);

/// Milliseconds since the Unix epoch, the time stamps of stream lines.
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The name of the errnos a stream can end with, or its number.
fn errno_text(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EINVAL => "EINVAL",
        _ => return errno.to_string(),
    };
    name.to_owned()
}

/// The socket's pending error (`SO_ERROR`, which reading clears), if it has one.
fn pending_error(fd: RawFd) -> Option<i32> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for getsockopt to write an int into.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    (rc == 0 && err != 0).then_some(err)
}

/// Why a call on `fd` failed: the socket's pending error when it has one, else `err`.
fn failure_reason(fd: RawFd, err: &io::Error) -> String {
    errno_text(pending_error(fd).or(err.raw_os_error()).unwrap_or(0))
}

/// Sends a line every [`PERIOD`] with `send` until sending fails or, while it waits, the
/// socket reports an error or (TCP only) the end of the stream; then prints
/// `ended <reason> <unix-time-ms>`.
fn pace(fd: RawFd, tcp: bool, mut send: impl FnMut(&[u8]) -> io::Result<()>) -> ExitCode {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for n in 0u32.. {
        let line = format!("seq {n} {}\n", unix_ms());
        if let Err(err) = send(line.as_bytes()) {
            return ended(&failure_reason(fd, &err));
        }
        let next = start + PERIOD * (n + 1);
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            let wait = (next - now).as_micros().div_ceil(1000);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, wait as libc::c_int) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return ended(&failure_reason(fd, &err));
            }
            if rc == 0 {
                continue;
            }
            if pfd.revents & libc::POLLERR != 0
                && let Some(errno) = pending_error(fd)
            {
                return ended(&errno_text(errno));
            }
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let got =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            match got {
                0 if tcp => return ended("eof"),
                n if n >= 0 => {} // data nobody asked for (or an empty datagram): ignored
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::WouldBlock {
                        if pfd.revents & libc::POLLHUP != 0 {
                            return ended("hup");
                        }
                    } else if err.kind() != io::ErrorKind::Interrupted {
                        return ended(&failure_reason(fd, &err));
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn ended(reason: &str) -> ExitCode {
    ready(&format!("ended {reason} {}", unix_ms()));
    ExitCode::SUCCESS
}

fn tcp_stream(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(err) => return report(&failure(&err)),
    };
    let _ = stream.set_nodelay(true);
    ready("connected");
    let fd = stream.as_raw_fd();
    pace(fd, true, |line| stream.write_all(line))
}

fn tcp_sink(addr: SocketAddr) -> ExitCode {
    match TcpListener::bind(addr) {
        Ok(listener) => sink_on(listener),
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            ExitCode::FAILURE
        }
    }
}

/// `sink` on a socket that tried to connect first: to a multicast address of `addr`'s family
/// on `addr`'s port (`224.0.0.1`, `ff02::1`), which the kernel refuses with ENETUNREACH
/// after the connect hook judged it, leaving the socket free to bind and listen (a socket
/// whose connect reached the peer cannot listen any more). The sockets it accepts must be
/// judged as their own flows, whatever that attempt was judged as.
fn tcp_sink_after_connect(addr: SocketAddr) -> ExitCode {
    match listener_after_connect(addr) {
        Ok(listener) => sink_on(listener),
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            ExitCode::FAILURE
        }
    }
}

fn listener_after_connect(addr: SocketAddr) -> io::Result<TcpListener> {
    let multicast = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::new(224, 0, 0, 1), addr.port()))
    } else {
        SocketAddr::from((Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), addr.port()))
    };
    let fd = tcp_socket(addr, timeout())?;
    let (peer, len) = sockaddr(multicast);
    // SAFETY: `peer` holds a sockaddr of `len` bytes for `fd`'s family.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const peer).cast(), len) };
    let refused = io::Error::last_os_error();
    if rc == 0 || refused.raw_os_error() != Some(libc::ENETUNREACH) {
        return Err(io::Error::other(format!(
            "a connect to {multicast} was expected to fail with ENETUNREACH, it gave {}",
            if rc == 0 {
                "success".to_owned()
            } else {
                refused.to_string()
            }
        )));
    }
    let call = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // As `TcpListener::bind` does, so that an earlier run's TIME_WAIT does not hold the port.
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid int option value of the size given.
    call(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const on).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let (local, len) = sockaddr(addr);
    // SAFETY: `local` holds a sockaddr of `len` bytes for `fd`'s family.
    call(unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) })?;
    // SAFETY: `fd` is a bound TCP socket.
    call(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(TcpListener::from(fd))
}

/// Reports the lines of the first connection `listener` accepts.
fn sink_on(listener: TcpListener) -> ExitCode {
    ready("listening");
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                println!("error {}", err.raw_os_error().unwrap_or(0));
                return ExitCode::FAILURE;
            }
        }
    };
    drop(listener);
    ready("accepted");
    let fd = stream.as_raw_fd();
    let mut reader = io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match io::BufRead::read_until(&mut reader, b'\n', &mut line) {
            Ok(0) => return closed("eof"),
            Ok(_) if line.ends_with(b"\n") => {
                ready(&format!(
                    "got {}",
                    String::from_utf8_lossy(&line[..line.len() - 1])
                ));
            }
            // A partial last line: the stream ended in the middle of it.
            Ok(_) => return closed("eof"),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return closed(&failure_reason(fd, &err)),
        }
    }
}

fn closed(reason: &str) -> ExitCode {
    ready(&format!("closed {reason}"));
    ExitCode::SUCCESS
}

fn udp_stream(addr: SocketAddr, timeout: Duration, connected: bool) -> ExitCode {
    let socket = match udp_socket(addr, timeout) {
        Ok(s) => s,
        Err(err) => return report(&failure(&err)),
    };
    if connected && let Err(err) = socket.connect(addr) {
        return report(&failure(&err));
    }
    ready("connected");
    let fd = socket.as_raw_fd();
    if connected {
        pace(fd, false, |line| socket.send(line).map(drop))
    } else {
        pace(fd, false, |line| socket.send_to(line, addr).map(drop))
    }
}

fn udp_sink(addr: SocketAddr) -> ExitCode {
    let Some(socket) = bind_udp(addr) else {
        return ExitCode::FAILURE;
    };
    ready("listening");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            ready(&format!("got {}", text.trim_end_matches('\n')));
        }
    }
}

/// A UDP socket bound to `addr`, or `None` after printing the error as the tests read it.
fn bind_udp(addr: SocketAddr) -> Option<UdpSocket> {
    UdpSocket::bind(addr)
        .inspect_err(|err| println!("error {}", err.raw_os_error().unwrap_or(0)))
        .ok()
}
