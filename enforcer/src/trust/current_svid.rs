//! The daemon's own SVID as its TLS servers present it: one shared, replaceable certificate
//! and key. Every handshake asks for the one current at that moment, so a rotated SVID
//! (the Workload API delivers the next one before the last expires) takes effect at the next
//! handshake, while sessions already established keep the keys they agreed.

use std::{
    fmt,
    sync::{Arc, RwLock},
};

use jiff::Timestamp;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{SpiffeId, tls::Identity};

/// What `status` shows of the SVID in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidFacts {
    pub id: Option<SpiffeId>,
    pub expires: Option<Timestamp>,
}

#[derive(Default)]
pub struct CurrentSvid {
    current: RwLock<Option<(Arc<CertifiedKey>, SvidFacts)>>,
}

impl fmt::Debug for CurrentSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentSvid")
            .field("facts", &self.facts())
            .finish()
    }
}

impl CurrentSvid {
    /// A certificate that never changes (files, or the attestation socket's own).
    pub fn fixed(identity: Identity) -> Result<Arc<Self>, rustls::Error> {
        let svid = Arc::new(Self::default());
        svid.replace(
            identity,
            SvidFacts {
                id: None,
                expires: None,
            },
        )?;
        Ok(svid)
    }

    /// Presents `identity` from the next handshake on. The key must match the certificate:
    /// a mismatched pair is refused and the one in use stays.
    pub fn replace(&self, identity: Identity, facts: SvidFacts) -> Result<(), rustls::Error> {
        let provider = super::crypto_provider();
        let key = CertifiedKey::from_der(identity.chain, identity.key, &provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Arc::new(key), facts));
        Ok(())
    }

    pub fn facts(&self) -> Option<SvidFacts> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, facts)| facts.clone())
    }
}

impl ResolvesServerCert for CurrentSvid {
    /// `None` until a first SVID arrived: the handshake then fails, rather than present a
    /// certificate that proves nothing.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(key, _)| Arc::clone(key))
    }
}
