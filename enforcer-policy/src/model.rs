//! The policy as the daemon consumes it. A `Policy` returned by `parse`
//! has passed every check in `parse` and `validate`; the newtypes
//! `CgroupPath` and `TrustDomain` cannot hold an invalid value however they
//! are built.

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ports::PortRange;

use crate::bundle_endpoint::BundleEndpoint;
use crate::time::serialize_secs;
use crate::trust_domain::TrustDomain;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub defaults: Defaults,
    pub domains: Vec<Domain>,
    /// Shared, so that the daemon's record of live edges and every copy of a policy it keeps
    /// hold the same edges: 100,000 of them are not cloned string by string on every apply.
    pub federation: Vec<Arc<Edge>>,
}

/// What to do with flows the trust-domain rules do not decide, and the
/// settings domains and grants fall back on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Flows where one side carries no trust-domain label.
    pub unlabeled: Action,
    /// Labeled workloads talking to destinations outside every domain.
    pub external: Action,
    /// For domains that do not set their own.
    pub mode: Mode,
    /// The longest a grant made from the command line may last, so a
    /// forgotten grant cannot become a permanent edge.
    #[serde(rename = "max_grant_ttl_secs", serialize_with = "serialize_secs")]
    pub max_grant_ttl: Duration,
    /// For edges that do not set `require_bundles` themselves (grants included).
    #[serde(skip_serializing_if = "is_false")]
    pub require_bundles: bool,
}

impl Defaults {
    /// `max_grant_ttl` when the policy does not set it.
    pub const DEFAULT_MAX_GRANT_TTL: Duration = Duration::from_secs(12 * 60 * 60);
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            unlabeled: Action::default(),
            external: Action::default(),
            mode: Mode::default(),
            max_grant_ttl: Self::DEFAULT_MAX_GRANT_TTL,
            require_bundles: false,
        }
    }
}

/// Allow is the default so that adopting the enforcer does not cut off
/// traffic nobody has described yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// Whether denials are carried out or only reported. Audit lets a policy
/// be rolled out and watched before it can break anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    pub name: TrustDomain,
    /// `None` follows `defaults.mode`.
    pub mode: Option<Mode>,
    /// Workloads in these cgroups carry this domain's label.
    pub cgroups: Vec<CgroupPath>,
    /// Remote addresses that belong to this domain.
    pub endpoints: Vec<IpNet>,
    /// The domain's SPIFFE trust bundle: the CA certificates its SVIDs chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleFile>,
    /// Where the domain's bundle is fetched from; `bundle` is then the bootstrap, in force
    /// until the first fetch succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// Where the bundle comes from when it is not a file (`bundle_from:`); never with `bundle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_from: Option<BundleFrom>,
    /// Cgroups join this domain only by proving, over the attestation socket, that a process
    /// in them holds an X.509-SVID of it; `cgroups` is then empty.
    #[serde(skip_serializing_if = "is_false")]
    pub attested: bool,
}

/// Where a domain's trust bundle is read from, and where the policy names it so a bad bundle
/// can be reported at that spot. Serialized as the path alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "std::path::PathBuf")]
pub struct BundleFile {
    /// Absolute: the daemon reads it, not the client that applied the policy.
    pub path: std::path::PathBuf,
    pub line: usize,
    pub column: usize,
}

impl From<BundleFile> for std::path::PathBuf {
    fn from(bundle: BundleFile) -> Self {
        bundle.path
    }
}

/// A bundle that a service delivers rather than a file holds, with where the policy says so.
/// Serialized as the source's keyword alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "BundleSource")]
pub struct BundleFrom {
    pub source: BundleSource,
    pub line: usize,
    pub column: usize,
}

/// The services a domain's bundle can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleSource {
    /// The SPIFFE Workload API of the local agent: the domain's bundle is the one the agent
    /// delivers for it, its own or federated.
    WorkloadApi,
}

