//! The running daemon: what it owns, how it answers control requests, and how each kind of
//! change is made. A change is prepared (resolved and compiled, nothing touched), then committed
//! through the state (`state.rs`) and the kernel side (`host.rs`), then logged and answered.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, LazyLock, Mutex, PoisonError, mpsc},
};

use anyhow::Result;
use enforcer_common::verdict::Peer;
use enforcer_policy::{CgroupPath, Policy};

use super::{
    access,
    host::Host,
    plan,
    restart::SavedPolicy,
    state::{Change, KernelSide as _, State},
    transitions::{Expired, Granted},
};
use crate::{
    api::{
        control::{Request, Response},
        edge::GrantRequest,
        plan::Plan,
    },
    kernel::{
        attach::{self, AttachedProgram},
        backfill,
        cgroupfs::{CgroupFs, CgroupRoot},
        revocation::Ending,
        upgrade::Migrated,
    },
    observe::{
        event_feed::NamesBoard,
        event_record::{self, EventRecord},
        metrics::{Commits, Outcome},
        systemd::ServiceManager,
        tally::Tally,
    },
    paths::PinDir,
    pipeline::{
        clock::Clocks,
        compile::{self, Compiled},
        edges::{Book, LiveEdge, Trust},
    },
    trust::bundles::{self, TrustState},
    why,
};

pub struct Daemon {
    pub(super) cgroups: CgroupFs,
    pub(super) root: CgroupRoot,
    pub(super) pins: PinDir,
    /// The kernel side: what a change writes through.
    pub(super) host: Host,
    /// The loaded programs; once attached they also live on in their pinned links.
    pub(super) ebpf: aya::Ebpf,
    pub(super) programs: Vec<AttachedProgram>,
    /// The pinned maps this start migrated from an earlier build's layout.
    pub(super) upgraded: Vec<Migrated>,
    /// The policy in force and what it resolved to.
    pub(super) state: State,
    /// Where the event feed finds the names of the policy in force.
    pub(super) names: NamesBoard,
    /// Boot-clock nanosecond up to which edge expiries have ended their connections.
    pub(super) expiries_done: u64,
    /// Decisions seen in the kernel's event stream.
    pub(super) tally: Arc<Mutex<Tally>>,
    /// Policy changes by outcome and how long they took, for the metrics.
    pub(super) commits: Commits,
    /// Where the connections this daemon ends are reported, as events.
    pub(super) ended: mpsc::Sender<EventRecord>,
    pub(super) attestation: crate::trust::attestation::Attestation,
    pub(super) bundle_warn_before: std::time::Duration,
    /// Where the policy came from at start, and the reloads of `--policy FILE`.
    pub(super) source: super::restart::Source,
    /// The service manager to tell about each change (`STATUS=`), once the daemon is ready.
    pub(super) manager: Option<Arc<ServiceManager>>,
}

/// What changed: the generation now in force and the live connections ended.
pub(super) struct Committed {
    pub(super) generation: u64,
    pub(super) ended: usize,
    /// How long compiling took, and writing and swapping the maps.
    pub(super) compile: std::time::Duration,
    pub(super) maps: std::time::Duration,
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

/// Why a change did not happen. Either way nothing changed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    /// What was asked is wrong: every reason, each a line for the user.
    #[error("{}", .0.join("; "))]
    Rejected(Vec<String>),
    /// What was asked could not be carried out.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Daemon {
    fn apply(&mut self, file: &str, text: &str, parsed: Parsed) -> Result<Committed, ApplyError> {
        let (policy, trust) = parsed?;
        self.apply_parsed(policy, trust, file, text, None)
    }

