//! Certificates made on the spot for identity tests: SPIFFE CAs, intermediates and leaf
//! X.509-SVIDs, each with every field a test may want to get wrong (basic constraints, key
//! usage and its criticality, URI SANs, validity window, extended key usage).

use std::{fs, path::Path};

use base64::Engine as _;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
pub use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use time::{Duration, OffsetDateTime};

/// What to put in a certificate. Start from [`Spec::ca`] or [`Spec::leaf`] and change one
/// field to break one rule.
#[derive(Clone)]
pub struct Spec {
    pub common_name: Option<String>,
    pub uris: Vec<String>,
    /// `None`: no basicConstraints extension.
    pub ca: Option<bool>,
    pub key_usages: Vec<KeyUsagePurpose>,
    /// A key usage extension marked non-critical instead (digitalSignature only).
    pub non_critical_key_usage: bool,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Spec {
    /// A signing certificate of `domain`, valid from an hour ago for a day.
    pub fn ca(domain: &str) -> Self {
        Self {
            common_name: Some(format!("{domain} CA")),
            uris: vec![format!("spiffe://{domain}")],
            ca: Some(true),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            non_critical_key_usage: false,
            extended_key_usages: Vec::new(),
            not_before: OffsetDateTime::now_utc() - Duration::hours(1),
            not_after: OffsetDateTime::now_utc() + Duration::days(1),
        }
    }

    /// A leaf SVID for `id`, valid from an hour ago for a day.
    pub fn leaf(id: &str) -> Self {
        Self {
            common_name: None,
            uris: vec![id.to_owned()],
            ca: Some(false),
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            non_critical_key_usage: false,
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: OffsetDateTime::now_utc() - Duration::hours(1),
            not_after: OffsetDateTime::now_utc() + Duration::days(1),
        }
    }

    /// Valid from `from` to `until` seconds from now (either may be negative).
    pub fn valid(mut self, from: i64, until: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + Duration::seconds(from);
        self.not_after = now + Duration::seconds(until);
        self
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        if let Some(cn) = &self.common_name {
            name.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = name;
        params.subject_alt_names = self
            .uris
            .iter()
            .map(|uri| SanType::URI(uri.as_str().try_into().expect("ASCII URI")))
            .collect();
        params.is_ca = match self.ca {
            Some(true) => IsCa::Ca(BasicConstraints::Unconstrained),
            Some(false) => IsCa::ExplicitNoCa,
            None => IsCa::NoCa,
        };
        if self.non_critical_key_usage {
            // BIT STRING with only digitalSignature (bit 0) set.
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 15],
                    vec![0x03, 0x02, 0x07, 0x80],
                ));
        } else {
            params.key_usages = self.key_usages.clone();
        }
        params.extended_key_usages = self.extended_key_usages.clone();
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params
    }
}

/// A certificate with its key; it can issue others whether or not it is a CA, so that tests
/// can build chains through certificates that should not sign.
pub struct Issued {
    pub der: Vec<u8>,
    pub pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Issued {
    pub fn self_signed(spec: &Spec) -> Self {
        let key = KeyPair::generate().expect("generating a key");
        let params = spec.params();
        let cert = params.self_signed(&key).expect("self-signing");
        Self::new(cert, key, params)
    }

    pub fn issue(&self, spec: &Spec) -> Self {
        let key = KeyPair::generate().expect("generating a key");
        let params = spec.params();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate");
        Self::new(cert, key, params)
    }

    fn new(cert: rcgen::Certificate, key: KeyPair, params: CertificateParams) -> Self {
        let key_pem = key.serialize_pem();
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A Web PKI server certificate for `ip`, as an `https_web` bundle endpoint presents it.
    pub fn issue_web_server(&self, ip: std::net::IpAddr) -> Self {
        let mut spec = Spec::leaf("spiffe://unused.example");
        spec.uris.clear();
        spec.common_name = Some(ip.to_string());
        let key = KeyPair::generate().expect("generating a key");
        let mut params = spec.params();
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate");
        Self::new(cert, key, params)
    }

    /// Writes the certificate (followed by `chain`, as a workload presents intermediates) to
    /// `cert` and the key to `key`, mode 0600.
    pub fn write(&self, chain: &[&Issued], cert: &Path, key: &Path) {
        let mut pem = self.pem.clone();
        for c in chain {
            pem.push_str(&c.pem);
        }
        fs::write(cert, pem).expect("writing a certificate");
        fs::write(key, &self.key_pem).expect("writing a key");
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(key, fs::Permissions::from_mode(0o600)).expect("chmod key");
    }
}

/// A SPIFFE bundle document (JWK set) holding `cas` as `x509-svid` entries.
pub fn jwks(cas: &[&Issued]) -> String {
    let keys: Vec<String> = cas
        .iter()
        .map(|ca| {
            format!(
                r#"{{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["{}"]}}"#,
                base64::engine::general_purpose::STANDARD.encode(&ca.der)
            )
        })
        .collect();
    format!(
        r#"{{"keys":[{}],"spiffe_refresh_hint":300}}"#,
        keys.join(",")
    )
}
