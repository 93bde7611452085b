//! X.509-SVID validation (X509-SVID standard section 5): the leaf and every signing
//! certificate presented with it are checked as `certificate` describes, the trust bundle is
//! chosen by the trust domain of the leaf's SPIFFE ID (so one domain's CA can never vouch for
//! another domain's workloads), and the path from the leaf to one of that bundle's authorities
//! is validated by rustls-webpki (RFC 5280: signatures, validity of every certificate, CA
//! constraints, path length and name constraints).

use enforcer_policy::{SpiffeId, TrustDomain};
use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{bundle::Bundle, certificate};

/// What the peer may use the SVID for in this handshake (checked against an extended key
/// usage extension when the leaf has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SvidError(String);

/// A validated X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    pub id: SpiffeId,
    /// The earliest end of validity along the presented chain: after it the SVID proves
    /// nothing.
    pub expires: Timestamp,
}

/// Validates `chain` (leaf first, then any intermediates) as an X.509-SVID at `now`, against
/// the bundle `bundle_for` gives for the leaf's trust domain.
pub fn verify<'b>(
    chain: &[CertificateDer<'_>],
    bundle_for: impl Fn(&TrustDomain) -> Option<&'b Bundle>,
    usage: Usage,
    now: Timestamp,
) -> Result<Svid, SvidError> {
    let fail = |why: String| SvidError(why);
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(fail("no certificate was presented".into()));
    };
    let (id, facts) = certificate::leaf(leaf).map_err(|why| fail(format!("leaf: {why}")))?;
    let mut expires = facts.not_after;
    for (i, der) in intermediates.iter().enumerate() {
        let facts = certificate::signing(der, None)
            .map_err(|why| fail(format!("intermediate {}: {why}", i + 1)))?;
        expires = expires.min(facts.not_after);
    }
    let bundle = bundle_for(&id.domain).ok_or_else(|| {
        fail(format!(
            "{id}: no trust bundle is configured for trust domain {}",
            id.domain
        ))
    })?;
    let bundle_expires = bundle.usable_at(now).map_err(|why| {
        fail(format!(
            "{id}: the trust bundle of {} is not usable: {why}",
            id.domain
        ))
    })?;
    let anchors = bundle
        .authorities
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(&a.der).map(|anchor| anchor.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fail(format!("the trust bundle of {}: {err}", id.domain)))?;
    let end_entity =
        webpki::EndEntityCert::try_from(leaf).map_err(|err| fail(format!("leaf: {err}")))?;
    let seconds = u64::try_from(now.as_second()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
    let key_usage = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            time,
            key_usage,
            None,
            None,
        )
        .map_err(|err| {
            fail(format!(
                "{id}: no valid certification path to the trust bundle of {}: {err}",
                id.domain
            ))
        })?;
    Ok(Svid {
        id,
        expires: expires.min(bundle_expires),
    })
}

