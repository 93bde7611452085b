//! `enforcer daemon --workload-api`: the daemon's own SVID and `bundle_from: workload_api`
//! bundles from a SPIFFE Workload API. The agent is this file's own: a gRPC server on a Unix
//! socket speaking the standard's `SpiffeWorkloadAPI` service (`FetchX509SVID`,
//! `FetchX509Bundles`), with CAs and SVIDs minted by rcgen, which can change what it serves,
//! serve garbage, crash and come back. Ports 39400-39499 belong to this file.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Json, Outcome, Sandbox,
    pki::{Issued, Spec},
    privileged,
};
use futures::{Stream, StreamExt as _};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The Workload API's X.509 messages, as the SPIFFE Workload API standard numbers their fields.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509SvidResponse {
        #[prost(message, repeated, tag = "1")]
        pub svids: Vec<X509Svid>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub crl: Vec<Vec<u8>>,
        #[prost(map = "string, bytes", tag = "3")]
        pub federated_bundles: std::collections::HashMap<String, Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509Svid {
        #[prost(string, tag = "1")]
        pub spiffe_id: String,
        /// The SVID's chain, DER certificates back to back.
        #[prost(bytes = "vec", tag = "2")]
        pub x509_svid: Vec<u8>,
        /// PKCS#8 DER.
        #[prost(bytes = "vec", tag = "3")]
        pub x509_svid_key: Vec<u8>,
        /// The CAs of the SVID's trust domain, DER back to back.
        #[prost(bytes = "vec", tag = "4")]
        pub bundle: Vec<u8>,
        #[prost(string, tag = "5")]
        pub hint: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509BundlesRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct X509BundlesResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub crl: Vec<Vec<u8>>,
        /// By trust domain: its CAs, DER back to back.
        #[prost(map = "string, bytes", tag = "2")]
        pub bundles: std::collections::HashMap<String, Vec<u8>>,
    }
}

mod service {
    include!(concat!(env!("OUT_DIR"), "/.SpiffeWorkloadAPI.rs"));
}

use service::spiffe_workload_a_p_i_server::{
    SpiffeWorkloadAPI as SpiffeWorkloadApi, SpiffeWorkloadAPIServer as SpiffeWorkloadApiServer,
};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const LOCALHOST: &str = "127.0.0.1";
const FLOWING: Duration = Duration::from_secs(5);
/// How long the daemon gets to take a new message (it looks every second) and act on it.
const NOTICED: Duration = Duration::from_secs(10);
/// How long the daemon gets to find an agent that came back: it retries with a pause that
/// doubles from 250 ms, so a few seconds after a short absence.
const RECONNECTED: Duration = Duration::from_secs(40);
const TCP_ENDED: [&str; 2] = ["ECONNABORTED", "ECONNRESET"];

type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the agent serves: every stream sends the current message and then each new one.
#[derive(Clone)]
struct Served {
    svid: watch::Sender<Option<wire::X509SvidResponse>>,
    bundles: watch::Sender<Option<wire::X509BundlesResponse>>,
}

