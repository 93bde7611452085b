//! The floor `--floor` measures: at each of the seven hooks the enforcer attaches to, a
//! program that does nothing but allow, attached to the bench's cgroup subtree. Its ratio to
//! the baseline is what the hooks themselves cost (the kernel running a cgroup's program array
//! around each program, the context it builds for it), which no program can go under; the
//! enforcer's ratio minus the floor's is what the enforcer's own work costs.
//!
//! The programs are two instructions each (`r0 = 1; exit`), loaded and attached with raw
//! bpf(2) calls, so the bench needs no second eBPF object. Each is attached through a bpf
//! link, which the kernel detaches when its last file descriptor closes: dropping the
//! [`Floor`], or the bench dying, leaves nothing attached.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result};

// From include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK: u32 = 9;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_INET_SOCK_CREATE: u32 = 2;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

/// The enforcer's hooks (enforcer-ebpf/src/programs): program type and attach type.
const HOOKS: [(u32, u32); 7] = [
    (BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE),
    (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT),
    (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT),
    (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG),
    (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG),
    (BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_EGRESS),
    (BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS),
];

/// `r0 = 1` (BPF_ALU64 | BPF_MOV | BPF_K), then `exit` (BPF_JMP | BPF_EXIT): every one of
/// these hooks reads 1 as "allow".
const ALLOW: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];

/// The seven programs, attached; dropping it detaches them.
pub struct Floor {
    _links: Vec<OwnedFd>,
}

impl Floor {
    pub fn attach(cgroup: &Path) -> Result<Self> {
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut links = Vec::new();
        for (prog_type, attach_type) in HOOKS {
            let prog = load(prog_type, attach_type)
                .with_context(|| format!("loading a no-op program of type {prog_type}"))?;
            links.push(
                link(&prog, dir.as_raw_fd(), attach_type)
                    .with_context(|| format!("attaching a no-op program at hook {attach_type}"))?,
            );
        }
        Ok(Self { _links: links })
    }
}

/// `union bpf_attr` is at most this long for the two commands used here; the kernel wants
/// every byte past the fields it knows to be zero.
type Attr = [u8; 128];

fn put(attr: &mut Attr, offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn load(prog_type: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr: Attr = [0; 128];
    put(&mut attr, 0, &prog_type.to_ne_bytes());
    put(&mut attr, 4, &(ALLOW.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(ALLOW.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 48, b"bench_floor");
    put(&mut attr, 68, &attach_type.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &attr)
}

fn link(prog: &OwnedFd, cgroup: RawFd, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr: Attr = [0; 128];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &(cgroup as u32).to_ne_bytes());
    put(&mut attr, 8, &attach_type.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &attr)
}

/// One bpf(2) call that returns a new file descriptor.
fn bpf(command: libc::c_long, attr: &Attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of the size passed, whose pointers (the
    // instructions, the license) outlive the call; the kernel only reads it for these commands.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD or BPF_LINK_CREATE returns a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
