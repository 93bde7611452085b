//! `enforcer daemon`: puts enforcement in place (or adopts what a previous daemon left pinned),
//! then serves the control socket. Enforcement never depends on this process staying alive:
//! programs, links and maps are pinned, and exiting, crashing or being killed leaves them as
//! they are. Only `enforcer teardown` removes them.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    net::SocketAddr,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

pub mod access;
pub mod admission;
mod attested;
mod maintain;
pub mod remote_admin;
pub mod tcp_clients;

use anyhow::{Context as _, Result, bail};
use aya::maps::RingBuf;
use enforcer_common::{names, verdict::Peer};
use enforcer_policy::{Action, CgroupPath, Policy};

use crate::{
    api::control::{self, Channel, Limits, Request, Response},
    api::edge::{EdgeView, GrantRequest, Source},
    api::plan::Plan,
    api::status::{self, Status},
    daemon::admission::{Admitted, Clients, Refusals},
    daemon::remote_admin::RemoteAdmin,
    kernel::addresses::Addresses,
    kernel::backfill,
    kernel::bpffs,
    kernel::cgroup_paths::CgroupPaths,
    kernel::cgroupfs::{CgroupFs, CgroupRoot},
    kernel::revocation::{Connections, Judge, Snapshot},
    kernel::usage::Usage,
    kernel::{
        self,
        attach::{self, AttachedProgram},
        policy_maps::PolicyMaps,
    },
    observe::event_feed::{Feed, Followers},
    observe::event_log::{self, EventLog},
    observe::event_record::{self, EventRecord},
    observe::metrics::{self, Commits, Outcome},
    observe::tally::Tally,
    paths::{PinDir, StateDir},
    pipeline::clock::Clocks,
    pipeline::compile::{self, Compiled},
    pipeline::edges::{Book, LiveEdge},
    pipeline::grants::{self, Used},
    pipeline::plan,
    trust::attestation,
    trust::bundles::{Trust, TrustState},
    why,
};

/// Bindings of each kind the log names one by one after an apply; the rest are counted.
const BINDING_WARNINGS: usize = 5;

/// `status` marks edges unused for this long as stale (`edge list --stale-after` chooses).
const DEFAULT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub struct Options {
    pub policy: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub pin_dir: PinDir,
    pub socket: PathBuf,
    pub state_dir: StateDir,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Who besides root may use the control socket.
    pub groups: access::Groups,
    /// Where workloads attest with their SVIDs, if anywhere.
    pub attest_socket: Option<PathBuf>,
    /// The daemon's own SVID and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long before a trust bundle lapses `status` starts warning.
    pub bundle_warn_before: std::time::Duration,
    /// The remote admin endpoint, if any, checked but not yet bound.
    pub remote_admin: Option<RemoteAdmin>,
}

pub struct Daemon {
    cgroups: CgroupFs,
    root: CgroupRoot,
    pins: PinDir,
    state: StateDir,
    maps: PolicyMaps,
    addresses: Addresses,
    usage: Usage,
    connections: Connections,
    /// The loaded programs; once attached they also live on in their pinned links.
    ebpf: aya::Ebpf,
    programs: Vec<AttachedProgram>,
    policy: Policy,
    policy_file: String,
    /// The policy in force as the maps hold it; shared with the maps' record of each slot.
    compiled: Arc<Compiled>,
    generation: u64,
    /// The edge record as saved in the state dir, and the edges it resolves to.
    book: Book,
    live: Vec<LiveEdge>,
    /// Where each edge index is in `live`, for naming the edges of kernel events.
    live_at: std::collections::HashMap<u32, usize>,
    /// Boot-clock nanosecond up to which edge expiries have ended their connections.
    expiries_done: u64,
    /// Decisions seen in the kernel's event stream.
    tally: Tally,
    /// Policy changes by outcome and how long they took, for the metrics.
    commits: Commits,
    /// Where the connections this daemon ends are reported, as events.
    ended: mpsc::Sender<EventRecord>,
    attestation: attested::Attestation,
    /// The trust bundles the policy names, and what they allow the edges that require them.
    trust: TrustState,
    bundle_warn_before: std::time::Duration,
}

/// What changed: the generation now in force and the live connections ended.
struct Committed {
    generation: u64,
    ended: usize,
    /// How long compiling took, and writing and swapping the maps.
    compile: std::time::Duration,
    maps: std::time::Duration,
}

impl Committed {
    /// The kernel side of the change, for the log: what `cargo xtask bench apply` reads.
    fn timing(&self) -> String {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        format!(
            "kernel side {:.1} ms (compile {:.1} ms, maps {:.1} ms)",
            ms(self.compile + self.maps),
            ms(self.compile),
            ms(self.maps)
        )
    }
}

/// A policy ready to be put in force (see `Daemon::prepare`).
struct Prepared {
    live: Vec<LiveEdge>,
    book: Book,
    compiled: Compiled,
}

/// Why an apply did not happen. Either way nothing changed.
enum ApplyError {
    Rejected(Vec<String>),
    Failed(anyhow::Error),
}

