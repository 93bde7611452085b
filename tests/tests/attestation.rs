//! SVID-attested bindings end to end: a process inside a cgroup runs `enforcer attest` with an
//! X.509-SVID, the daemon binds that cgroup to the SVID's attested domain, and the kernel then
//! judges the cgroup's new sockets as that domain until the SVID expires. Invalid SVIDs are
//! refused through the socket and bind nothing. Ports 33500-33999.

use std::{path::PathBuf, time::Duration};

use enforcer_tests::{
    Json, Outcome, Sandbox,
    pki::{Issued, Spec},
    privileged,
};

const PROD: &str = "prod.example.org";
const STAGING: &str = "staging.example.org";

/// prod is attested; staging is bound by the policy and may reach prod on one port only.
/// Unlabeled flows are refused, so a cgroup that has not attested reaches no domain.
const POLICY: &str = "
version: 1
defaults: {unlabeled: deny, external: allow}
domains:
  - name: prod.example.org
    attested: true
    bundle: '{dir}/prod.pem'
  - name: staging.example.org
    cgroups: ['{root}/staging']
    bundle: '{dir}/staging.pem'
federation:
  - from: staging.example.org
    to: prod.example.org
    protocol: tcp
    ports: [33501, 33511, 33521, 33531]
    owner: platform-team
    reason: staging reads the prod API
";

/// A sandbox whose daemon serves an attestation socket, with the CAs of both domains.
struct World {
    sb: Sandbox,
    prod_ca: Issued,
    staging_ca: Issued,
    socket: PathBuf,
    policy: PathBuf,
    /// More daemon arguments.
    extra: Vec<String>,
}

impl World {
    fn start(test: &str) -> Self {
        Self::start_with(test, |_| Vec::new())
    }

    /// Starts the daemon with the arguments `extra` gives for this world.
    fn start_with(test: &str, extra: impl FnOnce(&Self) -> Vec<String>) -> Self {
        let sb = Sandbox::new(test);
        let prod_ca = Issued::self_signed(&Spec::ca(PROD));
        let staging_ca = Issued::self_signed(&Spec::ca(STAGING));
        std::fs::write(sb.dir.join("prod.pem"), &prod_ca.pem).expect("writing a bundle");
        std::fs::write(sb.dir.join("staging.pem"), &staging_ca.pem).expect("writing a bundle");
        sb.cgroup("staging");
        let dir = sb.dir.display().to_string();
        let policy = sb.policy("p.yaml", &POLICY.replace("{dir}", &dir));
        let socket = sb.dir.join("attest.sock");
        let mut world = Self {
            sb,
            prod_ca,
            staging_ca,
            socket,
            policy,
            extra: Vec::new(),
        };
        world.extra = extra(&world);
        world.start_daemon();
        world
    }

    fn start_daemon(&mut self) {
        let socket = self.socket.display().to_string();
        let mut args = vec!["--attest-socket", &socket];
        args.extend(self.extra.iter().map(String::as_str));
        self.sb.start_daemon_with(&self.policy, &args);
    }

    /// Writes `svid` (with `chain` after it) and its key; returns the two paths. The prefix
    /// keeps an SVID named after a domain from overwriting that domain's bundle, which the
    /// daemon would re-read as a broken bundle.
    fn files(&self, name: &str, svid: &Issued, chain: &[&Issued]) -> (String, String) {
        let cert = self.sb.dir.join(format!("svid-{name}.pem"));
        let key = self.sb.dir.join(format!("svid-{name}.key"));
        svid.write(chain, &cert, &key);
        (cert.display().to_string(), key.display().to_string())
    }

    /// Runs `enforcer attest` inside `cgroup` with `svid`: (succeeded, stdout, stderr).
    fn attest(&self, cgroup: &str, name: &str, svid: &Issued) -> (bool, String, String) {
        self.attest_with(cgroup, name, svid, &[])
    }

