//! A NETLINK_SOCK_DIAG (inet_diag) client: dumps the TCP or UDP sockets of one network namespace
//! together with their BPF socket-storage values, and destroys single sockets with
//! `SOCK_DESTROY`, which aborts them (the owner's next call fails with `ECONNABORTED`, a TCP peer
//! gets a reset).
//!
//! The encoder and decoder are hand-written over `libc`/`nix` sockets. rust-netlink's
//! `netlink-packet-sock-diag` 0.5.0 (the newest release) frames `SOCK_DESTROY`, but its
//! `InetRequest` is the bare `struct inet_diag_req_v2` with no request attributes, so it cannot
//! send `INET_DIAG_REQ_SK_BPF_STORAGES` (the map fds whose values to report), and its response
//! decoder does not know `INET_DIAG_SK_BPF_STORAGES` (it surfaces as an opaque `DefaultNla`
//! whose nested `SK_DIAG_BPF_STORAGE` entries we would decode by hand anyway). With both ends of
//! the storage exchange missing, the crate would save only the fixed-size header layout.
//!
//! Constants and layouts are those of the kernel's uapi headers, cited next to their use:
//! `linux/netlink.h`, `linux/sock_diag.h`, `linux/inet_diag.h`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::{
    errno::Errno,
    sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType},
};

// linux/netlink.h: `struct nlmsghdr` is { u32 len; u16 type; u16 flags; u32 seq; u32 pid },
// messages and attributes are padded to 4 bytes (NLMSG_ALIGNTO, NLA_ALIGNTO).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 0x1;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// NLM_F_ROOT | NLM_F_MATCH.
const NLM_F_DUMP: u16 = 0x300;
/// `struct nlattr` is { u16 len; u16 type }.
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 1 << 15;
/// Clears NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 1 << 14);

// linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// The one entry type inside INET_DIAG_REQ_SK_BPF_STORAGES: a u32 map fd.
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// The one entry type inside INET_DIAG_SK_BPF_STORAGES: a nest per map with a value.
const SK_DIAG_BPF_STORAGE: u16 = 1;
// Inside SK_DIAG_BPF_STORAGE; SK_DIAG_BPF_STORAGE_PAD (1) only aligns the value to 8 bytes.
const SK_DIAG_BPF_STORAGE_MAP_ID: u16 = 2;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;

// linux/inet_diag.h
/// Request attribute (enum after INET_DIAG_REQ_NONE, INET_DIAG_REQ_BYTECODE).
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
/// Response attribute (20th after INET_DIAG_NONE in the extensions enum).
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
/// Response attribute (11th): a u8, whether an AF_INET6 socket is IPv6-only.
const INET_DIAG_SKV6ONLY: u16 = 11;
/// `struct inet_diag_sockid`: be16 sport, be16 dport, be32 src[4], be32 dst[4], u32 if,
/// u32 cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: u8 family, u8 protocol, u8 ext, u8 pad, u32 states, sockid.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: u8 family, u8 state, u8 timer, u8 retrans, sockid, then u32
/// expires, rqueue, wqueue, uid, inode. Its attributes follow at NLMSG_ALIGN(72) = 72.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Offset of `idiag_inode` in `struct inet_diag_msg`.
const DIAG_MSG_INODE: usize = DIAG_MSG_LEN - 4;

/// Enough for any dump datagram the kernel builds for a reader with a large buffer (it caps
/// them near 32 KiB unless one socket's storage values need more, see [`Channel::recv`]).
const RECV_BUFFER: usize = 64 * 1024;

/// One socket as inet_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// `libc::IPPROTO_TCP` or `libc::IPPROTO_UDP` as u8.
    pub protocol: u8,
    /// TCP_* state number as the kernel reports it (connected UDP sockets are
    /// TCP_ESTABLISHED, unconnected ones TCP_CLOSE).
    pub state: u8,
    /// AF_INET6 sockets are reported as `SocketAddr::V6`, IPv4-mapped addresses included.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cookie: u64,
    pub interface: u32,
    /// Inode number of the socket (`socket:[INODE]` in /proc/PID/fd), 0 if it has none.
    pub inode: u64,
    /// `IPV6_V6ONLY` of an AF_INET6 socket; the kernel reports it for listening and unbound
    /// or unconnected sockets only (inet_diag_msg_attrs_fill()).
    pub v6only: Option<bool>,
    /// map id -> storage value bytes, for each requested map that has a value on this socket.
    pub storage: Vec<(u32, Vec<u8>)>,
}

/// A NETLINK_SOCK_DIAG socket of one network namespace.
pub struct SockDiag {
    /// One request is in flight at a time: replies are matched by sequence number, and a
    /// second thread reading the same socket would take the first one's replies.
    channel: Mutex<Channel>,
}

