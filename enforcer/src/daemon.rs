//! `enforcer daemon`: puts enforcement in place (or adopts what a previous daemon left pinned),
//! then serves the control socket. Enforcement never depends on this process staying alive:
//! programs, links and maps are pinned, and exiting, crashing or being killed leaves them as
//! they are. Only `enforcer teardown` removes them.

pub mod access;
pub mod admission;
mod attest_server;
mod attested;
mod capabilities;
mod cgroup_watch;
mod fleet_addresses;
pub mod fleet_source;
mod heap;
pub mod host;
pub mod machine;
mod maintain;
mod plan;
mod reload;
pub mod remote_admin;
mod restart;
pub mod serve;
pub mod state;
mod stop;
mod transitions;
mod views;

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use enforcer_common::names;
use enforcer_policy::Policy;

use self::{
    heap::release_freed_memory,
    host::Host,
    machine::{ApplyError, Daemon, without_expired_grants},
    serve::{EventService, bind_socket, vacant_socket},
    state::State,
};
use crate::{
    daemon::remote_admin::RemoteAdmin,
    kernel::{
        self, addresses::Addresses, attach, bpffs, cgroup_paths::CgroupPaths, cgroupfs::CgroupFs,
        policy_maps::PolicyMaps, revocation::Connections, usage::Usage,
    },
    observe::{
        event_feed::{Draining, Feed},
        event_followers::Followers,
        event_log::EventLog,
        metrics::{self, Commits},
        systemd::ServiceManager,
    },
    paths::{PinDir, StateDir},
    pipeline::{clock::Clocks, compile, edges::Book},
    state_files,
    trust::{bundles::TrustState, current_svid::CurrentSvid, workload_api},
};

/// Where the daemon takes its policy from.
pub enum PolicySource {
    /// `--policy FILE`, reloaded when it changes.
    File(PathBuf),
    /// `--source etcd`: the fleet's document.
    Etcd(fleet_source::FleetOptions),
}

impl PolicySource {
    /// How messages name it: the file, or the fleet's key.
    fn path(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Etcd(fleet) => fleet
                .etcd
                .keys()
                .map_or_else(|_| "etcd".into(), |k| format!("etcd:{}", k.policy()).into()),
        }
    }
}

pub struct Options {
    pub source: PolicySource,
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
    /// The SPIFFE Workload API client, if the daemon has one; not started yet.
    pub workload_api: Option<WorkloadApi>,
}

/// How long a starting daemon waits for the Workload API's first bundle set (or its first
/// failure) before it judges `bundle_from: workload_api` bundles: an agent on the same host
/// answers in milliseconds.
const FIRST_BUNDLES: Duration = Duration::from_secs(5);

/// The daemon's Workload API client and, when the daemon's own SVID comes from it (no
/// `--tls-cert`), that SVID as it rotates.
pub struct WorkloadApi {
    pub feed: Arc<workload_api::Client>,
    pub svid: Option<Arc<CurrentSvid>>,
}

/// The client `args` ask for; `own_files`: the daemon's SVID comes from files instead.
pub fn workload_api(args: &workload_api::Args, own_files: bool) -> Option<WorkloadApi> {
    args.endpoint().map(|endpoint| WorkloadApi {
        feed: workload_api::Client::install(endpoint),
        svid: (!own_files).then(|| Arc::new(CurrentSvid::default())),
    })
}

