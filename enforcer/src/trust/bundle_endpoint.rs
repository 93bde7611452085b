//! Fetching a domain's bundle from its SPIFFE bundle endpoint (SPIFFE Federation 5.2), one
//! task per endpoint on the daemon's async runtime. Each task polls at the refresh hint the
//! document carries, keeps the last good bundle when a fetch fails, and reports every
//! outcome in a [`Report`] that `TrustState` reads on the daemon's tick. A fetch is bounded in
//! time and size, so a slow or hostile endpoint costs one task's wait and nothing else.
//!
//! What ties a served document to its trust domain (Federation 7.3), since a JWK set names
//! no domain:
//! - every CA in it must be a signing certificate fit for this domain: a CA that carries a
//!   SPIFFE ID of another domain refuses the document (`certificate::signing`);
//! - `https_spiffe`: the server must present an X.509-SVID that the domain's bundle in force
//!   verifies and whose SPIFFE ID is `endpoint_id` (a SPIFFE ID of the domain itself), and
//!   the served bundle must in turn verify that same SVID: a document that cannot is another
//!   domain's bundle, or one that would lock the endpoint out, and is refused;
//! - `https_web`: the server must present a certificate for the URL's host that chains to a
//!   Web PKI root (webpki-roots, or `--bundle-endpoint-roots`); nothing more ties the
//!   document to the domain than who runs that host, as the standard says.
//!
//! A refused document counts as a failed fetch: the last good bundle stays in force.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::{BundleEndpoint, EndpointProfile, SpiffeId, TrustDomain};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{ACCEPT, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
use tokio::{net::TcpStream, runtime::Handle, task::AbortHandle};
use tokio_rustls::TlsConnector;

use super::{
    bundle::Bundle,
    svid::{self, Usage},
    tls::{self, Signatures},
};

/// Bundles are a handful of certificates; the same limit as for a bundle file.
const MAX_BYTES: usize = 1 << 20;
/// A whole fetch (connect, handshake, request, body) gets this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// When the document gives no `spiffe_refresh_hint`: SPIRE's own default.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The longest wait between fetches, whatever the hint says: a day.
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// The shortest, unless `--bundle-endpoint-min-refresh` says otherwise.
const MIN_REFRESH: Duration = Duration::from_secs(10);

/// Daemon flags for bundle endpoints.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "bundle_endpoints")]
pub struct Args {
    /// PEM file of CA certificates that authenticate `https_web` bundle endpoints instead of
    /// the Web PKI roots built in (webpki-roots): for a private CA, or a test's.
    #[arg(long, value_name = "FILE", env = "ENFORCER_BUNDLE_ENDPOINT_ROOTS")]
    bundle_endpoint_roots: Option<PathBuf>,
    /// The shortest wait between fetches of a bundle endpoint, whatever its refresh hint
    /// says; failures back off from it. Lower it only for tests.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = enforcer_policy::parse_duration, env = "ENFORCER_BUNDLE_ENDPOINT_MIN_REFRESH")]
    bundle_endpoint_min_refresh: Duration,
}

struct Settings {
    roots: Arc<RootCertStore>,
    min_refresh: Duration,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Takes the daemon's flags; a roots file that holds no certificate is an error now rather
/// than at the first fetch.
pub fn configure(args: &Args) -> Result<()> {
    let roots = match &args.bundle_endpoint_roots {
        None => web_roots(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                let cert = cert.with_context(|| format!("reading {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            roots
        }
    };
    let settings = Settings {
        roots: Arc::new(roots),
        min_refresh: args.bundle_endpoint_min_refresh.min(MAX_REFRESH),
    };
    // The daemon configures once, before any poller starts.
    let _ = SETTINGS.set(settings);
    Ok(())
}

fn web_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings {
        roots: Arc::new(web_roots()),
        min_refresh: MIN_REFRESH,
    })
}

/// What is known of one endpoint, as its task last left it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The last bundle fetched and accepted.
    pub bundle: Option<Bundle>,
    pub attempted: Option<Timestamp>,
    pub succeeded: Option<Timestamp>,
    /// Why the last fetch failed; `None` after a success.
    pub error: Option<String>,
    pub next: Option<Timestamp>,
    /// The wait between fetches in force (the hint, bounded).
    pub refresh: Duration,
    pub fetches: u64,
    pub failures: u64,
    /// Fetches that brought a bundle different from the one before.
    pub changes: u64,
    /// Counts outcomes, so a reader sees each one once.
    pub serial: u64,
}

/// A running endpoint task; dropping the last handle stops it.
pub struct Poller {
    domain: TrustDomain,
    endpoint: BundleEndpoint,
    report: Arc<Mutex<Report>>,
    task: AbortHandle,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Poller({} from {})", self.domain, self.endpoint.url)
    }
}

