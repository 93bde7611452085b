//! The daemon's kernel side: how a change is carried out on this host (see
//! [`super::state::KernelSide`]). Failures that do not stop a change (counters not cleared,
//! connections not ended) are logged here; the kernel enforces the change all the same.

use std::sync::Arc;

use anyhow::Result;

use super::{
    restart::{self, SavedPolicy},
    state::KernelSide,
};
use crate::{
    kernel::{
        addresses::Addresses,
        policy_maps::PolicyMaps,
        revocation::{Connections, Ending, Judge, Snapshot},
        usage::Usage,
    },
    paths::StateDir,
    pipeline::{clock::Clocks, compile::Compiled, edges::Book, registry::Registry},
};

/// The parts of the daemon a change writes to, and the readings of the host it needs.
pub struct Host {
    pub maps: PolicyMaps,
    /// What the programs counted.
    pub usage: Usage,
    /// The connections the programs track, for ending them.
    pub connections: Connections,
    /// Who owns each local address, and the pods' network namespaces.
    pub addresses: Addresses,
    pub state_dir: StateDir,
    /// Whether the last saved policy replaced one (kept beside it until the next save).
    pub replaced_policy: bool,
}

impl KernelSide for Host {
    type Connections = Snapshot;

    fn record_domains(&mut self, registry: &Registry) -> Result<Vec<u32>> {
        self.maps.record_domains(registry)
    }

    fn forget_domains(&mut self, ids: &[u32]) {
        if let Err(err) = self.maps.forget_domains(ids) {
            log::warn!("{err:#}");
        }
    }

    fn save(&mut self, book: &Book) -> Result<()> {
        book.save(&self.state_dir)
    }

    fn save_policy(&mut self, policy: &SavedPolicy<'_>, generation: u64) -> Result<()> {
        let path = self.state_dir.saved_policy();
        let previous = path.with_extension("json.prev");
        let _ = std::fs::remove_file(&previous);
        self.replaced_policy = match std::fs::hard_link(&path, &previous) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "keeping the saved policy as {}",
                    previous.display()
                )));
            }
        };
        restart::save(&self.state_dir, policy, generation)
    }

    fn restore_policy(&mut self) {
        let path = self.state_dir.saved_policy();
        let restored = if self.replaced_policy {
            std::fs::rename(path.with_extension("json.prev"), &path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = restored {
            log::error!(
                "could not put back the saved policy {} after a failed swap: {err}",
                path.display()
            );
        }
    }

    fn connections(&mut self) -> Option<Snapshot> {
        let pods = self.addresses.pod_namespaces();
        match self.connections.snapshot(&pods) {
            Ok(snapshot) => Some(snapshot),
            Err(err) => {
                log::warn!("could not list live connections: {err:#}");
                None
            }
        }
    }

    fn swap_in(&mut self, compiled: &Arc<Compiled>, generation: u64) -> Result<()> {
        if let Some(warning) = self.maps.swap_in(compiled, generation)? {
            log::warn!("{warning}");
        }
        Ok(())
    }

    fn forget_edges(&mut self, kept: &[u32]) {
        if let Err(err) = self.usage.forget_edges(kept) {
            log::warn!("could not clear the counters of removed edges: {err:#}");
        }
    }

    fn end_refused(
        &mut self,
        before: Option<Snapshot>,
        compiled: &Compiled,
    ) -> Option<Vec<Ending>> {
        let before = before.or_else(|| self.connections())?;
        match self
            .connections
            .end_refused(before, &Judge::new(compiled, Clocks::now().boot))
        {
            Ok(ended) => Some(ended),
            Err(err) => {
                log::warn!(
                    "could not end every refused connection (the kernel still drops their \
                     packets): {err:#}"
                );
                None
            }
        }
    }
}
