//! The enforced state, and how a change to it is carried out.
//!
//! Every change (a new policy, a grant, a revocation, an expiry, a trust bundle or an
//! attestation that changes what is allowed) is first computed as a [`Change`]: the policy,
//! the edge record, the edges in force and their compiled map entries. Nothing on the host
//! has changed at that point. [`State::commit`] then carries the change out through a
//! [`KernelSide`], the only code that writes the maps, saves the edge record and ends
//! connections, in the one order that never lets the host, the disk and this state disagree:
//!
//! 1. new domains get their ids recorded;
//! 2. the edge record is saved, before the swap: a grant in force but not on disk would be
//!    lost silently by a restart; so is the policy of an apply, which a restart starts from;
//! 3. the live connections are listed, then the inactive slot is written and swapped in
//!    under the next generation;
//! 4. this state adopts the change; the counters of removed edges are cleared, and the live
//!    connections the new policy refuses are ended.
//!
//! A failure at 1 to 3 undoes what was done (the record saved again as it was, the saved
//! policy put back, the new ids forgotten) and leaves this state exactly as it was. Unit tests below hold those rules
//! against a fake kernel side.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Result;
use enforcer_policy::Policy;

use super::restart::SavedPolicy;
use crate::{
    kernel::revocation::Ending,
    pipeline::{
        compile::Compiled,
        edges::{Book, LiveEdge},
        registry::Registry,
    },
    trust::bundles::TrustState,
};

/// The policy in force and what it resolved to.
pub struct State {
    pub policy: Policy,
    /// The file it came from, as its apply named it.
    pub policy_file: String,
    /// The policy in force as the maps hold it; shared with the maps' record of each slot.
    pub compiled: Arc<Compiled>,
    pub generation: u64,
    /// The edge record as saved in the state dir, and the edges it resolves to.
    pub book: Book,
    pub live: Arc<Vec<LiveEdge>>,
    /// Where each edge index is in `live`, for naming the edges of kernel events.
    pub live_at: Arc<HashMap<u32, usize>>,
    /// The trust bundles the policy names, and what they allow the edges that require them.
    pub trust: TrustState,
}

/// What a change puts in force.
pub struct Change {
    pub policy: Policy,
    pub book: Book,
    pub live: Vec<LiveEdge>,
    pub compiled: Compiled,
    /// New trust bundles, when the change brings its own (a policy apply); otherwise those
    /// in force stay.
    pub trust: Option<TrustState>,
}

/// A change carried out.
pub struct Committed {
    pub generation: u64,
    /// The live connections it ended; `None` when they could not be ended (the kernel drops
    /// their packets all the same).
    pub endings: Option<Vec<Ending>>,
    /// How long writing and swapping the maps took.
    pub maps: Duration,
}

/// Why a change was not carried out; each undid what it had done.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Ids for the new domains could not be recorded.
    #[error(transparent)]
    Record(anyhow::Error),
    /// The edge record could not be saved.
    #[error(transparent)]
    Save(anyhow::Error),
    /// The maps could not be written or swapped; the record was saved again as it was.
    #[error(transparent)]
    Swap(anyhow::Error),
    /// As `Swap`, and the record could not be saved again either.
    #[error("{swap:#} (and the edge record could not be restored: {restore:#})")]
    SwapUnrestored {
        swap: anyhow::Error,
        restore: anyhow::Error,
    },
}

/// Everything a change does to the host. The daemon's implementation writes the pinned maps,
/// the state dir and sock_diag; the tests' records what is asked of it.
pub trait KernelSide {
    /// The live connections before a swap, judged after it.
    type Connections;

