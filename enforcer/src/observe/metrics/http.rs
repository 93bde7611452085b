//! Just enough HTTP/1.x to answer `GET /metrics` and `GET /healthz`, on std sockets and threads (the daemon has
//! no async runtime, and one fixed text needs no more). Each connection is answered on a
//! short-lived thread of its own, with a bounded request and one deadline for reading it and
//! writing the answer, so a slow or silent client holds up nothing but itself; while
//! [`MAX_CLIENTS`] are being answered, further connections are closed at once.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::listener::{self, Admitted, Bounds, remaining};

/// The Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scrape request is one short line and a few headers.
const MAX_REQUEST: usize = 8 * 1024;
/// For reading a request and writing its answer, together.
const DEADLINE: Duration = Duration::from_secs(10);
const MAX_CLIENTS: usize = 8;
/// How long an answered client may go on sending before its connection is closed.
const LINGER: Duration = Duration::from_secs(1);

/// What the two paths serve: `render` makes each 200 body of `/metrics`; `health` says
/// whether `/healthz` answers 200 `ok`, or 503 with the reason.
pub struct Pages<R, H> {
    pub render: R,
    pub health: H,
}

/// Answers requests on `listener` from a thread of its own.
pub fn spawn<R, H>(listener: TcpListener, pages: Pages<R, H>) -> Result<()>
where
    R: Fn() -> Result<String> + Send + Sync + 'static,
    H: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    let bounds = Bounds {
        name: "metrics",
        max_clients: MAX_CLIENTS,
        deadline: DEADLINE,
    };
    // A scraper refused is closed at once; it tries again at its next interval.
    listener::serve(
        listener,
        bounds,
        move |stream, deadline, admitted| {
            answer(stream, &pages.render, &pages.health, deadline, admitted);
        },
        drop,
    )
    .context("starting the metrics thread")
}

fn answer(
    mut stream: TcpStream,
    render: &dyn Fn() -> Result<String>,
    health: &dyn Fn() -> Result<(), String>,
    deadline: Instant,
    admitted: &Admitted,
) {
    let response = match read_head(&mut stream, deadline) {
        Ok(head) => admitted.working(|| respond(&head, render, health)),
        Err(Unreadable::TooLarge) => reply(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n",
        ),
        // There is no one to answer.
        Err(Unreadable::Gone) => return,
    };
    if write_by(&mut stream, &response, deadline).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        drain(&mut stream, deadline);
    }
}

/// Reads what the client still sends until it closes, briefly: closing a socket with unread
/// data makes the kernel send a reset, which can destroy the answer before the client reads it.
fn drain(stream: &mut TcpStream, deadline: Instant) {
    let until = deadline.min(Instant::now() + LINGER);
    let mut sink = [0u8; 1024];
    let mut left = MAX_REQUEST;
    while left > 0 {
        let Ok(timeout) = remaining(until) else {
            return;
        };
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn respond(
    head: &[u8],
    render: &dyn Fn() -> Result<String>,
    health: &dyn Fn() -> Result<(), String>,
) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return reply("400 Bad Request", "text/plain", "bad request\n");
    };
    let parts: Vec<&str> = line.trim_end_matches('\r').split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return reply("400 Bad Request", "text/plain", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return reply("400 Bad Request", "text/plain", "bad request\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if *method != "GET" || !matches!(path, "/metrics" | "/healthz") {
        return reply(
            "404 Not Found",
            "text/plain",
            "only GET /metrics and GET /healthz are served\n",
        );
    }
    // A probe asks often and must not cost a scrape: it never renders the metrics.
    if path == "/healthz" {
        return match health() {
            Ok(()) => reply("200 OK", "text/plain", "ok\n"),
            Err(reason) => reply(
                "503 Service Unavailable",
                "text/plain",
                &format!("{reason}\n"),
            ),
        };
    }
    match render() {
        Ok(body) => reply("200 OK", CONTENT_TYPE, &body),
        Err(err) => {
            log::error!("metrics: {err:#}");
            reply(
                "500 Internal Server Error",
                "text/plain",
                &format!("{err:#}\n"),
            )
        }
    }
}

fn reply(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

enum Unreadable {
    TooLarge,
    /// The client closed, failed or was too slow.
    Gone,
}

/// The request line and headers, up to the blank line that ends them. A body, which a GET
/// does not have, is never read.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Unreadable> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() >= MAX_REQUEST {
            return Err(Unreadable::TooLarge);
        }
        let left = remaining(deadline).map_err(|_| Unreadable::Gone)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Unreadable::Gone)?;
        let want = chunk.len().min(MAX_REQUEST - head.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(Unreadable::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Unreadable::Gone),
        }
    }
}

