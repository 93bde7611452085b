//! Making sure the pin directory is on a BPF file system. Pins are what keep programs and maps
//! alive after the daemon exits, and on some hosts (this project's CI among them) nothing
//! mounts bpffs at /sys/fs/bpf.

use std::{ffi::CString, fs, io, os::unix::fs::DirBuilderExt, path::Path};

use anyhow::{Context as _, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Creates `dir` (mode 0700) on a BPF file system, mounting bpffs at /sys/fs/bpf first when
/// `dir` is under it and nothing is mounted there.
pub fn ensure_pin_dir(dir: &Path) -> Result<bool> {
    let mut mounted = false;
    if dir.starts_with(DEFAULT_BPFFS) && !is_bpffs(Path::new(DEFAULT_BPFFS))? {
        mount_bpffs(Path::new(DEFAULT_BPFFS))?;
        mounted = true;
    }
    let parent = dir
        .ancestors()
        .skip(1)
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(parent)? {
        bail!(
            "pin directory {} is not on a BPF file system; choose a directory under a bpffs \
             mount (for example {DEFAULT_BPFFS}/enforcer) or mount one with `mount -t bpf bpf DIR`",
            dir.display()
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    Ok(mounted)
}

fn is_bpffs(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type == BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {}", target.display()));
    }
    Ok(())
}
