//! A fleet of hosts under one policy kept in etcd: how the daemon and `enforcer fleet` reach
//! the cluster ([`client`]), and where things live under the prefix ([`keys`]). The daemon's
//! side (following the policy, publishing its heartbeat) is `daemon::fleet_source`; the
//! administrator's (`fleet apply`, `fleet status`) is `cli::fleet`.

pub mod client;
pub mod keys;