pub fn run(mut options: Options) -> Result<()> {
    let started = Instant::now();
    // Before any thread starts, so that every thread leaves SIGHUP to the reload thread, and
    // SIGTERM and SIGINT to the stop thread.
    let sighup = reload::block_sighup()?;
    let stop_signals = stop::block_signals()?;
    let manager = ServiceManager::from_env().map(Arc::new);
    for warning in capabilities::warnings() {
        log::warn!("{warning}");
    }
    if let Some(manager) = &manager {
        manager.status("starting: loading the programs and reading the policy");
    }
    // Checked before the policy is chosen, which reads the policy saved there; made (when
    // missing) only once the policy is known to be good.
    if let Some(dir) = state_files::checked_dir(options.state_dir.path())? {
        options.state_dir = StateDir::new(dir);
    }
    let Prepared {
        loaded,
        load_time,
        chosen,
        parse_time,
    } = prepare(&options)?;
    let Chosen {
        origin: file,
        text,
        policy,
        read,
        at_start,
        reason,
        saved_generation,
        refused,
        fleet,
    } = chosen;
    // A path that is taken is refused now, not when the socket is bound after pinning.
    for socket in std::iter::once(&options.socket).chain(&options.attest_socket) {
        vacant_socket(socket)?;
    }
    // Started, and given a moment to answer, before the bundles are read: a gated edge
    // judged before the agent's first set would be suspended and its live connections ended
    // by a mere restart. A set that comes later is taken within a second, as a changed file
    // is.
    if let Some(client) = &options.workload_api {
        client
            .feed
            .start(&crate::runtime::handle()?, client.svid.clone());
        if policy.domains.iter().any(|d| d.bundle_from.is_some()) {
            client.feed.wait_settled(FIRST_BUNDLES);
        }
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
            let own = match &options.tls {
                Some((cert, key)) => Some(CurrentSvid::fixed(crate::trust::Identity::read(
                    cert, key,
                )?)?),
                None => options.workload_api.as_ref().and_then(|w| w.svid.clone()),
            };
            attest_server::identity(own)
        })
        .transpose()?;
    let admin_listener = options.remote_admin.map(RemoteAdmin::bind).transpose()?;
    let cgroups = CgroupFs::discover()?;
    let root = cgroups.root(options.cgroup_root.as_deref())?;
    options.state_dir = StateDir::new(state_files::prepare_dir(options.state_dir.path())?);
    let _lock = lock(&options.state_dir)?;
    let book = without_expired_grants(Book::load(&options.state_dir)?);
    let attested = attested::load(&options.state_dir, &cgroups)?;
    if bpffs::ensure_pin_dir(options.pin_dir.path())? {
        log::info!("mounted bpffs at /sys/fs/bpf");
    }
    let listener = bind_socket(&options.socket, options.groups.any())?;
    let attest_listener = options
        .attest_socket
        .as_deref()
        .map(attest_server::bind)
        .transpose()?;

    // Every program passed the verifier before the maps it created are pinned, and before
    // any hook or policy changes.
    loaded.pin_created(&options.pin_dir)?;
    let mut ebpf = loaded.ebpf;
    let upgraded = upgrade(loaded.upgrade, &mut ebpf, &root, &options.pin_dir)?;
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
    // The maps hold the generation in force; after a reboot they start again at 0 and the
    // saved policy's generation keeps the numbers from going back.
    let generation = maps.active()?.config.generation.max(saved_generation);
    let policy_path = options.source.path();
    log::info!("{reason}");
    if let Some(why) = &refused {
        log::error!(
            "--policy {} (unchanged since) was refused when the daemon last read it: {why}",
            policy_path.display()
        );
    }
    let mut daemon = Daemon {
        cgroups,
        root,
        pins: options.pin_dir,
        host: Host {
            state_dir: options.state_dir,
            maps,
            addresses,
            usage,
            connections,
            replaced_policy: false,
        },
        ebpf,
        programs: Vec::new(),
        upgraded,
        state: State::starting(generation, book),
        names: Arc::new(std::sync::RwLock::new(
            Arc::new(machine::InForce::default()),
        )),
        expiries_done: Clocks::now().boot,
        tally: Arc::default(),
        commits: Commits::default(),
        ended,
        attestation: crate::trust::attestation::Attestation {
            store: attested,
            socket: options.attest_socket.clone(),
        },
        bundle_warn_before: options.bundle_warn_before,
        source: restart::Source {
            path: policy_path.clone(),
            read,
            at_start,
            reason,
            last_reload_error: refused,
            reloads: metrics::Reloads::default(),
            last_sync: fleet.is_none().then(jiff::Timestamp::now),
            fleet,
        },
        manager: None,
    };
    for (domain, why) in trust.unusable_now(jiff::Timestamp::now()) {
        log::warn!(
            "the trust bundle of {domain} cannot be used now ({why}); edges that \
             require it are suspended"
        );
    }
    let applying = Instant::now();
    let revision = daemon.source.fleet.as_ref().and_then(|f| f.revision);
    let applied = daemon.apply_parsed(policy, trust, &file, &text, revision);
    let apply_time = applying.elapsed();
    // The daemon runs inside this function: the text would otherwise stay for its lifetime.
    drop(text);
    release_freed_memory();
    let applied = match applied {
        Ok(committed) => committed,
        Err(ApplyError::Rejected(errors)) => {
            for e in &errors {
                log::error!("{e}");
            }
            if daemon.upgraded.is_empty() {
                bail!("policy {file} was refused; nothing was changed");
            }
            // The upgrade ran first (see `upgrade`): the pins are in this build's layout and
            // its programs enforce, but what they enforce is what the maps already held.
            bail!(
                "policy {file} was refused; the policy in force before stays (the pinned \
                 maps were upgraded to this version's layout)"
            );
        }
        Err(ApplyError::Failed(err)) => return Err(err),
    };
    // Recorded once the policy it chose is in force: a start that fails before reads the
    // file again next time.
    if daemon.source.fleet.is_none()
        && let Err(err) = restart::save_file_read(
            &daemon.host.state_dir,
            &daemon.source.read,
            daemon.source.last_reload_error.as_deref(),
        )
    {
        log::warn!(
            "could not record the read of --policy {}: {err:#}",
            policy_path.display()
        );
    }
    let attaching = Instant::now();
    attach(&mut daemon, adopting, &file)?;
    let attach_time = attaching.elapsed();
    let attest_server = match (attest_listener, attest_identity) {
        (Some(listener), Some(identity)) => Some(attest_server::Server::new(
            listener,
            identity,
            daemon.state.trust.shared(),
            daemon.cgroups.clone(),
        )?),
        _ => None,
    };
    daemon.refresh_addresses(true)?;
    let events = EventService {
        log: events_path,
        followers,
    };
    let services = Services {
        notify,
        feed,
        metrics: metrics_listener,
        attestation: attest_server,
        admin: admin_listener,
    };
    daemon.manager.clone_from(&manager);
    let (daemon, events_draining) =
        services.spawn(daemon, &events, options.attest_socket.as_deref())?;
    match options.source {
        PolicySource::File(path) => {
            if let Err(err) = reload::spawn(Arc::clone(&daemon), path, &sighup) {
                // Enforcement is in place; only reloads are missing, which the log says.
                log::error!("--policy will not be reloaded: {err:#}");
            }
        }
        // Enforcement is in place; the log says the fleet's changes will not reach it.
        PolicySource::Etcd(fleet) => {
            if let Err(err) = fleet_source::spawn(Arc::clone(&daemon), fleet) {
                log::error!("the fleet's policy will not be followed: {err:#}");
            }
        }
    }
    stop::spawn(
        stop::Stop {
            daemon: Arc::clone(&daemon),
            events: events_draining,
            sockets: std::iter::once(options.socket.clone())
                .chain(options.attest_socket.clone())
                .collect(),
        },
        &stop_signals,
    )?;
    release_freed_memory();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    log::info!(
        "started in {:.0} ms (policy read {:.0} ms alongside programs loaded {:.0} ms; policy \
         applied {:.0} ms: compile {:.0} ms, maps {:.0} ms; programs attached {:.0} ms)",
        ms(started.elapsed()),
        ms(parse_time),
        ms(load_time),
        ms(apply_time),
        ms(applied.compile),
        ms(applied.maps),
        ms(attach_time)
    );
    log::info!("control socket {}", options.socket.display());
    if let Some(manager) = &manager {
        let summary = daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summary();
        manager.ready(&summary);
    }
    serve::serve(&daemon, &listener, &events, options.groups);
    Ok(())
}

