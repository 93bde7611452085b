//! A load generator for `cargo xtask bench`: UDP floods for `udp-send` and `ingress`, one TCP
//! connection for `rr` and `stream`. Every mode prints one result line on stdout:
//!
//! - `udp-sink ADDR PORT SECONDS`: binds a UDP socket, prints `listening` once bound (the
//!   readiness signal), then counts the datagrams the application receives, from the first
//!   one until none has arrived for [`IDLE`] (the sender stopped), or at most SECONDS.
//!   After the first datagram it polls a non-blocking socket without ever sleeping, so it
//!   drains as fast as one core can and the sender never pays for waking it up.
//!   Prints `received N rate R`, R per second between the first and the last datagram.
//! - `udp-sink-blocking ADDR PORT SECONDS`: the same with blocking `recv()` calls, as a
//!   typical server reads: when it keeps up it sleeps, and every datagram wakes it.
//! - `udp-blast ADDR PORT SECONDS`: sends [`PAYLOAD`]-byte datagrams from one unconnected,
//!   non-blocking socket, one `sendto()` each, for SECONDS. Prints `sent N rate R unsent U`:
//!   N datagrams the kernel accepted, R of them per second, and U sends refused for lack of
//!   buffer space (`EAGAIN`, `ENOBUFS`), which are not counted. Any other error (`EPERM`
//!   from enforcement) ends the run with `error <errno>`.
//!
//! - `udp-refused ADDR PORT COUNT`: makes COUNT `sendto()` calls from one unconnected socket
//!   to a destination enforcement refuses, and prints `refused N other M`: N calls failed
//!   with `EPERM`, M otherwise (sent, or failed for another reason).
//! - `tcp-echo ADDR PORT SECONDS`: a TCP server for `tcp-rr`; prints `listening` once the
//!   socket accepts connections, accepts one connection, sends back every byte it reads until
//!   the client closes, and prints `echoed N`. Servers ignore SECONDS: the client's run ends
//!   theirs.
//! - `tcp-rr ADDR PORT SECONDS`: connects, then for SECONDS sends one byte and waits for it to
//!   come back, one transaction after another (Nagle off on both ends). Prints
//!   `transactions N rate R`.
//! - `tcp-drain ADDR PORT SECONDS`: a TCP server for `tcp-bulk`; prints `listening`, accepts one
//!   connection, reads until the client closes, and prints `received N` (bytes).
//! - `tcp-bulk ADDR PORT SECONDS`: connects and writes [`BULK_WRITE`]-byte buffers for SECONDS.
//!   Prints `sent N rate R`: bytes, and bytes per second.
//!
//! A sink given more time than its sender receives everything the sender sent unless the
//! kernel dropped it (a full receive buffer, or a filter), so N sent minus N received is loss.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

/// Size of every datagram's payload.
const PAYLOAD: usize = 64;
/// A sink that has seen nothing for this long after the first datagram is done.
const IDLE: Duration = Duration::from_millis(250);
/// How long a sink waits for the first datagram before giving up.
const FIRST_WAIT: Duration = Duration::from_secs(10);
/// Sends between two looks at the clock.
const CLOCK_EVERY: u64 = 64;
/// Bytes per `write()` of `tcp-bulk`, as a bulk-transfer tool writes (iperf3 uses 128 KiB).
const BULK_WRITE: usize = 128 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// Poll a non-blocking socket.
    Spin,
    /// Sleep in `recv()`.
    Block,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, addr, port, count] = args.as_slice()
        && mode == "udp-refused"
    {
        let target = addr
            .parse()
            .ok()
            .zip(port.parse().ok())
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let (Some(target), Ok(count)) = (target, count.parse()) else {
            eprintln!("usage: enforcer-flood udp-refused ADDR PORT COUNT");
            return ExitCode::from(2);
        };
        return match refused(target, count) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                println!("error {}", err.raw_os_error().unwrap_or(0));
                ExitCode::FAILURE
            }
        };
    }
    let parsed = match args.as_slice() {
        [_, mode, addr, port, secs] => parse(addr, port, secs).map(|p| (mode.as_str(), p)),
        _ => None,
    };
    let Some((mode, (addr, duration))) = parsed else {
        eprintln!(
            "usage: enforcer-flood \
             udp-sink|udp-sink-blocking|udp-blast|tcp-echo|tcp-rr|tcp-drain|tcp-bulk \
             ADDR PORT SECONDS"
        );
        return ExitCode::from(2);
    };
    let result = match mode {
        "udp-sink" => sink(addr, duration, Wait::Spin),
        "udp-sink-blocking" => sink(addr, duration, Wait::Block),
        "udp-blast" => blast(addr, duration),
        "tcp-echo" => serve_one(addr, echo),
        "tcp-rr" => request_response(addr, duration),
        "tcp-drain" => serve_one(addr, drain),
        "tcp-bulk" => bulk(addr, duration),
        _ => return ExitCode::from(2),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str, port: &str, secs: &str) -> Option<(SocketAddr, Duration)> {
    let ip = addr.parse().ok()?;
    let port = port.parse().ok()?;
    let secs: f64 = secs.parse().ok()?;
    Some((
        SocketAddr::new(ip, port),
        Duration::try_from_secs_f64(secs).ok()?,
    ))
}

