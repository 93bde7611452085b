//! How the daemon keeps its heap small (issue 16: resident memory at 100,000 edges). glibc
//! gives each thread that allocates while another holds the lock an arena of its own, up to
//! eight per core, and never hands an arena's freed pages back to another thread. The
//! daemon's threads mostly wait (on the control socket, the ring buffer, inotify, timers), but
//! a parse on the loader thread or an apply on a client's thread leaves tens of megabytes
//! free in an arena no one else uses: at 100,000 edges one arena took the resident size after
//! an apply from 120 MB to 78 MB (BENCHMARKS.md).

/// Makes every thread share the main arena. Called first thing in `enforcer daemon`, before
/// any thread starts, since an arena once made stays.
pub fn share_one_arena() {
    // SAFETY: mallopt takes two integers and only changes glibc's allocation policy.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if set != 1 {
        log::warn!("could not limit glibc to one malloc arena; the daemon will use more memory");
    }
}

/// Gives the memory freed by a large parse or apply back to the system. glibc keeps freed
/// heap in its arenas; after the parse of a 100,000-edge policy (whose YAML tree is about 30
/// times the file) that is a hundred megabytes the daemon no longer uses.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
