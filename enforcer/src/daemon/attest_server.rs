//! The attestation socket: a Unix socket any local process may connect to (the proof is the
//! SVID, not who connects), speaking TLS 1.3 with mandatory client certificates that must be
//! valid X.509-SVIDs of a domain whose bundle the daemon holds. Each connection gets one
//! line back: `bound CGROUP to DOMAIN as SPIFFE-ID until TIME` or `refused: REASON`.

use std::{
    io::Write as _,
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{
    daemon::{self, machine::Daemon},
    kernel::cgroupfs::CgroupFs,
    listener::{self, Admitted, Bounds, remaining},
    trust::{
        self, Bundles, SvidClientVerifier,
        attestation::{Claim, peer::Peer},
        current_svid::CurrentSvid,
    },
};

/// For a client's whole TLS handshake, from being accepted: one that stalls is cut off then,
/// so it cannot hold a thread.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// For sending the answer and closing.
const ANSWER: Duration = Duration::from_secs(10);
/// Attestations handled at once; more connections are closed unanswered until one ends.
const MAX_CLIENTS: usize = 32;

/// Binds the attestation socket: mode 0666 in a directory created 0711, replacing a stale
/// socket file but never one a live daemon answers on.
pub fn bind(path: &Path) -> Result<UnixListener> {
    daemon::serve::bind_socket(path, true).context("binding the attestation socket")
}

/// The certificate the daemon shows clients: its own SVID when it has one (files, or the
/// Workload API's current one), otherwise a self-signed certificate made at start. Clients of
/// the latter trust the daemon by the socket's path (its directory is root's), not by the
/// certificate.
pub fn identity(own: Option<Arc<CurrentSvid>>) -> Result<Arc<dyn ResolvesServerCert>> {
    let made = rcgen::generate_simple_self_signed(vec!["enforcer-attestation".to_owned()])
        .context("making the attestation socket's certificate")?;
    let made = CertifiedKey::from_der(
        vec![CertificateDer::from(made.cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der())),
        &trust::crypto_provider(),
    )
    .context("the attestation socket's certificate and key do not match")?;
    Ok(Arc::new(OwnOrMade {
        own,
        made: Arc::new(made),
    }))
}

/// The daemon's own SVID when it has one now, else the certificate made at start: an SVID
/// from the Workload API may not have arrived yet (or the agent issues the daemon none), and
/// attestation must not stop for it.
#[derive(Debug)]
struct OwnOrMade {
    own: Option<Arc<CurrentSvid>>,
    made: Arc<CertifiedKey>,
}

impl ResolvesServerCert for OwnOrMade {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.own {
            Some(own) => own.resolve(hello).or_else(|| Some(Arc::clone(&self.made))),
            None => Some(Arc::clone(&self.made)),
        }
    }
}

pub struct Server {
    listener: UnixListener,
    attestations: Attestations,
}

/// What answering a client needs besides the daemon.
struct Attestations {
    config: Arc<ServerConfig>,
    verifier: Arc<SvidClientVerifier>,
    cgroups: CgroupFs,
}

