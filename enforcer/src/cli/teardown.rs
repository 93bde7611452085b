//! `enforcer teardown`: the only way enforcement is removed. Detaches every pinned link (even
//! while a daemon still holds it) and removes the pins; the maps and every socket's tag are
//! freed when the last reference goes.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::{kernel, kernel::cgroupfs::CgroupFs, paths::PinDir};

pub fn run(pins: &PinDir, cgroup_root: Option<&Path>) -> Result<()> {
    if !pins.path().exists() {
        println!(
            "nothing to tear down: {} does not exist",
            pins.path().display()
        );
        return Ok(());
    }
    if let Some(flag) = cgroup_root {
        let root = CgroupFs::discover()?.root(Some(flag))?;
        for hook in &kernel::attach::HOOKS {
            let pin = pins.link(hook.program);
            if !pin.exists() {
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
    println!(
        "detached {} program(s) [{}], removed {} map pin(s) and {}",
        detached.len(),
        detached.join(", "),
        unpinned.len(),
        pins.path().display()
    );
    Ok(())
}
