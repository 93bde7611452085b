//! The plan as a person reads it: changes grouped by kind, then the connections it would
//! end, then a one-line summary.

use std::fmt::{self, Display};

use crate::api::plan::{EdgeSpec, FieldChange, Plan};

impl Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for {} against generation {} (nothing applied)",
            self.file, self.generation
        )?;
        if !self.defaults.is_empty() {
            writeln!(f, "defaults:")?;
            for c in &self.defaults {
                writeln!(f, "  ~ {}", field_change(c))?;
            }
        }
        let d = &self.domains;
        if !(d.added.is_empty() && d.removed.is_empty() && d.altered.is_empty()) {
            writeln!(f, "domains:")?;
            for (sign, domain) in d
                .added
                .iter()
                .map(|x| ('+', x))
                .chain(d.removed.iter().map(|x| ('-', x)))
            {
                writeln!(
                    f,
                    "  {sign} {} ({}): cgroups {}; endpoints {}",
                    domain.name,
                    domain.mode,
                    list(&domain.cgroups),
                    list(&domain.endpoints)
                )?;
            }
            for change in &d.altered {
                let mut parts = Vec::new();
                if let Some(mode) = &change.mode {
                    parts.push(format!("mode {} -> {}", mode.before, mode.after));
                }
                if let Some(bundle) = &change.bundle {
                    parts.push(format!("bundle {} -> {}", bundle.before, bundle.after));
                }
                for (what, set) in [("cgroup", &change.cgroups), ("endpoint", &change.endpoints)] {
                    parts.extend(set.added.iter().map(|x| format!("+ {what} {x}")));
                    parts.extend(set.removed.iter().map(|x| format!("- {what} {x}")));
                }
                writeln!(f, "  ~ {}: {}", change.name, parts.join("; "))?;
            }
        }
        let e = &self.edges;
        if !(e.added.is_empty() && e.removed.is_empty() && e.altered.is_empty()) {
            writeln!(f, "edges:")?;
            for (sign, edge) in e
                .added
                .iter()
                .map(|x| ('+', x))
                .chain(e.removed.iter().map(|x| ('-', x)))
            {
                writeln!(f, "  {sign} {}", edge_line(edge))?;
            }
            for change in &e.altered {
                let parts: Vec<String> = change.changes.iter().map(field_change).collect();
                writeln!(f, "  ~ {}: {}", change.id, parts.join("; "))?;
            }
        }
        if !self.grants.is_empty() {
            writeln!(f, "grants (not in the file; applying keeps them):")?;
            for grant in &self.grants {
                writeln!(f, "  = {}", edge_line(grant))?;
            }
        }
        if !self.connections.is_empty() {
            writeln!(f, "live connections applying would end ({}):", self.ended())?;
            for c in &self.connections {
                let now = match &c.edge {
                    Some(id) => format!("allowed now by edge {id}"),
                    None => format!("now {}", c.reason_now),
                };
                writeln!(
                    f,
                    "  {} {} <-> {}: {} -> {} port {}, {now}; refused: {}",
                    c.protocol, c.local, c.remote, c.from, c.to, c.port, c.reason
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        match (self.changes, self.ended()) {
            (0, 0) => writeln!(f, "no changes"),
            (0, ended) => writeln!(
                f,
                "no changes; applying would end {ended} live connection(s)"
            ),
            (changes, ended) => writeln!(
                f,
                "{changes} change(s); applying would end {ended} live connection(s)"
            ),
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn field_change(c: &FieldChange) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    format!("{} {} -> {}", c.field, show(&c.before), show(&c.after))
}

fn edge_line(e: &EdgeSpec) -> String {
    let mut line = format!(
        "{} {} -> {} {} {} (owner {}: {})",
        e.edge.id,
        e.edge.from,
        e.edge.to,
        e.edge.protocol,
        e.edge.ports_text(),
        e.edge.owner,
        e.edge.reason
    );
    if let Some(start) = e.edge.not_before {
        line.push_str(&format!(", from {start}"));
    }
    if let Some(end) = e.expires {
        line.push_str(&format!(", until {end}"));
    }
    line
}
