//! How the CLI reaches the daemon: its Unix control socket (`--socket`), or its remote admin
//! endpoint (`--server`) over mutual TLS, where this client presents its X.509-SVID
//! (`--cert`, `--key`) and accepts the daemon only if the daemon's certificate is a valid SVID
//! of the trust domain whose bundle `--bundle` holds (and, with `--server-id`, has that ID).

use std::{
    fmt, io,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use jiff::Timestamp;
use rustls::{AlertDescription, ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

use crate::{
    api::control::{Channel, Request, Response, TIMEOUT},
    observe::event_record::EventRecord,
    paths::DEFAULT_SOCKET,
    trust::{self, Bundle, Identity, SpiffeId, SvidServerVerifier, Usage},
};

/// For connecting and for the TLS handshake; the request itself has the control timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug)]
pub struct Endpoint {
    /// The daemon's control socket [default: /run/enforcer/enforcer.sock].
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "server")]
    socket: Option<PathBuf>,
    /// Reach the daemon's remote admin endpoint (`daemon --admin-listen`) instead, over mutual
    /// TLS; needs --cert, --key and --bundle.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    server: Option<String>,
    /// This client's X.509-SVID (PEM, leaf first, then any intermediates).
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The SVID's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The trust bundle (PEM or SPIFFE JWKS) the daemon's certificate must chain to.
    #[arg(long, global = true, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The daemon's SPIFFE ID, or `spiffe://DOMAIN` for any daemon of that trust domain
    /// [default: the trust domain of this client's own SVID].
    #[arg(long, global = true, value_name = "SPIFFE-ID")]
    server_id: Option<SpiffeId>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{server}"),
            None => write!(f, "{}", self.socket_path().display()),
        }
    }
}

impl Endpoint {
    fn socket_path(&self) -> &Path {
        self.socket
            .as_deref()
            .unwrap_or_else(|| Path::new(DEFAULT_SOCKET))
    }

    /// A connection to the daemon, ready for one request.
    pub fn connect(&self) -> Result<Box<dyn Channel>> {
        match &self.server {
            Some(server) => Ok(Box::new(self.connect_remote(server)?)),
            None => {
                for (flag, given) in [
                    ("--cert", self.cert.is_some()),
                    ("--key", self.key.is_some()),
                    ("--bundle", self.bundle.is_some()),
                    ("--server-id", self.server_id.is_some()),
                ] {
                    if given {
                        bail!("{flag} is only used with --server");
                    }
                }
                Ok(Box::new(connect_socket(self.socket_path())?))
            }
        }
    }

    fn connect_remote(&self, server: &str) -> Result<Remote> {
        let (Some(cert), Some(key), Some(bundle)) = (&self.cert, &self.key, &self.bundle) else {
            bail!(
                "--server needs --cert and --key (this client's SVID) and --bundle (the trust \
                 bundle the daemon's certificate must chain to)"
            );
        };
        let identity = Identity::read(cert, key)?;
        let own = trust::own_id(&identity.chain[0], Timestamp::now())
            .map_err(|err| anyhow!("--cert {}: {err}", cert.display()))?;
        let expected = self.server_id.clone().unwrap_or(SpiffeId {
            domain: own.domain,
            path: String::new(),
        });
        let bundle = Bundle::read(bundle, &expected.domain)?;
        let mut config = ClientConfig::builder_with_provider(trust::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SvidServerVerifier::new(bundle.clone())))
            .with_client_auth_cert(identity.chain, identity.key)
            .with_context(|| format!("--cert {} and --key {}", cert.display(), key.display()))?;
        // The daemon is authenticated by its SPIFFE ID, not by a name: send none.
        config.enable_sni = false;
        let mut tcp = tcp_connect(server)?;
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let name = ServerName::try_from("enforcer-daemon")?;
        let mut tls = ClientConnection::new(Arc::new(config), name)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)
                .map_err(|err| anyhow!("TLS handshake with {server}: {}", explain(err, server)))?;
        }
        let chain = tls
            .peer_certificates()
            .ok_or_else(|| anyhow!("{server} presented no certificate"))?;
        let daemon = trust::verify(
            chain,
            |d| (d == &bundle.domain).then_some(&bundle),
            Usage::Server,
            Timestamp::now(),
        )
        .map_err(|err| anyhow!("the daemon at {server}: {err}"))?;
        if !expected.path.is_empty() && daemon.id != expected {
            bail!(
                "the daemon at {server} is {}, not --server-id {expected}",
                daemon.id
            );
        }
        Ok(Remote {
            tls: StreamOwned::new(tls, tcp),
            server: server.to_owned(),
        })
    }
}

fn tcp_connect(server: &str) -> Result<TcpStream> {
    use std::net::ToSocketAddrs as _;
    let addrs = server
        .to_socket_addrs()
        .with_context(|| format!("--server {server}: expected HOST:PORT"))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(match last {
        Some(err) => anyhow!(err),
        None => anyhow!("no address"),
    })
    .with_context(|| format!("cannot reach the enforcer daemon at {server}"))
}

