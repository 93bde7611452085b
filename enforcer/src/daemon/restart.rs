//! Where a starting daemon takes its policy from: restarts change nothing.
//!
//! Every apply saves the policy it puts in force (`active-policy.json` in the state dir: the
//! text, the name it was applied under and its generation) before the maps are swapped, as
//! the edge record is. The daemon also records the `--policy FILE` it last read, at start or
//! on a reload (`policy-file.json`: its path and the SHA-256 of its content). A starting
//! daemon takes `--policy FILE` only when there is no saved policy, when the file is another
//! file than the one last read, or when its content changed since; otherwise the policy last
//! applied stays, wherever it came from (`enforcer policy apply other.yaml` included).
//!
//! Fail-closed: a saved record that cannot be read is never replaced by a `--policy FILE`
//! that has not changed, since that file may be older than the policy last applied and could
//! bring back an edge a later apply removed. The daemon then refuses to start and says why;
//! the enforcement a previous daemon pinned stays in force meanwhile.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    api::status::{EtcdSourceStatus, PolicySourceStatus},
    observe::metrics::Reloads,
    paths::StateDir,
    state_files::save_json,
};

/// The SHA-256 of `text`, in lower-case hex.
pub fn fingerprint(text: &str) -> String {
    crate::trust::hex(&Sha256::digest(text.as_bytes()))
}

/// Where the policy came from at start and how reloads of `--policy FILE` went.
pub struct Source {
    /// `--policy FILE` as given.
    pub path: PathBuf,
    /// The file as the daemon last read it.
    pub read: FileRead,
    /// Whether the file took over at start ("taken") or the policy last applied stayed
    /// ("kept"), and why.
    pub at_start: &'static str,
    pub reason: String,
    /// Why the last reload was refused; `None` once one is applied.
    pub last_reload_error: Option<String>,
    pub reloads: Reloads,
    /// When the policy last came from the file (read at start or reloaded).
    pub last_sync: Option<jiff::Timestamp>,
    /// Set when the policy comes from the fleet's etcd cluster rather than `--policy FILE`.
    pub fleet: Option<FleetSync>,
}

impl Source {
    pub fn status(&self) -> PolicySourceStatus {
        let (kind, revision, last_sync, stale, last_error, etcd) = match &self.fleet {
            None => (
                "file",
                None,
                self.last_sync,
                false,
                self.last_reload_error.clone(),
                None,
            ),
            Some(fleet) => (
                "etcd",
                fleet.revision,
                fleet.last_sync,
                fleet.stale(),
                fleet.last_error(),
                Some(EtcdSourceStatus {
                    endpoints: fleet.endpoints.clone(),
                    prefix: fleet.prefix.clone(),
                    node: fleet.node.clone(),
                    addresses: Some(fleet.addresses.status()),
                }),
            ),
        };
        PolicySourceStatus {
            file: self.path.display().to_string(),
            sha256: self.read.sha256.clone(),
            at_start: self.at_start.into(),
            reason: self.reason.clone(),
            last_reload_error: self.last_reload_error.clone(),
            kind: kind.into(),
            revision,
            last_sync,
            stale,
            last_error,
            etcd,
        }
    }

    /// What a saved policy records as its source: `None` for a file or a local apply.
    pub fn label(&self) -> Option<String> {
        self.fleet.as_ref().map(FleetSync::label)
    }
}

/// How the fleet's document reaches this node: what `status` and the heartbeat report.
#[derive(Debug, Clone, Default)]
pub struct FleetSync {
    pub endpoints: String,
    pub prefix: String,
    pub node: String,
    /// The revision of the document in force; `None` before any came from the fleet.
    pub revision: Option<i64>,
    /// The last revision tried, in force or refused: a refused one is not tried again.
    pub tried: Option<i64>,
    /// The last time the node found the fleet's document current.
    pub last_sync: Option<jiff::Timestamp>,
    /// Why the last document tried was refused; `None` once one is in force.
    pub refused: Option<String>,
    /// Why the node cannot reach the fleet's cluster now (or it has no quorum): while set,
    /// the node is stale, enforcing the last good document.
    pub unreachable: Option<String>,
    /// The pod addresses this node publishes and the other nodes' it loads.
    pub addresses: crate::fleet::addresses::FleetAddresses,
}

