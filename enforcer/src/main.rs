//! `enforcer`: the daemon that enforces trust-domain boundaries in the kernel, and the CLI that
//! checks and applies policy and shows what is enforced. Everything lives in the library; see
//! its top-level documentation for where each kind of code is.

/// jemalloc rather than glibc's malloc: `daemon/heap.rs` says why.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    enforcer::cli::main()
}
