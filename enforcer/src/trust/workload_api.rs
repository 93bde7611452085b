//! The SPIFFE Workload API client: the daemon's own X.509-SVID and the trust bundles of
//! `bundle_from: workload_api` domains, streamed from the local agent (a SPIRE agent's socket)
//! on the daemon's one runtime. The `spiffe` crate speaks the protocol and parses the wire;
//! every bundle and SVID it delivers is then checked with this module's own rules (`Bundle`,
//! `certificate::leaf`), exactly as a file would be, so the agent is trusted for delivery
//! only. The crate's own checks are those of go-spiffe and no looser than ours: a message it
//! refuses (a trust domain name or certificate that does not parse) is refused whole here too.
//!
//! Each bundle message is the agent's complete current set: a domain missing from it has lost
//! its bundle. A message that cannot be parsed changes nothing: the last complete set stays
//! (its bundles still lapse at their own expiry, which the kernel enforces) and the error is
//! reported. A stream that ends or cannot be opened is retried with a growing pause, and the
//! last set stays meanwhile.

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::Duration,
};

use anyhow::{Result, anyhow};
use enforcer_policy::TrustDomain;
use futures::StreamExt as _;
use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{WorkloadApiClient, X509BundleSet, X509Svid};

use super::{
    Bundle, Identity, certificate,
    current_svid::{CurrentSvid, SvidFacts},
};

/// The first pause after a failure, doubled after each failure up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// For opening the connection, and then a stream: an agent that accepts and never answers
/// is given up on. Between messages there is no limit: an agent sends only on a change.
const CONNECT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
#[group(id = "workload-api-args")]
pub struct Args {
    /// The SPIFFE Workload API to take the daemon's own SVID (when --tls-cert is not given)
    /// and `bundle_from: workload_api` bundles from: `unix:/PATH` (a SPIRE agent's socket).
    #[arg(long, value_name = "unix:PATH", value_parser = parse_endpoint, env = "SPIFFE_ENDPOINT_SOCKET")]
    workload_api: Option<String>,
}

impl Args {
    pub fn endpoint(&self) -> Option<&str> {
        self.workload_api.as_deref()
    }
}

/// A Workload API address as SPIFFE writes it: `unix:/path` or `unix:///path`. TCP endpoints,
/// which SPIFFE also allows, are refused: the agent authenticates its caller by the kernel's
/// word about a local process, which only a Unix socket gives.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let path = text
        .strip_prefix("unix://")
        .or_else(|| text.strip_prefix("unix:"))
        .ok_or_else(|| format!("`{text}` is not a Workload API address: write unix:/PATH"))?;
    if !path.starts_with('/') {
        return Err(format!(
            "`{text}`: the socket path must be absolute (unix:/PATH)"
        ));
    }
    Ok(format!("unix:{path}"))
}

/// One bundle as the agent last delivered it, judged by our checks.
pub type Delivered = Result<Bundle, String>;

/// What the agent last said, shared by the client's tasks and the daemon.
#[derive(Debug)]
pub struct Client {
    pub endpoint: String,
    state: Mutex<ClientState>,
    /// Signalled when the first bundle set arrives or the first attempt fails.
    settled: Condvar,
}

#[derive(Debug, Default)]
struct ClientState {
    /// The last complete set, by domain; `None` until the first arrived.
    bundles: Option<BTreeMap<TrustDomain, Delivered>>,
    /// Bumped whenever `bundles` changes, so that readers know when to look again.
    version: u64,
    /// Whether each stream is open.
    bundles_open: bool,
    svid_open: bool,
    /// The last failure, until a message arrives on that stream.
    error: Option<String>,
    updates: u64,
    last_update: Option<Timestamp>,
    /// The daemon's own SVID, when it takes it from here.
    svid: Option<SvidFacts>,
}

/// `status`'s view of the client.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub endpoint: String,
    pub connected: bool,
    pub error: Option<String>,
    pub updates: u64,
    pub last_update: Option<Timestamp>,
    pub domains: Vec<String>,
    pub svid: Option<SvidFacts>,
}

static CLIENT: OnceLock<Arc<Client>> = OnceLock::new();

