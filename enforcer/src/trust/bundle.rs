//! A trust domain's bundle: the CA certificates its X.509-SVIDs chain to, read from a PEM file
//! of certificates or from a SPIFFE bundle document (a JWK set whose `x509-svid` entries carry
//! each CA in `x5c`, as the SPIFFE Trust Domain and Bundle standard publishes them).

use std::{io::BufReader, path::Path};

use base64::Engine as _;
use enforcer_policy::TrustDomain;
use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, pem::SectionKind};
use sha2::{Digest as _, Sha256};

use super::certificate;
use crate::regular_file;

/// Bundles are a handful of certificates; anything far larger is not a bundle.
const MAX_BYTES: u64 = 1 << 20;

/// Why an empty bundle allows nothing.
pub const EMPTY: &str = "is empty: it holds no CA certificate and trusts nothing";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub domain: TrustDomain,
    pub authorities: Vec<Authority>,
}

/// One CA certificate of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub der: CertificateDer<'static>,
    /// SHA-256 of the DER, lowercase hex: what `openssl x509 -fingerprint -sha256` prints.
    pub sha256: String,
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl Bundle {
    /// Reads and checks the bundle of `domain` at `path`: only a regular file (a symlink to
    /// one is followed: tools that rotate bundles often swap a link), at most `MAX_BYTES`. The daemon reads bundles
    /// as root, at paths others may be able to replace: a FIFO or a device there is refused,
    /// never waited on or read without end.
    pub fn read(path: &Path, domain: &TrustDomain) -> Result<Self, BundleError> {
        let fail = |why: String| BundleError(format!("{}: {why}", path.display()));
        let bytes = regular_file::read(path, MAX_BYTES)
            .map_err(|err| fail(format!("cannot read it: {err}")))?;
        Self::parse(&bytes, domain).map_err(|err| fail(err.0))
    }

    /// Checks every certificate as a signing certificate of `domain`: a bundle with one bad
    /// authority is refused whole, never used in part.
    pub fn parse(bytes: &[u8], domain: &TrustDomain) -> Result<Self, BundleError> {
        let is_json = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        // No certificate at all is a valid bundle that trusts nothing (SPIFFE Trust Domain and
        // Bundle 4.1.3): a domain being retired may publish one. It reads as empty, and
        // `usable_at` keeps the edges that require it suspended.
        let ders = if is_json { jwks(bytes)? } else { pem(bytes)? };
        Self::from_ders(ders, domain)
    }

    /// The bundle of `domain` from its CA certificates (DER), each checked as `parse` does:
    /// the form the SPIFFE Workload API delivers.
    pub fn from_ders(ders: Vec<Vec<u8>>, domain: &TrustDomain) -> Result<Self, BundleError> {
        let authorities = ders
            .into_iter()
            .enumerate()
            .map(|(i, der)| {
                let facts = certificate::signing(&der, Some(domain))
                    .map_err(|why| BundleError(format!("certificate {}: {why}", i + 1)))?;
                Ok(Authority {
                    sha256: hex(&Sha256::digest(&der)),
                    der: CertificateDer::from(der),
                    subject: facts.subject,
                    not_before: facts.not_before,
                    not_after: facts.not_after,
                })
            })
            .collect::<Result<_, BundleError>>()?;
        Ok(Bundle {
            domain: domain.clone(),
            authorities,
        })
    }

    /// The earliest end of an authority's validity: the bundle must be renewed before then.
    /// None for an empty bundle, which never trusted anything.
    pub fn expires(&self) -> Option<Timestamp> {
        self.authorities.iter().map(|a| a.not_after).min()
    }

    /// `Ok(expires)` when the bundle has an authority and every one is within its validity
    /// window at `now`. A bundle is trusted only whole: an expired authority means it is due
    /// for replacement. An empty bundle is never usable: it trusts nothing.
    pub fn usable_at(&self, now: Timestamp) -> Result<Timestamp, BundleError> {
        let Some(expires) = self.expires() else {
            return Err(BundleError(EMPTY.into()));
        };
        for (i, a) in self.authorities.iter().enumerate() {
            if now < a.not_before {
                return Err(BundleError(format!(
                    "certificate {} ({}) is not valid before {}",
                    i + 1,
                    a.subject,
                    a.not_before
                )));
            }
            if a.not_after <= now {
                return Err(BundleError(format!(
                    "certificate {} ({}) expired at {}",
                    i + 1,
                    a.subject,
                    a.not_after
                )));
            }
        }
        Ok(expires)
    }

    pub fn is_empty(&self) -> bool {
        self.authorities.is_empty()
    }
}

