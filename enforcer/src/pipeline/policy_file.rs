//! Reading a policy file, the same way for `policy check`, `apply`, `plan` and the daemon's
//! `--policy`: only a regular file, at most [`MAX_POLICY_BYTES`], as UTF-8. `/dev/zero` would
//! otherwise be read until memory runs out and a FIFO would block the reader forever.

use std::path::Path;

use enforcer_policy::MAX_POLICY_BYTES;

use crate::regular_file::{self, ReadError};

/// The text of the policy file at `path`, or the one line that says why it cannot be a
/// policy (`FILE: ...`, or `FILE:LINE:COL: ...` for bytes that are not UTF-8).
pub fn read(path: &Path) -> Result<String, String> {
    let name = path.display().to_string();
    let limit = u64::try_from(MAX_POLICY_BYTES).unwrap_or(u64::MAX);
    let bytes = regular_file::read(path, limit).map_err(|err| match err {
        ReadError::TooLarge { .. } => enforcer_policy::oversize(&name).to_string(),
        ReadError::NotRegular(kind) => {
            format!("{name}: cannot read: it is {kind}; a policy must be a regular file")
        }
        ReadError::Io(err) => format!("{name}: cannot read: {err}"),
    })?;
    enforcer_policy::decode(&name, &bytes)
        .map(str::to_owned)
        .map_err(|d| d.to_string())
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _};

    use super::*;

    /// A scratch directory, removed when dropped.
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().expect("creating a scratch dir")
    }

    #[test]
    fn a_regular_utf8_file_is_read() {
        let dir = scratch();
        let path = dir.path().join("p.yaml");
        fs::write(&path, "version: 1\n").expect("write");
        assert_eq!(read(&path), Ok("version: 1\n".to_owned()));
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = scratch();
        let fifo = dir.path().join("fifo");
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
        refused(dir.path(), "a directory");
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = scratch();
        let path = dir.path().join("p.yaml");
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
        let dir = scratch();
        let path = dir.path().join("p.yaml");
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
