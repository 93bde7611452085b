//! IP protocol numbers of the transports enforcement covers, and their policy bits.

use enforcer_common::maps::{PROTO_TCP, PROTO_UDP};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// UDP-Lite shares UDP's header and hooks, and would otherwise be an unjudged UDP.
const IPPROTO_UDPLITE: u32 = 136;

/// `tcp_states.h`: TCP_LISTEN, as in `bpf_sock::state`.
pub const TCP_LISTEN: u32 = 10;

/// The `PROTO_*` bit of a socket's or packet's protocol, `None` for those not judged.
#[inline(always)]
pub fn bit(ip_protocol: u32) -> Option<u32> {
    match ip_protocol {
        IPPROTO_TCP => Some(PROTO_TCP),
        IPPROTO_UDP | IPPROTO_UDPLITE => Some(PROTO_UDP),
        _ => None,
    }
}
