//! `enforcer daemon --admin-listen`: the remote admin endpoint, over real TCP on loopback with
//! certificates minted for each test. Only an X.509-SVID of the admin trust domain whose
//! SPIFFE ID is an `--admin-id` is served; a client with another ID is told so, and a client
//! with no certificate, an expired SVID or one forged by another domain's CA fails the
//! handshake. The CLI in turn refuses a daemon whose certificate does not chain to `--bundle`.
//!
//! Ports 33000-33499 belong to this file.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::Duration,
};

use enforcer_tests::{
    Json, Sandbox, enforcer,
    pki::{Issued, Spec},
    privileged,
};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};

const POLICY: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
";

/// The same policy with one more domain: applying it is a visible change.
const POLICY2: &str = "
version: 1
defaults: {unlabeled: allow, external: allow}
domains:
  - name: prod.example.org
    cgroups: ['{root}/prod']
  - name: staging.example.org
    cgroups: ['{root}/staging']
";

const ADMIN: &str = "spiffe://admin.example.org/ops";
const DAEMON: &str = "spiffe://admin.example.org/enforcer/host-1";

/// The certificates of one test, written into its sandbox directory.
struct Pki {
    dir: PathBuf,
    /// The admin domain's CA.
    ca: Issued,
    /// A CA of another domain, used to forge SVIDs that claim the admin domain.
    evil: Issued,
}

