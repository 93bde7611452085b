//! Where the fleet keeps things under `--etcd-prefix` (say `/enforcer`):
//!
//! - `/enforcer/policy`: the fleet's policy document, the YAML text of a policy file. Its
//!   `mod_revision` is the document's revision: what `fleet apply --expect-revision` compares
//!   and what every node reports.
//! - `/enforcer/nodes/NAME`: a node's heartbeat ([`NodeRecord`], JSON), written by that node
//!   under a lease of its own, so that a node that stops also stops being listed.
//! - `/enforcer/addresses/NAME`: the addresses of that node's pods with their domains
//!   (`fleet::addresses`), under the same lease, so that a node that stops also stops
//!   vouching for them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The keys of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must start with `/`; a trailing `/` is dropped.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') {
            return Err(format!("--etcd-prefix {prefix:?} must start with /"));
        }
        Ok(Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    /// The prefix every node's key starts with.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, node: &NodeName) -> String {
        format!("{}{}", self.nodes(), node.0)
    }

    /// The prefix every node's address record starts with.
    pub fn addresses(&self) -> String {
        format!("{}/addresses/", self.prefix)
    }

    pub fn addresses_of(&self, node: &NodeName) -> String {
        format!("{}{}", self.addresses(), node.0)
    }
}

/// A node's name, as it appears in its key: letters, digits, `.`, `_` and `-`, so that no name
/// reaches outside its own key (`a/../b`, or a prefix of another node's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(String);

impl std::str::FromStr for NodeName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty()
            || name.len() > 253
            || !name.chars().all(allowed)
            || name.starts_with('.')
        {
            return Err(format!(
                "node name {name:?}: use 1-253 letters, digits, '.', '_' or '-', not starting \
                 with '.'"
            ));
        }
        Ok(Self(name.to_owned()))
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node publishes about itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// The policy generation it enforces.
    pub generation: u64,
    /// The revision of the fleet document it enforces; `None` when what it enforces did not
    /// come from the fleet (a first start from a saved local policy).
    pub revision: Option<i64>,
    pub heartbeat: Timestamp,
    /// The last time it read the fleet document and found it current.
    pub last_sync: Option<Timestamp>,
    /// Why the last document it was given was refused, or why it cannot read the fleet's.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_stay_inside_their_key() {
        let keys = Keys::new("/enforcer/").expect("valid");
        let node: NodeName = "host-1.example".parse().expect("valid");
        assert_eq!(keys.node(&node), "/enforcer/nodes/host-1.example");
        assert_eq!(keys.policy(), "/enforcer/policy");
        assert_eq!(
            keys.addresses_of(&node),
            "/enforcer/addresses/host-1.example"
        );
        for bad in ["", "a/b", "..", ".hidden", "a b", "a\nb"] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad:?}");
        }
        assert!(Keys::new("enforcer").is_err());
    }
}