impl SockDiag {
    /// Opens a NETLINK_SOCK_DIAG socket in the calling thread's network namespace (a netlink
    /// socket stays bound to the namespace it was created in, so it can be used from any
    /// thread afterwards).
    pub fn open() -> Result<Self> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .context("opening a NETLINK_SOCK_DIAG socket")?;
        Ok(Self {
            channel: Mutex::new(Channel {
                fd,
                buffer: vec![0; RECV_BUFFER],
                seq: 0,
            }),
        })
    }

    /// Every socket of `protocol` (both AF_INET and AF_INET6) whose state bit `1 << state` is
    /// set in `states`, each with its values in the given BPF_MAP_TYPE_SK_STORAGE maps.
    pub fn dump(
        &self,
        protocol: u8,
        states: u32,
        storage_maps: &[BorrowedFd<'_>],
    ) -> Result<Vec<DiagSocket>> {
        let mut sockets = Vec::new();
        // A dump is per family: sock_diag dispatches on sdiag_family and has no AF_UNSPEC
        // handler for inet.
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let request = dump_request(family, protocol, states, storage_maps)?;
            self.transact(request, |message| {
                on_dump_reply(message, protocol, storage_maps, &mut sockets)
            })
            .with_context(|| {
                format!(
                    "sock_diag dump of {} {} sockets",
                    family_name(family),
                    protocol_name(protocol)
                )
            })?;
        }
        Ok(sockets)
    }

    /// Aborts `socket`. Ok(true) destroyed, Ok(false) it no longer exists (or its address
    /// tuple now belongs to a socket with another cookie).
    pub fn destroy(&self, socket: &DiagSocket) -> Result<bool> {
        let context = || {
            format!(
                "SOCK_DESTROY of {} socket {} -> {} (cookie {})",
                protocol_name(socket.protocol),
                socket.local,
                socket.remote,
                socket.cookie
            )
        };
        let request = destroy_request(socket).with_context(context)?;
        // Without NLM_F_DUMP the only reply is the NLMSG_ERROR acknowledgement.
        let mut errno = 0;
        self.transact(request, |message| match message.kind {
            NLMSG_ERROR => {
                errno = message.errno()?;
                Ok(())
            }
            kind => bail!("unexpected netlink message type {kind} in reply"),
        })
        .with_context(context)?;
        match errno {
            0 => Ok(true),
            // inet_diag_find_one_icsk() and __udp_diag_destroy() return ENOENT both when no
            // socket has the tuple and when the one that has it carries another cookie.
            libc::ENOENT => Ok(false),
            errno => Err(kernel_error(errno, destroy_hint(errno))).with_context(context),
        }
    }

    /// Sends `request` and feeds each reply carrying its sequence number to `on_reply`, up to
    /// and including the NLMSG_DONE or NLMSG_ERROR that ends every netlink exchange.
    fn transact(
        &self,
        request: Request,
        mut on_reply: impl FnMut(Message<'_>) -> Result<()>,
    ) -> Result<()> {
        // A panic elsewhere cannot leave the channel inconsistent: stale replies are skipped
        // by sequence number.
        let mut channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = channel.send(request)?;
        let mut outcome = Ok(());
        loop {
            // A datagram that cannot be split into messages may have held the end of the
            // exchange: give up at once rather than wait for more.
            for message in Messages(channel.recv()?) {
                let message = message?;
                // Replies of an earlier exchange abandoned on a framing error.
                if message.seq != seq {
                    continue;
                }
                let last = matches!(message.kind, NLMSG_DONE | NLMSG_ERROR);
                // After a reply the handler rejects, read on to the end all the same: the
                // kernel refuses a new dump with EBUSY while one is still running
                // (netlink_dump_start()).
                if outcome.is_ok() {
                    outcome = on_reply(message);
                }
                if last {
                    return outcome;
                }
            }
        }
    }
}