    /// Records ids for the domains of `registry` the maps do not know yet; returns them.
    fn record_domains(&mut self, registry: &Registry) -> Result<Vec<u32>>;
    /// Takes back ids recorded for a change that did not happen.
    fn forget_domains(&mut self, ids: &[u32]);
    /// Saves the edge record.
    fn save(&mut self, book: &Book) -> Result<()>;
    /// Saves the policy of an apply as the one in force under `generation`, keeping the
    /// previous one until [`Self::restore_policy`] or the next save.
    fn save_policy(&mut self, policy: &SavedPolicy<'_>, generation: u64) -> Result<()>;
    /// Puts back the saved policy the last [`Self::save_policy`] replaced.
    fn restore_policy(&mut self);
    /// The live connections now, if they can be listed.
    fn connections(&mut self) -> Option<Self::Connections>;
    /// Writes `compiled` into the inactive slot and makes it the active one under
    /// `generation`.
    fn swap_in(&mut self, compiled: &Arc<Compiled>, generation: u64) -> Result<()>;
    /// Clears the counters of every edge index not in `kept`.
    fn forget_edges(&mut self, kept: &[u32]);
    /// Ends the connections (of `before`, or open now) that `compiled` refuses; `None` when
    /// they cannot be listed or ended.
    fn end_refused(
        &mut self,
        before: Option<Self::Connections>,
        compiled: &Compiled,
    ) -> Option<Vec<Ending>>;
}

impl State {
    /// What a starting daemon knows before its first policy is in force: the generation the
    /// maps hold (0 on a fresh host) and the saved edge record.
    pub fn starting(generation: u64, book: Book) -> Self {
        Self {
            policy: Policy {
                version: 1,
                defaults: enforcer_policy::Defaults::default(),
                domains: Vec::new(),
                federation: Vec::new(),
            },
            policy_file: String::new(),
            compiled: Arc::default(),
            generation,
            book,
            live: Arc::default(),
            live_at: Arc::default(),
            trust: TrustState::default(),
        }
    }

    /// Carries `change` out through `kernel` under the next generation (see the module's
    /// documentation for the order); an apply also saves `saving`, its policy's text and
    /// name. On an error nothing changed, here or on the host.
    pub fn commit<K: KernelSide>(
        &mut self,
        change: Change,
        saving: Option<&SavedPolicy<'_>>,
        kernel: &mut K,
    ) -> Result<Committed, CommitError> {
        let Change {
            policy,
            book,
            live,
            compiled,
            trust,
        } = change;
        let compiled = Arc::new(compiled);
        let recorded = kernel
            .record_domains(&compiled.registry)
            .map_err(CommitError::Record)?;
        if let Err(err) = kernel.save(&book) {
            kernel.forget_domains(&recorded);
            return Err(CommitError::Save(err));
        }
        let generation = self.generation + 1;
        if let Some(saving) = saving
            && let Err(err) = kernel.save_policy(saving, generation)
        {
            let restored = kernel.save(&self.book);
            kernel.forget_domains(&recorded);
            return Err(match restored {
                Ok(()) => CommitError::Save(err),
                Err(restore) => CommitError::SwapUnrestored { swap: err, restore },
            });
        }
        let before = kernel.connections();
        let swapping = std::time::Instant::now();
        if let Err(swap) = kernel.swap_in(&compiled, generation) {
            let restored = kernel.save(&self.book);
            if saving.is_some() {
                kernel.restore_policy();
            }
            kernel.forget_domains(&recorded);
            return Err(match restored {
                Ok(()) => CommitError::Swap(swap),
                Err(restore) => CommitError::SwapUnrestored { swap, restore },
            });
        }
        let maps = swapping.elapsed();
        self.generation = generation;
        if let Some(trust) = trust {
            self.trust.adopt(trust);
        }
        let live_at = Arc::new(
            live.iter()
                .enumerate()
                .map(|(at, e)| (e.index, at))
                .collect(),
        );
        retire((
            std::mem::replace(&mut self.policy, policy),
            std::mem::replace(&mut self.compiled, compiled),
            std::mem::replace(&mut self.book, book),
            std::mem::replace(&mut self.live, Arc::new(live)),
            std::mem::replace(&mut self.live_at, live_at),
        ));
        let kept: Vec<u32> = self.live.iter().map(|e| e.index).collect();
        kernel.forget_edges(&kept);
        let endings = kernel.end_refused(before, &self.compiled);
        Ok(Committed {
            generation,
            endings,
            maps,
        })
    }
}

impl State {
    /// Puts in force `compiled`, the same policy with its cgroups bound anew (one appeared or
    /// vanished): the generation stays, since the policy did not change, and nothing else is
    /// saved or ended.
    pub fn rebind<K: KernelSide>(&mut self, compiled: Compiled, kernel: &mut K) -> Result<()> {
        let compiled = Arc::new(compiled);
        kernel.swap_in(&compiled, self.generation)?;
        retire(std::mem::replace(&mut self.compiled, compiled));
        Ok(())
    }
}

/// Frees what a commit replaced on a thread of its own, then hands the memory back: at
/// 100,000 edges freeing the previous policy takes tens of milliseconds that neither the
/// client nor anyone waiting for the daemon's lock needs to wait for.
fn retire<T: Send + 'static>(old: T) {
    // Should the thread not start, the closure and `old` with it are freed right here.
    let _ = std::thread::Builder::new()
        .name("retire".into())
        .spawn(move || {
            drop(old);
            super::heap::release_freed_memory();
        });
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;
    use crate::pipeline::edges::Grant;

