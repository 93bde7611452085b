//! `enforcer daemon`: puts enforcement in place (or adopts what a previous daemon left pinned),
//! then serves the control socket. Enforcement never depends on this process staying alive:
//! programs, links and maps are pinned, and exiting, crashing or being killed leaves them as
//! they are. Only `enforcer teardown` removes them.

use std::{
    fs,
    io::ErrorKind,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use enforcer_policy::{Action, Policy};

use crate::{
    backfill, bpffs,
    cgroupfs::{CgroupFs, CgroupRoot},
    compile::{self, Compiled},
    control::{self, Request, Response},
    kernel::{
        self,
        attach::{self, AttachedProgram},
        policy_maps::PolicyMaps,
    },
    paths::{PinDir, StateDir},
    status::{self, Status},
};

pub struct Options {
    pub policy: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub pin_dir: PinDir,
    pub socket: PathBuf,
    pub state_dir: StateDir,
}

struct Daemon {
    cgroups: CgroupFs,
    root: CgroupRoot,
    pins: PinDir,
    state: StateDir,
    maps: PolicyMaps,
    /// The loaded programs; once attached they also live on in their pinned links.
    ebpf: aya::Ebpf,
    programs: Vec<AttachedProgram>,
    policy: Policy,
    policy_file: String,
    compiled: Compiled,
    generation: u64,
}

/// Why an apply did not happen. Either way nothing changed.
enum ApplyError {
    Rejected(Vec<String>),
    Failed(anyhow::Error),
}

pub fn run(options: Options) -> Result<()> {
    let file = options.policy.display().to_string();
    let text =
        fs::read_to_string(&options.policy).with_context(|| format!("reading policy {file}"))?;
    // The whole policy is checked before anything on the host changes.
    let policy = match enforcer_policy::parse(&file, &text) {
        Ok(policy) => {
            compile::compile(&policy, &Default::default(), |_| None)
                .with_context(|| format!("policy {file} was refused; nothing was changed"))?;
            policy
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            bail!(
                "policy {file} has {} error(s); nothing was changed",
                diagnostics.len()
            );
        }
    };
    let cgroups = CgroupFs::discover()?;
    let root = cgroups.root(options.cgroup_root.as_deref())?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(options.state_dir.path())
        .with_context(|| format!("creating state dir {}", options.state_dir.path().display()))?;
    let _lock = lock(&options.state_dir)?;
    if bpffs::ensure_pin_dir(options.pin_dir.path())? {
        log("mounted bpffs at /sys/fs/bpf");
    }
    let listener = bind_socket(&options.socket)?;

    let mut ebpf = kernel::open(&options.pin_dir)?;
    let adopting = options.pin_dir.links().exists();
    // Every program passes the verifier before any hook or policy changes.
    attach::load_all(&mut ebpf)?;
    let maps = PolicyMaps::take(&mut ebpf)?;
    let generation = maps.active()?.config.generation;
    let mut daemon = Daemon {
        cgroups,
        root,
        pins: options.pin_dir,
        state: options.state_dir,
        maps,
        ebpf,
        programs: Vec::new(),
        policy: Policy {
            version: 1,
            defaults: Default::default(),
            domains: Vec::new(),
            federation: Vec::new(),
        },
        policy_file: String::new(),
        compiled: Compiled::default(),
        generation,
    };
    match daemon.apply_parsed(policy, &file, &text) {
        Ok(_) => {}
        Err(ApplyError::Rejected(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("policy {file} was refused; nothing was changed");
        }
        Err(ApplyError::Failed(err)) => return Err(err),
    }
    // Sockets that already exist get their creators' domains before the checks that read
    // tags are attached, and once more afterwards for sockets created in between.
    let tagged = backfill::tag_existing(&daemon.root, &daemon.compiled, &daemon.pins)?;
    daemon.programs = attach::attach_all(&mut daemon.ebpf, &daemon.root, &daemon.pins)?;
    let tagged = tagged + backfill::tag_existing(&daemon.root, &daemon.compiled, &daemon.pins)?;
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
    exit_when_torn_down(daemon.pins.clone());
    log(&format!("control socket {}", options.socket.display()));
    daemon.serve(&listener)
}

impl Daemon {
    fn apply(&mut self, file: &str, text: &str) -> Result<u64, ApplyError> {
        let policy = enforcer_policy::parse(file, text)
            .map_err(|ds| ApplyError::Rejected(ds.iter().map(ToString::to_string).collect()))?;
        self.apply_parsed(policy, file, text)
    }

    /// Compiles and swaps in a policy already parsed from `text`.
    fn apply_parsed(&mut self, policy: Policy, file: &str, text: &str) -> Result<u64, ApplyError> {
        let known = self.maps.registry().map_err(ApplyError::Failed)?;
        let compiled = compile::compile(&policy, &known, |path| self.cgroups.id(path))
            .map_err(|err| ApplyError::Rejected(vec![format!("{file}: {err}")]))?;
        self.maps
            .record_domains(&compiled.registry, &known)
            .map_err(ApplyError::Failed)?;
        let generation = self.generation + 1;
        self.maps
            .swap_in(&compiled, generation)
            .map_err(ApplyError::Failed)?;
        self.generation = generation;
        self.policy = policy;
        self.policy_file = file.to_owned();
        self.compiled = compiled;
        if let Err(err) = fs::write(self.state.active_policy(), text) {
            log(&format!(
                "warning: could not save a copy of the active policy in {}: {err}",
                self.state.active_policy().display()
            ));
        }
        Ok(generation)
    }

    fn binding_warnings(&self) -> Vec<String> {
        self.compiled
            .bindings
            .iter()
            .filter_map(|b| {
                if !self.root.covers(&b.path) {
                    Some(format!(
                        "warning: cgroup {} is outside --cgroup-root {}; it is not enforced",
                        b.path, self.root.relative
                    ))
                } else if b.cgroup_id.is_none() {
                    Some(format!(
                        "warning: cgroup {} does not exist; processes under it are not labeled \
                         until it is created and the policy is applied again",
                        b.path
                    ))
                } else {
                    None
                }
            })
            .collect()
    }

    fn serve(&mut self, listener: &UnixListener) -> Result<()> {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => self.handle(&stream),
                Err(err) => log(&format!("control socket accept failed: {err}")),
            }
        }
        Ok(())
    }

    fn handle(&mut self, stream: &UnixStream) {
        let response = match control::read_request(stream) {
            Ok(Request::Apply { file, text }) => match self.apply(&file, &text) {
                Ok(generation) => {
                    log(&format!("policy generation {generation} active ({file})"));
                    for warning in self.binding_warnings() {
                        log(&warning);
                    }
                    Response::Applied { generation }
                }
                Err(ApplyError::Rejected(errors)) => {
                    log(&format!(
                        "refused policy {file}: {} error(s); nothing changed",
                        errors.len()
                    ));
                    Response::Rejected { errors }
                }
                Err(ApplyError::Failed(err)) => {
                    log(&format!(
                        "applying {file} failed; the previous policy stays active: {err:#}"
                    ));
                    Response::Error {
                        message: format!("{err:#}; the previous policy stays active"),
                    }
                }
            },
            Ok(Request::Status) => Response::Status(Box::new(self.status())),
            Err(err) => Response::Error {
                message: format!("{err:#}"),
            },
        };
        if let Err(err) = control::write_response(stream, &response) {
            log(&format!("could not answer a control request: {err:#}"));
        }
    }

    fn status(&self) -> Status {
        let registry = &self.compiled.registry;
        let domains = self
            .policy
            .domains
            .iter()
            .map(|d| status::DomainStatus {
                name: d.name.to_string(),
                id: registry.get(d.name.as_str()).unwrap_or_default(),
                bindings: d
                    .cgroups
                    .iter()
                    .map(|path| {
                        let cgroup_id = self
                            .compiled
                            .bindings
                            .iter()
                            .find(|b| &b.path == path)
                            .and_then(|b| b.cgroup_id);
                        let state = if !self.root.covers(path) {
                            "outside-root"
                        } else if cgroup_id.is_some() {
                            "bound"
                        } else {
                            "missing"
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
        let edges = self
            .policy
            .federation
            .iter()
            .map(|e| status::EdgeStatus {
                from: e.from.to_string(),
                to: e.to.to_string(),
                protocol: e.protocol.to_string(),
                ports: e.ports.iter().map(ToString::to_string).collect(),
                owner: e.owner.clone(),
                reason: e.reason.clone(),
            })
            .collect();
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
            domains,
            edges,
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
            maps: self
                .maps
                .fill()
                .into_iter()
                .map(|(map, entries)| status::MapFill {
                    map: map.into(),
                    entries,
                })
                .collect(),
        }
    }
}

/// `enforcer teardown` detaches the links and removes the pins behind a running daemon's back;
/// a daemon that went on answering `status` and `apply` would then report enforcement that no
/// longer exists. It checks once a second and exits when its links are gone.
fn exit_when_torn_down(pins: PinDir) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if attach::HOOKS.iter().all(|h| !pins.link(h.program).exists()) {
                log("enforcement was torn down (the pinned links are gone); exiting");
                std::process::exit(0);
            }
        }
    });
}

fn log(message: &str) {
    eprintln!("enforcer: {message}");
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

/// Binds the control socket with mode 0600, replacing a stale socket file left by a daemon
/// that was killed, but never one a live daemon still answers on.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("a daemon is already answering on {}", path.display());
        }
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(err) if err.kind() == ErrorKind::AddrInUse => {
            bail!("{} is in use by another process", path.display())
        }
        Err(err) => return Err(err).with_context(|| format!("binding {}", path.display())),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(listener)
}