/// Handles one message of a dump: a socket, the end (NLMSG_DONE after the NLM_F_MULTI
/// parts), or an error.
fn on_dump_reply(
    message: Message<'_>,
    protocol: u8,
    storage_maps: &[BorrowedFd<'_>],
    sockets: &mut Vec<DiagSocket>,
) -> Result<()> {
    match message.kind {
        SOCK_DIAG_BY_FAMILY => {
            sockets.push(parse_socket(protocol, message.payload)?);
            Ok(())
        }
        // Both carry an int: 0, or a negative errno for a dump that failed part way
        // (NLMSG_DONE) or could not start (NLMSG_ERROR).
        NLMSG_DONE | NLMSG_ERROR => match message.errno()? {
            0 => Ok(()),
            errno => Err(kernel_error(errno, dump_hint(errno, storage_maps))),
        },
        NLMSG_NOOP => Ok(()),
        kind => bail!("unexpected netlink message type {kind} in dump"),
    }
}

fn kernel_error(errno: i32, hint: Option<&str>) -> anyhow::Error {
    let error = anyhow::Error::new(io::Error::from_raw_os_error(errno));
    match hint {
        Some(hint) => error.context(hint.to_owned()),
        None => error,
    }
}

fn dump_hint(errno: i32, storage_maps: &[BorrowedFd<'_>]) -> Option<&'static str> {
    match errno {
        // bpf_sk_storage_diag_alloc() (net/core/bpf_sk_storage.c) checks bpf_capable().
        libc::EPERM if !storage_maps.is_empty() => {
            Some("reading BPF socket storage needs CAP_BPF or CAP_SYS_ADMIN")
        }
        // bpf_sk_storage_diag_alloc() rejects fds that are not BPF maps (EBADF), or maps of
        // another type (EINVAL).
        libc::EBADF | libc::EINVAL if !storage_maps.is_empty() => {
            Some("is a storage map fd not a BPF_MAP_TYPE_SK_STORAGE map?")
        }
        // inet_diag_lock_handler(): no sock_diag handler for the protocol.
        libc::ENOENT => Some("the kernel has no inet_diag support for this protocol"),
        _ => None,
    }
}

fn destroy_hint(errno: i32) -> Option<&'static str> {
    match errno {
        // sock_diag_destroy() (net/core/sock_diag.c) checks ns_capable(CAP_NET_ADMIN).
        libc::EPERM => Some("SOCK_DESTROY needs CAP_NET_ADMIN in the socket's network namespace"),
        // inet_diag_cmd_exact(): the protocol's handler has no destroy operation; tcp_diag
        // and udp_diag only have one with CONFIG_INET_DIAG_DESTROY.
        libc::EOPNOTSUPP => Some(
            "the kernel cannot destroy sockets of this protocol (CONFIG_INET_DIAG_DESTROY unset?)",
        ),
        _ => None,
    }
}

fn family_name(family: u8) -> &'static str {
    if family == libc::AF_INET as u8 {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn protocol_name(protocol: u8) -> String {
    match i32::from(protocol) {
        libc::IPPROTO_TCP => "TCP".to_owned(),
        libc::IPPROTO_UDP => "UDP".to_owned(),
        other => format!("protocol {other}"),
    }
}

/// `SOCK_DIAG_BY_FAMILY` dump of one family, asking for the values in `storage_maps`.
fn dump_request(
    family: u8,
    protocol: u8,
    states: u32,
    storage_maps: &[BorrowedFd<'_>],
) -> Result<Request> {
    let body = req_v2(family, protocol, states, &[0; SOCKID_LEN]);
    let mut request = Request::new(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &body);
    // An INET_DIAG_REQ_SK_BPF_STORAGES nest without map fds asks for every map's value
    // (bpf_sk_storage_diag_alloc()), so leave it out when no map is wanted.
    if !storage_maps.is_empty() {
        let nest = request.begin_nest(INET_DIAG_REQ_SK_BPF_STORAGES);
        for map in storage_maps {
            let fd = map.as_raw_fd() as u32;
            request.attr(SK_DIAG_BPF_STORAGE_REQ_MAP_FD, &fd.to_ne_bytes())?;
        }
        request.end_nest(nest)?;
    }
    Ok(request)
}

/// `SOCK_DESTROY` of the socket with `socket`'s id; the kernel looks it up by addresses,
/// ports and interface and then checks the cookie (inet_diag_find_one_icsk()).
fn destroy_request(socket: &DiagSocket) -> Result<Request> {
    let family = match (socket.local, socket.remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET as u8,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => bail!("local and remote addresses are of different families"),
    };
    let id = encode_sockid(socket);
    // idiag_states is not read by the lookup.
    let body = req_v2(family, socket.protocol, 0, &id);
    Ok(Request::new(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &body))
}

/// `struct inet_diag_req_v2` with idiag_ext 0: no extensions but the storage attribute.
fn req_v2(family: u8, protocol: u8, states: u32, id: &[u8; SOCKID_LEN]) -> [u8; REQ_V2_LEN] {
    let mut req = [0; REQ_V2_LEN];
    req[0] = family;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req[8..].copy_from_slice(id);
    req
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order, interface and
/// cookie in host order.
fn encode_sockid(socket: &DiagSocket) -> [u8; SOCKID_LEN] {
    let mut id = [0; SOCKID_LEN];
    id[0..2].copy_from_slice(&socket.local.port().to_be_bytes());
    id[2..4].copy_from_slice(&socket.remote.port().to_be_bytes());
    encode_ip(&mut id[4..20], socket.local.ip());
    encode_ip(&mut id[20..36], socket.remote.ip());
    id[36..40].copy_from_slice(&socket.interface.to_ne_bytes());
    // sock_diag_save_cookie() (net/core/sock_diag.c) puts the low half in idiag_cookie[0].
    id[40..44].copy_from_slice(&(socket.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((socket.cookie >> 32) as u32).to_ne_bytes());
    id
}

/// An IPv4 address takes idiag_src[0] / idiag_dst[0]; the rest stays zero.
fn encode_ip(field: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => field[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => field.copy_from_slice(&ip.octets()),
    }
}

/// One `struct inet_diag_msg` and its attributes.
fn parse_socket(protocol: u8, payload: &[u8]) -> Result<DiagSocket> {
    let head: [u8; DIAG_MSG_LEN] =
        take(payload, 0).context("inet_diag_msg shorter than 72 bytes")?;
    let id: [u8; SOCKID_LEN] = take(&head, 4)?;
    let family = head[0];
    let ip = |at: usize| -> Result<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => Ok(Ipv4Addr::from(take::<4>(&id, at)?).into()),
            libc::AF_INET6 => Ok(Ipv6Addr::from(take::<16>(&id, at)?).into()),
            other => bail!("inet_diag_msg of unexpected address family {other}"),
        }
    };
    let port = |at: usize| take(&id, at).map(u16::from_be_bytes);
    let cookie_low = u32::from_ne_bytes(take(&id, 40)?);
    let cookie_high = u32::from_ne_bytes(take(&id, 44)?);
    Ok(DiagSocket {
        protocol,
        state: head[1],
        local: SocketAddr::new(ip(4)?, port(0)?),
        remote: SocketAddr::new(ip(20)?, port(2)?),
        cookie: u64::from(cookie_high) << 32 | u64::from(cookie_low),
        interface: u32::from_ne_bytes(take(&id, 36)?),
        inode: u32::from_ne_bytes(take(&head, DIAG_MSG_INODE)?).into(),
        v6only: parse_v6only(payload.get(DIAG_MSG_LEN..).unwrap_or_default())?,
        storage: parse_storages(payload.get(DIAG_MSG_LEN..).unwrap_or_default())?,
    })
}

/// The INET_DIAG_SKV6ONLY attribute among a socket's attributes, if the kernel sent it.
fn parse_v6only(attrs: &[u8]) -> Result<Option<bool>> {
    for attr in Attrs(attrs) {
        if let (INET_DIAG_SKV6ONLY, value) = attr? {
            return Ok(value.first().map(|&v| v != 0));
        }
    }
    Ok(None)
}

/// The values in the INET_DIAG_SK_BPF_STORAGES attribute among a socket's attributes; the
/// kernel omits it when the socket has no value in any requested map. Its length is a u16
/// that the kernel lets wrap (nla_nest_end()) when one socket's values add up to more than
/// 64 KiB; the nested entries then overrun it and decoding fails.
fn parse_storages(attrs: &[u8]) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut storage = Vec::new();
    for attr in Attrs(attrs) {
        let (kind, nest) = attr?;
        if kind != INET_DIAG_SK_BPF_STORAGES {
            continue;
        }
        for entry in Attrs(nest) {
            let (kind, entry) = entry?;
            if kind == SK_DIAG_BPF_STORAGE {
                storage.push(parse_storage(entry).context("malformed SK_DIAG_BPF_STORAGE")?);
            }
        }
    }
    Ok(storage)
}

/// One SK_DIAG_BPF_STORAGE nest: { MAP_ID u32, MAP_VALUE bytes } (bpf_sk_storage.c diag_get()).
fn parse_storage(nest: &[u8]) -> Result<(u32, Vec<u8>)> {
    let (mut map_id, mut value) = (None, None);
    for attr in Attrs(nest) {
        match attr? {
            (SK_DIAG_BPF_STORAGE_MAP_ID, id) => {
                let id: [u8; 4] = id.try_into().context("map id is not 4 bytes")?;
                map_id = Some(u32::from_ne_bytes(id));
            }
            (SK_DIAG_BPF_STORAGE_MAP_VALUE, bytes) => value = Some(bytes.to_vec()),
            _ => {}
        }
    }
    Ok((
        map_id.context("no SK_DIAG_BPF_STORAGE_MAP_ID")?,
        value.context("no SK_DIAG_BPF_STORAGE_MAP_VALUE")?,
    ))
}

/// `N` bytes of `buf` at `at`, or an error when the kernel's reply is too short.
fn take<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            anyhow!(
                "netlink reply truncated: {N} bytes at {at} of {}",
                buf.len()
            )
        })
}

