//! Every path the daemon and CLI use, in one place. Each is a flag with a default, so several
//! daemons can run side by side (the tests do).

use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/enforcer";
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/enforcer/attest.sock";

/// Where pinned programs' links and maps live: `PIN_DIR/links/PROGRAM`, `PIN_DIR/maps/MAP`.
#[derive(Debug, Clone)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn links(&self) -> PathBuf {
        self.0.join("links")
    }

    pub fn maps(&self) -> PathBuf {
        self.0.join("maps")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    pub fn map(&self, map: &str) -> PathBuf {
        self.maps().join(map)
    }

    /// Where an upgrade pins this build's `map` before renaming it over [`Self::map`]. Not
    /// `MAP.upgrade`: bpffs refuses names with a dot (EPERM, `bpf_lookup` in
    /// kernel/bpf/inode.c).
    pub fn staged_map(&self, map: &str) -> PathBuf {
        self.maps().join(format!("{map}-upgrade"))
    }
}

/// Files the daemon keeps in `--state-dir`.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Held with `flock` while a daemon runs, so two daemons never drive one state.
    pub fn lock(&self) -> PathBuf {
        self.0.join("daemon.lock")
    }

    /// The source of the active policy, as applied: a copy for people to read; a restart
    /// reads [`Self::saved_policy`].
    pub fn active_policy(&self) -> PathBuf {
        self.0.join("active-policy.yaml")
    }

    /// The policy in force with its name and generation, saved before every apply's swap: a
    /// restart starts from it (see `daemon::restart`).
    pub fn saved_policy(&self) -> PathBuf {
        self.0.join("active-policy.json")
    }

    /// The `--policy FILE` the daemon last read (its path and content's SHA-256).
    pub fn policy_file_read(&self) -> PathBuf {
        self.0.join("policy-file.json")
    }

    /// Decision events as JSON lines; older ones in `events.jsonl.1`, `.2`, ...
    pub fn events(&self) -> PathBuf {
        self.0.join("events.jsonl")
    }
}
