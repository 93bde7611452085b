//! Serving the control socket: admitting clients, reading requests within their limits, and
//! answering them.

use std::{
    fs,
    io::ErrorKind,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    access,
    heap::release_freed_memory,
    machine::{Daemon, parse_for_reader, parse_with_bundles},
};
use crate::{
    api::control::{self, Channel, Limits, Request, Response},
    daemon::{
        access::Rights,
        admission::{Admitted, Clients, Refusals},
    },
    observe::{event_followers::Followers, event_log},
};

/// Where `enforcer events` requests are answered from.
#[derive(Clone)]
pub struct EventService {
    pub log: PathBuf,
    pub followers: Followers,
}

impl EventService {
    /// Answers an events request on its own thread: the log may be long and a follower
    /// stays connected, and neither may hold up other requests. The log is written as it is
    /// read, a chunk at a time, so a client that reads slowly or never holds one chunk of
    /// the daemon's memory, not the log.
    fn answer(&self, mut stream: impl Channel, follow: bool) {
        let log_path = self.log.clone();
        let followers = self.followers.clone();
        let answered = std::thread::Builder::new()
            .name("events-client".into())
            .spawn(move || {
                if follow {
                    followers.follow(stream);
                    return;
                }
                let result =
                    control::write_response(&mut stream, &Response::Events).and_then(|()| {
                        event_log::copy(&log_path, &mut stream)
                            .with_context(|| format!("reading {}", log_path.display()))?;
                        stream.finish()?;
                        Ok(())
                    });
                if let Err(err) = result {
                    log_unanswered("an events request", &err);
                }
            });
        if let Err(err) = answered {
            log::warn!("could not answer an events request: {err}");
        }
    }
}

/// Logs why a request went unanswered. A client that went away before its answer is no fault
/// of the daemon's, and any client may do it in a loop: that is logged at debug level only,
/// so it cannot flood the log.
fn log_unanswered(what: &str, err: &anyhow::Error) {
    let gone = err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|err| {
            matches!(
                err.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            )
        })
    });
    if gone {
        log::debug!("could not answer {what}: the client went away ({err:#})");
    } else {
        log::warn!("could not answer {what}: {err:#}");
    }
}

/// After a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Answers control requests on the Unix socket, each client as the kernel reports it and on
/// a thread of its own, so a slow client holds up nobody else. A client with no rights, or
/// with as many connections in progress as it may have, is refused before anything is read
/// from it. A request is read before the daemon is locked, so a slow client never holds up
/// the maintenance thread.
pub fn serve(
    daemon: &Arc<Mutex<Daemon>>,
    listener: &UnixListener,
    events: &EventService,
    groups: access::Groups,
) {
    let clients = Clients::default();
    let refusals = Arc::new(Mutex::new(Refusals::default()));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::error!("control socket accept failed: {err}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let accepted = Instant::now();
        let peer = match access::peer(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                let message = format!("reading the client's credentials: {err}");
                log::warn!("refused a control client: {message}");
                refuse(stream, &message);
                continue;
            }
        };
        let admitted = groups
            .rights(&peer)
            .ok_or_else(|| groups.refusal(&peer, None))
            .and_then(|rights| Ok((rights, clients.admit(peer.uid, rights)?)));
        let (rights, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(message) => {
                note_refusal(&refusals, peer.uid, &message);
                refuse(stream, &message);
                continue;
            }
        };
        let stream = Admitted::new(stream, slot);
        let (daemon, events, refusals) =
            (Arc::clone(daemon), events.clone(), Arc::clone(&refusals));
        let limits = Limits {
            max: rights.max_request(),
            accepted,
        };
        let spawned = thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                answer(&daemon, &events, stream, limits, rights, |request| {
                    let allowed = groups.check(&peer, request);
                    if let Err(message) = &allowed {
                        note_refusal(&refusals, peer.uid, message);
                    }
                    allowed
                });
            });
        if let Err(err) = spawned {
            log::error!("could not start a thread to answer a control client: {err}");
        }
    }
}