impl From<BundleFrom> for BundleSource {
    fn from(from: BundleFrom) -> Self {
        from.source
    }
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(value: &bool) -> bool {
    !value
}

/// An allowed cross-domain flow: `from` may open connections to (or send
/// datagrams to) `to` on `ports`.
///
/// An edge is active from `not_before` (if given) until its `end` (if
/// given). An end already in the past is not an error: a policy that was
/// valid yesterday still loads today, and the daemon reports the edge as
/// expired.
///
/// The same type carries an edge everywhere: in a policy, in a grant request, in the daemon's
/// saved grants, and in what `status`, `edge list` and `policy plan` show. Sent or saved, it is
/// the flat record those show (`id`, `from`, `to`, `protocol`, `ports` as written in a policy,
/// `owner`, `reason`, `not_before`), read back with a policy's checks. Its `end` is not in it:
/// each record says when its edge ends in its own terms (a grant's deadline, a view's resolved
/// `expires`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Edge {
    /// Written in the policy, or derived from what the edge allows.
    pub id: EdgeId,
    pub from: TrustDomain,
    pub to: TrustDomain,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    /// Shared with every edge of the policy that has the same owner.
    #[serde(deserialize_with = "free_text_shared")]
    pub owner: Arc<str>,
    /// Shared with every edge of the policy that has the same reason.
    #[serde(deserialize_with = "free_text_shared")]
    pub reason: Arc<str>,
    pub not_before: Option<jiff::Timestamp>,
    #[serde(skip)]
    pub end: Option<EdgeEnd>,
    /// Allow traffic only while both ends hold a valid, unexpired trust bundle.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_bundles: bool,
}

impl Edge {
    /// Its ports as a policy writes them, comma separated: `5432,8000-8099`.
    pub fn ports_text(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
        ports.join(",")
    }
}

/// An owner or a reason read back, checked as in a policy (for `#[serde(deserialize_with)]`).
pub fn free_text_shared<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Arc<str>, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
    crate::free_text(&text)
        .map(Arc::from)
        .map_err(|err| serde::de::Error::custom(format_args!("{text:?} {err}")))
}

/// When an edge stops allowing traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EdgeEnd {
    /// At a fixed instant (`expires`).
    #[serde(rename = "expires")]
    At(jiff::Timestamp),
    /// This long after the daemon puts the edge in force (`ttl`).
    #[serde(rename = "ttl_secs", serialize_with = "serialize_secs")]
    Ttl(Duration),
}

const EDGE_ID_MAX_LEN: usize = 63;

/// Hex digits of SHA-256 kept in generated ids: 48 bits make an accidental
/// clash among the edges of one host practically impossible while the id
/// stays short enough to type.
const HASH_HEX_DIGITS: usize = 12;

/// The name of an edge in status, events and `grant`/`revoke`: 1 to 63
/// lowercase letters, digits, `-`, `.` and `_`, starting with a letter or
/// digit. Shared, not copied: the daemon keys its records of 100,000 edges by
/// their ids on every apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EdgeId(Arc<str>);

impl EdgeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of an edge written without one: `edge-` and a hash of what the
    /// edge allows. Owner, reason and times are left out so that editing
    /// them keeps the id, and ports are taken as a set so that reordering or
    /// splitting ranges does too.
    pub fn derived(
        from: &TrustDomain,
        to: &TrustDomain,
        protocol: Protocol,
        ports: &[PortRange],
    ) -> EdgeId {
        // Written straight into one string: a policy derives an id for each of up to
        // 100,000 edges, and one range, the usual case, is already a set.
        let merged;
        let set = match ports {
            [_] => ports,
            _ => {
                merged = port_set(ports);
                &merged
            }
        };
        let mut canonical = format!("v1|{from}|{to}|{protocol}|");
        for (index, range) in set.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            // Writing to a String cannot fail.
            let _ = write!(canonical, "{separator}{}-{}", range.first, range.last);
        }
        EdgeId(short_hash("edge-", &canonical).into())
    }

    /// The id of an edge granted from the command line: `grant-` and a hash
    /// of `seed`, which the daemon makes unique per grant.
    pub fn grant(seed: &str) -> EdgeId {
        EdgeId(short_hash("grant-", seed).into())
    }
}

/// The ports `ports` cover, as the fewest ranges: sorted, with overlapping and adjacent
/// ranges merged. Two lists that cover the same ports give the same set.
pub fn port_set(ports: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<PortRange> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(range.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// `prefix` followed by the first hex digits of the SHA-256 of `text`.
fn short_hash(prefix: &str, text: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + HASH_HEX_DIGITS);
    id.push_str(prefix);
    id.extend(
        Sha256::digest(text.as_bytes())
            .iter()
            .flat_map(|byte| [byte >> 4, byte & 0xf])
            .take(HASH_HEX_DIGITS)
            .filter_map(|nibble| char::from_digit(u32::from(nibble), 16)),
    );
    id
}

/// Read back from the daemon's own records, checked as in a policy.
impl<'de> serde::Deserialize<'de> for EdgeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not an edge id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeIdError {
    #[error("edge id is empty")]
    Empty,
    #[error("edge id is {len} characters long; the limit is {EDGE_ID_MAX_LEN}")]
    TooLong { len: usize },
    #[error(
        "edge id `{}` contains the character {character:?}; only lowercase letters a-z, digits 0-9, '-', '.' and '_' are allowed",
        .id.escape_debug()
    )]
    InvalidCharacter { id: String, character: char },
    #[error("edge id `{}` must start with a letter or digit", .id.escape_debug())]
    InvalidStart { id: String },
}

