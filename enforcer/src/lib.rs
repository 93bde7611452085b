//! The enforcer's userspace: a daemon that puts trust-domain boundaries in force in the kernel,
//! and the command line that drives it. One wing per kind of code; imports run downwards in
//! this list, never back up:
//!
//! - [`cli`]: the command-line verbs, one file each. They run here or ask the daemon.
//! - [`daemon`]: the running daemon. Its core is a state machine (`daemon::core`): every
//!   change (apply, grant, revoke, expiry, bundle and cgroup changes) is computed as a value,
//!   then carried out by the one kernel side. Around it: start-up, the control socket, remote
//!   administration and the background duties.
//! - [`why`]: `enforcer why`, the kernel's decision for one flow, reproduced from the live maps
//!   with the kernel's own classification and verdict code (`enforcer_common`).
//! - [`observe`]: what the daemon tells people: decision events, metrics, logs.
//! - [`fleet`]: the fleet's etcd cluster: connecting, the keys, the documents.
//! - [`trust`]: SPIFFE identity: bundles, SVIDs, TLS, attestation.
//! - [`kernel`]: everything that touches the kernel: programs, maps, cgroups, sockets,
//!   netlink.
//! - [`pipeline`]: the pure policy pipeline. A parsed policy (`enforcer_policy`) and the
//!   grants become map entries in `pipeline::compile`.
//! - [`api`]: the control API's wire types, which the daemon computes and the CLI renders.
//!
//! Five leaves at the root serve every wing: [`paths`] (every path the daemon and CLI use),
//! [`state_files`] (the one way files in the state dir are opened),
//! [`regular_file`] (the one way files others may control are read, bounded),
//! [`listener`] (the one way the daemon's endpoints serve connections, bounded) and
//! [`version`] (which build this is).
//!
//! Where a connection's verdict is made: `enforcer_common::verdict::decide`, called by the
//! programs in `enforcer-ebpf/src/programs/`.

mod api;
pub mod cli;
mod daemon;
mod fleet;
mod kernel;
mod listener;
mod observe;
mod paths;
mod pipeline;
#[cfg(test)]
mod privileged_tests;
mod regular_file;
mod runtime;
mod state_files;
mod trust;
mod version;
mod why;