    /// Compiles and swaps in a policy already parsed from `text` with the bundles it names,
    /// keeping the grants. `revision` is the document's revision in the fleet's store, when it
    /// came from there.
    pub(super) fn apply_parsed(
        &mut self,
        policy: Policy,
        trust: TrustState,
        file: &str,
        text: &str,
        revision: Option<i64>,
    ) -> Result<Committed, ApplyError> {
        let book = self.state.book.clone();
        // Saved with the edge record before the swap: a restart starts from it.
        let source = self.source.label();
        let saving = SavedPolicy {
            origin: file,
            text,
            source: source.as_deref(),
            revision,
        };
        let committed = self.commit_saving(policy, book, Some(trust), file, Some(&saving))?;
        self.state.policy_file = file.to_owned();
        // A copy for people to read; written whole or not at all.
        let copy = self.host.state_dir.active_policy();
        if let Err(err) = crate::state_files::save_text(&copy, text) {
            log::warn!(
                "could not save a copy of the active policy in {}: {err:#}",
                copy.display()
            );
        }
        Ok(committed)
    }

    /// [`Self::commit_unmeasured`], counted and timed for the metrics.
    pub(super) fn commit(
        &mut self,
        policy: Policy,
        book: Book,
        trust: Option<TrustState>,
        origin: &str,
    ) -> Result<Committed, ApplyError> {
        self.commit_saving(policy, book, trust, origin, None)
    }

    /// [`Self::commit`] that also saves the policy of an apply.
    fn commit_saving(
        &mut self,
        policy: Policy,
        book: Book,
        trust: Option<TrustState>,
        origin: &str,
        saving: Option<&SavedPolicy<'_>>,
    ) -> Result<Committed, ApplyError> {
        let started = std::time::Instant::now();
        let result = self.commit_unmeasured(policy, book, trust, origin, saving);
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
        saving: Option<&SavedPolicy<'_>>,
    ) -> Result<Committed, ApplyError> {
        let started = std::time::Instant::now();
        let Prepared {
            live,
            book,
            compiled,
        } = self.prepare(
            &policy,
            &book,
            trust.as_ref().unwrap_or(&self.state.trust),
            origin,
        )?;
        let compile = started.elapsed();
        let change = Change {
            policy,
            book,
            live,
            compiled,
            trust,
        };
        // The event feed names events under this lock. Held from the swap until this change's
        // ended records are sent, it makes the feed report each connection the change ends
        // with the daemon's record (which says why), not with the kernel's report of a packet
        // dropped on it.
        let board = Arc::clone(&self.names);
        let mut posted = board.write().unwrap_or_else(PoisonError::into_inner);
        let committed = self
            .state
            .commit(change, saving, &mut self.host)
            .map_err(|err| ApplyError::Failed(err.into()))?;
        let ended = self.report_ended(committed.endings.as_deref());
        *posted = Arc::new(self.in_force());
        drop(posted);
        if let Some(manager) = &self.manager {
            manager.status(&self.summary());
        }
        Ok(Committed {
            generation: committed.generation,
            ended,
            compile,
            maps: committed.maps,
        })
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
        let known = self.host.maps.registry().map_err(ApplyError::Failed)?;
        let policy = self.attestation.store.augment(policy);
        // A cgroup the policy in force binds already is taken at the id it is bound to:
        // `follow_cgroups` keeps those current (on inotify events, on a rescan, and after every
        // new generation, this one's included), and 10,000 `stat`s would otherwise be most of
        // an apply. Attested cgroups are looked up afresh, as their ids depend on the
        // attestation as well.
        let bound = self.state.compiled.cgroup_ids();
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
        let next = self.prepare(&policy, &self.state.book, &trust, file)?;
        let snapshot = self
            .host
            .connections
            .snapshot(&self.host.addresses.pod_namespaces())
            .map_err(ApplyError::Failed)?;
        let now = plan::Side {
            policy: &self.state.policy,
            live: &self.state.live,
            compiled: &self.state.compiled,
        };
        let after = plan::Side {
            policy: &policy,
            live: &next.live,
            compiled: &next.compiled,
        };
        Ok(plan::plan(
            file,
            self.state.generation,
            &now,
            &after,
            &snapshot,
            Clocks::now().boot,
        ))
    }

