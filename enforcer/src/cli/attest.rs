//! `enforcer attest`: the workload's side of attestation, for scripts and tests. It connects
//! to the attestation socket from the calling process (whose cgroup is what gets bound),
//! presents the SVID over TLS 1.3, and prints the daemon's answer.

use std::{
    io::Read as _, os::unix::net::UnixStream, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::TrustDomain;
use jiff::Timestamp;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, Error as TlsError, SignatureScheme,
    StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cli::terminal;
use crate::{
    paths::DEFAULT_ATTEST_SOCKET,
    trust::{self, Bundle, Identity, SvidServerVerifier},
};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// The workload's X.509-SVID as PEM: the leaf, then any intermediates.
    #[arg(long, value_name = "CERT")]
    svid: PathBuf,
    /// The SVID's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Authenticate the daemon: its certificate must be an X.509-SVID of this trust bundle
    /// (the daemon then runs with its own SVID). Without it the daemon is trusted by the
    /// socket's path, whose directory only root can write.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The trust domain of `--bundle`; default: the workload's own.
    #[arg(long, value_name = "NAME", requires = "bundle")]
    bundle_domain: Option<TrustDomain>,
    #[arg(long, default_value = DEFAULT_ATTEST_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let identity = Identity::read(&args.svid, &args.key)?;
    let leaf = identity.chain[0].clone();
    let verifier: Arc<dyn ServerCertVerifier> = match &args.bundle {
        Some(path) => {
            let domain = match args.bundle_domain.clone() {
                Some(domain) => domain,
                None => trust::leaf(&leaf).map(|(id, _)| id.domain).map_err(|why| {
                    anyhow::anyhow!(
                        "{}: not an X.509-SVID ({why}); give --bundle-domain",
                        args.svid.display()
                    )
                })?,
            };
            Arc::new(SvidServerVerifier::new(Bundle::read(path, &domain)?))
        }
        None => Arc::new(TrustedByPath(trust::Signatures::default())),
    };
    let config = ClientConfig::builder_with_provider(trust::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("configuring TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)
        .context("the SVID and the key do not match")?;
    let stream = UnixStream::connect(&args.socket).with_context(|| {
        format!(
            "connecting to the attestation socket {} (is the daemon running with \
             --attest-socket?)",
            args.socket.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let name = ServerName::try_from("enforcer-attestation").context("server name")?;
    let conn = ClientConnection::new(Arc::new(config), name)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut answer = String::new();
    if let Err(err) = tls.read_to_string(&mut answer) {
        let tls_error = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
        if let Some(TlsError::AlertReceived(alert)) = tls_error {
            bail!(
                "the daemon refused the SVID (TLS alert {alert:?}): {}",
                explain(&leaf)
            );
        }
        return Err(err).context("talking TLS to the daemon");
    }
    let answer = answer.trim_end();
    if answer.starts_with("bound ") {
        terminal::text(format_args!("{answer}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if answer.is_empty() {
        bail!("the daemon closed the connection without an answer (see its log)");
    }
    terminal::warn(format_args!("enforcer: the daemon {answer}"));
    Ok(ExitCode::FAILURE)
}

/// Why the daemon most likely refused `leaf` during the handshake, as far as the workload
/// can tell without the daemon's bundles (the daemon logs the exact reason).
fn explain(leaf: &CertificateDer<'_>) -> String {
    match trust::own_id(leaf, Timestamp::now()) {
        Err(why) => format!("it is not a valid X.509-SVID now: {why}"),
        Ok(id) => format!(
            "{id} is well-formed, so either its chain does not lead to the trust bundle the \
             daemon holds for {} (signed by another CA, an intermediate missing or expired), or \
             the daemon has no usable bundle for that domain; the daemon's log says which",
            id.domain
        ),
    }
}

/// Accepts whatever certificate the daemon shows: the client trusts the daemon because only
/// root can create the socket at its path. The TLS signatures are still checked, so the
/// session is bound to the key of the certificate shown.
#[derive(Debug)]
struct TrustedByPath(trust::Signatures);

impl ServerCertVerifier for TrustedByPath {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