impl Served {
    fn stream<T: Clone + Send + Sync + 'static>(
        tx: &watch::Sender<Option<T>>,
        request: &Request<impl Sized>,
    ) -> Result<Response<Messages<T>>, Status> {
        // The standard requires this header, so that no browser-borne request is answered.
        if request
            .metadata()
            .get("workload.spiffe.io")
            .map(|v| v.as_bytes())
            != Some(b"true")
        {
            return Err(Status::invalid_argument("security header missing"));
        }
        let stream = tokio_stream::wrappers::WatchStream::new(tx.subscribe())
            .filter_map(|m| async move { m.map(Ok) });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Served {
    type FetchX509SVIDStream = Messages<wire::X509SvidResponse>;
    type FetchX509BundlesStream = Messages<wire::X509BundlesResponse>;

    async fn fetch_x509_svid(
        &self,
        request: Request<wire::X509SvidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Self::stream(&self.svid, &request)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<wire::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Self::stream(&self.bundles, &request)
    }
}

/// The fake agent: a runtime of its own serving `Served` on `socket`. Crashing it drops the
/// runtime, which closes every connection at once, as a killed agent's do.
struct Agent {
    socket: PathBuf,
    served: Served,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Agent {
    fn new(dir: &Path) -> Self {
        Self {
            socket: dir.join("agent.sock"),
            served: Served {
                svid: watch::channel(None).0,
                bundles: watch::channel(None).0,
            },
            runtime: None,
        }
    }

    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn start(&mut self) {
        assert!(self.runtime.is_none(), "the agent is running");
        let _ = std::fs::remove_file(&self.socket);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the agent's runtime");
        let listener = {
            let _in = runtime.enter();
            tokio::net::UnixListener::bind(&self.socket).expect("binding the agent's socket")
        };
        let served = self.served.clone();
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .expect("serving the Workload API");
        });
        self.runtime = Some(runtime);
    }

    fn crash(&mut self) {
        self.runtime
            .take()
            .expect("the agent is running")
            .shutdown_background();
        let _ = std::fs::remove_file(&self.socket);
    }

    fn serve_bundles(&self, bundles: &[(&str, Vec<u8>)]) {
        let bundles = bundles
            .iter()
            .map(|(domain, ders)| ((*domain).to_owned(), ders.clone()))
            .collect::<HashMap<_, _>>();
        self.served
            .bundles
            .send_replace(Some(wire::X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            }));
    }

    fn serve_svid(&self, id: &str, svid: &Issued, ca: &Issued) {
        self.serve_svid_with_key(id, svid, svid, ca);
    }

    /// Serves `svid` with `holder`'s key (a mismatch unless they are one).
    fn serve_svid_with_key(&self, id: &str, svid: &Issued, holder: &Issued, ca: &Issued) {
        let key = PrivateKeyDer::from_pem_slice(holder.key_pem.as_bytes()).expect("the key");
        self.served.svid.send_replace(Some(wire::X509SvidResponse {
            svids: vec![wire::X509Svid {
                spiffe_id: id.to_owned(),
                x509_svid: svid.der.clone(),
                x509_svid_key: key.secret_der().to_vec(),
                bundle: ca.der.clone(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        }));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Two domains whose bundles come from the Workload API, a bundle-gated edge staging -> prod
/// on `gated` and an ungated one on `open`.
fn policy(gated: &str, open: &str) -> String {
    format!(
        "version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod']
    bundle_from: workload_api
  - name: {STAGING}
    cgroups: ['{{root}}/staging']
    bundle_from: workload_api
federation:
  - id: gated
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{gated}]
    owner: pki-team
    reason: workload api test
    require_bundles: true
  - id: open
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{open}]
    owner: pki-team
    reason: workload api test
"
    )
}

fn field(json: &Json, key: &str) -> String {
    json.get(key)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string `{key}` in {json}"))
        .to_owned()
}

fn bundle_status(sb: &Sandbox, domain: &str) -> Json {
    sb.status()
        .get("bundles")
        .and_then(|b| b.find_by("domain", domain))
        .cloned()
        .unwrap_or_else(|| panic!("status lists no bundle of {domain}: {}", sb.status()))
}

fn workload_api_status(sb: &Sandbox) -> Json {
    sb.status()
        .get("workload_api")
        .cloned()
        .unwrap_or_else(|| panic!("status shows no workload_api: {}", sb.status()))
}

/// Waits until `status` says what `done` looks for: the daemon takes messages within a second
/// of their arrival, and status is where it says what it took.
fn wait_status(sb: &Sandbox, limit: Duration, what: &str, done: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + limit;
    loop {
        let status = sb.status();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status did not show {what} within {limit:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn edge_state(status: &Json, id: &str) -> Option<String> {
    status
        .get("edges")
        .and_then(|e| e.find_by("id", id))
        .and_then(|e| e.get("state"))
        .and_then(Json::as_str)
        .map(str::to_owned)
}

fn sha256(der: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_bundle_from_the_workload_api_gates_its_edge_as_it_changes_disappears_and_returns() {
    if !privileged(
        "a_bundle_from_the_workload_api_gates_its_edge_as_it_changes_disappears_and_returns",
    ) {
        return;
    }
    let mut sb = Sandbox::new("wapi-bundles");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let mut agent = Agent::new(sb.dir());
    let (prod_ca, staging_ca) = (
        Issued::self_signed(&Spec::ca(PROD)),
        Issued::self_signed(&Spec::ca(STAGING)),
    );
    // SPIRE names the domains by their trust domain IDs; both forms are the same name.
    agent.serve_bundles(&[
        (PROD, prod_ca.der.clone()),
        ("spiffe://staging.example.org", staging_ca.der.clone()),
    ]);
    agent.start();
    let policy = sb.policy("p.yaml", &policy("'39400-39401'", "39402"));
    let check = sb.enforcer(&["policy", "check", policy.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{check:?}");
    sb.start_daemon_with(&policy, &["--workload-api", &agent.endpoint()]);
    wait_status(&sb, NOTICED, "the gated edge active", |s| {
        edge_state(s, "gated").as_deref() == Some("active")
    });
    let mut sink = sb.sink(&prod, LOCALHOST, 39400);
    let _gated = sb.listen(&prod, LOCALHOST, 39401);
    let _open = sb.listen(&prod, LOCALHOST, 39402);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39401), Outcome::greeted());
    let mut stream = sb.stream(&staging, LOCALHOST, 39400);
    sink.expect_received(3, FLOWING, "staging -> prod over the gated edge");
    let status = bundle_status(&sb, PROD);
    assert_eq!(field(&status, "source"), "workload_api", "{status}");
    assert_eq!(field(&status, "state"), "valid", "{status}");
    assert_eq!(
        field(&status, "path"),
        format!("Workload API {}", agent.endpoint())
    );

    // A new CA for prod: the bundle changes, the edge and its connection carry on.
    let renewed = Issued::self_signed(&Spec::ca(PROD));
    agent.serve_bundles(&[
        (PROD, [renewed.der.clone(), prod_ca.der.clone()].concat()),
        (STAGING, staging_ca.der.clone()),
    ]);
    wait_status(&sb, NOTICED, "prod's renewed bundle", |s| {
        s.get("bundles")
            .and_then(|b| b.find_by("domain", PROD))
            .and_then(|b| b.get("authorities"))
            .is_some_and(|a| a.as_array().len() == 2)
    });
    let authorities = bundle_status(&sb, PROD);
    let fingerprints: Vec<String> = authorities
        .get("authorities")
        .expect("authorities")
        .as_array()
        .iter()
        .map(|a| field(a, "sha256"))
        .collect();
    assert_eq!(fingerprints, [sha256(&renewed.der), sha256(&prod_ca.der)]);
    stream.expect_not_ended("a changed but valid bundle keeps the edge");
    sb.wait_daemon_log("trust bundle of prod.example.org (Workload API", NOTICED);

    // The agent's set no longer holds prod: its bundle is lost, the edge suspended, and the
    // connection it carried ends.
    agent.serve_bundles(&[(STAGING, staging_ca.der.clone())]);
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    stream.expect_end(NOTICED, &TCP_ENDED, "prod's bundle left the agent's set");
    assert_eq!(sb.connect(&staging, LOCALHOST, 39401), Outcome::EPERM);
    assert_eq!(
        sb.connect(&staging, LOCALHOST, 39402),
        Outcome::greeted(),
        "the ungated edge is untouched"
    );
    let status = bundle_status(&sb, PROD);
    assert_eq!(field(&status, "state"), "unusable", "{status}");
    assert!(
        field(&status, "error").contains("no longer delivers a bundle for prod.example.org"),
        "{status}"
    );

    // It returns: the edge resumes.
    agent.serve_bundles(&[
        (PROD, renewed.der.clone()),
        (STAGING, staging_ca.der.clone()),
    ]);
    sb.wait_daemon_log("edge gated active while its bundles are valid", NOTICED);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39401), Outcome::greeted());

    // A bundle that fails our checks (a certificate that is no CA) is unusable, as a file
    // holding it would be: the edge is suspended again.
    let mut not_ca = Spec::ca(PROD);
    not_ca.ca = Some(false);
    agent.serve_bundles(&[
        (PROD, Issued::self_signed(&not_ca).der),
        (STAGING, staging_ca.der.clone()),
    ]);
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39401), Outcome::EPERM);
    let status = bundle_status(&sb, PROD);
    assert!(field(&status, "error").contains("not a CA"), "{status}");

    // An empty bundle is a valid bundle that trusts nothing (Trust Domain and Bundle 4.1.3):
    // taken as such, not refused as a bad message (which would keep the last bundle in use).
    // The edge is suspended and the connection it carries ends.
    agent.serve_bundles(&[
        (PROD, renewed.der.clone()),
        (STAGING, staging_ca.der.clone()),
    ]);
    wait_status(&sb, NOTICED, "the gated edge active again", |s| {
        edge_state(s, "gated").as_deref() == Some("active")
    });
    // The first sink ended with its connection.
    let mut sink = sb.sink(&prod, LOCALHOST, 39400);
    let mut stream = sb.stream(&staging, LOCALHOST, 39400);
    sink.expect_received(3, FLOWING, "staging -> prod over the gated edge, again");
    agent.serve_bundles(&[(PROD, Vec::new()), (STAGING, staging_ca.der.clone())]);
    wait_status(&sb, NOTICED, "prod's empty bundle", |s| {
        s.get("bundles")
            .and_then(|b| b.find_by("domain", PROD))
            .and_then(|b| b.get("state"))
            .and_then(Json::as_str)
            == Some("empty")
    });
    stream.expect_end(NOTICED, &TCP_ENDED, "prod's bundle became empty");
    assert_eq!(sb.connect(&staging, LOCALHOST, 39401), Outcome::EPERM);
    let wapi = workload_api_status(&sb);
    assert_eq!(
        wapi.get("connected").and_then(Json::as_bool),
        Some(true),
        "{wapi}"
    );
}

#[test]
fn an_agent_that_is_absent_goes_away_or_sends_garbage_leaves_enforcement_in_place() {
    if !privileged("an_agent_that_is_absent_goes_away_or_sends_garbage_leaves_enforcement_in_place")
    {
        return;
    }
    let mut sb = Sandbox::new("wapi-agent-gone");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let mut agent = Agent::new(sb.dir());
    let (prod_ca, staging_ca) = (
        Issued::self_signed(&Spec::ca(PROD)),
        Issued::self_signed(&Spec::ca(STAGING)),
    );
    let policy = sb.policy("p.yaml", &policy("39410", "39411"));
    // No agent yet: the daemon starts, enforces, and the gated edge waits for its bundles.
    sb.start_daemon_with(&policy, &["--workload-api", &agent.endpoint()]);
    let _gated = sb.listen(&prod, LOCALHOST, 39410);
    let _open = sb.listen(&prod, LOCALHOST, 39411);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::EPERM);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39411), Outcome::greeted());
    let status = wait_status(&sb, NOTICED, "the failed connection", |s| {
        s.get("workload_api")
            .and_then(|w| w.get("error"))
            .and_then(Json::as_str)
            .is_some_and(|e| e.contains("connecting"))
    });
    let wapi = status.get("workload_api").expect("workload_api");
    assert_eq!(
        wapi.get("connected").and_then(Json::as_bool),
        Some(false),
        "{wapi}"
    );
    let bundle = bundle_status(&sb, PROD);
    assert!(
        field(&bundle, "error").contains("no bundle from the Workload API"),
        "{bundle}"
    );
    let text = sb.enforcer(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "workload api: {} (not connected",
            agent.endpoint()
        )),
        "{text}"
    );

    // The agent arrives: the daemon finds it and the edge opens.
    agent.serve_bundles(&[
        (PROD, prod_ca.der.clone()),
        (STAGING, staging_ca.der.clone()),
    ]);
    agent.start();
    sb.wait_daemon_log("edge gated active while its bundles are valid", RECONNECTED);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::greeted());

    // The agent dies: the daemon says so and keeps the bundles it had (they still lapse at
    // their own expiry, in the kernel).
    agent.crash();
    sb.wait_daemon_log("the bundle stream ended; reconnecting", NOTICED);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::greeted());
    assert_eq!(sb.connect(&staging, LOCALHOST, 39411), Outcome::greeted());
    let wapi = workload_api_status(&sb);
    assert_eq!(
        wapi.get("connected").and_then(Json::as_bool),
        Some(false),
        "{wapi}"
    );

    // It comes back serving garbage: refused whole and reported; the last good set stays.
    agent.serve_bundles(&[(PROD, b"\x30\x03garbage".to_vec())]);
    agent.start();
    sb.wait_daemon_log("a bundle message:", RECONNECTED);
    let wapi = workload_api_status(&sb);
    assert!(field(&wapi, "error").contains("a bundle message"), "{wapi}");
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "valid");
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::greeted());

    // A trust domain name that is no name: refused whole as well.
    agent.serve_bundles(&[("Not A Domain!", prod_ca.der.clone())]);
    wait_status(&sb, NOTICED, "the bad name refused", |s| {
        s.get("workload_api")
            .and_then(|w| w.get("error"))
            .and_then(Json::as_str)
            .is_some_and(|e| e.contains("Not A Domain!") || e.contains("trust domain"))
    });
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::greeted());

    // A message over the size limit (4 MiB) is refused before it is decoded.
    agent.serve_bundles(&[(PROD, vec![0x30; 5 << 20])]);
    sb.wait_daemon_log("too large", NOTICED);
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "valid");
    assert_eq!(sb.connect(&staging, LOCALHOST, 39410), Outcome::greeted());
}