/// The SPIFFE ID of an identity's own leaf SVID, checked by the leaf rules and its validity at
/// `now` but without a bundle: a daemon or client presents its SVID to peers that hold its
/// trust domain's bundle and may not hold that bundle itself. Peers must use [`verify`].
pub fn own_id(leaf: &CertificateDer<'_>, now: Timestamp) -> Result<SpiffeId, SvidError> {
    let (id, facts) = certificate::leaf(leaf).map_err(SvidError)?;
    if now < facts.not_before {
        return Err(SvidError(format!(
            "{id} is not valid before {}",
            facts.not_before
        )));
    }
    if now > facts.not_after {
        return Err(SvidError(format!("{id} expired at {}", facts.not_after)));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use enforcer_tests::pki::{Eku, Issued, Ku, Spec};

    use super::*;

    const ID: &str = "spiffe://prod.example.org/db";

    fn domain(name: &str) -> TrustDomain {
        name.parse().expect("valid")
    }

    fn bundle(cas: &[&Issued], name: &str) -> Bundle {
        let pem: String = cas.iter().map(|ca| ca.pem.as_str()).collect();
        Bundle::parse(pem.as_bytes(), &domain(name)).expect("valid bundle")
    }

    fn check(chain: &[&Issued], bundles: &[Bundle], usage: Usage) -> Result<Svid, String> {
        let ders: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.der.as_slice()))
            .collect();
        verify(
            &ders,
            |d| bundles.iter().find(|b| &b.domain == d),
            usage,
            Timestamp::now(),
        )
        .map_err(|e| e.to_string())
    }

    fn refused(leaf: &Spec, why: &str) {
        let ca = Issued::self_signed(&Spec::ca("prod.example.org"));
        let svid = ca.issue(leaf);
        let err = check(
            &[&svid],
            &[bundle(&[&ca], "prod.example.org")],
            Usage::Client,
        )
        .expect_err(why);
        assert!(err.contains(why), "expected {why:?} in {err:?}");
    }

    #[test]
    fn a_valid_svid_is_accepted_with_its_id_and_expiry() {
        let ca = Issued::self_signed(&Spec::ca("prod.example.org"));
        let spec = Spec::leaf(ID).valid(-60, 600);
        let svid = ca.issue(&spec);
        let got = check(
            &[&svid],
            &[bundle(&[&ca], "prod.example.org")],
            Usage::Client,
        )
        .expect("valid");
        assert_eq!(got.id.to_string(), ID);
        assert_eq!(got.expires.as_second(), spec.not_after.unix_timestamp());
        check(
            &[&svid],
            &[bundle(&[&ca], "prod.example.org")],
            Usage::Server,
        )
        .expect("server");
    }

    #[test]
    fn intermediates_are_followed_and_checked() {
        let root = Issued::self_signed(&Spec::ca("prod.example.org"));
        let mut inter_spec = Spec::ca("prod.example.org");
        inter_spec.uris.clear();
        let inter = root.issue(&inter_spec);
        let svid = inter.issue(&Spec::leaf(ID));
        let bundles = [bundle(&[&root], "prod.example.org")];
        check(&[&svid, &inter], &bundles, Usage::Client).expect("valid through intermediate");
        let err = check(&[&svid], &bundles, Usage::Client).expect_err("no intermediate");
        assert!(err.contains("no valid certification path"), "{err}");

        let mut not_ca = inter_spec.clone();
        not_ca.ca = Some(false);
        let bad = root.issue(&not_ca);
        let err = check(
            &[&bad.issue(&Spec::leaf(ID)), &bad],
            &bundles,
            Usage::Client,
        )
        .expect_err("intermediate not a CA");
        assert!(err.contains("intermediate 1: not a CA"), "{err}");

        let mut no_sign = inter_spec;
        no_sign.key_usages = vec![Ku::CrlSign];
        let bad = root.issue(&no_sign);
        let err = check(
            &[&bad.issue(&Spec::leaf(ID)), &bad],
            &bundles,
            Usage::Client,
        )
        .expect_err("intermediate without keyCertSign");
        assert!(
            err.contains("intermediate 1: keyUsage lacks keyCertSign"),
            "{err}"
        );
    }

    #[test]
    fn each_leaf_rule_broken_alone_is_refused() {
        let mut two_uris = Spec::leaf(ID);
        two_uris.uris.push("spiffe://prod.example.org/other".into());
        refused(&two_uris, "2 URI SANs");
        let mut no_uri = Spec::leaf(ID);
        no_uri.uris.clear();
        no_uri.common_name = Some("db".into());
        refused(&no_uri, "no URI SAN");
        refused(&Spec::leaf("spiffe://prod.example.org"), "has no path");
        refused(
            &Spec::leaf("https://prod.example.org/db"),
            "not a SPIFFE ID",
        );
        refused(
            &Spec::leaf("spiffe://prod.example.org/a/../b"),
            "`..` path segment",
        );
        let mut ca = Spec::leaf(ID);
        ca.ca = Some(true);
        refused(&ca, "must not be a CA");
        let mut no_ku = Spec::leaf(ID);
        no_ku.key_usages.clear();
        refused(&no_ku, "no keyUsage extension");
        let mut no_ds = Spec::leaf(ID);
        no_ds.key_usages = vec![Ku::KeyEncipherment];
        refused(&no_ds, "lacks digitalSignature");
        let mut cert_sign = Spec::leaf(ID);
        cert_sign.key_usages.push(Ku::KeyCertSign);
        refused(&cert_sign, "has keyCertSign");
        let mut crl_sign = Spec::leaf(ID);
        crl_sign.key_usages.push(Ku::CrlSign);
        refused(&crl_sign, "has cRLSign");
        let mut non_critical = Spec::leaf(ID);
        non_critical.non_critical_key_usage = true;
        refused(&non_critical, "keyUsage extension is not critical");
        refused(
            &Spec::leaf(ID).valid(-7200, -60),
            "no valid certification path",
        );
        refused(
            &Spec::leaf(ID).valid(600, 7200),
            "no valid certification path",
        );
        let mut server_only = Spec::leaf(ID);
        server_only.extended_key_usages = vec![Eku::ServerAuth];
        refused(&server_only, "no valid certification path");
    }

    #[test]
    fn the_bundle_is_chosen_by_the_svids_trust_domain() {
        let prod = Issued::self_signed(&Spec::ca("prod.example.org"));
        let staging = Issued::self_signed(&Spec::ca("staging.example.org"));
        let bundles = [
            bundle(&[&prod], "prod.example.org"),
            bundle(&[&staging], "staging.example.org"),
        ];
        // Staging's CA signs an SVID that claims to be prod: prod's bundle does not vouch.
        let forged = staging.issue(&Spec::leaf(ID));
        let err = check(&[&forged], &bundles, Usage::Client).expect_err("wrong CA");
        assert!(err.contains("trust bundle of prod.example.org"), "{err}");
        let stranger = prod.issue(&Spec::leaf("spiffe://other.example.org/x"));
        let err = check(&[&stranger], &bundles, Usage::Client).expect_err("no bundle");
        assert!(
            err.contains("no trust bundle is configured for trust domain other"),
            "{err}"
        );
        let err = check(&[], &bundles, Usage::Client).expect_err("empty");
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn an_expired_bundle_vouches_for_nothing() {
        let ca = Issued::self_signed(&Spec::ca("prod.example.org").valid(-7200, 3600));
        let svid = ca.issue(&Spec::leaf(ID).valid(-60, 600));
        let b = bundle(&[&ca], "prod.example.org");
        let later = Timestamp::now() + jiff::SignedDuration::from_hours(2);
        let ders = [CertificateDer::from(svid.der.as_slice())];
        let err = verify(&ders, |_| Some(&b), Usage::Client, later).expect_err("expired");
        assert!(err.to_string().contains("is not usable"), "{err}");
        // An SVID proves nothing past its own end or the bundle's, whichever is first.
        let longer = ca.issue(&Spec::leaf(ID).valid(-60, 7200));
        let ders = [CertificateDer::from(longer.der.as_slice())];
        let got = verify(&ders, |_| Some(&b), Usage::Client, Timestamp::now()).expect("valid");
        assert_eq!(Some(got.expires), b.expires());
    }

    #[test]
    fn an_own_svid_is_checked_by_the_leaf_rules_and_its_validity_alone() {
        let ca = Issued::self_signed(&Spec::ca("prod.example.org"));
        let der = |c: &Issued| CertificateDer::from(c.der.clone());
        let id = own_id(&der(&ca.issue(&Spec::leaf(ID))), Timestamp::now()).expect("valid");
        assert_eq!(id.to_string(), ID);
        let expired = ca.issue(&Spec::leaf(ID).valid(-7200, -60));
        let err = own_id(&der(&expired), Timestamp::now()).expect_err("expired");
        assert!(err.to_string().contains("expired at"), "{err}");
        let early = ca.issue(&Spec::leaf(ID).valid(600, 7200));
        let err = own_id(&der(&early), Timestamp::now()).expect_err("not yet valid");
        assert!(err.to_string().contains("not valid before"), "{err}");
        let err = own_id(&der(&ca), Timestamp::now()).expect_err("a CA is no leaf");
        assert!(err.to_string().contains("has no path"), "{err}");
    }
}
