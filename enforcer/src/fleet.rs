//! A fleet of hosts under one policy kept in etcd: how the daemon and `enforcer fleet` reach
//! the cluster ([`client`]), where things live under the prefix ([`keys`]), and the pod
//! addresses nodes publish for each other ([`addresses`]). The daemon's side (following the
//! policy, publishing its heartbeat and addresses, loading its peers') is
//! `daemon::fleet_source`; the administrator's (`fleet apply`, `fleet status`) is
//! `cli::fleet`.

pub mod addresses;
pub mod client;
pub mod keys;
