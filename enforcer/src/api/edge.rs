//! Edges on the wire: what `edge grant` asks for, and an edge as `edge list`, `edge show` and
//! `status` show it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where an edge comes from: the policy file, or `edge grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Grant,
}

/// What the CLI asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRequest {
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub ports: Vec<String>,
    pub ttl_ms: u64,
    pub owner: String,
    pub reason: String,
    pub id: Option<String>,
    pub not_before: Option<Timestamp>,
}

/// One edge as `edge list`, `edge show` and `status` show it (`-o json` is a stable schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    pub id: String,
    pub source: Source,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub ports: Vec<String>,
    pub owner: String,
    pub reason: String,
    pub created: Timestamp,
    pub not_before: Option<Timestamp>,
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
