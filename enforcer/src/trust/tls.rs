//! rustls glue: SVID identities read from PEM files, and certificate verifiers that accept a
//! TLS peer only when its certificate chain is a valid X.509-SVID (see `svid`). SPIFFE peers
//! are authenticated by SPIFFE ID, never by DNS name, so the server verifier ignores the name
//! the client dialled; what a verified ID may do is the caller's decision after the handshake.

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::TrustDomain;
use jiff::Timestamp;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};

use super::{
    bundle::Bundle,
    svid::{self, Svid, Usage},
};

/// ring: it builds with only a C compiler, which the machines have.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature checks every verifier here shares: rustls's own, with the
/// provider's algorithms. Only the certificate checks differ between verifiers.
#[derive(Debug)]
pub struct Signatures(Arc<CryptoProvider>);

impl Default for Signatures {
    fn default() -> Self {
        Self(crypto_provider())
    }
}

impl Signatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An SVID with its private key, as a workload or the daemon presents it.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// `cert`: the SVID, then any intermediates, as PEM; `key`: its PKCS#8, SEC1 or PKCS#1 key.
    pub fn read(cert: &Path, key: &Path) -> Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading certificates from {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading certificates from {}", cert.display()))?;
        if chain.is_empty() {
            bail!("{} holds no PEM certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading a private key from {}", key.display()))?;
        Ok(Self { chain, key })
    }
}

/// The bundles in force, by trust domain; replaced whenever the policy or a bundle changes.
pub type Bundles = Arc<RwLock<BTreeMap<TrustDomain, Bundle>>>;

fn now() -> Timestamp {
    Timestamp::now()
}

fn refused(err: svid::SvidError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// What a failed handshake says, in the verifier's own words when it refused a certificate.
pub fn reason(err: &TlsError) -> String {
    match err {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(why))) => {
            format!("invalid certificate: {why}")
        }
        other => other.to_string(),
    }
}

/// Accepts a client whose certificate is a valid X.509-SVID of a domain in `bundles`.
pub struct SvidClientVerifier {
    bundles: Bundles,
    signatures: Signatures,
}

impl SvidClientVerifier {
    pub fn new(bundles: Bundles) -> Self {
        Self {
            bundles,
            signatures: Signatures::default(),
        }
    }

    /// The SVID a completed handshake's client presented.
    pub fn svid(&self, chain: &[CertificateDer<'_>]) -> Result<Svid, svid::SvidError> {
        let bundles = self
            .bundles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        svid::verify(chain, |domain| bundles.get(domain), Usage::Client, now())
    }
}

impl fmt::Debug for SvidClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidClientVerifier")
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        self.svid(&chain).map_err(refused)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Accepts a server whose certificate is a valid X.509-SVID of `bundle`'s trust domain.
pub struct SvidServerVerifier {
    bundle: Bundle,
    signatures: Signatures,
}

impl SvidServerVerifier {
    pub fn new(bundle: Bundle) -> Self {
        Self {
            bundle,
            signatures: Signatures::default(),
        }
    }
}

impl fmt::Debug for SvidServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidServerVerifier")
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        let bundle = &self.bundle;
        svid::verify(
            &chain,
            |domain| (domain == &bundle.domain).then_some(bundle),
            Usage::Server,
            now(),
        )
        .map_err(refused)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