impl Server {
    pub fn new(
        listener: UnixListener,
        identity: Arc<dyn ResolvesServerCert>,
        bundles: Bundles,
        cgroups: CgroupFs,
    ) -> Result<Self> {
        let verifier = Arc::new(SvidClientVerifier::new(bundles));
        let config = ServerConfig::builder_with_provider(trust::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("configuring TLS 1.3")?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(identity);
        Ok(Self {
            listener,
            attestations: Attestations {
                config: Arc::new(config),
                verifier,
                cgroups,
            },
        })
    }

    /// Answers the socket on a thread of its own, each client on a thread of its own.
    pub fn spawn(self, daemon: Arc<Mutex<Daemon>>) -> Result<()> {
        let Self {
            listener,
            attestations,
        } = self;
        let bounds = Bounds {
            name: "attestation",
            max_clients: MAX_CLIENTS,
            deadline: HANDSHAKE,
        };
        listener::serve(
            listener,
            bounds,
            move |stream, handshake_by, admitted| {
                attestations.answer(stream, handshake_by, admitted, &daemon);
            },
            |_| log::warn!("attestation refused: too many clients at once"),
        )
        .context("starting the attestation thread")
    }
}

impl Attestations {
    fn answer(
        &self,
        stream: UnixStream,
        handshake_by: Instant,
        admitted: &Admitted,
        daemon: &Mutex<Daemon>,
    ) {
        // Taken first: the kernel recorded the client when it connected.
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                log::warn!("attestation refused: cannot tell who connected: {err:#}");
                return;
            }
        };
        // Described before the handshake, while the client waits for it: a client refused in
        // the handshake may have exited by the time the refusal is logged.
        let who = match peer.cgroup(|p| self.cgroups.id(p)) {
            Ok((cgroup, _)) => format!("pid {} in cgroup {cgroup}", peer.pid),
            Err(_) => format!("pid {}", peer.pid),
        };
        let mut tls = match ServerConnection::new(Arc::clone(&self.config)) {
            Ok(conn) => StreamOwned::new(conn, stream),
            Err(err) => {
                log::error!("attestation by {}: {err}", who);
                return;
            }
        };
        // The whole handshake, however slowly the client's bytes trickle in, by the deadline.
        while tls.conn.is_handshaking() {
            let step = remaining(handshake_by)
                .and_then(|left| {
                    tls.sock.set_read_timeout(Some(left))?;
                    tls.sock.set_write_timeout(Some(left))
                })
                .and_then(|()| tls.conn.complete_io(&mut tls.sock));
            if let Err(err) = step {
                // rustls has sent the client an alert saying why, if it had one.
                log::warn!(
                    "attestation by {} refused: TLS handshake failed: {}",
                    who,
                    handshake_failure(&err)
                );
                return;
            }
        }
        let reply = admitted.working(|| self.judge(&tls, &peer, daemon));
        // Sending the answer (and reading the client's goodbye) gets time of its own: waiting
        // for the daemon was not the client's doing.
        if let Err(err) = tls
            .sock
            .set_write_timeout(Some(ANSWER))
            .and_then(|()| tls.sock.set_read_timeout(Some(ANSWER)))
        {
            log::error!("attestation by {}: {err}", who);
            return;
        }
        let line = match &reply {
            Ok(bound) => format!("{bound}\n"),
            Err(why) => format!("refused: {why}\n"),
        };
        let sent = tls
            .write_all(line.as_bytes())
            .and_then(|()| {
                tls.conn.send_close_notify();
                tls.flush()
            })
            .and_then(|()| tls.conn.complete_io(&mut tls.sock).map(drop));
        if let Err(err) = sent {
            log::warn!("attestation by {}: could not send the answer: {err}", who);
        }
    }

    /// The verified SVID and the peer's cgroup, put to the daemon.
    fn judge(
        &self,
        tls: &StreamOwned<ServerConnection, UnixStream>,
        peer: &Peer,
        daemon: &Mutex<Daemon>,
    ) -> Result<String, String> {
        let refuse = |subject: String, why: String| {
            log::warn!("attestation by {subject} refused: {why}");
            why
        };
        let chain = tls.conn.peer_certificates().unwrap_or_default();
        // The handshake verified it; verified again for its ID, against the bundles now.
        let svid = self
            .verifier
            .svid(chain)
            .map_err(|err| refuse(format!("pid {}", peer.pid), format!("invalid SVID: {err}")))?;
        let (cgroup, cgroup_id) = peer.cgroup(|p| self.cgroups.id(p)).map_err(|err| {
            refuse(
                format!("pid {} as {}", peer.pid, svid.id),
                format!("{err:#}"),
            )
        })?;
        let subject = format!("pid {} in cgroup {cgroup} as {}", peer.pid, svid.id);
        let claim = Claim {
            svid,
            cgroup,
            cgroup_id,
            pid: peer.pid,
        };
        daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .attest(&claim)
            .map_err(|why| refuse(subject, why))
    }
}

/// Why a handshake failed, with an SVID's refusal spelled out (rustls shows it as a debug
/// dump).
fn handshake_failure(err: &std::io::Error) -> String {
    let tls = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("invalid SVID: {}", other.0)
        }
        _ => err.to_string(),
    }
}
