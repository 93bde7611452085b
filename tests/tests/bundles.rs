//! Trust bundles and the edges that depend on them: bad bundles are refused at the line that
//! names them; an edge with `require_bundles` allows traffic only while both ends' bundles are
//! valid, is suspended (its live connections ended, as by a revocation) when a bundle is
//! removed, replaced by one that fails the checks, or lapses, and resumes when a valid bundle
//! returns; and a lapse stops it in the kernel even while the daemon is stopped.
//! Certificates are minted by the test (enforcer_tests::pki). Ports 34000-34199 belong to this
//! file.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, SystemTime},
};

use enforcer_tests::{
    Json, Outcome, Sandbox,
    pki::{Issued, Spec},
    privileged,
};
use sha2::{Digest as _, Sha256};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";
const LOCALHOST: &str = "127.0.0.1";
const FLOWING: Duration = Duration::from_secs(5);
/// How long the daemon gets to notice a bundle change (it looks every second) and act.
const NOTICED: Duration = Duration::from_secs(10);
const TCP_ENDED: [&str; 2] = ["ECONNABORTED", "ECONNRESET"];

/// Two domains with bundles at `prod` and `staging`, a bundle-gated edge staging -> prod on
/// `gated` and an ungated one on `open`.
fn policy(prod: &Path, staging: &Path, gated: &str, open: &str) -> String {
    format!(
        "version: 1
defaults: {{unlabeled: allow, external: allow}}
domains:
  - name: {PROD}
    cgroups: ['{{root}}/prod']
    bundle: {prod}
  - name: {STAGING}
    cgroups: ['{{root}}/staging']
    bundle: {staging}
federation:
  - id: gated
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{gated}]
    owner: pki-team
    reason: bundle test
    require_bundles: true
  - id: open
    from: {STAGING}
    to: {PROD}
    protocol: tcp
    ports: [{open}]
    owner: pki-team
    reason: bundle test
",
        prod = prod.display(),
        staging = staging.display()
    )
}

