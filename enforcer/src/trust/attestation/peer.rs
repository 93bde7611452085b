//! Who is on the other end of an attestation connection, as the kernel says: never anything
//! the client sends. The process is pinned by a pidfd, so that its pid cannot be reused by
//! another process between reading its cgroup and binding it.

use std::{
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::CgroupPath;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub struct Peer {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Peer {
    /// The process that connected `stream`.
    pub fn of(stream: &UnixStream) -> Result<Self> {
        match peer_pidfd(stream) {
            Ok(pidfd) => {
                let pid = pid_of(&pidfd)?;
                Ok(Self { pid, pidfd })
            }
            // SO_PEERPIDFD is Linux 6.5+. Before it, the pid from SO_PEERCRED is pinned with
            // pidfd_open right after accept: if the client exited and its pid was reused in
            // the microseconds between its connect and this call, the pidfd would name the
            // newcomer. The handshake that follows needs the client alive, which narrows it
            // further but does not close it.
            Err(err) if err.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                let cred = nix::sys::socket::getsockopt(
                    stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )
                .context("reading SO_PEERCRED")?;
                let pid = u32::try_from(cred.pid()).context("SO_PEERCRED gave no pid")?;
                // SAFETY: pidfd_open(2) with a pid and no flags; the result is checked.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid(), 0) };
                if fd < 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("pidfd_open({pid})"));
                }
                // SAFETY: a new descriptor this process owns from now on.
                let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                Ok(Self { pid, pidfd })
            }
            Err(err) => Err(err).context("reading SO_PEERPIDFD"),
        }
    }

    /// The process's cgroup v2 path and id, read now. Fails if the process has exited: its
    /// pid, and so what `/proc` shows for it, might then be another process's.
    pub fn cgroup(&self, id_of: impl Fn(&CgroupPath) -> Option<u64>) -> Result<(CgroupPath, u64)> {
        let text = fs::read_to_string(format!("/proc/{}/cgroup", self.pid))
            .with_context(|| format!("reading /proc/{}/cgroup", self.pid))?;
        let path: CgroupPath = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .with_context(|| format!("process {} is in no cgroup v2 cgroup", self.pid))?
            .parse()
            .map_err(|err| anyhow::anyhow!("process {}: {err}", self.pid))?;
        let id = id_of(&path).with_context(|| format!("cgroup {path} is gone"))?;
        if self.exited()? {
            bail!(
                "process {} exited before its cgroup could be bound",
                self.pid
            );
        }
        Ok((path, id))
    }

    /// A pidfd polls readable once its process has exited.
    fn exited(&self) -> Result<bool> {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::ZERO).context("polling the client's pidfd")?;
        Ok(ready > 0)
    }
}

fn peer_pidfd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt(2) writes at most `len` bytes into `fd`.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel made a new descriptor for this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd names, from its fdinfo (`Pid:`; -1 once the process is gone, 0 when it
/// is in a pid namespace this process cannot see).
fn pid_of(pidfd: &OwnedFd) -> Result<u32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .context("reading the client's pidfd")?;
    let pid: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
        .context("the client's pidfd names no pid")?;
    match u32::try_from(pid) {
        Ok(pid) if pid > 0 => Ok(pid),
        _ if pid == 0 => bail!("the client runs in a pid namespace the daemon cannot see into"),
        _ => bail!("the client exited"),
    }
}