    /// Ends the live connections open now that the policy in force refuses, outside a
    /// change: the kernel drops their packets already, this makes the applications see it.
    fn end_refused_connections_now(&mut self) -> usize {
        let board = Arc::clone(&self.names);
        let _naming = board.write().unwrap_or_else(PoisonError::into_inner);
        let compiled = Arc::clone(&self.state.compiled);
        let endings = self.host.end_refused(None, &compiled);
        self.report_ended(endings.as_deref())
    }

    /// Reports each connection a change ended as an event; returns how many there were.
    fn report_ended(&mut self, endings: Option<&[Ending]>) -> usize {
        let Some(endings) = endings else {
            return 0;
        };
        let clocks = Clocks::now();
        self.expiries_done = clocks.boot;
        let names = self.in_force();
        for ending in endings {
            let record =
                EventRecord::ended(ending, &names, self.state.generation, clocks.wall_now());
            // The feed only stops with the process.
            let _ = self.ended.send(record);
        }
        endings.len()
    }

    /// Ends the connections of edges whose window closed since the last look, and removes
    /// expired grants. Runs every tick; the kernel refuses new flows over an expired edge on
    /// its own, whether this runs or not.
    pub fn expire_edges(&mut self) {
        let Some(Expired {
            edges: names,
            grants,
            book,
        }) = self.state.expired(self.expiries_done, &Clocks::now())
        else {
            return;
        };
        let ended = match book {
            None => self.end_refused_connections_now(),
            Some(book) => match self.commit(self.state.policy.clone(), book, None, "expiry") {
                Ok(c) => c.ended,
                Err(ApplyError::Rejected(errors)) => {
                    log::warn!("removing expired grants failed: {}", errors.join("; "));
                    self.end_refused_connections_now()
                }
                Err(ApplyError::Failed(err)) => {
                    log::warn!("removing expired grants failed: {err:#}");
                    self.end_refused_connections_now()
                }
            },
        };
        log::info!(
            "edge(s) {} expired; ended {ended} connection(s){}",
            names.join(", "),
            if grants.is_empty() {
                String::new()
            } else {
                format!("; removed expired grant(s) {}", grants.join(", "))
            }
        );
    }

    /// The paths of the bundle files the policy in force names.
    pub fn bundle_paths(&self) -> BTreeSet<PathBuf> {
        self.state
            .policy
            .domains
            .iter()
            .filter_map(|d| d.bundle.as_ref().map(|b| b.path.clone()))
            .collect()
    }

    /// The bundle files in force, to be read again without the daemon's lock.
    pub fn bundle_files(&self) -> bundles::Files {
        self.state.trust.files()
    }

    /// Takes in the bundle files that changed, read again (`bundle_files`), and re-judges the
    /// edges that require bundles; when one is suspended or resumes (a bundle removed,
    /// replaced, lapsed or renewed), puts that in force under a new generation, ending the
    /// connections a suspension refuses, exactly as a revocation does. Runs every tick.
    pub fn refresh_bundles(&mut self, files: bundles::FilesRead) {
        for (level, change) in self.state.trust.refresh(files) {
            log::log!(level, "{change}");
        }
        let now = Clocks::now().wall_now();
        let warn_before = jiff::SignedDuration::try_from(self.bundle_warn_before)
            .unwrap_or(jiff::SignedDuration::MAX);
        for warning in self.state.trust.expiry_warnings(now, warn_before) {
            log::warn!("{warning}");
        }
        let changed = self.state.trust_changes(now);
        if changed.is_empty() {
            return;
        }
        match self.commit(
            self.state.policy.clone(),
            self.state.book.clone(),
            None,
            "trust bundles",
        ) {
            Ok(c) => {
                for (id, trust) in &changed {
                    log::info!(
                        "{}",
                        match trust {
                            Trust::Suspended(why) => format!("edge {id} suspended: {why}"),
                            Trust::Until(t) => {
                                format!("edge {id} active while its bundles are valid, until {t}")
                            }
                            Trust::NotRequired => format!("edge {id} needs no bundles"),
                        }
                    );
                }
                log::info!(
                    "trust bundles changed; ended {} connection(s); policy generation {}",
                    c.ended,
                    c.generation
                );
            }
            Err(ApplyError::Rejected(errors)) => {
                log::warn!(
                    "applying a trust bundle change failed: {}",
                    errors.join("; ")
                );
            }
            Err(ApplyError::Failed(err)) => {
                log::warn!("applying a trust bundle change failed: {err:#}");
            }
        }
    }