fn sink(addr: SocketAddr, duration: Duration, wait: Wait) -> io::Result<String> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(FIRST_WAIT))?;
    println!("listening");
    io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(_) => {}
        Err(err) if waiting(&err) => return Ok("received 0 rate 0".into()),
        Err(err) => return Err(err),
    }
    if wait == Wait::Spin {
        socket.set_nonblocking(true)?;
    } else {
        socket.set_read_timeout(Some(IDLE))?;
    }
    let first = Instant::now();
    let (count, last) = count_until_idle(&socket, &mut buf, first + duration)?;
    let secs = (last - first).as_secs_f64().max(f64::EPSILON);
    Ok(format!("received {count} rate {:.0}", count as f64 / secs))
}

/// Receives until nothing has arrived for [`IDLE`] or `deadline` passed; returns how many
/// datagrams arrived, the one already received included, and when the last one did.
fn count_until_idle(
    socket: &UdpSocket,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<(u64, Instant)> {
    let (mut count, mut last) = (1u64, Instant::now());
    while last < deadline {
        match socket.recv(buf) {
            Ok(_) => {
                count += 1;
                last = Instant::now();
            }
            Err(err) if waiting(&err) => {
                if last.elapsed() >= IDLE {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok((count, last))
}

/// Nothing to receive yet: a non-blocking socket's `EAGAIN` or a receive timeout.
fn waiting(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn refused(addr: SocketAddr, count: u64) -> io::Result<String> {
    let wildcard: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(wildcard)?;
    let (mut refused, mut other) = (0u64, 0u64);
    for _ in 0..count {
        match socket.send_to(&[0u8; PAYLOAD], addr) {
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => refused += 1,
            _ => other += 1,
        }
    }
    Ok(format!("refused {refused} other {other}"))
}

fn blast(addr: SocketAddr, duration: Duration) -> io::Result<String> {
    let wildcard: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(wildcard)?;
    socket.set_nonblocking(true)?;
    let payload = [0x5au8; PAYLOAD];
    let start = Instant::now();
    let (mut sent, mut unsent, mut attempts) = (0u64, 0u64, 0u64);
    loop {
        attempts += 1;
        if attempts.is_multiple_of(CLOCK_EVERY) && start.elapsed() >= duration {
            break;
        }
        match socket.send_to(&payload, addr) {
            Ok(_) => sent += 1,
            Err(err) if no_buffer_space(&err) => unsent += 1,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "sent {sent} rate {:.0} unsent {unsent}",
        sent as f64 / secs
    ))
}

fn no_buffer_space(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock || err.raw_os_error() == Some(libc::ENOBUFS)
}

/// Serves the first connection with `serve`. A server nobody connects to waits until it is
/// killed, as the bench does when it gives up.
fn serve_one(addr: SocketAddr, serve: fn(TcpStream) -> io::Result<String>) -> io::Result<String> {
    let listener = TcpListener::bind(addr)?;
    println!("listening");
    io::stdout().flush()?;
    let (stream, _) = listener.accept()?;
    serve(stream)
}

fn echo(mut stream: TcpStream) -> io::Result<String> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    let mut echoed = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(format!("echoed {echoed}")),
            Ok(n) => {
                stream.write_all(&buf[..n])?;
                echoed += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

fn drain(mut stream: TcpStream) -> io::Result<String> {
    let mut buf = vec![0u8; BULK_WRITE];
    let mut received = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(format!("received {received}")),
            Ok(n) => received += n as u64,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

fn request_response(addr: SocketAddr, duration: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let start = Instant::now();
    let mut byte = [0x5au8; 1];
    let mut transactions = 0u64;
    while !(transactions.is_multiple_of(CLOCK_EVERY) && start.elapsed() >= duration) {
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        transactions += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "transactions {transactions} rate {:.0}",
        transactions as f64 / secs
    ))
}

fn bulk(addr: SocketAddr, duration: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; BULK_WRITE];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&buf)?;
        sent += BULK_WRITE as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!("sent {sent} rate {:.0}", sent as f64 / secs))
}
