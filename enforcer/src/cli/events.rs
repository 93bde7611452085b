//! `enforcer events`: decision events from the event log, or followed as they happen.

use std::process::ExitCode;

use anyhow::Result;

use super::{
    Output,
    endpoint::{self, Endpoint},
    terminal,
};

pub fn run(
    endpoint: &Endpoint,
    follow: bool,
    domain: Option<&str>,
    output: Output,
) -> Result<ExitCode> {
    let ready = || {
        if follow {
            eprintln!("enforcer: following events from {endpoint}");
        }
    };
    endpoint::events(endpoint, follow, ready, |event| {
        if domain.is_some_and(|d| *event.from != *d && *event.to != *d) {
            return Ok(());
        }
        // Each printed and flushed: a follower reads events as they happen, not when a
        // buffer fills. One event is one line, whatever its process name holds.
        match output {
            Output::Text => terminal::raw(format_args!("{}\n", terminal::line(&event.to_string()))),
            Output::Json => terminal::raw(format_args!("{}\n", serde_json::to_string(&event)?)),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
