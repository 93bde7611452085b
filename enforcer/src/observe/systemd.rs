//! What the daemon tells its service manager, in the sd_notify(3) protocol: one datagram per
//! message to the `AF_UNIX` socket named by `NOTIFY_SOCKET` (a path, or with a leading `@` an
//! abstract name), each line a `VARIABLE=value` pair. The daemon sends `READY=1` once its
//! first policy is enforced (programs attached, maps written), `STATUS=` with the generation
//! after every change, `RELOADING=1` and `READY=1` around each reload of `--policy`,
//! `WATCHDOG=1` from its maintenance loop, and `STOPPING=1` when it stops.
//!
//! The protocol is a few lines, written here rather than taken from the `sd-notify` crate,
//! which (0.5.0) connects to `NOTIFY_SOCKET` as a path only: systemd may hand out an abstract
//! address (`@/org/freedesktop/systemd1/notify/...`), and so do test harnesses.
//!
//! `NOTIFY_SOCKET` and the watchdog variables stay in the environment: the daemon starts no
//! other program that could inherit them and take them for its own, and removing a variable
//! while threads run is not safe.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Duration,
};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The service manager that started the daemon, when one asked to be told.
pub struct ServiceManager {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// advises, so one late ping is not yet a missed one.
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// The manager named by `NOTIFY_SOCKET`, if it is set. A value that names no socket this
    /// daemon can send to is logged and ignored: the start goes on, and the manager that
    /// waits for `READY=1` reports the timeout.
    pub fn from_env() -> Option<Self> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        let found = address(&value).and_then(|address| {
            let socket = UnixDatagram::unbound()?;
            Ok((socket, address))
        });
        match found {
            Ok((socket, address)) => Some(Self {
                socket,
                address,
                watchdog: watchdog_interval(
                    std::env::var(WATCHDOG_USEC).ok().as_deref(),
                    std::env::var(WATCHDOG_PID).ok().as_deref(),
                    std::process::id(),
                ),
            }),
            Err(err) => {
                log::warn!(
                    "{NOTIFY_SOCKET}={} cannot be used ({err}); the service manager will not \
                     hear from this daemon",
                    value.to_string_lossy()
                );
                None
            }
        }
    }

    /// How often the watchdog wants a ping, when it is enabled for this process.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The first policy is enforced: the daemon is up.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// What the daemon is doing now, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// A reload of the configuration starts; [`Self::ready`] ends it. The time lets a manager
    /// that sent the reload signal itself (`Type=notify-reload`, systemd 253+) tell this
    /// reload from an earlier one.
    pub fn reloading(&self) {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the current time into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
        let usec = now.tv_sec.unsigned_abs() * 1_000_000 + now.tv_nsec.unsigned_abs() / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading --policy"
        ));
    }

    /// The daemon is alive and its loops run.
    pub fn ping_watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The daemon is stopping (enforcement stays).
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    fn send(&self, message: &str) {
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            log::warn!(
                "could not notify the service manager ({}): {err}",
                message.lines().next().unwrap_or_default()
            );
        }
    }
}

/// The socket a `NOTIFY_SOCKET` value names: an absolute path, or after `@` an abstract name.
fn address(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an @abstract name",
        )),
    }
}

/// Half the watchdog timeout, when `WATCHDOG_USEC` is a positive number of microseconds and
/// `WATCHDOG_PID`, if set, is this process (a variable inherited from a parent names the
/// parent's watchdog, not this one's).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec = usec?.trim().parse::<u64>().ok().filter(|&usec| usec > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(address: SocketAddr, watchdog: Option<Duration>) -> ServiceManager {
        ServiceManager {
            socket: UnixDatagram::unbound().expect("a datagram socket"),
            address,
            watchdog,
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut buf = [0; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let path = address(OsStr::new("/run/systemd/notify")).expect("a path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name =
            address(OsStr::new("@/org/freedesktop/systemd1/notify/1")).expect("an abstract name");
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/1"[..])
        );
        for bad in ["", "relative/notify", "vsock:2:1234"] {
            assert!(address(OsStr::new(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout_and_only_for_this_process() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("enforcer-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
        let listener = UnixDatagram::bind_addr(&address).expect("binding the abstract name");
        let manager = manager(address, None);
        manager.ready("enforcing policy generation 3");
        assert_eq!(
            receive(&listener),
            "READY=1\nSTATUS=enforcing policy generation 3"
        );
        manager.reloading();
        let reloading = receive(&listener);
        let lines: Vec<_> = reloading.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|usec| usec > 0), "{reloading:?}");
        manager.ping_watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1");
        manager.stopping("stopped");
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=stopped");
    }

    #[test]
    fn messages_reach_a_socket_file() {
        let dir = std::env::temp_dir().join(format!("enforcer-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("binding the socket file");
        let address = address(path.as_os_str()).expect("a path");
        manager(address, None).status("enforcing policy generation 4");
        assert_eq!(receive(&listener), "STATUS=enforcing policy generation 4");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
