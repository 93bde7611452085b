//! Where a flow starts: the cgroup its socket is created in, that cgroup's domain found the
//! way `sock_create` finds it (the eBPF crate's `identity::current_domain`), and the network
//! namespace its destination is looked up in.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use enforcer_common::maps::MAX_CGROUP_DEPTH;
use enforcer_policy::CgroupPath;

use super::{Live, WhySource};
use crate::kernel::{addresses, backfill, cgroupfs::CgroupFs, sockdiag::SockDiag};

pub struct Origin {
    pub cgroup: CgroupPath,
    pub pid: Option<u32>,
    pub namespace: Namespace,
}

/// The network namespace the source's `connect()` runs in: the programs look local sockets
/// up there (`BPF_F_CURRENT_NETNS`) and compare address owners with its cookie.
pub struct Namespace {
    pub cookie: u64,
    /// A sock_diag socket opened in it.
    pub diag: SockDiag,
}

pub fn locate(live: &Live<'_>, from: &WhySource) -> Result<Origin> {
    match from {
        WhySource::Cgroup(text) => Ok(Origin {
            cgroup: cgroup_path(live.cgroups, text)?,
            pid: None,
            // The daemon's own threads stay in the host's namespace; only short-lived helper
            // threads ever enter another.
            namespace: Namespace {
                cookie: live.addresses.host_netns(),
                diag: SockDiag::open()?,
            },
        }),
        WhySource::Pid(pid) => {
            let id = i32::try_from(*pid)
                .ok()
                .filter(|&id| id > 0 && Path::new(&format!("/proc/{id}")).exists())
                .ok_or_else(|| anyhow!("no process has pid {pid}"))?;
            let cgroup = backfill::cgroup_of(id).ok_or_else(|| {
                anyhow!("process {pid} has no cgroup v2 path in /proc/{pid}/cgroup")
            })?;
            let (cookie, diag) =
                addresses::in_namespace_of(id, |cookie| Ok((cookie, SockDiag::open()?)))
                    .with_context(|| format!("entering the network namespace of process {pid}"))?;
            Ok(Origin {
                cgroup,
                pid: Some(*pid),
                namespace: Namespace { cookie, diag },
            })
        }
    }
}

/// A cgroup named on the command line, in any of the forms the daemon takes elsewhere: a
/// path as in /proc/PID/cgroup (`/workloads/prod`, also with its `0::` prefix) or the
/// cgroup's directory inside the cgroup2 mount. It must exist.
fn cgroup_path(cgroups: &CgroupFs, text: &str) -> Result<CgroupPath> {
    let unprefixed = text.strip_prefix("0::").unwrap_or(text);
    let relative = match Path::new(unprefixed).strip_prefix(cgroups.mount()) {
        Ok(rest) => format!("/{}", rest.display()),
        Err(_) => unprefixed.to_owned(),
    };
    let path: CgroupPath = relative
        .parse()
        .map_err(|err| anyhow!("--from-cgroup {text}: {err}"))?;
    if cgroups.id(&path).is_none() {
        bail!(
            "no cgroup {path}: {} is not a cgroup v2 directory",
            cgroups.dir(path.as_str()).display()
        );
    }
    Ok(path)
}

/// One level of the walk from the root cgroup down to the source's.
pub struct Level {
    pub level: u32,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The domain ENF_BINDINGS binds this cgroup to in the active slot.
    pub domain: Option<u32>,
}

/// The cgroup's ancestors from the root (level 0) down to itself, each with its binding, as
/// `identity::current_domain` walks them with `bpf_get_current_ancestor_cgroup_id`: cgroup
/// ids are the inode numbers of the cgroup directories, and no more than
/// `MAX_CGROUP_DEPTH` levels are looked at (the daemon binds nothing deeper).
pub fn walk(live: &Live<'_>, slot: u32, cgroup: &CgroupPath) -> Result<Vec<Level>> {
    ancestors(cgroup.as_str())
        .into_iter()
        .take(MAX_CGROUP_DEPTH as usize)
        .zip(0..)
        .map(|(path, level)| {
            let parsed: CgroupPath = path
                .parse()
                .map_err(|err| anyhow!("ancestor {path} of {cgroup}: {err}"))?;
            let cgroup_id = live
                .cgroups
                .id(&parsed)
                .with_context(|| format!("cgroup {path} vanished while it was looked at"))?;
            Ok(Level {
                level,
                domain: live.maps.binding(slot, cgroup_id)?,
                cgroup: path,
                cgroup_id,
            })
        })
        .collect()
}

/// `/`, `/a`, `/a/b` for `/a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let mut all = vec!["/".to_owned()];
    let mut prefix = String::new();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(component);
        all.push(prefix.clone());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_run_from_the_root_down() {
        assert_eq!(ancestors("/"), ["/"]);
        assert_eq!(ancestors("/a/b c/d"), ["/", "/a", "/a/b c", "/a/b c/d"]);
    }
}
