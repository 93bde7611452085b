//! A peer retransmits a SYN that got no answer (after 1 s, 3 s, 7 s, ... by default for about
//! two minutes, `tcp_syn_retries`), and each copy reaches the listener's check again. The
//! first copy is counted and reported; the copies within [`RETRANSMISSION_WINDOW`] of it are
//! dropped silently, so one refused connection attempt is one refusal.

use enforcer_common::maps::AcceptKey;

use crate::maps::REFUSALS;

/// Longer than the default SYN retransmission span (127 s for `tcp_syn_retries` = 6).
const RETRANSMISSION_WINDOW: u64 = 180 * 1_000_000_000;

/// Whether the refused handshake `key` at boot-time nanosecond `now` is a new attempt rather
/// than a retransmission of one already refused.
#[inline(always)]
pub fn first(key: &AcceptKey, now: u64) -> bool {
    // SAFETY: the time is copied out at once.
    let since = unsafe { REFUSALS.get(key) }.copied();
    if since.is_some_and(|since| now.wrapping_sub(since) < RETRANSMISSION_WINDOW) {
        return false;
    }
    // A full LRU map forgets the oldest refusal; a retransmission of it then reports again.
    let _ = REFUSALS.insert(key, now, 0);
    true
}
