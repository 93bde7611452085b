//! Decision events: what a program decided, written to the `ENF_EVENTS` ring buffer for the
//! daemon to name, log and stream. One record per refused call, handshake or datagram, per
//! live connection a policy change refused, and per new flow that crossed a domain boundary
//! (allowed or let through by audit mode); never one per packet of an allowed connection.

/// Allowed: an edge or a default let the flow cross a boundary.
pub const VERDICT_ALLOWED: u8 = 1;
/// Refused: the caller got `EPERM`, the packet was dropped, or the connection ended.
pub const VERDICT_REFUSED: u8 = 2;
/// The policy refuses the flow; audit mode let it through.
pub const VERDICT_AUDITED: u8 = 3;

/// `connect()`, TCP or UDP.
pub const HOOK_CONNECT: u8 = 1;
/// A datagram sent with an explicit destination on an unconnected UDP socket.
pub const HOOK_SENDMSG: u8 = 2;
/// A handshake or datagram arriving at a receiving socket.
pub const HOOK_INGRESS: u8 = 3;
/// A packet of a live connection re-checked after the policy or its edge changed.
pub const HOOK_ESTABLISHED: u8 = 4;

/// Ports in host order. `pid` and `comm` are those of the calling task in the `connect()` and
/// `sendmsg()` hooks and zero in the packet hooks, which run in no particular task. `cgroup` is
/// the calling task's cgroup id (the `connect()`/`sendmsg()` hooks) or the cgroup of the
/// socket the packet belongs to. A `connect()` happens before the local port is chosen, so
/// its source address and port are often zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time: u64,
    pub generation: u64,
    pub cgroup: u64,
    pub pid: u32,
    /// `Peer::encode` of each end.
    pub from: u32,
    pub to: u32,
    /// Index of the allowing edge, 0 if none.
    pub edge: u32,
    pub sport: u16,
    pub dport: u16,
    pub verdict: u8,
    /// `Reason::code`.
    pub reason: u8,
    /// `PROTO_*` bit.
    pub protocol: u8,
    /// `FAMILY_V4` or `FAMILY_V6`; IPv4 in the first four bytes of the addresses.
    pub family: u8,
    pub hook: u8,
    pub _pad: [u8; 7],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<Event>() == 104);
