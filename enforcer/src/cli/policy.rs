//! `enforcer policy check | apply`: checking a policy file here, or having the daemon apply it.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;

use super::{
    endpoint::{self, Endpoint},
    terminal,
};
use crate::{
    api::control::{Request, Response},
    pipeline::{compile, policy_file},
    trust::bundles,
};

pub fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut valid = true;
    for file in files {
        let name = file.display().to_string();
        match policy_file::read(file) {
            Ok(text) => match enforcer_policy::parse(&name, &text) {
                // Bundles are read from this host, as the daemon on it would read them.
                Ok(policy) => {
                    match bundles::TrustState::load(&policy, &name, true).and_then(|trust| {
                        compile::check_alone(&policy)
                            .map(|()| trust)
                            .map_err(|err| vec![format!("{name}: {err:#}")])
                    }) {
                        Ok(trust) => {
                            for (domain, why) in trust.unusable_now(jiff::Timestamp::now()) {
                                terminal::warn(format_args!(
                                    "{name}: warning: the trust bundle of {domain} cannot be used \
                                 now ({why}); edges that require it would be suspended"
                                ));
                            }
                            terminal::text(format_args!(
                                "{name}: ok ({} domain(s), {} edge(s), {} trust bundle(s))\n",
                                policy.domains.len(),
                                policy.federation.len(),
                                policy
                                    .domains
                                    .iter()
                                    .filter(|d| {
                                        d.bundle.is_some()
                                            || d.bundle_endpoint.is_some()
                                            || d.bundle_from.is_some()
                                    })
                                    .count()
                            ))?;
                        }
                        Err(errors) => {
                            valid = false;
                            for e in errors {
                                terminal::warn(e);
                            }
                        }
                    }
                }
                Err(diagnostics) => {
                    valid = false;
                    for d in diagnostics {
                        terminal::warn(d);
                    }
                }
            },
            Err(why) => {
                valid = false;
                terminal::warn(format_args!("{why}"));
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads a policy file for the daemon. On a file that cannot be read prints why, then
/// `NAME refused`, and returns `None`. The file is not parsed here: the daemon checks it (it
/// is the one that must never apply a bad policy) and answers with every mistake, so a
/// 100,000-edge file is parsed once per apply, not twice. See [`call_with_policy`].
pub fn read_policy(file: &std::path::Path, refused: &str) -> Option<(String, String)> {
    let name = file.display().to_string();
    match policy_file::read(file) {
        Ok(text) => Some((name, text)),
        Err(why) => {
            terminal::warn(format_args!("{why}"));
            terminal::warn(format_args!("enforcer: {name} {refused}"));
            None
        }
    }
}

/// Sends `request`, which carries a policy. When the daemon cannot be asked, the CLI checks
/// the policy itself, so that mistakes are reported even when no daemon runs: a policy with
/// mistakes prints them, then `NAME refused`, and gives `Ok(None)`; a valid one gives the
/// error that kept the daemon from answering.
pub fn call_with_policy(
    endpoint: &Endpoint,
    request: &Request,
    refused: &str,
) -> Result<Option<Response>> {
    let err = match endpoint::call(endpoint, request) {
        Ok(response) => return Ok(Some(response)),
        Err(err) => err,
    };
    let Some((name, text)) = request.policy() else {
        return Err(err);
    };
    match enforcer_policy::parse(name, text) {
        Ok(_) => Err(err),
        Err(diagnostics) => {
            for d in diagnostics {
                terminal::warn(d);
            }
            terminal::warn(format_args!("enforcer: {name} {refused}"));
            Ok(None)
        }
    }
}

pub fn apply(file: &std::path::Path, endpoint: &Endpoint) -> Result<ExitCode> {
    const REFUSED: &str = "was not applied; nothing changed";
    let Some((name, text)) = read_policy(file, REFUSED) else {
        return Ok(ExitCode::FAILURE);
    };
    let request = Request::Apply {
        file: name.clone(),
        text,
    };
    let Some(response) = call_with_policy(endpoint, &request, REFUSED)? else {
        return Ok(ExitCode::FAILURE);
    };
    match response {
        Response::Applied { generation, ended } => {
            terminal::text(format_args!("{generation}\n"))?;
            eprintln!("enforcer: generation {generation} active; ended {ended} connection(s)");
            Ok(ExitCode::SUCCESS)
        }
        Response::Rejected { errors } => {
            for e in errors {
                terminal::warn(e);
            }
            terminal::warn(format_args!(
                "enforcer: {name} was not applied; nothing changed"
            ));
            Ok(ExitCode::FAILURE)
        }
        other => Err(endpoint::unexpected(other)),
    }
}
