//! `cgroup/sendmsg4` and `cgroup/sendmsg6`: judge every UDP datagram sent with an explicit
//! destination (`sendto()`/`sendmsg()` on an unconnected socket). The kernel runs these hooks
//! only when a destination is given; a connected socket's peer was judged at `connect()`.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::sock_addr::{self, Family, Hook};

#[cgroup_sock_addr(sendmsg4)]
pub fn enf_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, Family::V4, Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enf_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, Family::V6, Hook::Sendmsg)
}