impl FleetSync {
    pub fn stale(&self) -> bool {
        self.unreachable.is_some()
    }

    pub fn last_error(&self) -> Option<String> {
        self.unreachable.clone().or_else(|| self.refused.clone())
    }

    /// The source a saved policy records, so that a start knows it came from this fleet.
    pub fn label(&self) -> String {
        format!("etcd {}", self.prefix)
    }
}

/// A `--policy FILE` as the daemon read it: where, and the fingerprint of what it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    pub path: String,
    pub sha256: String,
}

impl FileRead {
    pub fn new(path: &Path, text: &str) -> Self {
        Self {
            path: path.display().to_string(),
            sha256: fingerprint(text),
        }
    }
}

/// The policy in force as saved, before the swap that put it in force.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    /// The file name its apply gave (`--policy FILE` or `policy apply FILE`).
    pub origin: String,
    /// The generation it was put in force under.
    pub generation: u64,
    /// The SHA-256 of `text`, checked when it is read back.
    pub sha256: String,
    pub text: String,
    /// Where it came from when not a file or a local apply (`etcd PREFIX`).
    #[serde(default)]
    pub source: Option<String>,
    /// Its revision in that source.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// What an apply saves: the text it put in force, its name, and where it came from.
pub struct SavedPolicy<'a> {
    pub origin: &'a str,
    pub text: &'a str,
    pub source: Option<&'a str>,
    pub revision: Option<i64>,
}

#[derive(Serialize)]
struct SavedRef<'a> {
    origin: &'a str,
    generation: u64,
    sha256: String,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
}

/// Saves `policy` as the one in force under `generation`, atomically.
pub fn save(state: &StateDir, policy: &SavedPolicy<'_>, generation: u64) -> Result<()> {
    save_json(
        &state.saved_policy(),
        &SavedRef {
            origin: policy.origin,
            generation,
            sha256: fingerprint(policy.text),
            text: policy.text,
            source: policy.source,
            revision: policy.revision,
        },
    )
}

/// The saved policy; `None` when none was ever saved, an error when one is there but cannot
/// be read or is not what was saved.
pub fn load(state: &StateDir) -> Result<Option<Saved>> {
    let path = state.saved_policy();
    let Some(bytes) = read_if_present(&path)? else {
        return Ok(None);
    };
    let saved: Saved = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a saved policy", path.display()))?;
    if fingerprint(&saved.text) != saved.sha256 {
        anyhow::bail!(
            "{}: the saved text does not match its SHA-256 (the file was damaged)",
            path.display()
        );
    }
    Ok(Some(saved))
}

/// The record of the `--policy FILE` last read: the file, and why it was refused if it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    #[serde(flatten)]
    pub read: FileRead,
    /// Why the daemon refused this content (a reload refused); a restart over the same
    /// content keeps the policy in force and reports this again.
    #[serde(default)]
    pub refused: Option<String>,
}

/// Records `read` as the `--policy FILE` last read, atomically.
pub fn save_file_read(state: &StateDir, read: &FileRead, refused: Option<&str>) -> Result<()> {
    save_json(
        &state.policy_file_read(),
        &FileRecord {
            read: read.clone(),
            refused: refused.map(str::to_owned),
        },
    )
}

/// The `--policy FILE` last read; `None` when none was recorded.
pub fn load_file_read(state: &StateDir) -> Result<Option<FileRecord>> {
    let path = state.policy_file_read();
    let Some(bytes) = read_if_present(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a record of a policy file", path.display()))
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    crate::state_files::read_if_present(path).with_context(|| format!("reading {}", path.display()))
}

/// Which policy a starting daemon puts in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// `--policy FILE`, for this reason.
    Take(Taken),
    /// The policy last applied; `--policy FILE` is the one last read, unchanged.
    Keep,
}

/// Why `--policy FILE` takes over at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// No policy was saved: a first start (or the state dir was emptied).
    NoSavedPolicy,
    /// A policy was saved, but no `--policy FILE` read was recorded with it.
    NotReadBefore,
    /// The daemon last read another file (it was started with another `--policy`).
    OtherFile { last: String },
    /// The file's content changed since the daemon last read it.
    Changed,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSavedPolicy => write!(f, "no policy was saved in the state dir"),
            Self::NotReadBefore => write!(f, "no read of a --policy file was recorded"),
            Self::OtherFile { last } => write!(f, "the daemon last read another file ({last})"),
            Self::Changed => write!(f, "the file changed since the daemon last read it"),
        }
    }
}

