//! What the X509-SVID standard requires of each certificate, read with x509-parser: signing
//! certificates (section 3.2, 4.1, 4.3) and leaf SVIDs (3.1, 4.1, 4.3, 5.2). Chain signatures
//! and validity along the path are rustls-webpki's part (see `svid`).

use enforcer_policy::SpiffeId;
use jiff::Timestamp;
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _, x509::X509Version,
};

/// The parts of a certificate the daemon reports and acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// The one URI SAN, if it has one (`Err` when it has several or it does not parse).
    pub spiffe_id: Option<SpiffeId>,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(err) => Err(format!("not an X.509 certificate: {err}")),
    }
}

fn time(t: x509_parser::time::ASN1Time) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::MAX)
}

/// The URI SANs, checked: at most one (SVIDs carry exactly one), a valid SPIFFE ID, and a
/// critical SAN extension when the subject is empty (RFC 5280 4.1.2.6, which 3.1 repeats).
fn spiffe_id(cert: &X509Certificate<'_>) -> Result<Option<SpiffeId>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("unreadable subjectAltName: {err}"))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris[..] {
        [] => Ok(None),
        [uri] => {
            if cert.subject().iter().next().is_none() && !san.critical {
                return Err(
                    "the subject is empty but the subjectAltName extension is not critical".into(),
                );
            }
            uri.parse().map(Some)
        }
        _ => Err(format!(
            "{} URI SANs ({}); an SVID carries exactly one",
            uris.len(),
            uris.join(", ")
        )),
    }
}

fn facts(cert: &X509Certificate<'_>) -> Result<Facts, String> {
    if cert.version() != X509Version::V3 {
        return Err("not an X.509 version 3 certificate".into());
    }
    Ok(Facts {
        subject: cert.subject().to_string(),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        spiffe_id: spiffe_id(cert)?,
    })
}

/// The key usage bits, from an extension that must be present and critical (4.3).
fn key_usage(cert: &X509Certificate<'_>) -> Result<x509_parser::extensions::KeyUsage, String> {
    match cert.key_usage() {
        Ok(Some(ku)) if ku.critical => Ok(*ku.value),
        Ok(Some(_)) => Err("the keyUsage extension is not critical".into()),
        Ok(None) => Err("no keyUsage extension".into()),
        Err(err) => Err(format!("unreadable keyUsage: {err}")),
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, String> {
    cert.basic_constraints()
        .map(|bc| bc.is_some_and(|bc| bc.value.ca))
        .map_err(|err| format!("unreadable basicConstraints: {err}"))
}

/// A certificate that may sign SVIDs: a CA (`cA` true) with `keyCertSign`, whose SPIFFE ID, if
/// it has one, has no path. `domain` is the trust domain it is a signing certificate for, when
/// known (a bundle's authority); intermediates may sign for other domains (3.2).
pub fn signing(der: &[u8], domain: Option<&enforcer_policy::TrustDomain>) -> Result<Facts, String> {
    let cert = parse(der)?;
    let facts = facts(&cert)?;
    if !is_ca(&cert)? {
        return Err("not a CA certificate (basicConstraints cA is not true)".into());
    }
    if !key_usage(&cert)?.key_cert_sign() {
        return Err("keyUsage lacks keyCertSign".into());
    }
    if let Some(id) = &facts.spiffe_id {
        if !id.path.is_empty() {
            return Err(format!(
                "its SPIFFE ID {id} has a path; a signing certificate's has none"
            ));
        }
        if let Some(domain) = domain
            && &id.domain != domain
        {
            return Err(format!(
                "its SPIFFE ID {id} names another trust domain than {domain}"
            ));
        }
    }
    Ok(facts)
}

/// A leaf X.509-SVID: exactly one URI SAN holding a SPIFFE ID with a path, not a CA, and key
/// usage with `digitalSignature` but neither `keyCertSign` nor `cRLSign`.
pub fn leaf(der: &[u8]) -> Result<(SpiffeId, Facts), String> {
    let cert = parse(der)?;
    let facts = facts(&cert)?;
    let Some(id) = facts.spiffe_id.clone() else {
        return Err("no URI SAN; an SVID carries its SPIFFE ID as exactly one URI SAN".into());
    };
    if id.path.is_empty() {
        return Err(format!(
            "its SPIFFE ID {id} has no path; a leaf SVID's must have one"
        ));
    }
    if is_ca(&cert)? {
        return Err("a leaf SVID must not be a CA (basicConstraints cA is true)".into());
    }
    let usage = key_usage(&cert)?;
    if !usage.digital_signature() {
        return Err("keyUsage lacks digitalSignature".into());
    }
    if usage.key_cert_sign() {
        return Err("keyUsage has keyCertSign, which a leaf SVID must not".into());
    }
    if usage.crl_sign() {
        return Err("keyUsage has cRLSign, which a leaf SVID must not".into());
    }
    Ok((id, facts))
}
