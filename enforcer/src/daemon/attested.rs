//! The daemon's attested bindings: admitting a verified claim (see `attestation`), and
//! dropping bindings whose SVID expired, whose cgroup is gone, or that the policy in force no
//! longer allows. Each change is a new policy generation, put in force like an apply.

use enforcer_policy::CgroupPath;

use super::machine::Daemon;
use crate::{
    api::status,
    pipeline::clock::Clocks,
    trust::attestation::{self, Attested, Claim, Store},
};

impl Daemon {
    /// The id the compiler binds for `path`: the cgroup there now, unless the path is attested
    /// and the cgroup there is not the one that was.
    pub(super) fn cgroup_id(&self, path: &CgroupPath) -> Option<u64> {
        self.attestation.store.resolve(path, self.cgroups.id(path))
    }

    /// Binds the claim's cgroup to its SVID's domain, or says why not. The binding is saved
    /// before it is in force, so a restart never drops it.
    pub fn attest(&mut self, claim: &Claim) -> Result<String, String> {
        let now = Clocks::now().wall_now();
        let binding = attestation::admit(
            &self.state.policy,
            &self.attestation.store,
            &self.root,
            claim,
            now,
        )?;
        let bound = format!(
            "bound {} to {} as {} until {}",
            binding.cgroup, binding.domain, binding.spiffe_id, binding.expires
        );
        if self.attestation.store.get(&binding.cgroup) == Some(&binding) {
            log::info!(
                "attestation by pid {} in cgroup {} as {}: already {bound}",
                claim.pid,
                claim.cgroup,
                claim.svid.id
            );
            return Ok(bound);
        }
        let before = self.attestation.store.clone();
        let next = before.with(binding);
        next.save(&self.host.state_dir)
            .map_err(|err| format!("the daemon could not save the binding: {err:#}"))?;
        self.attestation.store = next;
        let origin = format!("attestation of {}", claim.cgroup);
        match self.commit(
            self.state.policy.clone(),
            self.state.book.clone(),
            None,
            &origin,
        ) {
            Ok(c) => {
                log::info!(
                    "attestation by pid {} in cgroup {} as {}: {bound}; policy generation {}",
                    claim.pid,
                    claim.cgroup,
                    claim.svid.id,
                    c.generation
                );
                Ok(bound)
            }
            Err(err) => {
                self.attestation.store = before;
                if let Err(restore) = self.attestation.store.save(&self.host.state_dir) {
                    log::warn!("could not restore the attested bindings: {restore:#}");
                }
                Err(format!("{err:#}"))
            }
        }
    }

    /// Drops the attested bindings that must end: SVID expired, cgroup gone (or another
    /// cgroup now at its path), or not allowed by the policy in force. Runs every tick.
    pub fn expire_attested(&mut self) {
        let now = Clocks::now().wall_now();
        let ending: Vec<(Attested, String)> = self
            .attestation
            .store
            .bindings()
            .iter()
            .filter_map(|b| {
                let why = if b.expires <= now {
                    format!("its SVID expired at {}", b.expires)
                } else if self.cgroups.id(&b.cgroup) != Some(b.cgroup_id) {
                    "its cgroup is gone".to_owned()
                } else {
                    Store::conflict(&self.state.policy, b)?
                };
                Some((b.clone(), why))
            })
            .collect();
        if ending.is_empty() {
            return;
        }
        let before = self.attestation.store.clone();
        self.attestation.store = before.without(|b| ending.iter().any(|(e, _)| e == b));
        // Bindings the policy no longer allows are already out of force.
        let in_force = ending
            .iter()
            .any(|(b, _)| Store::conflict(&self.state.policy, b).is_none());
        let generation = if in_force {
            match self.commit(
                self.state.policy.clone(),
                self.state.book.clone(),
                None,
                "attestation expiry",
            ) {
                Ok(c) => format!("; policy generation {}", c.generation),
                Err(err) => {
                    self.attestation.store = before;
                    log::warn!("removing attested bindings failed (retried next second): {err:#}");
                    return;
                }
            }
        } else {
            String::new()
        };
        // Saved after: a binding on disk that is no longer in force is dropped again at start.
        if let Err(err) = self.attestation.store.save(&self.host.state_dir) {
            log::warn!("could not save the attested bindings: {err:#}");
        }
        for (b, why) in &ending {
            log::info!(
                "attested binding of cgroup {} to {} ({}) removed: {why}{generation}",
                b.cgroup,
                b.domain,
                b.spiffe_id
            );
        }
    }

    pub(super) fn attestation_status(&self) -> status::AttestationStatus {
        status::AttestationStatus {
            socket: self
                .attestation
                .socket
                .as_ref()
                .map(|p| p.display().to_string()),
            warning: self.attestation.warning(&self.state.policy),
            bindings: self
                .attestation
                .store
                .bindings()
                .iter()
                .map(|b| status::AttestedStatus {
                    cgroup: b.cgroup.to_string(),
                    cgroup_id: b.cgroup_id,
                    domain: b.domain.to_string(),
                    spiffe_id: b.spiffe_id.clone(),
                    expires: b.expires,
                    pid: b.pid,
                })
                .collect(),
        }
    }
}

/// The attested bindings saved by the last daemon, without those whose SVID expired or whose
/// cgroup went away while no daemon ran.
pub fn load(
    state: &crate::paths::StateDir,
    cgroups: &crate::kernel::cgroupfs::CgroupFs,
) -> anyhow::Result<Store> {
    let now = Clocks::now().wall_now();
    let saved = Store::load(state)?;
    let kept = saved.without(|b| b.expires <= now || cgroups.id(&b.cgroup) != Some(b.cgroup_id));
    for b in saved
        .bindings()
        .iter()
        .filter(|b| !kept.bindings().contains(b))
    {
        log::info!(
            "attested binding of cgroup {} to {} ({}) removed: its SVID expired or its cgroup \
             went away while the daemon was stopped",
            b.cgroup,
            b.domain,
            b.spiffe_id
        );
    }
    Ok(kept)
}
