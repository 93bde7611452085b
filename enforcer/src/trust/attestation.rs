//! SVID-attested bindings (issue 6, part 3). A domain marked `attested: true` gets its cgroups
//! from proof, not from the policy: a process connects to the attestation socket with mutual
//! TLS, presenting an X.509-SVID of the domain and proving it holds the key; the daemon takes
//! the process's cgroup from the kernel (never from the client) and binds that cgroup to the
//! SVID's domain until the SVID expires.
//!
//! `server` answers the socket, `peer` finds who connected, `store` keeps the bindings, and
//! `client` is `enforcer attest`, the workload's side.

pub mod peer;
mod store;

use std::path::PathBuf;

use enforcer_policy::{CgroupPath, Policy};
use jiff::Timestamp;
pub use store::{Attested, Store};

use crate::{kernel::cgroupfs::CgroupRoot, trust::Svid};

/// What a verified handshake asks for: the SVID, and where the kernel says its holder runs.
pub struct Claim {
    pub svid: Svid,
    pub cgroup: CgroupPath,
    pub cgroup_id: u64,
    pub pid: u32,
}

/// Decides `claim` against the policy in force, the bindings already attested and the root the
/// programs attach to. Returns the binding to keep (the one already held when it lasts longer
/// than the new SVID), or why the claim is refused.
pub fn admit(
    policy: &Policy,
    store: &Store,
    root: &CgroupRoot,
    claim: &Claim,
    now: Timestamp,
) -> Result<Attested, String> {
    let cgroup = &claim.cgroup;
    if !root.covers(cgroup) {
        return Err(format!(
            "cgroup {cgroup} is outside --cgroup-root {}; this daemon does not enforce it",
            root.relative
        ));
    }
    // Binding the root would label every workload this daemon enforces on one process's word.
    if cgroup.as_str() == root.relative {
        return Err(format!(
            "cgroup {cgroup} is the --cgroup-root itself; attest from a cgroup below it"
        ));
    }
    if claim.svid.expires <= now {
        return Err(format!(
            "the SVID {} expired at {}",
            claim.svid.id, claim.svid.expires
        ));
    }
    let binding = Attested {
        cgroup: cgroup.clone(),
        cgroup_id: claim.cgroup_id,
        domain: claim.svid.id.domain.clone(),
        spiffe_id: claim.svid.id.to_string(),
        expires: claim.svid.expires,
        attested_at: now,
        pid: claim.pid,
    };
    if let Some(why) = Store::conflict(policy, &binding) {
        return Err(why);
    }
    // A workload is in one domain: attested bindings of two domains never nest, so neither
    // can relabel the other's cgroups.
    let clash = store.bindings().iter().find(|b| {
        b.domain != binding.domain
            && b.cgroup_id_matches(cgroup, claim.cgroup_id)
            && related(b.cgroup.as_str(), cgroup.as_str())
    });
    if let Some(other) = clash {
        return Err(format!(
            "cgroup {} is attested to {} (as {} until {}){}",
            other.cgroup,
            other.domain,
            other.spiffe_id,
            other.expires,
            if &other.cgroup == cgroup {
                String::new()
            } else {
                format!(", which overlaps {cgroup}")
            }
        ));
    }
    match store.get(cgroup) {
        Some(held) if held.cgroup_id == claim.cgroup_id && held.expires >= binding.expires => {
            Ok(held.clone())
        }
        _ => Ok(binding),
    }
}

/// Whether one cgroup path is the other or an ancestor of it.
fn related(a: &str, b: &str) -> bool {
    crate::kernel::cgroupfs::contains(a, b) || crate::kernel::cgroupfs::contains(b, a)
}

impl Attested {
    /// Whether this binding still names the cgroup a claim for `cgroup` (with id `id`) is
    /// about: a binding of the same path to a cgroup that was removed since does not count.
    fn cgroup_id_matches(&self, cgroup: &CgroupPath, id: u64) -> bool {
        &self.cgroup != cgroup || self.cgroup_id == id
    }
}

/// What the daemon keeps for attestation.
pub struct Attestation {
    pub store: Store,
    /// `--attest-socket`, when attestation is on.
    pub socket: Option<PathBuf>,
}

