//! What the running kernel must offer, probed before the daemon changes anything on the host.
//! Nothing is guessed from version numbers: each program type, map type and helper the
//! embedded object uses is tried with a tiny program or map of its own, and cgroup BPF links
//! with a link request the kernel must refuse for its target. A missing one stops the daemon
//! with its name. Optional features are probed the same way and reported by `status`. The
//! verifier is not probed: the daemon's own load of its programs is its test (see
//! [`refused_by_verifier`]), so each program is verified once per start.

use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use aya_obj::{
    Object, ProgramSection,
    generated::{BPF_CALL, BPF_JMP, bpf_func_id, bpf_map_type},
};

use super::{OBJECT, bpf_sys::Attr};
use crate::{
    api::status::Feature,
    kernel::sockdiag::{DiagSocket, SockDiag},
};

/// The oldest kernel the whole suite passes on (Debian 13's, in `cargo xtask vm-test`); named
/// in every refusal so the reader knows what to upgrade to.
pub const MINIMUM: &str = "Linux 6.1";

static OPTIONAL: OnceLock<Vec<Feature>> = OnceLock::new();

/// Probes every required feature (the first one missing is the error) and then the optional
/// ones, remembered for [`optional`] and [`can_destroy_sockets`].
pub fn check() -> Result<()> {
    // A binary built without its programs has nothing to probe; loading it says so.
    if !OBJECT.is_empty() {
        required()?;
    }
    let _ = OPTIONAL.set(vec![sock_destroy()]);
    Ok(())
}

/// The optional features as probed by [`check`] (none before it ran).
pub fn optional() -> Vec<Feature> {
    OPTIONAL.get().cloned().unwrap_or_default()
}

/// Whether `SOCK_DESTROY` works here (see [`check`]).
pub fn can_destroy_sockets() -> bool {
    OPTIONAL
        .get()
        .and_then(|f| f.iter().find(|f| f.name == SOCK_DESTROY))
        .is_some_and(|f| f.enabled)
}

fn lacks(what: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("kernel lacks {what}; enforcer needs {MINIMUM} or later with it (nothing was changed)")
}

fn required() -> Result<()> {
    let mut object = Object::parse(OBJECT).context("parsing the embedded eBPF object")?;
    // Calls into shared functions are linked into each program, so that a program's helpers
    // include those of every function it calls.
    let text: HashSet<usize> = object
        .functions
        .keys()
        .map(|(section, _)| *section)
        .collect();
    object
        .relocate_calls(&text)
        .context("linking the embedded eBPF object's functions")?;

    let mut types = BTreeSet::new();
    let mut helpers = BTreeSet::new();
    for (name, program) in &object.programs {
        let kind = program_type(&program.section)
            .with_context(|| format!("program {name} has an unexpected section"))?;
        types.insert(kind);
        let function = object
            .functions
            .get(&program.function_key())
            .with_context(|| format!("program {name} has no code"))?;
        for insn in &function.instructions {
            // A helper call: BPF_JMP|BPF_CALL with source register 0 (1 is a call to a
            // function of the object, 2 a kfunc); the immediate is the helper's id.
            if u32::from(insn.code) == BPF_JMP | BPF_CALL && insn.src_reg() == 0 {
                helpers.insert((kind, insn.imm));
            }
        }
    }
    for kind in &types {
        let (ty, name, since) = kind.describe();
        if !is_program_supported(ty).with_context(|| format!("probing {name}"))? {
            return Err(lacks(format_args!("{name} programs (Linux {since}+)")));
        }
    }
    let mut map_types = BTreeSet::new();
    for map in object.maps.values() {
        map_types.insert(map.map_type());
    }
    for raw in map_types {
        let known = bpf_map_type::try_from(raw)
            .ok()
            .and_then(|t| MapType::try_from(t).ok())
            .with_context(|| format!("the eBPF object uses unknown map type {raw}"))?;
        if !is_map_supported(known).with_context(|| format!("probing map type {known:?}"))? {
            return Err(lacks(map_type_name(known)));
        }
    }
    cgroup_links()?;
    for (kind, id) in helpers {
        let (ty, name, _) = kind.describe();
        let helper =
            helper(id).with_context(|| format!("the eBPF object calls unknown helper {id}"))?;
        let supported = is_helper_supported(ty, helper)
            .with_context(|| format!("probing helper {} for {name}", helper_name(helper)))?;
        if !supported {
            let since = helper_since(helper).map_or(String::new(), |v| format!(" (Linux {v}+)"));
            return Err(lacks(format_args!(
                "helper {} for {name} programs{since}",
                helper_name(helper)
            )));
        }
    }
    Ok(())
}