/// When the pins hold maps of an earlier build's layout, migrates them and puts this build's
/// programs on every hook before any policy is written (`kernel::upgrade` says why in that
/// order), so that the start then goes on as an ordinary restart over pins of this layout:
/// an upgrade needs no `enforcer teardown`, and enforcement never stops.
fn upgrade(
    upgrade: kernel::upgrade::Upgrade,
    ebpf: &mut aya::Ebpf,
    root: &kernel::cgroupfs::CgroupRoot,
    pins: &PinDir,
) -> Result<Vec<kernel::upgrade::Migrated>> {
    if !upgrade.needed() {
        return Ok(Vec::new());
    }
    let migrated = upgrade
        .run(ebpf, root, pins)
        .context("upgrading the pinned maps of an earlier version (enforcement stays on)")?;
    for m in &migrated {
        log::info!(
            "upgraded pinned map {} ({}): carried {} entries; every hook runs this build's \
             programs",
            m.map,
            m.change,
            m.entries
        );
    }
    Ok(migrated)
}

/// Attaches every program (or finds it attached) once the first policy is in force, and logs
/// what is enforced. Sockets that already exist get their creators' domains before the checks
/// that read tags are attached, and once more afterwards for sockets created in between.
fn attach(daemon: &mut Daemon, adopting: bool, file: &str) -> Result<()> {
    let tagged = daemon.tag_existing()?;
    daemon.programs = attach::attach_all(&mut daemon.ebpf, &daemon.root, &daemon.pins)?;
    let tagged = tagged + daemon.tag_existing()?;
    for p in &daemon.programs {
        log::info!(
            "{} {} at {} (cgroup id {}), link pinned at {}",
            p.how,
            p.program,
            daemon.root.dir.display(),
            daemon.root.id,
            p.link_pin.display()
        );
    }
    log::info!(
        "{} enforcement; policy generation {} active ({file}); tagged {tagged} pre-existing socket(s)",
        if adopting { "adopted" } else { "started" },
        daemon.state.generation
    );
    for (level, line) in daemon.binding_warnings() {
        log::log!(level, "{line}");
    }
    Ok(())
}