pub fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    let file = options.policy.display().to_string();
    // The kernel side (probing the kernel, opening or creating the maps, verifying every
    // program) and reading the policy need nothing from each other and take about a second
    // each at 100,000 edges, so they run side by side. Neither changes anything on the host:
    // whichever refuses (the kernel's refusal is reported first), nothing was changed.
    let (loaded, read) = thread::scope(|scope| {
        let kernel = thread::Builder::new()
            .name("kernel-load".into())
            .spawn_scoped(scope, || {
                let started = Instant::now();
                kernel::features::check()?;
                let loaded = kernel::load(&options.pin_dir)?;
                anyhow::Ok((loaded, started.elapsed()))
            })
            .context("starting the thread that loads the programs")?;
        let started = Instant::now();
        let read = read_policy(&options.policy, &file).map(|read| (read, started.elapsed()));
        let loaded = kernel
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        anyhow::Ok((loaded, read))
    })?;
    let (loaded, load_time) = loaded?;
    let ((text, policy), parse_time) = read.map_err(|(diagnostics, err)| {
        for d in &diagnostics {
            eprintln!("{}", one_line(d));
        }
        err
    })?;
    // A path that is taken is refused now, not when the socket is bound after pinning.
    for socket in std::iter::once(&options.socket).chain(&options.attest_socket) {
        vacant_socket(socket)?;
    }
    // A bundle that cannot be used now suspends the edges that require it, but does not stop
    // the daemon: refusing to start would leave those edges in force in the kernel.
    let trust = TrustState::load(&policy, &file, false).unwrap_or_default();
    // Bound before anything on the host changes, so an unusable address changes nothing.
    let metrics_listener = options.metrics_addr.map(metrics::bind).transpose()?;
    let attest_identity = options
        .attest_socket
        .as_ref()
        .map(|_| {
            let own = options
                .tls
                .as_ref()
                .map(|(cert, key)| crate::trust::Identity::read(cert, key))
                .transpose()?;
            attestation::server::identity(own)
        })
        .transpose()?;
    let admin_listener = options.remote_admin.map(RemoteAdmin::bind).transpose()?;
    let cgroups = CgroupFs::discover()?;
    let root = cgroups.root(options.cgroup_root.as_deref())?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(options.state_dir.path())
        .with_context(|| format!("creating state dir {}", options.state_dir.path().display()))?;
    let _lock = lock(&options.state_dir)?;
    let book = without_expired_grants(Book::load(&options.state_dir)?);
    let attested = attested::load(&options.state_dir, &cgroups)?;
    if bpffs::ensure_pin_dir(options.pin_dir.path())? {
        log("mounted bpffs at /sys/fs/bpf");
    }
    let listener = bind_socket(&options.socket, options.groups.any())?;
    let attest_listener = options
        .attest_socket
        .as_deref()
        .map(attestation::server::bind)
        .transpose()?;

    // Every program passed the verifier before the maps it created are pinned, and before
    // any hook or policy changes.
    loaded.pin_created(&options.pin_dir)?;
    let mut ebpf = loaded.ebpf;
    let adopting = options.pin_dir.links().exists();
    let maps = PolicyMaps::take(&mut ebpf)?;
    let mut addresses = Addresses::take(&mut ebpf)?;
    addresses.refresh_host()?;
    let usage = Usage::take(&mut ebpf)?;
    let connections = Connections::take(&mut ebpf)?;
    let notify = RingBuf::try_from(
        ebpf.take_map(names::MAP_NOTIFY)
            .with_context(|| format!("the eBPF object has no map {}", names::MAP_NOTIFY))?,
    )?;
    let followers = Followers::default();
    let events_path = options.state_dir.events();
    let event_log = EventLog::open(&events_path)
        .with_context(|| format!("opening the event log {}", events_path.display()))?;
    let (ended, ended_events) = mpsc::channel();
    let feed = Feed::new(
        &mut ebpf,
        event_log,
        CgroupPaths::new(cgroups.mount()),
        followers.clone(),
        ended_events,
    )?;
    let generation = maps.active()?.config.generation;
    let mut daemon = Daemon {
        cgroups,
        root,
        pins: options.pin_dir,
        state: options.state_dir,
        maps,
        addresses,
        usage,
        connections,
        ebpf,
        programs: Vec::new(),
        policy: Policy {
            version: 1,
            defaults: Default::default(),
            domains: Vec::new(),
            federation: Vec::new(),
        },
        policy_file: String::new(),
        compiled: Arc::default(),
        generation,
        book,
        live: Vec::new(),
        live_at: std::collections::HashMap::new(),
        expiries_done: Clocks::now().boot,
        tally: Tally::default(),
        commits: Commits::default(),
        ended,
        attestation: attested::Attestation {
            store: attested,
            socket: options.attest_socket.clone(),
        },
        trust: TrustState::default(),
        bundle_warn_before: options.bundle_warn_before,
    };
    for (domain, why) in trust.unusable_now(jiff::Timestamp::now()) {
        log(&format!(
            "warning: the trust bundle of {domain} cannot be used now ({why}); edges that \
             require it are suspended"
        ));
    }
    let applying = Instant::now();
    let applied = daemon.apply_parsed(policy, trust, &file, &text);
    let apply_time = applying.elapsed();
    // The daemon runs inside this function: the text would otherwise stay for its lifetime.
    drop(text);
    release_freed_memory();
    let applied = match applied {
        Ok(committed) => committed,
        Err(ApplyError::Rejected(errors)) => {
            for e in &errors {
                eprintln!("{}", one_line(e));
            }
            bail!("policy {file} was refused; nothing was changed");
        }
        Err(ApplyError::Failed(err)) => return Err(err),
    };
    let attaching = Instant::now();
    // Sockets that already exist get their creators' domains before the checks that read
    // tags are attached, and once more afterwards for sockets created in between.
    let tagged = daemon.tag_existing()?;
    daemon.programs = attach::attach_all(&mut daemon.ebpf, &daemon.root, &daemon.pins)?;
    let tagged = tagged + daemon.tag_existing()?;
    let attach_time = attaching.elapsed();
    for p in &daemon.programs {
        log(&format!(
            "{} {} at {} (cgroup id {}), link pinned at {}",
            p.how,
            p.program,
            daemon.root.dir.display(),
            daemon.root.id,
            p.link_pin.display()
        ));
    }
    log(&format!(
        "{} enforcement; policy generation {} active ({file}); tagged {tagged} pre-existing socket(s)",
        if adopting { "adopted" } else { "started" },
        daemon.generation
    ));
    for warning in daemon.binding_warnings() {
        log(&warning);
    }
    let attest_server = match (attest_listener, attest_identity) {
        (Some(listener), Some(identity)) => Some(attestation::server::Server::new(
            listener,
            identity,
            daemon.trust.shared(),
            daemon.cgroups.clone(),
        )?),
        _ => None,
    };
    daemon.refresh_addresses(true)?;
    let pins = daemon.pins.clone();
    let daemon = Arc::new(Mutex::new(daemon));
    maintain::spawn(Arc::clone(&daemon), notify)?;
    feed.spawn(Arc::clone(&daemon))?;
    if let Some(listener) = metrics_listener {
        metrics::spawn(listener, Arc::clone(&daemon), &pins)?;
    }
    if let Some(server) = attest_server {
        server.spawn(Arc::clone(&daemon))?;
        log(&format!(
            "attestation socket {}",
            options
                .attest_socket
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        ));
    }
    let events = EventService {
        log: events_path,
        followers,
    };
    if let Some(admin) = admin_listener {
        admin.spawn(Arc::clone(&daemon), events.clone())?;
    }
    release_freed_memory();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    log(&format!(
        "started in {:.0} ms (policy read {:.0} ms alongside programs loaded {:.0} ms; policy \
         applied {:.0} ms: compile {:.0} ms, maps {:.0} ms; programs attached {:.0} ms)",
        ms(started.elapsed()),
        ms(parse_time),
        ms(load_time),
        ms(apply_time),
        ms(applied.compile),
        ms(applied.maps),
        ms(attach_time)
    ));
    log(&format!("control socket {}", options.socket.display()));
    serve(&daemon, &listener, &events, options.groups);
    Ok(())
}

