//! `cgroup/sock_create`: gives every new inet socket the domain of the task creating it.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use enforcer_common::maps::{ORIGIN_CREATOR, SockTag};

use crate::{identity, policy};

/// Socket creation is never refused: identity is recorded here and judged when the socket
/// is used.
const PROCEED: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn enf_sock_new(ctx: SockContext) -> i32 {
    if let Some(active) = policy::active() {
        let tag = SockTag {
            domain: identity::current_domain(active.slot),
            origin: ORIGIN_CREATOR,
        };
        identity::tag_if_untagged(ctx.sock.cast(), tag);
    }
    PROCEED
}
