//! A SPIFFE bundle endpoint of the tests' own: HTTPS on loopback with std threads and
//! rustls, serving whatever the test says at the moment (a document, garbage, nothing or a
//! hang), and counting the requests it has read so tests wait on fetches, not on time.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

use crate::pki::Issued;

/// What the endpoint does with the next requests.
#[derive(Clone, Debug)]
pub enum Serve {
    /// `200 OK` with this body.
    Document(String),
    /// `200 OK` with bytes that are no bundle.
    Garbage,
    /// Reads the request and never answers, holding the connection until the server stops.
    Hang,
    /// Closes the connection after the handshake without a word.
    Close,
}

#[derive(Default)]
struct Shared {
    serve: Mutex<Option<Serve>>,
    requests: Mutex<u64>,
    counted: Condvar,
    /// Connections held by `Serve::Hang` that the client has not closed.
    hanging: Mutex<u64>,
    hung: Condvar,
    stop: AtomicBool,
}

pub struct BundleServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl BundleServer {
    /// Serves on a free loopback port with `cert` (followed by `chain`) and `cert`'s key.
    pub fn start(cert: &Issued, chain: &[&Issued], serve: Serve) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("address"), cert, chain, serve)
    }

    /// Serves on `addr`, for a server that comes back where it was.
    pub fn start_at(addr: SocketAddr, cert: &Issued, chain: &[&Issued], serve: Serve) -> Self {
        let certs: Vec<CertificateDer<'static>> = std::iter::once(cert)
            .chain(chain.iter().copied())
            .map(|c| CertificateDer::from(c.der.clone()))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let config = Arc::new(
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocols")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server certificate"),
        );
        let listener = TcpListener::bind(addr).expect("binding the bundle endpoint");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new(Shared::default());
        *shared.serve.lock().expect("lock") = Some(serve);
        let accepting = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, shared) = (Arc::clone(&config), Arc::clone(&accepting));
                thread::spawn(move || answer(stream, config, &shared));
            }
        });
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}/bundle", self.addr)
    }

    pub fn serve(&self, serve: Serve) {
        *self.shared.serve.lock().expect("lock") = Some(serve);
    }

    /// Requests read so far.
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock().expect("lock")
    }

    /// Waits (at most `limit`) until the hang holds exactly `n` connections the client has
    /// not closed; panics with the count otherwise.
    pub fn wait_hanging(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut count = self.shared.hanging.lock().expect("lock");
        while *count != n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the bundle endpoint holds {} hanging connection(s) after {limit:?}, not {n}",
                *count
            );
            count = self.shared.hung.wait_timeout(count, left).expect("lock").0;
        }
    }

    /// Waits (at most `limit`) until the server has read `n` requests in all.
    pub fn wait_requests(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut count = self.shared.requests.lock().expect("lock");
        while *count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the bundle endpoint read {} request(s) within {limit:?}, not {n}",
                *count
            );
            count = self
                .shared
                .counted
                .wait_timeout(count, left)
                .expect("lock")
                .0;
        }
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and closes the listener.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn answer(stream: TcpStream, config: Arc<ServerConfig>, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let serve = shared.serve.lock().expect("lock").clone();
    {
        *shared.requests.lock().expect("lock") += 1;
        shared.counted.notify_all();
    }
    let body = match serve {
        Some(Serve::Document(body)) => body,
        Some(Serve::Garbage) => "\u{1}\u{2}this is not a bundle".to_owned(),
        Some(Serve::Hang) => {
            *shared.hanging.lock().expect("lock") += 1;
            shared.hung.notify_all();
            // Reads until the client gives up and closes, so `hanging` tells whether it does.
            let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(50)));
            while !shared.stop.load(Ordering::SeqCst) {
                match tls.sock.read(&mut buf) {
                    Ok(0) => break,
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Ok(_) | Err(_) => break,
                }
            }
            *shared.hanging.lock().expect("lock") -= 1;
            shared.hung.notify_all();
            return;
        }
        Some(Serve::Close) | None => {
            let _ = tls.sock.shutdown(Shutdown::Both);
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
