//! `enforcer status` as a person reads it (`-o json` prints the wire type as it is).

use std::fmt::{self, Display};

use super::terminal::line;
use crate::api::{
    edge::{EdgeView, Source},
    status::{EndpointStatus, MapMemory, Status},
};

impl Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation:   {}", self.generation)?;
        writeln!(f, "policy:       {}", self.policy_file)?;
        if let Some(source) = &self.policy_source {
            match &source.etcd {
                None => {
                    writeln!(
                        f,
                        "--policy:     {} ({} at start: {})",
                        source.file, source.at_start, source.reason
                    )?;
                    if let Some(error) = &source.last_reload_error {
                        writeln!(f, "  last reload refused: {}", line(error))?;
                    }
                }
                Some(etcd) => {
                    writeln!(
                        f,
                        "source:       etcd {} prefix {} as node {}",
                        etcd.endpoints, etcd.prefix, etcd.node
                    )?;
                    let revision = source
                        .revision
                        .map_or_else(|| "none".to_owned(), |r| r.to_string());
                    let synced = source
                        .last_sync
                        .map_or_else(|| "never".to_owned(), |t| t.to_string());
                    writeln!(
                        f,
                        "  revision {revision}, last sync {synced}{}",
                        if source.stale { ", STALE" } else { "" }
                    )?;
                    if let Some(error) = &source.last_error {
                        writeln!(f, "  last error: {}", line(error))?;
                    }
                    if let Some(a) = &etcd.addresses {
                        writeln!(
                            f,
                            "  addresses: {} of this node's pods published; {} loaded from {} \
                             other node(s) ({} conflicting, {} of domains not in the policy)",
                            a.published, a.loaded, a.peer_nodes, a.conflicts, a.unknown_domain
                        )?;
                        if let Some(error) = &a.last_error {
                            writeln!(f, "  addresses error: {}", line(error))?;
                        }
                    }
                }
            }
        }
        writeln!(f, "daemon pid:   {}", self.daemon_pid)?;
        if let Some(build) = &self.build {
            writeln!(
                f,
                "daemon build: {} (commit {}, built {}, ebpf sha256 {})",
                build.version, build.commit, build.built, build.ebpf_sha256
            )?;
        }
        writeln!(f, "pin dir:      {}", self.pin_dir)?;
        writeln!(
            f,
            "cgroup root:  {} (cgroup2 at {})",
            self.cgroup_root, self.cgroup_mount
        )?;
        writeln!(
            f,
            "defaults:     unlabeled {}, external {}, mode {}",
            self.defaults.unlabeled, self.defaults.external, self.mode
        )?;
        writeln!(f, "domains:")?;
        for domain in &self.domains {
            writeln!(f, "  {} (id {}, {})", domain.name, domain.id, domain.mode)?;
            for b in &domain.bindings {
                match b.cgroup_id {
                    Some(id) => writeln!(f, "    cgroup   {} (id {id}, {})", b.cgroup, b.state)?,
                    None => writeln!(f, "    cgroup   {} ({})", b.cgroup, b.state)?,
                }
            }
            for e in &domain.endpoints {
                writeln!(f, "    endpoint {e}")?;
            }
        }
        let a = &self.attestation;
        match (&a.socket, &a.warning) {
            (_, Some(warning)) => writeln!(f, "attestation:  {}", line(warning))?,
            (Some(socket), None) => writeln!(f, "attestation:  {socket}")?,
            (None, None) => writeln!(f, "attestation:  off")?,
        }
        for b in &a.bindings {
            writeln!(
                f,
                "  {} (id {}) -> {} as {} until {} (pid {})",
                b.cgroup, b.cgroup_id, b.domain, b.spiffe_id, b.expires, b.pid
            )?;
        }
        if let Some(w) = &self.workload_api {
            let state = if w.connected {
                "connected"
            } else {
                "not connected"
            };
            let last = w
                .last_update
                .map_or_else(String::new, |t| format!(", last at {t}"));
            writeln!(
                f,
                "workload api: {} ({state}, {} update(s){last})",
                w.endpoint, w.updates
            )?;
            if let Some(error) = &w.error {
                writeln!(f, "  error: {}", line(error))?;
            }
            if let Some(svid) = &w.svid {
                let until = w
                    .svid_expires
                    .map_or_else(String::new, |t| format!(" until {t}"));
                writeln!(f, "  svid: {svid}{until}")?;
            }
            writeln!(f, "  bundles for: {}", w.domains.join(", "))?;
        }
        if !self.bundles.is_empty() {
            writeln!(f, "bundles:")?;
        }
        for b in &self.bundles {
            let expires = b
                .expires
                .map_or_else(String::new, |t| format!(", expires {t}"));
            writeln!(f, "  {} {} ({}{expires})", b.domain, b.path, b.state)?;
            if let Some(error) = &b.error {
                writeln!(f, "    error: {}", line(error))?;
            }
            if let Some(warning) = &b.warning {
                writeln!(f, "    warning: {}", line(warning))?;
            }
            if let Some(e) = &b.endpoint {
                write_endpoint(f, e)?;
            }
            for a in &b.authorities {
                writeln!(
                    f,
                    "    ca sha256:{} {} (until {})",
                    a.sha256,
                    line(&a.subject),
                    a.not_after
                )?;
            }
        }
        writeln!(f, "edges:")?;
        if self.edges.is_empty() {
            writeln!(f, "  (none: every cross-domain flow is refused)")?;
        }
        for e in &self.edges {
            write_edge(f, e)?;
        }
        writeln!(
            f,
            "audit:        {} would-deny, {} denied",
            self.audit.would_deny, self.audit.denied
        )?;
        for p in &self.audit.pairs {
            writeln!(
                f,
                "  {} -> {}: {} would-deny, {} denied",
                p.from, p.to, p.would_deny, p.denied
            )?;
        }
        writeln!(
            f,
            "events:       {} ({} lost: ring buffer full)",
            self.events.log, self.events.lost
        )?;
        writeln!(f, "programs:")?;
        for p in &self.programs {
            writeln!(
                f,
                "  {:<14} {:<20} link {} (id {}, prog id {})",
                p.program, p.attach_point, p.link_pin, p.link_id, p.prog_id
            )?;
        }
        for m in &self.upgraded_maps {
            writeln!(
                f,
                "  upgraded {}: {} ({} entries carried over)",
                m.map, m.change, m.entries
            )?;
        }
        writeln!(f, "features:")?;
        for feature in &self.features {
            let state = if feature.enabled { "on" } else { "OFF" };
            writeln!(f, "  {:<16} {state}: {}", feature.name, feature.detail)?;
        }
        write!(f, "maps:        ")?;
        for m in &self.maps {
            write!(f, " {} {}", m.map, m.entries)?;
        }
        writeln!(f)?;
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let total: u64 = self.memory.iter().map(|m| m.bytes).sum();
        let mut largest: Vec<&MapMemory> = self.memory.iter().collect();
        largest.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        write!(
            f,
            "kernel memory: {:.1} MB in {} maps;",
            mb(total),
            self.memory.len()
        )?;
        for m in largest.iter().take(4) {
            write!(f, " {} {:.1} MB", m.map, mb(m.bytes))?;
        }
        writeln!(f)
    }
}

