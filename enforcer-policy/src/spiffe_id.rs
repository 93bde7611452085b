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
        if uri.is_empty() {
            return Err("SPIFFE ID is empty".to_owned());
        }
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

    // Vectors from the SPIFFE ID standard (spiffe/spiffe standards/SPIFFE-ID.md) and the
    // cases go-spiffe v2's `spiffeid` package tests `FromString` with, written as tables.

    fn accepts(uri: &str, domain: &str, path: &str) {
        let id = SpiffeId::from_str(uri).unwrap_or_else(|e| panic!("{uri:?} refused: {e}"));
        assert_eq!(id.domain.as_str(), domain, "{uri:?}");
        assert_eq!(id.path, path, "{uri:?}");
        assert_eq!(id.to_string(), uri, "{uri:?} does not print back unchanged");
    }

    fn refuses(uri: &str, why: &str) {
        match SpiffeId::from_str(uri) {
            Ok(id) => panic!("{uri:?} accepted as {id}"),
            Err(err) => assert!(err.contains(why), "{uri:?}: {err:?} lacks {why:?}"),
        }
    }

    /// SPIFFE-ID 2.1: a trust domain name is [a-z0-9.-_] only (lowercase letters).
    fn is_trust_domain_char(c: char) -> bool {
        matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
    }

    /// SPIFFE-ID 2.2: a path segment is [a-zA-Z0-9.-_] only.
    fn is_path_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
    }

    /// SPIFFE-ID 2.1, character by character over U+0000..=U+00FF (the code points above
    /// U+007F are two UTF-8 bytes each), as go-spiffe's `TestFromString` does. `/` ends the
    /// trust domain, so it is left out here.
    #[test]
    fn trust_domain_characters_follow_spec_2_1() {
        let mut accepted = 0;
        for byte in 0..=u8::MAX {
            let c = char::from(byte);
            if c == '/' {
                continue;
            }
            let uri = format!("spiffe://trustdomain{c}/path");
            if is_trust_domain_char(c) {
                accepts(&uri, &format!("trustdomain{c}"), "/path");
                accepted += 1;
            } else {
                refuses(&uri, &format!("contains the character {c:?}"));
                if c.is_ascii_uppercase() {
                    refuses(&uri, "uppercase is not folded to lowercase");
                }
            }
        }
        assert_eq!(accepted, 26 + 10 + 3);
    }

    /// SPIFFE-ID 2.2, character by character over U+0000..=U+00FF, as go-spiffe's
    /// `TestFromString` does. `/` separates segments, so it is left out here.
    #[test]
    fn path_characters_follow_spec_2_2() {
        let mut accepted = 0;
        for byte in 0..=u8::MAX {
            let c = char::from(byte);
            if c == '/' {
                continue;
            }
            let uri = format!("spiffe://trustdomain/path{c}");
            if is_path_char(c) {
                accepts(&uri, "trustdomain", &format!("/path{c}"));
                accepted += 1;
            } else {
                refuses(&uri, &format!("has the character {c:?} in its path"));
            }
        }
        assert_eq!(accepted, 26 + 26 + 10 + 3);
        // A character alone as a whole segment, and in a later segment.
        for c in ['A', 'z', '0', '-', '_'] {
            accepts(&format!("spiffe://td/{c}"), "td", &format!("/{c}"));
            accepts(&format!("spiffe://td/a/{c}/b"), "td", &format!("/a/{c}/b"));
        }
        refuses("spiffe://td/a/b$/c", "has the character '$' in its path");
        refuses(
            "spiffe://td/a/\u{e9}",
            "has the character '\u{e9}' in its path",
        );
    }

    /// SPIFFE-ID 2: the scheme must be `spiffe`. go-spiffe accepts only the lowercase
    /// `spiffe://` prefix although 2.4 calls the scheme case-insensitive; so does this parser.
    #[test]
    fn scheme_vectors() {
        let not_spiffe = "must start with spiffe://";
        refuses("", "SPIFFE ID is empty");
        for uri in [
            "s",
            "spiffe",
            "spiffe:",
            "spiffe:/",
            "spiffe:/trustdomain/path",
            "spiffe:trustdomain/path",
            "Spiffe://",
            "Spiffe://trustdomain/path",
            "SPIFFE://trustdomain/path",
            "https://trustdomain/path",
            "trustdomain/path",
            " spiffe://trustdomain/path",
            "//trustdomain/path",
        ] {
            refuses(uri, not_spiffe);
        }
        accepts("spiffe://trustdomain", "trustdomain", "");
        accepts("spiffe://trustdomain/path", "trustdomain", "/path");
    }

    /// SPIFFE-ID 2 and 2.1: the trust domain name must not be empty.
    #[test]
    fn missing_trust_domain_vectors() {
        for uri in ["spiffe://", "spiffe:///", "spiffe:///path", "spiffe:////"] {
            refuses(uri, "has no trust domain");
        }
    }

    /// SPIFFE-ID 2.1: no user info or port; no IPv6 literal (its characters are not allowed);
    /// IPv4 dotted quads are ordinary names. SPIFFE-ID 2: no query or fragment.
    #[test]
    fn authority_query_and_fragment_vectors() {
        for (uri, why) in [
            (
                "spiffe://trustdomain:443/path",
                "contains the character ':'",
            ),
            ("spiffe://trustdomain:/path", "contains the character ':'"),
            ("spiffe://trustdomain:443", "contains the character ':'"),
            (
                "spiffe://user@trustdomain/path",
                "contains the character '@'",
            ),
            (
                "spiffe://user:pw@trustdomain/path",
                "contains the character ':'",
            ),
            ("spiffe://[::1]/path", "contains the character '['"),
            ("spiffe://[::1]:443/path", "contains the character '['"),
            ("spiffe://trustdomain?q=1", "contains the character '?'"),
            ("spiffe://trustdomain#f", "contains the character '#'"),
            (
                "spiffe://trustdomain/path?q=1",
                "has the character '?' in its path",
            ),
            (
                "spiffe://trustdomain/path?",
                "has the character '?' in its path",
            ),
            (
                "spiffe://trustdomain/path#f",
                "has the character '#' in its path",
            ),
            (
                "spiffe://trustdomain/path#",
                "has the character '#' in its path",
            ),
            (
                "spiffe://trustdomain/a:b",
                "has the character ':' in its path",
            ),
            (
                "spiffe://trustdomain/a@b",
                "has the character '@' in its path",
            ),
        ] {
            refuses(uri, why);
        }
        accepts("spiffe://192.168.0.1/path", "192.168.0.1", "/path");
        accepts("spiffe://10.0.0.1", "10.0.0.1", "");
    }

    /// SPIFFE-ID 2.1 and 2.2: no percent-encoding, neither in the trust domain nor in the
    /// path (go-spiffe's "reject percent encoding" cases, and ASCII that would decode fine).
    #[test]
    fn percent_encoding_vectors() {
        for (uri, why) in [
            ("spiffe://%F0%9F%A4%AF/path", "contains the character '%'"),
            ("spiffe://%62%61%64/path", "contains the character '%'"),
            ("spiffe://trust%2Edomain/path", "contains the character '%'"),
            (
                "spiffe://trustdomain/%F0%9F%A4%AF",
                "has the character '%' in its path",
            ),
            (
                "spiffe://trustdomain/%62%61%64",
                "has the character '%' in its path",
            ),
            (
                "spiffe://trustdomain/a%2Fb",
                "has the character '%' in its path",
            ),
            (
                "spiffe://trustdomain/%2E%2E",
                "has the character '%' in its path",
            ),
        ] {
            refuses(uri, why);
        }
    }

    /// SPIFFE-ID 2.2: no empty segments and no trailing `/`.
    #[test]
    fn empty_segment_and_trailing_slash_vectors() {
        for uri in [
            "spiffe://trustdomain/",
            "spiffe://trustdomain//",
            "spiffe://trustdomain//path",
            "spiffe://trustdomain/path/",
            "spiffe://trustdomain/path//other",
            "spiffe://trustdomain/path/other/",
        ] {
            refuses(uri, "has an empty path segment (or a trailing slash)");
        }
    }

    /// SPIFFE-ID 2.2: no `.` or `..` segments; segments that merely contain dots are fine.
    #[test]
    fn dot_segment_vectors() {
        for (uri, segment) in [
            ("spiffe://trustdomain/.", "."),
            ("spiffe://trustdomain/./path", "."),
            ("spiffe://trustdomain/path/./other", "."),
            ("spiffe://trustdomain/path/.", "."),
            ("spiffe://trustdomain/..", ".."),
            ("spiffe://trustdomain/../path", ".."),
            ("spiffe://trustdomain/path/../other", ".."),
            ("spiffe://trustdomain/path/..", ".."),
        ] {
            refuses(uri, &format!("has a `{segment}` path segment"));
        }
        for path in ["/.path", "/..path", "/...", "/path.", "/a/.b/c..", "/a.b"] {
            accepts(&format!("spiffe://trustdomain{path}"), "trustdomain", path);
        }
    }

    /// SPIFFE-ID 2.3: IDs up to 2048 bytes are supported (longer ones are refused here);
    /// a trust domain name is at most 255 bytes.
    #[test]
    fn length_limit_vectors() {
        let prefix = "spiffe://trustdomain/";
        let fits = format!("{prefix}{}", "a".repeat(MAX_LEN - prefix.len()));
        assert_eq!(fits.len(), 2048);
        accepts(&fits, "trustdomain", &fits["spiffe://trustdomain".len()..]);
        let over = format!("{fits}b");
        refuses(&over, "SPIFFE ID is 2049 bytes long; the limit is 2048");
        // Many short segments up to the limit are just as fine.
        let segments = "/ab".repeat((MAX_LEN - "spiffe://trustdomain".len()) / 3);
        accepts(
            &format!("spiffe://trustdomain{segments}"),
            "trustdomain",
            &segments,
        );

        let domain = "d".repeat(255);
        accepts(&format!("spiffe://{domain}/path"), &domain, "/path");
        accepts(&format!("spiffe://{domain}"), &domain, "");
        refuses(
            &format!("spiffe://{domain}d/path"),
            "trust domain name is 256 bytes long; SPIFFE limits trust domain names to 255 bytes",
        );
    }
}
