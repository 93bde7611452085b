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
//! - `hold-then-connect ADDR PORT`: creates a TCP socket, prints `ready`, waits for a line on
//!   stdin, then connects that old socket and a new one and prints `old <result>` and
//!   `new <result>` (results as for `connect`). Between `ready` and the line the test can move
//!   the process to another cgroup.
//! - `connect-loop ADDR PORT SECONDS` (for `cargo xtask bench connect`): opens connections one
//!   after another, each read to the end, and prints `rate <per second>`.
//!
//! Connects and reply waits give up after `ENFORCER_PROBE_TIMEOUT_MS` milliseconds (default
//! 5000), so tests that expect silent drops can run quickly.

use std::{
    io::{self, Read as _, Write as _},
    mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT_ENV: &str = "ENFORCER_PROBE_TIMEOUT_MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(port)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!(
            "usage: enforcer-probe listen|connect|udp-listen|udp-send|udp-connect|\
             hold-then-connect|connect-loop ADDR PORT [SECONDS]"
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
        "hold-then-connect" => hold_then_connect(addr, timeout),
        "connect-loop" => {
            let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            connect_loop(addr, Duration::from_secs_f64(secs))
        }
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
    let socket = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            return ExitCode::FAILURE;
        }
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
