//! `cgroup_skb/ingress`: judges what arrives at a socket in the enforced subtree before the
//! application sees it: a TCP handshake reaching a listener (dropped, the connection never
//! completes and `accept()` never returns it) and every UDP datagram. Traffic from other
//! hosts is only ever judged here; local senders were also judged at their own egress.
//! Every later packet of an established TCP connection is checked against its judgement
//! (see `conns`), so a connection whose edge ended gets nothing more through.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_fullsock},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use enforcer_common::{
    event::HOOK_INGRESS,
    maps::{FLOW_INBOUND, FLOW_UNKNOWN, PROTO_TCP, PROTO_UDP, SockTag},
    verdict::Peer,
};

use crate::{
    conns,
    destination::Target,
    events::{self, Decision},
    flows, identity,
    maps::HOST,
    packet::{self, Packet},
    policy,
    protocol::{self, TCP_LISTEN},
    refusals,
    settle::{self, Flow},
    source,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn enf_ingress(ctx: SkBuffContext) -> i32 {
    judge(&ctx)
}

#[inline(always)]
fn judge(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reading the context's socket field; the helper accepts a null-checked pointer.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: `sk` is the context's non-null socket.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: checked non-null; a full socket's fields are readable.
    let (ip_protocol, state) = unsafe { ((*sk).protocol, (*sk).state) };
    let Some(proto) = protocol::bit(ip_protocol) else {
        return PASS;
    };
    // An established TCP connection was judged when it was set up; each packet is only
    // checked against that judgement.
    if proto == PROTO_TCP && state != TCP_LISTEN {
        let tag = identity::tag_mut(sk.cast());
        let allowed = conns::check(ctx, sk.cast(), tag, proto, false);
        return if allowed { PASS } else { DROP };
    }
    let Some(active) = policy::active() else {
        return PASS;
    };
    let Some(packet) = packet::parse(ctx) else {
        // A TCP or UDP socket only receives its own transport; a packet whose header cannot
        // be found hides its ports, so it is not let through to a judged socket.
        return DROP;
    };
    // Only a SYN can open a connection at a listener: the rest of a handshake answers a
    // SYN-ACK that the listener sent only for a SYN this check let through (a SYN cookie too
    // is the listener's answer to such a SYN), so it needs no judgement of its own. Judging
    // it would also find no sender when the client closed meanwhile.
    if proto == PROTO_TCP && !packet::is_tcp_open(ctx, &packet) {
        return PASS;
    }
    let mut tag = identity::tag_mut(sk.cast());
    if proto == PROTO_TCP
        && let Some(listener) = tag.as_deref_mut()
        && listener.flow != FLOW_UNKNOWN
    {
        // A socket that connected once (and was disconnected) can listen; the sockets it
        // accepts get a copy of its tag, which must not claim a flow for them.
        listener.flow = FLOW_UNKNOWN;
    }
    let tag = tag.as_deref();
    let sender = source::resolve(ctx, active.slot, proto, &packet, in_pod(tag));
    let Target::Peer(from) = sender.target else {
        return PASS;
    };
    let to = tag.map_or(Peer::Unlabeled, |t| Peer::of_domain(t.domain));
    let port = u16::from_be(packet.dport);
    let now = policy::now();
    let verdict = active.decide(from, to, proto, port, now);
    let key;
    let udp = if proto == PROTO_UDP {
        // SAFETY: the context is the program's own.
        let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
        key = flows::key(cookie, &packet.src, packet.sport);
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
        direction: FLOW_INBOUND,
    };
    let arrival = Arrival {
        ctx,
        packet: &packet,
        judged: sender.judged,
    };
    if settle::settle(&flow, &arrival) {
        PASS
    } else {
        DROP
    }
}

/// A packet arriving at a listener or a UDP socket, and whether its sender's hook on this
/// host already judged the flow.
struct Arrival<'a> {
    ctx: &'a SkBuffContext,
    packet: &'a Packet,
    judged: bool,
}

impl settle::Hook for Arrival<'_> {
    #[inline(always)]
    fn code(&self) -> u8 {
        HOOK_INGRESS
    }

    /// A TCP flow opens with its SYN, the only TCP packet judged here; a UDP flow is new
    /// when `ENF_FLOWS` did not know it.
    #[inline(always)]
    fn opens(&self, flow: &Flow) -> bool {
        flow.udp.is_none()
    }

    #[inline(always)]
    fn judged_elsewhere(&self) -> bool {
        self.judged
    }

    /// An accepted TCP connection's socket does not exist yet: its judgement waits for it
    /// under the four-tuple. UDP has no connection to remember beyond its flow.
    #[inline(always)]
    fn remember(&self, flow: &Flow) {
        if flow.udp.is_none() && flow.verdict.revocable() {
            let state = conns::judged(
                flow.verdict,
                flow.from,
                flow.to,
                flow.protocol,
                flow.port,
                flow.active,
            );
            conns::accepted(&packet::four_tuple(self.packet, false), &state);
        }
    }

    /// A retransmitted SYN was counted and reported with its first copy; every refused
    /// datagram is counted.
    #[inline(always)]
    fn first_refusal(&self, flow: &Flow) -> bool {
        flow.udp.is_some() || refusals::first(&packet::four_tuple(self.packet, false), flow.now)
    }

    #[inline(always)]
    fn report(&self, decision: &Decision) {
        events::emit_packet(decision, self.packet, self.ctx.skb.skb.cast());
    }
}

/// Whether a socket was created in a pod's network namespace rather than the host's.
#[inline(always)]
fn in_pod(tag: Option<&SockTag>) -> bool {
    let Some(host) = HOST.get(0) else {
        return false;
    };
    tag.is_some_and(|t| t.netns != 0 && t.netns != host.netns)
}
