//! The one way the daemon opens files in its state dir. The daemon runs as root and the
//! state dir holds what it trusts at a restart (the policy, the grants) and what it hands to
//! readers (the event log), so it refuses a state dir that anyone else could write into or
//! swap, and it never follows a symbolic link in it: a link planted there could make root
//! overwrite, append to or serve any file on the host (`fs.protected_symlinks` protects only
//! sticky world-writable directories, and only when it is on).
//!
//! Every file here is created 0600: only root reads them; users read through the socket.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, ErrorKind, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const MODE: u32 = 0o600;

/// Creates the state dir 0700 when missing, then checks it and every directory above it, and
/// returns its path with every link resolved, so no later swap of a link changes which
/// directory the daemon uses.
pub fn prepare_dir(path: &Path) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating state dir {}", path.display()))?;
    checked_dir(path)?.with_context(|| format!("state dir {} vanished", path.display()))
}

/// [`prepare_dir`]'s checks of a state dir that exists, without creating one; `None` when
/// there is none yet.
pub fn checked_dir(path: &Path) -> Result<Option<PathBuf>> {
    let dir = match path.canonicalize() {
        Ok(dir) => dir,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("resolving state dir {}", path.display()));
        }
    };
    let owner = nix::unistd::geteuid().as_raw();
    let meta = fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.uid() != owner || meta.mode() & 0o022 != 0 {
        bail!(
            "refusing state dir {}: it is owned by uid {} with mode {:04o}, and the daemon keeps \
             it only in a directory owned by uid {owner} that no group or other user can write \
             (files planted there would be trusted or followed by root); run `chown {owner} {0}` \
             and `chmod go-w {0}`, or choose another --state-dir",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
        );
    }
    // Every directory the path as given passes through counts, links followed hop by hop,
    // not only those above where it ends: whoever may change a link on the way could point
    // the next start at a directory of their choosing.
    let on_the_way = directories_on_the_way(path)
        .with_context(|| format!("resolving state dir {}", path.display()))?;
    for above in dir
        .ancestors()
        .skip(1)
        .chain(on_the_way.iter().map(PathBuf::as_path))
    {
        check_above(&dir, above, owner)?;
    }
    Ok(Some(dir))
}

/// Linux gives up on a path after 40 links (`MAXSYMLINKS`); so does this walk.
const MAX_LINKS: usize = 40;

/// The directories whose entries the resolution of `path` looks up, in order, each link
/// followed from the directory that holds it.
fn directories_on_the_way(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut left: VecDeque<OsString> = std::path::absolute(path)?
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut at = PathBuf::from("/");
    let mut dirs = Vec::new();
    let mut links = 0;
    while let Some(part) = left.pop_front() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => at = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                at.pop();
            }
            Some(Component::Normal(name)) => {
                dirs.push(at.clone());
                let next = at.join(name);
                if fs::symlink_metadata(&next)?.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = fs::read_link(&next)?;
                    for c in target.components().rev() {
                        left.push_front(c.as_os_str().to_owned());
                    }
                } else {
                    at = next;
                }
            }
            Some(Component::CurDir | Component::Prefix(_)) | None => {}
        }
    }
    Ok(dirs)
}

/// Refuses a directory `above` the state dir `dir` that someone other than root or `owner`
/// could change.
fn check_above(dir: &Path, above: &Path, owner: u32) -> Result<()> {
    let meta = fs::metadata(above).with_context(|| format!("reading {}", above.display()))?;
    // Whoever may rename entries of a directory above could swap the state dir for
    // their own. The sticky bit (as on /tmp) lets only an entry's owner rename it.
    let trusted_owner = meta.uid() == 0 || meta.uid() == owner;
    let others_rename = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    if !trusted_owner || others_rename {
        bail!(
            "refusing state dir {}: {} above it is owned by uid {} with mode {:04o}, so \
             another user could replace the state dir; choose a --state-dir whose parents \
             only root can change",
            dir.display(),
            above.display(),
            meta.uid(),
            meta.mode() & 0o7777,
        );
    }
    Ok(())
}

/// Opens a file for reading without following a link; `None` when there is none.
pub fn open_if_present(path: &Path) -> io::Result<Option<File>> {
    match no_follow().read(true).open(path) {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// The whole content of a file; `None` when there is none.
pub fn read_if_present(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some(mut file) = open_if_present(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(Some(bytes))
}

/// Opens a file to append to, created when missing.
pub fn append(path: &Path) -> io::Result<File> {
    no_follow().create(true).append(true).open(path)
}

/// Opens the lock file, created when missing.
pub fn lock_file(path: &Path) -> io::Result<File> {
    no_follow()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Writes `value` as JSON to `path` atomically (a new file renamed over the old one), so a
/// crash leaves either the old record or the new one, never half of one. Compact and
/// streamed: the record of 100,000 edges is saved before every apply takes effect, and
/// indenting it doubled its size (10.6 MB) and the time to write it.
pub fn save_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    replace(path, "json.new", |file| {
        let mut out = io::BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(&mut out, value)?;
        out.flush()
    })
}

/// Writes `text` to `path` atomically, as [`save_json`] does.
pub fn save_text(path: &Path, text: &str) -> Result<()> {
    replace(path, "yaml.new", |mut file| file.write_all(text.as_bytes()))
}

fn replace(path: &Path, extension: &str, write: impl FnOnce(File) -> io::Result<()>) -> Result<()> {
    let tmp = path.with_extension(extension);
    // A new file every time (O_EXCL): one left by a crash is removed first, and whatever a
    // name already points to is never opened, link or not.
    let written = match fs::remove_file(&tmp) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
        _ => no_follow().write(true).create_new(true).open(&tmp),
    }
    .and_then(write);
    written.with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// O_NOFOLLOW makes open fail with ELOOP when the last component is a symbolic link.
fn no_follow() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW).mode(MODE);
    options
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn files_are_new_private_and_links_are_not_followed() {
        let dir = temp_dir("state-files-links");
        let victim = dir.join("victim");
        fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("edges.json.new")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("events.jsonl")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("daemon.lock")).unwrap();

        save_json(&dir.join("edges.json"), &[1, 2]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("edges.json")).unwrap(), "[1,2]");
        let mode = fs::metadata(dir.join("edges.json")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(append(&dir.join("events.jsonl")).is_err());
        assert!(lock_file(&dir.join("daemon.lock")).is_err());
        assert!(read_if_present(&dir.join("events.jsonl")).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dir_others_can_write_is_refused() {
        let dir = temp_dir("state-files-writable");
        let state = dir.join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = prepare_dir(&state).unwrap_err().to_string();
        assert!(err.contains("refusing state dir"), "{err}");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(prepare_dir(&state).unwrap(), state.canonicalize().unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