/// The policy file read, parsed and checked as a whole (capacities included) before anything
/// on the host changes; refused: the lines to print (one per diagnostic) and the error.
fn read_policy(path: &Path, file: &str) -> Result<(String, Policy), (Vec<String>, anyhow::Error)> {
    let refused = format!("policy {file} was refused; nothing was changed");
    let text = crate::pipeline::policy_file::read(path)
        .map_err(|why| (Vec::new(), anyhow::anyhow!("{why}; nothing was changed")))?;
    match enforcer_policy::parse(file, &text) {
        Ok(policy) => match compile::check_alone(&policy) {
            Ok(()) => Ok((text, policy)),
            Err(err) => Err((Vec::new(), err.context(refused))),
        },
        Err(diagnostics) => Err((
            diagnostics.iter().map(ToString::to_string).collect(),
            anyhow::anyhow!(refused),
        )),
    }
}

/// Where `enforcer events` requests are answered from.
#[derive(Clone)]
pub struct EventService {
    log: PathBuf,
    followers: Followers,
}

impl EventService {
    /// Answers an events request on its own thread: the log may be long and a follower
    /// stays connected, and neither may hold up other requests.
    fn answer(&self, mut stream: impl Channel, follow: bool) {
        let log_path = self.log.clone();
        let followers = self.followers.clone();
        let answered = std::thread::Builder::new()
            .name("events-client".into())
            .spawn(move || {
                let result =
                    control::write_response(&mut stream, &Response::Events).and_then(|()| {
                        if follow {
                            return followers.add(Box::new(stream));
                        }
                        let lines = event_log::read(&log_path)
                            .with_context(|| format!("reading {}", log_path.display()))?;
                        let mut text = lines.join("\n");
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        stream.write_all(text.as_bytes())?;
                        stream.finish()?;
                        Ok(())
                    });
                if let Err(err) = result {
                    log(&format!("could not answer an events request: {err:#}"));
                }
            });
        if let Err(err) = answered {
            log(&format!("could not answer an events request: {err}"));
        }
    }
}

/// After a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Answers control requests on the Unix socket, each client as the kernel reports it and on
/// a thread of its own, so a slow client holds up nobody else. A client with no rights, or
/// with as many connections in progress as it may have, is refused before anything is read
/// from it. A request is read before the daemon is locked, so a slow client never holds up
/// the maintenance thread.
fn serve(
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
                log(&format!("control socket accept failed: {err}"));
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let accepted = Instant::now();
        let peer = match access::peer(&stream) {
            Ok(peer) => peer,
            Err(err) => {
                let message = format!("reading the client's credentials: {err}");
                log(&format!("refused a control client: {message}"));
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
                answer(&daemon, &events, stream, limits, |request| {
                    let allowed = groups.check(&peer, request);
                    if let Err(message) = &allowed {
                        note_refusal(&refusals, peer.uid, message);
                    }
                    allowed
                });
            });
        if let Err(err) = spawned {
            log(&format!(
                "could not start a thread to answer a control client: {err}"
            ));
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
        log(&format!("refused a control request: {line}"));
    }
}

/// Reads one request from `stream` within `limits` and answers it, if `allowed` (which logs
/// any refusal) accepts it; otherwise answers with its message and serves nothing. Both
/// transports, the control socket and the remote admin endpoint, come through here.
pub fn answer(
    daemon: &Mutex<Daemon>,
    events: &EventService,
    mut stream: impl Channel,
    limits: Limits,
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
        log(&format!("could not answer a control request: {err:#}"));
    }
}

impl Daemon {
    fn apply(&mut self, file: &str, text: &str, parsed: Parsed) -> Result<Committed, ApplyError> {
        let (policy, trust) = parsed?;
        self.apply_parsed(policy, trust, file, text)
    }

    /// Compiles and swaps in a policy already parsed from `text` with the bundles it names,
    /// keeping the grants.
    fn apply_parsed(
        &mut self,
        policy: Policy,
        trust: TrustState,
        file: &str,
        text: &str,
    ) -> Result<Committed, ApplyError> {
        let book = self.book.clone();
        let committed = self.commit(policy, book, Some(trust), file)?;
        self.policy_file = file.to_owned();
        if let Err(err) = fs::write(self.state.active_policy(), text) {
            log(&format!(
                "warning: could not save a copy of the active policy in {}: {err}",
                self.state.active_policy().display()
            ));
        }
        Ok(committed)
    }