impl Pki {
    fn new(sb: &Sandbox) -> Self {
        let pki = Self {
            dir: sb.dir.clone(),
            ca: Issued::self_signed(&Spec::ca("admin.example.org")),
            evil: Issued::self_signed(&Spec::ca("evil.example.org")),
        };
        std::fs::write(pki.path("bundle.pem"), &pki.ca.pem).expect("writing the bundle");
        // A bundle that claims the admin domain but holds a stranger's CA.
        let mut impostor = Spec::ca("admin.example.org");
        impostor.common_name = Some("impostor CA".into());
        let impostor = Issued::self_signed(&impostor);
        std::fs::write(pki.path("impostor-bundle.pem"), &impostor.pem).expect("writing");
        pki.svid(&pki.ca, &Spec::leaf(DAEMON), "daemon");
        pki.svid(&pki.ca, &Spec::leaf(ADMIN), "ops");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Issues `spec` from `ca` into NAME.pem and NAME.key.
    fn svid(&self, ca: &Issued, spec: &Spec, name: &str) {
        let svid = ca.issue(spec);
        svid.write(
            &[],
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
        );
    }

    /// The daemon flags that open the endpoint on `port` for `--admin-id ADMIN`.
    fn daemon_args(&self, port: u16) -> Vec<String> {
        vec![
            "--admin-listen".into(),
            format!("127.0.0.1:{port}"),
            "--tls-cert".into(),
            self.arg("daemon.pem"),
            "--tls-key".into(),
            self.arg("daemon.key"),
            "--admin-bundle".into(),
            self.arg("bundle.pem"),
            "--admin-id".into(),
            ADMIN.into(),
        ]
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_owned()
    }

    /// `enforcer ARGS --server 127.0.0.1:PORT` as the client NAME.pem/NAME.key, checking the
    /// daemon against BUNDLE.
    fn remote(&self, port: u16, name: &str, bundle: &str, args: &[&str]) -> Output {
        Command::new(enforcer())
            .args(args)
            .arg("--server")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cert")
            .arg(self.path(&format!("{name}.pem")))
            .arg("--key")
            .arg(self.path(&format!("{name}.key")))
            .arg("--bundle")
            .arg(self.path(bundle))
            .output()
            .expect("running the CLI")
    }
}

fn start(sb: &mut Sandbox, pki: &Pki, port: u16) -> PathBuf {
    sb.cgroup("prod");
    sb.cgroup("staging");
    let policy = sb.policy("policy.yaml", POLICY);
    let args = pki.daemon_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.start_daemon_with(&policy, &args);
    sb.policy("policy2.yaml", POLICY2)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn generation(sb: &Sandbox) -> u64 {
    sb.status()
        .get("generation")
        .and_then(Json::as_u64)
        .expect("status reports the generation")
}

/// Asserts that a CLI run failed and said `what`.
fn refused(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal mentioning {what:?}; the command succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(out).contains(what),
        "expected {what:?} in: {}",
        stderr(out)
    );
}

#[test]
fn an_admin_svid_reads_and_applies_over_the_remote_endpoint() {
    if !privileged("an_admin_svid_reads_and_applies_over_the_remote_endpoint") {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-good");
    let pki = Pki::new(&sb);
    let policy2 = start(&mut sb, &pki, 33001);
    let before = generation(&sb);

    let out = pki.remote(33001, "ops", "bundle.pem", &["status", "-o", "json"]);
    assert!(out.status.success(), "remote status: {}", stderr(&out));
    let status = Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("status JSON");
    assert_eq!(
        status.get("generation").and_then(Json::as_u64),
        Some(before)
    );
    sb.wait_daemon_log(
        &format!("remote admin: {ADMIN} from 127.0.0.1:"),
        Duration::from_secs(5),
    );

    let policy2 = policy2.to_str().expect("utf-8 path");
    let out = pki.remote(33001, "ops", "bundle.pem", &["policy", "apply", policy2]);
    assert!(out.status.success(), "remote apply: {}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (before + 1).to_string(),
        "apply prints the new generation"
    );
    assert_eq!(generation(&sb), before + 1, "the remote apply took effect");
    let audit = sb.wait_daemon_log(": apply", Duration::from_secs(5));
    assert!(
        audit.contains(ADMIN),
        "the audit line names the admin: {audit}"
    );

    // The event log streams to its end: the daemon closes the TLS session cleanly.
    let out = pki.remote(33001, "ops", "bundle.pem", &["events", "-o", "json"]);
    assert!(out.status.success(), "remote events: {}", stderr(&out));
}

#[test]
fn an_svid_of_the_admin_domain_that_is_no_admin_id_is_refused_and_changes_nothing() {
    if !privileged("an_svid_of_the_admin_domain_that_is_no_admin_id_is_refused_and_changes_nothing")
    {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-other-id");
    let pki = Pki::new(&sb);
    let policy2 = start(&mut sb, &pki, 33011);
    let dev = "spiffe://admin.example.org/ops-dev";
    pki.svid(&pki.ca, &Spec::leaf(dev), "dev");
    let before = generation(&sb);

    let message = format!("{dev} is not an admin identity of this daemon");
    refused(
        &pki.remote(33011, "dev", "bundle.pem", &["status"]),
        &message,
    );
    let policy2 = policy2.to_str().expect("utf-8 path");
    let out = pki.remote(33011, "dev", "bundle.pem", &["policy", "apply", policy2]);
    refused(&out, &message);
    assert!(out.stdout.is_empty(), "nothing was applied");
    assert_eq!(generation(&sb), before, "a refused apply changes nothing");
    let logged = sb.wait_daemon_log("remote admin: refused 127.0.0.1:", Duration::from_secs(5));
    assert!(logged.contains(&message), "{logged}");
}

#[test]
fn an_svid_forged_by_another_domains_ca_fails_the_handshake() {
    if !privileged("an_svid_forged_by_another_domains_ca_fails_the_handshake") {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-forged");
    let pki = Pki::new(&sb);
    let policy2 = start(&mut sb, &pki, 33021);
    // evil.example.org's CA signs an SVID that claims to be the admin.
    pki.svid(&pki.evil, &Spec::leaf(ADMIN), "forged");
    let before = generation(&sb);

    let policy2 = policy2.to_str().expect("utf-8 path");
    let out = pki.remote(33021, "forged", "bundle.pem", &["policy", "apply", policy2]);
    refused(&out, "refused this client's certificate");
    assert_eq!(generation(&sb), before, "a forged SVID changes nothing");
    let logged = sb.wait_daemon_log("TLS handshake failed", Duration::from_secs(5));
    assert!(
        logged.contains("remote admin: refused 127.0.0.1:")
            && logged.contains("no valid certification path"),
        "{logged}"
    );
}

#[test]
fn a_client_without_a_certificate_or_without_tls_is_served_nothing() {
    if !privileged("a_client_without_a_certificate_or_without_tls_is_served_nothing") {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-anonymous");
    let pki = Pki::new(&sb);
    start(&mut sb, &pki, 33031);

    let err = raw_status(33031, None).expect_err("no certificate, no answer");
    assert!(err.contains("CertificateRequired"), "{err}");
    let logged = sb.wait_daemon_log("TLS handshake failed", Duration::from_secs(5));
    assert!(
        logged.contains("remote admin: refused 127.0.0.1:"),
        "{logged}"
    );

    // Plain JSON, as on the control socket, is not TLS: nothing comes back but a TLS alert.
    let mut tcp = TcpStream::connect("127.0.0.1:33031").expect("connecting");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    tcp.write_all(b"{\"request\":\"status\"}\n")
        .expect("sending");
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("generation"),
        "a plaintext client was served: {got:?}"
    );

    // The same raw client with the admin's SVID is served: the refusal above was for the
    // missing certificate, not for the client.
    let answer = raw_status(33031, Some(&pki.path("ops"))).expect("the admin is served");
    assert!(answer.contains("\"generation\""), "{answer}");
}

#[test]
fn an_expired_admin_svid_is_refused() {
    if !privileged("an_expired_admin_svid_is_refused") {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-expired");
    let pki = Pki::new(&sb);
    start(&mut sb, &pki, 33041);
    pki.svid(&pki.ca, &Spec::leaf(ADMIN).valid(-7200, -60), "expired");

    let err = raw_status(33041, Some(&pki.path("expired"))).expect_err("expired, no answer");
    assert!(err.contains("CertificateUnknown"), "{err}");
    let logged = sb.wait_daemon_log("TLS handshake failed", Duration::from_secs(5));
    assert!(logged.contains("no valid certification path"), "{logged}");
    // The CLI does not even try with an expired SVID of its own, and says why.
    refused(
        &pki.remote(33041, "expired", "bundle.pem", &["status"]),
        &format!("{ADMIN} expired at"),
    );
}

#[test]
fn the_cli_refuses_a_daemon_that_does_not_chain_to_its_bundle_or_has_another_id() {
    if !privileged("the_cli_refuses_a_daemon_that_does_not_chain_to_its_bundle_or_has_another_id") {
        return;
    }
    let mut sb = Sandbox::new("remote-admin-server-check");
    let pki = Pki::new(&sb);
    let policy2 = start(&mut sb, &pki, 33051);
    let before = generation(&sb);
    let policy2 = policy2.to_str().expect("utf-8 path");

    let out = pki.remote(
        33051,
        "ops",
        "impostor-bundle.pem",
        &["policy", "apply", policy2],
    );
    refused(
        &out,
        "presented a certificate that is not valid for --bundle",
    );
    assert_eq!(generation(&sb), before, "nothing was sent to that daemon");

    let mut args = vec![
        "status",
        "--server-id",
        "spiffe://admin.example.org/enforcer/host-2",
    ];
    let out = pki.remote(33051, "ops", "bundle.pem", &args);
    refused(
        &out,
        &format!("is {DAEMON}, not --server-id spiffe://admin.example.org/enforcer/host-2"),
    );
    args[2] = DAEMON;
    let out = pki.remote(33051, "ops", "bundle.pem", &args);
    assert!(
        out.status.success(),
        "the pinned ID matches: {}",
        stderr(&out)
    );

    refused(
        &pki.remote(33099, "ops", "bundle.pem", &["status"]),
        "cannot reach the enforcer daemon at 127.0.0.1:33099",
    );
}

#[test]
fn a_bad_remote_admin_configuration_stops_the_daemon_before_it_changes_anything() {
    if !privileged("a_bad_remote_admin_configuration_stops_the_daemon_before_it_changes_anything") {
        return;
    }
    let sb = Sandbox::new("remote-admin-config");
    let pki = Pki::new(&sb);
    let good = pki.daemon_args(33061);
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut args = good.clone();
        let at = args.iter().position(|a| a == flag).expect("a flag") + 1;
        value.clone_into(&mut args[at]);
        args
    };
    std::fs::write(pki.path("garbage.pem"), "not a bundle\n").expect("writing");
    let other_key = Issued::self_signed(&Spec::ca("admin.example.org"));
    std::fs::write(pki.path("other.key"), &other_key.key_pem).expect("writing");
    let mut two_domains = good.clone();
    two_domains.extend(["--admin-id".into(), "spiffe://prod.example.org/ops".into()]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (good[..2].to_vec(), "--admin-bundle"),
        (
            [&good[..2], &good[6..]].concat(),
            "--admin-listen needs the daemon's own SVID: --tls-cert and --tls-key, or --workload-api",
        ),
        (
            with("--admin-bundle", &pki.arg("garbage.pem")),
            "--admin-bundle: ",
        ),
        (
            with("--admin-bundle", &pki.arg("ops.pem")),
            "not a CA certificate",
        ),
        (
            with("--admin-bundle", &pki.arg("missing.pem")),
            "cannot read it",
        ),
        (
            with("--tls-key", &pki.arg("other.key")),
            "keys may not be consistent: KeyMismatch",
        ),
        (two_domains, "different trust domains"),
        (
            with("--admin-id", "spiffe://admin.example.org"),
            "names a trust domain",
        ),
    ];
    for (args, message) in cases {
        let stderr = start_fails(&sb, &args);
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in: {stderr}"
        );
        for (what, path) in [
            ("pin dir", &sb.pin_dir),
            ("state dir", &sb.state_dir),
            ("control socket", &sb.socket),
        ] {
            assert!(
                !path.exists(),
                "{args:?}: {what} {} was created",
                path.display()
            );
        }
    }
}

/// Starts a daemon with `extra` flags that must make it exit with an error; returns stderr.
fn start_fails(sb: &Sandbox, extra: &[String]) -> String {
    sb.daemon_must_fail(&sb.policy("policy.yaml", POLICY), extra)
}

/// A `status` request over TLS from a client that trusts any server, presenting
/// `client`.pem/.key if given: what the daemon answers, or the TLS error.
fn raw_status(port: u16, client: Option<&Path>) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(base) => {
            let cert = CertificateDer::from_pem_file(base.with_extension("pem")).expect("cert");
            let key = PrivateKeyDer::from_pem_file(base.with_extension("key")).expect("key");
            builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client auth")
        }
    };
    let name = ServerName::try_from("enforcer").expect("a name");
    let tls = ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut stream = StreamOwned::new(tls, tcp);
    stream
        .write_all(b"{\"request\":\"status\"}\n")
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// Accepts any server certificate: these tests judge the daemon's side, not the client's.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
