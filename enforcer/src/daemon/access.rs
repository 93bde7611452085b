//! Who may use the control socket. The kernel tells the daemon who is on the other end of
//! each connection (`SO_PEERCRED`, `SO_PEERGROUPS`), so nothing a client says about itself is
//! trusted. Root may do everything; members of `--admin-group` may too; members of
//! `--read-group` may only read (status, edges, events, why, plan, the last naming no bundle
//! file but those in force); everyone else is refused.
//! Without either group the socket is also mode 0600, so only root can even connect.

use std::{collections::BTreeSet, io, os::unix::net::UnixStream, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::Policy;
use nix::{
    sys::socket::{getsockopt, sockopt::PeerCredentials},
    unistd::{Gid, Group},
};

use crate::api::control::Request;

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups as of its `connect()`.
const SO_PEERGROUPS: libc::c_int = 59;
/// More supplementary groups than a process can have (`NGROUPS_MAX` is 65536) is not
/// needed: a peer with more than this many is judged by the ones that fit.
const MAX_PEER_GROUPS: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Groups {
    pub admin: Option<u32>,
    pub read: Option<u32>,
}

/// A client as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

impl Groups {
    /// Resolves `--admin-group` and `--read-group` (a name or a numeric gid).
    pub fn resolve(admin: Option<&str>, read: Option<&str>) -> Result<Self> {
        Ok(Self {
            admin: admin.map(|g| gid(g, "--admin-group")).transpose()?,
            read: read.map(|g| gid(g, "--read-group")).transpose()?,
        })
    }

    /// Whether anyone but root may connect.
    pub fn any(&self) -> bool {
        self.admin.is_some() || self.read.is_some()
    }

    /// What `peer` may do at all; `None` for a peer refused before its request is read.
    pub fn rights(&self, peer: &Peer) -> Option<Rights> {
        let member = |gid: Option<u32>| gid.is_some_and(|g| peer.groups.contains(&g));
        if peer.uid == 0 || member(self.admin) {
            Some(Rights::Full)
        } else if member(self.read) {
            Some(Rights::Read)
        } else {
            None
        }
    }

    /// `Ok` if `peer` may make `request`, else the message to answer with.
    pub fn check(&self, peer: &Peer, request: &Request) -> Result<(), String> {
        match self.rights(peer) {
            Some(Rights::Full) => Ok(()),
            Some(Rights::Read) if !request.changes() => Ok(()),
            rights => Err(self.refusal(peer, rights)),
        }
    }

    /// Why `peer`, with `rights`, is refused: a reader asked for a change, anyone else for
    /// anything.
    pub fn refusal(&self, peer: &Peer, rights: Option<Rights>) -> String {
        let who = format!("uid {} (pid {})", peer.uid, peer.pid);
        let allowed = match (self.admin, self.read) {
            (Some(a), Some(r)) => {
                format!("root and group {a} may change anything; group {r} may read")
            }
            (Some(a), None) => format!("root and group {a} may use it"),
            (None, Some(r)) => format!("root may change anything; group {r} may read"),
            (None, None) => "only root may use it".to_owned(),
        };
        if rights.is_some() {
            format!("permission denied: {who} may only read from this daemon ({allowed})")
        } else {
            format!("permission denied: {who} may not use this daemon's control socket ({allowed})")
        }
    }
}

/// What a client may do, which also sets how much of the daemon it may hold (see
/// `admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rights {
    /// Members of `--read-group`: status, edges, events, why, plan.
    Read,
    /// Root, members of `--admin-group`, and remote admins.
    Full,
}

impl Rights {
    /// The longest request this client may send. A reader's requests are short except
    /// `plan`, which carries a policy file: 1 MiB holds a policy of several thousand edges,
    /// and the 32 readers `admission` lets in at once then buffer at most 32 MiB in all.
    /// Root and admins, who may replace the policy anyway, may send the largest policy.
    pub fn max_request(self) -> usize {
        match self {
            Self::Read => 1 << 20,
            Self::Full => 64 << 20,
        }
    }
}