/// The daemon's client, when it was given a Workload API.
pub fn installed() -> Option<Arc<Client>> {
    CLIENT.get().cloned()
}

/// The bundle of a domain as the agent last delivered it.
pub enum Lookup {
    /// Nothing delivered yet; the last failure, if any.
    Pending(Option<String>),
    /// The last complete set does not hold it: the bundle is lost.
    Missing,
    Found(Delivered),
}

impl Client {
    /// Registers the daemon's client for `endpoint`; its streams start with `start`.
    pub fn install(endpoint: &str) -> Arc<Self> {
        Arc::clone(CLIENT.get_or_init(|| {
            Arc::new(Self {
                endpoint: endpoint.to_owned(),
                state: Mutex::new(ClientState::default()),
                settled: Condvar::new(),
            })
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits, at most `limit`, until the agent delivered a first bundle set or could not be
    /// reached. A starting daemon waits so that it does not judge gated edges before the
    /// agent had a chance to speak: suspending them would end their live connections.
    pub fn wait_settled(&self, limit: Duration) {
        let state = self.state();
        let _ = self
            .settled
            .wait_timeout_while(state, limit, |s| s.bundles.is_none() && s.error.is_none());
    }

    pub fn version(&self) -> u64 {
        self.state().version
    }

    pub fn lookup(&self, domain: &TrustDomain) -> Lookup {
        let state = self.state();
        match &state.bundles {
            None => Lookup::Pending(state.error.clone()),
            Some(set) => set
                .get(domain)
                .cloned()
                .map_or(Lookup::Missing, Lookup::Found),
        }
    }

    pub fn view(&self) -> ClientView {
        let state = self.state();
        ClientView {
            endpoint: self.endpoint.clone(),
            connected: state.bundles_open || state.svid_open,
            error: state.error.clone(),
            updates: state.updates,
            last_update: state.last_update,
            domains: state
                .bundles
                .iter()
                .flat_map(|set| set.keys().map(ToString::to_string))
                .collect(),
            svid: state.svid.clone(),
        }
    }

    /// Streams bundles on `runtime`, and the SVID into `svid` when the daemon's own comes
    /// from here.
    pub fn start(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        svid: Option<Arc<CurrentSvid>>,
    ) {
        runtime.spawn(Arc::clone(self).follow_bundles());
        if let Some(svid) = svid {
            runtime.spawn(Arc::clone(self).follow_svid(svid));
        }
    }

    async fn connect(&self) -> Result<WorkloadApiClient> {
        tokio::time::timeout(CONNECT, WorkloadApiClient::connect_to(&self.endpoint))
            .await
            .map_err(|_| anyhow!("no answer within {CONNECT:?}"))?
            .map_err(|err| anyhow!("{err}"))
    }

    async fn follow_bundles(self: Arc<Self>) {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.connect().await {
                Ok(client) => match answered(client.stream_x509_bundles()).await {
                    Ok(mut stream) => {
                        self.opened(true);
                        while let Some(message) = stream.next().await {
                            match message {
                                Ok(set) => {
                                    self.take_bundles(&set);
                                    pause = FIRST_PAUSE;
                                }
                                Err(err) => self.failed(format!("a bundle message: {err}")),
                            }
                        }
                        self.closed(true, "the bundle stream ended");
                    }
                    Err(err) => self.failed(format!("fetching bundles: {err}")),
                },
                Err(err) => self.failed(format!("connecting: {err:#}")),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn follow_svid(self: Arc<Self>, current: Arc<CurrentSvid>) {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.connect().await {
                Ok(client) => match answered(client.stream_x509_svids()).await {
                    Ok(mut stream) => {
                        self.opened(false);
                        while let Some(message) = stream.next().await {
                            let taken = message
                                .map_err(|err| err.to_string())
                                .and_then(|svid| take_svid(&svid, &current));
                            match taken {
                                Ok(facts) => {
                                    log::info!(
                                        "Workload API {}: the daemon's SVID is now {} until {}",
                                        self.endpoint,
                                        facts
                                            .id
                                            .as_ref()
                                            .map_or_else(String::new, |id| id.to_string()),
                                        facts.expires.map_or_else(String::new, |t| t.to_string()),
                                    );
                                    self.state().svid = Some(facts);
                                    self.updated();
                                    pause = FIRST_PAUSE;
                                }
                                Err(err) => self.failed(format!(
                                    "an SVID message: {err}; the SVID in use stays"
                                )),
                            }
                        }
                        self.closed(false, "the SVID stream ended");
                    }
                    Err(err) => self.failed(format!("fetching the SVID: {err}")),
                },
                Err(err) => self.failed(format!("connecting: {err:#}")),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    fn opened(&self, bundles: bool) {
        let mut state = self.state();
        let was = state.bundles_open || state.svid_open;
        if bundles {
            state.bundles_open = true;
        } else {
            state.svid_open = true;
        }
        if !was {
            log::info!("Workload API {}: connected", self.endpoint);
        }
    }

    fn closed(&self, bundles: bool, why: &str) {
        {
            let mut state = self.state();
            if bundles {
                state.bundles_open = false;
            } else {
                state.svid_open = false;
            }
        }
        self.failed(format!("{why}; reconnecting"));
    }

    /// Records a failure, logged once until something else happens: a retry every 30 s must
    /// not fill the log with the same line.
    fn failed(&self, why: String) {
        let mut state = self.state();
        if state.error.as_ref() != Some(&why) {
            log::warn!(
                "Workload API {}: {why} (the last bundles and SVID it delivered stay in use)",
                self.endpoint
            );
            state.error = Some(why);
        }
        self.settled.notify_all();
    }

    fn updated(&self) {
        let mut state = self.state();
        state.error = None;
        state.updates += 1;
        state.last_update = Some(Timestamp::now());
    }

    /// Takes `set` as the agent's complete current set of bundles.
    pub(crate) fn take_bundles(&self, set: &X509BundleSet) {
        let mut next = BTreeMap::new();
        for (domain, bundle) in set.iter() {
            let Ok(name) = domain.to_string().parse::<TrustDomain>() else {
                self.failed(format!(
                    "a bundle message names `{domain}`, which is not a trust domain name; the \
                     message is ignored"
                ));
                return;
            };
            let ders = bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect();
            let judged = Bundle::from_ders(ders, &name).map_err(|err| err.to_string());
            next.insert(name, judged);
        }
        let mut state = self.state();
        if state.bundles.as_ref() != Some(&next) {
            state.bundles = Some(next);
            state.version += 1;
        }
        drop(state);
        self.settled.notify_all();
        self.updated();
    }
}

/// `opening`'s stream, or why there is none within `CONNECT`.
async fn answered<T>(
    opening: impl Future<Output = Result<T, spiffe::WorkloadApiError>>,
) -> Result<T, String> {
    match tokio::time::timeout(CONNECT, opening).await {
        Ok(opened) => opened.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT:?}")),
    }
}

/// Checks `svid` as the daemon's own (the X509-SVID rules and its validity now) and presents
/// it from the next handshake on.
fn take_svid(svid: &X509Svid, current: &CurrentSvid) -> Result<SvidFacts, String> {
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let leaf = chain.first().ok_or("the SVID has no certificate")?;
    let (id, facts) = certificate::leaf(leaf)?;
    let now = Timestamp::now();
    if now < facts.not_before || facts.not_after <= now {
        return Err(format!(
            "the SVID {id} is valid only from {} to {}",
            facts.not_before, facts.not_after
        ));
    }
    let facts = SvidFacts {
        id: Some(id),
        expires: Some(facts.not_after),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    current
        .replace(Identity { chain, key }, facts.clone())
        .map_err(|err| format!("the SVID and its key: {err}"))?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets_with_absolute_paths() {
        assert_eq!(
            parse_endpoint("unix:/run/spire/agent.sock").as_deref(),
            Ok("unix:/run/spire/agent.sock")
        );
        assert_eq!(
            parse_endpoint("unix:///run/spire/agent.sock").as_deref(),
            Ok("unix:/run/spire/agent.sock")
        );
        for bad in [
            "/run/agent.sock",
            "tcp:127.0.0.1:8081",
            "unix:agent.sock",
            "",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
