//! Stable numeric ids for trust-domain names. A socket's tag holds the id, so an id must keep
//! its meaning for as long as any socket may carry it: ids are never reused or renumbered, and
//! the table lives in a pinned map (`ENF_DOMAINS`) beside the tags, with the same lifetime.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use enforcer_common::{maps::UNLABELED, verdict::EXTERNAL_CODE};

/// Copied for every compile and looked up twice per edge, so names are shared between the
/// two directions and between copies, and found by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    ids: HashMap<Arc<str>, u32>,
    names: BTreeMap<u32, Arc<str>>,
}

impl Registry {
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, String)>) -> Self {
        let names: BTreeMap<u32, Arc<str>> = entries
            .into_iter()
            .map(|(id, name)| (id, name.into()))
            .collect();
        Self {
            ids: names
                .iter()
                .map(|(&id, name)| (Arc::clone(name), id))
                .collect(),
            names,
        }
    }

    /// How many ids are in use.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, allocating the next unused one if it has none. Returns `None` only
    /// when all `u32` ids are spent.
    pub fn get_or_assign(&mut self, name: &str) -> Option<u32> {
        if let Some(id) = self.get(name) {
            return Some(id);
        }
        let next = self
            .names
            .last_key_value()
            .map_or(UNLABELED, |(&id, _)| id)
            .checked_add(1)
            .filter(|&id| id != EXTERNAL_CODE)?;
        self.insert(next, name);
        Some(next)
    }

    /// Records `id` for `name`, as the kernel's table now has it.
    pub fn insert(&mut self, id: u32, name: &str) {
        let name: Arc<str> = name.into();
        self.ids.insert(Arc::clone(&name), id);
        self.names.insert(id, name);
    }

    /// Forgets `id`, taken back out of the kernel's table.
    pub fn remove(&mut self, id: u32) {
        if let Some(name) = self.names.remove(&id) {
            self.ids.remove(&name);
        }
    }

    pub fn name_of(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(AsRef::as_ref)
    }

    /// The name of `id` as the registry holds it, for a caller that keeps it: events name
    /// thousands of flows a second without copying a name.
    pub fn shared_name_of(&self, id: u32) -> Option<&Arc<str>> {
        self.names.get(&id)
    }

    /// Entries present here and not in `older`: what must be written to the kernel.
    pub fn added_since(&self, older: &Self) -> Vec<(u32, &str)> {
        self.ids
            .iter()
            .filter(|(name, _)| older.get(name).is_none())
            .map(|(name, &id)| (id, name.as_ref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_are_never_reused() {
        let mut r = Registry::default();
        assert_eq!(r.get_or_assign("a.org"), Some(1));
        assert_eq!(r.get_or_assign("b.org"), Some(2));
        assert_eq!(r.get_or_assign("a.org"), Some(1));
        let reloaded = Registry::from_entries([(1, "a.org".into()), (7, "z.org".into())]);
        let mut next = reloaded.clone();
        assert_eq!(next.get_or_assign("c.org"), Some(8));
        assert_eq!(next.added_since(&reloaded), [(8, "c.org")]);
        assert_eq!(next.name_of(7), Some("z.org"));
    }

    #[test]
    fn ids_taken_back_out_are_forgotten_both_ways() {
        let mut r = Registry::from_entries([(1, "a.org".into())]);
        r.insert(2, "b.org");
        assert_eq!(
            (r.get("b.org"), r.name_of(2), r.len()),
            (Some(2), Some("b.org"), 2)
        );
        r.remove(2);
        assert_eq!((r.get("b.org"), r.name_of(2), r.len()), (None, None, 1));
        assert_eq!(
            r.get_or_assign("c.org"),
            Some(2),
            "the highest id in use decides"
        );
    }
}
