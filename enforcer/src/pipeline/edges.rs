//! Federation edges as the daemon runs them: the policy file's edges and the grants made from
//! the command line, each with a stable index (the key of its usage counters in the kernel)
//! and a creation time (what a `ttl` counts from). Both are kept in `--state-dir/edges.json`,
//! so a restarted daemon gives every edge the same index and deadline, and grants survive it.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use enforcer_policy::{Edge, EdgeEnd, EdgeId, Policy};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{api::edge::Source, paths::StateDir};

/// What the trust bundles of its ends allow an edge (see `trust::bundles`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// The edge does not require bundles.
    #[default]
    NotRequired,
    /// Both ends' bundles are usable until then.
    Until(Timestamp),
    /// Why the edge allows nothing now.
    Suspended(String),
}

/// An edge in force (or waiting for its window, or past it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEdge {
    /// Shared with the policy it comes from.
    pub edge: Arc<Edge>,
    pub source: Source,
    pub created: Timestamp,
    /// The end of the edge's window: `expires`, or `created + ttl`.
    pub expires: Option<Timestamp>,
    /// Never 0, never reused while the edge exists.
    pub index: u32,
    /// What the trust bundles of its ends allow, for an edge that requires them.
    pub trust: Trust,
}

impl LiveEdge {
    /// When the edge stops allowing traffic: its own end, or the earliest expiry of the
    /// bundles it requires.
    pub fn ends(&self) -> Option<Timestamp> {
        match self.trust {
            Trust::Until(until) => Some(self.expires.map_or(until, |end| end.min(until))),
            Trust::NotRequired | Trust::Suspended(_) => self.expires,
        }
    }

    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.expires.is_some_and(|end| end <= now) {
            "expired"
        } else if matches!(self.trust, Trust::Suspended(_))
            || self.ends().is_some_and(|end| end <= now)
        {
            "suspended"
        } else if self.edge.not_before.is_some_and(|start| now < start) {
            "not-yet-valid"
        } else {
            "active"
        }
    }
}

/// A grant as stored: the edge `edge grant` made, with its creation and its deadline. On disk
/// it is the flat record an edge view shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(flatten)]
    pub edge: Arc<Edge>,
    pub created: Timestamp,
    pub expires: Timestamp,
}

