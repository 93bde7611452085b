//! The text form of an explanation: a few indented lines, in the order the programs decide.

use std::fmt;

use crate::api::why::{Decision, EndKind, EndView, Explanation, RangeView};

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.source;
        let from = match s.pid {
            Some(pid) => format!("process {pid} (cgroup {})", s.cgroup),
            None => format!("cgroup {}", s.cgroup),
        };
        let netns = if s.host_netns {
            String::new()
        } else {
            format!(", in network namespace {}", s.netns)
        };
        writeln!(
            f,
            "{} {} from {from}{netns}; policy generation {}",
            self.protocol.name(),
            self.destination.address,
            self.generation
        )?;

        writeln!(f, "source: {}", end_text(&s.end))?;
        match s.bindings.split_last() {
            Some((nearest, outer)) => {
                writeln!(
                    f,
                    "  nearest bound ancestor: {} (cgroup id {}, level {})",
                    nearest.cgroup, nearest.cgroup_id, nearest.level
                )?;
                for b in outer.iter().rev() {
                    writeln!(
                        f,
                        "  overrides the binding of {} to {} (level {})",
                        b.cgroup, b.domain, b.level
                    )?;
                }
            }
            None => writeln!(
                f,
                "  no cgroup from / down to {} is bound: unlabeled",
                s.cgroup
            )?,
        }
        if !s.enforced {
            writeln!(
                f,
                "  not enforced: the cgroup is outside the daemon's --cgroup-root"
            )?;
        }

        let d = &self.destination;
        match &d.end {
            Some(end) => writeln!(f, "destination: {}", end_text(end))?,
            None => writeln!(f, "destination: not classified at the source")?,
        }
        writeln!(f, "  {}", d.detail)?;

        let judged = self.verdict.decision != Decision::NotJudged;
        if let (true, Some((from, to))) = (judged, domain_pair(&s.end, d.end.as_ref())) {
            if self.edges.is_empty() {
                writeln!(f, "edges from {from} to {to}: none")?;
            } else {
                writeln!(
                    f,
                    "edges from {from} to {to} ({} port range(s)):",
                    self.edges.len()
                )?;
                for range in &self.edges {
                    writeln!(f, "  {}", range_text(range))?;
                }
            }
        }

        let defaults = &self.defaults;
        match &defaults.applied {
            Some(which) => writeln!(
                f,
                "defaults: {which}: {} decides (unlabeled {}, external {})",
                if which == "unlabeled" {
                    &defaults.unlabeled
                } else {
                    &defaults.external
                },
                defaults.unlabeled,
                defaults.external
            )?,
            None => writeln!(
                f,
                "defaults: unlabeled {}, external {}, mode {} (not applied)",
                defaults.unlabeled, defaults.external, defaults.mode
            )?,
        }

        let v = &self.verdict;
        let word = match v.decision {
            Decision::Allowed => "ALLOWED",
            Decision::Refused => "REFUSED",
            Decision::Audited => "AUDITED",
            Decision::NotJudged => "NOT JUDGED",
        };
        match &v.reason {
            Some(reason) => writeln!(f, "verdict: {word} ({reason})")?,
            None => writeln!(f, "verdict: {word}")?,
        }
        writeln!(f, "  {}", v.summary)?;
        if let Some(edge) = &v.edge {
            match v.until {
                Some(until) => writeln!(f, "  edge {edge} allows it until {until}")?,
                None => writeln!(f, "  edge {edge} allows it with no expiry")?,
            }
        }
        Ok(())
    }
}

/// The two domains of a flow between different domains: the only flows edges are
/// considered for.
fn domain_pair<'a>(src: &'a EndView, dst: Option<&'a EndView>) -> Option<(&'a str, &'a str)> {
    let domain = |end: &'a EndView| match end.kind {
        EndKind::Domain => end.domain.as_deref(),
        EndKind::Unlabeled | EndKind::External => None,
    };
    let (from, to) = (domain(src)?, domain(dst?)?);
    (from != to).then_some((from, to))
}

fn end_text(end: &EndView) -> String {
    match end.kind {
        EndKind::Domain => format!(
            "{} (domain id {}, {} mode)",
            end.domain.as_deref().unwrap_or("?"),
            end.domain_id.unwrap_or_default(),
            end.mode.as_deref().unwrap_or("enforce")
        ),
        EndKind::Unlabeled => "unlabeled".into(),
        EndKind::External => "external".into(),
    }
}

fn range_text(r: &RangeView) -> String {
    let ports = if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    };
    let id = r
        .edge
        .clone()
        .unwrap_or_else(|| format!("edge #{}", r.index));
    let yes = |b: bool| if b { "yes" } else { "no" };
    let window = match (r.window.as_str(), r.not_before, r.not_after) {
        ("not-yet-valid", Some(start), _) => format!("not valid until {start}"),
        ("expired", _, Some(end)) => format!("expired at {end}"),
        (_, _, Some(end)) => format!("valid until {end}"),
        _ => "valid, no expiry".to_owned(),
    };
    let mark = if r.decides { "  <- allows" } else { "" };
    format!(
        "{id}: {} {ports}: protocol {}, port {}, {window}{mark}",
        r.protocol,
        yes(r.protocol_matches),
        yes(r.port_matches)
    )
}
