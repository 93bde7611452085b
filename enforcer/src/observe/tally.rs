//! Decisions counted from the kernel's event stream, by verdict, reason and domain pair, and
//! the events the kernel could not deliver. The metrics endpoint serves these counts; the
//! per-pair kernel counters stay the exact figures when events were lost.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc};

/// A word of a fixed vocabulary (a verdict, reason, hook or protocol): borrowed when the
/// daemon names an event, so that naming thousands of events a second allocates none of
/// them; owned when an event is read back.
pub type Word = Cow<'static, str>;

/// One decision kind: `verdict` is `allowed`, `refused` or `audited` (refused by the policy,
/// let through by audit mode); `reason` a `Reason::name`; `from` and `to` domain names or
/// `unlabeled` / `external`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DecisionKey {
    pub verdict: Word,
    pub reason: Word,
    pub from: Arc<str>,
    pub to: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Tally {
    decisions: BTreeMap<DecisionKey, u64>,
    lost: u64,
}

impl Tally {
    pub fn record(&mut self, key: DecisionKey) {
        *self.decisions.entry(key).or_default() += 1;
    }

    /// Sets the kernel's count of events dropped because the ring buffer was full.
    pub fn set_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    pub fn decisions(&self) -> &BTreeMap<DecisionKey, u64> {
        &self.decisions
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_separately() {
        let key = |verdict: &'static str, to: &str| DecisionKey {
            verdict: verdict.into(),
            reason: "no_edge".into(),
            from: "staging".into(),
            to: to.into(),
        };
        let mut tally = Tally::default();
        tally.record(key("refused", "prod"));
        tally.record(key("refused", "prod"));
        tally.record(key("audited", "prod"));
        tally.record(key("refused", "dev"));
        tally.set_lost(3);
        assert_eq!(tally.decisions()[&key("refused", "prod")], 2);
        assert_eq!(tally.decisions()[&key("audited", "prod")], 1);
        assert_eq!(tally.decisions()[&key("refused", "dev")], 1);
        assert_eq!(tally.lost(), 3);
    }
}
