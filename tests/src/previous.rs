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
