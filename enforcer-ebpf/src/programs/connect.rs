//! `cgroup/connect4` and `cgroup/connect6`: judge a TCP or UDP `connect()` before the SYN
//! leaves or the UDP socket is bound to its peer.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::sock_addr::{self, Family, Hook};

#[cgroup_sock_addr(connect4)]
pub fn enf_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, Family::V4, Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn enf_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, Family::V6, Hook::Connect)
}
