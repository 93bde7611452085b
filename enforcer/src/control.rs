//! The control API between the CLI and the daemon: one JSON request and one JSON response per
//! connection, each on one line, over a Unix socket of mode 0600 (only root can connect).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    event_record::EventRecord,
    grants::{EdgeView, GrantRequest},
    plan::Plan,
    status::Status,
    why::{Explanation, Transport, WhySource},
};

/// Long enough for an apply of a large policy; short enough that a hung daemon is reported.
const TIMEOUT: Duration = Duration::from_secs(60);

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

/// Sends one request to the daemon at `socket` and returns its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let stream = send(socket, request)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .context("reading the daemon's reply")?;
    parse_reply(&reply)
}

/// Asks for decision events, calls `ready` once the daemon has accepted the request (a
/// follower then receives every later event), and hands each event to `each` as it arrives;
/// returns when the daemon ends the stream (when following: never, unless the daemon stops).
pub fn events(
    socket: &Path,
    follow: bool,
    ready: impl FnOnce(),
    mut each: impl FnMut(EventRecord) -> Result<()>,
) -> Result<()> {
    let stream = send(socket, &Request::Events { follow })?;
    // Events may be minutes apart.
    stream.set_read_timeout(None)?;
    let mut lines = BufReader::new(&stream).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    match parse_reply(&first)? {
        Response::Events => ready(),
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
    for line in lines {
        let line = line.context("reading events from the daemon")?;
        each(serde_json::from_str(&line).context("the daemon sent an event that is not valid")?)?;
    }
    Ok(())
}

fn send(socket: &Path, request: &Request) -> Result<UnixStream> {
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied: cannot connect to the enforcer daemon at {} (only root may, \
             unless the daemon runs with --admin-group or --read-group)",
            socket.display()
        ),
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "cannot reach the enforcer daemon at {} (is it running? pass --socket if it \
                     uses another path)",
                    socket.display()
                )
            });
        }
    };
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    Ok(stream)
}

fn parse_reply(reply: &str) -> Result<Response> {
    if reply.is_empty() {
        bail!("the daemon closed the connection without replying");
    }
    serde_json::from_str(reply).context("the daemon's reply is not valid")
}

/// Reads one request from a connected client.
pub fn read_request(stream: &UnixStream) -> Result<Request> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).context("malformed request")
}

pub fn write_response(mut stream: &UnixStream, response: &Response) -> Result<()> {
    let mut line = serde_json::to_string(response)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    Ok(())
}