/// The last word on what a kernel supports is its verifier, and it speaks when the daemon
/// loads its programs (`kernel::load`, before anything on the host changes): an error from
/// that load becomes a refusal naming the program and the verifier's reason (older verifiers
/// explore more paths before giving up), like the refusals of the probes above.
pub fn refused_by_verifier(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    let what = text
        .lines()
        .next()
        .unwrap_or_default()
        .split(": the BPF_PROG_LOAD")
        .next()
        .unwrap_or_default()
        .trim_start_matches("loading ")
        .trim_end_matches(" into the kernel");
    let why = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with(':')
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .unwrap_or_default();
    lacks(format_args!(
        "a verifier that accepts {what} (it answered: {why})"
    ))
}

/// The program types enforcer attaches, ordered for stable probing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Sock,
    SockAddr,
    Skb,
}

impl Kind {
    /// (type, name, the release that introduced it)
    fn describe(self) -> (ProgramType, &'static str, &'static str) {
        match self {
            Kind::Sock => (ProgramType::CgroupSock, "cgroup_sock", "4.10"),
            Kind::SockAddr => (ProgramType::CgroupSockAddr, "cgroup_sock_addr", "4.17"),
            Kind::Skb => (ProgramType::CgroupSkb, "cgroup_skb", "4.10"),
        }
    }
}

fn program_type(section: &ProgramSection) -> Option<Kind> {
    match section {
        ProgramSection::CgroupSock { .. } => Some(Kind::Sock),
        ProgramSection::CgroupSockAddr { .. } => Some(Kind::SockAddr),
        ProgramSection::CgroupSkb { .. } => Some(Kind::Skb),
        _ => None,
    }
}

fn helper(id: i32) -> Option<BpfHelper> {
    let id = u32::try_from(id).ok()?;
    if id >= bpf_func_id::__BPF_FUNC_MAX_ID as u32 {
        return None;
    }
    // SAFETY: bpf_func_id is a #[repr(u32)] enum whose discriminants are exactly
    // 0..__BPF_FUNC_MAX_ID, and `id` is in that range.
    Some(unsafe { std::mem::transmute::<u32, bpf_func_id>(id) })
}

/// `bpf_sk_storage_get` for `BPF_FUNC_sk_storage_get`.
fn helper_name(helper: BpfHelper) -> String {
    let debug = format!("{helper:?}");
    format!("bpf_{}", debug.strip_prefix("BPF_FUNC_").unwrap_or(&debug))
}

/// The release that added a helper to every program type (`bpf_base_func_proto`), for the
/// helpers that set enforcer's minimum; others reached each program type in its own release.
fn helper_since(helper: BpfHelper) -> Option<&'static str> {
    match helper {
        BpfHelper::BPF_FUNC_loop => Some("5.17"),
        BpfHelper::BPF_FUNC_ringbuf_output
        | BpfHelper::BPF_FUNC_ringbuf_reserve
        | BpfHelper::BPF_FUNC_ringbuf_submit
        | BpfHelper::BPF_FUNC_ringbuf_discard
        | BpfHelper::BPF_FUNC_ktime_get_boot_ns => Some("5.8"),
        _ => None,
    }
}

fn map_type_name(map: MapType) -> String {
    // The map types enforcer uses, with the release that introduced each.
    let (name, since) = match map {
        MapType::Hash => ("BPF_MAP_TYPE_HASH", "3.19"),
        MapType::Array => ("BPF_MAP_TYPE_ARRAY", "3.19"),
        MapType::PerCpuHash => ("BPF_MAP_TYPE_PERCPU_HASH", "4.6"),
        MapType::PerCpuArray => ("BPF_MAP_TYPE_PERCPU_ARRAY", "4.6"),
        MapType::LruHash => ("BPF_MAP_TYPE_LRU_HASH", "4.10"),
        MapType::LpmTrie => ("BPF_MAP_TYPE_LPM_TRIE", "4.11"),
        MapType::SkStorage => ("BPF_MAP_TYPE_SK_STORAGE", "5.2"),
        MapType::RingBuf => ("BPF_MAP_TYPE_RINGBUF", "5.8"),
        other => return format!("map type {other:?}"),
    };
    format!("{name} (Linux {since}+)")
}