impl Poller {
    /// Starts fetching `domain`'s bundle from `endpoint` at once. `bootstrap` is the bundle
    /// an `https_spiffe` endpoint is first authenticated with.
    pub fn start(
        runtime: &Handle,
        domain: &TrustDomain,
        endpoint: &BundleEndpoint,
        bootstrap: Option<Bundle>,
    ) -> Arc<Self> {
        let report = Arc::new(Mutex::new(Report::default()));
        let task = runtime
            .spawn(poll(
                domain.clone(),
                endpoint.clone(),
                bootstrap,
                Arc::clone(&report),
            ))
            .abort_handle();
        Arc::new(Self {
            domain: domain.clone(),
            endpoint: endpoint.clone(),
            report,
            task,
        })
    }

    /// Whether this task fetches what `endpoint` names (where in the policy it is aside).
    pub fn fetches(&self, domain: &TrustDomain, endpoint: &BundleEndpoint) -> bool {
        &self.domain == domain
            && self.endpoint.url == endpoint.url
            && self.endpoint.profile == endpoint.profile
    }

    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn poll(
    domain: TrustDomain,
    endpoint: BundleEndpoint,
    mut current: Option<Bundle>,
    report: Arc<Mutex<Report>>,
) {
    let min = settings().min_refresh;
    let mut refresh = DEFAULT_REFRESH.clamp(min, MAX_REFRESH);
    let mut failed_in_a_row = 0u32;
    loop {
        let attempted = Timestamp::now();
        let outcome = tokio::time::timeout(FETCH_TIMEOUT, fetch(&domain, &endpoint, &current))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no complete answer within {}s",
                    FETCH_TIMEOUT.as_secs()
                ))
            });
        let wait = match &outcome {
            Ok((_, hint)) => {
                failed_in_a_row = 0;
                refresh = hint
                    .map_or(DEFAULT_REFRESH, Duration::from_secs)
                    .clamp(min, MAX_REFRESH);
                refresh
            }
            // Backs off from the shortest wait, doubling, and never waits longer than a
            // success would: a failing endpoint is asked again at the next interval at most.
            Err(_) => {
                failed_in_a_row = failed_in_a_row.saturating_add(1);
                min.saturating_mul(1 << failed_in_a_row.min(16).saturating_sub(1))
                    .min(refresh)
            }
        };
        {
            let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
            r.attempted = Some(attempted);
            r.fetches += 1;
            r.refresh = refresh;
            match outcome {
                Ok((bundle, _)) => {
                    if r.bundle.as_ref() != Some(&bundle) {
                        r.changes += 1;
                    }
                    r.succeeded = Some(Timestamp::now());
                    r.error = None;
                    r.bundle = Some(bundle.clone());
                    current = Some(bundle);
                }
                Err(why) => {
                    r.failures += 1;
                    r.error = Some(why);
                }
            }
            r.next = jiff::SignedDuration::try_from(wait)
                .ok()
                .and_then(|w| Timestamp::now().checked_add(w).ok());
            r.serial += 1;
        }
        tokio::time::sleep(wait).await;
    }
}

/// One fetch: the accepted bundle and the document's refresh hint in seconds.
async fn fetch(
    domain: &TrustDomain,
    endpoint: &BundleEndpoint,
    current: &Option<Bundle>,
) -> Result<(Bundle, Option<u64>), String> {
    let uri: hyper::Uri = endpoint
        .url
        .parse()
        .map_err(|err| format!("bad URL: {err}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|err| format!("`{host}` is not a host name: {err}"))?;
    let builder = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let config = match &endpoint.profile {
        EndpointProfile::HttpsWeb => builder
            .with_root_certificates(Arc::clone(&settings().roots))
            .with_no_client_auth(),
        EndpointProfile::HttpsSpiffe { endpoint_id } => {
            let Some(bundle) = current.clone() else {
                return Err("no bundle to authenticate the endpoint with".into());
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EndpointVerifier {
                    bundle,
                    endpoint_id: endpoint_id.clone(),
                    signatures: Signatures::default(),
                }))
                .with_no_client_auth()
        }
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|err| format!("cannot connect to {host}:{port}: {err}"))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|err| {
            let why = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<TlsError>())
                .map_or_else(|| err.to_string(), tls::reason);
            format!("TLS handshake with {host}:{port} failed: {why}")
        })?;
    let presented: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("HTTP: {err}"))?;
    // The connection is driven by a task of its own, which must end with this fetch however
    // it ends (a timeout drops it mid-way): a hanging endpoint would otherwise keep one
    // connection open per attempt.
    let _driver = Driver(tokio::spawn(connection));
    let request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, concat!("enforcer/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("building the request: {err}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("HTTP: {err}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("the endpoint answered HTTP {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|err| format!("reading the document (limit {MAX_BYTES} bytes): {err}"))
    }
    .await;
    let body = result?;
    let spiffe_svid = match endpoint.profile {
        EndpointProfile::HttpsSpiffe { .. } => Some(presented.as_slice()),
        EndpointProfile::HttpsWeb => None,
    };
    document(domain, &body, spiffe_svid)
}

