//! Reading a policy file, the same way for `policy check`, `apply`, `plan` and the daemon's
//! `--policy`: only a regular file, at most [`MAX_POLICY_BYTES`], as UTF-8. `/dev/zero` would
//! otherwise be read until memory runs out and a FIFO would block the reader forever.

use std::{
    fs::{FileType, OpenOptions},
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

use enforcer_policy::MAX_POLICY_BYTES;

/// The text of the policy file at `path`, or the one line that says why it cannot be a
/// policy (`FILE: ...`, or `FILE:LINE:COL: ...` for bytes that are not UTF-8).
pub fn read(path: &Path) -> Result<String, String> {
    let name = path.display().to_string();
    let fail = |what: String| format!("{name}: cannot read: {what}");
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the type
    // check below then refuses it. On a regular file the flag changes nothing.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| fail(err.to_string()))?;
    let meta = file.metadata().map_err(|err| fail(err.to_string()))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "it is {}; a policy must be a regular file",
            kind(meta.file_type())
        )));
    }
    let limit = u64::try_from(MAX_POLICY_BYTES).unwrap_or(u64::MAX);
    if meta.len() > limit {
        return Err(enforcer_policy::oversize(&name).to_string());
    }
    // The file may grow while it is read: one byte past the limit is enough to refuse it.
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| fail(err.to_string()))?;
    enforcer_policy::decode(&name, &bytes)
        .map(str::to_owned)
        .map_err(|d| d.to_string())
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
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _, path::PathBuf};

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "enforcer-policy-file-{test}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("creating a scratch dir");
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_regular_utf8_file_is_read() {
        let dir = Dir::new("ok");
        let path = dir.0.join("p.yaml");
        fs::write(&path, "version: 1\n").expect("write");
        assert_eq!(read(&path), Ok("version: 1\n".to_owned()));
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = Dir::new("special");
        let fifo = dir.0.join("fifo");
        let c_path = CString::new(fifo.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let refused = |path: &Path, kind: &str| {
            assert_eq!(
                read(path),
                Err(format!(
                    "{}: cannot read: it is {kind}; a policy must be a regular file",
                    path.display()
                ))
            );
        };
        refused(&fifo, "a FIFO");
        refused(Path::new("/dev/zero"), "a character device");
        refused(&dir.0, "a directory");
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = Dir::new("big");
        let path = dir.0.join("p.yaml");
        let file = fs::File::create(&path).expect("create");
        let len = u64::try_from(MAX_POLICY_BYTES).expect("fits") + 1;
        file.set_len(len).expect("a sparse file");
        assert_eq!(
            read(&path),
            Err(enforcer_policy::oversize(&path.display().to_string()).to_string())
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_placed() {
        let dir = Dir::new("utf8");
        let path = dir.0.join("p.yaml");
        fs::write(&path, b"version: 1\n\xff\n").expect("write");
        assert_eq!(
            read(&path),
            Err(format!(
                "{}:2:1: policy is not valid UTF-8 (byte 0xff)",
                path.display()
            ))
        );
    }
}
