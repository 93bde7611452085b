//! `enforcer edge grant | revoke | list | show`: the CLI side of edges with a life cycle.

use std::{process::ExitCode, str::FromStr, sync::Arc};

use anyhow::{Result, bail};
use enforcer_policy::{EdgeId, FreeTextError, PortRange, Protocol, TrustDomain};

use crate::cli::terminal;
use crate::{
    api::{
        control::{Request, Response},
        edge::GrantRequest,
    },
    cli::{
        EdgeCommand, Output,
        endpoint::{self, Endpoint},
        status::write_edge,
    },
    pipeline::grants,
};

pub fn run(command: EdgeCommand, endpoint: &Endpoint, output: Output) -> Result<ExitCode> {
    match command {
        EdgeCommand::Grant {
            from,
            to,
            protocol,
            ports,
            ttl,
            owner,
            reason,
            id,
            not_before,
        } => {
            let flags = GrantFlags {
                from,
                to,
                protocol,
                ports,
                owner,
                reason,
                id,
            };
            let request = match flags.parse(ttl, not_before, jiff::Timestamp::now()) {
                Ok(request) => Request::Grant(request),
                Err(errors) => return refused("grant", Response::Rejected { errors }),
            };
            match endpoint::call(endpoint, &request)? {
                Response::Granted {
                    id,
                    expires,
                    generation,
                } => {
                    match output {
                        Output::Text => {
                            terminal::text(format_args!("{id}\n"))?;
                            eprintln!(
                                "enforcer: granted {id} until {expires}; generation {generation}"
                            );
                        }
                        Output::Json => terminal::raw(format_args!(
                            "{}\n",
                            serde_json::json!({"id": id, "expires": expires, "generation": generation})
                        ))?,
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => refused("grant", other),
            }
        }
        EdgeCommand::Revoke { id } => match endpoint::call(endpoint, &Request::Revoke { id })? {
            Response::Revoked {
                id,
                ended,
                generation,
            } => {
                match output {
                    Output::Text => terminal::text(format_args!(
                        "revoked {id}; ended {ended} connection(s); generation {generation}\n"
                    ))?,
                    Output::Json => terminal::raw(format_args!(
                        "{}\n",
                        serde_json::json!({"id": id, "ended": ended, "generation": generation})
                    ))?,
                }
                Ok(ExitCode::SUCCESS)
            }
            other => refused("revoke", other),
        },
        EdgeCommand::List { stale_after } => {
            let edges = list(endpoint, stale_after)?;
            match output {
                Output::Text => {
                    let mut text = String::new();
                    for e in &edges {
                        write_edge(&mut text, e)?;
                    }
                    if edges.is_empty() {
                        text.push_str("  (no edges: every cross-domain flow is refused)\n");
                    }
                    terminal::text(format_args!("{text}"))?;
                }
                Output::Json => terminal::raw(format_args!(
                    "{}\n",
                    serde_json::to_string_pretty(&serde_json::json!({ "edges": edges }))?
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        EdgeCommand::Show { id, stale_after } => {
            let edges = list(endpoint, stale_after)?;
            let Some(edge) = edges.iter().find(|e| e.edge.id.as_str() == id) else {
                bail!("no edge has id {id} (see `enforcer edge list`)");
            };
            match output {
                Output::Text => {
                    let mut text = String::new();
                    write_edge(&mut text, edge)?;
                    terminal::text(format_args!("{text}"))?;
                }
                Output::Json => {
                    terminal::raw(format_args!("{}\n", serde_json::to_string_pretty(edge)?))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(
    endpoint: &Endpoint,
    stale_after: std::time::Duration,
) -> Result<Vec<crate::api::edge::EdgeView>> {
    let request = Request::Edges {
        stale_after_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
    };
    match endpoint::call(endpoint, &request)? {
        Response::Edges { edges } => Ok(edges),
        other => Err(endpoint::unexpected(other)),
    }
}

/// The flags of `edge grant` as typed, before they are parsed.
struct GrantFlags {
    from: String,
    to: String,
    protocol: String,
    ports: Vec<String>,
    owner: String,
    reason: String,
    id: Option<String>,
}

impl GrantFlags {
    /// The request, each flag read with the parser a policy file's field is read with; or
    /// every mistake, each naming its flag. The daemon checks the rest against the running
    /// policy, and the window again against its own clock.
    fn parse(
        self,
        ttl: std::time::Duration,
        not_before: Option<jiff::Timestamp>,
        now: jiff::Timestamp,
    ) -> Result<GrantRequest, Vec<String>> {
        let mut errors = Vec::new();
        let ends = jiff::SignedDuration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        if let Some(not_before) = not_before
            && not_before >= ends
        {
            errors.push(grants::not_before_error(not_before, ends));
        }
        let from = field::<TrustDomain>(&mut errors, "from", &self.from);
        let to = field::<TrustDomain>(&mut errors, "to", &self.to);
        let protocol = field::<Protocol>(&mut errors, "protocol", &self.protocol);
        let ports: Option<Vec<PortRange>> = self
            .ports
            .iter()
            .map(|port| field(&mut errors, "ports", port))
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let id = match &self.id {
            Some(id) => field::<EdgeId>(&mut errors, "id", id).map(Some),
            None => Some(None),
        };
        let owner = free_text(&mut errors, "owner", &self.owner);
        let reason = free_text(&mut errors, "reason", &self.reason);
        match (from, to, protocol, ports, id, owner, reason) {
            (
                Some(from),
                Some(to),
                Some(protocol),
                Some(ports),
                Some(id),
                Some(owner),
                Some(reason),
            ) if errors.is_empty() => Ok(GrantRequest {
                from,
                to,
                protocol,
                ports,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                owner,
                reason,
                id,
                not_before,
            }),
            _ => Err(errors),
        }
    }
}

/// The flag `flag` read as a `T`; a mistake is added to `errors`, naming the flag.
fn field<T: FromStr>(errors: &mut Vec<String>, flag: &str, text: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|err| errors.push(format!("--{flag} {text}: {err}")))
        .ok()
}

/// An owner or a reason, by the rule for an edge's owner and reason in a policy file.
fn free_text(errors: &mut Vec<String>, flag: &str, text: &str) -> Option<Arc<str>> {
    match enforcer_policy::free_text(text) {
        Ok(text) => Some(text.into()),
        Err(FreeTextError::Empty) => {
            errors.push(format!("--{flag} is required and must not be blank"));
            None
        }
        Err(err) => {
            errors.push(format!("--{flag} {err}"));
            None
        }
    }
}

/// Reports a refused change; nothing changed.
fn refused(what: &str, response: Response) -> Result<ExitCode> {
    match response {
        Response::Rejected { errors } => {
            for e in errors {
                terminal::warn(format_args!("enforcer: {e}"));
            }
            terminal::warn(format_args!("enforcer: {what} refused; nothing changed"));
            Ok(ExitCode::FAILURE)
        }
        other => Err(endpoint::unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> GrantFlags {
        GrantFlags {
            from: "a.org".into(),
            to: "b.org".into(),
            protocol: "tcp".into(),
            ports: vec!["5432".into()],
            owner: "dba".into(),
            reason: "migration".into(),
            id: None,
        }
    }

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn every_mistake_in_the_flags_is_reported_before_the_daemon_is_asked() {
        let bad = GrantFlags {
            to: "Not A Domain".into(),
            protocol: "icmp".into(),
            ports: vec!["0".into(), "443".into()],
            owner: " ".into(),
            reason: String::new(),
            id: Some("Bad Id".into()),
            ..flags()
        };
        let errors = bad
            .parse(HOUR, None, jiff::Timestamp::now())
            .expect_err("refused");
        let text = errors.join("\n");
        for expected in [
            "--to Not A Domain",
            "--protocol icmp",
            "--ports 0",
            "--owner is required",
            "--reason is required",
            "--id Bad Id",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        assert_eq!(errors.len(), 6, "{text}");
    }

    #[test]
    fn a_grant_that_would_start_after_it_ends_is_refused_before_the_daemon_is_asked() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().expect("timestamp");
        let late = "2026-11-23T11:00:00Z".parse().expect("timestamp");
        assert_eq!(
            flags().parse(HOUR, Some(late), now).expect_err("refused"),
            [
                "--not-before 2026-11-23T11:00:00Z must be before the grant's end \
                 (2026-11-23T11:00:00Z, --ttl from now); the grant would never allow anything"
            ]
        );
        let early = "2026-11-23T10:59:59Z".parse().expect("timestamp");
        assert!(flags().parse(HOUR, Some(early), now).is_ok());
    }

    #[test]
    fn owner_and_reason_are_one_line_as_in_a_policy_file() {
        let forged = GrantFlags {
            owner: "dba\renforcer: revoked edge-1".into(),
            reason: "x\nenforcer: revoked edge-1".into(),
            ..flags()
        };
        assert_eq!(
            forged
                .parse(HOUR, None, jiff::Timestamp::now())
                .expect_err("refused"),
            [
                "--owner contains the control character U+000D; write it as one line without control characters",
                "--reason contains the control character U+000A; write it as one line without control characters",
            ]
        );
        let padded = GrantFlags {
            owner: "  dba ".into(),
            ..flags()
        };
        let request = padded
            .parse(HOUR, None, jiff::Timestamp::now())
            .expect("parsed");
        assert_eq!(&*request.owner, "dba");
        assert_eq!(request.ports, ["5432".parse().expect("port")]);
        assert_eq!(request.ttl_ms, 3_600_000);
    }
}
