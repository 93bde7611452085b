//! What `enforcer policy plan FILE` answers: the changes applying a policy file would make, and
//! the live connections it would end (`-o json` prints this; a stable schema).

use std::sync::Arc;

use enforcer_policy::Edge;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What applying a file would do (`-o json` prints this; a stable schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The file as the command line named it.
    pub file: String,
    /// The generation in force, which a plan leaves as it is.
    pub generation: u64,
    /// Settings under `defaults` that change.
    pub defaults: Vec<FieldChange>,
    pub domains: DomainChanges,
    /// The file's edges, by id (written or derived).
    pub edges: EdgeChanges,
    /// Edges granted with `edge grant`: not in any file, so applying keeps them.
    pub grants: Vec<EdgeSpec>,
    /// Live connections applying would end, one entry per connection.
    pub connections: Vec<EndingConnection>,
    /// How many defaults, domains and edges are added, removed or altered.
    pub changes: usize,
    /// What the lists above cannot say, one sentence each.
    pub notes: Vec<String>,
}

/// One setting's value before and after; `None` where it is not set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainChanges {
    pub added: Vec<DomainSpec>,
    pub removed: Vec<DomainSpec>,
    pub altered: Vec<DomainChange>,
}

/// A domain as the policy defines it; `mode` is the one it runs in (its own or the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub name: String,
    pub mode: String,
    pub cgroups: Vec<String>,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainChange {
    pub name: String,
    /// `None` when the domain keeps its mode.
    pub mode: Option<Change>,
    /// `None` when the domain keeps its trust bundle path ("none" stands for no bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Change>,
    pub cgroups: SetChange,
    pub endpoints: SetChange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl SetChange {
    pub fn between<T: PartialEq + ToString>(before: &[T], after: &[T]) -> Self {
        Self {
            added: missing(before, after),
            removed: missing(after, before),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The items of `of` that `from` does not have, as text.
fn missing<T: PartialEq + ToString>(from: &[T], of: &[T]) -> Vec<String> {
    of.iter()
        .filter(|x| !from.contains(x))
        .map(T::to_string)
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeChanges {
    pub added: Vec<EdgeSpec>,
    pub removed: Vec<EdgeSpec>,
    pub altered: Vec<EdgeChange>,
}

/// An edge with its window resolved: `expires` is the deadline the kernel would enforce
/// (for a `ttl` edge not yet in force, counted from the moment of the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeSpec {
    #[serde(flatten)]
    pub edge: Arc<Edge>,
    pub expires: Option<Timestamp>,
}

/// An edge kept by id whose fields change: `from`, `to`, `protocol`, `ports`, `owner`,
/// `reason`, `not_before` or `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeChange {
    pub id: String,
    pub changes: Vec<FieldChange>,
}

/// A live connection applying would end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndingConnection {
    /// "tcp" or "udp".
    pub protocol: String,
    /// The addresses of one of its sockets on this host: the end that opened it when both
    /// ends are here.
    pub local: String,
    pub remote: String,
    /// The peers it was judged as: a domain name, "unlabeled" or "external".
    pub from: String,
    pub to: String,
    /// Its destination port.
    pub port: u16,
    /// The edge that allows it now, if one does.
    pub edge: Option<String>,
    /// Why the policy in force lets it through (a decision reason: `edge_allowed`,
    /// `unlabeled_default`, ...), or refuses it already.
    pub reason_now: String,
    /// Why the planned policy refuses it: `no_edge`, `edge_expired`, `unlabeled_default` or
    /// `external_default`.
    pub reason: String,
}

impl Plan {
    /// Live connections applying would end.
    pub fn ended(&self) -> usize {
        self.connections.len()
    }
}