/// Every CERTIFICATE section; any other PEM section (a private key, say) is refused rather
/// than skipped, since it means the wrong file was named.
fn pem(bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut reader = BufReader::new(bytes);
    let mut ders = Vec::new();
    loop {
        match rustls_pki_types::pem::from_buf(&mut reader) {
            Ok(Some((SectionKind::Certificate, der))) => ders.push(der),
            Ok(Some((kind, _))) => {
                return Err(BundleError(format!(
                    "holds a PEM section that is not a certificate ({kind:?})"
                )));
            }
            Ok(None) => break,
            Err(err) => return Err(BundleError(format!("not a PEM file: {err:?}"))),
        }
    }
    if ders.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BundleError(
            "is neither PEM certificates nor a SPIFFE bundle (JSON)".into(),
        ));
    }
    Ok(ders)
}

/// The `x509-svid` entries of a SPIFFE bundle document. Per the X509-SVID standard (6.2), an
/// entry without `x5c` is ignored and only the first `x5c` value counts; entries for other
/// uses (`jwt-svid`) are not this bundle's concern.
fn jwks(bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    let doc: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| BundleError(format!("not a valid SPIFFE bundle document: {err}")))?;
    let keys = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| BundleError("SPIFFE bundle document has no `keys` array".into()))?;
    let mut ders = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if key.get("use").and_then(serde_json::Value::as_str) != Some("x509-svid") {
            continue;
        }
        let Some(first) = key
            .get("x5c")
            .and_then(serde_json::Value::as_array)
            .and_then(|x5c| x5c.first())
        else {
            continue;
        };
        let text = first
            .as_str()
            .ok_or_else(|| BundleError(format!("key {}: `x5c` values must be strings", i + 1)))?;
        // RFC 7517 4.7: standard base64 with padding, not base64url.
        let der = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|err| BundleError(format!("key {}: `x5c` is not base64: {err}", i + 1)))?;
        ders.push(der);
    }
    Ok(ders)
}