/// NLMSG_ALIGN / NLA_ALIGN: both pad to 4 bytes.
fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// A netlink message being built: header, fixed body, attributes.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, body: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(NLMSG_HDRLEN + body.len() + 64);
        // nlmsg_len and nlmsg_seq are filled in by `Channel::send`; nlmsg_pid 0 lets the
        // kernel fill in our port id.
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        let mut request = Self(buf);
        request.append(body);
        request
    }

    fn append(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.0.resize(align(self.0.len()), 0);
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> Result<()> {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).context("attribute too long")?;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.append(payload);
        Ok(())
    }

    /// Starts a nested attribute; its length is set by `end_nest`.
    fn begin_nest(&mut self, kind: u16) -> usize {
        let start = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) -> Result<()> {
        let len = u16::try_from(self.0.len() - start).context("too many storage maps")?;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    fn finish(mut self, seq: u32) -> Result<Vec<u8>> {
        let len = u32::try_from(self.0.len()).context("netlink request too long")?;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(self.0)
    }
}

/// The netlink socket and its receive buffer.
struct Channel {
    fd: OwnedFd,
    buffer: Vec<u8>,
    seq: u32,
}

impl Channel {
    /// Sends `request` to the kernel and returns its sequence number. An unconnected netlink
    /// socket sends to port id 0, the kernel, when no address is given (netlink_sendmsg()).
    fn send(&mut self, request: Request) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = request.finish(self.seq)?;
        let sent = retry_on_eintr(|| socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty()))
            .context("sending a sock_diag request")?;
        ensure!(sent == bytes.len(), "sock_diag request sent only in part");
        Ok(self.seq)
    }

    /// Receives one datagram, however large.
    fn recv(&mut self) -> Result<&[u8]> {
        let fd = self.fd.as_raw_fd();
        // With MSG_TRUNC netlink_recvmsg() returns the datagram's full length even into a
        // shorter buffer; peeking first lets the buffer grow for a datagram that does not fit
        // instead of losing its tail (iproute2's rtnl_recvmsg() does the same). One socket's
        // storage values can take up to 64 KiB, and inet_sk_diag_fill() raises the dump
        // allocation to fit them, so with its header one message can exceed RECV_BUFFER.
        let len = retry_on_eintr(|| {
            socket::recv(
                fd,
                &mut self.buffer,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            )
        })
        .context("receiving a sock_diag reply")?;
        if len > self.buffer.len() {
            self.buffer.resize(len, 0);
        }
        let len = retry_on_eintr(|| socket::recv(fd, &mut self.buffer, MsgFlags::empty()))
            .context("receiving a sock_diag reply")?;
        self.buffer
            .get(..len)
            .context("sock_diag reply longer than the buffer")
    }
}

