//! Reading a file that must be a regular file of bounded size (a policy, a trust bundle), at a
//! path someone else may control: whatever sits there is never opened for reading unless it is
//! a regular file, so a FIFO cannot block the reader and `/dev/zero` cannot fill its memory,
//! and a device is never opened at all (opening some, such as `/dev/watchdog` or a tape, acts).
//! Symlinks are followed: the file they end at is the one checked and read.

use std::{
    fmt,
    fs::{File, FileType, OpenOptions},
    io::{self, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    },
    path::Path,
};

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// It could not be opened or read (it is missing, say).
    Io(io::Error),
    /// It is not a regular file: what it is instead ("a FIFO").
    NotRegular(&'static str),
    /// It holds more than `limit` bytes: `size`, when its size said so before it was read
    /// (`None`: it grew past the limit while it was read).
    TooLarge { limit: u64, size: Option<u64> },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "{err}"),
            Self::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            Self::TooLarge {
                limit,
                size: Some(size),
            } => write!(f, "it holds {size} bytes, over the limit of {limit}"),
            Self::TooLarge { limit, size: None } => {
                write!(f, "it holds more than the limit of {limit} bytes")
            }
        }
    }
}

/// The bytes of the regular file at `path`, at most `limit` of them.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    // O_PATH (Linux 2.6.39) resolves the path, symlinks included, without opening the file
    // itself: nothing is read, no FIFO waits for a writer, no device driver's open runs.
    // fstat on such a descriptor (Linux 3.6) tells what the path ends at.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = handle.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            limit,
            size: Some(meta.len()),
        });
    }
    // Opening the descriptor's /proc/self/fd entry opens the very file just checked, even if
    // the path was replaced since (it is a link to the open file, not to the path), with the
    // same permission checks as opening the path. O_NONBLOCK is belt and braces: on a regular
    // file it changes nothing.
    let file = reopen(&handle).map_err(ReadError::Io)?;
    // The file may grow while it is read: one byte past the limit is enough to refuse it.
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(ReadError::TooLarge { limit, size: None });
    }
    Ok(bytes)
}

fn reopen(handle: &File) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _};

    use super::*;

    /// A scratch directory, removed when dropped.
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().expect("creating a scratch dir")
    }

    fn refusal(path: &Path, limit: u64) -> String {
        read(path, limit).expect_err("refused").to_string()
    }

    #[test]
    fn a_regular_file_is_read_through_a_symlink() {
        let dir = scratch();
        let path = dir.path().join("f");
        fs::write(&path, "hello").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert_eq!(read(&link, 5).expect("read"), b"hello");
        assert_eq!(refusal(&link, 4), "it holds 5 bytes, over the limit of 4");
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = scratch();
        let fifo = dir.path().join("fifo");
        let c_path = CString::new(fifo.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let link = dir.path().join("to-fifo");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        assert_eq!(refusal(&fifo, 10), "it is a FIFO, not a regular file");
        assert_eq!(refusal(&link, 10), "it is a FIFO, not a regular file");
        assert_eq!(
            refusal(Path::new("/dev/zero"), 10),
            "it is a character device, not a regular file"
        );
        assert_eq!(
            refusal(dir.path(), 10),
            "it is a directory, not a regular file"
        );
        assert!(matches!(
            read(&dir.path().join("missing"), 10),
            Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::NotFound
        ));
    }
}