    fn grant(&mut self, request: &GrantRequest) -> Response {
        let Granted { grant, book } = match self.state.grant(request, Clocks::now().wall_now()) {
            Ok(granted) => granted,
            Err(errors) => return Response::Rejected { errors },
        };
        let edge = &grant.edge;
        let origin = format!("grant {}", edge.id);
        match self.commit(self.state.policy.clone(), book, None, &origin) {
            Ok(c) => {
                log::info!(
                    "granted {} {} -> {} {} {} until {} (owner {}: {}); policy generation {}",
                    edge.id,
                    edge.from,
                    edge.to,
                    edge.protocol,
                    edge.ports_text(),
                    grant.expires,
                    edge.owner,
                    edge.reason,
                    c.generation
                );
                Response::Granted {
                    id: edge.id.to_string(),
                    expires: grant.expires,
                    generation: c.generation,
                }
            }
            Err(err) => refusal(&origin, err),
        }
    }

    fn revoke(&mut self, id: &str) -> Response {
        let book = match self.state.revoke(id) {
            Ok(book) => book,
            Err(err) => {
                return Response::Error {
                    message: err.to_string(),
                };
            }
        };
        let origin = format!("revoke {id}");
        match self.commit(self.state.policy.clone(), book, None, &origin) {
            Ok(c) => {
                log::info!(
                    "revoked {id}; ended {} connection(s); policy generation {}",
                    c.ended,
                    c.generation
                );
                Response::Revoked {
                    id: id.to_owned(),
                    ended: c.ended,
                    generation: c.generation,
                }
            }
            Err(err) => refusal(&origin, err),
        }
    }

    /// The names of the policy in force, for events: taken by the event feed without the
    /// daemon's lock.
    fn in_force(&self) -> InForce {
        InForce {
            compiled: Arc::clone(&self.state.compiled),
            live: Arc::clone(&self.state.live),
            live_at: Arc::clone(&self.state.live_at),
        }
    }

    /// Shows the event feed the names of the policy now in force.
    pub(super) fn publish_names(&self) {
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(self.in_force());
    }

    pub(super) fn peer_name(&self, code: u32) -> String {
        event_record::Names::peer(&self.in_force(), code).to_string()
    }

