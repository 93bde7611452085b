//! The event log in the state dir: JSON lines, so that "where was this identity ever used?"
//! has an answer after the fact. When the file passes [`MAX_BYTES`] it becomes
//! `events.jsonl.1`, the older ones shift up and the oldest beyond [`KEPT`] is deleted, so
//! the log never fills the disk. A rename chain is all rotation needs here; a crate for it
//! would bring more than it saves.

use std::{
    fs::{self, File},
    io::{self, ErrorKind, Read as _, Write},
    path::{Path, PathBuf},
};

use crate::state_files;

/// Size at which the current file is rotated.
pub const MAX_BYTES: u64 = 16 << 20;
/// Rotated files kept besides the current one.
pub const KEPT: usize = 4;

pub struct EventLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl EventLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with_limit(path, MAX_BYTES)
    }

    fn open_with_limit(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = state_files::append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
        })
    }

    /// Appends `lines` (whole lines, each ending in its newline) and rotates when the file is
    /// full.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.size += lines.len() as u64;
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..KEPT).rev() {
            match fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = state_files::append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// How much of the log is read at a time: what an `enforcer events` answer holds, however
/// long the log.
const CHUNK: usize = 64 << 10;

/// Writes every line kept at `path` and its rotated files to `out`, oldest first, each ending
/// in a newline (a last line cut short by a crash gets one).
pub fn copy(path: &Path, out: &mut impl Write) -> io::Result<()> {
    // All opened before any is read: a rotation meanwhile renames files, which moves none
    // already open, so no line is written twice or skipped.
    let mut files = Vec::new();
    for file in (1..=KEPT)
        .rev()
        .map(|n| rotated(path, n))
        .chain([path.to_owned()])
    {
        if let Some(f) = state_files::open_if_present(&file)? {
            files.push(f);
        }
    }
    let mut chunk = vec![0; CHUNK];
    for mut file in files {
        let mut last = b'\n';
        loop {
            let read = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let got = chunk.get(..read).unwrap_or_default();
            out.write_all(got)?;
            last = got.last().copied().unwrap_or(last);
        }
        if last != b'\n' {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read(path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        copy(path, &mut out)?;
        Ok(String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect())
    }

    #[test]
    fn rotates_keeps_the_newest_and_reads_oldest_first() {
        let dir = temp_dir("event-log-rotation");
        let path = dir.join("events.jsonl");
        let mut log = EventLog::open_with_limit(&path, 20).unwrap();
        let lines: Vec<String> = (0..20).map(|i| format!("line {i:04}")).collect();
        // Two 10-byte lines per append, so each append fills a file.
        for pair in lines.chunks(2) {
            log.append(format!("{}\n{}\n", pair[0], pair[1]).as_bytes())
                .unwrap();
        }
        let kept = read(&path).unwrap();
        assert_eq!(kept, lines[lines.len() - 2 * KEPT..].to_vec());
        assert!(!rotated(&path, KEPT + 1).exists());
        // Appending again after reopening continues the current file.
        let mut log = EventLog::open_with_limit(&path, 20).unwrap();
        log.append(b"last\n").unwrap();
        assert_eq!(
            read(&path).unwrap().last().map(String::as_str),
            Some("last")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_log_is_copied_whole_and_a_cut_last_line_ends_in_a_newline() {
        let dir = temp_dir("event-log-long");
        let path = dir.join("events.jsonl");
        let older: String = (0..3 * CHUNK / 10).map(|i| format!("{i:09}\n")).collect();
        fs::write(rotated(&path, 1), format!("{older}cut")).unwrap();
        fs::write(&path, "newest\n").unwrap();
        let mut out = Vec::new();
        copy(&path, &mut out).unwrap();
        assert_eq!(out, format!("{older}cut\nnewest\n").into_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_log_reads_as_empty() {
        let dir = temp_dir("event-log-missing");
        assert!(read(&dir.join("events.jsonl")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
