//! Every program the daemon attaches, one file per hook, with what only that hook does. What
//! several share stays beside this folder: the `connect`/`sendmsg` judgement (`sock_addr`),
//! how both ends of a flow are classified (`destination`, `source`, `identity`), the
//! decision (`policy`, over `enforcer_common::verdict::decide`) and the steps that carry a
//! verdict out (`settle`).
//!
//! | program | section | file |
//! |---|---|---|
//! | `enf_sock_new` | `cgroup/sock_create` | `sock_create.rs` |
//! | `enf_connect4`, `enf_connect6` | `cgroup/connect4`, `cgroup/connect6` | `connect.rs` |
//! | `enf_sendmsg4`, `enf_sendmsg6` | `cgroup/sendmsg4`, `cgroup/sendmsg6` | `sendmsg.rs` |
//! | `enf_ingress` | `cgroup_skb/ingress` | `ingress.rs` |
//! | `enf_egress` | `cgroup_skb/egress` | `egress.rs` |
//!
//! The daemon finds each program by its function name (`enforcer_common::names::PROG_*`) and
//! attaches it by its section's type, so neither may change without the other side.

mod connect;
mod egress;
mod ingress;
mod sendmsg;
mod sock_create;
