//! The daemon's one async runtime, for the work that talks to other systems on their schedule
//! rather than the kernel's: policy sources (etcd), the SPIFFE Workload API client and
//! bundle-endpoint polling. The etcd, gRPC and TLS client crates all run on tokio; every
//! feature takes its `Handle` from here rather than starting a runtime of its own, so a daemon
//! runs at most one, whatever it is configured with.
//!
//! It is built on first use: a daemon configured with none of those features starts no
//! thread for it (each thread that allocates costs its own malloc arena, issue 16). Nothing on
//! the kernel's path waits on it; the control socket, metrics and attestation servers keep
//! their own bounded threads (`listener.rs`), so a stalled peer of an async task cannot hold
//! up `status` or `edge revoke`.

use std::sync::OnceLock;

use anyhow::{Context as _, Result};
use tokio::runtime::{Builder, Handle, Runtime};

/// Two workers: the sources and clients spend their time waiting on the network, and the
/// host's cores belong to its workloads.
const WORKERS: usize = 2;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime's handle, building the runtime on the first call. It lives as long as the
/// process: the daemon stops by exiting, and tasks end with it.
pub fn handle() -> Result<Handle> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let built = Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .max_blocking_threads(WORKERS)
        .thread_name("enforcer-async")
        .enable_all()
        .build()
        .context("starting the daemon's async runtime")?;
    // Two first callers may race; the loser's runtime is dropped before it ran anything.
    Ok(RUNTIME.get_or_init(|| built).handle().clone())
}