/// Cgroup BPF links (`BPF_LINK_CREATE` for cgroup hooks, Linux 5.7): enforcement lives in
/// pinned links, which outlive the daemon and are swapped in place on restart. Probed with a
/// request that names a directory outside cgroupfs as its target: a kernel with cgroup links
/// refuses the target (`EBADF`, from `cgroup_get_from_fd()`), one without refuses the
/// command (`EINVAL`). Nothing is attached either way.
fn cgroup_links() -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
    const BPF_CGROUP_INET_INGRESS: u32 = 0;
    // r0 = 1; exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut load = Attr::new();
    load.put_u32(0, BPF_PROG_TYPE_CGROUP_SKB);
    load.put_u32(4, insns.len() as u32);
    load.put_u64(8, insns.as_ptr() as u64);
    load.put_u64(16, license.as_ptr() as u64);
    let prog = load
        .call(BPF_PROG_LOAD)
        .context("loading a trivial cgroup_skb program to probe cgroup links")?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let not_a_cgroup = File::open("/").context("opening / to probe cgroup links")?;
    let mut link = Attr::new();
    link.put_u32(0, prog.as_raw_fd() as u32);
    link.put_u32(4, not_a_cgroup.as_raw_fd() as u32);
    link.put_u32(8, BPF_CGROUP_INET_INGRESS);
    match link.call(BPF_LINK_CREATE) {
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            Err(lacks("cgroup BPF links (BPF_LINK_CREATE, Linux 5.7+)"))
        }
        Err(err) => Err(err).context("probing cgroup BPF links"),
        Ok(fd) => {
            // SAFETY: a link fd we own; dropping it detaches whatever it attached.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            bail!("probing cgroup BPF links: the kernel attached to a directory outside cgroupfs")
        }
    }
}

const SOCK_DESTROY: &str = "socket destroy";

/// `SOCK_DESTROY` over inet_diag (`CONFIG_INET_DIAG_DESTROY`), asked to destroy a TCP and a
/// UDP socket that do not exist: a kernel that can destroy answers `ENOENT`, one built
/// without it `EOPNOTSUPP` before any lookup.
fn sock_destroy() -> Feature {
    let probe = || -> Result<()> {
        let diag = SockDiag::open()?;
        for protocol in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
            let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            diag.destroy(&DiagSocket {
                protocol: protocol as u8,
                state: 0,
                local: nowhere,
                remote: nowhere,
                cookie: u64::MAX,
                interface: 0,
                inode: 0,
                v6only: None,
                storage: Vec::new(),
            })?;
        }
        Ok(())
    };
    match probe() {
        Ok(()) => Feature {
            name: SOCK_DESTROY.into(),
            enabled: true,
            detail: "connections a policy change refuses are aborted (ECONNABORTED, TCP reset)"
                .into(),
        },
        Err(err) => Feature {
            name: SOCK_DESTROY.into(),
            enabled: false,
            detail: format!(
                "connections a policy change refuses are cut off by the kernel (every later \
                 packet dropped) but not aborted: applications see a stalled connection, not \
                 ECONNABORTED ({err:#})"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_feature_and_the_minimum() {
        let err = lacks(map_type_name(MapType::RingBuf)).to_string();
        assert_eq!(
            err,
            "kernel lacks BPF_MAP_TYPE_RINGBUF (Linux 5.8+); enforcer needs Linux 6.1 or \
             later with it (nothing was changed)"
        );
        let storage = helper(bpf_func_id::BPF_FUNC_sk_storage_get as i32).map(helper_name);
        assert_eq!(storage.as_deref(), Some("bpf_sk_storage_get"));
        let bpf_loop = helper(bpf_func_id::BPF_FUNC_loop as i32).and_then(helper_since);
        assert_eq!(bpf_loop, Some("5.17"));
        assert!(super::helper(-1).is_none());
        assert!(super::helper(i32::MAX).is_none());
    }
}