fn edge(sb: &Sandbox, id: &str) -> Json {
    sb.listed_edge(id)
        .unwrap_or_else(|| panic!("edge {id} not listed: {}", sb.edges()))
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

#[test]
fn bad_bundles_are_refused_at_the_line_that_names_them() {
    if !privileged("bad_bundles_are_refused_at_the_line_that_names_them") {
        return;
    }
    let mut sb = Sandbox::new("bundle-bad");
    sb.cgroup("prod");
    sb.cgroup("staging");
    let d = sb.dir().to_owned();
    let ca = Issued::self_signed(&Spec::ca(PROD));
    let staging_ca = Issued::self_signed(&Spec::ca(STAGING));
    let (good, good_staging) = (d.join("prod.pem"), d.join("staging.json"));
    fs::write(&good, &ca.pem).expect("bundle");
    fs::write(&good_staging, enforcer_tests::pki::jwks(&[&staging_ca])).expect("bundle");
    let base = sb.policy("good.yaml", &policy(&good, &good_staging, "34000", "34001"));
    let out = sb.enforcer(&["policy", "check", base.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 trust bundle(s)"),
        "{out:?}"
    );
    sb.start_daemon(&base);
    // The CAs last a day, within the default --bundle-warn-before of 24h.
    sb.wait_daemon_log("warning: the trust bundle of prod.example.org", NOTICED);
    let generation = sb.status().get("generation").and_then(Json::as_u64);

    let mut not_ca = Spec::ca(PROD);
    not_ca.ca = Some(false);
    let leafish = d.join("not-ca.pem");
    fs::write(&leafish, Issued::self_signed(&not_ca).pem).expect("bundle");
    let missing = d.join("missing.pem");
    let bad = sb.policy("bad.yaml", &policy(&leafish, &missing, "34000", "34001"));
    let bad_name = bad.display().to_string();
    let want = [
        format!(
            "{bad_name}:6:13: trust bundle of {PROD}: {}: certificate 1: not a CA certificate",
            leafish.display()
        ),
        format!(
            "{bad_name}:9:13: trust bundle of {STAGING}: {}: cannot read it",
            missing.display()
        ),
    ];
    let check = sb.enforcer(&["policy", "check", &bad_name]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "check of a bad bundle succeeded");
    for line in &want {
        assert!(
            stderr.contains(line.as_str()),
            "`policy check` said:\n{stderr}\nexpected {line}"
        );
    }
    let apply = sb.enforcer(&["policy", "apply", &bad_name]);
    let stderr = String::from_utf8_lossy(&apply.stderr);
    assert!(!apply.status.success(), "apply of a bad bundle succeeded");
    for line in &want {
        assert!(
            stderr.contains(line.as_str()),
            "`policy apply` said:\n{stderr}\nexpected {line}"
        );
    }
    assert_eq!(
        sb.status().get("generation").and_then(Json::as_u64),
        generation,
        "a refused apply changed the generation"
    );
    let prod = bundle_status(&sb, PROD);
    assert_eq!(field(&prod, "state"), "valid");
    assert_eq!(field(&prod, "path"), good.display().to_string());
    let fingerprint: String = Sha256::digest(&ca.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        field(
            &prod.get("authorities").expect("authorities").as_array()[0],
            "sha256"
        ),
        fingerprint
    );
    assert!(
        field(&prod, "warning").contains("expires at"),
        "a bundle lapsing within a day carries a warning: {prod}"
    );
}

#[test]
fn a_gated_edge_is_suspended_with_its_bundle_and_resumes_with_a_valid_one() {
    if !privileged("a_gated_edge_is_suspended_with_its_bundle_and_resumes_with_a_valid_one") {
        return;
    }
    let mut sb = Sandbox::new("bundle-gate");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let d = sb.dir().to_owned();
    let (prod_bundle, staging_bundle) = (d.join("prod.pem"), d.join("staging.pem"));
    fs::write(&prod_bundle, Issued::self_signed(&Spec::ca(PROD)).pem).expect("bundle");
    fs::write(&staging_bundle, Issued::self_signed(&Spec::ca(STAGING)).pem).expect("bundle");
    sb.start_daemon(&sb.policy(
        "p.yaml",
        &policy(&prod_bundle, &staging_bundle, "'34010-34011'", "34012"),
    ));
    let mut sink = sb.sink(&prod, LOCALHOST, 34010);
    let _gated = sb.listen(&prod, LOCALHOST, 34011);
    let _open = sb.listen(&prod, LOCALHOST, 34012);
    assert_eq!(sb.connect(&staging, LOCALHOST, 34011), Outcome::greeted());
    let gated = edge(&sb, "gated");
    assert_eq!(field(&gated, "state"), "active");
    assert!(field(&gated, "trust").starts_with("requires trust bundles: valid until"));
    let mut stream = sb.stream(&staging, LOCALHOST, 34010);
    sink.expect_received(3, FLOWING, "staging -> prod over the gated edge");

    fs::remove_file(&prod_bundle).expect("removing the bundle");
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    stream.expect_end(NOTICED, &TCP_ENDED, "the gated edge's bundle was removed");
    let outcome = sb.connect(&staging, LOCALHOST, 34011);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "gated edge without prod's bundle: {outcome}"
    );
    let outcome = sb.connect(&staging, LOCALHOST, 34012);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "the ungated edge is untouched: {outcome}"
    );
    let gated = edge(&sb, "gated");
    assert_eq!(field(&gated, "state"), "suspended");
    assert!(field(&gated, "trust").contains(PROD), "{gated}");
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "unusable");

    // Replaced by a certificate that is not a CA: still suspended, with the reason shown.
    let mut not_ca = Spec::ca(PROD);
    not_ca.ca = Some(false);
    fs::write(&prod_bundle, Issued::self_signed(&not_ca).pem).expect("bundle");
    sb.wait_daemon_log("trust bundle of prod.example.org is unusable", NOTICED);
    let status = bundle_status(&sb, PROD);
    assert!(field(&status, "error").contains("not a CA"), "{status}");
    assert_eq!(sb.connect(&staging, LOCALHOST, 34011), Outcome::EPERM);

    // A valid bundle (a new CA) returns: the edge resumes.
    fs::write(&prod_bundle, Issued::self_signed(&Spec::ca(PROD)).pem).expect("bundle");
    sb.wait_daemon_log("edge gated active while its bundles are valid", NOTICED);
    let outcome = sb.connect(&staging, LOCALHOST, 34011);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "the gated edge resumed: {outcome}"
    );
    assert_eq!(field(&edge(&sb, "gated"), "state"), "active");
    let ended: Vec<Json> = sb
        .event_log(&[])
        .into_iter()
        .filter(|e| e.get("hook").and_then(Json::as_str) == Some("ended"))
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "one connection ended by the suspension: {ended:?}"
    );
}

