//! `cgroup/sock_create`: gives every new inet socket the domain of the task creating it, and
//! tells the daemon about workload network namespaces it has not seen, so it can learn their
//! addresses before anyone connects to them.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_current_pid_tgid, bpf_get_netns_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};
use enforcer_common::maps::{NetnsSeen, NewNetns, ORIGIN_CREATOR, SockTag};

use crate::{
    identity,
    maps::{HOST, NETNS, NOTIFY},
    policy,
};

/// Socket creation is never refused: identity is recorded here and judged when the socket
/// is used.
const PROCEED: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn enf_sock_new(ctx: SockContext) -> i32 {
    if let Some(active) = policy::active() {
        // SAFETY: the context is the program's own.
        let netns = unsafe { bpf_get_netns_cookie(ctx.sock.cast()) };
        let tag = identity::tag_if_untagged(
            ctx.sock.cast(),
            identity::new_tag(active.slot, ORIGIN_CREATOR, netns),
        );
        note_namespace(&tag);
    }
    PROCEED
}

#[inline(always)]
fn note_namespace(tag: &SockTag) {
    let Some(host) = HOST.get(0) else {
        return;
    };
    if tag.netns == 0 || tag.netns == host.netns {
        return;
    }
    // SAFETY: the helper takes no arguments; the upper half is the process id.
    let pid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    let seen = NetnsSeen { pid, _pad: 0 };
    if NETNS.insert(tag.netns, seen, BPF_NOEXIST.into()).is_ok() {
        let notice = NewNetns {
            netns: tag.netns,
            pid,
            domain: tag.domain,
        };
        // A full buffer loses the notice, not the namespace: the daemon also rescans ENF_NETNS.
        let _ = NOTIFY.output(notice, 0);
    }
}
