//! The control API between the CLI and the daemon: one JSON request and one JSON response per
//! connection, each on one line, over the Unix control socket (see `access`) or the remote
//! admin endpoint's mutual TLS (see `remote_admin`); both carry exactly the same protocol.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        edge::{EdgeView, GrantRequest},
        plan::Plan,
        status::Status,
        why::{Explanation, Transport, WhySource},
    },
    listener::remaining,
};

/// Long enough for an apply of a large policy; short enough that a hung daemon is reported.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How long after connecting a client's whole request must have arrived, however slowly its
/// bytes trickle in. The CLI writes its request at once, and even a 64 MiB policy takes well
/// under a second on one host; the rest is room for a loaded host or a remote admin's
/// network. A client that says nothing gives its connection back this soon.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How much of a request is read at a time; a request is never buffered beyond its limit.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Validate and atomically apply a policy. `file` is only used in messages.
    Apply {
        file: String,
        text: String,
    },
    /// What applying the policy would change; nothing is applied. Refused as `Apply` is.
    Plan {
        file: String,
        text: String,
    },
    Status,
    Grant(GrantRequest),
    Revoke {
        id: String,
    },
    /// Every edge; those unused for `stale_after_ms` are marked stale.
    Edges {
        stale_after_ms: u64,
    },
    /// Decision events: every one kept in the event log, or with `follow` each new one as it
    /// happens.
    Events {
        follow: bool,
    },
    /// How the kernel would judge a new flow, explained from the live maps.
    Why {
        from: WhySource,
        to: SocketAddr,
        protocol: Transport,
    },
}

impl Request {
    /// Whether the request changes what is enforced (the rest only read).
    pub fn changes(&self) -> bool {
        matches!(
            self,
            Self::Apply { .. } | Self::Grant(_) | Self::Revoke { .. }
        )
    }

    /// The file name and text of the policy the request carries, if it carries one.
    pub fn policy(&self) -> Option<(&str, &str)> {
        match self {
            Self::Apply { file, text } | Self::Plan { file, text } => Some((file, text)),
            _ => None,
        }
    }

    /// The request's name, as the protocol spells it: what the audit log records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Plan { .. } => "plan",
            Self::Status => "status",
            Self::Grant(_) => "grant",
            Self::Revoke { .. } => "revoke",
            Self::Edges { .. } => "edges",
            Self::Events { .. } => "events",
            Self::Why { .. } => "why",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Applied {
        generation: u64,
        /// Live connections the new policy ended.
        ended: usize,
    },
    Granted {
        id: String,
        expires: jiff::Timestamp,
        generation: u64,
    },
    Revoked {
        id: String,
        ended: usize,
        generation: u64,
    },
    Edges {
        edges: Vec<EdgeView>,
    },
    /// The policy was refused; nothing changed. Each entry is `FILE:LINE:COL: message` or a
    /// message about the policy as a whole.
    Rejected {
        errors: Vec<String>,
    },
    Status(Box<Status>),
    /// Followed by one `EventRecord` per line until the daemon closes the connection (after
    /// the log's last event, or never when following).
    Events,
    Plan(Box<Plan>),
    Why(Box<Explanation>),
    Error {
        message: String,
    },
}

/// A connection that carries the protocol: the Unix control socket, or TLS over TCP to the
/// remote admin endpoint.
pub trait Channel: Read + Write + Send + 'static {
    /// Deadlines for each read and write; `None` waits for ever.
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;

    /// Ends the daemon's side after its last line, so the client can tell the end of an
    /// answer from a cut connection.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// When the credential that authenticated the client stops proving anything: a follower
    /// gets no event after it.
    fn expires(&self) -> Option<jiff::Timestamp> {
        None
    }
}

impl Channel for UnixStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

/// What the daemon waits for of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest request, in bytes, without its final newline.
    pub max: usize,
    /// When the connection was accepted; the whole request must arrive within
    /// [`REQUEST_DEADLINE`] of it.
    pub accepted: Instant,
}

/// Reads one request from a connected client: at most `limits.max` bytes, all of them before
/// the deadline; a longer or later request is refused rather than waited for or buffered.
pub fn read_request(stream: &mut impl Channel, limits: Limits) -> Result<Request> {
    let deadline = limits.accepted + REQUEST_DEADLINE;
    let late = || {
        anyhow::anyhow!(
            "the request did not arrive within {} s of connecting",
            REQUEST_DEADLINE.as_secs()
        )
    };
    let mut line = Vec::new();
    let mut chunk = vec![0; CHUNK];
    loop {
        let left = remaining(deadline).map_err(|_| late())?;
        stream.set_timeouts(Some(left), Some(TIMEOUT))?;
        let read = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late());
            }
            Err(err) => return Err(err).context("reading the request"),
        };
        let got = chunk.get(..read).unwrap_or_default();
        let end = got.iter().position(|&b| b == b'\n');
        let part = got.get(..end.unwrap_or(read)).unwrap_or_default();
        if line.len() + part.len() > limits.max {
            bail!("request larger than {} bytes", limits.max);
        }
        line.extend_from_slice(part);
        if end.is_some() {
            break;
        }
    }
    serde_json::from_slice(&line).context("malformed request")
}

pub fn write_response(stream: &mut impl Write, response: &Response) -> Result<()> {
    let mut line = serde_json::to_string(response)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max,
            accepted: Instant::now(),
        }
    }

    #[test]
    fn a_request_is_read_up_to_its_newline() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        client.write_all(b"{\"request\":\"status\"}\n").unwrap();
        let request = read_request(&mut server, limits(20)).unwrap();
        assert!(matches!(request, Request::Status), "{request:?}");
    }

    #[test]
    fn a_request_over_the_limit_is_refused_without_waiting_for_the_rest() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        // More than the limit, and no newline yet: the reader must not wait for one.
        client.write_all(&[b'x'; CHUNK]).unwrap();
        let err = read_request(&mut server, limits(100)).unwrap_err();
        assert_eq!(format!("{err:#}"), "request larger than 100 bytes");
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_whole_request_deadline() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        // Each byte comes well within a per-read timeout; only the deadline ends it.
        let trickle = thread::spawn(move || {
            while client.write_all(b" ").is_ok() {
                thread::sleep(Duration::from_millis(20));
            }
        });
        let limits = Limits {
            max: 1 << 20,
            accepted: Instant::now() - REQUEST_DEADLINE + Duration::from_millis(300),
        };
        let err = read_request(&mut server, limits).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "the request did not arrive within 10 s of connecting"
        );
        drop(server);
        trickle.join().unwrap();
    }
}
