//! Policy files for the enforcer: which cgroups and addresses belong to
//! which SPIFFE trust domain, and which cross-domain flows are allowed.
//!
//! [`parse`] turns the YAML text of a version-1 policy into a [`Policy`],
//! or into every mistake found, each as a `FILE:LINE:COL: message`
//! [`Diagnostic`].

mod bundle_endpoint;
mod diagnostic;
mod free_text;
mod input;
mod model;
mod parse;
mod ports;
mod shared_names;
mod spiffe_id;
mod time;
mod trust_domain;
mod validate;
mod yaml_tree;

pub use bundle_endpoint::{BundleEndpoint, Profile as EndpointProfile};
pub use diagnostic::Diagnostic;
pub use free_text::{FreeTextError, free_text, unprintable};
pub use input::{MAX_POLICY_BYTES, decode, oversize};
pub use model::{
    Action, BundleFile, BundleFrom, BundleSource, CgroupPath, CgroupPathError, Defaults, Domain,
    Edge, EdgeEnd, EdgeId, EdgeIdError, Mode, Policy, Protocol, ProtocolError, free_text_shared,
    port_set,
};
pub use parse::parse;
pub use ports::{PortRange, PortRangeError};
pub use spiffe_id::SpiffeId;
pub use time::parse_duration;
pub use trust_domain::{TrustDomain, TrustDomainError, UriPart};
