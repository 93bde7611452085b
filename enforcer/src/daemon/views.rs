//! What the daemon shows of its state: `status`, the edge views, the metrics' snapshot and
//! the log's warnings about bindings. Read-only.

use std::sync::PoisonError;

use enforcer_common::names;
use enforcer_policy::Action;

use super::machine::Daemon;
use crate::{
    api::{
        edge::EdgeView,
        status::{self, Status},
    },
    kernel::{self},
    observe::metrics::{self},
    pipeline::{
        clock::Clocks,
        compile::{self},
        grants::{self, Used},
    },
    version,
};

/// Bindings of each kind the log names one by one after an apply; the rest are counted.
const BINDING_WARNINGS: usize = 5;

/// `status` marks edges unused for this long as stale (`edge list --stale-after` chooses).
const DEFAULT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Daemon {
    /// One line on what is enforced, for the service manager's `STATUS=`.
    pub(super) fn summary(&self) -> String {
        let state = &self.state;
        format!(
            "enforcing policy generation {}: {} domain(s), {} edge(s)",
            state.generation,
            state.policy.domains.len(),
            state.live.len()
        )
    }

    pub(super) fn edge_views(&self, stale_after: std::time::Duration) -> Vec<EdgeView> {
        let clocks = Clocks::now();
        let used = self.host.usage.edges();
        self.state
            .live
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

    pub(super) fn audit_status(&self) -> status::AuditStatus {
        let mut audit = status::AuditStatus::default();
        for (pair, counts) in self.host.usage.pairs() {
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
    pub(super) fn binding_warnings(&self) -> Vec<(log::Level, String)> {
        let (outside, pending): (Vec<_>, Vec<_>) = self
            .state
            .compiled
            .bindings
            .iter()
            .filter(|b| !self.root.covers(&b.path) || b.cgroup_id.is_none())
            .partition(|b| !self.root.covers(&b.path));
        let listed = |bindings: &[&compile::Binding],
                      level: log::Level,
                      say: &dyn Fn(&str) -> String,
                      more: &dyn Fn(usize) -> String| {
            let mut lines: Vec<(log::Level, String)> = bindings
                .iter()
                .take(BINDING_WARNINGS)
                .map(|b| (level, say(b.path.as_str())))
                .collect();
            if bindings.len() > BINDING_WARNINGS {
                lines.push((level, more(bindings.len() - BINDING_WARNINGS)));
            }
            lines
        };
        let root = &self.root.relative;
        listed(
            &outside,
            log::Level::Warn,
            &|path| format!("cgroup {path} is outside --cgroup-root {root}; it is not enforced"),
            &|n| format!("... and {n} more cgroup(s) outside --cgroup-root {root}: not enforced"),
        )
        .into_iter()
        .chain(listed(
            &pending,
            log::Level::Info,
            &|path| {
                format!(
                    "cgroup {path} does not exist yet; its binding is pending and takes effect \
                     when it is created"
                )
            },
            &|n| format!("... and {n} more cgroup(s) that do not exist yet: pending likewise"),
        ))
        .chain(
            self.attestation
                .warning(&self.state.policy)
                .map(|warning| (log::Level::Warn, warning)),
        )
        .collect()
    }

    pub(super) fn status(&self) -> Status {
        let registry = &self.state.compiled.registry;
        let bound = self.state.compiled.cgroup_ids();
        let domains = self
            .state
            .policy
            .domains
            .iter()
            .map(|d| status::DomainStatus {
                name: d.name.to_string(),
                id: registry.get(d.name.as_str()).unwrap_or_default(),
                mode: d
                    .mode
                    .unwrap_or(self.state.policy.defaults.mode)
                    .to_string(),
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
            generation: self.state.generation,
            policy_file: self.state.policy_file.clone(),
            pin_dir: self.pins.path().display().to_string(),
            cgroup_mount: self.cgroups.mount().display().to_string(),
            cgroup_root: self.root.dir.display().to_string(),
            defaults: status::Defaults {
                unlabeled: action(self.state.policy.defaults.unlabeled),
                external: action(self.state.policy.defaults.external),
            },
            mode: self.state.policy.defaults.mode.to_string(),
            domains,
            attestation: self.attestation_status(),
            bundles: self.state.trust.views(
                jiff::Timestamp::now(),
                jiff::SignedDuration::try_from(self.bundle_warn_before)
                    .unwrap_or(jiff::SignedDuration::MAX),
            ),
            edges,
            audit: self.audit_status(),
            events: status::EventsStatus {
                log: self.host.state_dir.events().display().to_string(),
                lost: self
                    .tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .lost(),
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
                .host
                .maps
                .fill(self.state.compiled.registry.len())
                .into_iter()
                .chain([(names::MAP_ADDRS, self.host.addresses.count())])
                .map(|(map, entries)| status::MapFill {
                    map: map.into(),
                    entries,
                })
                .collect(),
            memory: kernel::memory::of_pins(&self.pins),
            policy_source: Some(self.source.status()),
            upgraded_maps: self
                .upgraded
                .iter()
                .map(|m| status::UpgradedMap {
                    map: m.map.into(),
                    change: m.change.into(),
                    entries: m.entries,
                })
                .collect(),
            build: Some(status::Build {
                version: version::VERSION.into(),
                commit: version::COMMIT.into(),
                built: version::BUILT.into(),
                ebpf_sha256: version::EBPF_SHA256.into(),
            }),
            workload_api: crate::trust::workload_api::installed().map(|feed| {
                let view = feed.view();
                let svid = view.svid.unwrap_or(crate::trust::current_svid::SvidFacts {
                    id: None,
                    expires: None,
                });
                status::WorkloadApiStatus {
                    endpoint: view.endpoint,
                    connected: view.connected,
                    error: view.error,
                    updates: view.updates,
                    last_update: view.last_update,
                    domains: view.domains,
                    svid: svid.id.map(|id| id.to_string()),
                    svid_expires: svid.expires,
                }
            }),
        }
    }

    /// What `GET /healthz` answers: whether enforcement is in place, as far as is cheap to
    /// tell. A policy is in force, and every program's link is still pinned: a pinned link is
    /// attached, and is what keeps enforcement in place across restarts; `teardown` or a hand
    /// removing pins takes them away under the daemon.
    pub fn health(&self) -> Result<(), String> {
        if self.state.generation == 0 {
            return Err("no policy in force".to_owned());
        }
        if self.programs.is_empty() {
            return Err("no programs attached".to_owned());
        }
        match self.programs.iter().find(|p| !p.link_pin.exists()) {
            Some(gone) => Err(format!(
                "the link of {} ({}) is no longer pinned at {}",
                gone.program,
                gone.attach_point,
                gone.link_pin.display()
            )),
            None => Ok(()),
        }
    }

    /// What the metrics report, copied out so that the lock is let go before they are
    /// rendered and sent.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::Snapshot {
            generation: self.state.generation,
            decisions: tally.decisions().clone(),
            events_lost: tally.lost(),
            pairs: self.audit_status().pairs,
            edges: self.edge_views(DEFAULT_STALE_AFTER),
            commits: self.commits.clone(),
            reloads: self.source.reloads.clone(),
            reload_refused: self.source.last_reload_error.is_some(),
            workload_api: crate::trust::workload_api::installed().map(|feed| {
                let view = feed.view();
                (view.connected, view.updates)
            }),
            bundle_fetches: self
                .state
                .trust
                .fetch_counts()
                .into_iter()
                .map(|(domain, r)| metrics::BundleFetches {
                    domain: domain.to_string(),
                    fetches: r.fetches,
                    failures: r.failures,
                    changes: r.changes,
                    last_success: r.succeeded,
                })
                .collect(),
            source: {
                let status = self.source.status();
                metrics::SourceSnapshot {
                    revision: status.revision,
                    last_sync: status.last_sync,
                    stale: status.stale,
                    error: status.last_error.is_some(),
                    addresses: status.etcd.and_then(|e| e.addresses),
                }
            },
        }
    }
}
