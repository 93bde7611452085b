//! SPIFFE trust domain names, checked the way go-spiffe's
//! `spiffeid.TrustDomainFromString` checks them so that names mean the same
//! here as in SPIRE configuration. Two things it lets through are refused:
//! a `spiffe://` ID with a path (which it would cut down to the trust
//! domain, hiding a likely mistake) and names over 255 bytes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

/// The SPIFFE spec says a trust domain SHOULD NOT exceed 255 bytes, so a
/// longer name is far more likely a mistake than a real domain.
const MAX_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

const WHAT_IT_IS: &str = "a trust domain name is a bare name like `example.org`, optionally written as `spiffe://example.org`";

/// A validated, normalised SPIFFE trust domain name such as `prod.example.org`. Shared, not
/// copied: 100,000 edges name the same few thousand domains.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read back with the same checks (and normalisation) as in a policy.
impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of a `spiffe://` URI that has no place in a trust domain name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriPart {
    Path,
    Port,
    UserInfo,
    Query,
    Fragment,
}

impl fmt::Display for UriPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriPart::Path => "a path",
            UriPart::Port => "a port",
            UriPart::UserInfo => "user info",
            UriPart::Query => "a query",
            UriPart::Fragment => "a fragment",
        })
    }
}

/// Why a string is not a trust domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustDomainError {
    #[error("trust domain name is empty")]
    Empty,
    #[error(
        "trust domain name `{}` contains the character {character:?}; only lowercase letters a-z, digits 0-9, '.', '-' and '_' are allowed{}",
        .name.escape_debug(),
        if .character.is_ascii_uppercase() { " (uppercase is not folded to lowercase)" } else { "" }
    )]
    InvalidCharacter { name: String, character: char },
    #[error(
        "trust domain name is {len} bytes long; SPIFFE limits trust domain names to {MAX_LEN} bytes"
    )]
    TooLong { len: usize },
    #[error("`{}` has no trust domain name after `spiffe://`; {WHAT_IT_IS}", .input.escape_debug())]
    MissingName { input: String },
    #[error("`{}` has {part}; {WHAT_IT_IS}", .input.escape_debug())]
    ExtraUriPart { input: String, part: UriPart },
    #[error("`{}` is not a trust domain name; {WHAT_IT_IS}", .input.escape_debug())]
    WrongScheme { input: String },
}

impl FromStr for TrustDomain {
    type Err = TrustDomainError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(TrustDomainError::Empty);
        }
        if let Some(rest) = input.strip_prefix(SCHEME) {
            return from_uri(input, rest);
        }
        // go-spiffe treats anything containing ":/" as an attempted URI;
        // doing the same gives `https://x` or `spiffe:/x` a message about
        // the scheme instead of one about the ':' character.
        if input.contains(":/") {
            return Err(TrustDomainError::WrongScheme {
                input: input.to_owned(),
            });
        }
        from_name(input, input)
    }
}

fn from_uri(input: &str, after_scheme: &str) -> Result<TrustDomain, TrustDomainError> {
    let (authority, tail) = match after_scheme.find(['/', '?', '#']) {
        // `find` returns the index of an ASCII delimiter, a char boundary.
        Some(end) => after_scheme.split_at(end),
        None => (after_scheme, ""),
    };
    let extra = |part| {
        Err(TrustDomainError::ExtraUriPart {
            input: input.to_owned(),
            part,
        })
    };
    if authority.is_empty() {
        return Err(TrustDomainError::MissingName {
            input: input.to_owned(),
        });
    }
    if authority.contains('@') {
        return extra(UriPart::UserInfo);
    }
    // RFC 3986 3.2.3: a port is the digits after the authority's last ':'.
    // Any other ':' (an IPv6 literal like `[::1]`, which SPIFFE-ID 2.1
    // excludes, or `a:b`) is reported below as a character not allowed.
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
    {
        return extra(UriPart::Port);
    }
    match tail.chars().next() {
        Some('/') => extra(UriPart::Path),
        Some('?') => extra(UriPart::Query),
        Some('#') => extra(UriPart::Fragment),
        _ => from_name(input, authority),
    }
}

