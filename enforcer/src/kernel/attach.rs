//! The table of programs and the hooks they attach to, and the three ways a hook gets its
//! program: a fresh attach pinned as a link, an atomic in-place replacement of an existing
//! pinned link (restart or upgrade: the hook is never empty), or a forced detach (teardown).

use std::{collections::HashMap, fs::File, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program,
    ProgramFd, links::FdLink,
};
use enforcer_common::names;
use serde::Serialize;

use super::bpf_sys;
use crate::{kernel::cgroupfs::CgroupRoot, paths::PinDir};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sock,
    SockAddr,
    Skb(CgroupSkbAttachType),
}

pub struct Hook {
    pub program: &'static str,
    pub attach_point: &'static str,
    kind: Kind,
}

/// Every program the daemon attaches, in attach order: sockets are tagged, and pod addresses
/// learned, before any check that reads them can run.
pub const HOOKS: [Hook; 7] = [
    Hook {
        program: names::PROG_SOCK_CREATE,
        attach_point: "cgroup/sock_create",
        kind: Kind::Sock,
    },
    Hook {
        program: names::PROG_EGRESS,
        attach_point: "cgroup_skb/egress",
        kind: Kind::Skb(CgroupSkbAttachType::Egress),
    },
    Hook {
        program: names::PROG_CONNECT4,
        attach_point: "cgroup/connect4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: names::PROG_CONNECT6,
        attach_point: "cgroup/connect6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: names::PROG_SENDMSG4,
        attach_point: "cgroup/sendmsg4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: names::PROG_SENDMSG6,
        attach_point: "cgroup/sendmsg6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: names::PROG_INGRESS,
        attach_point: "cgroup_skb/ingress",
        kind: Kind::Skb(CgroupSkbAttachType::Ingress),
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct AttachedProgram {
    pub program: &'static str,
    pub attach_point: &'static str,
    pub link_pin: PathBuf,
    pub link_id: u32,
    pub prog_id: u32,
    /// "attached" (new link) or "replaced" (program swapped into an existing pinned link).
    pub how: &'static str,
}

/// Loads every program into the kernel (verifier) before any hook changes, so a program the
/// kernel refuses leaves existing enforcement exactly as it was. The programs are loaded side
/// by side, one thread each, so that loading takes about as long as the slowest program's
/// verification (enf_ingress, most of the total) rather than the sum: `bpf_check()` takes
/// the global `bpf_verifier_lock` only for loaders without CAP_BPF/CAP_SYS_ADMIN (since Linux
/// 5.2, kernel/bpf/verifier.c), and the daemon runs as root, so its loads are verified in
/// parallel. If several are refused, the first in [`HOOKS`] order is the error, as when they
/// were loaded one after another.
pub fn load_all(ebpf: &mut aya::Ebpf) -> Result<()> {
    let mut programs: HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let loads = HOOKS
        .iter()
        .map(|hook| {
            programs
                .remove(hook.program)
                .map(|program| (hook, program))
                .ok_or_else(|| anyhow!("the eBPF object has no program {}", hook.program))
        })
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let loading: Vec<_> = loads
            .into_iter()
            .map(|(hook, program)| scope.spawn(move || load_one(hook, program)))
            .collect();
        loading.into_iter().try_for_each(|load| {
            load.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

fn load_one(hook: &Hook, program: &mut Program) -> Result<()> {
    let loaded = match hook.kind {
        Kind::Sock => <&mut CgroupSock>::try_from(program)?.load(),
        Kind::SockAddr => <&mut CgroupSockAddr>::try_from(program)?.load(),
        Kind::Skb(_) => <&mut CgroupSkb>::try_from(program)?.load(),
    };
    loaded.with_context(|| {
        format!(
            "loading program {} ({}) into the kernel",
            hook.program, hook.attach_point
        )
    })
}

/// Puts every loaded program on its hook at `root`, pinning new links under `pins`.
pub fn attach_all(
    ebpf: &mut aya::Ebpf,
    root: &CgroupRoot,
    pins: &PinDir,
) -> Result<Vec<AttachedProgram>> {
    std::fs::create_dir_all(pins.links())
        .with_context(|| format!("creating {}", pins.links().display()))?;
    let mut attached = Vec::new();
    for hook in &HOOKS {
        attached.push(attach_one(ebpf, hook, root, pins).with_context(|| {
            format!(
                "attaching {} to {} at {}",
                hook.program,
                hook.attach_point,
                root.dir.display()
            )
        })?);
    }
    Ok(attached)
}

fn attach_one(
    ebpf: &mut aya::Ebpf,
    hook: &Hook,
    root: &CgroupRoot,
    pins: &PinDir,
) -> Result<AttachedProgram> {
    let pin = pins.link(hook.program);
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("no program {}", hook.program))?;
    if pin.exists() {
        let link = bpf_sys::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let info = bpf_sys::cgroup_link_info(&link)?;
        if info.cgroup_id != root.id {
            bail!(
                "the pinned link {} is attached to cgroup id {}, not to --cgroup-root {} (id {}); \
                 run `enforcer teardown` for the old root first",
                pin.display(),
                info.cgroup_id,
                root.dir.display(),
                root.id
            );
        }
        let fd = program_fd(program, hook.kind)?;
        bpf_sys::link_update(&link, fd).context("replacing the program in the pinned link")?;
        let info = bpf_sys::cgroup_link_info(&link)?;
        return Ok(AttachedProgram {
            program: hook.program,
            attach_point: hook.attach_point,
            link_pin: pin,
            link_id: info.link_id,
            prog_id: info.prog_id,
            how: "replaced",
        });
    }
    let cgroup =
        File::open(&root.dir).with_context(|| format!("opening {}", root.dir.display()))?;
    // aya 0.14 with CgroupAttachMode::AllowMultiple fails with EINVAL on kernels with
    // BPF links; links are multi-attach anyway, so Single coexists with other tools' programs.
    let link: FdLink = match hook.kind {
        Kind::Sock => {
            let p = <&mut CgroupSock>::try_from(program)?;
            let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
        Kind::SockAddr => {
            let p = <&mut CgroupSockAddr>::try_from(program)?;
            let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
        Kind::Skb(attach_type) => {
            let p = <&mut CgroupSkb>::try_from(program)?;
            let id = p.attach(&cgroup, attach_type, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
    };
    link.pin(&pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    let info = bpf_sys::cgroup_link_info(bpf_sys::obj_get(&pin)?)?;
    Ok(AttachedProgram {
        program: hook.program,
        attach_point: hook.attach_point,
        link_pin: pin,
        link_id: info.link_id,
        prog_id: info.prog_id,
        how: "attached",
    })
}

fn program_fd(program: &mut aya::programs::Program, kind: Kind) -> Result<&ProgramFd> {
    Ok(match kind {
        Kind::Sock => <&CgroupSock>::try_from(&*program)?.fd()?,
        Kind::SockAddr => <&CgroupSockAddr>::try_from(&*program)?.fd()?,
        Kind::Skb(_) => <&CgroupSkb>::try_from(&*program)?.fd()?,
    })
}

/// Detaches every pinned link under `pins` (even if a running daemon still holds it) and
/// removes the pins. Returns the programs that were detached.
pub fn detach_all(pins: &PinDir) -> Result<Vec<&'static str>> {
    let mut detached = Vec::new();
    for hook in &HOOKS {
        let pin = pins.link(hook.program);
        if !pin.exists() {
            continue;
        }
        let link = bpf_sys::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
        bpf_sys::link_detach(&link)
            .with_context(|| format!("detaching {} ({})", hook.program, pin.display()))?;
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        detached.push(hook.program);
    }
    Ok(detached)
}
