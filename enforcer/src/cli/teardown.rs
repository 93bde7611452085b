//! `enforcer teardown`: the only way enforcement is removed. Detaches every pinned link (even
//! while a daemon still holds it) and removes the pins; the maps and every socket's tag are
//! freed when the last reference goes.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cli::terminal;
use crate::{kernel, kernel::cgroupfs::CgroupFs, paths::PinDir};

pub fn run(pins: &PinDir, cgroup_root: Option<&Path>) -> Result<()> {
    // `exists()` says false for a path it may not look at (/sys/fs/bpf is 0700): a user
    // without the right would be told there is nothing to remove while enforcement stays.
    let present = pins
        .path()
        .try_exists()
        .with_context(|| format!("looking for {}", pins.path().display()))?;
    if !present {
        terminal::text(format_args!(
            "nothing to tear down: {} does not exist\n",
            pins.path().display()
        ))?;
        return Ok(());
    }
    if let Some(flag) = cgroup_root {
        let root = CgroupFs::discover()?.root(Some(flag))?;
        for hook in &kernel::attach::HOOKS {
            let pin = pins.link(hook.program);
            if !pin
                .try_exists()
                .with_context(|| format!("looking for {}", pin.display()))?
            {
                continue;
            }
            let link = kernel::bpf_sys::obj_get(&pin)
                .with_context(|| format!("opening {}", pin.display()))?;
            let info = kernel::bpf_sys::cgroup_link_info(&link)?;
            if info.cgroup_id != 0 && info.cgroup_id != root.id {
                bail!(
                    "{} is attached to cgroup id {}, not to --cgroup-root {} (id {}); nothing was removed",
                    pin.display(),
                    info.cgroup_id,
                    root.dir.display(),
                    root.id
                );
            }
        }
    }
    let detached = kernel::attach::detach_all(pins)?;
    let unpinned = kernel::unpin_maps(pins)?;
    terminal::text(format_args!(
        "detached {} program(s) [{}], removed {} map pin(s) and {}\n",
        detached.len(),
        detached.join(", "),
        unpinned.len(),
        pins.path().display()
    ))?;
    Ok(())
}
