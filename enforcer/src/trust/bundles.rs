//! The trust bundles the running policy names, as the daemon holds them: read when a policy is
//! applied (a bundle file that does not parse or check refuses the apply), read again whenever
//! their source changes (a file, or the SPIFFE Workload API's latest set), and judged against
//! the clock. Edges that require bundles are gated on them
//! (`Trust`): active only while both ends' bundles are usable, and never past the earliest
//! expiry among them, which is written into the kernel's edge window so that the kernel stops
//! such an edge at expiry even when no daemon runs.
//!
//! A domain's bundle has one source: its `bundle` file, the Workload API (`bundle_from:
//! workload_api`, `workload_api.rs`), or its `bundle_endpoint` (`bundle_endpoint.rs`, whose
//! task this state starts on `adopt` and reads on `refresh`; a `bundle` file beside it is
//! only the bootstrap, in force until the first fetch succeeds).

use std::{collections::BTreeMap, fs, os::unix::fs::MetadataExt as _, path::PathBuf, sync::Arc};

use enforcer_policy::{BundleEndpoint, BundleSource, Edge, EndpointProfile, Policy, TrustDomain};
use jiff::{SignedDuration, Timestamp};

use crate::{
    api::status::{AuthorityStatus, BundleStatus, EndpointStatus},
    pipeline::edges::Trust,
    trust::{
        self, Bundle, bundle,
        bundle_endpoint::{Poller, Report},
        workload_api::{self, Lookup},
    },
};

/// A bundle as last read from its source.
#[derive(Debug, Clone)]
struct Entry {
    source: Source,
    /// The bundle, or why it could not be used.
    loaded: Result<Bundle, String>,
}

/// Where a domain's bundle comes from, and how to tell that it changed.
#[derive(Debug, Clone)]
enum Source {
    File {
        path: PathBuf,
        /// Identity of the file read; `None` when unreadable.
        file: Option<FileId>,
    },
    /// The Workload API's set, as of the feed's version `seen` (`None`: no feed at all).
    WorkloadApi { seen: Option<u64> },
    /// A bundle endpoint, with the file that bootstraps it, if any.
    Endpoint {
        bootstrap: Option<PathBuf>,
        fetching: Box<Fetched>,
    },
}

/// A bundle fetched from an endpoint.
#[derive(Debug, Clone)]
struct Fetched {
    config: BundleEndpoint,
    /// Its task, once the daemon adopted this state; shared by copies of the state.
    poller: Option<Arc<Poller>>,
    /// The last outcome this state took in (`Report::serial`).
    seen: u64,
    report: Report,
}

impl Source {
    /// How `status` and the log name it.
    fn describe(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::WorkloadApi { .. } => match workload_api::installed() {
                Some(feed) => format!("Workload API {}", feed.endpoint),
                None => "Workload API".into(),
            },
            Self::Endpoint { fetching, .. } => fetching.config.url.clone(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::WorkloadApi { .. } => "workload_api",
            Self::Endpoint { .. } => "endpoint",
        }
    }
}

/// A file as it was read: (device, inode, size, mtime ns).
type FileId = (u64, u64, u64, i128);

/// The bundle files of a state as it last read them, taken under the daemon's lock to be
/// looked at again without it ([`Files::reread`]): a bundle file is at a path others may be
/// able to replace, and however it is read, a look at the file system must not hold up the
/// daemon.
pub struct Files(Vec<(TrustDomain, PathBuf, Option<FileId>)>);

/// The bundle files that changed, read again, for [`TrustState::refresh`].
pub struct FilesRead(BTreeMap<TrustDomain, (Option<FileId>, Entry)>);

