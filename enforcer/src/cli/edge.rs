//! `enforcer edge grant | revoke | list | show`: the CLI side of edges with a life cycle.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::{
    api::control::{Request, Response},
    api::edge::GrantRequest,
    cli::EdgeCommand,
    cli::Output,
    cli::endpoint::{self, Endpoint},
    cli::status::write_edge,
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
            let request = Request::Grant(GrantRequest {
                from,
                to,
                protocol,
                ports,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                owner,
                reason,
                id,
                not_before,
            });
            match endpoint::call(endpoint, &request)? {
                Response::Granted {
                    id,
                    expires,
                    generation,
                } => {
                    match output {
                        Output::Text => {
                            println!("{id}");
                            eprintln!(
                                "enforcer: granted {id} until {expires}; generation {generation}"
                            );
                        }
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"id": id, "expires": expires, "generation": generation})
                        ),
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
                    Output::Text => println!(
                        "revoked {id}; ended {ended} connection(s); generation {generation}"
                    ),
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"id": id, "ended": ended, "generation": generation})
                    ),
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
                    print!("{text}");
                }
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "edges": edges }))?
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        EdgeCommand::Show { id, stale_after } => {
            let edges = list(endpoint, stale_after)?;
            let Some(edge) = edges.iter().find(|e| e.id == id) else {
                bail!("no edge has id {id} (see `enforcer edge list`)");
            };
            match output {
                Output::Text => {
                    let mut text = String::new();
                    write_edge(&mut text, edge)?;
                    print!("{text}");
                }
                Output::Json => println!("{}", serde_json::to_string_pretty(edge)?),
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
        other => {
            bail!("unexpected reply from the daemon: {other:?}")
        }
    }
}

/// Reports a refused change; nothing changed.
fn refused(what: &str, response: Response) -> Result<ExitCode> {
    match response {
        Response::Rejected { errors } => {
            for e in errors {
                eprintln!("enforcer: {e}");
            }
            eprintln!("enforcer: {what} refused; nothing changed");
            Ok(ExitCode::FAILURE)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}