impl FromStr for EdgeId {
    type Err = EdgeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let len = id.chars().count();
        if len == 0 {
            return Err(EdgeIdError::Empty);
        }
        if len > EDGE_ID_MAX_LEN {
            return Err(EdgeIdError::TooLong { len });
        }
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_');
        if let Some(character) = id.chars().find(|&c| !allowed(c)) {
            return Err(EdgeIdError::InvalidCharacter {
                id: id.to_owned(),
                character,
            });
        }
        if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(EdgeIdError::InvalidStart { id: id.to_owned() });
        }
        Ok(EdgeId(id.into()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Any => "any",
        })
    }
}

/// Why a string is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a protocol; expected tcp, udp or any", .0.escape_debug())]
pub struct ProtocolError(String);

impl FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "any" => Ok(Protocol::Any),
            _ => Err(ProtocolError(text.to_owned())),
        }
    }
}

/// Linux PATH_MAX; the kernel cannot hand out a longer cgroup path.
const CGROUP_PATH_MAX: usize = 4096;

/// A cgroup v2 path relative to the cgroup2 mount root, in the form
/// `/proc/PID/cgroup` shows after `0::`, e.g. `/workloads/prod`.
///
/// Paths are kept in the one canonical spelling the kernel prints, so that
/// comparing strings compares cgroups.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CgroupPath(String);

impl CgroupPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a cgroup path as the kernel writes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupPathError {
    #[error("cgroup path is empty; write `/` for the root cgroup")]
    Empty,
    #[error("cgroup path is {len} bytes long; the limit is {CGROUP_PATH_MAX} bytes")]
    TooLong { len: usize },
    #[error("cgroup path `{}` contains a {what}", .path.escape_debug())]
    ForbiddenCharacter { path: String, what: &'static str },
    #[error(
        "cgroup path `{}` contains U+{code:04X}, a control or invisible formatting character, \
         which would not show as itself; write cgroup paths in printable characters",
        .path.escape_debug()
    )]
    Unprintable { path: String, code: u32 },
    #[error(
        "cgroup path `{}` must start with `/`: paths are relative to the cgroup2 mount root, as in /proc/PID/cgroup{}",
        .path.escape_debug(),
        if .path.starts_with("0::") { " (leave out the `0::` prefix)" } else { "" }
    )]
    NotAbsolute { path: String },
    #[error("cgroup path `{}` has a trailing slash; write `{}`", .path.escape_debug(), .path.trim_end_matches('/').escape_debug())]
    TrailingSlash { path: String },
    #[error("cgroup path `{}` has an empty component (`//`)", .path.escape_debug())]
    EmptyComponent { path: String },
    #[error("cgroup path `{}` has a `{component}` component; cgroup paths are written without `.` or `..`", .path.escape_debug())]
    DotComponent {
        path: String,
        component: &'static str,
    },
}

