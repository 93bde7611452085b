//! The control API between the CLI and the daemon: plain serde types. The daemon computes
//! them, the CLI renders them; nothing here knows how either does its part.

pub mod control;
pub mod edge;
pub mod plan;
pub mod status;
pub mod why;
