//! What follows a verdict on a new flow, the same at every hook that judges one (`connect()`,
//! unconnected `sendmsg()`, and arrivals at `cgroup_skb/ingress`): a new crossing is counted
//! and reported once; an allowed UDP flow is remembered so its replies pass; a refused
//! datagram passes when it belongs to a flow its peer opened and may still open; a refusal
//! is counted and reported once. What differs between the hooks is behind [`Hook`].

use enforcer_common::{
    maps::{FLOW_INBOUND, FLOW_OUTBOUND, FlowKey},
    verdict::{Peer, Verdict},
};

use crate::{counters, events::Decision, flows, policy::Active};

/// A new flow and its verdict. The verdict and the UDP key are references: held in place, they
/// made LLVM store this struct on the stack whole, bytes no path had written included (a
/// `None`'s payload, say), and the verifier refuses to read a register nothing wrote ("R2
/// !read_ok" in `cgroup/connect4`, "R3 !read_ok" in `cgroup_skb/ingress`, Linux 6.18).
pub struct Flow<'a> {
    pub verdict: &'a Verdict,
    pub from: Peer,
    pub to: Peer,
    /// A `PROTO_*` bit.
    pub protocol: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// Boot-time nanosecond of the decision.
    pub now: u64,
    pub active: &'a Active,
    /// For UDP, the flow's `ENF_FLOWS` key: the judging hook's socket and its peer.
    pub udp: Option<&'a FlowKey>,
    /// `FLOW_OUTBOUND` when the hook's socket sends the datagram, `FLOW_INBOUND` when it
    /// receives it.
    pub direction: u32,
}

/// What a hook adds to the steps after a verdict.
pub trait Hook {
    /// The `HOOK_*` its events carry.
    fn code(&self) -> u8;
    /// Whether an allowed flow is new apart from the UDP flow table: every `connect()`, a
    /// SYN at a listener.
    fn opens(&self, flow: &Flow) -> bool;
    /// Whether the hook at the flow's other end on this host already counted and reported it.
    fn judged_elsewhere(&self) -> bool;
    /// Records an allowed flow where its later packets are checked against it (see `conns`).
    fn remember(&self, flow: &Flow);
    /// Whether a refusal is a new attempt rather than a repeat of one already counted.
    fn first_refusal(&self, flow: &Flow) -> bool;
    /// Emits the decision event, with the flow's addresses and whoever made it happen.
    fn report(&self, decision: &Decision);
}

/// Carries `flow`'s verdict out at `hook`; whether the call or packet may proceed.
#[inline(always)]
pub fn settle(flow: &Flow, hook: &impl Hook) -> bool {
    let verdict = flow.verdict;
    if verdict.allow {
        // A flow inside one domain (or between no domains) is neither counted nor reported,
        // and its replies are judged the same way (both verdicts are symmetric), so it needs
        // no entry in the UDP flow table either: one map lookup less per datagram.
        if verdict.revocable() {
            let mut new_flow = hook.opens(flow);
            if let Some(key) = flow.udp {
                // Evaluated whatever `new_flow` is: a connected UDP socket's flow is
                // remembered too, so that its replies pass.
                new_flow |= flows::open(key, flow.from, flow.to, flow.port, flow.direction);
            }
            // A crossing is counted and reported once per connection or UDP flow.
            if new_flow && !hook.judged_elsewhere() {
                counters::allowed(verdict, flow.from, flow.to, flow.now);
                report(flow, hook);
            }
        }
        hook.remember(flow);
        return true;
    }
    if let Some(key) = flow.udp
        && flows::continues(key, opposite(flow.direction), flow.active, flow.now)
    {
        return true;
    }
    if !hook.first_refusal(flow) {
        return false;
    }
    counters::denied(flow.from, flow.to);
    report(flow, hook);
    false
}

#[inline(always)]
fn report(flow: &Flow, hook: &impl Hook) {
    hook.report(&Decision {
        hook: hook.code(),
        verdict: flow.verdict,
        from: flow.from,
        to: flow.to,
        protocol: flow.protocol,
        generation: flow.active.config.generation,
        now: flow.now,
    });
}

/// The direction of a datagram coming back on a flow.
#[inline(always)]
fn opposite(direction: u32) -> u32 {
    if direction == FLOW_OUTBOUND {
        FLOW_INBOUND
    } else {
        FLOW_OUTBOUND
    }
}