const ADMIN: &str = "spiffe://admin.example.org/ops";
const DAEMON: &str = "spiffe://admin.example.org/enforcer/host-1";

#[test]
fn the_daemons_svid_rotates_under_a_live_remote_admin_session() {
    if !privileged("the_daemons_svid_rotates_under_a_live_remote_admin_session") {
        return;
    }
    let mut sb = Sandbox::new("wapi-rotation");
    sb.cgroup("prod");
    let dir = sb.dir().to_owned();
    let ca = Issued::self_signed(&Spec::ca("admin.example.org"));
    std::fs::write(dir.join("bundle.pem"), &ca.pem).expect("writing the bundle");
    ca.issue(&Spec::leaf(ADMIN))
        .write(&[], &dir.join("ops.pem"), &dir.join("ops.key"));
    let first = ca.issue(&Spec::leaf(DAEMON));
    let mut agent = Agent::new(&dir);
    agent.serve_svid(DAEMON, &first, &ca);
    agent.serve_bundles(&[("admin.example.org", ca.der.clone())]);
    agent.start();
    let policy = sb.policy(
        "p.yaml",
        "version: 1\ndomains:\n  - name: prod.example.org\n    cgroups: ['{root}/prod']\n",
    );
    let bundle = dir.join("bundle.pem");
    sb.start_daemon_with(
        &policy,
        &[
            "--workload-api",
            &agent.endpoint(),
            "--admin-listen",
            "127.0.0.1:39425",
            "--admin-bundle",
            bundle.to_str().expect("utf-8"),
            "--admin-id",
            ADMIN,
        ],
    );
    wait_status(&sb, NOTICED, "the daemon's SVID", |s| {
        s.get("workload_api")
            .and_then(|w| w.get("svid"))
            .and_then(Json::as_str)
            == Some(DAEMON)
    });

    // A session opened with the first SVID, its request not sent yet.
    let mut old = Session::open(39425, &dir.join("ops"));
    assert_eq!(
        sha256(&old.server_cert()),
        sha256(&first.der),
        "the first SVID is presented"
    );

    // The second SVID expires a day after the first, so that status tells them apart (a wait
    // for the log line "the daemon's SVID is now ..." could return on the first one's, which
    // is logged after the daemon is ready on a slow machine).
    let expires = |s: &Json| {
        s.get("workload_api")
            .and_then(|w| w.get("svid_expires"))
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    let first_expires = expires(&sb.status());
    let mut later = Spec::leaf(DAEMON);
    later.not_after += time::Duration::days(1);
    let second = ca.issue(&later);
    agent.serve_svid(DAEMON, &second, &ca);
    wait_status(&sb, NOTICED, "the second SVID in use", |s| {
        expires(s).is_some() && expires(s) != first_expires
    });
    let mut new = Session::open(39425, &dir.join("ops"));
    assert_eq!(
        sha256(&new.server_cert()),
        sha256(&second.der),
        "a new handshake gets the new SVID"
    );
    assert!(new.status().contains("\"generation\""));
    // The session opened before the rotation is served as before.
    assert!(old.status().contains("\"generation\""));

    // An SVID whose key is not its own is refused, and the one in use stays.
    let stranger = ca.issue(&Spec::leaf(DAEMON));
    agent.serve_svid_with_key(DAEMON, &ca.issue(&Spec::leaf(DAEMON)), &stranger, &ca);
    sb.wait_daemon_log("the SVID in use stays", NOTICED);
    let mut after = Session::open(39425, &dir.join("ops"));
    assert_eq!(
        sha256(&after.server_cert()),
        sha256(&second.der),
        "a refused SVID is never presented"
    );
    assert!(after.status().contains("\"generation\""));
    // The CLI, which checks the daemon's SVID against the admin bundle, accepts the new one.
    let out = std::process::Command::new(enforcer_tests::enforcer())
        .args(["status", "--server", "127.0.0.1:39425", "--cert"])
        .arg(dir.join("ops.pem"))
        .arg("--key")
        .arg(dir.join("ops.key"))
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .expect("running the CLI");
    assert!(out.status.success(), "{out:?}");
    let wapi = workload_api_status(&sb);
    assert_eq!(field(&wapi, "svid"), DAEMON, "{wapi}");
}

/// A mutual-TLS session with the remote admin endpoint, recording the certificate the
/// daemon presented.
struct Session {
    tls: StreamOwned<ClientConnection, TcpStream>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Session {
    fn open(port: u16, client: &Path) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let cert = CertificateDer::from_pem_file(client.with_extension("pem")).expect("cert");
        let key = PrivateKeyDer::from_pem_file(client.with_extension("key")).expect("key");
        let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recording {
                provider,
                seen: Arc::clone(&seen),
            }))
            .with_client_auth_cert(vec![cert], key)
            .expect("client auth");
        let name = ServerName::try_from("enforcer").expect("a name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("a TLS client");
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
        tcp.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .expect("the TLS handshake");
        }
        Self { tls, seen }
    }

    fn server_cert(&self) -> Vec<u8> {
        self.seen
            .lock()
            .expect("lock")
            .clone()
            .expect("the handshake presented a certificate")
    }

    fn status(&mut self) -> String {
        self.tls
            .write_all(b"{\"request\":\"status\"}\n")
            .and_then(|()| self.tls.flush())
            .expect("sending the request");
        let mut answer = String::new();
        self.tls
            .read_to_string(&mut answer)
            .expect("reading the answer");
        answer
    }
}