fn connect_socket(socket: &Path) -> Result<UnixStream> {
    match UnixStream::connect(socket) {
        Ok(stream) => Ok(stream),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => bail!(
            "permission denied: cannot connect to the enforcer daemon at {} (only root may, \
             unless the daemon runs with --admin-group or --read-group)",
            socket.display()
        ),
        Err(err) => Err(err).with_context(|| {
            format!(
                "cannot reach the enforcer daemon at {} (is it running? pass --socket if it \
                 uses another path)",
                socket.display()
            )
        }),
    }
}

/// A TLS connection to a daemon's remote admin endpoint. In TLS 1.3 the daemon judges this
/// client's certificate after the client has finished its handshake, so a refusal arrives
/// as an alert on the first read; errors are reworded to say so.
struct Remote {
    tls: StreamOwned<ClientConnection, TcpStream>,
    server: String,
}

impl io::Read for Remote {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tls.read(buf).map_err(|err| explain(err, &self.server))
    }
}

impl io::Write for Remote {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tls
            .write(buf)
            .map_err(|err| explain(err, &self.server))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tls.flush().map_err(|err| explain(err, &self.server))
    }
}

impl Channel for Remote {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.tls.sock.set_read_timeout(read)?;
        self.tls.sock.set_write_timeout(write)
    }
}

/// Says in words what a TLS failure means for the user.
fn explain(err: io::Error, server: &str) -> io::Error {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return err;
    };
    let message = match tls {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied),
        ) => format!(
            "the daemon at {server} refused this client's certificate (TLS alert {alert:?}); \
             the daemon's log says why"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the daemon at {server} presented a certificate that is not valid for --bundle: {}",
            trust::tls_reason(tls)
        ),
        other => format!("TLS with {server}: {}", trust::tls_reason(other)),
    };
    io::Error::new(err.kind(), message)
}

/// Sends one request to the daemon at `endpoint` and returns its response.
pub fn call(endpoint: &Endpoint, request: &Request) -> Result<Response> {
    let (stream, unsent) = send(endpoint, request)?;
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    match (read, unsent) {
        (Ok(_), _) if !reply.is_empty() => parse_reply(&reply),
        // No reply says more than why the request could not be sent.
        (_, Some(err)) => Err(err).context("sending the request to the daemon"),
        (read, None) => {
            read.context("reading the daemon's reply")?;
            parse_reply(&reply)
        }
    }
}

/// The error for a reply other than the one asked for: the daemon's own message when it
/// refused the request (no rights, a bad request), as it wrote it.
pub fn unexpected(reply: Response) -> anyhow::Error {
    match reply {
        Response::Error { message } => anyhow::anyhow!(message),
        other => anyhow::anyhow!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Asks for decision events, calls `ready` once the daemon has accepted the request (a
/// follower then receives every later event), and hands each event to `each` as it arrives;
/// returns when the daemon ends the stream (when following: never, unless the daemon stops).
pub fn events(
    endpoint: &Endpoint,
    follow: bool,
    ready: impl FnOnce(),
    mut each: impl FnMut(EventRecord) -> Result<()>,
) -> Result<()> {
    let (stream, unsent) = send(endpoint, &Request::Events { follow })?;
    // Events may be minutes apart.
    stream.set_timeouts(None, Some(TIMEOUT))?;
    let mut lines = BufReader::new(stream).lines();
    let first = match (lines.next().transpose(), unsent) {
        (Ok(Some(first)), _) => first,
        (_, Some(err)) => return Err(err).context("sending the request to the daemon"),
        (first, None) => first?.unwrap_or_default(),
    };
    match parse_reply(&first)? {
        Response::Events => ready(),
        other => return Err(unexpected(other)),
    }
    for line in lines {
        let line = line.context("reading events from the daemon")?;
        match serde_json::from_str(&line) {
            Ok(event) => each(event)?,
            // The daemon's last line when it stops following a client, which says why.
            Err(err) => match serde_json::from_str(&line) {
                Ok(Response::Error { message }) => bail!("{message}"),
                _ => {
                    return Err(err).context("the daemon sent an event that is not valid");
                }
            },
        }
    }
    Ok(())
}

/// Connects and sends `request`. The daemon may refuse a request before reading all of it
/// (too large, or a client it refuses outright) and close its end, so the send then fails
/// with `EPIPE`; its reply, which says why, is still waiting to be read. Such a failure is
/// returned beside the stream, for when there is no reply.
fn send(endpoint: &Endpoint, request: &Request) -> Result<(Box<dyn Channel>, Option<io::Error>)> {
    // Made before connecting: the daemon gives a request a deadline from the connection on,
    // and a large policy takes a while to write out (seconds for 24 MiB in a debug build
    // under emulation).
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    let mut stream = endpoint.connect()?;
    stream.set_timeouts(Some(TIMEOUT), Some(TIMEOUT))?;
    match stream
        .write_all(line.as_bytes())
        .and_then(|()| stream.flush())
    {
        Ok(()) => Ok((stream, None)),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok((stream, Some(err)))
        }
        Err(err) => Err(err).context("sending the request to the daemon"),
    }
}

fn parse_reply(reply: &str) -> Result<Response> {
    if reply.is_empty() {
        bail!("the daemon closed the connection without replying");
    }
    serde_json::from_str(reply).context("the daemon's reply is not valid")
}