/// Aborts the task driving a fetch's connection when the fetch ends.
struct Driver<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a served document as `domain`'s bundle. `endpoint_svid`: the chain an
/// `https_spiffe` endpoint presented, which the new bundle must verify.
fn document(
    domain: &TrustDomain,
    body: &[u8],
    endpoint_svid: Option<&[CertificateDer<'static>]>,
) -> Result<(Bundle, Option<u64>), String> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the endpoint served no SPIFFE bundle document (a JSON object)".into());
    }
    let bundle = Bundle::parse(body, domain).map_err(|err| err.to_string())?;
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let hint = match doc.get("spiffe_refresh_hint") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            format!("`spiffe_refresh_hint` must be a whole number of seconds, found {v}")
        })?),
    };
    if let Some(chain) = endpoint_svid
        && !bundle.is_empty()
    {
        svid::verify(
            chain,
            |d| (d == domain).then_some(&bundle),
            Usage::Server,
            Timestamp::now(),
        )
        .map_err(|err| {
            format!(
                "the served bundle does not verify the endpoint's own SVID ({err}): it is not \
                 the bundle of {domain}"
            )
        })?;
    }
    Ok((bundle, hint))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Accepts an endpoint server whose certificate is an X.509-SVID of `bundle`'s domain with
/// the SPIFFE ID `endpoint_id` (Federation 5.2.2).
struct EndpointVerifier {
    bundle: Bundle,
    endpoint_id: SpiffeId,
    signatures: Signatures,
}

impl std::fmt::Debug for EndpointVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointVerifier({})", self.endpoint_id)
    }
}

impl ServerCertVerifier for EndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let refused = |why: String| {
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
                why,
            )))))
        };
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        let bundle = &self.bundle;
        let svid = svid::verify(
            &chain,
            |d| (d == &bundle.domain).then_some(bundle),
            Usage::Server,
            Timestamp::now(),
        )
        .map_err(|err| refused(err.to_string()))?;
        if svid.id != self.endpoint_id {
            return Err(refused(format!(
                "the endpoint presented the SVID of {}, not of endpoint_id {}",
                svid.id, self.endpoint_id
            )));
        }
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

#[cfg(test)]
mod tests {
    use enforcer_tests::pki::{Issued, Spec, jwks};

    use super::*;

    fn domain(name: &str) -> TrustDomain {
        name.parse().expect("valid")
    }

    #[test]
    fn documents_are_bound_to_their_domain() {
        let prod = domain("prod.example.org");
        let ca = Issued::self_signed(&Spec::ca("prod.example.org"));
        let other = Issued::self_signed(&Spec::ca("staging.example.org"));
        let (bundle, hint) = document(&prod, jwks(&[&ca]).as_bytes(), None).expect("valid");
        assert_eq!((bundle.authorities.len(), hint), (1, Some(300)));
        let err = document(&prod, jwks(&[&other]).as_bytes(), None).expect_err("other");
        assert!(err.contains("names another trust domain"), "{err}");
        assert!(
            document(&prod, ca.pem.as_bytes(), None)
                .expect_err("pem")
                .contains("no SPIFFE bundle document")
        );
        let bad_hint = jwks(&[&ca]).replace("300", "\"soon\"");
        assert!(
            document(&prod, bad_hint.as_bytes(), None)
                .expect_err("hint")
                .contains("whole number of seconds")
        );

        // An https_spiffe endpoint's own SVID must verify against what it serves.
        let svid = ca.issue(&Spec::leaf("spiffe://prod.example.org/bundles"));
        let chain = [CertificateDer::from(svid.der.clone())];
        assert!(document(&prod, jwks(&[&ca]).as_bytes(), Some(&chain)).is_ok());
        let mut unsigned = Spec::ca("prod.example.org");
        unsigned.uris.clear();
        let stranger = Issued::self_signed(&unsigned);
        let err = document(&prod, jwks(&[&stranger]).as_bytes(), Some(&chain))
            .expect_err("not the endpoint's CA");
        assert!(err.contains("not the bundle of prod.example.org"), "{err}");
        let (empty, _) =
            document(&prod, br#"{"keys": []}"#, Some(&chain)).expect("empty is a bundle");
        assert!(empty.is_empty());
    }
}
