//! The attested bindings the daemon holds, saved in `--state-dir/attested.json` so that a
//! restart keeps every one of them: a binding dropped by a restart would relabel its workload
//! as unlabeled while its SVID is still valid.

use std::{borrow::Cow, str::FromStr};

use anyhow::{Context as _, Result};
use enforcer_policy::{CgroupPath, Policy, TrustDomain};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{kernel::cgroupfs::contains, paths::StateDir};

/// One cgroup bound to a trust domain because a process in it proved it holds an SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attested {
    #[serde(deserialize_with = "parsed")]
    pub cgroup: CgroupPath,
    /// The cgroup's id when it was attested: a cgroup removed and created again under the same
    /// path is another cgroup, and the binding does not carry over to it.
    pub cgroup_id: u64,
    #[serde(deserialize_with = "parsed")]
    pub domain: TrustDomain,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// When the SVID (or the bundle that vouched for it) expires; the binding ends then.
    pub expires: Timestamp,
    pub attested_at: Timestamp,
    /// The process that attested.
    pub pid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    bindings: Vec<Attested>,
}

fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn file(state: &StateDir) -> std::path::PathBuf {
    state.path().join("attested.json")
}

impl Store {
    pub fn load(state: &StateDir) -> Result<Self> {
        let path = file(state);
        match crate::state_files::read_if_present(&path) {
            Ok(Some(text)) => serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a valid record of attested bindings; restore it, or remove it to \
                     drop every attested binding (those workloads must attest again)",
                    path.display()
                )
            }),
            Ok(None) => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record atomically (a new file renamed over the old one).
    pub fn save(&self, state: &StateDir) -> Result<()> {
        crate::state_files::save_json(&file(state), self)
    }

    pub fn bindings(&self) -> &[Attested] {
        &self.bindings
    }

    pub fn get(&self, cgroup: &CgroupPath) -> Option<&Attested> {
        self.bindings.iter().find(|b| &b.cgroup == cgroup)
    }

    /// The record with `binding` in place of any other binding of its cgroup.
    pub fn with(&self, binding: Attested) -> Self {
        let mut bindings: Vec<Attested> = self
            .bindings
            .iter()
            .filter(|b| b.cgroup != binding.cgroup)
            .cloned()
            .collect();
        bindings.push(binding);
        bindings.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        Self { bindings }
    }

    /// The record without the bindings `drop` picks.
    pub fn without(&self, drop: impl Fn(&Attested) -> bool) -> Self {
        Self {
            bindings: self.bindings.iter().filter(|b| !drop(b)).cloned().collect(),
        }
    }

    /// Why `binding` cannot be in force under `policy`, if it cannot: its domain must be
    /// attested there, and no binding of the policy may cover its cgroup (the policy's word on
    /// a subtree is final; an SVID does not move a workload out of it).
    pub fn conflict(policy: &Policy, binding: &Attested) -> Option<String> {
        if !policy
            .domains
            .iter()
            .any(|d| d.attested && d.name == binding.domain)
        {
            return Some(format!(
                "{} is not an attested domain of the policy in force",
                binding.domain
            ));
        }
        policy.domains.iter().find_map(|d| {
            d.cgroups
                .iter()
                .find(|c| contains(c.as_str(), binding.cgroup.as_str()))
                .map(|c| {
                    if c == &binding.cgroup {
                        format!("the policy binds cgroup {c} to {}", d.name)
                    } else {
                        format!(
                            "the policy binds its ancestor cgroup {c} to {}, which covers it",
                            d.name
                        )
                    }
                })
        })
    }

    /// `policy` with every attested binding it allows added to the cgroups of its domain, as
    /// the compiler takes them; `policy` itself, not a copy of its 10,000 domains, when no
    /// cgroup is attested.
    pub fn augment<'p>(&self, policy: &'p Policy) -> Cow<'p, Policy> {
        if self.bindings.is_empty() {
            return Cow::Borrowed(policy);
        }
        let mut augmented = policy.clone();
        for binding in &self.bindings {
            if Self::conflict(policy, binding).is_some() {
                continue;
            }
            if let Some(domain) = augmented
                .domains
                .iter_mut()
                .find(|d| d.name == binding.domain)
            {
                domain.cgroups.push(binding.cgroup.clone());
            }
        }
        Cow::Owned(augmented)
    }

    /// The id the compiler should bind for `path`, the cgroup there now being `current`: an
    /// attested path binds only the very cgroup that was attested.
    pub fn resolve(&self, path: &CgroupPath, current: Option<u64>) -> Option<u64> {
        match self.get(path) {
            Some(binding) => current.filter(|&id| id == binding.cgroup_id),
            None => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn policy(text: &str) -> Policy {
        enforcer_policy::parse("p.yaml", text).expect("valid policy")
    }

    const POLICY: &str = "version: 1
domains:
  - name: prod.example.org
    attested: true
    bundle: /etc/prod.pem
  - name: staging.example.org
    cgroups: [/w/staging]
";

    fn attested(cgroup: &str, domain: &str) -> Attested {
        Attested {
            cgroup: cgroup.parse().expect("path"),
            cgroup_id: 7,
            domain: domain.parse().expect("domain"),
            spiffe_id: format!("spiffe://{domain}/db"),
            expires: "2030-01-01T00:00:00Z".parse().expect("time"),
            attested_at: "2029-01-01T00:00:00Z".parse().expect("time"),
            pid: 42,
        }
    }

    #[test]
    fn bindings_join_their_attested_domain_unless_the_policy_covers_the_cgroup() {
        let p = policy(POLICY);
        let store = Store::default()
            .with(attested("/w/prod/db", "prod.example.org"))
            .with(attested("/w/staging/job", "prod.example.org"))
            .with(attested("/w/x", "staging.example.org"));
        let augmented = store.augment(&p);
        let cgroups: Vec<&str> = augmented.domains[0]
            .cgroups
            .iter()
            .map(CgroupPath::as_str)
            .collect();
        assert_eq!(cgroups, ["/w/prod/db"]);
        assert_eq!(augmented.domains[1].cgroups.len(), 1);
        let why = Store::conflict(&p, &attested("/w/staging/job", "prod.example.org"));
        assert!(
            why.expect("conflict")
                .contains("ancestor cgroup /w/staging")
        );
        let why = Store::conflict(&p, &attested("/w/x", "staging.example.org"));
        assert!(why.expect("conflict").contains("not an attested domain"));
    }

    #[test]
    fn a_path_binds_only_the_cgroup_that_was_attested() {
        let store = Store::default().with(attested("/w/prod/db", "prod.example.org"));
        let path: CgroupPath = "/w/prod/db".parse().expect("path");
        assert_eq!(store.resolve(&path, Some(7)), Some(7));
        assert_eq!(store.resolve(&path, Some(8)), None);
        let other: CgroupPath = "/w/other".parse().expect("path");
        assert_eq!(store.resolve(&other, Some(8)), Some(8));
    }

    #[test]
    fn the_record_round_trips_and_a_bad_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("enforcer-attested-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let state = StateDir::new(&dir);
        let store = Store::default().with(attested("/w/prod/db", "prod.example.org"));
        store.save(&state).expect("save");
        assert_eq!(Store::load(&state).expect("load"), store);
        fs::write(file(&state), r#"{"bindings":[{"cgroup":"relative"}]}"#).expect("write");
        assert!(Store::load(&state).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