/// Decides where a start takes its policy from: `saved` says whether a policy was saved,
/// `last` is the `--policy FILE` read last recorded, `now` the file as read now.
pub fn decide(saved: bool, last: Option<&FileRead>, now: &FileRead) -> Start {
    if !saved {
        return Start::Take(Taken::NoSavedPolicy);
    }
    match last {
        None => Start::Take(Taken::NotReadBefore),
        Some(last) if last.path != now.path => Start::Take(Taken::OtherFile {
            last: last.path.clone(),
        }),
        Some(last) if last.sha256 != now.sha256 => Start::Take(Taken::Changed),
        Some(_) => Start::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str, text: &str) -> FileRead {
        FileRead::new(Path::new(path), text)
    }

    #[test]
    fn fingerprints_are_sha256_and_tell_contents_apart() {
        assert_eq!(
            fingerprint(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(fingerprint("version: 1\n"), fingerprint("version: 1\n"));
        assert_ne!(fingerprint("version: 1\n"), fingerprint("version: 1 \n"));
    }

    #[test]
    fn an_unchanged_file_keeps_the_policy_last_applied() {
        let file = read("/etc/enforcer/policy.yaml", "a");
        assert_eq!(decide(true, Some(&file), &file.clone()), Start::Keep);
    }

    #[test]
    fn a_changed_file_takes_over() {
        let last = read("/etc/enforcer/policy.yaml", "a");
        let now = read("/etc/enforcer/policy.yaml", "b");
        assert_eq!(decide(true, Some(&last), &now), Start::Take(Taken::Changed));
    }

    #[test]
    fn another_file_takes_over_even_with_the_same_content() {
        let last = read("/etc/enforcer/a.yaml", "a");
        let now = read("/etc/enforcer/b.yaml", "a");
        assert_eq!(
            decide(true, Some(&last), &now),
            Start::Take(Taken::OtherFile {
                last: "/etc/enforcer/a.yaml".into()
            })
        );
    }

    #[test]
    fn without_a_saved_policy_the_file_takes_over() {
        let file = read("/p.yaml", "a");
        assert_eq!(
            decide(false, Some(&file), &file.clone()),
            Start::Take(Taken::NoSavedPolicy)
        );
        assert_eq!(
            decide(false, None, &file),
            Start::Take(Taken::NoSavedPolicy)
        );
        assert_eq!(decide(true, None, &file), Start::Take(Taken::NotReadBefore));
    }

    #[test]
    fn a_saved_policy_reads_back_and_a_damaged_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("enforcer-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let state = StateDir::new(&dir);
        assert!(load(&state).expect("none saved").is_none());
        assert!(load_file_read(&state).expect("none saved").is_none());
        let policy = SavedPolicy {
            origin: "other.yaml",
            text: "version: 1\n",
            source: Some("etcd /enforcer"),
            revision: Some(12),
        };
        save(&state, &policy, 7).expect("saved");
        let saved = load(&state).expect("readable").expect("saved");
        assert_eq!(
            (saved.origin.as_str(), saved.generation, saved.text.as_str()),
            ("other.yaml", 7, "version: 1\n")
        );
        assert_eq!(
            (saved.source.as_deref(), saved.revision),
            (Some("etcd /enforcer"), Some(12))
        );
        let file = read("/p.yaml", "x");
        save_file_read(&state, &file, Some("bad")).expect("saved");
        assert_eq!(
            load_file_read(&state).expect("readable"),
            Some(FileRecord {
                read: file,
                refused: Some("bad".into())
            })
        );

        let damaged = std::fs::read_to_string(state.saved_policy())
            .expect("saved")
            .replace("version: 1", "version: 2");
        std::fs::write(state.saved_policy(), damaged).expect("written");
        let err = load(&state).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err:#}");
        std::fs::write(state.saved_policy(), "{").expect("written");
        assert!(load(&state).is_err());
        std::fs::write(state.policy_file_read(), "[]").expect("written");
        assert!(load_file_read(&state).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