fn from_name(input: &str, name: &str) -> Result<TrustDomain, TrustDomainError> {
    if let Some(character) = name.chars().find(|&c| !is_trust_domain_char(c)) {
        return Err(TrustDomainError::InvalidCharacter {
            name: input.to_owned(),
            character,
        });
    }
    if name.len() > MAX_LEN {
        return Err(TrustDomainError::TooLong { len: name.len() });
    }
    Ok(TrustDomain(name.into()))
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        let cases = [
            ("prod.example.org", "prod.example.org"),
            ("example", "example"),
            ("a-b_c.d9", "a-b_c.d9"),
            ("0", "0"),
            // go-spiffe checks characters only, not label structure.
            ("..", ".."),
            ("-a", "-a"),
            ("spiffe://prod.example.org", "prod.example.org"),
            ("spiffe://x", "x"),
        ];
        for (input, want) in cases {
            let td: TrustDomain = input
                .parse()
                .unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
            assert_eq!(td.as_str(), want, "{input:?}");
            assert_eq!(td.to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn longest_allowed_name_is_255_bytes() {
        let name = "a".repeat(255);
        assert_eq!(
            name.parse::<TrustDomain>().map(|t| t.0.to_string()),
            Ok(name.clone())
        );
        let uri = format!("spiffe://{name}");
        assert_eq!(
            uri.parse::<TrustDomain>().map(|t| t.0.to_string()),
            Ok(name)
        );
    }

    #[test]
    fn invalid_names() {
        let what = WHAT_IT_IS;
        let chars = "only lowercase letters a-z, digits 0-9, '.', '-' and '_' are allowed";
        let cases = [
            ("", "trust domain name is empty".to_owned()),
            (
                "Prod.example.org",
                format!(
                    "trust domain name `Prod.example.org` contains the character 'P'; {chars} (uppercase is not folded to lowercase)"
                ),
            ),
            (
                "prod example",
                format!("trust domain name `prod example` contains the character ' '; {chars}"),
            ),
            (
                "prod.example.org:8443",
                format!(
                    "trust domain name `prod.example.org:8443` contains the character ':'; {chars}"
                ),
            ),
            (
                "prod\nexample",
                format!("trust domain name `prod\\nexample` contains the character '\\n'; {chars}"),
            ),
            (
                "exämple.org",
                format!("trust domain name `exämple.org` contains the character 'ä'; {chars}"),
            ),
            (
                "a/b",
                format!("trust domain name `a/b` contains the character '/'; {chars}"),
            ),
            (
                "spiffe://Prod.org",
                format!(
                    "trust domain name `spiffe://Prod.org` contains the character 'P'; {chars} (uppercase is not folded to lowercase)"
                ),
            ),
            (
                "spiffe://",
                format!("`spiffe://` has no trust domain name after `spiffe://`; {what}"),
            ),
            (
                "spiffe:///workload",
                format!("`spiffe:///workload` has no trust domain name after `spiffe://`; {what}"),
            ),
            (
                "spiffe://a.org/x",
                format!("`spiffe://a.org/x` has a path; {what}"),
            ),
            (
                "spiffe://a.org/",
                format!("`spiffe://a.org/` has a path; {what}"),
            ),
            (
                "spiffe://a.org:443",
                format!("`spiffe://a.org:443` has a port; {what}"),
            ),
            (
                "spiffe://u@a.org",
                format!("`spiffe://u@a.org` has user info; {what}"),
            ),
            (
                "spiffe://a.org?x=1",
                format!("`spiffe://a.org?x=1` has a query; {what}"),
            ),
            (
                "spiffe://a.org#frag",
                format!("`spiffe://a.org#frag` has a fragment; {what}"),
            ),
            (
                "https://a.org",
                format!("`https://a.org` is not a trust domain name; {what}"),
            ),
            (
                "SPIFFE://a.org",
                format!("`SPIFFE://a.org` is not a trust domain name; {what}"),
            ),
            (
                "spiffe:/a.org",
                format!("`spiffe:/a.org` is not a trust domain name; {what}"),
            ),
        ];
        for (input, want) in cases {
            match input.parse::<TrustDomain>() {
                Ok(td) => panic!("{input:?} accepted as {td}"),
                Err(e) => assert_eq!(e.to_string(), want, "{input:?}"),
            }
        }
    }

    #[test]
    fn names_over_255_bytes_are_rejected() {
        let name = "a".repeat(256);
        let want =
            "trust domain name is 256 bytes long; SPIFFE limits trust domain names to 255 bytes";
        for input in [name.clone(), format!("spiffe://{name}")] {
            assert_eq!(
                input.parse::<TrustDomain>().map_err(|e| e.to_string()),
                Err(want.to_owned())
            );
        }
    }

    #[test]
    fn serializes_as_plain_string() {
        let td: TrustDomain = "spiffe://a.org".parse().expect("valid");
        assert_eq!(
            serde_json::to_string(&td).expect("serializes"),
            r#""a.org""#
        );
    }

    // Vectors from the SPIFFE ID standard (spiffe/spiffe standards/SPIFFE-ID.md) and the
    // cases go-spiffe v2's `spiffeid` package tests `TrustDomainFromString` with, written
    // as tables.

    fn accepts(input: &str, want: &str) {
        match input.parse::<TrustDomain>() {
            Ok(td) => assert_eq!(td.as_str(), want, "{input:?}"),
            Err(e) => panic!("{input:?} refused: {e}"),
        }
    }

    fn refuses(input: &str, want: TrustDomainError) {
        assert_eq!(input.parse::<TrustDomain>(), Err(want), "{input:?}");
    }

    fn bad_char(input: &str, character: char) -> TrustDomainError {
        TrustDomainError::InvalidCharacter {
            name: input.to_owned(),
            character,
        }
    }

    fn extra(input: &str, part: UriPart) -> TrustDomainError {
        TrustDomainError::ExtraUriPart {
            input: input.to_owned(),
            part,
        }
    }

    /// SPIFFE-ID 2.1: [a-z0-9.-_] only, character by character over U+0000..=U+00FF (the
    /// code points above U+007F are two UTF-8 bytes each), as go-spiffe's
    /// `TestTrustDomainFromString` does, both as a bare name and after `spiffe://`.
    #[test]
    fn characters_follow_spec_2_1() {
        let mut accepted = 0;
        for byte in 0..=u8::MAX {
            let c = char::from(byte);
            let name = format!("trustdomain{c}");
            let uri = format!("spiffe://{name}");
            if matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_') {
                accepts(&name, &name);
                accepts(&uri, &name);
                accepted += 1;
                continue;
            }
            refuses(&name, bad_char(&name, c));
            let want = match c {
                '/' => extra(&uri, UriPart::Path),
                ':' => extra(&uri, UriPart::Port),
                '@' => extra(&uri, UriPart::UserInfo),
                '?' => extra(&uri, UriPart::Query),
                '#' => extra(&uri, UriPart::Fragment),
                _ => bad_char(&uri, c),
            };
            refuses(&uri, want);
            if c.is_ascii_uppercase() {
                let message = bad_char(&name, c).to_string();
                assert!(message.contains("uppercase is not folded"), "{message}");
            }
        }
        assert_eq!(accepted, 26 + 10 + 3);
    }

    /// go-spiffe's `TrustDomainFromString` cases (empty, scheme, missing name, trailing
    /// slash, percent-encoding), plus more scheme spellings. SPIFFE-ID 2: the scheme is
    /// `spiffe`; go-spiffe accepts only lowercase `spiffe://` and so does this parser.
    #[test]
    fn go_spiffe_string_vectors() {
        refuses("", TrustDomainError::Empty);
        accepts("spiffe://trustdomain", "trustdomain");
        accepts("trustdomain", "trustdomain");
        for input in [
            "spiffe:/trustdomain/path",
            "spiffe:/trustdomain",
            "Spiffe://trustdomain",
            "SPIFFE://trustdomain",
            "https://trustdomain",
            "://trustdomain",
            "trustdomain:/",
        ] {
            refuses(
                input,
                TrustDomainError::WrongScheme {
                    input: input.to_owned(),
                },
            );
        }
        for input in ["spiffe://", "spiffe:///path", "spiffe:///"] {
            refuses(
                input,
                TrustDomainError::MissingName {
                    input: input.to_owned(),
                },
            );
        }
        for input in [
            "spiffe://trustdomain/",
            "spiffe://trustdomain/path/",
            "spiffe://trustdomain/%F0%9F%A4%AF",
        ] {
            refuses(input, extra(input, UriPart::Path));
        }
        // Percent-encoded names (SPIFFE-ID 2.1: no percent-encoded characters).
        refuses("%62%61%64", bad_char("%62%61%64", '%'));
        refuses("spiffe://%62%61%64", bad_char("spiffe://%62%61%64", '%'));
        refuses(
            "spiffe://%F0%9F%A4%AF",
            bad_char("spiffe://%F0%9F%A4%AF", '%'),
        );
        // No ":/" in it, so it is read as a bare name, as go-spiffe does.
        refuses("spiffe:trustdomain", bad_char("spiffe:trustdomain", ':'));
    }

    /// Deliberate difference from go-spiffe (see the module comment): go-spiffe's
    /// `TrustDomainFromString("spiffe://trustdomain/path")` returns `trustdomain`; here an
    /// ID with a path is refused, since a trust domain was asked for.
    #[test]
    fn an_id_with_a_path_is_refused_unlike_go_spiffe() {
        for input in ["spiffe://trustdomain/path", "spiffe://trustdomain/a/b"] {
            refuses(input, extra(input, UriPart::Path));
        }
    }

    /// SPIFFE-ID 2.1: user info and port must be empty; IPv6 literals are excluded (their
    /// characters are not allowed) while IPv4 dotted quads are ordinary names. SPIFFE-ID 2:
    /// no query or fragment.
    #[test]
    fn authority_query_and_fragment_vectors() {
        for (input, part) in [
            ("spiffe://trustdomain:443", UriPart::Port),
            ("spiffe://trustdomain:", UriPart::Port),
            ("spiffe://[::1]:443", UriPart::Port),
            ("spiffe://trustdomain:443/path", UriPart::Port),
            ("spiffe://user@trustdomain", UriPart::UserInfo),
            ("spiffe://user:pw@trustdomain", UriPart::UserInfo),
            ("spiffe://@trustdomain", UriPart::UserInfo),
            ("spiffe://trustdomain?", UriPart::Query),
            ("spiffe://trustdomain?q=1", UriPart::Query),
            ("spiffe://trustdomain#", UriPart::Fragment),
            ("spiffe://trustdomain#f", UriPart::Fragment),
        ] {
            refuses(input, extra(input, part));
        }
        // A ':' not followed by digits is no port, just a character not allowed.
        refuses("spiffe://[::1]", bad_char("spiffe://[::1]", '['));
        refuses("spiffe://a:b", bad_char("spiffe://a:b", ':'));
        refuses("spiffe://a:443x", bad_char("spiffe://a:443x", ':'));
        // Without `spiffe://` there is no URI to take apart: the first bad character counts.
        refuses("trustdomain:443", bad_char("trustdomain:443", ':'));
        refuses("user@trustdomain", bad_char("user@trustdomain", '@'));
        refuses("[::1]", bad_char("[::1]", '['));
        refuses("trustdomain?q", bad_char("trustdomain?q", '?'));
        refuses("trustdomain#f", bad_char("trustdomain#f", '#'));
        for name in ["192.168.0.1", "10.0.0.1", "127.0.0.1"] {
            accepts(name, name);
            accepts(&format!("spiffe://{name}"), name);
        }
    }

    /// SPIFFE-ID 2.1: the name must be lowercase; it is not folded.
    #[test]
    fn uppercase_vectors() {
        for (input, c) in [
            ("TRUSTDOMAIN", 'T'),
            ("trustDomain", 'D'),
            ("spiffe://Trustdomain", 'T'),
            ("spiffe://trustdomaiN", 'N'),
        ] {
            refuses(input, bad_char(input, c));
        }
    }

    /// SPIFFE-ID 2.3: a trust domain name is at most 255 bytes, mixed characters included.
    #[test]
    fn length_limit_vectors() {
        let name = "a.b-c_9".repeat(36) + "xyz";
        assert_eq!(name.len(), 255);
        accepts(&name, &name);
        accepts(&format!("spiffe://{name}"), &name);
        let long = format!("{name}q");
        refuses(&long, TrustDomainError::TooLong { len: 256 });
        refuses(
            &format!("spiffe://{long}"),
            TrustDomainError::TooLong { len: 256 },
        );
    }
}