/// Whether a reader's `plan` of `policy` (from `file`) may make the daemon read the bundle
/// files it names; if not, an error at each `bundle:` line it may not have read. The daemon
/// reads bundle files as root, so a path of the reader's choosing would let it learn what it
/// may not read itself (whether a file exists, whether it holds certificates, which) and
/// point the daemon at whatever it likes. The files the policy in force names (`in_force`) are
/// the administrators' choice and read by the daemon anyway, their state shown by `status`:
/// a reader may plan with those.
pub fn reader_may_read_bundles(
    file: &str,
    policy: &Policy,
    in_force: &BTreeSet<PathBuf>,
) -> Result<(), Vec<String>> {
    let refused: Vec<String> = policy
        .domains
        .iter()
        .filter_map(|d| Some((d, d.bundle.as_ref()?)))
        .filter(|(_, bundle)| !in_force.contains(&bundle.path))
        .map(|(d, bundle)| {
            format!(
                "{file}:{}:{}: trust bundle of {}: {}: the policy in force names no such bundle \
                 file, and a member of the read group may plan only with those (the daemon reads \
                 bundle files as root); run `policy plan` as root or a member of the admin \
                 group, or check the file on this host with `enforcer policy check`",
                bundle.line,
                bundle.column,
                d.name,
                bundle.path.display()
            )
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

fn gid(name: &str, flag: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(name).with_context(|| format!("looking up {flag} {name}"))? {
        Some(group) => Ok(group.gid.as_raw()),
        None => bail!("{flag} {name}: no such group"),
    }
}

/// Who is connected on `stream`.
pub fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let creds = getsockopt(stream, PeerCredentials)?;
    let mut groups = vec![0 as libc::gid_t; MAX_PEER_GROUPS];
    let mut len = libc::socklen_t::try_from(size_of::<libc::gid_t>() * groups.len())
        .unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the buffer holds `len` bytes of gid_t; the kernel writes at most that and
    // sets `len` to what it wrote.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        let err = io::Error::last_os_error();
        // ERANGE: more groups than the buffer holds; the primary group still counts.
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        len = 0;
    }
    groups.truncate(len as usize / size_of::<libc::gid_t>());
    groups.push(Gid::from_raw(creds.gid()).as_raw());
    Ok(Peer {
        uid: creds.uid(),
        pid: creds.pid(),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            pid: 42,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_admins_do_anything_readers_only_read_others_nothing() {
        let groups = Groups {
            admin: Some(100),
            read: Some(200),
        };
        let apply = Request::Revoke { id: "x".into() };
        let status = Request::Status;
        assert_eq!(groups.check(&peer(0, &[0]), &apply), Ok(()));
        assert_eq!(groups.check(&peer(1000, &[5, 100]), &apply), Ok(()));
        assert_eq!(groups.check(&peer(1000, &[200]), &status), Ok(()));
        let refused = groups.check(&peer(1000, &[200]), &apply).unwrap_err();
        assert!(
            refused.contains("uid 1000 (pid 42) may only read"),
            "{refused}"
        );
        let refused = groups.check(&peer(1000, &[300]), &status).unwrap_err();
        assert!(refused.contains("may not use"), "{refused}");
        let refused = Groups::default()
            .check(&peer(1000, &[100]), &status)
            .unwrap_err();
        assert!(refused.contains("only root may use it"), "{refused}");
    }

    #[test]
    fn a_readers_plan_may_name_only_the_bundle_files_in_force() {
        let policy = enforcer_policy::parse(
            "p.yaml",
            "version: 1\ndomains:\n  - {name: a.org, bundle: /b/a.pem}\n  - {name: b.org, bundle: /etc/shadow}\n  - {name: c.org}\n",
        )
        .expect("valid");
        let in_force: BTreeSet<PathBuf> = [PathBuf::from("/b/a.pem")].into();
        let refused = reader_may_read_bundles("p.yaml", &policy, &in_force).expect_err("refused");
        let [only] = &refused[..] else {
            panic!("one refusal, for b.org: {refused:?}");
        };
        assert!(
            only.starts_with("p.yaml:4:27: trust bundle of b.org: /etc/shadow: the policy in force names no such bundle file"),
            "{only}"
        );
        let all: BTreeSet<PathBuf> = ["/b/a.pem", "/etc/shadow"].map(PathBuf::from).into();
        assert_eq!(reader_may_read_bundles("p.yaml", &policy, &all), Ok(()));
    }

    #[test]
    fn rights_set_the_request_limit_and_strangers_have_none() {
        let groups = Groups {
            admin: Some(100),
            read: Some(200),
        };
        let rights = |uid, gids: &[u32]| groups.rights(&peer(uid, gids));
        assert_eq!(rights(0, &[0]), Some(Rights::Full));
        assert_eq!(rights(1000, &[100, 200]), Some(Rights::Full));
        assert_eq!(rights(1000, &[200]), Some(Rights::Read));
        assert_eq!(rights(1000, &[300]), None);
        assert_eq!(Rights::Read.max_request(), 1 << 20);
        assert_eq!(Rights::Full.max_request(), 64 << 20);
    }

    #[test]
    fn groups_resolve_by_name_or_number_and_unknown_names_are_errors() {
        assert_eq!(
            Groups::resolve(Some("0"), None).unwrap(),
            Groups {
                admin: Some(0),
                read: None
            }
        );
        assert_eq!(Groups::resolve(None, Some("root")).unwrap().read, Some(0));
        let err = Groups::resolve(Some("no-such-group-enforcer"), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("--admin-group no-such-group-enforcer: no such group"),
            "{err:#}"
        );
    }
}
