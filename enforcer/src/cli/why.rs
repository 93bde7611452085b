//! `enforcer why`: the CLI side. The daemon does the work, since it holds the maps.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::{Result, anyhow, bail};
use clap::ArgGroup;

mod render;

use crate::cli::terminal;
use crate::{
    api::{
        control::{Request, Response},
        why::{Transport, WhySource},
    },
    cli::{
        Output,
        endpoint::{self, Endpoint},
    },
};

#[derive(clap::Args)]
#[command(group(ArgGroup::new("from").required(true).args(["from_cgroup", "from_pid"])))]
pub struct Args {
    /// A new socket created in this cgroup, in the host's network namespace: a path as in
    /// /proc/PID/cgroup (`/workloads/prod`) or its directory in the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    from_cgroup: Option<String>,
    /// A new socket created by this process: its cgroup, and its network namespace.
    #[arg(long, value_name = "PID")]
    from_pid: Option<u32>,
    /// Where the flow goes: ADDR:PORT, `[ADDR]:PORT` for IPv6.
    #[arg(long, value_name = "ADDR:PORT")]
    to: String,
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    protocol: Transport,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    endpoint: Endpoint,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let to = parse_destination(&args.to)?;
    let from = match (args.from_cgroup, args.from_pid) {
        (Some(cgroup), None) => WhySource::Cgroup(cgroup),
        (None, Some(pid)) => WhySource::Pid(pid),
        // clap's group makes exactly one of them present.
        _ => bail!("give exactly one of --from-cgroup and --from-pid"),
    };
    let request = Request::Why {
        from,
        to,
        protocol: args.protocol,
    };
    match endpoint::call(&args.endpoint, &request)? {
        Response::Why(explanation) => {
            match args.output {
                Output::Text => terminal::text(format_args!("{explanation}"))?,
                Output::Json => terminal::raw(format_args!(
                    "{}\n",
                    serde_json::to_string_pretty(&explanation)?
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(endpoint::unexpected(other)),
    }
}

fn parse_destination(text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        anyhow!(
            "--to {text}: expected an address and a port, like 10.0.0.5:5432 or [fd00::5]:8080 \
             (names are not resolved)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_addresses_with_ports() {
        assert_eq!(
            parse_destination("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_destination("[::1]:8080").unwrap().is_ipv6());
        for bad in [
            "127.0.0.1",
            "::1:80",
            "localhost:80",
            "[::1]",
            "1.2.3.4:99999",
            "",
        ] {
            let err = parse_destination(bad).unwrap_err().to_string();
            assert!(
                err.contains("expected an address and a port"),
                "{bad}: {err}"
            );
        }
    }
}
