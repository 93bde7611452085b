//! The `enforcer` binary of an earlier commit, for upgrade tests: built once from this
//! repository's history into `target/upgrade-from/COMMIT/` and reused by later runs.

/// The newest commit whose pinned maps are laid out differently from this build's: the
/// parent of a25961a, which shrank `ENF_EDGES` keys from 16 bytes to 12 (`git log --
/// enforcer-common/src/maps.rs`). Every other map has the same layout there, so an upgrade
/// from it is the one a host running the previous layout makes. Move it on when a commit
/// changes a layout again (and add that layout to `enforcer/src/kernel/upgrade.rs`).
pub const PREVIOUS_LAYOUT: &str = "95478a98dc602db8f97cf78cf185ed2d13e3320b";

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// `target/upgrade-from/COMMIT/target/debug/enforcer`, built from `commit` when missing.
///
/// The source comes from `git archive` (no worktree to register or remove; a CI clone has the
/// full history), and it builds with its own target dir so that its artifacts never replace
/// this build's. The first build takes minutes (every dependency at that commit); later runs
/// find the binary. The directory is per commit, so moving the tests to another commit builds
/// that one.
pub fn enforcer_at(commit: &str) -> PathBuf {
    let dir = crate::sandbox::target_root()
        .join("upgrade-from")
        .join(commit);
    let binary = dir.join("target/debug/enforcer");
    if binary.exists() {
        return binary;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root");
    let src = dir.join("src");
    // A build that stopped half way left no binary; its sources are written again whole.
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).expect("creating the source directory of the earlier commit");
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running git archive (the upgrade test needs the repository's history)");
    let unpacked = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.take().expect("piped stdout"))
        .stdout(Stdio::null())
        .status()
        .expect("running tar");
    let archived = archive.wait().expect("waiting for git archive");
    assert!(
        archived.success() && unpacked.success(),
        "could not extract commit {commit} from {} (a shallow clone lacks it: fetch the \
         history)",
        workspace.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "enforcer"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        // Standard output is the caller's: `enforcer-previous` prints the path there.
        .stdout(Stdio::null());
    // The variables cargo sets for this test describe this build's package, not that one.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CARGO_")
            && !matches!(name.to_str(), Some("CARGO_HOME" | "CARGO_TARGET_DIR"))
        {
            build.env_remove(name);
        }
    }
    let built = build.status().expect("running cargo build");
    assert!(
        built.success() && binary.exists(),
        "building enforcer at commit {commit} failed"
    );
    binary
}

/// Pins at `path` a new, empty hash map with `key_size`-byte keys and `value_size`-byte values,
/// named `name`: a map as a build with a layout no version knows would have pinned it.
/// `path` must be on bpffs.
pub fn pin_foreign_map(path: &Path, name: &str, key_size: u32, value_size: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let bpf = |cmd: libc::c_long, attr: &mut [u8; 128]| {
        // SAFETY: `attr` is a zeroed union bpf_attr of 128 bytes (the kernel accepts a larger
        // attr whose tail is zero); pointers in it point at live buffers.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
    };
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries,
    // map_flags (u32 each from offset 0), ..., map_name char[16] at offset 32.
    let mut attr = [0u8; 128];
    for (offset, value) in [BPF_MAP_TYPE_HASH, key_size, value_size, 8]
        .into_iter()
        .enumerate()
    {
        attr[offset * 4..offset * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    attr[32..32 + name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr);
    assert!(
        fd >= 0,
        "creating a map: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path");
    // BPF_OBJ_PIN: pathname u64 at 0, bpf_fd u32 at 8.
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    let pinned = bpf(BPF_OBJ_PIN, &mut attr);
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is the map's descriptor, which nothing else uses; the pin holds the map.
    unsafe { libc::close(fd as i32) };
    assert!(pinned == 0, "pinning a map at {}: {err}", path.display());
}
