//! How the daemon keeps its heap small (issue 16: resident memory at 100,000 edges). The
//! binary allocates with jemalloc (`main.rs`): its threads allocate without contending for one
//! lock, which glibc's single arena made them do (a 100,000-edge apply parses on two threads
//! and took 1.1 s instead of 0.7 s), and its arenas hand freed pages back on request, which
//! glibc's per-thread arenas did not (120 MB resident after such an apply, BENCHMARKS.md).

use std::ptr;

/// `MALLCTL_ARENAS_ALL` of jemalloc's `arena.<i>.purge`: every arena at once.
const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

/// Gives the memory freed by a large parse or apply back to the system. jemalloc keeps freed
/// pages for reuse for about ten seconds; after the parse of a 100,000-edge policy (whose YAML
/// tree is about 30 times the file) that is a hundred megabytes the daemon no longer uses.
pub fn release_freed_memory() {
    // SAFETY: the name is NUL-terminated and names a command that reads and writes nothing,
    // so every pointer is null and the length zero, as jemalloc requires of such a command.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        log::debug!("jemalloc did not purge its arenas (error {status})");
    }
}
