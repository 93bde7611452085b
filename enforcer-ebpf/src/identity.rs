//! Which domain a socket belongs to: its creator's nearest bound ancestor cgroup, recorded in
//! socket storage when the socket is created.

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_sk_storage_get,
    },
};
use core::ffi::c_void;
use enforcer_common::maps::{FLOW_UNKNOWN, MAX_CGROUP_DEPTH, SockTag, UNLABELED};

use crate::{maps::TAGS, policy};

/// Domain of the current task: the binding of its deepest bound ancestor cgroup (itself
/// included), or [`UNLABELED`]. Walks from the root down because
/// `bpf_get_current_ancestor_cgroup_id` returns 0 past the task's own level, which ends the
/// walk without knowing the depth in advance.
#[inline(always)]
pub fn current_domain(slot: u32) -> u32 {
    let mut domain = UNLABELED;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the helper takes a plain integer.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        if let Some(bound) = policy::binding(slot, id) {
            domain = bound;
        }
    }
    domain
}

/// A tag for a socket the current task creates (or uses first) in namespace `netns`.
#[inline(always)]
pub fn new_tag(slot: u32, origin: u8, netns: u64) -> SockTag {
    SockTag {
        domain: current_domain(slot),
        origin,
        flow: FLOW_UNKNOWN,
        _pad: [0; 2],
        // SAFETY: the helper takes no arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns,
    }
}

/// The tag stored on `sk`, if any. `sk` must be a socket pointer the verifier accepts for
/// `bpf_sk_storage_get` (the context in `cgroup/sock_create`, `ctx->sk` in `sock_addr`, or a
/// referenced socket from `bpf_sk_lookup_*`).
#[inline(always)]
pub fn tag_of(sk: *mut c_void) -> Option<SockTag> {
    // SAFETY: flags 0 never creates; a non-null result points at a live SockTag.
    let tag = unsafe { bpf_sk_storage_get(TAGS.as_ptr(), sk, core::ptr::null_mut(), 0) };
    if tag.is_null() {
        None
    } else {
        // SAFETY: checked non-null above; the storage holds a SockTag.
        Some(unsafe { *tag.cast::<SockTag>() })
    }
}

/// The tag stored on `sk`, read in place: for a tag that may be absent and is read after
/// other work. With a copied `Option<SockTag>`, LLVM may load the payload of a `None` from a
/// stack slot nothing wrote and discard it; Linux 6.1's verifier rejects such reads of
/// uninitialised stack ("invalid read from stack", seen in `cgroup_skb/ingress`), which
/// later kernels allow for privileged loaders. A pointer that may be null is never read
/// speculatively.
#[inline(always)]
pub fn tag_in_place(sk: *mut c_void) -> Option<&'static SockTag> {
    // SAFETY: flags 0 never creates; a non-null result points at a SockTag that lives as long
    // as the socket, which outlives this program run.
    unsafe {
        bpf_sk_storage_get(TAGS.as_ptr(), sk, core::ptr::null_mut(), 0)
            .cast::<SockTag>()
            .as_ref()
    }
}

/// The tag stored on `sk`, in place and writable, for the programs that keep its `flow` byte
/// (see `conns`). Read in place for the reason given at [`tag_in_place`].
#[inline(always)]
pub fn tag_mut(sk: *mut c_void) -> Option<&'static mut SockTag> {
    // SAFETY: as in `tag_in_place`; the storage is the socket's own, and a program only ever
    // writes its one-byte `flow` field, which any reader sees whole.
    unsafe {
        bpf_sk_storage_get(TAGS.as_ptr(), sk, core::ptr::null_mut(), 0)
            .cast::<SockTag>()
            .as_mut()
    }
}

/// Stores `tag` on `sk` unless it already has one, and returns the tag in force.
#[inline(always)]
pub fn tag_if_untagged(sk: *mut c_void, tag: SockTag) -> SockTag {
    let mut init = tag;
    // SAFETY: with F_CREATE the helper initialises new storage from `init` and returns the
    // existing value if there is one.
    let stored = unsafe {
        bpf_sk_storage_get(
            TAGS.as_ptr(),
            sk,
            core::ptr::from_mut(&mut init).cast(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    };
    if stored.is_null() {
        // Storage allocation failed (memory pressure); judge with the computed tag anyway.
        tag
    } else {
        // SAFETY: checked non-null above.
        unsafe { *stored.cast::<SockTag>() }
    }
}
