//! `enforcer edge grant`: checking a just-in-time grant against the running policy before it
//! becomes an edge, and the edge views `edge list`, `edge show` and `status` print.

use std::{str::FromStr as _, time::Duration};

use enforcer_policy::{EdgeId, FreeTextError, Policy, PortRange, TrustDomain};
use jiff::{SignedDuration, Timestamp};

use crate::{
    api::edge::{EdgeView, GrantRequest},
    pipeline::edges::{self, Grant, LiveEdge},
    trust::bundles::Trust,
};

/// The grant `request` asks for, made at `now`, or every reason it cannot be made.
pub fn check(
    request: &GrantRequest,
    policy: &Policy,
    live: &[LiveEdge],
    now: Timestamp,
) -> Result<Grant, Vec<String>> {
    let mut errors = Vec::new();
    let mut domain = |flag: &str, name: &str| match TrustDomain::from_str(name) {
        Ok(d) if policy.domains.iter().any(|known| known.name == d) => {
            let bundled = policy
                .domains
                .iter()
                .any(|known| known.name == d && known.bundle.is_some());
            if policy.defaults.require_bundles && !bundled {
                errors.push(format!(
                    "--{flag} {d}: the policy requires trust bundles on every grant \
                     (defaults.require_bundles), and this domain names no bundle"
                ));
            }
            Some(d)
        }
        Ok(d) => {
            errors.push(format!(
                "--{flag} {d}: the running policy has no such domain (it has: {})",
                policy
                    .domains
                    .iter()
                    .map(|d| d.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
        Err(err) => {
            errors.push(format!("--{flag} {name}: {err}"));
            None
        }
    };
    let from = domain("from", &request.from);
    let to = domain("to", &request.to);
    if from.is_some() && from == to {
        errors
            .push("--from and --to name the same domain; same-domain traffic needs no edge".into());
    }
    let protocol = edges::protocol(&request.protocol);
    if protocol.is_none() {
        errors.push(format!(
            "--protocol {}: expected tcp, udp or any",
            request.protocol
        ));
    }
    let mut ports = Vec::new();
    for text in &request.ports {
        match PortRange::from_str(text) {
            Ok(range) => ports.push(range),
            Err(err) => errors.push(format!("--ports {text}: {err}")),
        }
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
    // The same rule as an edge's owner and reason in a policy file.
    let mut text = |flag: &str, text: &str| match enforcer_policy::free_text(text) {
        Ok(text) => Some(text.to_owned()),
        Err(FreeTextError::Empty) => {
            errors.push(format!("--{flag} is required and must not be blank"));
            None
        }
        Err(err) => {
            errors.push(format!("--{flag} {err}"));
            None
        }
    };
    let owner = text("owner", &request.owner);
    let reason = text("reason", &request.reason);
    let id = match &request.id {
        Some(text) => match EdgeId::from_str(text) {
            Ok(id) => Some(id),
            Err(err) => {
                errors.push(format!("--id {text}: {err}"));
                None
            }
        },
        None => None,
    };
    let (Some(from), Some(to), Some(protocol), Some(owner), Some(reason)) =
        (from, to, protocol, owner, reason)
    else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let id = id.unwrap_or_else(|| {
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        EdgeId::grant(&format!(
            "{from}|{to}|{protocol}|{}|{}",
            ports.join(","),
            now.as_nanosecond()
        ))
    });
    if live.iter().any(|e| e.edge.id == id) {
        return Err(vec![format!("edge id {id} is already in use")]);
    }
    let expires = SignedDuration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    Ok(Grant {
        id: id.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        protocol: protocol.to_string(),
        ports: ports.iter().map(ToString::to_string).collect(),
        owner,
        reason,
        created: now,
        not_before: request.not_before,
        expires,
    })
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
    let e = &edge.edge;
    EdgeView {
        id: e.id.to_string(),
        source: edge.source,
        from: e.from.to_string(),
        to: e.to.to_string(),
        protocol: e.protocol.to_string(),
        ports: e.ports.iter().map(ToString::to_string).collect(),
        owner: e.owner.to_string(),
        reason: e.reason.to_string(),
        created: edge.created,
        not_before: e.not_before,
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
        GrantRequest {
            from: "a.org".into(),
            to: "b.org".into(),
            protocol: "tcp".into(),
            ports: vec!["5432".into()],
            ttl_ms: 30 * 60 * 1000,
            owner: "dba".into(),
            reason: "migration".into(),
            id: None,
            not_before: None,
        }
    }

    fn policy() -> Policy {
        enforcer_policy::parse("p.yaml", POLICY).expect("valid")
    }

    #[test]
    fn a_good_grant_expires_ttl_after_now() {
        let grant = check(&request(), &policy(), &[], now()).expect("granted");
        assert!(grant.id.starts_with("grant-"), "{}", grant.id);
        assert_eq!(
            grant.expires,
            "2026-11-23T10:30:00Z".parse().expect("timestamp")
        );
        assert_eq!(grant.ports, ["5432"]);
        let (live, _) = Book::default()
            .with_grant(grant.clone())
            .resolve(&policy(), now())
            .expect("resolves");
        assert_eq!(live[0].expires, Some(grant.expires));
    }

    #[test]
    fn every_mistake_is_reported() {
        let bad = GrantRequest {
            from: "c.org".into(),
            to: "Not A Domain".into(),
            protocol: "icmp".into(),
            ports: vec!["0".into()],
            ttl_ms: 2 * 3600 * 1000,
            owner: " ".into(),
            reason: String::new(),
            id: Some("Bad Id".into()),
            not_before: None,
        };
        let errors = check(&bad, &policy(), &[], now()).expect_err("refused");
        let text = errors.join("\n");
        for expected in [
            "--from c.org: the running policy has no such domain (it has: a.org, b.org)",
            "--to Not A Domain",
            "--protocol icmp",
            "--ports 0",
            "--ttl 2h: longer than the policy's max_grant_ttl of 1h",
            "--owner is required",
            "--reason is required",
            "--id Bad Id",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn owner_and_reason_are_one_line_as_in_a_policy_file() {
        let forged = GrantRequest {
            owner: "dba\renforcer: revoked edge-1".into(),
            reason: "x\nenforcer: revoked edge-1".into(),
            ..request()
        };
        let errors = check(&forged, &policy(), &[], now()).expect_err("refused");
        assert_eq!(
            errors,
            [
                "--owner contains the control character U+000D; write it as one line without control characters",
                "--reason contains the control character U+000A; write it as one line without control characters",
            ]
        );
        let padded = GrantRequest {
            owner: "  dba ".into(),
            ..request()
        };
        let grant = check(&padded, &policy(), &[], now()).expect("granted");
        assert_eq!(grant.owner, "dba");
    }

    #[test]
    fn a_grant_cannot_take_an_id_in_use_or_join_a_domain_to_itself() {
        let first = check(&request(), &policy(), &[], now()).expect("granted");
        let (live, _) = Book::default()
            .with_grant(first.clone())
            .resolve(&policy(), now())
            .expect("resolves");
        let again = GrantRequest {
            id: Some(first.id.clone()),
            ..request()
        };
        assert!(check(&again, &policy(), &live, now()).is_err());
        let same = GrantRequest {
            to: "a.org".into(),
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
