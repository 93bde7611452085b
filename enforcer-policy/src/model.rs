//! The policy as the daemon consumes it. A `Policy` returned by `parse`
//! has passed every check in `parse` and `validate`; the newtypes
//! `CgroupPath` and `TrustDomain` cannot hold an invalid value however they
//! are built.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

use crate::ports::PortRange;
use crate::trust_domain::TrustDomain;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub defaults: Defaults,
    pub domains: Vec<Domain>,
    pub federation: Vec<Edge>,
}

/// What to do with flows the trust-domain rules do not decide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Flows where one side carries no trust-domain label.
    pub unlabeled: Action,
    /// Labeled workloads talking to destinations outside every domain.
    pub external: Action,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    pub name: TrustDomain,
    /// Workloads in these cgroups carry this domain's label.
    pub cgroups: Vec<CgroupPath>,
    /// Remote addresses that belong to this domain.
    pub endpoints: Vec<IpNet>,
}

/// An allowed cross-domain flow: `from` may open connections to (or send
/// datagrams to) `to` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: TrustDomain,
    pub to: TrustDomain,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    pub owner: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
        let Some(relative) = path.strip_prefix('/') else {
            return Err(CgroupPathError::NotAbsolute { path: owned() });
        };
        if relative.is_empty() {
            return Ok(CgroupPath(owned()));
        }
        if relative.ends_with('/') && !relative.trim_end_matches('/').is_empty() {
            return Err(CgroupPathError::TrailingSlash { path: owned() });
        }
        for component in relative.split('/') {
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
            ("/a\0b", "cgroup path `/a\\0b` contains a NUL byte"),
            ("/a\nb", "cgroup path `/a\\nb` contains a newline"),
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
}