impl FromStr for CgroupPath {
    type Err = CgroupPathError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        let owned = || path.to_owned();
        if path.is_empty() {
            return Err(CgroupPathError::Empty);
        }
        if path.len() > CGROUP_PATH_MAX {
            return Err(CgroupPathError::TooLong { len: path.len() });
        }
        for (c, what) in [('\0', "NUL byte"), ('\n', "newline")] {
            if path.contains(c) {
                return Err(CgroupPathError::ForbiddenCharacter {
                    path: owned(),
                    what,
                });
            }
        }
        if let Some(c) = path.chars().find(|&c| crate::free_text::unprintable(c)) {
            return Err(CgroupPathError::Unprintable {
                path: owned(),
                code: u32::from(c),
            });
        }
        let Some(relative) = path.strip_prefix('/') else {
            return Err(CgroupPathError::NotAbsolute { path: owned() });
        };
        if relative.is_empty() {
            return Ok(CgroupPath(owned()));
        }
        // The trailing-slash hint offers the path without its slashes, so that path's own
        // components are checked first: the hint must never suggest a path that is refused.
        let trimmed = relative.trim_end_matches('/');
        let components = if trimmed.is_empty() {
            relative
        } else {
            trimmed
        };
        for component in components.split('/') {
            match component {
                "" => return Err(CgroupPathError::EmptyComponent { path: owned() }),
                "." => {
                    return Err(CgroupPathError::DotComponent {
                        path: owned(),
                        component: ".",
                    });
                }
                ".." => {
                    return Err(CgroupPathError::DotComponent {
                        path: owned(),
                        component: "..",
                    });
                }
                _ => {}
            }
        }
        if components.len() < relative.len() {
            return Err(CgroupPathError::TrailingSlash { path: owned() });
        }
        Ok(CgroupPath(owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_cgroup_paths() {
        for path in [
            "/",
            "/workloads",
            "/workloads/prod",
            "/system.slice/nginx.service",
            "/a/.hidden/..x/b",
            "/with space/ü",
        ] {
            let got: CgroupPath = path
                .parse()
                .unwrap_or_else(|e| panic!("{path:?} rejected: {e}"));
            assert_eq!(got.as_str(), path);
            assert_eq!(got.to_string(), path);
        }
        let longest = format!("/{}", "a".repeat(4095));
        assert!(longest.parse::<CgroupPath>().is_ok());
    }

    #[test]
    fn invalid_cgroup_paths() {
        let too_long = format!("/{}", "a".repeat(4096));
        let cases = [
            ("", "cgroup path is empty; write `/` for the root cgroup"),
            (
                too_long.as_str(),
                "cgroup path is 4097 bytes long; the limit is 4096 bytes",
            ),
            (
                "workloads/prod",
                "cgroup path `workloads/prod` must start with `/`: paths are relative to the cgroup2 mount root, as in /proc/PID/cgroup",
            ),
            (
                "0::/workloads",
                "cgroup path `0::/workloads` must start with `/`: paths are relative to the cgroup2 mount root, as in /proc/PID/cgroup (leave out the `0::` prefix)",
            ),
            (
                "/workloads/",
                "cgroup path `/workloads/` has a trailing slash; write `/workloads`",
            ),
            (
                "/workloads//",
                "cgroup path `/workloads//` has a trailing slash; write `/workloads`",
            ),
            ("//", "cgroup path `//` has an empty component (`//`)"),
            ("/a//b", "cgroup path `/a//b` has an empty component (`//`)"),
            (
                "/a/./b",
                "cgroup path `/a/./b` has a `.` component; cgroup paths are written without `.` or `..`",
            ),
            (
                "/a/..",
                "cgroup path `/a/..` has a `..` component; cgroup paths are written without `.` or `..`",
            ),
            (
                "/a/../",
                "cgroup path `/a/../` has a `..` component; cgroup paths are written without `.` or `..`",
            ),
            (
                "/a//b/",
                "cgroup path `/a//b/` has an empty component (`//`)",
            ),
            ("/a\0b", "cgroup path `/a\\0b` contains a NUL byte"),
            ("/a\nb", "cgroup path `/a\\nb` contains a newline"),
            (
                "/x/a\u{1b}]0;PWN\u{7}\rFAKE",
                "cgroup path `/x/a\\u{1b}]0;PWN\\u{7}\\rFAKE` contains U+001B, a control or invisible formatting character, which would not show as itself; write cgroup paths in printable characters",
            ),
            (
                "/x/\u{202e}gpj",
                "cgroup path `/x/\\u{202e}gpj` contains U+202E, a control or invisible formatting character, which would not show as itself; write cgroup paths in printable characters",
            ),
        ];
        for (path, want) in cases {
            match path.parse::<CgroupPath>() {
                Ok(p) => panic!("{path:?} accepted as {p}"),
                Err(e) => assert_eq!(e.to_string(), want, "{path:?}"),
            }
        }
    }

    #[test]
    fn enums_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&Action::Deny).ok().as_deref(),
            Some(r#""deny""#)
        );
        assert_eq!(
            serde_json::to_string(&Protocol::Udp).ok().as_deref(),
            Some(r#""udp""#)
        );
        assert_eq!(Action::Allow.to_string(), "allow");
        assert_eq!(Protocol::Any.to_string(), "any");
    }

    fn ports(list: &[(u16, u16)]) -> Vec<PortRange> {
        list.iter()
            .map(|&(first, last)| PortRange { first, last })
            .collect()
    }

    fn derived(from: &str, to: &str, protocol: Protocol, list: &[(u16, u16)]) -> EdgeId {
        let td = |name: &str| -> TrustDomain { name.parse().expect("valid trust domain") };
        EdgeId::derived(&td(from), &td(to), protocol, &ports(list))
    }

    #[test]
    fn derived_edge_ids_are_stable() {
        // sha256("v1|staging.example.org|prod.example.org|tcp|5432-5432,8000-8099");
        // changing this value renames every edge written without an `id`.
        let id = derived(
            "staging.example.org",
            "prod.example.org",
            Protocol::Tcp,
            &[(5432, 5432), (8000, 8099)],
        );
        assert_eq!(id.as_str(), "edge-9e559ce96592");
        assert_eq!(id.to_string(), "edge-9e559ce96592");
        assert_eq!(id.as_str().parse::<EdgeId>().as_ref(), Ok(&id));
    }

    #[test]
    fn derived_edge_ids_depend_on_the_port_set_only() {
        let id = |list: &[(u16, u16)]| derived("a.org", "b.org", Protocol::Tcp, list);
        let want = id(&[(80, 80), (443, 443), (8000, 8099)]);
        for same in [
            &[(8000, 8099), (443, 443), (80, 80)][..],
            &[(443, 443), (80, 80), (8000, 8049), (8050, 8099)],
            &[(80, 80), (80, 80), (443, 443), (8000, 8099), (8010, 8020)],
        ] {
            assert_eq!(id(same), want, "{same:?}");
        }
        assert_ne!(id(&[(80, 80), (8000, 8099)]), want);
        assert_ne!(id(&[(80, 80), (443, 443), (8000, 8100)]), want);
        assert_ne!(
            derived(
                "a.org",
                "b.org",
                Protocol::Udp,
                &[(80, 80), (443, 443), (8000, 8099)]
            ),
            want
        );
        assert_ne!(
            derived(
                "b.org",
                "a.org",
                Protocol::Tcp,
                &[(80, 80), (443, 443), (8000, 8099)]
            ),
            want
        );
        assert_eq!(
            id(&[(1, 65535), (65535, 65535)]),
            id(&[(1, 65534), (65535, 65535)])
        );
    }

    #[test]
    fn grant_ids_hash_the_seed() {
        // sha256("seed-1")
        assert_eq!(EdgeId::grant("seed-1").as_str(), "grant-0eb026731d9e");
        assert_ne!(EdgeId::grant("seed-2"), EdgeId::grant("seed-1"));
    }

    #[test]
    fn valid_edge_ids() {
        let longest = "a".repeat(63);
        for id in [
            "a",
            "0",
            "db-migrations",
            "prod.db_read-2",
            "9lives",
            &longest,
        ] {
            let got: EdgeId = id
                .parse()
                .unwrap_or_else(|e| panic!("{id:?} rejected: {e}"));
            assert_eq!(got.as_str(), id);
        }
    }

    #[test]
    fn invalid_edge_ids() {
        let too_long = "a".repeat(64);
        let cases = [
            ("", "edge id is empty".to_owned()),
            (
                too_long.as_str(),
                "edge id is 64 characters long; the limit is 63".to_owned(),
            ),
            (
                "DB",
                "edge id `DB` contains the character 'D'; only lowercase letters a-z, digits 0-9, '-', '.' and '_' are allowed".to_owned(),
            ),
            (
                "db read",
                "edge id `db read` contains the character ' '; only lowercase letters a-z, digits 0-9, '-', '.' and '_' are allowed".to_owned(),
            ),
            (
                "db\nread",
                "edge id `db\\nread` contains the character '\\n'; only lowercase letters a-z, digits 0-9, '-', '.' and '_' are allowed".to_owned(),
            ),
            (
                "-db",
                "edge id `-db` must start with a letter or digit".to_owned(),
            ),
            (
                ".db",
                "edge id `.db` must start with a letter or digit".to_owned(),
            ),
        ];
        for (id, want) in cases {
            match id.parse::<EdgeId>() {
                Ok(got) => panic!("{id:?} accepted as {got}"),
                Err(e) => assert_eq!(e.to_string(), want, "{id:?}"),
            }
        }
    }

    #[test]
    fn edge_ends_and_modes_serialize_for_status_output() {
        let json = |value: &EdgeEnd| serde_json::to_string(value).ok();
        let at: jiff::Timestamp = "2026-12-01T18:00:00Z".parse().expect("valid");
        assert_eq!(
            json(&EdgeEnd::At(at)).as_deref(),
            Some(r#"{"expires":"2026-12-01T18:00:00Z"}"#)
        );
        assert_eq!(
            json(&EdgeEnd::Ttl(Duration::from_secs(1800))).as_deref(),
            Some(r#"{"ttl_secs":1800}"#)
        );
        assert_eq!(
            json(&EdgeEnd::Ttl(Duration::from_millis(1500))).as_deref(),
            Some(r#"{"ttl_secs":1.5}"#)
        );
        assert_eq!(
            serde_json::to_string(&Mode::Audit).ok().as_deref(),
            Some(r#""audit""#)
        );
        assert_eq!(Mode::Enforce.to_string(), "enforce");
        assert_eq!(Mode::Audit.to_string(), "audit");
        assert_eq!(Mode::default(), Mode::Enforce);
    }
}
