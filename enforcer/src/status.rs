//! What `enforcer status` shows, built by the daemon from its live state and printed by the
//! CLI as text or JSON (`-o json`, a stable schema scripts may rely on).

use std::fmt::{self, Display};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub daemon_pid: u32,
    pub generation: u64,
    pub policy_file: String,
    pub pin_dir: String,
    pub cgroup_mount: String,
    pub cgroup_root: String,
    pub defaults: Defaults,
    pub domains: Vec<DomainStatus>,
    pub edges: Vec<EdgeStatus>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapFill>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Defaults {
    pub unlabeled: String,
    pub external: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainStatus {
    pub name: String,
    pub id: u32,
    pub bindings: Vec<BindingStatus>,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingStatus {
    pub cgroup: String,
    /// `None` when the cgroup does not exist.
    pub cgroup_id: Option<u64>,
    /// "bound", "missing" (no such cgroup) or "outside-root" (not under --cgroup-root, so
    /// never enforced by this daemon).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub ports: Vec<String>,
    pub owner: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub program: String,
    pub attach_point: String,
    pub link_pin: String,
    pub link_id: u32,
    pub prog_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
}

impl Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation:   {}", self.generation)?;
        writeln!(f, "policy:       {}", self.policy_file)?;
        writeln!(f, "daemon pid:   {}", self.daemon_pid)?;
        writeln!(f, "pin dir:      {}", self.pin_dir)?;
        writeln!(
            f,
            "cgroup root:  {} (cgroup2 at {})",
            self.cgroup_root, self.cgroup_mount
        )?;
        writeln!(
            f,
            "defaults:     unlabeled {}, external {}",
            self.defaults.unlabeled, self.defaults.external
        )?;
        writeln!(f, "domains:")?;
        for domain in &self.domains {
            writeln!(f, "  {} (id {})", domain.name, domain.id)?;
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
        writeln!(f, "edges:")?;
        if self.edges.is_empty() {
            writeln!(f, "  (none: every cross-domain flow is refused)")?;
        }
        for e in &self.edges {
            writeln!(
                f,
                "  {} -> {} {} {} (owner {}: {})",
                e.from,
                e.to,
                e.protocol,
                e.ports.join(","),
                e.owner,
                e.reason
            )?;
        }
        writeln!(f, "programs:")?;
        for p in &self.programs {
            writeln!(
                f,
                "  {:<14} {:<20} link {} (id {}, prog id {})",
                p.program, p.attach_point, p.link_pin, p.link_id, p.prog_id
            )?;
        }
        write!(f, "maps:        ")?;
        for m in &self.maps {
            write!(f, " {} {}", m.map, m.entries)?;
        }
        writeln!(f)
    }
}
