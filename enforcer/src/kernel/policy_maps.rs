//! The daemon's side of the policy maps: writing a compiled policy into the slot no program
//! reads, flipping the active slot, and clearing the old one. The layout contract is in
//! `enforcer_common::maps`.

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use enforcer_common::{
    maps::{
        BindingKey, DomainKey, DomainName, ENDPOINT_KEY_HEADER_BITS, EdgeKey, EndpointKey,
        FAMILY_V4, MAX_DOMAIN_NAME, PolicyConfig, PortRules, SLOTS,
    },
    names,
};

use crate::{compile::Compiled, registry::Registry};

pub struct PolicyMaps {
    bindings: HashMap<MapData, BindingKey, u32>,
    endpoints: LpmTrie<MapData, EndpointKey, u32>,
    edges: HashMap<MapData, EdgeKey, PortRules>,
    modes: HashMap<MapData, DomainKey, u32>,
    policy: Array<MapData, PolicyConfig>,
    active: Array<MapData, u32>,
    domains: HashMap<MapData, u32, DomainName>,
}

/// What the programs currently enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePolicy {
    pub slot: u32,
    pub config: PolicyConfig,
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            bindings: HashMap::try_from(take(names::MAP_BINDINGS)?)?,
            endpoints: LpmTrie::try_from(take(names::MAP_ENDPOINTS)?)?,
            edges: HashMap::try_from(take(names::MAP_EDGES)?)?,
            modes: HashMap::try_from(take(names::MAP_MODES)?)?,
            policy: Array::try_from(take(names::MAP_POLICY)?)?,
            active: Array::try_from(take(names::MAP_ACTIVE)?)?,
            domains: HashMap::try_from(take(names::MAP_DOMAINS)?)?,
        })
    }

    pub fn active(&self) -> Result<ActivePolicy> {
        let slot = self.active.get(&0, 0).context("reading ENF_ACTIVE")?;
        if slot >= SLOTS {
            bail!("ENF_ACTIVE holds slot {slot}; the pinned maps are not ones this enforcer wrote");
        }
        let config = self.policy.get(&slot, 0).context("reading ENF_POLICY")?;
        Ok(ActivePolicy { slot, config })
    }

    pub fn registry(&self) -> Result<Registry> {
        let mut entries = Vec::new();
        for entry in self.domains.iter() {
            let (id, name) = entry.context("reading ENF_DOMAINS")?;
            let len = (name.len as usize).min(MAX_DOMAIN_NAME);
            let text = String::from_utf8_lossy(&name.bytes[..len]).into_owned();
            entries.push((id, text));
        }
        Ok(Registry::from_entries(entries))
    }

    /// Records ids the kernel does not know yet. Ids are only ever added, so this is safe to
    /// do before the policy that uses them is active.
    pub fn record_domains(&mut self, registry: &Registry, known: &Registry) -> Result<()> {
        for (id, name) in registry.added_since(known) {
            let mut value = DomainName {
                len: name.len() as u32,
                bytes: [0; MAX_DOMAIN_NAME + 1],
            };
            let len = name.len().min(MAX_DOMAIN_NAME);
            value.bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
            self.domains
                .insert(id, value, 0)
                .with_context(|| format!("recording domain id {id} ({name}) in ENF_DOMAINS"))?;
        }
        Ok(())
    }

    /// Makes `compiled` the enforced policy with `generation`, atomically: everything is
    /// written to the inactive slot first and becomes visible with one 4-byte update of
    /// ENF_ACTIVE. On error the active policy is untouched and the inactive slot is cleared.
    pub fn swap_in(&mut self, compiled: &Compiled, generation: u64) -> Result<u32> {
        let current = self.active()?;
        let next = (current.slot + 1) % SLOTS;
        self.clear_slot(next)?;
        if let Err(err) = self.write_slot(next, compiled, generation) {
            self.clear_slot(next)
                .context("clearing a half-written policy slot")?;
            return Err(err);
        }
        self.active
            .set(0, next, 0)
            .context("switching ENF_ACTIVE to the new policy")?;
        if old_readers_finished() {
            self.clear_slot(current.slot)?;
        }
        Ok(next)
    }

    fn write_slot(&mut self, slot: u32, compiled: &Compiled, generation: u64) -> Result<()> {
        for binding in &compiled.bindings {
            let Some(cgroup_id) = binding.cgroup_id else {
                continue;
            };
            let key = BindingKey {
                slot,
                _pad: 0,
                cgroup_id,
            };
            self.bindings
                .insert(key, binding.domain, 0)
                .with_context(|| format!("writing binding {} to ENF_BINDINGS", binding.path))?;
        }
        for (prefix, domain) in &compiled.endpoints {
            let key = Key::new(
                ENDPOINT_KEY_HEADER_BITS + u32::from(prefix.len),
                EndpointKey {
                    slot: slot as u8,
                    family: prefix.family,
                    addr: prefix.addr,
                    _pad: [0; 2],
                },
            );
            self.endpoints
                .insert(&key, domain, 0)
                .context("writing an endpoint prefix to ENF_ENDPOINTS")?;
        }
        for (&(from, to), rules) in &compiled.port_rules() {
            self.edges
                .insert(EdgeKey { slot, from, to }, rules, 0)
                .with_context(|| format!("writing edge {from}->{to} to ENF_EDGES"))?;
        }
        for &(domain, mode) in &compiled.modes {
            self.modes
                .insert(DomainKey { slot, domain }, mode, 0)
                .with_context(|| format!("writing the mode of domain {domain} to ENF_MODES"))?;
        }
        let config = PolicyConfig {
            generation,
            unlabeled: compiled.unlabeled,
            external: compiled.external,
            mode: compiled.mode,
            _pad: 0,
        };
        self.policy
            .set(slot, config, 0)
            .context("writing ENF_POLICY")?;
        Ok(())
    }

    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let bindings: Vec<_> = self
            .bindings
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for key in bindings {
            self.bindings
                .remove(&key)
                .context("clearing ENF_BINDINGS")?;
        }
        let endpoints: Vec<_> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.data().slot) == slot)
            .collect();
        for key in endpoints {
            self.endpoints
                .remove(&key)
                .context("clearing ENF_ENDPOINTS")?;
        }
        let edges: Vec<_> = self
            .edges
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for key in edges {
            self.edges.remove(&key).context("clearing ENF_EDGES")?;
        }
        let modes: Vec<_> = self
            .modes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for key in modes {
            self.modes.remove(&key).context("clearing ENF_MODES")?;
        }
        Ok(())
    }

    /// The domain `slot` binds cgroup `cgroup_id` to, if any (ENF_BINDINGS).
    pub fn binding(&self, slot: u32, cgroup_id: u64) -> Result<Option<u32>> {
        let key = BindingKey {
            slot,
            _pad: 0,
            cgroup_id,
        };
        absent_is_none(self.bindings.get(&key, 0)).context("reading ENF_BINDINGS")
    }

    /// The port ranges of every edge from `from` to `to` in `slot` (ENF_EDGES).
    pub fn edges(&self, slot: u32, from: u32, to: u32) -> Result<Option<PortRules>> {
        absent_is_none(self.edges.get(&EdgeKey { slot, from, to }, 0)).context("reading ENF_EDGES")
    }

    /// The mode of `domain` in `slot` where it differs from the policy's (ENF_MODES).
    pub fn mode(&self, slot: u32, domain: u32) -> Result<Option<u32>> {
        absent_is_none(self.modes.get(&DomainKey { slot, domain }, 0)).context("reading ENF_MODES")
    }

    /// The domain whose endpoint prefixes in `slot` hold the address `addr` (`family`, network
    /// order, IPv4 in the first four bytes), with the longest matching prefix's length, as the
    /// programs' full-length LPM lookup finds it (ENF_ENDPOINTS).
    pub fn endpoint(&self, slot: u32, family: u8, addr: [u8; 16]) -> Result<Option<(u32, u8)>> {
        let bits = if family == FAMILY_V4 { 32 } else { 128 };
        let data = EndpointKey {
            slot: slot as u8,
            family,
            addr,
            _pad: [0; 2],
        };
        let key = Key::new(ENDPOINT_KEY_HEADER_BITS + bits, data);
        let Some(domain) =
            absent_is_none(self.endpoints.get(&key, 0)).context("reading ENF_ENDPOINTS")?
        else {
            return Ok(None);
        };
        // The trie returns only the value; the prefix that matched is the longest entry of
        // the slot and family that holds the address.
        let len = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().slot == data.slot && k.data().family == family)
            .filter_map(|k| {
                let len = k.prefix_len().checked_sub(ENDPOINT_KEY_HEADER_BITS)?;
                covers(&k.data().addr, &addr, len).then_some(len)
            })
            .max()
            .unwrap_or(bits);
        Ok(Some((domain, len as u8)))
    }

    /// Number of entries per policy map, for status.
    pub fn fill(&self) -> Vec<(&'static str, usize)> {
        vec![
            (names::MAP_BINDINGS, self.bindings.keys().count()),
            (names::MAP_ENDPOINTS, self.endpoints.keys().count()),
            (names::MAP_EDGES, self.edges.keys().count()),
            (names::MAP_MODES, self.modes.keys().count()),
            (names::MAP_DOMAINS, self.domains.keys().count()),
        ]
    }
}

