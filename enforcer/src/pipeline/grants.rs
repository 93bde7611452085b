//! `enforcer edge grant`: checking a just-in-time grant against the running policy before it
//! becomes an edge, and the edge views `edge list`, `edge show` and `status` print.

use std::{sync::Arc, time::Duration};

use enforcer_policy::{Edge, EdgeEnd, EdgeId, Policy, TrustDomain};
use jiff::{SignedDuration, Timestamp};

use crate::{
    api::edge::{EdgeView, GrantRequest},
    pipeline::edges::{Grant, LiveEdge, Trust},
};

/// The grant `request` asks for, made at `now`, or every reason the running policy refuses it.
/// The request's fields were checked as a policy's are when it was read.
pub fn check(
    request: &GrantRequest,
    policy: &Policy,
    live: &[LiveEdge],
    now: Timestamp,
) -> Result<Grant, Vec<String>> {
    let mut errors = Vec::new();
    let mut domain =
        |flag: &str, d: &TrustDomain| match policy.domains.iter().find(|known| known.name == *d) {
            Some(known) => {
                if policy.defaults.require_bundles && known.bundle.is_none() {
                    errors.push(format!(
                        "--{flag} {d}: the policy requires trust bundles on every grant \
                     (defaults.require_bundles), and this domain names no bundle"
                    ));
                }
            }
            None => errors.push(format!(
                "--{flag} {d}: the running policy has no such domain (it has: {})",
                policy
                    .domains
                    .iter()
                    .map(|d| d.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    domain("from", &request.from);
    domain("to", &request.to);
    if request.from == request.to {
        errors
            .push("--from and --to name the same domain; same-domain traffic needs no edge".into());
    }
    if request.ports.is_empty() {
        errors.push("--ports: name at least one port or range".into());
    }
    let ttl = Duration::from_millis(request.ttl_ms);
    let max = policy.defaults.max_grant_ttl;
    if ttl.is_zero() {
        errors.push("--ttl must be longer than zero".into());
    } else if ttl > max {
        errors.push(format!(
            "--ttl {}: longer than the policy's max_grant_ttl of {} (defaults.max_grant_ttl)",
            human(ttl),
            human(max)
        ));
    }
    let expires = SignedDuration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    if let Some(not_before) = request.not_before
        && not_before >= expires
    {
        errors.push(not_before_error(not_before, expires));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let id = request.id.clone().unwrap_or_else(|| {
        let ports: Vec<String> = request.ports.iter().map(ToString::to_string).collect();
        EdgeId::grant(&format!(
            "{}|{}|{}|{}|{}",
            request.from,
            request.to,
            request.protocol,
            ports.join(","),
            now.as_nanosecond()
        ))
    });
    if live.iter().any(|e| e.edge.id == id) {
        return Err(vec![format!("edge id {id} is already in use")]);
    }
    Ok(Grant {
        edge: Arc::new(Edge {
            id,
            from: request.from.clone(),
            to: request.to.clone(),
            protocol: request.protocol,
            ports: request.ports.clone(),
            owner: Arc::clone(&request.owner),
            reason: Arc::clone(&request.reason),
            not_before: request.not_before,
            end: Some(EdgeEnd::At(expires)),
            require_bundles: policy.defaults.require_bundles,
        }),
        created: now,
        expires,
    })
}

/// Why a grant that would start at `not_before` and end at `expires` is refused, as a policy
/// file's edge with such a window is.
pub fn not_before_error(not_before: Timestamp, expires: Timestamp) -> String {
    format!(
        "--not-before {not_before} must be before the grant's end ({expires}, --ttl from now); \
         the grant would never allow anything"
    )
}

/// A duration as policies write it: `12h`, `30m`, `45s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Usage of one edge, in wall-clock terms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub connections: u64,
    pub last_used: Option<Timestamp>,
}

pub fn view(edge: &LiveEdge, used: Used, now: Timestamp, stale_after: Duration) -> EdgeView {
    let idle_since = used.last_used.unwrap_or(edge.created);
    let stale_after = SignedDuration::try_from(stale_after).unwrap_or(SignedDuration::MAX);
    EdgeView {
        edge: Arc::clone(&edge.edge),
        source: edge.source,
        created: edge.created,
        expires: edge.expires,
        state: edge.state(now).into(),
        trust: match &edge.trust {
            Trust::NotRequired => None,
            Trust::Until(t) if *t <= now => {
                Some(format!("suspended: its trust bundles lapsed at {t}"))
            }
            Trust::Until(t) => Some(format!("requires trust bundles: valid until {t}")),
            Trust::Suspended(why) => Some(format!("suspended: {why}")),
        },
        connections: used.connections,
        last_used: used.last_used,
        stale: now.duration_since(idle_since) >= stale_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::edges::Book;

    const POLICY: &str = "
version: 1
defaults: {max_grant_ttl: 1h}
domains: [{name: a.org}, {name: b.org}]
";

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().expect("timestamp")
    }

    fn request() -> GrantRequest {
        serde_json::from_value(serde_json::json!({
            "from": "a.org", "to": "b.org", "protocol": "tcp", "ports": ["5432"],
            "ttl_ms": 30 * 60 * 1000, "owner": "dba", "reason": "migration", "id": null,
            "not_before": null,
        }))
        .expect("a grant request")
    }

    fn policy() -> Policy {
        enforcer_policy::parse("p.yaml", POLICY).expect("valid")
    }

    #[test]
    fn a_good_grant_expires_ttl_after_now() {
        let grant = check(&request(), &policy(), &[], now()).expect("granted");
        assert!(
            grant.edge.id.as_str().starts_with("grant-"),
            "{}",
            grant.edge.id
        );
        assert_eq!(
            grant.expires,
            "2026-11-23T10:30:00Z".parse().expect("timestamp")
        );
        assert_eq!(grant.edge.ports_text(), "5432");
        let (live, _) = Book::default()
            .with_grant(grant.clone())
            .resolve(&policy(), now())
            .expect("resolves");
        assert_eq!(live[0].expires, Some(grant.expires));
    }

    #[test]
    fn every_mistake_against_the_running_policy_is_reported() {
        let bad = GrantRequest {
            from: "c.org".parse().expect("domain"),
            ports: Vec::new(),
            ttl_ms: 2 * 3600 * 1000,
            ..request()
        };
        let errors = check(&bad, &policy(), &[], now()).expect_err("refused");
        let text = errors.join("\n");
        for expected in [
            "--from c.org: the running policy has no such domain (it has: a.org, b.org)",
            "--ports: name at least one port or range",
            "--ttl 2h: longer than the policy's max_grant_ttl of 1h",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn a_request_is_read_back_with_a_policys_checks() {
        let forged = serde_json::json!({
            "from": "a.org", "to": "b.org", "protocol": "tcp", "ports": ["5432"],
            "ttl_ms": 1000, "owner": "dba\renforcer: revoked edge-1", "reason": "r",
            "id": null, "not_before": null,
        });
        let err = serde_json::from_value::<GrantRequest>(forged)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("control character U+000D"), "{err}");
        let bad_port = serde_json::json!({
            "from": "a.org", "to": "b.org", "protocol": "tcp", "ports": ["0"],
            "ttl_ms": 1000, "owner": "dba", "reason": "r", "id": null, "not_before": null,
        });
        let err = serde_json::from_value::<GrantRequest>(bad_port)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("port 0 is out of range"), "{err}");
    }

    #[test]
    fn a_grant_must_start_before_it_ends() {
        let late = GrantRequest {
            not_before: Some("9999-12-30T00:00:00Z".parse().expect("timestamp")),
            ..request()
        };
        assert_eq!(
            check(&late, &policy(), &[], now()).expect_err("refused"),
            [
                "--not-before 9999-12-30T00:00:00Z must be before the grant's end \
                 (2026-11-23T10:30:00Z, --ttl from now); the grant would never allow anything"
            ]
        );
        let soon = GrantRequest {
            not_before: Some("2026-11-23T10:29:59Z".parse().expect("timestamp")),
            ..request()
        };
        assert!(check(&soon, &policy(), &[], now()).is_ok());
    }

    #[test]
    fn a_grant_cannot_take_an_id_in_use_or_join_a_domain_to_itself() {
        let first = check(&request(), &policy(), &[], now()).expect("granted");
        let (live, _) = Book::default()
            .with_grant(first.clone())
            .resolve(&policy(), now())
            .expect("resolves");
        let again = GrantRequest {
            id: Some(first.edge.id.clone()),
            ..request()
        };
        assert!(check(&again, &policy(), &live, now()).is_err());
        let same = GrantRequest {
            to: "a.org".parse().expect("domain"),
            ..request()
        };
        assert!(check(&same, &policy(), &[], now()).is_err());
    }

    #[test]
    fn staleness_counts_from_the_last_use_or_creation() {
        let grant = check(&request(), &policy(), &[], now()).expect("granted");
        let (live, _) = Book::default()
            .with_grant(grant)
            .resolve(&policy(), now())
            .expect("resolves");
        let later = now() + SignedDuration::from_hours(2);
        let hour = Duration::from_secs(3600);
        let unused = view(&live[0], Used::default(), later, hour);
        assert!(unused.stale);
        assert_eq!(unused.state, "expired");
        let used = Used {
            connections: 3,
            last_used: Some(later - SignedDuration::from_mins(5)),
        };
        assert!(!view(&live[0], used, later, hour).stale);
    }
}