/// Answers a client refused before its request is read, without waiting on it: its socket's
/// buffer is empty, so the one short line fits at once, and a client that never reads cannot
/// hold up the accept loop. A client that is gone needs no answer, and logging that it is gone
/// would let it flood the log.
fn refuse(mut stream: UnixStream, message: &str) {
    if stream.set_nonblocking(true).is_ok() {
        let response = Response::Error {
            message: message.to_owned(),
        };
        let _gone = control::write_response(&mut stream, &response);
    }
}

/// Logs a refusal unless `uid` was refused moments ago, in which case it is counted into the
/// next line.
fn note_refusal(refusals: &Mutex<Refusals>, uid: u32, message: &str) {
    let line = refusals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .note(uid, message, Instant::now());
    if let Some(line) = line {
        log::warn!("refused a control request: {line}");
    }
}

/// Reads one request from `stream` within `limits` and answers it, if `allowed` (which logs
/// any refusal) accepts it from a client with `rights`; otherwise answers with its message and
/// serves nothing. Both transports, the control socket and the remote admin endpoint, come
/// through here.
pub fn answer(
    daemon: &Mutex<Daemon>,
    events: &EventService,
    mut stream: impl Channel,
    limits: Limits,
    rights: Rights,
    allowed: impl FnOnce(&Request) -> Result<(), String>,
) {
    let response = match control::read_request(&mut stream, limits) {
        Ok(request) => match allowed(&request) {
            Ok(()) => match request {
                Request::Events { follow } => {
                    events.answer(stream, follow);
                    return;
                }
                request => {
                    // Parsed before the daemon is locked: at 100,000 edges parsing is most
                    // of an apply, and `status` or `edge revoke` need not wait for it.
                    let parsed = match &request {
                        Request::Plan { file, text } if rights == Rights::Read => {
                            let in_force = daemon
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .bundle_paths();
                            Some(parse_for_reader(file, text, &in_force))
                        }
                        Request::Apply { file, text } | Request::Plan { file, text } => {
                            Some(parse_with_bundles(file, text))
                        }
                        _ => None,
                    };
                    let response = daemon
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .handle(request, parsed);
                    release_freed_memory();
                    response
                }
            },
            Err(message) => Response::Error { message },
        },
        Err(err) => Response::Error {
            message: format!("{err:#}"),
        },
    };
    if let Err(err) =
        control::write_response(&mut stream, &response).and_then(|()| Ok(stream.finish()?))
    {
        log_unanswered("a control request", &err);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Vacancy {
    Free,
    /// A socket nothing answers on, left by a daemon that was killed.
    Stale,
}

/// Whether a socket may be bound at `path`: nothing is there, or a stale socket. Anything
/// else is refused and left as it is: a live daemon's socket, and whatever is not a socket
/// (a regular file, a symlink, a directory), which is never ours to delete.
pub fn vacant_socket(path: &Path) -> Result<Vacancy> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vacancy::Free),
        Err(err) => return Err(err).with_context(|| format!("checking {}", path.display())),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        bail!(
            "{} exists and is not a socket; refusing to replace it (remove it or choose another \
             path); nothing was changed",
            path.display()
        );
    }
    if UnixStream::connect(path).is_ok() {
        bail!("a daemon is already answering on {}", path.display());
    }
    Ok(Vacancy::Stale)
}

/// Binds the control socket at `path`: mode 0600 (root only), or 0666 when `shared` (other
/// users may connect, and each request is then checked against the peer's credentials). A
/// directory created for it is 0700, or 0711 when shared (others may pass, not list). Only a
/// stale socket at `path` is replaced.
pub fn bind_socket(path: &Path, shared: bool) -> Result<UnixListener> {
    let (dir_mode, socket_mode) = if shared {
        (0o711, 0o666)
    } else {
        (0o700, 0o600)
    };
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if vacant_socket(path)? == Vacancy::Stale {
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(err) if err.kind() == ErrorKind::AddrInUse => {
            bail!("{} is in use by another process", path.display())
        }
        Err(err) => return Err(err).with_context(|| format!("binding {}", path.display())),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(socket_mode))
        .with_context(|| format!("setting mode {socket_mode:o} on {}", path.display()))?;
    Ok(listener)
}
