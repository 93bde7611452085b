//! The policy pipeline, pure: no kernel and no daemon. A policy file is read
//! ([`policy_file`]), its edges and the grants are resolved into the edges in force
//! ([`edges`], [`grants`]), and [`compile`] turns them into the map entries the programs read.

pub mod clock;
pub mod compile;
pub mod edges;
pub mod grants;
pub mod pair_table;
pub mod policy_file;
pub mod registry;