#[test]
fn a_lapsing_bundle_stops_its_edge_in_the_kernel_with_the_daemon_stopped() {
    if !privileged("a_lapsing_bundle_stops_its_edge_in_the_kernel_with_the_daemon_stopped") {
        return;
    }
    let mut sb = Sandbox::new("bundle-lapse");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let d = sb.dir().to_owned();
    let (prod_bundle, staging_bundle) = (d.join("prod.pem"), d.join("staging.pem"));
    fs::write(&prod_bundle, Issued::self_signed(&Spec::ca(PROD)).pem).expect("bundle");
    fs::write(&staging_bundle, Issued::self_signed(&Spec::ca(STAGING)).pem).expect("bundle");
    let policy = sb.policy(
        "p.yaml",
        &policy(&prod_bundle, &staging_bundle, "'34020-34021'", "34022"),
    );
    sb.start_daemon(&policy);
    // The lapsing bundle is applied to a running daemon, so its seconds are not spent on a
    // start-up that takes seconds when many daemons load at once.
    let lapsing = Spec::ca(PROD).valid(-60, 5);
    let lapses = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(lapsing.not_after.unix_timestamp()).expect("time"));
    fs::write(&prod_bundle, Issued::self_signed(&lapsing).pem).expect("bundle");
    sb.apply(&policy);
    let mut sink = sb.sink(&prod, LOCALHOST, 34020);
    let _gated = sb.listen(&prod, LOCALHOST, 34021);
    let outcome = sb.connect(&staging, LOCALHOST, 34021);
    assert_eq!(
        outcome,
        Outcome::greeted(),
        "before the bundle lapses: {outcome}"
    );
    let mut stream = sb.stream(&staging, LOCALHOST, 34020);
    sink.expect_received(3, FLOWING, "staging -> prod before the bundle lapses");
    let left = lapses.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        left > Duration::from_millis(500),
        "set-up took too long: {left:?} left"
    );

    sb.pause_daemon(true);
    // The one legitimate sleep: a deadline passing.
    thread::sleep(left + Duration::from_millis(300));
    let outcome = sb.connect(&staging, LOCALHOST, 34021);
    sb.pause_daemon(false);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "300 ms after prod's bundle lapsed, daemon stopped: the kernel must refuse ({outcome})"
    );
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    stream.expect_end(NOTICED, &TCP_ENDED, "prod's bundle lapsed");
    assert_eq!(field(&edge(&sb, "gated"), "state"), "suspended");
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "expired");
}

#[test]
fn an_empty_bundle_is_valid_trusts_nothing_and_suspends_its_edges() {
    if !privileged("an_empty_bundle_is_valid_trusts_nothing_and_suspends_its_edges") {
        return;
    }
    let mut sb = Sandbox::new("bundle-empty");
    let prod = sb.cgroup("prod");
    let staging = sb.cgroup("staging");
    let d = sb.dir().to_owned();
    let (prod_bundle, staging_bundle) = (d.join("prod.json"), d.join("staging.pem"));
    let ca = Issued::self_signed(&Spec::ca(PROD));
    fs::write(&prod_bundle, enforcer_tests::pki::jwks(&[&ca])).expect("bundle");
    fs::write(&staging_bundle, Issued::self_signed(&Spec::ca(STAGING)).pem).expect("bundle");
    sb.start_daemon(&sb.policy(
        "p.yaml",
        &policy(&prod_bundle, &staging_bundle, "'34030-34031'", "34032"),
    ));
    let mut sink = sb.sink(&prod, LOCALHOST, 34030);
    let _gated = sb.listen(&prod, LOCALHOST, 34031);
    let _open = sb.listen(&prod, LOCALHOST, 34032);
    let mut stream = sb.stream(&staging, LOCALHOST, 34030);
    sink.expect_received(3, FLOWING, "staging -> prod over the gated edge");

    // What a bundle endpoint serves while its domain is retired: a document with no keys.
    fs::write(&prod_bundle, r#"{"keys": []}"#).expect("bundle");
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    stream.expect_end(NOTICED, &TCP_ENDED, "prod's bundle became empty");
    let outcome = sb.connect(&staging, LOCALHOST, 34031);
    assert_eq!(
        outcome,
        Outcome::EPERM,
        "gated edge, empty bundle: {outcome}"
    );
    let outcome = sb.connect(&staging, LOCALHOST, 34032);
    assert_eq!(outcome, Outcome::greeted(), "the ungated edge: {outcome}");
    let status = bundle_status(&sb, PROD);
    assert_eq!(field(&status, "state"), "empty", "{status}");
    assert!(
        field(&status, "error").contains("trusts nothing"),
        "{status}"
    );
    assert!(status.get("expires").is_none_or(Json::is_null), "{status}");
    let gated = edge(&sb, "gated");
    assert_eq!(field(&gated, "state"), "suspended");
    assert!(field(&gated, "trust").contains("trusts nothing"), "{gated}");

    // An empty PEM file is a bundle too: checked and applied, and its edges stay suspended.
    let empty_pem = d.join("empty.pem");
    fs::write(&empty_pem, "").expect("bundle");
    let next = sb.policy(
        "empty.yaml",
        &policy(&empty_pem, &staging_bundle, "'34030-34031'", "34032"),
    );
    let next = next.to_str().expect("utf-8");
    let check = sb.enforcer(&["policy", "check", next]);
    assert!(
        check.status.success(),
        "check of an empty bundle: {check:?}"
    );
    let generation = sb.status().get("generation").and_then(Json::as_u64);
    let apply = sb.enforcer(&["policy", "apply", next]);
    assert!(
        apply.status.success(),
        "apply of an empty bundle: {apply:?}"
    );
    assert_ne!(
        sb.status().get("generation").and_then(Json::as_u64),
        generation,
        "the policy naming an empty bundle was not applied"
    );
    assert_eq!(field(&bundle_status(&sb, PROD), "state"), "empty");
    assert_eq!(sb.connect(&staging, LOCALHOST, 34031), Outcome::EPERM);
    assert_eq!(field(&edge(&sb, "gated"), "state"), "suspended");
}

/// Makes a FIFO at `path` that anyone may open: what a user who can write where a bundle is
/// kept can put there instead.
fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
}

