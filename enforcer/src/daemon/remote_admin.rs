//! `daemon --admin-listen`: the control protocol for remote administrators, over mutual TLS.
//! A client is served only after the TLS handshake has verified its certificate as an
//! X.509-SVID of the admin trust domain (the domain of `--admin-id`, whose CAs are in
//! `--admin-bundle`) and its SPIFFE ID matches an `--admin-id`; a client without a certificate,
//! with an invalid SVID or an SVID of another domain fails the handshake, and one with another
//! ID of the admin domain is answered with an error and nothing else. Admins have full rights,
//! as root has on the control socket. Every refusal is logged with the peer's address and why,
//! every accepted request with the admin's SPIFFE ID and the request's kind.

mod admins;

use std::{
    cell::Cell,
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use jiff::Timestamp;
use rustls::{ServerConfig, ServerConnection, StreamOwned, server::NoServerSessionStorage};

pub use self::admins::{AdminId, Admins};
use crate::{
    api::control::{self, Channel, Limits, Response},
    daemon::{self, access::Rights, machine::Daemon, serve::EventService},
    listener::{self, Admitted, Bounds, remaining},
    trust::{
        self, Bundle, Bundles, Identity, SvidClientVerifier, Usage, current_svid::CurrentSvid,
    },
};

/// For the TCP connection's whole TLS handshake, from being accepted.
const HANDSHAKE: Duration = Duration::from_secs(10);
const MAX_CLIENTS: usize = 8;
/// How long a refused client may go on sending before its connection is closed: closing with
/// unread data sends a reset, which can destroy the alert or answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    /// Serve the control protocol to remote admins over mutual TLS at ADDR:PORT (off by
    /// default); needs --admin-bundle, --admin-id and the daemon's SVID (--tls-cert and
    /// --tls-key, or --workload-api).
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["admin_bundle", "admin_id"], env = "ENFORCER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// The daemon's own X.509-SVID (PEM, leaf first), presented to remote admins and to
    /// attestation clients (which otherwise get the Workload API's SVID, or a self-signed
    /// certificate).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "ENFORCER_TLS_CERT"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "ENFORCER_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// The trust bundle (PEM or SPIFFE JWKS) of the admin trust domain.
    #[arg(
        long,
        value_name = "FILE",
        requires = "admin_listen",
        env = "ENFORCER_ADMIN_BUNDLE"
    )]
    admin_bundle: Option<PathBuf>,
    /// A SPIFFE ID allowed to administer this daemon remotely, or `spiffe://DOMAIN/PATH/*` for
    /// that path and every path below it. Repeatable or comma separated; all in one trust
    /// domain.
    #[arg(
        long,
        value_name = "SPIFFE-ID",
        requires = "admin_listen",
        value_delimiter = ',',
        env = "ENFORCER_ADMIN_ID"
    )]
    admin_id: Vec<AdminId>,
}

impl Args {
    /// The daemon's own SVID and key, which the attestation socket presents too.
    pub fn tls(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }
}

/// A checked configuration, ready to bind.
pub struct RemoteAdmin {
    listen: SocketAddr,
    server: Server,
}

/// What each connection needs besides the daemon.
#[derive(Clone)]
struct Server {
    tls: Arc<ServerConfig>,
    verifier: Arc<SvidClientVerifier>,
    admins: Arc<Admins>,
}