/// The daemon's services, bound or made before anything on the host changed, and started
/// once enforcement is in place.
struct Services {
    notify: RingBuf<MapData>,
    feed: Feed,
    metrics: Option<TcpListener>,
    attestation: Option<attest_server::Server>,
    admin: Option<remote_admin::Listening>,
}

impl Services {
    /// Starts each service with what it needs of the daemon: the maintenance duties and the
    /// servers share the daemon; the event feed gets only the names in force and the tally,
    /// and the metrics a snapshot. Returns the shared daemon and the lock the event feed holds
    /// while it logs events it took from the kernel.
    fn spawn(
        self,
        daemon: Daemon,
        events: &EventService,
        attest_socket: Option<&Path>,
    ) -> Result<(Arc<Mutex<Daemon>>, Draining)> {
        let pins = daemon.pins.clone();
        let (names, tally) = (Arc::clone(&daemon.names), Arc::clone(&daemon.tally));
        daemon.publish_names();
        let daemon = Arc::new(Mutex::new(daemon));
        maintain::spawn(Arc::clone(&daemon), self.notify)?;
        let events_draining = self.feed.spawn(names, tally)?;
        if let Some(listener) = self.metrics {
            let snapshot = {
                let daemon = Arc::clone(&daemon);
                move || {
                    daemon
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .metrics_snapshot()
                }
            };
            let health = {
                let daemon = Arc::clone(&daemon);
                move || {
                    daemon
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .health()
                }
            };
            metrics::spawn(listener, snapshot, health, &pins)?;
        }
        if let Some(server) = self.attestation {
            server.spawn(Arc::clone(&daemon))?;
            log::info!(
                "attestation socket {}",
                attest_socket.unwrap_or(Path::new("")).display()
            );
        }
        if let Some(admin) = self.admin {
            admin.spawn(Arc::clone(&daemon), events.clone())?;
        }
        Ok((daemon, events_draining))
    }
}

/// The programs loaded and the policy read, before anything on the host changed.
struct Prepared {
    loaded: kernel::Loaded,
    load_time: Duration,
    chosen: Chosen,
    parse_time: Duration,
}

/// The policy a start puts in force (see [`restart`]), read and checked.
struct Chosen {
    /// The name it is applied under: `--policy FILE`, or the name of the policy last applied.
    origin: String,
    text: String,
    policy: Policy,
    /// `--policy FILE` as read now (the fleet's document, for `--source etcd`).
    read: restart::FileRead,
    /// Whether the source's policy took over ("taken") or the one last applied stayed
    /// ("kept"), and why.
    at_start: &'static str,
    reason: String,
    /// The generation of the saved policy (0 when none was saved).
    saved_generation: u64,
    /// Why this content of `--policy FILE` was refused when last read, if it was.
    refused: Option<String>,
    /// How the fleet's document stood at start, for `--source etcd`.
    fleet: Option<restart::FleetSync>,
}

/// Loads the programs and reads the policy. The kernel side (probing the kernel, opening or
/// creating the maps, verifying every program) and reading the policy need nothing from each
/// other and take about a second each at 100,000 edges, so they run side by side. Neither
/// changes anything on the host: whichever refuses (the kernel's refusal is reported first),
/// nothing was changed.
fn prepare(options: &Options) -> Result<Prepared> {
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
        let read = choose_policy(options).map(|read| (read, started.elapsed()));
        let loaded = kernel
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        anyhow::Ok((loaded, read))
    })?;
    let (loaded, load_time) = loaded?;
    let (chosen, parse_time) = read.map_err(|(diagnostics, err)| {
        for d in &diagnostics {
            log::error!("{d}");
        }
        err
    })?;
    Ok(Prepared {
        loaded,
        load_time,
        chosen,
        parse_time,
    })
}

/// Reads `--policy FILE` and decides, from what the state dir saved, whether it takes over
/// or the policy last applied stays (see [`restart`]); reads and checks the one chosen.
/// Changes nothing.
fn choose_policy(options: &Options) -> Result<Chosen, (Vec<String>, anyhow::Error)> {
    match &options.source {
        PolicySource::File(path) => choose_file(path, &options.state_dir),
        PolicySource::Etcd(fleet) => fleet_source::choose(fleet, &options.state_dir),
    }
}