/// A daemon with bundles for both domains at `prod.pem` and `staging.pem` in its sandbox.
fn with_bundles(test: &str) -> (Sandbox, std::path::PathBuf, std::path::PathBuf) {
    let mut sb = Sandbox::new(test);
    sb.cgroup("prod");
    sb.cgroup("staging");
    let d = sb.dir().to_owned();
    let (prod_bundle, staging_bundle) = (d.join("prod.pem"), d.join("staging.pem"));
    fs::write(&prod_bundle, Issued::self_signed(&Spec::ca(PROD)).pem).expect("bundle");
    fs::write(&staging_bundle, Issued::self_signed(&Spec::ca(STAGING)).pem).expect("bundle");
    sb.start_daemon(&sb.policy(
        "p.yaml",
        &policy(&prod_bundle, &staging_bundle, "34040", "34041"),
    ));
    (sb, prod_bundle, staging_bundle)
}

/// The daemon reads bundle files as root, at paths others may be able to write. Before these
/// were checked, a FIFO named by a plan or an apply held that request for ever (and reading a
/// FIFO somebody writes into, or `/dev/zero`, took memory without bound).
#[test]
fn a_bundle_that_is_not_a_regular_file_is_refused_at_once() {
    if !privileged("a_bundle_that_is_not_a_regular_file_is_refused_at_once") {
        return;
    }
    let (sb, _, staging_bundle) = with_bundles("bundle-special");
    let prompt = enforcer_tests::patient(Duration::from_secs(30));
    let fifo = sb.dir().join("fifo.pem");
    mkfifo(&fifo);
    // The FIFO first: before the check, /dev/zero would have filled the daemon's memory.
    for (bundle, kind, verb) in [
        (fifo.as_path(), "a FIFO", "plan"),
        (Path::new("/dev/zero"), "a character device", "plan"),
        (fifo.as_path(), "a FIFO", "apply"),
    ] {
        let file = sb.policy(
            "special.yaml",
            &policy(bundle, &staging_bundle, "34040", "34041"),
        );
        let started = std::time::Instant::now();
        let out = sb.enforcer(&["policy", verb, file.to_str().expect("utf-8")]);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{verb} with {kind} as a bundle");
        assert!(
            stderr.contains(&format!(
                "trust bundle of {PROD}: {}: cannot read it: it is {kind}, not a regular file",
                bundle.display()
            )),
            "{verb} with {kind} as a bundle said:\n{stderr}"
        );
        assert!(took < prompt, "{verb} with {kind} took {took:?}");
    }
}

/// A bundle in force replaced by a FIFO, by whoever may write where bundles are kept: before
/// the check, the daemon's once-a-second re-read waited on it for ever while holding the
/// daemon's lock, and every request (root's `status` too) hung with it.
#[test]
fn a_bundle_in_force_replaced_by_a_fifo_is_unusable_and_the_daemon_answers() {
    if !privileged("a_bundle_in_force_replaced_by_a_fifo_is_unusable_and_the_daemon_answers") {
        return;
    }
    let (mut sb, prod_bundle, _) = with_bundles("bundle-fifo");
    let prompt = enforcer_tests::patient(Duration::from_secs(30));
    fs::remove_file(&prod_bundle).expect("removing the bundle");
    mkfifo(&prod_bundle);
    let logged = sb.wait_daemon_log("trust bundle of prod.example.org is unusable", NOTICED);
    assert!(
        logged.contains("it is a FIFO, not a regular file"),
        "{logged}"
    );
    let started = std::time::Instant::now();
    let status = sb.enforcer(&["status"]);
    assert!(
        status.status.success() && started.elapsed() < prompt,
        "root's status after {:?}: {status:?}",
        started.elapsed()
    );
    sb.wait_daemon_log("edge gated suspended", NOTICED);
    let prod = bundle_status(&sb, PROD);
    assert_eq!(field(&prod, "state"), "unusable");
    assert!(field(&prod, "error").contains("a FIFO"), "{prod}");
}
