//! The client side of `enforcer policy plan`.

mod render;

use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};

use crate::{
    api::control::{Request, Response},
    cli::{Output, endpoint::Endpoint},
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
                Output::Text => print!("{plan}"),
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Rejected { errors } => {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("enforcer: {name} would be refused; nothing changed");
            Ok(ExitCode::FAILURE)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}