impl Grant {
    /// The edge in force: it ends at the grant's deadline, and asks for bundles when the
    /// policy's default does (there is no per-grant switch).
    fn in_force(&self, require_bundles: bool) -> Arc<Edge> {
        let end = Some(EdgeEnd::At(self.expires));
        if self.edge.end == end && self.edge.require_bundles == require_bundles {
            return Arc::clone(&self.edge);
        }
        Arc::new(Edge {
            end,
            require_bundles,
            ..Edge::clone(&self.edge)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Known {
    index: u32,
    created: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    /// Hashed, not sorted: an apply looks up and records 100,000 ids, and nothing needs them
    /// in order (the record on disk lists them in no particular order).
    known: HashMap<EdgeId, Known>,
    grants: Vec<Grant>,
}

impl Book {
    pub fn load(state: &StateDir) -> Result<Self> {
        let path = file(state);
        match crate::state_files::read_if_present(&path) {
            Ok(Some(text)) => serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a valid edge record; it holds the grants made with `enforcer edge \
                     grant` and the creation times of the policy's edges: restore it, or remove \
                     it to drop every grant and restart every ttl",
                    path.display()
                )
            }),
            Ok(None) => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record atomically (a new file renamed over the old one).
    pub fn save(&self, state: &StateDir) -> Result<()> {
        crate::state_files::save_json(&file(state), self)
    }

    /// The book with `grant` added.
    pub fn with_grant(&self, grant: Grant) -> Self {
        let mut next = self.clone();
        next.grants.push(grant);
        next
    }

    /// The book without the grants `drop` selects.
    pub fn without_grants(&self, drop: impl Fn(&Grant) -> bool) -> Self {
        let mut next = self.clone();
        next.grants.retain(|g| !drop(g));
        next
    }

    /// Every edge of `policy` and every grant, with indexes and creation times; and the
    /// book that records them (edges seen for the first time are created `now`; edges no
    /// longer present are forgotten).
    pub fn resolve(&self, policy: &Policy, now: Timestamp) -> Result<(Vec<LiveEdge>, Self)> {
        let mut indexes = FreeIndexes::new(self.known.values().map(|k| k.index));
        let created: BTreeMap<&str, Timestamp> = self
            .grants
            .iter()
            .map(|g| (g.edge.id.as_str(), g.created))
            .collect();
        let count = policy.federation.len() + self.grants.len();
        let mut live = Vec::with_capacity(count);
        let mut known = HashMap::with_capacity(count);
        let file = policy
            .federation
            .iter()
            .map(|e| (Arc::clone(e), Source::File));
        let grants = self
            .grants
            .iter()
            .map(|g| (g.in_force(policy.defaults.require_bundles), Source::Grant));
        for (edge, source) in file.chain(grants) {
            let seen = self.known.get(&edge.id).copied().unwrap_or_else(|| Known {
                index: indexes.take(),
                created: match source {
                    Source::Grant => created.get(edge.id.as_str()).copied().unwrap_or(now),
                    Source::File => now,
                },
            });
            // A file's ids are unique, so an id seen twice is a grant taking a file edge's.
            if known.insert(edge.id.clone(), seen).is_some() {
                return Err(anyhow!(
                    "edge id {} is used by the policy file and by a grant; revoke the grant \
                     or rename the file's edge",
                    edge.id
                ));
            }
            let expires = match edge.end {
                Some(EdgeEnd::At(at)) => Some(at),
                Some(EdgeEnd::Ttl(ttl)) => Some(
                    seen.created
                        .checked_add(SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX))
                        .unwrap_or(Timestamp::MAX),
                ),
                None => None,
            };
            live.push(LiveEdge {
                edge,
                source,
                created: seen.created,
                expires,
                index: seen.index,
                trust: Trust::NotRequired,
            });
        }
        let next = Self {
            known,
            grants: self.grants.clone(),
        };
        Ok((live, next))
    }
}

/// Edge indexes not held by any known edge, handed out lowest first. Known edges keep their
/// index even when they leave, until this resolve forgets them, so an index is never reused
/// while the kernel's usage counters may still be keyed by it.
struct FreeIndexes {
    /// Sorted.
    used: Vec<u32>,
    /// How many of `used` lie below `next`.
    passed: usize,
    /// Every index below this is used or handed out.
    next: u32,
}

impl FreeIndexes {
    fn new(used: impl IntoIterator<Item = u32>) -> Self {
        let mut used: Vec<u32> = used.into_iter().collect();
        used.sort_unstable();
        Self {
            used,
            passed: 0,
            next: 1,
        }
    }

    /// The lowest free index. `next` and `passed` only move forward, so handing out n
    /// indexes costs O(n + used) in all.
    fn take(&mut self) -> u32 {
        loop {
            // Only a hand-edited record gets here; the compiler refuses more edges than
            // ENF_EDGE_USE counts long before.
            if self.next == u32::MAX {
                return u32::MAX;
            }
            while self.used.get(self.passed).is_some_and(|&u| u < self.next) {
                self.passed += 1;
            }
            if self.used.get(self.passed) == Some(&self.next) {
                self.next = self.next.saturating_add(1);
                continue;
            }
            let index = self.next;
            self.next = self.next.saturating_add(1);
            return index;
        }
    }
}

fn file(state: &StateDir) -> PathBuf {
    state.path().join("edges.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        enforcer_policy::parse("test.yaml", text).expect("test policy is valid")
    }

    const POLICY: &str = "
version: 1
domains: [{name: a.org}, {name: b.org}]
federation:
  - {from: a.org, to: b.org, protocol: tcp, ports: [80], owner: o, reason: r, ttl: 30m}
  - {id: fixed, from: b.org, to: a.org, protocol: udp, ports: [53], owner: o, reason: r, expires: '2030-01-01T00:00:00Z'}
";

    fn at(text: &str) -> Timestamp {
        text.parse().expect("test timestamp")
    }

    fn grant(id: &str, expires: &str) -> Grant {
        serde_json::from_value(serde_json::json!({
            "id": id, "from": "a.org", "to": "b.org", "protocol": "any",
            "ports": ["1000-2000"], "owner": "o", "reason": "r",
            "created": "2026-11-23T09:00:00Z", "not_before": null, "expires": expires,
        }))
        .expect("a grant as saved")
    }

    #[test]
    fn a_ttl_counts_from_when_the_edge_was_first_seen() {
        let p = policy(POLICY);
        let (first, book) = Book::default()
            .resolve(&p, at("2026-11-23T10:00:00Z"))
            .expect("resolves");
        assert_eq!(first[0].expires, Some(at("2026-11-23T10:30:00Z")));
        assert_eq!(first[1].expires, Some(at("2030-01-01T00:00:00Z")));
        assert_eq!(first[1].edge.id.as_str(), "fixed");
        assert_eq!((first[0].index, first[1].index), (1, 2));
        let (again, _) = book
            .resolve(&p, at("2026-11-23T12:00:00Z"))
            .expect("resolves");
        assert_eq!(
            again, first,
            "a restart or re-apply keeps deadlines and indexes"
        );
        assert_eq!(again[0].state(at("2026-11-23T12:00:00Z")), "expired");
        assert_eq!(again[1].state(at("2026-11-23T12:00:00Z")), "active");
    }

    #[test]
    fn grants_are_kept_and_indexes_are_not_reused_while_in_use() {
        let p = policy(POLICY);
        let now = at("2026-11-23T10:00:00Z");
        let (_, book) = Book::default().resolve(&p, now).expect("resolves");
        let book = book.with_grant(grant("grant-1", "2026-11-23T11:00:00Z"));
        let (live, book) = book.resolve(&p, now).expect("resolves");
        let g = live
            .iter()
            .find(|e| e.source == Source::Grant)
            .expect("grant");
        assert_eq!(g.index, 3);
        assert_eq!(g.created, at("2026-11-23T09:00:00Z"));
        assert_eq!(g.expires, Some(at("2026-11-23T11:00:00Z")));
        let only_grant = policy("version: 1\ndomains: [{name: a.org}, {name: b.org}]\n");
        let (live, book) = book.resolve(&only_grant, now).expect("resolves");
        assert_eq!(live.len(), 1, "the grant outlives the file's edges");
        let (live, _) = book.resolve(&p, now).expect("resolves");
        let indexes: Vec<u32> = live.iter().map(|e| e.index).collect();
        assert_eq!(
            indexes,
            [1, 2, 3],
            "returning edges get free indexes, not the grant's"
        );
    }

    #[test]
    fn free_indexes_skip_the_used_ones_lowest_first() {
        let mut free = FreeIndexes::new([4, 1, 2, 9]);
        let taken: Vec<u32> = (0..6).map(|_| free.take()).collect();
        assert_eq!(taken, [3, 5, 6, 7, 8, 10]);
        let mut full = FreeIndexes::new([u32::MAX - 1]);
        full.next = u32::MAX - 1;
        assert_eq!((full.take(), full.take()), (u32::MAX, u32::MAX));
    }

    #[test]
    fn a_grant_and_a_file_edge_cannot_share_an_id() {
        let p = policy(POLICY);
        let book = Book::default().with_grant(grant("fixed", "2026-11-23T11:00:00Z"));
        let err = book
            .resolve(&p, at("2026-11-23T10:00:00Z"))
            .expect_err("clash");
        assert!(err.to_string().contains("fixed"), "{err}");
    }
}
