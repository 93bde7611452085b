//! The state's transitions, as pure functions: each reads the state in force and says what
//! the edge record becomes (or why it cannot change), and nothing else. The daemon then
//! compiles that record with the policy and commits it ([`State::commit`]), logs and answers.

use std::collections::HashSet;

use jiff::Timestamp;

use super::state::State;
use crate::{
    api::edge::{GrantRequest, Source},
    pipeline::{
        clock::Clocks,
        edges::{Book, Grant, Trust},
        grants,
    },
};

/// A grant that can be made: the record with it.
pub struct Granted {
    pub grant: Grant,
    pub book: Book,
}

/// Why an edge cannot be revoked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("no edge has id {0} (see `enforcer edge list`)")]
    Unknown(String),
    /// Only a new policy file removes a file's edge.
    #[error(
        "edge {id} comes from the policy file {file}; remove it there and run `enforcer policy apply`"
    )]
    FromFile { id: String, file: String },
}

/// The edges whose window closed in a stretch of time.
pub struct Expired {
    /// Every one of them, by id.
    pub edges: Vec<String>,
    /// The grants among them, which leave the record.
    pub grants: Vec<String>,
    /// The record without those grants; `None` when no grant expired.
    pub book: Option<Book>,
}

impl State {
    /// The record with the grant `request` asks for at `now`, or every reason it cannot be
    /// made.
    pub fn grant(&self, request: &GrantRequest, now: Timestamp) -> Result<Granted, Vec<String>> {
        let grant = grants::check(request, &self.policy, &self.live, now)?;
        let book = self.book.with_grant(grant.clone());
        Ok(Granted { grant, book })
    }

    /// The record without the grant `id`, or why it cannot be revoked.
    pub fn revoke(&self, id: &str) -> Result<Book, RevokeError> {
        let Some(edge) = self.live.iter().find(|e| e.edge.id.as_str() == id) else {
            return Err(RevokeError::Unknown(id.to_owned()));
        };
        if edge.source == Source::File {
            return Err(RevokeError::FromFile {
                id: id.to_owned(),
                file: self.policy_file.clone(),
            });
        }
        Ok(self.book.without_grants(|g| g.edge.id.as_str() == id))
    }

    /// The edges whose window closed after boot-clock nanosecond `since` and by `now`;
    /// `None` when there are none.
    pub fn expired(&self, since: u64, now: &Clocks) -> Option<Expired> {
        let expired: Vec<_> = self
            .live
            .iter()
            .filter(|e| {
                e.ends()
                    .map(|t| now.boot_ns(t))
                    .is_some_and(|at| since < at && at <= now.boot)
            })
            .collect();
        if expired.is_empty() {
            return None;
        }
        let grants: Vec<String> = expired
            .iter()
            .filter(|e| e.source == Source::Grant)
            .map(|e| e.edge.id.to_string())
            .collect();
        let book = (!grants.is_empty()).then(|| {
            let gone: HashSet<&str> = grants.iter().map(String::as_str).collect();
            self.book
                .without_grants(|g| gone.contains(g.edge.id.as_str()))
        });
        Some(Expired {
            edges: expired.iter().map(|e| e.edge.id.to_string()).collect(),
            grants,
            book,
        })
    }

    /// The edges whose standing under the trust bundles in force differs at `now` from
    /// what is enforced, with what it becomes.
    pub fn trust_changes(&self, now: Timestamp) -> Vec<(String, Trust)> {
        self.live
            .iter()
            .filter_map(|e| {
                let next = self.trust.gate(&e.edge, now);
                (next != e.trust).then(|| (e.edge.id.to_string(), next))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::{pipeline::edges::Book, trust::bundles::TrustState};

    const POLICY: &str = "\
version: 1
domains:
  - name: spiffe://a.example
    cgroups: [/a]
  - name: spiffe://b.example
    cgroups: [/b]
federation:
  - id: a-to-b
    from: spiffe://a.example
    to: spiffe://b.example
    protocol: tcp
    ports: [443]
    owner: team-a
    reason: calls b
";

    fn now() -> Timestamp {
        Timestamp::from_second(1_900_000_000).expect("time")
    }

    fn request(id: &str, ttl: SignedDuration) -> GrantRequest {
        serde_json::from_value(serde_json::json!({
            "from": "b.example", "to": "a.example", "protocol": "tcp", "ports": ["8443"],
            "ttl_ms": ttl.as_millis(), "owner": "oncall", "reason": "incident", "id": id,
            "not_before": null,
        }))
        .expect("a grant request")
    }

    /// The state the policy above and `book` resolve to at `now`.
    fn state(book: Book) -> State {
        let policy = enforcer_policy::parse("p.yaml", POLICY).expect("policy");
        let (live, book) = book.resolve(&policy, now()).expect("resolved");
        State {
            policy,
            policy_file: "p.yaml".into(),
            compiled: Arc::default(),
            generation: 1,
            book,
            live: Arc::new(live),
            live_at: Arc::default(),
            trust: TrustState::default(),
        }
    }

    fn with_grant(id: &str, ttl: SignedDuration) -> State {
        let granted = state(Book::default())
            .grant(&request(id, ttl), now())
            .unwrap_or_else(|errors| panic!("grant refused: {errors:?}"));
        state(granted.book)
    }

    #[test]
    fn a_grant_adds_to_the_record_and_a_bad_one_says_why() {
        let state = state(Book::default());
        let granted = state
            .grant(&request("jit", SignedDuration::from_hours(1)), now())
            .unwrap_or_else(|errors| panic!("grant refused: {errors:?}"));
        assert_eq!(granted.grant.edge.id.as_str(), "jit");
        assert_ne!(granted.book, state.book);
        let mut unknown = request("jit", SignedDuration::from_hours(1));
        unknown.to = "nowhere.example".parse().expect("domain");
        let errors = state.grant(&unknown, now()).err().expect("refused");
        assert!(
            errors.iter().any(|e| e.contains("nowhere.example")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_grant_is_revoked_from_the_record_and_a_file_edge_is_not() {
        let state = with_grant("jit", SignedDuration::from_hours(1));
        let no_grants = state.book.without_grants(|_| true);
        assert_ne!(no_grants, state.book);
        assert_eq!(state.revoke("jit"), Ok(no_grants));
        assert_eq!(
            state.revoke("a-to-b"),
            Err(RevokeError::FromFile {
                id: "a-to-b".into(),
                file: "p.yaml".into()
            })
        );
        assert_eq!(
            state.revoke("nope"),
            Err(RevokeError::Unknown("nope".into()))
        );
    }

    #[test]
    fn only_edges_whose_window_closed_since_the_last_look_expire() {
        let state = with_grant("short", SignedDuration::from_mins(5));
        // Both clocks as they would read at `at`, booted long before `now()`.
        let clocks = |at: Timestamp| Clocks {
            wall: at.as_nanosecond(),
            boot: u64::try_from(1_000_000_000_000 + at.as_nanosecond() - now().as_nanosecond())
                .expect("after boot"),
        };
        let before = clocks(now() + SignedDuration::from_mins(4));
        assert!(state.expired(0, &before).is_none(), "not yet closed");
        let after = clocks(now() + SignedDuration::from_mins(6));
        let expired = state.expired(before.boot, &after).expect("expired");
        assert_eq!(expired.edges, ["short"]);
        assert_eq!(expired.grants, ["short"]);
        assert_eq!(expired.book, Some(state.book.without_grants(|_| true)));
        assert!(
            state.expired(after.boot, &after).is_none(),
            "an expiry is reported once"
        );
    }
}
