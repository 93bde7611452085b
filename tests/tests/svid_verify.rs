//! `enforcer svid verify`: the daemon's X.509-SVID rules, offline, through the CLI. Each case
//! breaks one rule of the X509-SVID standard and must be refused with its reason. Needs no
//! privileges.

use std::{fs, path::Path, process::Command};

use enforcer_tests::{
    enforcer,
    pki::{Eku, Issued, Ku, Spec, jwks},
};

const ID: &str = "spiffe://prod.example.org/db";

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("enforcer-svid-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs `svid verify`; returns (succeeded, stdout + stderr).
fn verify(svid: &Path, bundle: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(enforcer())
        .args(["svid", "verify", "--svid"])
        .arg(svid)
        .arg("--bundle")
        .arg(bundle)
        .args(extra)
        .output()
        .expect("running enforcer");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn each_x509_svid_rule_broken_alone_is_refused() {
    let dir = scratch("rules");
    let ca = Issued::self_signed(&Spec::ca("prod.example.org"));
    let bundle = dir.join("bundle.json");
    fs::write(&bundle, jwks(&[&ca])).expect("bundle");
    let (cert, key) = (dir.join("svid.pem"), dir.join("svid.key"));

    let good = ca.issue(&Spec::leaf(ID));
    good.write(&[], &cert, &key);
    let (ok, text) = verify(&cert, &bundle, &[]);
    assert!(
        ok && text.starts_with(&format!("valid: {ID} until ")),
        "{text}"
    );
    let (ok, text) = verify(&cert, &bundle, &["--role", "server"]);
    assert!(ok, "{text}");

    let mut cases: Vec<(Spec, &str)> = Vec::new();
    let mut two = Spec::leaf(ID);
    two.uris.push("spiffe://prod.example.org/other".into());
    cases.push((two, "2 URI SANs"));
    cases.push((Spec::leaf("spiffe://prod.example.org"), "has no path"));
    let mut ca_leaf = Spec::leaf(ID);
    ca_leaf.ca = Some(true);
    cases.push((ca_leaf, "must not be a CA"));
    let mut no_ds = Spec::leaf(ID);
    no_ds.key_usages = vec![Ku::KeyAgreement];
    cases.push((no_ds, "lacks digitalSignature"));
    let mut cert_sign = Spec::leaf(ID);
    cert_sign.key_usages.push(Ku::KeyCertSign);
    cases.push((cert_sign, "has keyCertSign"));
    let mut crl_sign = Spec::leaf(ID);
    crl_sign.key_usages.push(Ku::CrlSign);
    cases.push((crl_sign, "has cRLSign"));
    cases.push((
        Spec::leaf(ID).valid(-7200, -10),
        "no valid certification path",
    ));
    let mut server_only = Spec::leaf(ID);
    server_only.extended_key_usages = vec![Eku::ServerAuth];
    cases.push((server_only, "no valid certification path"));
    for (spec, why) in cases {
        ca.issue(&spec).write(&[], &cert, &key);
        let (ok, text) = verify(&cert, &bundle, &[]);
        assert!(
            !ok && text.contains(why),
            "expected a refusal with {why:?}: {text}"
        );
    }

    // Another domain's CA cannot vouch for prod, even when handed prod's bundle file name.
    let staging = Issued::self_signed(&Spec::ca("staging.example.org"));
    staging.issue(&Spec::leaf(ID)).write(&[], &cert, &key);
    let (ok, text) = verify(&cert, &bundle, &[]);
    assert!(
        !ok && text.contains("no valid certification path"),
        "{text}"
    );
    // A bundle whose authority is no CA is refused whole.
    let mut not_ca = Spec::ca("prod.example.org");
    not_ca.ca = Some(false);
    fs::write(&bundle, Issued::self_signed(&not_ca).pem).expect("bundle");
    good.write(&[], &cert, &key);
    let (ok, text) = verify(&cert, &bundle, &[]);
    assert!(!ok && text.contains("invalid trust bundle"), "{text}");
    fs::remove_dir_all(dir).expect("cleaning up");
}
