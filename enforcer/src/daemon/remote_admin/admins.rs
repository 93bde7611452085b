//! Who may administer the daemon remotely: `--admin-id` SPIFFE IDs, each exact or, ending in
//! `/*`, a path and everything below it. Matching is by whole path segments, so
//! `spiffe://admin.example.org/ops/*` covers `/ops` and `/ops/alice` but not `/ops-staging`.

use std::{fmt, str::FromStr};

use enforcer_policy::TrustDomain;

use crate::trust::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminId {
    id: SpiffeId,
    /// Ends in `/*`: the path and every path below it.
    below: bool,
}

impl FromStr for AdminId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (id, below) = match text.strip_suffix("/*") {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        let id: SpiffeId = id.parse()?;
        if id.path.is_empty() && !below {
            return Err(format!(
                "{text} names a trust domain, not an SVID (an SVID's ID has a path); write \
                 {text}/* to admit every ID of the domain"
            ));
        }
        Ok(Self { id, below })
    }
}

impl fmt::Display for AdminId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.id, if self.below { "/*" } else { "" })
    }
}

impl AdminId {
    fn matches(&self, id: &SpiffeId) -> bool {
        if id.domain != self.id.domain {
            return false;
        }
        if !self.below {
            return id.path == self.id.path;
        }
        id.path
            .strip_prefix(&self.id.path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// The admin IDs, all of the one trust domain whose bundle authenticates them.
#[derive(Debug)]
pub struct Admins {
    pub domain: TrustDomain,
    ids: Vec<AdminId>,
}

impl Admins {
    pub fn new(ids: Vec<AdminId>) -> Result<Self, String> {
        let Some(first) = ids.first() else {
            return Err("at least one is needed".into());
        };
        let domain = first.id.domain.clone();
        if let Some(other) = ids.iter().find(|a| a.id.domain != domain) {
            return Err(format!(
                "{first} and {other} are in different trust domains; the admin IDs must all be \
                 in the one trust domain whose bundle --admin-bundle holds"
            ));
        }
        Ok(Self { domain, ids })
    }

    /// `Ok` if `id` may administer the daemon, else the message to answer with.
    pub fn check(&self, id: &SpiffeId) -> Result<(), String> {
        if self.ids.iter().any(|a| a.matches(id)) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: {id} is not an admin identity of this daemon"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admins(ids: &[&str]) -> Admins {
        Admins::new(ids.iter().map(|s| s.parse().expect("valid")).collect()).expect("one domain")
    }

    fn id(text: &str) -> SpiffeId {
        text.parse().expect("valid")
    }

    #[test]
    fn exact_ids_match_only_themselves() {
        let a = admins(&[
            "spiffe://admin.example.org/ops",
            "spiffe://admin.example.org/ci",
        ]);
        assert_eq!(a.check(&id("spiffe://admin.example.org/ci")), Ok(()));
        for other in [
            "spiffe://admin.example.org/ops/alice",
            "spiffe://admin.example.org/opsx",
            "spiffe://admin.example.org/dev",
            "spiffe://prod.example.org/ops",
        ] {
            let err = a.check(&id(other)).expect_err(other);
            assert!(
                err.contains(&format!("{other} is not an admin identity")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_trailing_star_admits_the_path_and_below_by_whole_segments() {
        let a = admins(&["spiffe://admin.example.org/ops/*"]);
        for ok in [
            "spiffe://admin.example.org/ops",
            "spiffe://admin.example.org/ops/alice",
            "spiffe://admin.example.org/ops/a/b",
        ] {
            assert_eq!(a.check(&id(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "spiffe://admin.example.org/ops-staging",
            "spiffe://admin.example.org/op",
            "spiffe://other.example.org/ops/alice",
        ] {
            assert!(a.check(&id(refused)).is_err(), "{refused}");
        }
        let all = admins(&["spiffe://admin.example.org/*"]);
        assert_eq!(all.check(&id("spiffe://admin.example.org/any/one")), Ok(()));
        assert!(all.check(&id("spiffe://evil.example.org/x")).is_err());
    }

    #[test]
    fn bad_admin_ids_are_refused_with_the_reason() {
        for (text, why) in [
            ("spiffe://admin.example.org", "names a trust domain"),
            ("https://admin.example.org/ops", "must start with spiffe://"),
            ("spiffe://admin.example.org/ops/", "empty path segment"),
            ("spiffe://admin.example.org/o*", "character '*'"),
            ("spiffe://Admin.example.org/ops", "uppercase"),
        ] {
            let err = AdminId::from_str(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let err = Admins::new(vec![
            "spiffe://admin.example.org/ops".parse().expect("valid"),
            "spiffe://prod.example.org/ops".parse().expect("valid"),
        ])
        .expect_err("two domains");
        assert!(err.contains("different trust domains"), "{err}");
    }
}