/// Accepts any server certificate and records it: the test compares it with the SVID served.
#[derive(Debug)]
struct Recording {
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn the_attestation_socket_presents_the_workload_api_svid_and_checks_its_bundles() {
    if !privileged("the_attestation_socket_presents_the_workload_api_svid_and_checks_its_bundles") {
        return;
    }
    let mut sb = Sandbox::new("wapi-attest");
    let dir = sb.dir().to_owned();
    let ca = Issued::self_signed(&Spec::ca(PROD));
    // What a workload uses to check the daemon: its own domain's bundle.
    std::fs::write(dir.join("prod.pem"), &ca.pem).expect("writing the bundle");
    let daemon_id = "spiffe://prod.example.org/enforcer";
    let mut agent = Agent::new(&dir);
    agent.serve_svid(daemon_id, &ca.issue(&Spec::leaf(daemon_id)), &ca);
    agent.serve_bundles(&[(PROD, ca.der.clone())]);
    agent.start();
    let policy = sb.policy(
        "p.yaml",
        &format!(
            "version: 1\ndomains:\n  - name: {PROD}\n    attested: true\n    bundle_from: workload_api\n"
        ),
    );
    let socket = dir.join("attest.sock");
    sb.start_daemon_with(
        &policy,
        &[
            "--workload-api",
            &agent.endpoint(),
            "--attest-socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    wait_status(&sb, NOTICED, "the daemon's SVID", |s| {
        s.get("workload_api")
            .and_then(|w| w.get("svid"))
            .and_then(Json::as_str)
            == Some(daemon_id)
    });
    let attest = |sb: &Sandbox, cgroup: &str| {
        let cgroup = sb.cgroup(cgroup);
        let (cert, key) = (dir.join("db.pem"), dir.join("db.key"));
        ca.issue(&Spec::leaf("spiffe://prod.example.org/db"))
            .write(&[], &cert, &key);
        let out = sb.workload(&cgroup).enforcer(&[
            "attest",
            "--svid",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--socket",
            socket.to_str().expect("utf-8"),
            "--bundle",
            dir.join("prod.pem").to_str().expect("utf-8"),
        ]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The workload checks the daemon's SVID against prod's bundle, and the daemon checks the
    // workload's against the bundle the agent delivered.
    let (ok, said) = attest(&sb, "w1");
    assert!(ok && said.contains("to prod.example.org as"), "{said}");

    agent.serve_svid(daemon_id, &ca.issue(&Spec::leaf(daemon_id)), &ca);
    sb.wait_daemon_log(&format!("the daemon's SVID is now {daemon_id}"), NOTICED);
    let (ok, said) = attest(&sb, "w2");
    assert!(ok, "attestation after the rotation: {said}");

    // prod's bundle leaves the agent's set: an SVID of prod proves nothing any more.
    agent.serve_bundles(&[(STAGING, Issued::self_signed(&Spec::ca(STAGING)).der)]);
    sb.wait_daemon_log("trust bundle of prod.example.org is unusable", NOTICED);
    let (ok, said) = attest(&sb, "w3");
    assert!(!ok, "attested without prod's bundle: {said}");
}

#[test]
fn an_agent_that_accepts_and_never_answers_stalls_nothing() {
    if !privileged("an_agent_that_accepts_and_never_answers_stalls_nothing") {
        return;
    }
    let mut sb = Sandbox::new("wapi-silent");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let agent = Agent::new(sb.dir());
    // A socket that takes every connection into its backlog and never says a word.
    let _silent = std::os::unix::net::UnixListener::bind(&agent.socket).expect("binding");
    let policy = sb.policy("p.yaml", &policy("39430", "39431"));
    let started = Instant::now();
    sb.start_daemon_with(&policy, &["--workload-api", &agent.endpoint()]);
    let _gated = sb.listen(&prod, LOCALHOST, 39430);
    let _open = sb.listen(&prod, LOCALHOST, 39431);
    // The daemon started, enforces and answers while its client waits on the agent.
    assert_eq!(sb.connect(&staging, LOCALHOST, 39430), Outcome::EPERM);
    assert_eq!(sb.connect(&staging, LOCALHOST, 39431), Outcome::greeted());
    let asked = Instant::now();
    let status = workload_api_status(&sb);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "status took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        status.get("connected").and_then(Json::as_bool),
        Some(false),
        "{status}"
    );
    // The attempt is given up after 10 s and said so; the daemon tries again.
    let line = sb.wait_daemon_log("no answer within", Duration::from_secs(30));
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "gave up after {:?}: {line}",
        started.elapsed()
    );
    assert_eq!(sb.connect(&staging, LOCALHOST, 39430), Outcome::EPERM);
}
