//! `enforcer events`: decision events from the event log, or followed as they happen.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;

use super::{
    Output,
    endpoint::{self, Endpoint},
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
    let mut stdout = std::io::stdout().lock();
    endpoint::events(endpoint, follow, ready, |event| {
        if domain.is_some_and(|d| *event.from != *d && *event.to != *d) {
            return Ok(());
        }
        match output {
            Output::Text => writeln!(stdout, "{event}")?,
            Output::Json => writeln!(stdout, "{}", serde_json::to_string(&event)?)?,
        }
        // A follower reads events as they happen, not when a buffer fills.
        stdout.flush()?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
