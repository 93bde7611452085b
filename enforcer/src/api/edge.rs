//! Edges on the wire: what `edge grant` asks for, and an edge as `edge list`, `edge show` and
//! `status` show it. Both carry the policy's own types, read back with a policy's checks.

use std::sync::Arc;

use enforcer_policy::{Edge, EdgeId, PortRange, Protocol, TrustDomain, free_text_shared};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where an edge comes from: the policy file, or `edge grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Grant,
}

/// What the CLI asks for: an edge but for its id, which the daemon derives when none is given,
/// and its end, which is `ttl_ms` after the daemon makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRequest {
    pub from: TrustDomain,
    pub to: TrustDomain,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    pub ttl_ms: u64,
    #[serde(deserialize_with = "free_text_shared")]
    pub owner: Arc<str>,
    #[serde(deserialize_with = "free_text_shared")]
    pub reason: Arc<str>,
    pub id: Option<EdgeId>,
    pub not_before: Option<Timestamp>,
}

/// One edge as `edge list`, `edge show` and `status` show it (`-o json` is a stable schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    #[serde(flatten)]
    pub edge: Arc<Edge>,
    pub source: Source,
    pub created: Timestamp,
    /// The end of its window: its `expires`, or `created` plus its `ttl`.
    pub expires: Option<Timestamp>,
    /// "active", "expired", "not-yet-valid" or "suspended" (a trust bundle it requires is
    /// missing, unusable or lapsed).
    pub state: String,
    /// For an edge that requires trust bundles: until when they hold, or why it is suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// Connections and UDP flows the edge allowed.
    pub connections: u64,
    pub last_used: Option<Timestamp>,
    /// Unused (since `last_used`, or since `created` if never used) for longer than the
    /// period asked for.
    pub stale: bool,
}
