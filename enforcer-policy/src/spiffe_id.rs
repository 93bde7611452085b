//! SPIFFE IDs as X.509-SVIDs carry them (`spiffe://trust-domain/path`), checked the way the
//! SPIFFE ID standard defines them: no port, user info, query or fragment, no percent
//! encoding, and path segments of letters, digits, `.`, `-` and `_` that are neither empty
//! nor `.` or `..`.

use std::{fmt, str::FromStr};

use crate::trust_domain::TrustDomain;

const SCHEME: &str = "spiffe://";
/// The SPIFFE ID standard's limit for a URI SAN.
const MAX_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    pub domain: TrustDomain,
    /// Empty for the trust domain's own ID, otherwise starts with `/`.
    pub path: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.domain, self.path)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for SpiffeId {
    type Err = String;

    fn from_str(uri: &str) -> Result<Self, String> {
        let shown = uri.escape_debug();
        if uri.len() > MAX_LEN {
            return Err(format!(
                "SPIFFE ID is {} bytes long; the limit is {MAX_LEN}",
                uri.len()
            ));
        }
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| {
            format!("`{shown}` is not a SPIFFE ID (it must start with spiffe://)")
        })?;
        let (name, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if name.is_empty() {
            return Err(format!("SPIFFE ID `{shown}` has no trust domain"));
        }
        let domain =
            TrustDomain::from_str(name).map_err(|err| format!("SPIFFE ID `{shown}`: {err}"))?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() {
                    return Err(format!(
                        "SPIFFE ID `{shown}` has an empty path segment (or a trailing slash)"
                    ));
                }
                if segment == "." || segment == ".." {
                    return Err(format!(
                        "SPIFFE ID `{shown}` has a `{segment}` path segment"
                    ));
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(format!(
                        "SPIFFE ID `{shown}` has the character {c:?} in its path; only letters, \
                         digits, '.', '-' and '_' are allowed"
                    ));
                }
            }
        }
        Ok(SpiffeId {
            domain,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id: SpiffeId = "spiffe://prod.example.org/ns/db/sa-1.x_y"
            .parse()
            .expect("valid");
        assert_eq!(id.domain.as_str(), "prod.example.org");
        assert_eq!(id.path, "/ns/db/sa-1.x_y");
        assert_eq!(id.to_string(), "spiffe://prod.example.org/ns/db/sa-1.x_y");
        let root: SpiffeId = "spiffe://example.org".parse().expect("valid");
        assert_eq!(root.path, "");
    }

    #[test]
    fn invalid_ids() {
        for (uri, why) in [
            ("https://example.org/a", "must start with spiffe://"),
            ("SPIFFE://example.org/a", "must start with spiffe://"),
            ("spiffe:///a", "has no trust domain"),
            ("spiffe://Example.org/a", "uppercase"),
            ("spiffe://example.org:443/a", "character ':'"),
            ("spiffe://user@example.org/a", "character '@'"),
            ("spiffe://example.org/a/", "empty path segment"),
            ("spiffe://example.org//a", "empty path segment"),
            ("spiffe://example.org/a/../b", "`..` path segment"),
            ("spiffe://example.org/./b", "`.` path segment"),
            ("spiffe://example.org/a?x=1", "character '?'"),
            ("spiffe://example.org/a#f", "character '#'"),
            ("spiffe://example.org/a%20b", "character '%'"),
        ] {
            let err = SpiffeId::from_str(uri).expect_err(uri);
            assert!(err.contains(why), "{uri}: {err}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_LEN));
        assert!(SpiffeId::from_str(&long).is_err());
    }
}
