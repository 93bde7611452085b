//! The compiled federation: the port ranges of every domain pair, in one table sorted by
//! pair. At 100,000 pairs a map of per-pair vectors costs a tree node and an allocation per
//! pair on every apply; this is three flat vectors, built with one sort, searched by
//! bisection and compared with the previous policy's table in one merge walk.

use std::cmp::Ordering;

use enforcer_common::maps::PortRange;

/// (from, to) domain ids.
pub type Pair = (u32, u32);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairTable {
    /// Sorted, without repeats.
    pairs: Vec<Pair>,
    /// The ranges of `pairs[i]` are `ranges[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
    ranges: Vec<PortRange>,
}

impl PairTable {
    /// The table of `entries`, given in scan order: the ranges of one pair keep the order in
    /// which they come.
    pub fn from_entries(mut entries: Vec<(Pair, PortRange)>) -> Self {
        // Stable, so each pair's ranges stay in scan order.
        entries.sort_by_key(|entry| entry.0);
        let mut table = Self {
            pairs: Vec::new(),
            ends: Vec::new(),
            ranges: Vec::with_capacity(entries.len()),
        };
        for (pair, range) in entries {
            if table.pairs.last() != Some(&pair) {
                table.pairs.push(pair);
                table.ends.push(table.ranges.len() as u32);
            }
            table.ranges.push(range);
            if let Some(end) = table.ends.last_mut() {
                *end += 1;
            }
        }
        table
    }

    /// The ranges from `pair.0` to `pair.1`, if any edge joins them.
    pub fn get(&self, pair: Pair) -> Option<&[PortRange]> {
        let at = self.pairs.binary_search(&pair).ok()?;
        Some(self.ranges_at(at))
    }

    /// Every pair with its ranges, in pair order.
    pub fn iter(&self) -> impl Iterator<Item = (Pair, &[PortRange])> {
        self.pairs
            .iter()
            .enumerate()
            .map(|(at, &pair)| (pair, self.ranges_at(at)))
    }

    /// The pairs whose ranges differ between `self` and `newer`, with the ranges of each on
    /// both sides (empty where a side has none), in pair order.
    pub fn changes<'a>(
        &'a self,
        newer: &'a Self,
    ) -> impl Iterator<Item = (Pair, &'a [PortRange], &'a [PortRange])> {
        let (mut old, mut new) = (self.iter().peekable(), newer.iter().peekable());
        std::iter::from_fn(move || {
            loop {
                // A side that has run out sorts after every pair of the other.
                let order = match (old.peek(), new.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some((o, _)), Some((n, _))) => o.cmp(n),
                };
                let next = match order {
                    Ordering::Less => old.next().map(|(pair, was)| (pair, was, &[][..])),
                    Ordering::Greater => new.next().map(|(pair, now)| (pair, &[][..], now)),
                    Ordering::Equal => {
                        let (pair, was) = old.next()?;
                        let (_, now) = new.next()?;
                        Some((pair, was, now))
                    }
                };
                match next {
                    Some((_, was, now)) if was == now => {}
                    other => return other,
                }
            }
        })
    }

    fn ranges_at(&self, at: usize) -> &[PortRange] {
        let start = at.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.ranges[start as usize..self.ends[at] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, edge: u32) -> PortRange {
        PortRange {
            first,
            last: first,
            protocols: 1,
            edge,
            ..PortRange::default()
        }
    }

    #[test]
    fn pairs_are_sorted_and_keep_their_ranges_in_order() {
        let table = PairTable::from_entries(vec![
            ((2, 1), range(80, 1)),
            ((1, 2), range(443, 2)),
            ((2, 1), range(22, 3)),
        ]);
        assert_eq!(table.get((2, 1)), Some(&[range(80, 1), range(22, 3)][..]));
        assert_eq!(table.get((1, 2)), Some(&[range(443, 2)][..]));
        assert_eq!(table.get((1, 3)), None, "pairs are directed and exact");
        let pairs: Vec<Pair> = table.iter().map(|(pair, _)| pair).collect();
        assert_eq!(pairs, [(1, 2), (2, 1)]);
    }

    #[test]
    fn changes_list_added_removed_and_altered_pairs_only() {
        let old = PairTable::from_entries(vec![
            ((1, 2), range(80, 1)),
            ((1, 3), range(80, 2)),
            ((2, 3), range(80, 3)),
        ]);
        let new = PairTable::from_entries(vec![
            ((1, 2), range(80, 1)),
            ((2, 3), range(81, 3)),
            ((3, 1), range(80, 4)),
        ]);
        let changes: Vec<_> = old.changes(&new).collect();
        assert_eq!(
            changes,
            [
                ((1, 3), &[range(80, 2)][..], &[][..]),
                ((2, 3), &[range(80, 3)][..], &[range(81, 3)][..]),
                ((3, 1), &[][..], &[range(80, 4)][..]),
            ]
        );
        assert_eq!(new.changes(&new).count(), 0);
    }
}