fn retry_on_eintr(mut call: impl FnMut() -> nix::Result<usize>) -> nix::Result<usize> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            result => return result,
        }
    }
}

/// One netlink message of a datagram.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

impl Message<'_> {
    /// The positive errno in an NLMSG_ERROR (`struct nlmsgerr` starts with `int error`) or
    /// NLMSG_DONE (an `int`) payload, 0 for success.
    fn errno(&self) -> Result<i32> {
        let error = i32::from_ne_bytes(take(self.payload, 0).context("netlink error truncated")?);
        Ok(error.saturating_neg())
    }
}

/// The messages of one datagram. After a malformed one it yields an error and stops; like
/// NLMSG_OK() it ignores a tail shorter than a header.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < NLMSG_HDRLEN {
            return None;
        }
        let parsed = split_message(self.0);
        self.0 = match &parsed {
            Ok((_, rest)) => rest,
            Err(_) => &[],
        };
        Some(parsed.map(|(message, _)| message))
    }
}

fn split_message(buf: &[u8]) -> Result<(Message<'_>, &[u8])> {
    let len = u32::from_ne_bytes(take(buf, 0)?) as usize;
    ensure!(
        (NLMSG_HDRLEN..=buf.len()).contains(&len),
        "netlink message length {len} outside 16..={}",
        buf.len()
    );
    let message = Message {
        kind: u16::from_ne_bytes(take(buf, 4)?),
        seq: u32::from_ne_bytes(take(buf, 8)?),
        payload: &buf[NLMSG_HDRLEN..len],
    };
    Ok((message, buf.get(align(len)..).unwrap_or_default()))
}

/// The attributes (type without flag bits, payload) in a buffer. After a malformed one it
/// yields an error and stops; like nla_ok() it ignores a tail shorter than a header.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < NLA_HDRLEN {
            return None;
        }
        let parsed = split_attr(self.0);
        self.0 = match &parsed {
            Ok((_, _, rest)) => rest,
            Err(_) => &[],
        };
        Some(parsed.map(|(kind, payload, _)| (kind, payload)))
    }
}

