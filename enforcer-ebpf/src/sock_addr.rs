//! The judgement shared by `connect()` (TCP and UDP) and unconnected UDP `sendmsg()`: both
//! name a destination before anything leaves the host. Returning [`REJECT`] makes the kernel
//! fail the call with `EPERM` at once.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use core::ffi::c_void;
use enforcer_common::{
    event::{HOOK_CONNECT, HOOK_SENDMSG},
    maps::{FAMILY_V4, FLOW_OUTBOUND, ORIGIN_FIRST_USE, PROTO_UDP},
    verdict::Peer,
};

use crate::{
    address::Addr,
    conns,
    destination::{self, Target},
    events::{self, Decision, Origin},
    flows, identity,
    packet::Packet,
    policy, protocol,
    settle::{self, Flow},
};

const PROCEED: i32 = 1;
const REJECT: i32 = 0;

#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `connect()`: every call is a new flow, and a connected socket's later packets are
    /// checked against it.
    Connect,
    /// Unconnected `sendmsg()`: every datagram is judged; only a socket's first datagram to
    /// a peer opens a flow.
    Sendmsg,
}

#[inline(always)]
pub fn judge(ctx: &SockAddrContext, family: Family, hook: Hook) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let sa = unsafe { &*ctx.sock_addr };
    let Some(proto) = protocol::bit(sa.protocol) else {
        return PROCEED;
    };
    let Some(active) = policy::active() else {
        return PROCEED;
    };
    let dst = match family {
        Family::V4 => Addr::v4(sa.user_ip4),
        // A dual-stack socket reaches IPv4 through ::ffff:a.b.c.d; TCP and UDP connect hand
        // those to the IPv4 code directly, so connect4 never runs for them: judged here.
        Family::V6 => Addr::v6(sa.user_ip6),
    };
    // `user_port` holds the port in network byte order in its low 16 bits.
    let dport = sa.user_port as u16;
    let ctx_ptr: *mut c_void = ctx.sock_addr.cast();
    let Target::Peer(to) = destination::resolve(ctx_ptr, active.slot, proto, &dst, dport) else {
        return PROCEED;
    };
    // SAFETY: `sk` is always set in sock_addr contexts.
    let sk: *mut c_void = unsafe { sa.__bindgen_anon_1.sk }.cast();
    let from = Peer::of_domain(source_domain(ctx_ptr, sk, active.slot));
    let port = u16::from_be(dport);
    let now = policy::now();
    let verdict = active.decide(from, to, proto, port, now);
    // Only UDP needs the cookie; TCP connects skip the helper call.
    let key;
    let udp = if proto == PROTO_UDP {
        // SAFETY: `ctx_ptr` is the program's own context.
        key = flows::key(unsafe { bpf_get_socket_cookie(ctx_ptr) }, &dst, dport);
        Some(&key)
    } else {
        None
    };
    let flow = Flow {
        verdict: &verdict,
        from,
        to,
        protocol: proto,
        port,
        now,
        active: &active,
        udp,
        direction: FLOW_OUTBOUND,
    };
    let caller = Caller {
        hook,
        sk,
        dst: &dst,
        dport,
    };
    if settle::settle(&flow, &caller) {
        PROCEED
    } else {
        REJECT
    }
}

/// The socket calling `connect()` or `sendmsg()`, and where to.
struct Caller<'a> {
    hook: Hook,
    sk: *mut c_void,
    dst: &'a Addr,
    /// Network byte order.
    dport: u16,
}

impl settle::Hook for Caller<'_> {
    #[inline(always)]
    fn code(&self) -> u8 {
        match self.hook {
            Hook::Connect => HOOK_CONNECT,
            Hook::Sendmsg => HOOK_SENDMSG,
        }
    }

    /// Every `connect()`; an unconnected `sendmsg()` opens a flow only with the first
    /// datagram to a peer, which `ENF_FLOWS` tells.
    #[inline(always)]
    fn opens(&self, _flow: &Flow) -> bool {
        self.hook == Hook::Connect
    }

    /// The sender's hook is the first to see a flow.
    #[inline(always)]
    fn judged_elsewhere(&self) -> bool {
        false
    }

    /// A connected socket's later packets are checked against its judgement, which a
    /// connected UDP socket also leaves by cookie for the daemon.
    #[inline(always)]
    fn remember(&self, flow: &Flow) {
        if self.hook != Hook::Connect {
            return;
        }
        let state = conns::judged(
            flow.verdict,
            flow.from,
            flow.to,
            flow.protocol,
            flow.port,
            flow.active,
        );
        conns::remember(self.sk, state);
        if let Some(key) = flow.udp {
            if flow.verdict.revocable() {
                conns::remember_udp(key.cookie, &state);
            } else {
                conns::forget_udp(key.cookie);
            }
        }
    }

    /// Every refused call fails, and is counted and reported.
    #[inline(always)]
    fn first_refusal(&self, _flow: &Flow) -> bool {
        true
    }

    #[inline(always)]
    fn report(&self, decision: &Decision) {
        events::emit(decision, &ends(self.sk, self.dst, self.dport), Origin::Task);
    }
}

/// The flow's addresses: the socket's local address and port as bound so far (a TCP socket
/// gets its port only after `connect()` returns from this hook) and the destination.
#[inline(always)]
fn ends(sk: *mut c_void, dst: &Addr, dport: u16) -> Packet {
    let sk = sk.cast::<aya_ebpf::bindings::bpf_sock>();
    // SAFETY: `sk` is the context's socket; its address fields are readable in this hook.
    let (src, sport) = unsafe {
        let src = if dst.family == FAMILY_V4 {
            Addr::v4((*sk).src_ip4)
        } else {
            Addr::v6((*sk).src_ip6)
        };
        (src, ((*sk).src_port as u16).to_be())
    };
    Packet {
        src,
        dst: *dst,
        sport,
        dport,
        transport: 0,
    }
}

/// The calling socket's domain. A socket created before enforcement has no tag; it gets one
/// now from the calling task, which for a socket used once is its creator.
#[inline(always)]
fn source_domain(ctx: *mut c_void, sk: *mut c_void, slot: u32) -> u32 {
    match identity::tag_of(sk) {
        Some(tag) => tag.domain,
        None => {
            // SAFETY: `ctx` is the program's own context.
            let netns = unsafe { bpf_get_netns_cookie(ctx) };
            identity::tag_if_untagged(sk, identity::new_tag(slot, ORIGIN_FIRST_USE, netns)).domain
        }
    }
}
