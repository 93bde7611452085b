//! The event log in the state dir: JSON lines, so that "where was this identity ever used?"
//! has an answer after the fact. When the file passes [`MAX_BYTES`] it becomes
//! `events.jsonl.1`, the older ones shift up and the oldest beyond [`KEPT`] is deleted, so
//! the log never fills the disk. A rename chain is all rotation needs here; a crate for it
//! would bring more than it saves.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, ErrorKind, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

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
        let file = append(path)?;
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
        self.file = append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Every line kept at `path` and its rotated files, oldest first.
pub fn read(path: &Path) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let files = (1..=KEPT)
        .rev()
        .map(|n| rotated(path, n))
        .chain([path.to_owned()]);
    for file in files {
        match File::open(&file) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    lines.push(line?);
                }
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(lines)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Only root reads the log: it names workloads, addresses and processes.
fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
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
    fn a_missing_log_reads_as_empty() {
        let dir = temp_dir("event-log-missing");
        assert!(read(&dir.join("events.jsonl")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