impl Files {
    /// Reads again each file that changed since it was read or was unreadable then.
    pub fn reread(self) -> FilesRead {
        FilesRead(
            self.0
                .into_iter()
                .filter(|(_, path, file)| file.is_none() || identity(path) != *file)
                .map(|(domain, path, file)| {
                    let entry = read(&path, &domain);
                    (domain, (file, entry))
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrustState {
    entries: BTreeMap<TrustDomain, Entry>,
    shared: trust::Bundles,
    /// Bundles whose coming expiry has been logged (cleared when they are renewed).
    warned: BTreeMap<TrustDomain, Timestamp>,
}

fn identity(path: &std::path::Path) -> Option<FileId> {
    let m = fs::metadata(path).ok()?;
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    Some((m.dev(), m.ino(), m.size(), mtime))
}

fn read(path: &std::path::Path, domain: &TrustDomain) -> Entry {
    // Identity first: a file replaced after it was read is read again on the next look.
    let file = identity(path);
    Entry {
        source: Source::File {
            path: path.to_owned(),
            file,
        },
        loaded: Bundle::read(path, domain).map_err(|e| e.to_string()),
    }
}

/// The bundle the Workload API last delivered for `domain`. Version first, as with files: a
/// set that arrives meanwhile is read on the next look.
fn delivered(domain: &TrustDomain) -> Entry {
    let Some(feed) = workload_api::installed() else {
        return Entry {
            source: Source::WorkloadApi { seen: None },
            loaded: Err(
                "it comes from a Workload API, and none is given here: the daemon's \
                 --workload-api or SPIFFE_ENDPOINT_SOCKET"
                    .into(),
            ),
        };
    };
    let seen = Some(feed.version());
    let loaded = match feed.lookup(domain) {
        Lookup::Found(bundle) => bundle,
        Lookup::Missing => Err(format!(
            "the Workload API {} no longer delivers a bundle for {domain}",
            feed.endpoint
        )),
        Lookup::Pending(error) => Err(format!(
            "no bundle from the Workload API {} yet{}",
            feed.endpoint,
            error.map_or_else(String::new, |e| format!(" ({e})"))
        )),
    };
    Entry {
        source: Source::WorkloadApi { seen },
        loaded,
    }
}

/// A domain whose bundle comes from `endpoint`: the bootstrap file's bundle until a fetch
/// succeeds.
fn fetched(
    bootstrap: Option<&std::path::Path>,
    domain: &TrustDomain,
    endpoint: &BundleEndpoint,
) -> Entry {
    let loaded = match bootstrap {
        Some(path) => Bundle::read(path, domain).map_err(|e| e.to_string()),
        None => Err(format!("not fetched yet from {}", endpoint.url)),
    };
    Entry {
        source: Source::Endpoint {
            bootstrap: bootstrap.map(std::path::Path::to_owned),
            fetching: Box::new(Fetched {
                config: endpoint.clone(),
                poller: None,
                seen: 0,
                report: Report::default(),
            }),
        },
        loaded,
    }
}

impl TrustState {
    /// Reads every bundle `policy` names. With `strict`, a bundle that cannot be read or fails
    /// the checks is an error at the spot in `file` that names it (an apply is refused);
    /// otherwise it is kept as unusable and its edges are suspended (a daemon starting or a
    /// file changing underneath must not stop enforcement).
    pub fn load(policy: &Policy, file: &str, strict: bool) -> Result<Self, Vec<String>> {
        let mut entries = BTreeMap::new();
        let mut errors = Vec::new();
        for domain in &policy.domains {
            if let Some(from) = &domain.bundle_from {
                match from.source {
                    BundleSource::WorkloadApi => {
                        entries.insert(domain.name.clone(), delivered(&domain.name));
                    }
                }
                continue;
            }
            let entry = match (&domain.bundle, &domain.bundle_endpoint) {
                (_, Some(endpoint)) => fetched(
                    domain.bundle.as_ref().map(|b| b.path.as_path()),
                    &domain.name,
                    endpoint,
                ),
                (Some(bundle), None) => read(&bundle.path, &domain.name),
                (None, None) => continue,
            };
            if strict
                && let Some(bundle) = &domain.bundle
                && let Err(why) = &entry.loaded
            {
                errors.push(format!(
                    "{file}:{}:{}: trust bundle of {}: {why}",
                    bundle.line, bundle.column, domain.name
                ));
            }
            entries.insert(domain.name.clone(), entry);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            entries,
            shared: trust::Bundles::default(),
            warned: BTreeMap::new(),
        })
    }

    /// Takes over `next`'s bundles, keeping the shared map verifiers hold, and publishes them.
    /// An endpoint both name keeps its task and the bundle it fetched; a new one starts
    /// fetching on `runtime`, and the tasks of endpoints no longer named stop.
    pub fn adopt(&mut self, mut next: Self) {
        for (domain, entry) in &mut next.entries {
            let Source::Endpoint { fetching, .. } = &mut entry.source else {
                continue;
            };
            let running = self
                .entries
                .get(domain)
                .and_then(|e| match &e.source {
                    Source::Endpoint { fetching, .. } => Some(fetching),
                    _ => None,
                })
                .filter(|f| {
                    f.poller
                        .as_ref()
                        .is_some_and(|p| p.fetches(domain, &fetching.config))
                });
            match running {
                Some(old) => {
                    fetching.poller.clone_from(&old.poller);
                    fetching.seen = old.seen;
                    fetching.report = old.report.clone();
                    if let Some(bundle) = &old.report.bundle {
                        entry.loaded = Ok(bundle.clone());
                    }
                }
                None => match crate::runtime::handle() {
                    Ok(runtime) => {
                        fetching.poller = Some(Poller::start(
                            &runtime,
                            domain,
                            &fetching.config,
                            entry.loaded.as_ref().ok().cloned(),
                        ));
                    }
                    Err(err) => entry.loaded = Err(format!("cannot fetch it: {err:#}")),
                },
            }
        }
        self.entries = next.entries;
        self.publish();
    }

    /// The bundles that passed their checks, by domain, kept current for TLS verifiers
    /// (whether one is usable at the moment is judged at each verification).
    pub fn shared(&self) -> trust::Bundles {
        Arc::clone(&self.shared)
    }

    fn publish(&self) {
        let usable = self
            .entries
            .iter()
            .filter_map(|(d, e)| e.loaded.as_ref().ok().map(|b| (d.clone(), b.clone())))
            .collect();
        *self
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = usable;
    }

    /// The bundle files, as last read, to be read again without the daemon's lock.
    pub fn files(&self) -> Files {
        Files(
            self.entries
                .iter()
                .filter_map(|(domain, entry)| match &entry.source {
                    Source::File { path, file } => Some((domain.clone(), path.clone(), *file)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Takes in the bundle files read again (`files`, then `Files::reread`) and the sets and
    /// fetches that arrived since the last look; returns a line for each bundle whose content
    /// or readability changed, at the level to log it. A file read for an entry that has
    /// changed since (a policy applied meanwhile) is dropped: the next look reads it again.
    pub fn refresh(&mut self, mut files: FilesRead) -> Vec<(log::Level, String)> {
        let mut changes = Vec::new();
        for (domain, entry) in &mut self.entries {
            if let Source::Endpoint { fetching, .. } = &mut entry.source {
                if let Some(change) = take_report(domain, fetching, &mut entry.loaded) {
                    changes.push(change);
                }
                continue;
            }
            let next = match &entry.source {
                Source::File { path, file } => match files.0.remove(domain) {
                    Some((seen, next))
                        if seen == *file
                            && matches!(&next.source, Source::File { path: at, .. } if at == path) =>
                    {
                        next
                    }
                    _ => continue,
                },
                Source::WorkloadApi { seen } => {
                    if workload_api::installed().map(|f| f.version()) == *seen {
                        continue;
                    }
                    delivered(domain)
                }
                Source::Endpoint { .. } => continue,
            };
            if next.loaded != entry.loaded {
                changes.push(match &next.loaded {
                    Ok(b) => match b.expires() {
                        Some(expires) => (
                            log::Level::Info,
                            format!(
                                "trust bundle of {domain} ({}) read: {} authorit(ies), expires \
                                 {expires}",
                                next.source.describe(),
                                b.authorities.len(),
                            ),
                        ),
                        None => (
                            log::Level::Warn,
                            format!(
                                "trust bundle of {domain} ({}) read: it {}; the edges that \
                                 require it are suspended",
                                next.source.describe(),
                                bundle::EMPTY
                            ),
                        ),
                    },
                    Err(why) => (
                        log::Level::Warn,
                        format!("trust bundle of {domain} is unusable: {why}"),
                    ),
                });
            }
            *entry = next;
        }
        if !changes.is_empty() {
            self.publish();
        }
        changes
    }

    /// Every bundle-endpoint fetch's outcome, as `fetches` and `failures` count them.
    pub fn fetch_counts(&self) -> Vec<(TrustDomain, Report)> {
        self.entries
            .iter()
            .filter_map(|(d, e)| match &e.source {
                Source::Endpoint { fetching, .. } => Some((d.clone(), fetching.report.clone())),
                _ => None,
            })
            .collect()
    }

    /// A warning for each usable bundle that has come within `warn_before` of its expiry since
    /// the last call: logged once per expiry, so the daemon's log warns before it lapses.
    pub fn expiry_warnings(&mut self, now: Timestamp, warn_before: SignedDuration) -> Vec<String> {
        let mut lines = Vec::new();
        for (domain, entry) in &self.entries {
            let Ok(bundle) = &entry.loaded else {
                continue;
            };
            let Ok(expires) = bundle.usable_at(now) else {
                continue;
            };
            if expires.duration_since(now) > warn_before
                || self.warned.get(domain) == Some(&expires)
            {
                continue;
            }
            self.warned.insert(domain.clone(), expires);
            lines.push(format!(
                "the trust bundle of {domain} ({}) expires at {expires}; replace it \
                 before then, or the edges that require it are suspended",
                entry.source.describe()
            ));
        }
        lines
    }

    /// What `edge` may do at `now` as far as bundles go.
    pub fn gate(&self, edge: &Edge, now: Timestamp) -> Trust {
        if !edge.require_bundles {
            return Trust::NotRequired;
        }
        let mut until = Timestamp::MAX;
        for domain in [&edge.from, &edge.to] {
            let usable = match self.entries.get(domain).map(|e| &e.loaded) {
                None => Err(format!("{domain} names no trust bundle")),
                Some(Err(why)) => Err(format!("the trust bundle of {domain} is unusable: {why}")),
                Some(Ok(bundle)) => bundle
                    .usable_at(now)
                    .map_err(|why| format!("the trust bundle of {domain}: {why}")),
            };
            match usable {
                Ok(expires) => until = until.min(expires),
                Err(why) => return Trust::Suspended(why),
            }
        }
        Trust::Until(until)
    }

    /// Every bundle for `status`; `warn_before` is how early a coming expiry is flagged.
    pub fn views(&self, now: Timestamp, warn_before: SignedDuration) -> Vec<BundleStatus> {
        self.entries
            .iter()
            .map(|(domain, entry)| {
                let (state, error, expires, authorities) = match &entry.loaded {
                    Err(why) => ("unusable", Some(why.clone()), None, Vec::new()),
                    Ok(bundle) => {
                        let state = match bundle.usable_at(now) {
                            Ok(_) => ("valid", None),
                            Err(why) if bundle.is_empty() => ("empty", Some(why.to_string())),
                            Err(why) if bundle.authorities.iter().any(|a| now < a.not_before) => {
                                ("not-yet-valid", Some(why.to_string()))
                            }
                            Err(why) => ("expired", Some(why.to_string())),
                        };
                        let authorities = bundle
                            .authorities
                            .iter()
                            .map(|a| AuthorityStatus {
                                sha256: a.sha256.clone(),
                                subject: a.subject.clone(),
                                not_after: a.not_after,
                            })
                            .collect();
                        (state.0, state.1, bundle.expires(), authorities)
                    }
                };
                let warning = expires
                    .filter(|&t| state == "valid" && t.duration_since(now) <= warn_before)
                    .map(|t| {
                        format!(
                            "expires at {t}, in {:#}: replace it before then, or the edges that \
                             require it are suspended",
                            t.duration_since(now)
                                .round(jiff::Unit::Second)
                                .unwrap_or_default()
                        )
                    });
                BundleStatus {
                    domain: domain.to_string(),
                    path: entry.source.describe(),
                    source: entry.source.kind().into(),
                    endpoint: match &entry.source {
                        Source::Endpoint {
                            bootstrap,
                            fetching,
                        } => Some(endpoint_status(fetching, bootstrap.as_deref())),
                        _ => None,
                    },
                    state: state.into(),
                    error,
                    expires,
                    warning,
                    authorities,
                }
            })
            .collect()
    }

    /// Lines for bundles that are readable and well-formed but not usable at `now`: a policy
    /// naming them applies, and the edges that require them stay suspended.
    pub fn unusable_now(&self, now: Timestamp) -> Vec<(TrustDomain, String)> {
        self.entries
            .iter()
            .filter_map(|(d, e)| {
                let why = match &e.loaded {
                    Ok(b) => b.usable_at(now).err()?.to_string(),
                    Err(why) => why.clone(),
                };
                Some((d.clone(), why))
            })
            .collect()
    }
}

/// Takes in the endpoint task's newest outcome, if `fetching` has not seen it: the bundle in
/// force becomes the one fetched (a failure keeps the last good one), and the outcome is
/// a line for the log.
fn take_report(
    domain: &TrustDomain,
    fetching: &mut Fetched,
    loaded: &mut Result<Bundle, String>,
) -> Option<(log::Level, String)> {
    let report = fetching.poller.as_ref()?.report();
    if report.serial == fetching.seen {
        return None;
    }
    fetching.seen = report.serial;
    let url = &fetching.config.url;
    let next = report
        .next
        .map_or_else(String::new, |t| format!("; next fetch at {t}"));
    let line = match (&report.error, &report.bundle) {
        (None, Some(bundle)) => {
            let changed = loaded.as_ref().ok() != Some(bundle);
            *loaded = Ok(bundle.clone());
            let what = match bundle.expires() {
                Some(expires) => format!(
                    "{} authorit(ies), expires {expires}",
                    bundle.authorities.len()
                ),
                None => format!(
                    "it {}; the edges that require it are suspended",
                    bundle::EMPTY
                ),
            };
            let level = if bundle.is_empty() {
                log::Level::Warn
            } else {
                log::Level::Info
            };
            let verb = if changed {
                "fetched, changed"
            } else {
                "fetched, unchanged"
            };
            (
                level,
                format!("trust bundle of {domain} {verb} from {url}: {what}{next}"),
            )
        }
        (error, _) => {
            let why = error.as_deref().unwrap_or("no bundle");
            let kept = match loaded {
                Ok(b) => match b.expires() {
                    Some(t) => format!("the bundle in force stays, until it expires at {t}"),
                    None => "the bundle in force stays".to_owned(),
                },
                Err(_) => {
                    *loaded = Err(format!("no bundle fetched yet from {url}: {why}"));
                    "it has no bundle yet; the edges that require it are suspended".to_owned()
                }
            };
            (
                log::Level::Warn,
                format!(
                    "fetching the trust bundle of {domain} from {url} failed: {why}; {kept}{next}"
                ),
            )
        }
    };
    fetching.report = report;
    Some(line)
}

fn endpoint_status(fetching: &Fetched, bootstrap: Option<&std::path::Path>) -> EndpointStatus {
    let r = &fetching.report;
    EndpointStatus {
        url: fetching.config.url.clone(),
        profile: fetching.config.profile.name().into(),
        endpoint_id: match &fetching.config.profile {
            EndpointProfile::HttpsSpiffe { endpoint_id } => Some(endpoint_id.to_string()),
            EndpointProfile::HttpsWeb => None,
        },
        bootstrap: bootstrap.map(|p| p.display().to_string()),
        last_attempt: r.attempted,
        last_success: r.succeeded,
        last_error: r.error.clone(),
        next_fetch: r.next,
        refresh_seconds: r.refresh.as_secs(),
        fetches: r.fetches,
        failures: r.failures,
        changes: r.changes,
    }
}

#[cfg(test)]
mod tests {
    use enforcer_tests::pki::{Issued, Spec};

    use super::*;

    fn policy(dir: &std::path::Path, require: bool) -> Policy {
        let text = format!(
            "
version: 1
domains:
  - {{name: a.org, bundle: {dir}/a.pem}}
  - {{name: b.org, bundle: {dir}/b.pem}}
  - {{name: c.org}}
federation:
  - {{id: ab, from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r, require_bundles: {require}}}
  - {{id: ac, from: a.org, to: c.org, protocol: tcp, ports: [1], owner: o, reason: r}}
",
            dir = dir.display()
        );
        enforcer_policy::parse("p.yaml", &text).expect("valid")
    }

    #[test]
    fn gates_follow_both_ends_bundles() {
        let dir = std::env::temp_dir().join(format!("enforcer-gates-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let a = Spec::ca("a.org").valid(-60, 3600);
        let b = Spec::ca("b.org").valid(-60, 7200);
        fs::write(dir.join("a.pem"), Issued::self_signed(&a).pem).expect("write");
        fs::write(dir.join("b.pem"), Issued::self_signed(&b).pem).expect("write");
        let p = policy(&dir, true);
        let mut trust = TrustState::load(&p, "p.yaml", true).expect("bundles load");
        let now = Timestamp::now();
        let until = Timestamp::from_second(a.not_after.unix_timestamp()).expect("time");
        assert_eq!(trust.gate(&p.federation[0], now), Trust::Until(until));
        assert_eq!(trust.gate(&p.federation[1], now), Trust::NotRequired);
        assert_eq!(
            trust.gate(&policy(&dir, false).federation[0], now),
            Trust::NotRequired
        );
        let later = until + SignedDuration::from_secs(1);
        assert!(matches!(
            trust.gate(&p.federation[0], later),
            Trust::Suspended(why) if why.contains("a.org") && why.contains("expired")
        ));

        fs::remove_file(dir.join("b.pem")).expect("remove");
        assert_eq!(trust.refresh(trust.files().reread()).len(), 1);
        assert!(matches!(
            trust.gate(&p.federation[0], now),
            Trust::Suspended(why) if why.contains("trust bundle of b.org is unusable")
        ));
        assert!(
            trust.refresh(trust.files().reread()).is_empty(),
            "an unchanged state is not reported again"
        );
        let warnings = trust.expiry_warnings(now, SignedDuration::from_hours(2));
        assert_eq!(
            warnings.len(),
            1,
            "only a.org lapses within 2 h: {warnings:?}"
        );
        assert!(
            trust
                .expiry_warnings(now, SignedDuration::from_hours(2))
                .is_empty()
        );
        let view = trust.views(now, SignedDuration::from_hours(2));
        assert_eq!(view[0].state, "valid");
        assert!(
            view[0].warning.is_some(),
            "a.org lapses within the 2 h warning period"
        );
        assert_eq!(view[1].state, "unusable");

        let missing = TrustState::load(&p, "p.yaml", true).expect_err("b.pem is gone");
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("p.yaml:5:"), "{missing:?}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    /// A bundle file replaced by a FIFO (by whoever may write where it is kept) is refused
    /// without being opened, so the look never waits, and reported once, not at every look.
    #[test]
    fn a_bundle_replaced_by_a_fifo_is_unusable_and_reported_once() {
        let dir = std::env::temp_dir().join(format!("enforcer-fifo-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        fs::write(
            dir.join("a.pem"),
            Issued::self_signed(&Spec::ca("a.org")).pem,
        )
        .expect("a");
        fs::write(
            dir.join("b.pem"),
            Issued::self_signed(&Spec::ca("b.org")).pem,
        )
        .expect("b");
        let p = policy(&dir, true);
        let mut trust = TrustState::load(&p, "p.yaml", true).expect("bundles load");
        fs::remove_file(dir.join("b.pem")).expect("remove");
        let fifo = std::ffi::CString::new(dir.join("b.pem").into_os_string().into_encoded_bytes())
            .expect("no NUL");
        // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let changes = trust.refresh(trust.files().reread());
        let [(level, line)] = &changes[..] else {
            panic!("one change: {changes:?}");
        };
        assert_eq!(*level, log::Level::Warn);
        assert!(
            line.contains("b.pem: cannot read it: it is a FIFO, not a regular file"),
            "{line}"
        );
        assert!(matches!(
            trust.gate(&p.federation[0], Timestamp::now()),
            Trust::Suspended(why) if why.contains("a FIFO")
        ));
        assert!(trust.refresh(trust.files().reread()).is_empty());
        fs::remove_dir_all(dir).expect("cleanup");
    }

    /// The agent's sets, as the client takes them: each is complete, so a domain left out of
    /// one has lost its bundle.
    #[test]
    fn a_workload_api_bundle_follows_the_agents_latest_set() {
        let p = enforcer_policy::parse(
            "p.yaml",
            "
version: 1
domains:
  - {name: a.org, bundle_from: workload_api}
  - {name: b.org, bundle_from: workload_api}
federation:
  - {id: ab, from: a.org, to: b.org, protocol: tcp, ports: [1], owner: o, reason: r, require_bundles: true}
",
        )
        .expect("valid");
        let client = workload_api::Client::install("unix:/nonexistent/agent.sock");
        let set = |cas: &[(&str, &Issued)]| {
            let mut set = spiffe::X509BundleSet::new();
            for (domain, ca) in cas {
                let domain = spiffe::TrustDomain::new(domain).expect("a name");
                set.add_bundle(spiffe::X509Bundle::parse_from_der(domain, &ca.der).expect("DER"));
            }
            set
        };
        let edge = &p.federation[0];
        let now = Timestamp::now();
        // Nothing from the agent yet: an apply is not refused, the edge waits.
        let mut trust = TrustState::load(&p, "p.yaml", true).expect("loads");
        assert!(matches!(
            trust.gate(edge, now),
            Trust::Suspended(why) if why.contains("no bundle from the Workload API")
        ));
        let (a, b) = (
            Issued::self_signed(&Spec::ca("a.org")),
            Issued::self_signed(&Spec::ca("b.org")),
        );
        client.take_bundles(&set(&[("a.org", &a), ("b.org", &b)]));
        assert_eq!(
            trust.refresh(trust.files().reread()).len(),
            2,
            "both bundles arrived"
        );
        assert!(matches!(trust.gate(edge, now), Trust::Until(_)));
        assert!(
            trust.refresh(trust.files().reread()).is_empty(),
            "nothing new"
        );

        client.take_bundles(&set(&[("a.org", &a)]));
        let changes = trust.refresh(trust.files().reread());
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(matches!(
            trust.gate(edge, now),
            Trust::Suspended(why) if why.contains("no longer delivers a bundle for b.org")
        ));
        let views = trust.views(now, SignedDuration::from_hours(1));
        assert_eq!(views[1].source, "workload_api");
        assert_eq!(views[1].state, "unusable");
        assert_eq!(views[1].path, "Workload API unix:/nonexistent/agent.sock");

        // A bundle that fails our checks is unusable however it was delivered.
        let mut not_ca = Spec::ca("b.org");
        not_ca.ca = Some(false);
        client.take_bundles(&set(&[
            ("a.org", &a),
            ("b.org", &Issued::self_signed(&not_ca)),
        ]));
        trust.refresh(trust.files().reread());
        assert!(matches!(
            trust.gate(edge, now),
            Trust::Suspended(why) if why.contains("not a CA")
        ));
        client.take_bundles(&set(&[("a.org", &a), ("b.org", &b)]));
        trust.refresh(trust.files().reread());
        assert!(matches!(trust.gate(edge, now), Trust::Until(_)));
    }
}
