//! Names, map layouts, addresses, and the destination classification and verdict functions
//! shared by the eBPF programs and the daemon.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`, padded by hand
//! and size-checked, so both sides agree on the bytes without relying on compiler layout.
#![cfg_attr(not(test), no_std)]

pub mod address;
pub mod destination;
pub mod event;
pub mod maps;
pub mod names;
pub mod verdict;