    /// [`Self::commit_unmeasured`], counted and timed for the metrics.
    fn commit(
        &mut self,
        policy: Policy,
        book: Book,
        trust: Option<TrustState>,
        origin: &str,
    ) -> Result<Committed, ApplyError> {
        let started = std::time::Instant::now();
        let result = self.commit_unmeasured(policy, book, trust, origin);
        let outcome = match &result {
            Ok(_) => Outcome::Applied,
            Err(ApplyError::Rejected(_)) => Outcome::Rejected,
            Err(ApplyError::Failed(_)) => Outcome::Failed,
        };
        self.commits.record(outcome, started.elapsed());
        result
    }

    /// Makes `policy` with the edges and grants of `book` the enforced policy under a new
    /// generation, with the bundles of `trust` (or those in force), then ends the live
    /// connections it no longer allows. `origin` names the change in messages. Nothing
    /// changes unless the policy compiles, the record is saved and the maps are written.
    fn commit_unmeasured(
        &mut self,
        policy: Policy,
        book: Book,
        trust: Option<TrustState>,
        origin: &str,
    ) -> Result<Committed, ApplyError> {
        let started = std::time::Instant::now();
        let Prepared {
            live,
            book,
            compiled,
        } = self.prepare(
            &policy,
            &book,
            trust.as_ref().unwrap_or(&self.trust),
            origin,
        )?;
        let compile = started.elapsed();
        let compiled = Arc::new(compiled);
        let recorded = self
            .maps
            .record_domains(&compiled.registry)
            .map_err(ApplyError::Failed)?;
        // Saved before the swap: a grant must never be in force without being on disk,
        // or a restart would silently drop it.
        if let Err(err) = book.save(&self.state) {
            self.forget_domains(&recorded);
            return Err(ApplyError::Failed(err));
        }
        let before = self.snapshot_connections();
        let generation = self.generation + 1;
        let swapping = std::time::Instant::now();
        match self.maps.swap_in(&compiled, generation) {
            Ok(warning) => warning.iter().for_each(|w| log(w)),
            Err(err) => {
                if let Err(restore) = self.book.save(&self.state) {
                    log(&format!("could not restore the edge record: {restore:#}"));
                }
                self.forget_domains(&recorded);
                return Err(ApplyError::Failed(err));
            }
        }
        let maps = swapping.elapsed();
        self.generation = generation;
        if let Some(trust) = trust {
            self.trust.adopt(trust);
        }
        let live_at = live
            .iter()
            .enumerate()
            .map(|(at, e)| (e.index, at))
            .collect();
        retire((
            std::mem::replace(&mut self.policy, policy),
            std::mem::replace(&mut self.compiled, compiled),
            std::mem::replace(&mut self.book, book),
            std::mem::replace(&mut self.live, live),
            std::mem::replace(&mut self.live_at, live_at),
        ));
        let indexes: Vec<u32> = self.live.iter().map(|e| e.index).collect();
        if let Err(err) = self.usage.forget_edges(&indexes) {
            log(&format!(
                "could not clear the counters of removed edges: {err:#}"
            ));
        }
        let ended = self.end_refused_connections(before);
        Ok(Committed {
            generation,
            ended,
            compile,
            maps,
        })
    }

    /// Takes back the domain ids recorded for a change that did not happen.
    fn forget_domains(&mut self, ids: &[u32]) {
        if let Err(err) = self.maps.forget_domains(ids) {
            log(&format!("{err:#}"));
        }
    }

    /// What `commit` would put in force for `policy` with the grants of `book`: the edges,
    /// the record that keeps them, the domain registry in force and the compiled policy. Only
    /// reads: nothing is saved, and ids for new domains are not recorded.
    fn prepare(
        &self,
        policy: &Policy,
        book: &Book,
        trust: &TrustState,
        origin: &str,
    ) -> Result<Prepared, ApplyError> {
        let clocks = Clocks::now();
        let (mut live, book) = book
            .resolve(policy, clocks.wall_now())
            .map_err(|err| ApplyError::Rejected(vec![format!("{origin}: {err:#}")]))?;
        for edge in &mut live {
            edge.trust = trust.gate(&edge.edge, clocks.wall_now());
        }
        let known = self.maps.registry().map_err(ApplyError::Failed)?;
        let policy = self.attestation.store.augment(policy);
        // A cgroup the policy in force binds already is taken at the id it is bound to:
        // `follow_cgroups` keeps those current (on inotify events, on a rescan, and after every
        // new generation, this one's included), and 10,000 `stat`s would otherwise be most of
        // an apply. Attested cgroups are looked up afresh, as their ids depend on the
        // attestation as well.
        let bound = self.compiled.cgroup_ids();
        let compiled = compile::compile(&policy, &live, known, &clocks, |path| {
            bound
                .get(path)
                .copied()
                .filter(|_| self.attestation.store.get(path).is_none())
                .unwrap_or_else(|| self.cgroup_id(path))
        })
        .map_err(|err| ApplyError::Rejected(vec![format!("{origin}: {err}")]))?;
        Ok(Prepared {
            live,
            book,
            compiled,
        })
    }

    /// What applying `text` would change, and the live connections it would end; changes
    /// nothing.
    fn plan(&self, file: &str, parsed: Parsed) -> Result<Plan, ApplyError> {
        let (policy, trust) = parsed?;
        let next = self.prepare(&policy, &self.book, &trust, file)?;
        let snapshot = self
            .connections
            .snapshot(&self.addresses.pod_namespaces())
            .map_err(ApplyError::Failed)?;
        let now = plan::Side {
            policy: &self.policy,
            live: &self.live,
            compiled: &self.compiled,
        };
        let after = plan::Side {
            policy: &policy,
            live: &next.live,
            compiled: &next.compiled,
        };
        Ok(plan::plan(
            file,
            self.generation,
            &now,
            &after,
            &snapshot,
            Clocks::now().boot,
        ))
    }