    /// Answers `request`; an apply or a plan comes with its policy already parsed.
    pub(super) fn handle(&mut self, request: Request, parsed: Option<Parsed>) -> Response {
        let parsed = || {
            parsed.unwrap_or_else(|| {
                Err(ApplyError::Failed(anyhow::anyhow!(
                    "the policy was not parsed before the daemon was locked"
                )))
            })
        };
        match request {
            Request::Apply { file, .. } if self.source.fleet.is_some() => {
                let prefix = self.source.label().unwrap_or_default();
                log::warn!(
                    "refused a local policy apply of {file}: the policy comes from {prefix}"
                );
                Response::Error {
                    message: format!(
                        "this daemon takes its policy from the fleet ({prefix}, --source etcd): \
                         a local apply would be undone by the fleet's next document and would \
                         make this node differ from the fleet; nothing changed. Apply it to \
                         every node with `enforcer fleet apply {file}`"
                    ),
                }
            }
            Request::Apply { file, text } => match self.apply(&file, &text, parsed()) {
                Ok(committed) => {
                    let Committed {
                        generation, ended, ..
                    } = committed;
                    log::info!(
                        "policy generation {generation} active ({file}); ended {ended} \
                         connection(s); {}",
                        committed.timing()
                    );
                    for (level, line) in self.binding_warnings() {
                        log::log!(level, "{line}");
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
            maps: &self.host.maps,
            addresses: &self.host.addresses,
            cgroups: &self.cgroups,
            root: &self.root,
            edges: &self.state.live,
        };
        match why::explain(&live, from, to, protocol) {
            Ok(explanation) => Response::Why(Box::new(explanation)),
            Err(err) => Response::Error {
                message: format!("{err:#}"),
            },
        }
    }

    pub(super) fn tag_existing(&self) -> Result<usize> {
        backfill::tag_existing(&self.cgroups, &self.root, &self.state.compiled, &self.pins)
    }

    /// Every existing directory along the bound cgroup paths under the root: where a bound
    /// cgroup or one of its ancestors can appear or vanish.
    pub fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        dirs.insert(self.cgroups.dir("/"));
        // Bound paths share their ancestors (a slice and its thousands of services): an
        // ancestor already found to exist is not looked at again.
        for binding in &self.state.compiled.bindings {
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

    /// Whether a directory in `changed` (created, removed or moved) is a bound cgroup or one
    /// of its ancestors: only then can a binding's cgroup have come or gone. A batch names a
    /// few directories, each compared with every bound path as a prefix: no allocation and
    /// no hashing per binding, so a host whose other cgroups churn pays little for them.
    pub fn bindings_affected_by(&self, changed: &HashSet<PathBuf>) -> bool {
        let changed: Vec<String> = changed
            .iter()
            .filter_map(|dir| {
                let relative = dir.strip_prefix(self.cgroups.mount()).ok()?;
                Some(format!("/{}", relative.to_str()?))
            })
            .collect();
        self.state.compiled.bindings.iter().any(|binding| {
            let bound = binding.path.as_str();
            changed.iter().any(|dir| {
                bound
                    .strip_prefix(dir.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        })
    }

    /// Re-resolves every binding's cgroup. A cgroup that appeared gets its binding at once
    /// (and sockets created in it meanwhile get its domain); one that vanished leaves no entry
    /// behind and its binding is pending again. The policy generation does not change: the
    /// policy is the same, only the cgroups it names came or went.
    pub fn follow_cgroups(&mut self) -> Result<()> {
        // Runs every tick: a stat per binding decides whether anything needs recompiling.
        let unchanged = self
            .state
            .compiled
            .bindings
            .iter()
            .all(|b| self.cgroup_id(&b.path) == b.cgroup_id);
        if unchanged {
            return Ok(());
        }
        let known = self.host.maps.registry()?;
        let policy = self.attestation.store.augment(&self.state.policy);
        let mut compiled =
            compile::compile(&policy, &self.state.live, known, &Clocks::now(), |path| {
                self.cgroup_id(path)
            })?;
        // The edges are the same; keeping their compiled deadlines exactly as they are keeps
        // the conversion from drifting by the microseconds between two clock readings.
        compiled.edges.clone_from(&self.state.compiled.edges);
        if compiled.bindings == self.state.compiled.bindings {
            return Ok(());
        }
        let before: BTreeSet<(&CgroupPath, u32, Option<u64>)> = self
            .state
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
        self.state.rebind(compiled, &mut self.host)?;
        let compiled = Arc::clone(&self.state.compiled);
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
                Some(id) => log::info!(
                    "cgroup {} appeared (id {id}): bound to {name}",
                    binding.path
                ),
                None => log::info!(
                    "cgroup {} is gone: its binding to {name} is pending until it is created again",
                    binding.path
                ),
            }
        }
        self.publish_names();
        if !appeared.is_empty() {
            let retagged = backfill::retag_under(
                &self.cgroups,
                &self.root,
                &self.state.compiled,
                &self.pins,
                &appeared,
            )?;
            if retagged > 0 {
                log::info!(
                    "re-tagged {retagged} socket(s) created in the new cgroup(s) before their binding landed"
                );
            }
        }
        Ok(())
    }

    pub fn refresh_addresses(&mut self, pods: bool) -> Result<()> {
        self.host.addresses.refresh_host()?;
        if pods {
            let compiled = &self.state.compiled;
            self.host
                .addresses
                .refresh_pods(|pid| backfill::domain_of_pid(compiled, pid))?;
        }
        self.sync_peer_addresses(pods);
        if pods && let Some(fleet) = &self.source.fleet {
            fleet.addresses.scanned.notify_one();
        }
        Ok(())
    }

    /// Whether `enforcer teardown` removed the links behind this daemon's back; a daemon that
    /// went on answering would report enforcement that no longer exists.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    pub fn torn_down(&self) -> bool {
        attach::HOOKS
            .iter()
            .all(|h| !self.pins.link(h.program).exists())
    }
}

/// The names behind the ids of the policy in force.
#[derive(Default)]
pub struct InForce {
    compiled: Arc<Compiled>,
    live: Arc<Vec<LiveEdge>>,
    live_at: Arc<std::collections::HashMap<u32, usize>>,
}

/// The names of the peers that are no domain, made once and shared by every event.
static UNLABELED: LazyLock<Arc<str>> = LazyLock::new(|| "unlabeled".into());
static EXTERNAL: LazyLock<Arc<str>> = LazyLock::new(|| "external".into());

impl event_record::Names for InForce {
    fn peer(&self, code: u32) -> Arc<str> {
        match Peer::decode(code) {
            Peer::Unlabeled => Arc::clone(&UNLABELED),
            Peer::External => Arc::clone(&EXTERNAL),
            Peer::Domain(id) => self
                .compiled
                .registry
                .shared_name_of(id)
                .map_or_else(|| format!("domain #{id}").into(), Arc::clone),
        }
    }

    fn edge(&self, index: u32) -> Option<String> {
        self.live_at
            .get(&index)
            .and_then(|&at| self.live.get(at))
            .map(|e| e.edge.id.to_string())
    }
}

/// A policy parsed with the bundles it names, or why it was refused.
pub(super) type Parsed = Result<(Policy, TrustState), ApplyError>;

/// A policy text with the bundles it names, checked as an apply checks them: a bundle that
/// cannot be read or fails the checks refuses the policy, at the spot that names it.
pub(super) fn parse_with_bundles(file: &str, text: &str) -> Parsed {
    let policy = parse(file, text)?;
    with_bundles(policy, file)
}

/// A policy text for the `plan` of a client that may only read: as `parse_with_bundles`, but
/// refused if it names a bundle file that the policy in force (`in_force`) does not.
pub(super) fn parse_for_reader(file: &str, text: &str, in_force: &BTreeSet<PathBuf>) -> Parsed {
    let policy = parse(file, text)?;
    access::reader_may_read_bundles(file, &policy, in_force).map_err(ApplyError::Rejected)?;
    with_bundles(policy, file)
}

fn parse(file: &str, text: &str) -> Result<Policy, ApplyError> {
    enforcer_policy::parse(file, text)
        .map_err(|ds| ApplyError::Rejected(ds.iter().map(ToString::to_string).collect()))
}

fn with_bundles(policy: Policy, file: &str) -> Parsed {
    let trust = TrustState::load(&policy, file, true).map_err(ApplyError::Rejected)?;
    Ok((policy, trust))
}

/// The record without the grants that expired while no daemon ran; the kernel stopped
/// honouring them at their deadline.
pub(super) fn without_expired_grants(book: Book) -> Book {
    let now = Clocks::now().wall_now();
    let pruned = book.without_grants(|g| g.expires <= now);
    if pruned != book {
        log::info!("removed grant(s) that expired while the daemon was stopped");
    }
    pruned
}

/// The answer to a change that did not happen; either way nothing changed.
pub(super) fn refusal(origin: &str, err: ApplyError) -> Response {
    match err {
        ApplyError::Rejected(errors) => {
            log::warn!(
                "refused {origin}: {} error(s); nothing changed",
                errors.len()
            );
            Response::Rejected { errors }
        }
        ApplyError::Failed(err) => {
            log::warn!("{origin} failed; the previous policy stays active: {err:#}");
            Response::Error {
                message: format!("{err:#}; the previous policy stays active"),
            }
        }
    }
}
