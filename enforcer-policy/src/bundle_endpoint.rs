//! A domain's SPIFFE bundle endpoint (SPIFFE Federation 5.2): where the daemon fetches the
//! domain's bundle from, and how it authenticates the server it fetches from.

use serde::Serialize;

use crate::spiffe_id::SpiffeId;

/// URLs longer than this are not an endpoint anyone configured on purpose.
const MAX_URL: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleEndpoint {
    /// An `https://` URL, checked by [`parse_url`].
    pub url: String,
    #[serde(flatten)]
    pub profile: Profile,
    /// Where the policy names the endpoint, so that a problem found when the daemon first
    /// uses it can be reported at that spot.
    #[serde(skip)]
    pub line: usize,
    #[serde(skip)]
    pub column: usize,
}

/// How the endpoint server is authenticated (SPIFFE Federation 5.2.1 and 5.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "profile", rename_all = "snake_case")]
pub enum Profile {
    /// The server presents a certificate for the URL's host that chains to a Web PKI root.
    HttpsWeb,
    /// The server presents an X.509-SVID with `endpoint_id`, verified against the domain's
    /// bundle in force (bootstrapped from the domain's `bundle` file).
    HttpsSpiffe { endpoint_id: SpiffeId },
}

impl Profile {
    pub fn name(&self) -> &'static str {
        match self {
            Profile::HttpsWeb => "https_web",
            Profile::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// What the daemon needs of a URL before it dials it: `https`, a host, an optional numeric
/// port, and nothing a fetch would have to guess about (user info, a fragment, spaces).
pub fn parse_url(text: &str) -> Result<String, String> {
    let shown = text.escape_debug();
    if text.len() > MAX_URL {
        return Err(format!(
            "the bundle endpoint URL is {} bytes long; the limit is {MAX_URL}",
            text.len()
        ));
    }
    let Some(rest) = text.strip_prefix("https://") else {
        return Err(format!(
            "bundle endpoint URL `{shown}` must start with https:// (SPIFFE Federation \
             serves bundles over TLS only)"
        ));
    };
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "bundle endpoint URL `{shown}` has the character {c:?}; write it percent-encoded"
        ));
    }
    if text.contains('#') {
        return Err(format!(
            "bundle endpoint URL `{shown}` has a fragment (#), which a fetch never sends"
        ));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "bundle endpoint URL `{shown}` has user info (@); credentials do not belong in a policy"
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| {
                format!("bundle endpoint URL `{shown}` has an IPv6 address without its `]`")
            })?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("bundle endpoint URL `{shown}` has no host"));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!(
            "bundle endpoint URL `{shown}` has port `{port}`; a port is 1-65535"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "https://bundles.example.org/prod",
            "https://127.0.0.1:8443",
            "https://[::1]:8443/b?x=1",
        ] {
            assert_eq!(parse_url(good).as_deref(), Ok(good));
        }
        for (bad, why) in [
            ("http://example.org/b", "must start with https://"),
            ("HTTPS://example.org/b", "must start with https://"),
            ("https:///b", "has no host"),
            ("https://:443/b", "has no host"),
            ("https://u:p@example.org/b", "user info"),
            ("https://example.org:0/b", "port `0`"),
            ("https://example.org:99999/b", "port `99999`"),
            ("https://example.org:x/b", "port `x`"),
            ("https://example.org/a b", "character ' '"),
            ("https://example.org/a#x", "fragment"),
            ("https://[::1/b", "without its `]`"),
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