    /// [`Self::attest`] with more arguments for `enforcer attest`.
    fn attest_with(
        &self,
        cgroup: &str,
        name: &str,
        svid: &Issued,
        extra: &[&str],
    ) -> (bool, String, String) {
        let (cert, key) = self.files(name, svid, &[]);
        let socket = self.socket.display().to_string();
        let mut args = vec![
            "attest", "--svid", &cert, "--key", &key, "--socket", &socket,
        ];
        args.extend(extra);
        let out = self.sb.workload(cgroup).enforcer(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    /// Attests `cgroup` as `id` with a valid SVID of prod lasting `seconds`; must succeed.
    fn attest_prod(&self, cgroup: &str, id: &str, seconds: i64) -> String {
        let svid = self.prod_ca.issue(&Spec::leaf(id).valid(-60, seconds));
        let (ok, stdout, stderr) = self.attest(cgroup, "ok", &svid);
        assert!(ok, "attesting {cgroup} as {id} failed: {stderr}");
        stdout
    }

    fn bindings(&self) -> Vec<Json> {
        self.sb
            .status()
            .get("attestation")
            .and_then(|a| a.get("bindings"))
            .expect("status has attestation.bindings")
            .as_array()
            .to_vec()
    }

    fn binding(&self, cgroup: &str) -> Option<Json> {
        self.bindings()
            .into_iter()
            .find(|b| b.get("cgroup").and_then(Json::as_str) == Some(cgroup))
    }
}

#[test]
fn an_attested_cgroup_is_judged_as_its_svids_domain() {
    if !privileged("an_attested_cgroup_is_judged_as_its_svids_domain") {
        return;
    }
    let w = World::start("attest-bind");
    let sb = &w.sb;
    let db = sb.cgroup("db");
    let app = sb.cgroup("app");
    let staging = format!("{}/staging", sb.root);
    let said = w.attest_prod(&db, "spiffe://prod.example.org/db", 3600);
    assert!(
        said.starts_with(&format!(
            "bound {db} to prod.example.org as spiffe://prod.example.org/db until "
        )),
        "{said}"
    );
    // Listeners created after the attestation carry prod.
    let _edge_port = sb.listen(&db, "127.0.0.1", 33501);
    let _other_port = sb.listen(&db, "127.0.0.1", 33502);
    let _staging_api = sb.listen(&staging, "127.0.0.1", 33503);

    // Not attested yet: unlabeled, refused everywhere.
    assert_eq!(sb.connect(&app, "127.0.0.1", 33502), Outcome::EPERM);
    assert_eq!(sb.connect(&app, "127.0.0.1", 33501), Outcome::EPERM);

    let said = w.attest_prod(&app, "spiffe://prod.example.org/app", 3600);
    assert!(said.contains("as spiffe://prod.example.org/app"), "{said}");
    let binding = w.binding(&app).expect("status lists the binding");
    assert_eq!(binding.get("domain").and_then(Json::as_str), Some(PROD));
    assert_eq!(
        binding.get("spiffe_id").and_then(Json::as_str),
        Some("spiffe://prod.example.org/app")
    );
    // Now prod: within prod anything goes, across the boundary only what an edge allows.
    assert_eq!(sb.connect(&app, "127.0.0.1", 33502), Outcome::greeted());
    assert_eq!(
        sb.connect(&app, "127.0.0.1", 33503),
        Outcome::EPERM,
        "prod -> staging has no edge"
    );
    assert_eq!(sb.connect(&staging, "127.0.0.1", 33501), Outcome::greeted());
    assert_eq!(sb.connect(&staging, "127.0.0.1", 33502), Outcome::EPERM);
    let text = String::from_utf8_lossy(&sb.enforcer(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("{app} (id ")) && text.contains("spiffe://prod.example.org/app"),
        "{text}"
    );
}

#[test]
fn svids_the_standards_reject_are_refused_through_the_socket_and_bind_nothing() {
    if !privileged("svids_the_standards_reject_are_refused_through_the_socket_and_bind_nothing") {
        return;
    }
    let mut w = World::start("attest-refuse");
    let db = w.sb.cgroup("db");
    let x = w.sb.cgroup("x");
    w.attest_prod(&db, "spiffe://prod.example.org/db", 3600);
    let _server = w.sb.listen(&db, "127.0.0.1", 33512);

    let id = "spiffe://prod.example.org/intruder";
    // Staging's CA signs an SVID that claims prod.
    let forged = w.staging_ca.issue(&Spec::leaf(id));
    let mut ca_leaf = Spec::leaf(id);
    ca_leaf.ca = Some(true);
    let ca_leaf = w.prod_ca.issue(&ca_leaf);
    let expired = w.prod_ca.issue(&Spec::leaf(id).valid(-7200, -60));
    let mut two_uris = Spec::leaf(id);
    two_uris.uris.push("spiffe://prod.example.org/other".into());
    let two_uris = w.prod_ca.issue(&two_uris);
    let cases: [(&str, &Issued, &str, &str); 4] = [
        (
            "forged",
            &forged,
            "is well-formed",
            "no valid certification path to the trust bundle of prod.example.org",
        ),
        ("ca", &ca_leaf, "must not be a CA", "must not be a CA"),
        (
            "expired",
            &expired,
            "expired at",
            "no valid certification path",
        ),
        ("two-uris", &two_uris, "2 URI SANs", "2 URI SANs"),
    ];
    for (name, svid, client_says, daemon_says) in cases {
        let (ok, _, stderr) = w.attest(&x, name, svid);
        assert!(!ok, "{name}: attestation succeeded");
        assert!(
            stderr.contains("the daemon refused the SVID") && stderr.contains(client_says),
            "{name}: {stderr}"
        );
        let line =
            w.sb.wait_daemon_log("refused: TLS handshake failed", Duration::from_secs(10));
        assert!(
            line.contains(&format!("in cgroup {x}")) && line.contains(daemon_says),
            "{name}: {line}"
        );
    }
    // A valid SVID of a domain the policy binds by cgroup, not by attestation.
    let staging_svid = w
        .staging_ca
        .issue(&Spec::leaf("spiffe://staging.example.org/job"));
    let (ok, _, stderr) = w.attest(&x, "staging", &staging_svid);
    assert!(!ok, "a staging SVID attested");
    assert!(
        stderr.contains("refused: staging.example.org is not an attested domain"),
        "{stderr}"
    );
    w.sb.wait_daemon_log("not an attested domain", Duration::from_secs(10));

    assert!(w.binding(&x).is_none(), "{:?}", w.bindings());
    assert_eq!(w.bindings().len(), 1);
    assert_eq!(w.sb.connect(&x, "127.0.0.1", 33512), Outcome::EPERM);
}

#[test]
fn an_attested_binding_ends_when_its_svid_expires() {
    if !privileged("an_attested_binding_ends_when_its_svid_expires") {
        return;
    }
    let mut w = World::start("attest-expiry");
    let db = w.sb.cgroup("db");
    let app = w.sb.cgroup("app");
    w.attest_prod(&db, "spiffe://prod.example.org/db", 3600);
    let _server = w.sb.listen(&db, "127.0.0.1", 33522);
    w.attest_prod(&app, "spiffe://prod.example.org/short", 4);
    assert_eq!(w.sb.connect(&app, "127.0.0.1", 33522), Outcome::greeted());
    let line = w.sb.wait_daemon_log(
        &format!("cgroup {app} to prod.example.org"),
        Duration::from_secs(15),
    );
    assert!(line.contains("removed: its SVID expired"), "{line}");
    assert!(w.binding(&app).is_none(), "{:?}", w.bindings());
    assert!(w.binding(&db).is_some());
    assert_eq!(w.sb.connect(&app, "127.0.0.1", 33522), Outcome::EPERM);
}

#[test]
fn attested_bindings_survive_a_restart_and_end_with_the_attested_domain() {
    if !privileged("attested_bindings_survive_a_restart_and_end_with_the_attested_domain") {
        return;
    }
    let mut w = World::start("attest-restart");
    let db = w.sb.cgroup("db");
    let app = w.sb.cgroup("app");
    w.attest_prod(&db, "spiffe://prod.example.org/db", 3600);
    w.attest_prod(&app, "spiffe://prod.example.org/app", 3600);
    let _server = w.sb.listen(&db, "127.0.0.1", 33532);
    w.sb.kill_daemon();
    w.start_daemon();
    assert!(w.binding(&app).is_some(), "{:?}", w.bindings());
    // The new daemon's own generation still binds the cgroup.
    let generation = w.sb.apply(&w.policy);
    assert!(generation > 0);
    assert_eq!(w.sb.connect(&app, "127.0.0.1", 33532), Outcome::greeted());

    // A policy where prod is no longer attested ends every attested binding.
    let dir = w.sb.dir.display().to_string();
    let static_prod = POLICY
        .replace(
            "    attested: true\n",
            &format!("    cgroups: ['{}/db']\n", w.sb.root),
        )
        .replace("{dir}", &dir);
    let policy = w.sb.policy("static.yaml", &static_prod);
    w.sb.apply(&policy);
    let line = w.sb.wait_daemon_log(
        &format!("cgroup {app} to prod.example.org"),
        Duration::from_secs(10),
    );
    assert!(line.contains("not an attested domain"), "{line}");
    assert!(w.bindings().is_empty(), "{:?}", w.bindings());
    assert_eq!(w.sb.connect(&app, "127.0.0.1", 33532), Outcome::EPERM);
}

#[test]
fn a_workload_can_verify_the_daemons_own_svid() {
    if !privileged("a_workload_can_verify_the_daemons_own_svid") {
        return;
    }
    let w = World::start_with("attest-server", |w| {
        let own = w
            .prod_ca
            .issue(&Spec::leaf("spiffe://prod.example.org/enforcer"));
        let (cert, key) = w.files("daemon", &own, &[]);
        vec!["--tls-cert".into(), cert, "--tls-key".into(), key]
    });
    let app = w.sb.cgroup("app");
    let svid = w
        .prod_ca
        .issue(&Spec::leaf("spiffe://prod.example.org/app"));
    let dir = w.sb.dir.display().to_string();
    let prod_bundle = format!("{dir}/prod.pem");
    let staging_bundle = format!("{dir}/staging.pem");
    // The daemon's SVID does not chain to staging's bundle: the workload stops before binding.
    let (ok, _, stderr) = w.attest_with(
        &app,
        "app",
        &svid,
        &["--bundle", &staging_bundle, "--bundle-domain", STAGING],
    );
    assert!(!ok, "a daemon outside the given bundle was trusted");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(w.binding(&app).is_none());
    let (ok, stdout, stderr) = w.attest_with(&app, "app", &svid, &["--bundle", &prod_bundle]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!("bound {app} to {PROD}")),
        "{stdout}"
    );
}
