//! The daemon's side of the policy maps: writing a compiled policy into the slot no program
//! reads, flipping the active slot, and clearing the old one. The layout contract is in
//! `enforcer_common::maps`.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context as _, Result, bail};
use aya::maps::{
    Array, HashMap, IterableMap as _, Map, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::{
    maps::{
        BindingKey, DomainKey, DomainName, ENDPOINT_KEY_HEADER_BITS, EdgeKey, EndpointKey,
        FAMILY_V4, MAX_CHUNKS, MAX_DOMAIN_NAME, PolicyConfig, PortChunk, PortRange,
        RANGES_PER_CHUNK, SLOTS,
    },
    names,
};

use super::bpf_sys;
use crate::pipeline::{compile::Compiled, registry::Registry};

pub struct PolicyMaps {
    bindings: HashMap<MapData, BindingKey, u32>,
    endpoints: LpmTrie<MapData, EndpointKey, u32>,
    edges: HashMap<MapData, EdgeKey, PortChunk>,
    modes: HashMap<MapData, DomainKey, u32>,
    policy: Array<MapData, PolicyConfig>,
    active: Array<MapData, u32>,
    domains: HashMap<MapData, u32, DomainName>,
    /// What ENF_DOMAINS holds.
    known: Registry,
    /// What each slot holds, as far as this daemon knows: `None` until it has written the
    /// slot, and after a write that failed half-way.
    held: [Option<Arc<Compiled>>; SLOTS as usize],
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
        let domains = HashMap::try_from(take(names::MAP_DOMAINS)?)?;
        Ok(Self {
            bindings: HashMap::try_from(take(names::MAP_BINDINGS)?)?,
            endpoints: LpmTrie::try_from(take(names::MAP_ENDPOINTS)?)?,
            edges: HashMap::try_from(take(names::MAP_EDGES)?)?,
            modes: HashMap::try_from(take(names::MAP_MODES)?)?,
            policy: Array::try_from(take(names::MAP_POLICY)?)?,
            active: Array::try_from(take(names::MAP_ACTIVE)?)?,
            known: Self::read_registry(&domains)?,
            domains,
            held: Default::default(),
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

    /// The domain ids ENF_DOMAINS holds: read once when the maps are taken, then kept by
    /// [`Self::record_domains`] and [`Self::forget_domains`], the only code that writes it.
    pub fn registry(&self) -> Result<Registry> {
        Ok(self.known.clone())
    }

    fn read_registry(domains: &HashMap<MapData, u32, DomainName>) -> Result<Registry> {
        let mut entries = Vec::new();
        for entry in domains.iter() {
            let (id, name) = entry.context("reading ENF_DOMAINS")?;
            let len = (name.len as usize).min(MAX_DOMAIN_NAME);
            let text = String::from_utf8_lossy(&name.bytes[..len]).into_owned();
            entries.push((id, text));
        }
        Ok(Registry::from_entries(entries))
    }

    /// Records the ids of `registry` the kernel does not know yet. Ids are only ever added, so this is safe to
    /// do before the policy that uses them is active.
    /// Returns the ids recorded, for [`Self::forget_domains`] should the policy that needs
    /// them not be put in force; if recording fails, those recorded so far are taken back out.
    pub fn record_domains(&mut self, registry: &Registry) -> Result<Vec<u32>> {
        let mut recorded = Vec::new();
        for (id, name) in registry.added_since(&self.known) {
            let mut value = DomainName {
                len: name.len() as u32,
                bytes: [0; MAX_DOMAIN_NAME + 1],
            };
            let len = name.len().min(MAX_DOMAIN_NAME);
            value.bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
            if let Err(err) = self.domains.insert(id, value, 0) {
                let err = anyhow::Error::from(err)
                    .context(format!("recording domain id {id} ({name}) in ENF_DOMAINS"));
                return Err(match self.forget_domains(&recorded) {
                    Ok(()) => err,
                    Err(undo) => anyhow::anyhow!("{err:#}; {undo:#}"),
                });
            }
            self.known.insert(id, name);
            recorded.push(id);
        }
        Ok(recorded)
    }

    /// Takes ids back out of ENF_DOMAINS that [`Self::record_domains`] recorded for a policy
    /// that was not put in force: no socket can carry them, and a refused change must leave
    /// no trace.
    /// Every id is tried; the error names those that stay.
    pub fn forget_domains(&mut self, ids: &[u32]) -> Result<()> {
        let mut stuck = Vec::new();
        for id in ids {
            match remove(&mut self.domains, id) {
                Ok(()) => self.known.remove(*id),
                Err(err) => stuck.push(format!("{id} ({err})")),
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            bail!(
                "could not take domain id(s) {} back out of ENF_DOMAINS",
                stuck.join(", ")
            )
        }
    }

    /// Makes `compiled` the enforced policy with `generation`, atomically: the inactive slot
    /// is brought up to `compiled` first, and it becomes visible with one 4-byte update of
    /// ENF_ACTIVE. On error the active policy is untouched. Once no program can still be
    /// reading the old slot, it is brought up to `compiled` too, so that both slots hold the
    /// same policy between changes and the next change writes only what differs: a change
    /// costs map writes in proportion to what it changes, not to the size of the policy.
    ///
    /// Returns a warning for the log when the old slot could not be brought up (the swap
    /// itself happened; the next change rewrites that slot whole).
    pub fn swap_in(&mut self, compiled: &Arc<Compiled>, generation: u64) -> Result<Option<String>> {
        let current = self.active()?;
        let next = (current.slot + 1) % SLOTS;
        if let Err(err) = self.bring_up(next, compiled) {
            return Err(match self.restore(next, current.slot) {
                Ok(()) => err,
                Err(undo) => anyhow::anyhow!(
                    "{err:#}; policy slot {next} could not be restored either ({undo:#}): no \
                     program reads it, and the next change rewrites it whole"
                ),
            });
        }
        let config = PolicyConfig {
            generation,
            unlabeled: compiled.unlabeled,
            external: compiled.external,
            mode: compiled.mode,
            _pad: 0,
        };
        self.policy
            .set(next, config, 0)
            .context("writing ENF_POLICY")?;
        self.active
            .set(0, next, 0)
            .context("switching ENF_ACTIVE to the new policy")?;
        // The swap has happened; a slot left behind is only more work for the next one.
        if old_readers_finished()
            && let Err(err) = self.bring_up(current.slot, compiled)
        {
            return Ok(Some(format!(
                "the previous policy slot could not be updated; the next change rewrites it \
                 whole: {err:#}"
            )));
        }
        Ok(None)
    }

    /// Writes what `slot` needs to hold `target`: the difference from what it holds, or, where
    /// that is not known, everything after clearing it. Programs never read `slot` meanwhile.
    fn bring_up(&mut self, slot: u32, target: &Arc<Compiled>) -> Result<()> {
        let index = slot as usize % self.held.len();
        let held = match self.held[index].take() {
            Some(held) if Arc::ptr_eq(&held, target) => {
                self.held[index] = Some(held);
                return Ok(());
            }
            Some(held) => held,
            None => {
                self.clear_slot(slot)?;
                Arc::default()
            }
        };
        // `held` stays `None` if the write fails half-way: what the slot holds is unknown.
        self.write_difference(slot, &held, target)?;
        self.held[index] = Some(Arc::clone(target));
        Ok(())
    }

    /// After a failed write to `slot`, makes it hold what `active` holds again (or nothing,
    /// when that is not known), so that a refused change leaves no trace in the maps.
    fn restore(&mut self, slot: u32, active: u32) -> Result<()> {
        match self.held[active as usize % self.held.len()].clone() {
            Some(active) => self.bring_up(slot, &active),
            None => self.clear_slot(slot),
        }
    }

    fn write_difference(&mut self, slot: u32, old: &Compiled, new: &Compiled) -> Result<()> {
        let (was, now) = (bound(old), bound(new));
        for (&cgroup_id, (domain, path)) in &now {
            if was.get(&cgroup_id).map(|w| w.0) != Some(*domain) {
                let key = BindingKey {
                    slot,
                    _pad: 0,
                    cgroup_id,
                };
                self.bindings
                    .insert(key, domain, 0)
                    .with_context(|| format!("writing binding {path} to ENF_BINDINGS"))?;
            }
        }
        for cgroup_id in was.keys().filter(|id| !now.contains_key(id)) {
            let key = BindingKey {
                slot,
                _pad: 0,
                cgroup_id: *cgroup_id,
            };
            remove(&mut self.bindings, &key).context("removing a binding from ENF_BINDINGS")?;
        }

        let prefixes = |c: &Compiled| -> BTreeMap<(u8, [u8; 16], u8), u32> {
            c.endpoints
                .iter()
                .map(|(p, domain)| ((p.family, p.addr, p.len), *domain))
                .collect()
        };
        let (was, now) = (prefixes(old), prefixes(new));
        let endpoint_key = |&(family, addr, len): &(u8, [u8; 16], u8)| {
            Key::new(
                ENDPOINT_KEY_HEADER_BITS + u32::from(len),
                EndpointKey {
                    slot: slot as u8,
                    family,
                    addr,
                    _pad: [0; 2],
                },
            )
        };
        for (prefix, domain) in &now {
            if was.get(prefix) != Some(domain) {
                self.endpoints
                    .insert(&endpoint_key(prefix), domain, 0)
                    .context("writing an endpoint prefix to ENF_ENDPOINTS")?;
            }
        }
        for prefix in was.keys().filter(|p| !now.contains_key(p)) {
            match self.endpoints.remove(&endpoint_key(prefix)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("removing a prefix from ENF_ENDPOINTS"),
            }
        }

        // Edges are most of a policy's entries (100,000 and more), written in one batch.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for ((from, to), was, now) in old.edges.changes(&new.edges) {
            let key = |chunk| EdgeKey {
                from,
                to,
                slot: slot as u16,
                chunk,
            };
            let written = PortChunk::split(now).count();
            for (chunk, value) in PortChunk::split(now) {
                keys.push(key(chunk));
                values.push(value);
            }
            // The chunks a pair no longer needs are other keys than those written above, so
            // removing them before the batch comes to the same.
            for chunk in written..PortChunk::split(was).count() {
                remove(&mut self.edges, &key(chunk as u16))
                    .with_context(|| format!("removing edge {from}->{to} from ENF_EDGES"))?;
            }
        }
        bpf_sys::map_update_batch(self.edges.map().fd(), &keys, &values).map_err(
            |(written, err)| match keys.get(written) {
                Some(k) => anyhow::Error::from(err)
                    .context(format!("writing edge {}->{} to ENF_EDGES", k.from, k.to)),
                None => anyhow::Error::from(err).context("writing edges to ENF_EDGES"),
            },
        )?;

        for &(domain, mode) in &new.modes {
            if old.modes.binary_search(&(domain, mode)).is_err() {
                self.modes
                    .insert(DomainKey { slot, domain }, mode, 0)
                    .with_context(|| format!("writing the mode of domain {domain} to ENF_MODES"))?;
            }
        }
        for &(domain, _) in &old.modes {
            if new.modes.binary_search_by_key(&domain, |m| m.0).is_err() {
                remove(&mut self.modes, &DomainKey { slot, domain })
                    .context("removing a mode from ENF_MODES")?;
            }
        }
        Ok(())
    }

    /// Removes every entry of `slot`, reading the maps' keys: for a slot whose content this
    /// daemon does not know (it has not written it since it started, or a write failed). At
    /// a restart over 100,000 edges that is both slots, so the hash maps are read and cleared
    /// in batches (see [`clear_hash`]).
    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        clear_hash(&self.bindings, |k| k.slot == slot).context("clearing ENF_BINDINGS")?;
        let endpoints: Vec<_> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.data().slot) == slot)
            .collect();
        for key in endpoints {
            match self.endpoints.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("clearing ENF_ENDPOINTS"),
            }
        }
        clear_hash(&self.edges, |k| u32::from(k.slot) == slot).context("clearing ENF_EDGES")?;
        clear_hash(&self.modes, |k| k.slot == slot).context("clearing ENF_MODES")?;
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

    /// The port ranges of every edge from `from` to `to` in `slot`, in the order the programs
    /// scan them (ENF_EDGES, chunk by chunk).
    pub fn edges(&self, slot: u32, from: u32, to: u32) -> Result<Option<Vec<PortRange>>> {
        let mut ranges = Vec::new();
        for chunk in 0..MAX_CHUNKS as u16 {
            let key = EdgeKey {
                from,
                to,
                slot: slot as u16,
                chunk,
            };
            match absent_is_none(self.edges.get(&key, 0)).context("reading ENF_EDGES")? {
                Some(value) => {
                    ranges.extend_from_slice(value.own(chunk));
                    if ranges.len() >= value.count as usize {
                        break;
                    }
                }
                None if chunk == 0 => return Ok(None),
                None => break,
            }
        }
        Ok(Some(ranges))
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

    /// Entries per policy map in the slot in force, for status (the other slot holds the
    /// same between changes): counted from what this daemon wrote there, which is exact and
    /// costs no walk of a map of 100,000 pairs; a slot it has not written is walked.
    pub fn fill(&self, domains: usize) -> Vec<(&'static str, usize)> {
        let slot = self.active().map_or(0, |a| a.slot);
        let counts = match &self.held[slot as usize % self.held.len()] {
            Some(c) => [
                c.bindings.iter().filter(|b| b.cgroup_id.is_some()).count(),
                c.endpoints.len(),
                c.edges
                    .iter()
                    .map(|(_, r)| r.len().div_ceil(RANGES_PER_CHUNK))
                    .sum(),
                c.modes.len(),
            ],
            None => [
                self.bindings
                    .keys()
                    .filter(|k| k.as_ref().is_ok_and(|k| k.slot == slot))
                    .count(),
                self.endpoints
                    .keys()
                    .filter(|k| k.as_ref().is_ok_and(|k| u32::from(k.data().slot) == slot))
                    .count(),
                self.edges
                    .keys()
                    .filter(|k| k.as_ref().is_ok_and(|k| u32::from(k.slot) == slot))
                    .count(),
                self.modes
                    .keys()
                    .filter(|k| k.as_ref().is_ok_and(|k| k.slot == slot))
                    .count(),
            ],
        };
        vec![
            (names::MAP_BINDINGS, counts[0]),
            (names::MAP_ENDPOINTS, counts[1]),
            (names::MAP_EDGES, counts[2]),
            (names::MAP_MODES, counts[3]),
            (names::MAP_DOMAINS, domains),
        ]
    }
}

/// The bound cgroups of `compiled`: cgroup id -> (domain, path).
fn bound(compiled: &Compiled) -> BTreeMap<u64, (u32, &str)> {
    compiled
        .bindings
        .iter()
        .filter_map(|b| Some((b.cgroup_id?, (b.domain, b.path.as_str()))))
        .collect()
}

/// Deletes the keys of `map` that `doomed` picks: read with `BPF_MAP_LOOKUP_BATCH` and deleted
/// with `BPF_MAP_DELETE_BATCH` (Linux 5.6), not one system call per key. A key already gone
/// is not an error: the batch stops at it, and goes on after it.
fn clear_hash<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) -> Result<()> {
    let fd = map.map().fd();
    let mut keys = bpf_sys::hash_map_keys::<K, V>(fd).context("reading the keys")?;
    keys.retain(doomed);
    let mut left = keys.as_slice();
    while let Err((deleted, err)) = bpf_sys::map_delete_batch(fd, left) {
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err.into());
        }
        left = left.get(deleted + 1..).unwrap_or_default();
    }
    Ok(())
}

/// Removes `key`; one that is already gone is not an error.
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), MapError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(err) => Err(err),
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