/// Where the headers end: at a blank line (CRLF CRLF, or bare LF LF from lenient clients).
fn find_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes all of `bytes` or gives up at `deadline`, however slowly the client reads.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let pages = Pages {
            render: || Ok("enforcer_policy_generation 1\n".to_owned()),
            health: || Ok(()),
        };
        spawn(listener, pages).expect("serving");
        addr
    }

    /// Sends `request` and returns the whole response.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.write_all(request).expect("sending");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reading");
        response
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    #[test]
    fn get_metrics_is_answered_with_the_text_format() {
        let addr = server();
        let response = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
        assert!(
            response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with("\r\n\r\nenforcer_policy_generation 1\n"),
            "{response}"
        );
        assert!(
            response.contains("\r\nContent-Length: 29\r\n"),
            "{response}"
        );
        // A query string does not change what is served.
        let response = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
    }

    #[test]
    fn anything_else_is_not_found_or_bad() {
        let addr = server();
        for (request, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404 Not Found"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (
                b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 Bad Request",
            ),
        ] {
            let response = exchange(addr, request);
            assert_eq!(
                status_line(&response),
                status,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn an_oversized_request_is_refused_without_reading_it_all() {
        let addr = server();
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        request.resize(MAX_REQUEST + 100, b'a');
        let response = exchange(addr, &request);
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn a_silent_client_does_not_hold_up_a_scrape() {
        let addr = server();
        let silent: Vec<TcpStream> = (0..MAX_CLIENTS - 1)
            .map(|_| TcpStream::connect(addr).expect("connecting"))
            .collect();
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        drop(silent);
    }

    /// The audit's attack: more idle connections than there are places, reopened as they
    /// end, kept `/healthz` from answering at all.
    #[test]
    fn idle_connections_beyond_the_bound_do_not_keep_healthz_from_answering() {
        let addr = server();
        let silent: Vec<TcpStream> = (0..3 * MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).expect("connecting"))
            .collect();
        let response = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
        drop(silent);
    }

    #[test]
    fn a_render_error_is_a_server_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let pages = Pages {
            render: || Err(anyhow::anyhow!("maps unreadable")),
            health: || Ok(()),
        };
        spawn(listener, pages).expect("serving");
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 500 Internal Server Error");
        assert!(response.ends_with("maps unreadable\n"), "{response}");
    }

    #[test]
    fn healthz_answers_ok_or_the_reason_without_rendering_metrics() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        };

        let renders = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let addr = listener.local_addr().expect("local addr");
        let pages = Pages {
            render: {
                let renders = Arc::clone(&renders);
                move || {
                    renders.fetch_add(1, Ordering::SeqCst);
                    Ok(String::new())
                }
            },
            health: {
                let healthy = Arc::clone(&healthy);
                move || {
                    if healthy.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("link pin /sys/fs/bpf/x/connect4 is gone".to_owned())
                    }
                }
            },
        };
        spawn(listener, pages).expect("serving");

        let response = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
        assert!(response.ends_with("\r\n\r\nok\n"), "{response}");

        healthy.store(false, Ordering::SeqCst);
        let response = exchange(addr, b"GET /healthz?verbose HTTP/1.0\r\n\r\n");
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 503 Service Unavailable",
            "{response}"
        );
        assert!(
            response.ends_with("\r\n\r\nlink pin /sys/fs/bpf/x/connect4 is gone\n"),
            "{response}"
        );
        let response = exchange(addr, b"POST /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&response), "HTTP/1.1 404 Not Found");
        assert_eq!(
            renders.load(Ordering::SeqCst),
            0,
            "a probe rendered the metrics"
        );
    }
}
