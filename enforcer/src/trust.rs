//! SPIFFE cryptographic identity: trust bundles (the CA certificates of a trust domain),
//! X.509-SVID validation against them, and the rustls verifiers that apply those rules to TLS
//! peers. The rules are the SPIFFE X509-SVID and Trust Domain and Bundle standards; where the
//! standards only say SHOULD, this module is no stricter than go-spiffe unless noted.

pub mod attestation;
mod bundle;
pub mod bundle_endpoint;
pub mod bundles;
mod certificate;
pub mod current_svid;
mod svid;
mod tls;
pub mod workload_api;

pub use bundle::{Bundle, BundleError, hex};
pub use certificate::leaf;
pub use enforcer_policy::SpiffeId;
pub use svid::{Svid, Usage, own_id, verify};
pub use tls::{
    Bundles, Identity, Signatures, SvidClientVerifier, SvidServerVerifier, crypto_provider,
    reason as tls_reason,
};