    /// A kernel side that records what is asked of it, and fails where a test says.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        saved: Vec<Book>,
        fail_record: bool,
        fail_save: bool,
        fail_swap: bool,
        fail_save_policy: bool,
        /// The generation the maps hold.
        active: u64,
    }

    impl KernelSide for Fake {
        type Connections = &'static str;

        fn record_domains(&mut self, _: &Registry) -> Result<Vec<u32>> {
            self.calls.push("record domains".into());
            if self.fail_record {
                return Err(anyhow!("E2BIG"));
            }
            Ok(vec![7])
        }

        fn forget_domains(&mut self, ids: &[u32]) {
            self.calls.push(format!("forget domains {ids:?}"));
        }

        fn save(&mut self, book: &Book) -> Result<()> {
            let what = if *book == Book::default() {
                "empty record"
            } else {
                "new record"
            };
            self.calls.push(format!("save {what}"));
            if self.fail_save && self.saved.is_empty() {
                return Err(anyhow!("disk full"));
            }
            self.saved.push(book.clone());
            Ok(())
        }

        fn save_policy(&mut self, policy: &SavedPolicy<'_>, generation: u64) -> Result<()> {
            self.calls.push(format!(
                "save policy {} as generation {generation}",
                policy.origin
            ));
            if self.fail_save_policy {
                return Err(anyhow!("read-only file system"));
            }
            Ok(())
        }

        fn restore_policy(&mut self) {
            self.calls.push("restore policy".into());
        }

        fn connections(&mut self) -> Option<&'static str> {
            self.calls.push("list connections".into());
            Some("before")
        }

        fn swap_in(&mut self, _: &Arc<Compiled>, generation: u64) -> Result<()> {
            self.calls.push(format!("swap in generation {generation}"));
            if self.fail_swap {
                return Err(anyhow!("EPERM"));
            }
            self.active = generation;
            Ok(())
        }

        fn forget_edges(&mut self, kept: &[u32]) {
            self.calls.push(format!("forget edges but {kept:?}"));
        }

        fn end_refused(
            &mut self,
            before: Option<&'static str>,
            _: &Compiled,
        ) -> Option<Vec<Ending>> {
            self.calls.push(format!(
                "end refused of {} under generation {}",
                before.unwrap_or("none"),
                self.active
            ));
            Some(Vec::new())
        }
    }

    fn policy() -> Policy {
        enforcer_policy::parse("p.yaml", "version: 1\ndomains: []\n").expect("policy")
    }

    fn state() -> State {
        State {
            policy: policy(),
            policy_file: "p.yaml".into(),
            compiled: Arc::default(),
            generation: 4,
            book: Book::default(),
            live: Arc::default(),
            live_at: Arc::default(),
            trust: TrustState::default(),
        }
    }

    fn grant() -> Grant {
        serde_json::from_value(serde_json::json!({
            "id": "g", "from": "a.example", "to": "b.example", "protocol": "tcp",
            "ports": ["443"], "owner": "o", "reason": "r", "not_before": null,
            "created": "2030-03-17T17:46:40Z", "expires": "2030-03-17T18:46:40Z",
        }))
        .expect("a grant as saved")
    }

    /// A change that adds one grant to the record.
    fn change(state: &State) -> Change {
        Change {
            policy: policy(),
            book: state.book.with_grant(grant()),
            live: Vec::new(),
            compiled: Compiled::default(),
            trust: None,
        }
    }

    /// A change (saving `saving`, if any) that `kernel` refuses: the state after it, and why.
    fn refused(kernel: &mut Fake, saving: Option<&SavedPolicy<'_>>) -> (State, CommitError) {
        let mut state = state();
        let err = state
            .commit(change(&state), saving, kernel)
            .err()
            .expect("refused");
        (state, err)
    }

    #[test]
    fn the_record_is_saved_before_the_swap_and_connections_are_ended_after_it() {
        let mut state = state();
        let mut kernel = Fake::default();
        let committed = state
            .commit(change(&state), None, &mut kernel)
            .expect("committed");
        assert_eq!(
            kernel.calls,
            [
                "record domains",
                "save new record",
                "list connections",
                "swap in generation 5",
                "forget edges but []",
                "end refused of before under generation 5",
            ]
        );
        assert_eq!(committed.generation, 5);
        assert_eq!(state.generation, 5);
        assert_eq!(state.book, Book::default().with_grant(grant()));
    }

    #[test]
    fn a_failed_save_changes_nothing_and_takes_the_new_ids_back() {
        let mut kernel = Fake {
            fail_save: true,
            ..Fake::default()
        };
        let (state, err) = refused(&mut kernel, None);
        assert!(matches!(err, CommitError::Save(_)), "{err:?}");
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(
            kernel.calls,
            ["record domains", "save new record", "forget domains [7]"]
        );
        assert_eq!(state.generation, 4);
        assert_eq!(state.book, Book::default());
    }

    #[test]
    fn a_failed_swap_restores_the_saved_record_and_takes_the_new_ids_back() {
        let mut kernel = Fake {
            fail_swap: true,
            ..Fake::default()
        };
        let (state, err) = refused(&mut kernel, None);
        assert!(matches!(err, CommitError::Swap(_)), "{err:?}");
        assert_eq!(
            kernel.calls,
            [
                "record domains",
                "save new record",
                "list connections",
                "swap in generation 5",
                "save empty record",
                "forget domains [7]",
            ]
        );
        assert_eq!(kernel.saved.last(), Some(&Book::default()));
        assert_eq!(state.generation, 4);
        assert_eq!(state.book, Book::default());
    }

    #[test]
    fn ids_that_cannot_be_recorded_stop_the_change_before_anything_is_saved() {
        let mut kernel = Fake {
            fail_record: true,
            ..Fake::default()
        };
        let (state, err) = refused(&mut kernel, None);
        assert!(matches!(err, CommitError::Record(_)), "{err:?}");
        assert_eq!(kernel.calls, ["record domains"]);
        assert_eq!(state.generation, 4);
    }

    #[test]
    fn a_rebinding_keeps_the_generation_and_touches_nothing_but_the_maps() {
        let mut state = state();
        let mut kernel = Fake::default();
        state
            .rebind(Compiled::default(), &mut kernel)
            .expect("rebound");
        assert_eq!(kernel.calls, ["swap in generation 4"]);
        assert_eq!(state.generation, 4);
    }

    #[test]
    fn each_change_carried_out_takes_the_next_generation() {
        let mut state = state();
        let mut kernel = Fake::default();
        for expected in 5..8 {
            let committed = state
                .commit(change(&state), None, &mut kernel)
                .expect("committed");
            assert_eq!(committed.generation, expected);
        }
        kernel.fail_swap = true;
        state
            .commit(change(&state), None, &mut kernel)
            .err()
            .expect("refused");
        kernel.fail_swap = false;
        let committed = state
            .commit(change(&state), None, &mut kernel)
            .expect("committed");
        assert_eq!(
            committed.generation, 8,
            "a failed swap uses up no generation"
        );
    }

    const APPLIED: SavedPolicy<'static> = SavedPolicy {
        origin: "other.yaml",
        text: "version: 1\ndomains: []\n",
        source: None,
        revision: None,
    };

    #[test]
    fn an_apply_saves_its_policy_after_the_record_and_before_the_swap() {
        let mut state = state();
        let mut kernel = Fake::default();
        state
            .commit(change(&state), Some(&APPLIED), &mut kernel)
            .expect("committed");
        assert_eq!(
            kernel.calls,
            [
                "record domains",
                "save new record",
                "save policy other.yaml as generation 5",
                "list connections",
                "swap in generation 5",
                "forget edges but []",
                "end refused of before under generation 5",
            ]
        );
    }

    #[test]
    fn a_policy_that_cannot_be_saved_changes_nothing() {
        let mut kernel = Fake {
            fail_save_policy: true,
            ..Fake::default()
        };
        let (state, err) = refused(&mut kernel, Some(&APPLIED));
        assert!(matches!(err, CommitError::Save(_)), "{err:?}");
        assert_eq!(
            kernel.calls,
            [
                "record domains",
                "save new record",
                "save policy other.yaml as generation 5",
                "save empty record",
                "forget domains [7]",
            ]
        );
        assert_eq!(state.generation, 4);
        assert_eq!(state.book, Book::default());
    }

    #[test]
    fn a_failed_swap_puts_the_saved_policy_back() {
        let mut kernel = Fake {
            fail_swap: true,
            ..Fake::default()
        };
        let (state, _) = refused(&mut kernel, Some(&APPLIED));
        assert_eq!(
            kernel.calls,
            [
                "record domains",
                "save new record",
                "save policy other.yaml as generation 5",
                "list connections",
                "swap in generation 5",
                "save empty record",
                "restore policy",
                "forget domains [7]",
            ]
        );
        assert_eq!(state.generation, 4);
    }
}