/// A missing key as `None`, any other error as an error.
fn absent_is_none<V>(result: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Whether the first `len` bits of `prefix` and `addr` are equal.
fn covers(prefix: &[u8; 16], addr: &[u8; 16], len: u32) -> bool {
    let len = len.min(128) as usize;
    let (bytes, bits) = (len / 8, len % 8);
    prefix[..bytes] == addr[..bytes]
        && (bits == 0 || {
            let mask = 0xff_u8 << (8 - bits);
            prefix[bytes] & mask == addr[bytes] & mask
        })
}

/// Waits until no program run that read the old ENF_ACTIVE value can still be running, and
/// says whether it could. Cgroup programs run inside an RCU read-side critical section, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` returns only after `synchronize_rcu()`
/// (kernel/sched/membarrier.c), so the old slot can then be cleared without a decision ever
/// seeing it half-deleted. Where membarrier is unavailable the old slot stays as it is until
/// the next apply clears it before writing into it.
fn old_readers_finished() -> bool {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_by_leading_bits() {
        let addr = |bytes: &[u8]| {
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            a
        };
        let net = addr(&[10, 20, 0, 0]);
        assert!(covers(&net, &addr(&[10, 20, 5, 6]), 16));
        assert!(!covers(&net, &addr(&[10, 21, 5, 6]), 16));
        assert!(covers(&addr(&[10, 16]), &addr(&[10, 31]), 12));
        assert!(!covers(&addr(&[10, 16]), &addr(&[10, 32]), 12));
        assert!(covers(&net, &addr(&[99]), 0));
        assert!(covers(&net, &net, 128));
    }
}