impl Attestation {
    /// A warning when the policy has attested domains that nothing can bind.
    pub fn warning(&self, policy: &Policy) -> Option<String> {
        let attested: Vec<&str> = policy
            .domains
            .iter()
            .filter(|d| d.attested)
            .map(|d| d.name.as_str())
            .collect();
        (self.socket.is_none() && !attested.is_empty()).then(|| {
            format!(
                "domain(s) {} are attested but the daemon has no --attest-socket: no \
                 workload can join them",
                attested.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1
domains:
  - name: prod.example.org
    attested: true
    bundle: /etc/prod.pem
  - name: partner.example.org
    attested: true
    bundle: /etc/partner.pem
  - name: staging.example.org
    cgroups: [/t/staging]
";

    fn root() -> CgroupRoot {
        CgroupRoot {
            dir: "/sys/fs/cgroup/t".into(),
            id: 1,
            relative: "/t".into(),
        }
    }

    fn claim(cgroup: &str, id: &str, expires_in: i64) -> Claim {
        Claim {
            svid: Svid {
                id: id.parse().expect("id"),
                expires: Timestamp::now() + jiff::SignedDuration::from_secs(expires_in),
            },
            cgroup: cgroup.parse().expect("path"),
            cgroup_id: 9,
            pid: 4,
        }
    }

    fn decide(store: &Store, claim: &Claim) -> Result<Attested, String> {
        let policy = enforcer_policy::parse("p.yaml", POLICY).expect("valid");
        admit(&policy, store, &root(), claim, Timestamp::now())
    }

    #[test]
    fn a_cgroup_below_the_root_is_bound_to_an_attested_domain() {
        let got = decide(
            &Store::default(),
            &claim("/t/db", "spiffe://prod.example.org/db", 60),
        )
        .expect("admitted");
        assert_eq!(got.domain.as_str(), "prod.example.org");
        assert_eq!(got.spiffe_id, "spiffe://prod.example.org/db");
        assert_eq!(got.cgroup_id, 9);
    }

    #[test]
    fn claims_the_policy_or_the_root_do_not_allow_are_refused() {
        let store = Store::default();
        let refused = |c: Claim, why: &str| {
            let err = decide(&store, &c).expect_err(why);
            assert!(err.contains(why), "expected {why:?} in {err:?}");
        };
        refused(
            claim("/other", "spiffe://prod.example.org/db", 60),
            "outside --cgroup-root",
        );
        refused(
            claim("/t", "spiffe://prod.example.org/db", 60),
            "the --cgroup-root itself",
        );
        refused(
            claim("/t/db", "spiffe://staging.example.org/db", 60),
            "not an attested domain",
        );
        refused(
            claim("/t/db", "spiffe://other.example.org/db", 60),
            "not an attested domain",
        );
        refused(
            claim("/t/staging/x", "spiffe://prod.example.org/db", 60),
            "ancestor cgroup /t/staging",
        );
        refused(
            claim("/t/db", "spiffe://prod.example.org/db", -1),
            "expired",
        );
    }

    #[test]
    fn attested_domains_never_nest_and_a_later_svid_extends() {
        let first = decide(
            &Store::default(),
            &claim("/t/a", "spiffe://prod.example.org/db", 60),
        )
        .expect("admitted");
        let store = Store::default().with(first.clone());
        for cgroup in ["/t/a", "/t/a/b"] {
            let err = decide(&store, &claim(cgroup, "spiffe://partner.example.org/x", 60))
                .expect_err("another domain");
            assert!(err.contains("attested to prod.example.org"), "{err}");
        }
        let shorter = decide(&store, &claim("/t/a", "spiffe://prod.example.org/db", 30))
            .expect("same domain");
        assert_eq!(shorter, first);
        let longer = decide(&store, &claim("/t/a", "spiffe://prod.example.org/db", 600))
            .expect("same domain");
        assert!(longer.expires > first.expires);
        // The same path after its cgroup was removed and made again is a new cgroup.
        let mut recreated = claim("/t/a", "spiffe://partner.example.org/x", 60);
        recreated.cgroup_id = 10;
        decide(&store, &recreated).expect("a new cgroup");
    }
}