/// One edge on one line, then its deadline and use; shared by `status` and `edge list`.
pub fn write_edge(f: &mut impl fmt::Write, e: &EdgeView) -> fmt::Result {
    let source = match e.source {
        Source::File => "file",
        Source::Grant => "grant",
    };
    writeln!(
        f,
        "  {} [{source}, {}{}] {} -> {} {} {} (owner {}: {})",
        e.edge.id,
        e.state,
        if e.stale { ", stale" } else { "" },
        e.edge.from,
        e.edge.to,
        e.edge.protocol,
        e.edge.ports_text(),
        e.edge.owner,
        e.edge.reason
    )?;
    if let Some(trust) = &e.trust {
        writeln!(f, "      {trust}")?;
    }
    let expires = e
        .expires
        .map_or_else(|| "never".to_owned(), |t| t.to_string());
    let last = e
        .last_used
        .map_or_else(|| "never".to_owned(), |t| t.to_string());
    writeln!(
        f,
        "      created {}, expires {expires}, {} connection(s), last used {last}",
        e.created, e.connections
    )
}

/// A bundle endpoint: what it is, how fetching goes and when it tries next.
fn write_endpoint(f: &mut fmt::Formatter<'_>, e: &EndpointStatus) -> fmt::Result {
    let id = e
        .endpoint_id
        .as_ref()
        .map_or_else(String::new, |id| format!(" as {id}"));
    writeln!(f, "    endpoint {} {}{id}", e.profile, e.url)?;
    if let Some(bootstrap) = &e.bootstrap {
        writeln!(f, "    bootstrap {bootstrap}")?;
    }
    let when = |t: Option<jiff::Timestamp>| t.map_or_else(|| "never".to_owned(), |t| t.to_string());
    writeln!(
        f,
        "    fetches {} ({} failed, {} changed), last success {}, next {}, every {}s",
        e.fetches,
        e.failures,
        e.changes,
        when(e.last_success),
        when(e.next_fetch),
        e.refresh_seconds
    )?;
    if let Some(error) = &e.last_error {
        writeln!(f, "    last fetch failed: {}", line(error))?;
    }
    Ok(())
}