fn split_attr(buf: &[u8]) -> Result<(u16, &[u8], &[u8])> {
    let len = usize::from(u16::from_ne_bytes(take(buf, 0)?));
    ensure!(
        (NLA_HDRLEN..=buf.len()).contains(&len),
        "netlink attribute length {len} outside 4..={}",
        buf.len()
    );
    let kind = u16::from_ne_bytes(take(buf, 2)?) & NLA_TYPE_MASK;
    Ok((
        kind,
        &buf[NLA_HDRLEN..len],
        buf.get(align(len)..).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{ErrorKind, Read as _, Write as _},
        net::{TcpListener, TcpStream, UdpSocket},
        os::fd::{AsFd, AsRawFd, FromRawFd as _},
        time::Duration,
    };

    use super::*;

    // include/net/tcp_states.h
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_TIME_WAIT: u8 = 6;
    const TCP_CLOSE: u8 = 7;
    const TCP_LISTEN: u8 = 10;
    const TCP: u8 = libc::IPPROTO_TCP as u8;
    const UDP: u8 = libc::IPPROTO_UDP as u8;
    /// Every TCP state but LISTEN, TIME_WAIT and CLOSE: what the daemon dumps.
    const CONNECTIONS: u32 = !(1 << TCP_LISTEN | 1 << TCP_TIME_WAIT | 1 << TCP_CLOSE);

    fn privileged(test: &str) -> bool {
        crate::privileged_tests::privileged(test, "sock_diag")
    }

    fn cookie(socket: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: the out pointers are valid for the sizes given.
        let ret = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(ret, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    /// A connected loopback TCP pair: (client, accepted server end).
    fn tcp_pair(listen: SocketAddr) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(listen).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        for end in [&client, &server] {
            end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (client, server)
    }

    fn find(sockets: &[DiagSocket], cookie: u64) -> Option<&DiagSocket> {
        sockets.iter().find(|socket| socket.cookie == cookie)
    }

    fn loopbacks() -> [SocketAddr; 3] {
        [
            "127.0.0.1:0".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
            // A dual-stack AF_INET6 socket talking IPv4: reported with mapped addresses.
            "[::ffff:127.0.0.1]:0".parse().unwrap(),
        ]
    }

    #[test]
    fn dump_lists_both_ends_of_a_loopback_tcp_connection() {
        if !privileged("dump_lists_both_ends_of_a_loopback_tcp_connection") {
            return;
        }
        let diag = SockDiag::open().unwrap();
        for listen in loopbacks() {
            let (client, server) = tcp_pair(listen);
            let sockets = diag.dump(TCP, CONNECTIONS, &[]).unwrap();
            for (end, peer) in [(&client, &server), (&server, &client)] {
                let found = find(&sockets, cookie(end))
                    .unwrap_or_else(|| panic!("{listen}: socket missing from {sockets:#?}"));
                assert_eq!(found.protocol, TCP);
                assert_eq!(found.state, TCP_ESTABLISHED);
                assert_eq!(found.local, end.local_addr().unwrap());
                assert_eq!(found.remote, peer.local_addr().unwrap());
                assert_eq!(found.interface, 0);
                assert!(found.storage.is_empty());
            }
            assert!(sockets.iter().all(|socket| socket.state != TCP_LISTEN));
        }
    }

    /// A listening AF_INET6 TCP socket on `[::]:0` with `IPV6_V6ONLY` set as given. (Binding
    /// to a specific IPv6 address would make it IPv6-only whatever the option says:
    /// inet6_bind() sets sk_ipv6only for any address but `::` and IPv4-mapped ones.)
    fn v6_listener(v6only: bool) -> OwnedFd {
        // SAFETY: plain socket calls on a descriptor owned by the returned OwnedFd; the
        // address and option pointers are valid for the sizes given.
        unsafe {
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let on = libc::c_int::from(v6only);
            let ret = libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(ret, 0, "IPV6_V6ONLY: {}", io::Error::last_os_error());
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            let ret = libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            );
            assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
            assert_eq!(libc::listen(fd.as_raw_fd(), 1), 0);
            fd
        }
    }

    fn inode(socket: &impl AsRawFd) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn listeners_report_their_inode_and_whether_they_are_ipv6_only() {
        if !privileged("listeners_report_their_inode_and_whether_they_are_ipv6_only") {
            return;
        }
        let diag = SockDiag::open().unwrap();
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let (dual, only) = (v6_listener(false), v6_listener(true));
        let sockets = diag.dump(TCP, 1 << TCP_LISTEN, &[]).unwrap();
        for (socket, inode, v6only) in [
            (cookie(&v4), inode(&v4), None),
            (cookie(&dual), inode(&dual), Some(false)),
            (cookie(&only), inode(&only), Some(true)),
        ] {
            let found = find(&sockets, socket).expect("listener listed");
            assert_eq!(found.state, TCP_LISTEN);
            assert_eq!((found.inode, found.v6only), (inode, v6only));
        }
    }

    #[test]
    fn dump_reports_storage_values_per_map() {
        if !privileged("dump_reports_storage_values_per_map") {
            return;
        }
        let tags = bpf::sk_storage_map(16).unwrap();
        let states = bpf::sk_storage_map(8).unwrap();
        let (tags_id, states_id) = (bpf::map_id(&tags).unwrap(), bpf::map_id(&states).unwrap());
        let (client, server) = tcp_pair("127.0.0.1:0".parse().unwrap());
        let tag: Vec<u8> = (1..=16).collect();
        bpf::set(&tags, &client, &tag).unwrap();
        bpf::set(&states, &client, &[7; 8]).unwrap();
        bpf::set(&states, &server, &[9; 8]).unwrap();

        let diag = SockDiag::open().unwrap();
        let sockets = diag
            .dump(TCP, CONNECTIONS, &[tags.as_fd(), states.as_fd()])
            .unwrap();
        let client_storage = &find(&sockets, cookie(&client)).unwrap().storage;
        let server_storage = &find(&sockets, cookie(&server)).unwrap().storage;
        assert_eq!(client_storage, &[(tags_id, tag), (states_id, vec![7; 8])]);
        assert_eq!(server_storage, &[(states_id, vec![9; 8])]);

        // Only the requested maps are reported.
        let sockets = diag.dump(TCP, CONNECTIONS, &[states.as_fd()]).unwrap();
        let client_storage = &find(&sockets, cookie(&client)).unwrap().storage;
        assert_eq!(client_storage, &[(states_id, vec![7; 8])]);
        let sockets = diag.dump(TCP, CONNECTIONS, &[]).unwrap();
        assert!(find(&sockets, cookie(&client)).unwrap().storage.is_empty());
    }

    #[test]
    fn dump_rejects_a_map_that_is_not_socket_storage() {
        if !privileged("dump_rejects_a_map_that_is_not_socket_storage") {
            return;
        }
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let diag = SockDiag::open().unwrap();
        let error = diag.dump(TCP, CONNECTIONS, &[socket.as_fd()]).unwrap_err();
        assert!(
            format!("{error:#}").contains("not a BPF_MAP_TYPE_SK_STORAGE map?"),
            "{error:#}"
        );
        // The failed exchange was read to its end: the next one works.
        diag.dump(UDP, u32::MAX, &[]).unwrap();
    }

    #[test]
    fn dump_spans_many_datagrams() {
        if !privileged("dump_spans_many_datagrams") {
            return;
        }
        // The kernel fills dump datagrams up to about 32 KiB; 600 sockets take at least two
        // (over 100 bytes each). Fewer than a thousand, because the tests share one process
        // and a guest's default limit of 1,024 open files.
        let sockets: Vec<UdpSocket> = (0..600)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let dumped = SockDiag::open().unwrap().dump(UDP, u32::MAX, &[]).unwrap();
        for socket in &sockets {
            let found = find(&dumped, cookie(socket)).unwrap();
            assert_eq!(found.local, socket.local_addr().unwrap());
        }
    }

    #[test]
    fn dump_grows_its_buffer_for_a_larger_datagram() {
        if !privileged("dump_grows_its_buffer_for_a_larger_datagram") {
            return;
        }
        let map = bpf::sk_storage_map(4096).unwrap();
        let (client, _server) = tcp_pair("127.0.0.1:0".parse().unwrap());
        bpf::set(&map, &client, &[3; 4096]).unwrap();
        let diag = SockDiag::open().unwrap();
        // Smaller than the client's message alone.
        diag.channel.lock().unwrap().buffer = vec![0; 100];
        let sockets = diag.dump(TCP, CONNECTIONS, &[map.as_fd()]).unwrap();
        let storage = &find(&sockets, cookie(&client)).unwrap().storage;
        assert_eq!(storage, &[(bpf::map_id(&map).unwrap(), vec![3; 4096])]);
        assert!(diag.channel.lock().unwrap().buffer.len() > 4096);
    }

    #[test]
    fn destroy_aborts_a_tcp_connection() {
        if !privileged("destroy_aborts_a_tcp_connection") {
            return;
        }
        let diag = SockDiag::open().unwrap();
        for listen in loopbacks() {
            let (mut client, mut server) = tcp_pair(listen);
            let sockets = diag.dump(TCP, CONNECTIONS, &[]).unwrap();
            let target = find(&sockets, cookie(&client)).unwrap().clone();

            assert!(diag.destroy(&target).unwrap(), "{listen}");
            let error = client.read(&mut [0; 1]).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ECONNABORTED), "{listen}");
            match server.read(&mut [0; 1]) {
                Ok(0) => {}
                Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("{listen}: server read after the abort: {other:?}"),
            }
            assert!(!diag.destroy(&target).unwrap(), "{listen}: second destroy");
        }
    }

    #[test]
    fn destroy_with_a_stale_cookie_finds_nothing() {
        if !privileged("destroy_with_a_stale_cookie_finds_nothing") {
            return;
        }
        let diag = SockDiag::open().unwrap();
        let (mut client, _server) = tcp_pair("127.0.0.1:0".parse().unwrap());
        let sockets = diag.dump(TCP, CONNECTIONS, &[]).unwrap();
        let mut target = find(&sockets, cookie(&client)).unwrap().clone();
        target.cookie = target.cookie.wrapping_add(1 << 40);
        assert!(!diag.destroy(&target).unwrap());
        client.write_all(b"still alive").unwrap();
    }

    #[test]
    fn connected_udp_socket_is_listed_and_destroyed() {
        if !privileged("connected_udp_socket_is_listed_and_destroyed") {
            return;
        }
        let diag = SockDiag::open().unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        let connected = diag.dump(UDP, 1 << TCP_ESTABLISHED, &[]).unwrap();
        let target = find(&connected, cookie(&client)).unwrap().clone();
        assert_eq!(target.protocol, UDP);
        assert_eq!(target.state, TCP_ESTABLISHED);
        assert_eq!(target.local, client.local_addr().unwrap());
        assert_eq!(target.remote, server.local_addr().unwrap());
        assert!(find(&connected, cookie(&server)).is_none());
        let all = diag.dump(UDP, u32::MAX, &[]).unwrap();
        assert_eq!(find(&all, cookie(&server)).unwrap().state, TCP_CLOSE);

        assert!(diag.destroy(&target).unwrap());
        let error = client.recv(&mut [0; 1]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(!diag.destroy(&target).unwrap());
    }

    #[test]
    fn malformed_replies_are_errors() {
        // A message claiming more bytes than the datagram has.
        let mut datagram = 40u32.to_ne_bytes().to_vec();
        datagram.extend_from_slice(&[0; 12]);
        assert!(Messages(&datagram).next().unwrap().is_err());
        // A message shorter than its header.
        let mut datagram = 8u32.to_ne_bytes().to_vec();
        datagram.extend_from_slice(&[0; 12]);
        assert!(Messages(&datagram).next().unwrap().is_err());
        // An attribute shorter than its header.
        assert!(Attrs(&[2, 0, 1, 0]).next().unwrap().is_err());
        // An inet_diag_msg cut short.
        assert!(parse_socket(TCP, &[libc::AF_INET as u8; 40]).is_err());
        // A storage entry without its value.
        let mut entry = 8u16.to_ne_bytes().to_vec();
        entry.extend_from_slice(&SK_DIAG_BPF_STORAGE_MAP_ID.to_ne_bytes());
        entry.extend_from_slice(&5u32.to_ne_bytes());
        assert!(parse_storage(&entry).is_err());
    }

    /// Just enough raw bpf(2) to make BPF_MAP_TYPE_SK_STORAGE maps and fill them; offsets
    /// follow `union bpf_attr` and `struct bpf_map_info` in linux/bpf.h.
    mod bpf {
        use std::{
            io,
            os::fd::{AsRawFd, FromRawFd, OwnedFd},
        };

        use crate::kernel::bpf_sys::Attr;

        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        const BPF_BTF_LOAD: libc::c_long = 18;
        const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
        const BPF_F_NO_PREALLOC: u32 = 1;
        // linux/btf.h
        const BTF_KIND_INT: u32 = 1;
        const BTF_KIND_ARRAY: u32 = 3;
        const BTF_INT_SIGNED: u32 = 1 << 24;
        const BTF_INT_TYPE: u32 = 1;
        const BTF_U8_TYPE: u32 = 2;
        const BTF_ARRAY_TYPE: u32 = 3;

        fn call_fd(attr: &mut Attr, cmd: libc::c_long) -> io::Result<OwnedFd> {
            let fd = attr.call(cmd)?;
            // SAFETY: the command returned a new file descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        }

        /// sk_storage maps must name BTF types for key and value
        /// (bpf_local_storage_map_alloc_check()), the key a 32-bit int
        /// (bpf_local_storage_map_check_btf()): `int`, `u8` and `u8[value_size]`. Each
        /// `struct btf_type` is { name_off, info = kind << 24, size }; an INT is followed by
        /// its encoding (signedness << 24 | bits), an ARRAY by `struct btf_array` { type,
        /// index_type, nelems }.
        fn btf(value_size: u32) -> Vec<u8> {
            let mut types = Vec::new();
            for word in [
                1, // "int"
                BTF_KIND_INT << 24,
                4,
                BTF_INT_SIGNED | 32,
                5, // "u8"
                BTF_KIND_INT << 24,
                1,
                8,
                0,
                BTF_KIND_ARRAY << 24,
                0,
                BTF_U8_TYPE,
                BTF_INT_TYPE,
                value_size,
            ] {
                types.extend_from_slice(&u32::to_ne_bytes(word));
            }
            let strings = b"\0int\0u8\0";
            // struct btf_header: magic, version 1, flags, hdr_len, type_off, type_len,
            // str_off, str_len.
            let mut blob = Vec::new();
            blob.extend_from_slice(&0xeb9f_u16.to_ne_bytes());
            blob.extend_from_slice(&[1, 0]);
            for word in [24, 0, types.len(), types.len(), strings.len()] {
                blob.extend_from_slice(&(word as u32).to_ne_bytes());
            }
            blob.extend_from_slice(&types);
            blob.extend_from_slice(strings);
            blob
        }

        pub fn sk_storage_map(value_size: u32) -> io::Result<OwnedFd> {
            let blob = btf(value_size);
            let mut attr = Attr::new();
            attr.put_u64(0, blob.as_ptr() as u64);
            attr.put_u32(16, blob.len() as u32);
            let btf = call_fd(&mut attr, BPF_BTF_LOAD)?;
            let mut attr = Attr::new();
            attr.put_u32(0, BPF_MAP_TYPE_SK_STORAGE);
            attr.put_u32(4, 4);
            attr.put_u32(8, value_size);
            attr.put_u32(16, BPF_F_NO_PREALLOC);
            attr.put_u32(48, btf.as_raw_fd() as u32);
            attr.put_u32(52, BTF_INT_TYPE);
            attr.put_u32(56, BTF_ARRAY_TYPE);
            call_fd(&mut attr, BPF_MAP_CREATE)
        }

        pub fn map_id(map: &OwnedFd) -> io::Result<u32> {
            // struct bpf_map_info; `id` is its second u32.
            let mut info = [0u8; 128];
            let mut attr = Attr::new();
            attr.put_u32(0, map.as_raw_fd() as u32);
            attr.put_u32(4, info.len() as u32);
            attr.put_u64(8, info.as_mut_ptr() as u64);
            attr.call(BPF_OBJ_GET_INFO_BY_FD)?;
            Ok(u32::from_ne_bytes([info[4], info[5], info[6], info[7]]))
        }

        /// The key of an sk_storage map is the socket's fd.
        pub fn set(map: &OwnedFd, socket: &impl AsRawFd, value: &[u8]) -> io::Result<()> {
            let key: i32 = socket.as_raw_fd();
            let mut attr = Attr::new();
            attr.put_u32(0, map.as_raw_fd() as u32);
            attr.put_u64(8, (&raw const key) as u64);
            attr.put_u64(16, value.as_ptr() as u64);
            attr.call(BPF_MAP_UPDATE_ELEM).map(drop)
        }
    }
}