    fn snapshot_connections(&self) -> Option<Snapshot> {
        let pods = self.addresses.pod_namespaces();
        match self.connections.snapshot(&pods) {
            Ok(snapshot) => Some(snapshot),
            Err(err) => {
                log(&format!("could not list live connections: {err:#}"));
                None
            }
        }
    }

    /// Ends the live connections (in `before`, or open now) the policy in force refuses
    /// now; the kernel drops their packets already, this makes the applications see it.
    fn end_refused_connections(&mut self, before: Option<Snapshot>) -> usize {
        let Some(before) = before.or_else(|| self.snapshot_connections()) else {
            return 0;
        };
        let clocks = Clocks::now();
        match self
            .connections
            .end_refused(before, &Judge::new(&self.compiled, clocks.boot))
        {
            Ok(ended) => {
                self.expiries_done = clocks.boot;
                for ending in &ended {
                    let record =
                        EventRecord::ended(ending, &*self, self.generation, clocks.wall_now());
                    // The feed only stops with the process.
                    let _ = self.ended.send(record);
                }
                ended.len()
            }
            Err(err) => {
                log(&format!(
                    "could not end every refused connection (the kernel still drops their \
                     packets): {err:#}"
                ));
                0
            }
        }
    }

    /// Ends the connections of edges whose window closed since the last look, and removes
    /// expired grants. Runs every tick; the kernel refuses new flows over an expired edge on
    /// its own, whether this runs or not.
    pub fn expire_edges(&mut self) {
        let now = Clocks::now();
        let since = self.expiries_done;
        let expired: Vec<&LiveEdge> = self
            .live
            .iter()
            .filter(|e| {
                e.ends()
                    .map(|t| now.boot_ns(t))
                    .is_some_and(|at| since < at && at <= now.boot)
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        let names: Vec<String> = expired.iter().map(|e| e.edge.id.to_string()).collect();
        let grants: Vec<String> = expired
            .iter()
            .filter(|e| e.source == Source::Grant)
            .map(|e| e.edge.id.to_string())
            .collect();
        let ended = if grants.is_empty() {
            self.end_refused_connections(None)
        } else {
            let book = self.book.without_grants(|g| grants.contains(&g.id));
            match self.commit(self.policy.clone(), book, None, "expiry") {
                Ok(c) => c.ended,
                Err(ApplyError::Rejected(errors)) => {
                    log(&format!(
                        "removing expired grants failed: {}",
                        errors.join("; ")
                    ));
                    self.end_refused_connections(None)
                }
                Err(ApplyError::Failed(err)) => {
                    log(&format!("removing expired grants failed: {err:#}"));
                    self.end_refused_connections(None)
                }
            }
        };
        log(&format!(
            "edge(s) {} expired; ended {ended} connection(s){}",
            names.join(", "),
            if grants.is_empty() {
                String::new()
            } else {
                format!("; removed expired grant(s) {}", grants.join(", "))
            }
        ));
    }

    /// Re-reads bundle files that changed and re-judges the edges that require bundles; when
    /// one is suspended or resumes (a bundle removed, replaced, lapsed or renewed), puts that
    /// in force under a new generation, ending the connections a suspension refuses, exactly
    /// as a revocation does. Runs every tick.
    pub fn refresh_bundles(&mut self) {
        for change in self.trust.refresh() {
            log(&change);
        }
        let now = Clocks::now().wall_now();
        let warn_before = jiff::SignedDuration::try_from(self.bundle_warn_before)
            .unwrap_or(jiff::SignedDuration::MAX);
        for warning in self.trust.expiry_warnings(now, warn_before) {
            log(&warning);
        }
        let changed: Vec<(String, Trust)> = self
            .live
            .iter()
            .filter_map(|e| {
                let next = self.trust.gate(&e.edge, now);
                (next != e.trust).then(|| (e.edge.id.to_string(), next))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        match self.commit(
            self.policy.clone(),
            self.book.clone(),
            None,
            "trust bundles",
        ) {
            Ok(c) => {
                for (id, trust) in &changed {
                    log(&match trust {
                        Trust::Suspended(why) => format!("edge {id} suspended: {why}"),
                        Trust::Until(t) => {
                            format!("edge {id} active while its bundles are valid, until {t}")
                        }
                        Trust::NotRequired => format!("edge {id} needs no bundles"),
                    });
                }
                log(&format!(
                    "trust bundles changed; ended {} connection(s); policy generation {}",
                    c.ended, c.generation
                ));
            }
            Err(ApplyError::Rejected(errors)) => {
                log(&format!(
                    "applying a trust bundle change failed: {}",
                    errors.join("; ")
                ));
            }
            Err(ApplyError::Failed(err)) => {
                log(&format!("applying a trust bundle change failed: {err:#}"));
            }
        }
    }

    fn grant(&mut self, request: &GrantRequest) -> Response {
        let now = Clocks::now().wall_now();
        let grant = match grants::check(request, &self.policy, &self.live, now) {
            Ok(grant) => grant,
            Err(errors) => return Response::Rejected { errors },
        };
        let book = self.book.with_grant(grant.clone());
        let origin = format!("grant {}", grant.id);
        match self.commit(self.policy.clone(), book, None, &origin) {
            Ok(c) => {
                log(&format!(
                    "granted {} {} -> {} {} {} until {} (owner {}: {}); policy generation {}",
                    grant.id,
                    grant.from,
                    grant.to,
                    grant.protocol,
                    grant.ports.join(","),
                    grant.expires,
                    grant.owner,
                    grant.reason,
                    c.generation
                ));
                Response::Granted {
                    id: grant.id,
                    expires: grant.expires,
                    generation: c.generation,
                }
            }
            Err(err) => refusal(&origin, err),
        }
    }

    fn revoke(&mut self, id: &str) -> Response {
        let Some(edge) = self.live.iter().find(|e| e.edge.id.as_str() == id) else {
            return Response::Error {
                message: format!("no edge has id {id} (see `enforcer edge list`)"),
            };
        };
        if edge.source == Source::File {
            return Response::Error {
                message: format!(
                    "edge {id} comes from the policy file {}; remove it there and run \
                     `enforcer policy apply`",
                    self.policy_file
                ),
            };
        }
        let book = self.book.without_grants(|g| g.id == id);
        let origin = format!("revoke {id}");
        match self.commit(self.policy.clone(), book, None, &origin) {
            Ok(c) => {
                log(&format!(
                    "revoked {id}; ended {} connection(s); policy generation {}",
                    c.ended, c.generation
                ));
                Response::Revoked {
                    id: id.to_owned(),
                    ended: c.ended,
                    generation: c.generation,
                }
            }
            Err(err) => refusal(&origin, err),
        }
    }

    fn edge_views(&self, stale_after: std::time::Duration) -> Vec<EdgeView> {
        let clocks = Clocks::now();
        let used = self.usage.edges();
        self.live
            .iter()
            .map(|edge| {
                let u = used.get(&edge.index).map_or_else(Used::default, |u| Used {
                    connections: u.connections,
                    last_used: (u.connections > 0).then(|| clocks.wall_time(u.last_used)),
                });
                grants::view(edge, u, clocks.wall_now(), stale_after)
            })
            .collect()
    }

    pub fn set_events_lost(&mut self, lost: u64) {
        self.tally.set_lost(lost);
    }

    pub fn count_event(&mut self, record: &EventRecord) {
        self.tally.record(record.decision());
    }

    fn peer_name(&self, code: u32) -> String {
        match Peer::decode(code) {
            Peer::Unlabeled => "unlabeled".into(),
            Peer::External => "external".into(),
            Peer::Domain(id) => self
                .compiled
                .registry
                .name_of(id)
                .map_or_else(|| format!("domain #{id}"), str::to_owned),
        }
    }

    fn audit_status(&self) -> status::AuditStatus {
        let mut audit = status::AuditStatus::default();
        for (pair, counts) in self.usage.pairs() {
            audit.would_deny += counts.would_deny;
            audit.denied += counts.denied;
            audit.pairs.push(status::PairStatus {
                from: self.peer_name(pair.from),
                to: self.peer_name(pair.to),
                would_deny: counts.would_deny,
                denied: counts.denied,
            });
        }
        audit
    }

    /// What the log should say about bindings that are not enforced yet. Each kind is listed
    /// up to `BINDING_WARNINGS` paths, then counted: 10,000 pending bindings are one
    /// line's worth of news, not 10,000 lines.
    fn binding_warnings(&self) -> Vec<String> {
        let (outside, pending): (Vec<_>, Vec<_>) = self
            .compiled
            .bindings
            .iter()
            .filter(|b| !self.root.covers(&b.path) || b.cgroup_id.is_none())
            .partition(|b| !self.root.covers(&b.path));
        let listed = |bindings: &[&compile::Binding], say: &dyn Fn(&str) -> String| {
            let mut lines: Vec<String> = bindings
                .iter()
                .take(BINDING_WARNINGS)
                .map(|b| say(b.path.as_str()))
                .collect();
            if bindings.len() > BINDING_WARNINGS {
                lines.push(say(&format!(
                    "... and {} more",
                    bindings.len() - BINDING_WARNINGS
                )));
            }
            lines
        };
        let root = &self.root.relative;
        listed(&outside, &|path| {
            format!("warning: cgroup {path} is outside --cgroup-root {root}; it is not enforced")
        })
        .into_iter()
        .chain(listed(&pending, &|path| {
            format!(
                "cgroup {path} does not exist yet; its binding is pending and takes effect when \
                 it is created"
            )
        }))
        .chain(self.attestation.warning(&self.policy))
        .collect()
    }

    /// Answers `request`; an apply or a plan comes with its policy already parsed.
    fn handle(&mut self, request: Request, parsed: Option<Parsed>) -> Response {
        let parsed = || {
            parsed.unwrap_or_else(|| {
                Err(ApplyError::Failed(anyhow::anyhow!(
                    "the policy was not parsed before the daemon was locked"
                )))
            })
        };
        match request {
            Request::Apply { file, text } => match self.apply(&file, &text, parsed()) {
                Ok(committed) => {
                    let Committed {
                        generation, ended, ..
                    } = committed;
                    log(&format!(
                        "policy generation {generation} active ({file}); ended {ended} \
                         connection(s); {}",
                        committed.timing()
                    ));
                    for warning in self.binding_warnings() {
                        log(&warning);
                    }
                    Response::Applied { generation, ended }
                }
                Err(err) => refusal(&file, err),
            },
            Request::Plan { file, .. } => match self.plan(&file, parsed()) {
                Ok(plan) => Response::Plan(Box::new(plan)),
                Err(err) => refusal(&format!("plan of {file}"), err),
            },
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Grant(request) => self.grant(&request),
            Request::Revoke { id } => self.revoke(&id),
            Request::Edges { stale_after_ms } => Response::Edges {
                edges: self.edge_views(std::time::Duration::from_millis(stale_after_ms)),
            },
            // Answered by `serve` without the daemon lock.
            Request::Events { .. } => Response::Error {
                message: "events are not answered here".into(),
            },
            Request::Why { from, to, protocol } => self.why(&from, to, protocol),
        }
    }

    fn why(
        &self,
        from: &crate::api::why::WhySource,
        to: SocketAddr,
        protocol: crate::api::why::Transport,
    ) -> Response {
        let live = why::Live {
            ebpf: &self.ebpf,
            maps: &self.maps,
            addresses: &self.addresses,
            cgroups: &self.cgroups,
            root: &self.root,
            edges: &self.live,
        };
        match why::explain(&live, from, to, protocol) {
            Ok(explanation) => Response::Why(Box::new(explanation)),
            Err(err) => Response::Error {
                message: format!("{err:#}"),
            },
        }
    }

    fn tag_existing(&self) -> Result<usize> {
        backfill::tag_existing(&self.cgroups, &self.root, &self.compiled, &self.pins)
    }

    /// Every existing directory along the bound cgroup paths under the root: where a bound
    /// cgroup or one of its ancestors can appear or vanish.
    pub fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        dirs.insert(self.cgroups.dir("/"));
        // Bound paths share their ancestors (a slice and its thousands of services): an
        // ancestor already found to exist is not looked at again.
        for binding in &self.compiled.bindings {
            if !self.root.covers(&binding.path) {
                continue;
            }
            let mut path = String::new();
            for component in binding.path.as_str().split('/').filter(|c| !c.is_empty()) {
                path.push('/');
                path.push_str(component);
                let dir = self.cgroups.dir(&path);
                if dirs.contains(&dir) {
                    continue;
                }
                if !dir.is_dir() {
                    break;
                }
                dirs.insert(dir);
            }
        }
        dirs
    }

    /// Re-resolves every binding's cgroup. A cgroup that appeared gets its binding at once
    /// (and sockets created in it meanwhile get its domain); one that vanished leaves no entry
    /// behind and its binding is pending again. The policy generation does not change: the
    /// policy is the same, only the cgroups it names came or went.
    pub fn follow_cgroups(&mut self) -> Result<()> {
        // Runs every tick: a stat per binding decides whether anything needs recompiling.
        let unchanged = self
            .compiled
            .bindings
            .iter()
            .all(|b| self.cgroup_id(&b.path) == b.cgroup_id);
        if unchanged {
            return Ok(());
        }
        let known = self.maps.registry()?;
        let policy = self.attestation.store.augment(&self.policy);
        let mut compiled = compile::compile(&policy, &self.live, known, &Clocks::now(), |path| {
            self.cgroup_id(path)
        })?;
        // The edges are the same; keeping their compiled deadlines exactly as they are keeps
        // the conversion from drifting by the microseconds between two clock readings.
        compiled.edges.clone_from(&self.compiled.edges);
        if compiled.bindings == self.compiled.bindings {
            return Ok(());
        }
        let before: BTreeSet<(&CgroupPath, u32, Option<u64>)> = self
            .compiled
            .bindings
            .iter()
            .map(|b| (&b.path, b.domain, b.cgroup_id))
            .collect();
        let changed: Vec<compile::Binding> = compiled
            .bindings
            .iter()
            .filter(|b| !before.contains(&(&b.path, b.domain, b.cgroup_id)))
            .cloned()
            .collect();
        drop(before);
        let compiled = Arc::new(compiled);
        if let Some(warning) = self.maps.swap_in(&compiled, self.generation)? {
            log(&warning);
        }
        let appeared: Vec<CgroupPath> = changed
            .iter()
            .filter(|b| b.cgroup_id.is_some())
            .map(|b| b.path.clone())
            .collect();
        for binding in &changed {
            let name = compiled
                .registry
                .name_of(binding.domain)
                .unwrap_or_default();
            match binding.cgroup_id {
                Some(id) => log(&format!(
                    "cgroup {} appeared (id {id}): bound to {name}",
                    binding.path
                )),
                None => log(&format!(
                    "cgroup {} is gone: its binding to {name} is pending until it is created again",
                    binding.path
                )),
            }
        }
        self.compiled = compiled;
        if !appeared.is_empty() {
            let retagged = backfill::retag_under(
                &self.cgroups,
                &self.root,
                &self.compiled,
                &self.pins,
                &appeared,
            )?;
            if retagged > 0 {
                log(&format!(
                    "re-tagged {retagged} socket(s) created in the new cgroup(s) before their binding landed"
                ));
            }
        }
        Ok(())
    }

    pub fn refresh_addresses(&mut self, pods: bool) -> Result<()> {
        self.addresses.refresh_host()?;
        if pods {
            let compiled = &self.compiled;
            self.addresses
                .refresh_pods(|pid| backfill::domain_of_pid(compiled, pid))?;
        }
        Ok(())
    }

    /// Whether `enforcer teardown` removed the links behind this daemon's back; a daemon that
    /// went on answering would report enforcement that no longer exists.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn torn_down(&self) -> bool {
        attach::HOOKS
            .iter()
            .all(|h| !self.pins.link(h.program).exists())
    }

    fn status(&self) -> Status {
        let registry = &self.compiled.registry;
        let bound = self.compiled.cgroup_ids();
        let domains = self
            .policy
            .domains
            .iter()
            .map(|d| status::DomainStatus {
                name: d.name.to_string(),
                id: registry.get(d.name.as_str()).unwrap_or_default(),
                mode: d.mode.unwrap_or(self.policy.defaults.mode).to_string(),
                bindings: d
                    .cgroups
                    .iter()
                    .map(|path| {
                        let cgroup_id = bound.get(path).copied().flatten();
                        let state = if !self.root.covers(path) {
                            "outside-root"
                        } else if cgroup_id.is_some() {
                            "bound"
                        } else {
                            "pending"
                        };
                        status::BindingStatus {
                            cgroup: path.to_string(),
                            cgroup_id,
                            state: state.into(),
                        }
                    })
                    .collect(),
                endpoints: d.endpoints.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let edges = self.edge_views(DEFAULT_STALE_AFTER);
        let action = |a: Action| match a {
            Action::Allow => "allow".to_owned(),
            Action::Deny => "deny".to_owned(),
        };
        Status {
            daemon_pid: std::process::id(),
            generation: self.generation,
            policy_file: self.policy_file.clone(),
            pin_dir: self.pins.path().display().to_string(),
            cgroup_mount: self.cgroups.mount().display().to_string(),
            cgroup_root: self.root.dir.display().to_string(),
            defaults: status::Defaults {
                unlabeled: action(self.policy.defaults.unlabeled),
                external: action(self.policy.defaults.external),
            },
            mode: self.policy.defaults.mode.to_string(),
            domains,
            attestation: self.attestation_status(),
            bundles: self.trust.views(
                jiff::Timestamp::now(),
                jiff::SignedDuration::try_from(self.bundle_warn_before)
                    .unwrap_or(jiff::SignedDuration::MAX),
            ),
            edges,
            audit: self.audit_status(),
            events: status::EventsStatus {
                log: self.state.events().display().to_string(),
                lost: self.tally.lost(),
            },
            programs: self
                .programs
                .iter()
                .map(|p| status::ProgramStatus {
                    program: p.program.into(),
                    attach_point: p.attach_point.into(),
                    link_pin: p.link_pin.display().to_string(),
                    link_id: p.link_id,
                    prog_id: p.prog_id,
                })
                .collect(),
            features: kernel::features::optional(),
            maps: self
                .maps
                .fill(self.compiled.registry.len())
                .into_iter()
                .chain([(names::MAP_ADDRS, self.addresses.count())])
                .map(|(map, entries)| status::MapFill {
                    map: map.into(),
                    entries,
                })
                .collect(),
            memory: kernel::memory::of_pins(&self.pins),
        }
    }

    /// What the metrics report, copied out so that the lock is let go before they are
    /// rendered and sent.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        metrics::Snapshot {
            generation: self.generation,
            decisions: self.tally.decisions().clone(),
            events_lost: self.tally.lost(),
            pairs: self.audit_status().pairs,
            edges: self.edge_views(DEFAULT_STALE_AFTER),
            commits: self.commits.clone(),
        }
    }
}

impl event_record::Names for Daemon {
    fn peer(&self, code: u32) -> String {
        self.peer_name(code)
    }

    fn edge(&self, index: u32) -> Option<String> {
        self.live_at
            .get(&index)
            .and_then(|&at| self.live.get(at))
            .map(|e| e.edge.id.to_string())
    }
}

/// The record without the grants that expired while no daemon ran; the kernel stopped
/// honouring them at their deadline.
/// A policy parsed with the bundles it names, or why it was refused.
type Parsed = Result<(Policy, TrustState), ApplyError>;

/// Gives the memory freed by a large parse or apply back to the system. glibc keeps freed
/// heap in its arenas; after the parse of a 100,000-edge policy (whose YAML tree is about 30
/// times the file) that is a hundred megabytes the daemon no longer uses.
/// Frees what a commit replaced on a thread of its own, then hands the memory back: at
/// 100,000 edges freeing the previous policy takes tens of milliseconds that neither the
/// client nor anyone waiting for the daemon's lock needs to wait for.
fn retire<T: Send + 'static>(old: T) {
    // Should the thread not start, the closure and `old` with it are freed right here.
    let _ = std::thread::Builder::new()
        .name("retire".into())
        .spawn(move || {
            drop(old);
            release_freed_memory();
        });
}

fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A policy text with the bundles it names, checked as an apply checks them: a bundle that
/// cannot be read or fails the checks refuses the policy, at the spot that names it.
fn parse_with_bundles(file: &str, text: &str) -> Result<(Policy, TrustState), ApplyError> {
    let policy = enforcer_policy::parse(file, text)
        .map_err(|ds| ApplyError::Rejected(ds.iter().map(ToString::to_string).collect()))?;
    let trust = TrustState::load(&policy, file, true).map_err(ApplyError::Rejected)?;
    Ok((policy, trust))
}

fn without_expired_grants(book: Book) -> Book {
    let now = Clocks::now().wall_now();
    let pruned = book.without_grants(|g| g.expires <= now);
    if pruned != book {
        log("removed grant(s) that expired while the daemon was stopped");
    }
    pruned
}

/// The answer to a change that did not happen; either way nothing changed.
fn refusal(origin: &str, err: ApplyError) -> Response {
    match err {
        ApplyError::Rejected(errors) => {
            log(&format!(
                "refused {origin}: {} error(s); nothing changed",
                errors.len()
            ));
            Response::Rejected { errors }
        }
        ApplyError::Failed(err) => {
            log(&format!(
                "{origin} failed; the previous policy stays active: {err:#}"
            ));
            Response::Error {
                message: format!("{err:#}; the previous policy stays active"),
            }
        }
    }
}

/// Writes one log line, whatever `message` holds: a file name, an owner or a reason comes
/// from users, and a line break in it would forge a log line of its own.
pub fn log(message: &str) {
    eprintln!("enforcer: {}", one_line(message));
}

/// `text` with every control character (and the Unicode line and paragraph separators)
/// escaped as Rust writes it (`\n`, `\u{1b}`), so it prints as one line.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.contains(breaks) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if breaks(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Takes an exclusive `flock` on the state dir's lock file for the life of the process.
fn lock(state: &StateDir) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.lock())
        .with_context(|| format!("opening {}", state.lock().display()))?;
    // SAFETY: flock on a file descriptor we own.
    let ret = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if ret != 0 {
        bail!(
            "another enforcer daemon is running with state dir {}",
            state.path().display()
        );
    }
    Ok(file)
}

#[derive(Debug, PartialEq, Eq)]
enum Vacancy {
    Free,
    /// A socket nothing answers on, left by a daemon that was killed.
    Stale,
}

/// Whether a socket may be bound at `path`: nothing is there, or a stale socket. Anything
/// else is refused and left as it is: a live daemon's socket, and whatever is not a socket
/// (a regular file, a symlink, a directory), which is never ours to delete.
fn vacant_socket(path: &Path) -> Result<Vacancy> {
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