impl RemoteAdmin {
    /// Reads and checks everything `args` names, changing nothing on the host; `None` when
    /// no remote endpoint is asked for. `live` is the daemon's SVID from the Workload API,
    /// used when `args` names no SVID files.
    pub fn from_args(args: Args, live: Option<&Arc<CurrentSvid>>) -> Result<Option<Self>> {
        let (Some(listen), Some(bundle)) = (args.admin_listen, args.admin_bundle) else {
            // clap makes these two and at least one --admin-id come together.
            return Ok(None);
        };
        let admins = Admins::new(args.admin_id).map_err(|err| anyhow!("--admin-id: {err}"))?;
        let bundle = Bundle::read(&bundle, &admins.domain)
            .map_err(|err| anyhow!("--admin-bundle: {err}"))?;
        let svid = match (args.tls_cert, args.tls_key, live) {
            (Some(cert), Some(key), _) => {
                Self::own_svid(&cert, &key, &admins, &bundle).map_err(|err| {
                    anyhow!(
                        "--tls-cert {} with --tls-key {}: {err:#}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
            (_, _, Some(live)) => Arc::clone(live),
            _ => bail!(
                "--admin-listen needs the daemon's own SVID: --tls-cert and --tls-key, or \
                 --workload-api"
            ),
        };
        let bundles: Bundles = Arc::new(RwLock::new(BTreeMap::from([(
            admins.domain.clone(),
            bundle,
        )])));
        let verifier = Arc::new(SvidClientVerifier::new(bundles));
        let mut tls = ServerConfig::builder_with_provider(trust::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::clone(&verifier) as _)
            .with_cert_resolver(svid);
        // No resumption: every connection presents and proves its SVID afresh.
        tls.session_storage = Arc::new(NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        Ok(Some(Self {
            listen,
            server: Server {
                tls: Arc::new(tls),
                verifier,
                admins: Arc::new(admins),
            },
        }))
    }

    /// The SVID files, checked: the SVID rules and validity, and against `bundle` when the
    /// daemon's own domain is the admin domain (the only bundle of its domain at hand).
    fn own_svid(
        cert: &std::path::Path,
        key: &std::path::Path,
        admins: &Admins,
        bundle: &Bundle,
    ) -> Result<Arc<CurrentSvid>> {
        let identity = Identity::read(cert, key)?;
        let now = Timestamp::now();
        let own = trust::own_id(&identity.chain[0], now).map_err(|err| anyhow!("{err}"))?;
        if own.domain == admins.domain {
            trust::verify(&identity.chain, |_| Some(bundle), Usage::Server, now)
                .map_err(|err| anyhow!("not valid for --admin-bundle: {err}"))?;
        }
        Ok(CurrentSvid::fixed(identity)?)
    }

    /// Binds the address. Called before anything on the host changes, so an address that
    /// cannot be used stops the daemon with nothing changed.
    pub fn bind(self) -> Result<Listening> {
        let listener = TcpListener::bind(self.listen).map_err(|err| {
            anyhow!(
                "cannot serve remote admins on --admin-listen {}: {err}; nothing was changed",
                self.listen
            )
        })?;
        Ok(Listening {
            listener,
            server: self.server,
        })
    }
}

pub struct Listening {
    listener: TcpListener,
    server: Server,
}

impl Listening {
    /// Serves remote admins from a thread of its own, each connection on a thread of its own.
    pub fn spawn(self, daemon: Arc<Mutex<Daemon>>, events: EventService) -> Result<()> {
        let addr = self.listener.local_addr()?;
        let Self { listener, server } = self;
        let bounds = Bounds {
            name: "remote admin",
            max_clients: MAX_CLIENTS,
            deadline: HANDSHAKE,
        };
        listener::serve(
            listener,
            bounds,
            move |stream, handshake_by, admitted| {
                server.answer(stream, handshake_by, admitted, &daemon, &events);
            },
            |stream| {
                log::warn!(
                    "remote admin: refused {}: {MAX_CLIENTS} clients are being answered",
                    peer_name(&stream)
                );
            },
        )
        .context("starting the remote admin thread")?;
        log::info!("remote admin endpoint on {addr} (mutual TLS)");
        Ok(())
    }
}

impl Server {
    fn answer(
        &self,
        mut tcp: TcpStream,
        handshake_by: Instant,
        admitted: &Admitted,
        daemon: &Mutex<Daemon>,
        events: &EventService,
    ) {
        let peer = peer_name(&tcp);
        let mut tls = match ServerConnection::new(Arc::clone(&self.tls)) {
            Ok(tls) => tls,
            Err(err) => {
                log::error!("remote admin: {peer}: {err}");
                return;
            }
        };
        if let Err(err) = handshake(&mut tls, &mut tcp, handshake_by) {
            log::warn!("remote admin: refused {peer}: TLS handshake failed: {err}");
            linger(&mut tcp);
            return;
        }
        // The handshake verified the chain; deriving the SVID again gives its ID.
        let svid = tls
            .peer_certificates()
            .ok_or_else(|| "no client certificate".to_owned())
            .and_then(|chain| self.verifier.svid(chain).map_err(|err| err.to_string()));
        let svid = match svid {
            Ok(svid) => svid,
            Err(err) => {
                log::warn!("remote admin: refused {peer}: {err}");
                return;
            }
        };
        // An administrator who proved who they are is never made to give way to a newcomer.
        admitted.keep();
        let stream = AdminStream {
            tls: StreamOwned::new(
                tls,
                Tcp {
                    tcp,
                    until: Cell::new(None),
                },
            ),
            expires: svid.expires,
        };
        // The request must arrive within the deadline after the handshake, which had its own.
        let limits = Limits {
            max: Rights::Full.max_request(),
            accepted: Instant::now(),
        };
        if let Err(message) = self.admins.check(&svid.id) {
            log::warn!("remote admin: refused {peer}: {message}");
            stream.refuse(message);
            return;
        }
        let id = svid.id;
        daemon::serve::answer(daemon, events, stream, limits, Rights::Full, |request| {
            log::info!("remote admin: {id} from {peer}: {}", request.kind());
            Ok(())
        });
    }
}

fn peer_name(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "an unknown peer".to_owned(), |addr| addr.to_string())
}

/// Completes the server's side of the handshake by `deadline`; on failure rustls has sent the
/// client the alert that says why.
fn handshake(tls: &mut ServerConnection, tcp: &mut TcpStream, deadline: Instant) -> Result<()> {
    while tls.is_handshaking() {
        let left = remaining(deadline).context("the client did not finish in time")?;
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        match tls.complete_io(tcp) {
            Ok((0, 0)) if tls.is_handshaking() => bail!("the client closed the connection"),
            Ok(_) => {}
            Err(err) => return Err(tls_error(err)),
        }
    }
    Ok(())
}

/// rustls's own error, which says what was wrong with the certificate, when there is one.
fn tls_error(err: io::Error) -> anyhow::Error {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => anyhow!("{}", trust::tls_reason(tls)),
        None => anyhow!(err),
    }
}

/// Closes a refused connection gracefully: stops sending and reads what the client still
/// sends, briefly.
fn linger(tcp: &mut TcpStream) {
    if tcp.shutdown(Shutdown::Write).is_err() || tcp.set_read_timeout(Some(LINGER)).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < until {
        match tcp.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// An authenticated admin's connection.
struct AdminStream {
    tls: StreamOwned<ServerConnection, Tcp>,
    /// When the SVID that authenticated it stops proving anything.
    expires: Timestamp,
}

impl AdminStream {
    /// Answers with `message` without reading the request, as the control socket refuses a
    /// client with no rights, then closes gracefully so the answer is not lost to a reset.
    fn refuse(mut self, message: String) {
        let refused = self
            .set_timeouts(None, Some(LINGER))
            .map_err(anyhow::Error::from)
            .and_then(|()| control::write_response(&mut self, &Response::Error { message }))
            .and_then(|()| Ok(self.finish()?));
        match refused {
            Ok(()) => linger(&mut self.tls.sock.tcp),
            Err(err) => log::warn!("remote admin: could not answer a refusal: {err:#}"),
        }
    }
}

impl Read for AdminStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tls.read(buf)
    }
}

impl Write for AdminStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tls.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tls.flush()
    }
}

impl Channel for AdminStream {
    /// A read deadline here holds for every socket read until the next call, not for each:
    /// see [`Tcp`].
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        let until = read.and_then(|read| Instant::now().checked_add(read));
        self.tls.sock.until.set(until);
        if until.is_none() {
            self.tls.sock.tcp.set_read_timeout(None)?;
        }
        self.tls.sock.tcp.set_write_timeout(write)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.tls.conn.send_close_notify();
        self.tls.flush()
    }

    fn expires(&self) -> Option<Timestamp> {
        Some(self.expires)
    }
}

/// The TCP connection under an admin's TLS session. One TLS read may read the socket many
/// times before a record is whole, so a timeout for each socket read would let a client that
/// sends a byte at a time hold the connection for as long as it liked; each socket read gets
/// only the time left until `until` instead.
struct Tcp {
    tcp: TcpStream,
    until: Cell<Option<Instant>>,
}

impl Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.until.get() {
            self.tcp.set_read_timeout(Some(remaining(until)?))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