/// [`choose_policy`] for `--policy FILE`.
fn choose_file(path: &Path, state: &StateDir) -> Result<Chosen, (Vec<String>, anyhow::Error)> {
    let path = &path.to_path_buf();
    let file = path.display().to_string();
    let text = crate::pipeline::policy_file::read(path)
        .map_err(|why| (Vec::new(), anyhow::anyhow!("{why}; nothing was changed")))?;
    let read = restart::FileRead::new(
        &std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        &text,
    );
    let saved = restart::load(state);
    let last = match (restart::load_file_read(state), &saved) {
        (Ok(last), _) => last,
        // Nothing saved to protect: the file takes over as on a first start.
        (Err(_), Ok(None)) => None,
        (Err(err), _) => return Err((Vec::new(), unreadable_state(&err, &file, state))),
    };
    let start = restart::decide(
        !matches!(saved, Ok(None)),
        last.as_ref().map(|l| &l.read),
        &read,
    );
    // A content refused before, kept out again: its refusal is still the news.
    let refused = last
        .filter(|_| start == restart::Start::Keep)
        .and_then(|l| l.refused);
    match start {
        restart::Start::Take(why) => {
            let saved_generation = match saved {
                Ok(saved) => saved.map_or(0, |s| s.generation),
                Err(err) => {
                    log::warn!("{err:#}; --policy {file} changed since, and takes over");
                    0
                }
            };
            let policy = check_policy(&file, &text, || {
                format!("policy {file} was refused; nothing was changed")
            })?;
            Ok(Chosen {
                reason: format!("--policy {file} takes over: {why}"),
                origin: file,
                text,
                policy,
                read,
                at_start: "taken",
                saved_generation,
                refused: None,
                fleet: None,
            })
        }
        restart::Start::Keep => {
            let saved = match saved {
                Ok(Some(saved)) => saved,
                // `decide` keeps a policy only when one was saved; should that ever not hold,
                // refusing is the safe way out.
                Ok(None) => {
                    return Err((
                        Vec::new(),
                        anyhow::anyhow!("no saved policy to keep; {}", keep_refusal(&file, state)),
                    ));
                }
                Err(err) => return Err((Vec::new(), unreadable_state(&err, &file, state))),
            };
            let origin = saved.origin;
            let policy = check_policy(&origin, &saved.text, || {
                format!(
                    "the policy last applied ({origin}, saved in {}) no longer loads; {}",
                    state.saved_policy().display(),
                    keep_refusal(&file, state)
                )
            })?;
            Ok(Chosen {
                reason: format!(
                    "--policy {file} has not changed since the daemon last read it; the policy \
                     last applied ({origin}) stays"
                ),
                origin,
                text: saved.text,
                policy,
                read,
                at_start: "kept",
                saved_generation: saved.generation,
                refused,
                fleet: None,
            })
        }
    }
}

/// Why a start that needs the saved policy (or the record of the file last read) and cannot
/// read it refuses.
fn unreadable_state(err: &anyhow::Error, file: &str, state: &StateDir) -> anyhow::Error {
    anyhow::anyhow!("{err:#}; {}", keep_refusal(file, state))
}

/// What a start refused for a saved policy it cannot use says, and how to get out.
fn keep_refusal(file: &str, state: &StateDir) -> String {
    let saved = format!(
        "{} and {}",
        state.saved_policy().display(),
        state.policy_file_read().display()
    );
    format!(
        "--policy {file} may be older than the policy last applied, and starting from it could \
         bring back what a later apply removed, so the daemon refuses to start; the enforcement \
         in place stays as it is. To start from --policy {file}, change it or remove {saved}"
    )
}

/// A policy text parsed and checked as a whole (capacities included) before anything on the
/// host changes; refused: the lines to print (one per diagnostic) and the error, which says
/// `refused()`.
fn check_policy(
    file: &str,
    text: &str,
    refused: impl Fn() -> String,
) -> Result<Policy, (Vec<String>, anyhow::Error)> {
    match enforcer_policy::parse(file, text) {
        Ok(policy) => match compile::check_alone(&policy) {
            Ok(()) => Ok(policy),
            Err(err) => Err((Vec::new(), err.context(refused()))),
        },
        Err(diagnostics) => Err((
            diagnostics.iter().map(ToString::to_string).collect(),
            anyhow::anyhow!(refused()),
        )),
    }
}

/// Takes an exclusive `flock` on the state dir's lock file for the life of the process.
fn lock(state: &StateDir) -> Result<fs::File> {
    let file = state_files::lock_file(&state.lock())
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
