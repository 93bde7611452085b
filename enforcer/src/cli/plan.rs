//! The client side of `enforcer policy plan`.

mod render;

use std::{path::Path, process::ExitCode};

use anyhow::Result;

use crate::{
    api::control::{Request, Response},
    cli::{
        Output,
        endpoint::{self, Endpoint},
        terminal,
    },
};

/// `enforcer policy plan FILE`: checks the file as `policy apply` does, then asks the daemon.
pub fn run(file: &Path, endpoint: &Endpoint, output: Output) -> Result<ExitCode> {
    const REFUSED: &str = "is not valid; nothing changed";
    let Some((name, text)) = super::policy::read_policy(file, REFUSED) else {
        return Ok(ExitCode::FAILURE);
    };
    let request = Request::Plan {
        file: name.clone(),
        text,
    };
    let Some(response) = super::policy::call_with_policy(endpoint, &request, REFUSED)? else {
        return Ok(ExitCode::FAILURE);
    };
    match response {
        Response::Plan(plan) => {
            match output {
                Output::Text => terminal::text(format_args!("{plan}"))?,
                Output::Json => {
                    terminal::raw(format_args!("{}\n", serde_json::to_string_pretty(&plan)?))?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Rejected { errors } => {
            for e in errors {
                terminal::warn(e);
            }
            terminal::warn(format_args!(
                "enforcer: {name} would be refused; nothing changed"
            ));
            Ok(ExitCode::FAILURE)
        }
        other => Err(endpoint::unexpected(other)),
    }
}