/// `bytes` in lower-case hex, as SHA-256 fingerprints are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use enforcer_tests::pki::{Issued, Ku, Spec, jwks};

    use super::*;

    fn domain() -> TrustDomain {
        "prod.example.org".parse().expect("valid")
    }

    fn parse(text: &str) -> Result<Bundle, String> {
        Bundle::parse(text.as_bytes(), &domain()).map_err(|e| e.0)
    }

    #[test]
    fn pem_and_spiffe_bundles_read_the_same_authorities() {
        let a = Issued::self_signed(&Spec::ca("prod.example.org"));
        let b = Issued::self_signed(&Spec::ca("prod.example.org").valid(-60, 600));
        let from_pem = parse(&format!("{}{}", a.pem, b.pem)).expect("pem");
        let from_jwks = parse(&jwks(&[&a, &b])).expect("jwks");
        assert_eq!(from_pem, from_jwks);
        assert_eq!(from_pem.authorities.len(), 2);
        assert_eq!(from_pem.expires(), Some(from_pem.authorities[1].not_after));
        assert_eq!(from_pem.authorities[0].sha256.len(), 64);
        assert_eq!(from_pem.authorities[0].subject, "CN=prod.example.org CA");
    }

    #[test]
    fn spiffe_bundle_entries_for_other_uses_or_without_x5c_are_ignored() {
        let a = Issued::self_signed(&Spec::ca("prod.example.org"));
        let doc = jwks(&[&a]).replace(
            r#"{"keys":["#,
            r#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k1"},{"use":"x509-svid","kty":"EC"},"#,
        );
        assert_eq!(parse(&doc).expect("valid").authorities.len(), 1);
        assert!(
            parse(r#"{"keys": 3}"#)
                .expect_err("keys")
                .contains("no `keys` array")
        );
        assert!(
            parse("{")
                .expect_err("json")
                .contains("not a valid SPIFFE bundle")
        );
        let bad64 = r#"{"keys":[{"use":"x509-svid","x5c":["%%%"]}]}"#;
        assert!(
            parse(bad64)
                .expect_err("base64")
                .contains("key 1: `x5c` is not base64")
        );
    }

    #[test]
    fn bad_authorities_refuse_the_whole_bundle() {
        let good = Issued::self_signed(&Spec::ca("prod.example.org"));
        let mut not_ca = Spec::ca("prod.example.org");
        not_ca.ca = Some(false);
        let mut no_sign = Spec::ca("prod.example.org");
        no_sign.key_usages = vec![Ku::CrlSign];
        let mut with_path = Spec::ca("prod.example.org");
        with_path.uris = vec!["spiffe://prod.example.org/ca".into()];
        let mut other = Spec::ca("prod.example.org");
        other.uris = vec!["spiffe://staging.example.org".into()];
        for (spec, why) in [
            (not_ca, "certificate 2: not a CA"),
            (no_sign, "certificate 2: keyUsage lacks keyCertSign"),
            (with_path, "has a path"),
            (other, "names another trust domain"),
        ] {
            let bad = Issued::self_signed(&spec);
            let err = parse(&format!("{}{}", good.pem, bad.pem)).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
        let leaf = good.issue(&Spec::leaf("spiffe://prod.example.org/db"));
        let err = parse(&format!("{}{}", leaf.pem, leaf.key_pem)).expect_err("key");
        assert!(err.contains("not a certificate"), "{err}");
        assert!(parse("hello").expect_err("text").contains("neither PEM"));
    }

    #[test]
    fn a_bundle_is_usable_only_inside_every_authoritys_window() {
        let a = Issued::self_signed(&Spec::ca("prod.example.org"));
        let soon = Issued::self_signed(&Spec::ca("prod.example.org").valid(-60, 60));
        let bundle = parse(&format!("{}{}", a.pem, soon.pem)).expect("valid");
        let now = Timestamp::now();
        assert_eq!(bundle.usable_at(now), Ok(bundle.authorities[1].not_after));
        let later = now + jiff::SignedDuration::from_secs(120);
        let err = bundle.usable_at(later).expect_err("expired").0;
        assert!(
            err.contains("certificate 2 (CN=prod.example.org CA) expired at"),
            "{err}"
        );
        let future = Issued::self_signed(&Spec::ca("prod.example.org").valid(600, 6000));
        let bundle = parse(&future.pem).expect("valid");
        assert!(
            bundle
                .usable_at(now)
                .expect_err("early")
                .0
                .contains("not valid before")
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_empty_and_trusts_nothing() {
        let now = Timestamp::now();
        for text in [
            "",
            "\n  \n",
            r#"{"keys": []}"#,
            r#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k1"}]}"#,
        ] {
            let bundle = parse(text).unwrap_or_else(|err| panic!("{text:?} refused: {err}"));
            assert!(bundle.is_empty(), "{text:?}");
            assert_eq!(bundle.expires(), None, "{text:?}");
            assert_eq!(
                bundle.usable_at(now),
                Err(BundleError(EMPTY.into())),
                "{text:?}"
            );
        }
        // Still refused: text that is no bundle at all.
        assert!(parse("hello").expect_err("text").contains("neither PEM"));
        assert!(
            parse("{}")
                .expect_err("no keys")
                .contains("no `keys` array")
        );
    }
}
