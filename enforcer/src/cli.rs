//! The command line: one file per verb. Each verb either runs here (`policy check`, `teardown`,
//! `svid verify`, `attest`) or sends one request of the control API (`crate::api`) to the daemon
//! and renders its answer.

mod attest;
mod edge;
mod endpoint;
mod events;
mod fleet;
mod plan;
mod policy;
mod status;
mod svid;
mod teardown;
mod terminal;
mod why;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::{
    api::control::{Request, Response},
    cli::endpoint::Endpoint,
    daemon,
    paths::{DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR, PinDir, StateDir},
};

#[derive(Parser)]
#[command(
    name = "enforcer",
    version,
    long_version = crate::version::LONG,
    about = "Kernel-enforced trust-domain boundaries for Linux workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per run; boxing the daemon's flags would only move them"
)]
enum Command {
    /// Load, attach and pin the programs, apply the policy, and serve the control socket.
    Daemon {
        /// The policy file (with --source file, the default): reloaded when it changes.
        #[arg(long, env = "ENFORCER_POLICY")]
        policy: Option<PathBuf>,
        /// Where the policy comes from: the --policy file, or the fleet's document in etcd
        /// (--etcd-endpoints, --etcd-prefix, --node).
        #[arg(long, value_enum, default_value_t = SourceKind::File, env = "ENFORCER_SOURCE")]
        source: SourceKind,
        /// This node's name in the fleet (--source etcd); default: the host name.
        #[arg(long, value_name = "NAME", env = "ENFORCER_NODE")]
        node: Option<String>,
        #[command(flatten)]
        etcd: crate::fleet::client::EtcdArgs,
        /// Where the programs attach: a directory in the cgroup2 mount or a cgroup path
        /// relative to it. Default: the mount's root, i.e. the whole host.
        #[arg(long, env = "ENFORCER_CGROUP_ROOT")]
        cgroup_root: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PIN_DIR, env = "ENFORCER_PIN_DIR")]
        pin_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_SOCKET, env = "ENFORCER_SOCKET")]
        socket: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "ENFORCER_STATE_DIR")]
        state_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default).
        #[arg(long, value_name = "ADDR:PORT", env = "ENFORCER_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Members of this group (name or gid) may use the control socket as root does.
        #[arg(long, value_name = "GROUP", env = "ENFORCER_ADMIN_GROUP")]
        admin_group: Option<String>,
        /// Members of this group (name or gid) may read: status, edges, events, why, plan.
        #[arg(long, value_name = "GROUP", env = "ENFORCER_READ_GROUP")]
        read_group: Option<String>,
        /// Serve the attestation socket here (mode 0666): processes bind their cgroup to an
        /// attested domain by proving they hold an X.509-SVID of it. Off by default.
        #[arg(long, value_name = "PATH", env = "ENFORCER_ATTEST_SOCKET")]
        attest_socket: Option<PathBuf>,
        /// How long before a trust bundle lapses `status` warns about it.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = enforcer_policy::parse_duration, env = "ENFORCER_BUNDLE_WARN_BEFORE")]
        bundle_warn_before: std::time::Duration,
        #[command(flatten)]
        bundle_endpoints: crate::trust::bundle_endpoint::Args,
        #[command(flatten)]
        remote_admin: daemon::remote_admin::Args,
        #[command(flatten)]
        workload_api: crate::trust::workload_api::Args,
    },
    /// Prove to the daemon that this process holds an X.509-SVID, so that its cgroup joins
    /// the SVID's (attested) trust domain until the SVID expires.
    Attest(attest::Args),
    /// One policy for a fleet of hosts, kept in etcd: write it, and see every node.
    Fleet {
        #[command(subcommand)]
        command: fleet::Command,
        #[command(flatten)]
        etcd: crate::fleet::client::EtcdArgs,
    },
    /// Check, plan or apply policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show what the running daemon enforces.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Grant, revoke and list federation edges on the running daemon.
    Edge {
        #[command(subcommand)]
        command: EdgeCommand,
        #[command(flatten)]
        endpoint: Endpoint,
        #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show decision events: refusals, audited flows and allowed domain crossings, with
    /// domains, edge, addresses, process and cgroup.
    Events {
        /// Keep printing new events as they happen (nothing from the log before).
        #[arg(short, long)]
        follow: bool,
        /// Only events with this domain (or `unlabeled`, `external`) on either side.
        #[arg(long, value_parser = event_domain)]
        domain: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Explain how the kernel would judge a new flow: the source and destination domains
    /// and how each was found, every edge considered, the defaults, and the verdict.
    Why(why::Args),
    /// Check X.509-SVIDs offline.
    Svid {
        #[command(subcommand)]
        command: SvidCommand,
    },
    /// Remove enforcement: detach the programs and remove every pin.
    Teardown {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Refuse to tear down links attached anywhere else.
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SvidCommand {
    /// Validate an X.509-SVID against a trust bundle with the rules the daemon applies
    /// (X509-SVID standard: one SPIFFE ID with a path, leaf not a CA, key usage, path
    /// validation to the bundle of the SVID's own trust domain).
    Verify(svid::Args),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files offline. Exit 0 when all are valid, 1 otherwise.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate and atomically apply a policy to the running daemon; prints the new generation.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show what applying a policy would change and which live connections it would end;
    /// applies nothing.
    Plan {
        file: PathBuf,
        #[command(flatten)]
        endpoint: Endpoint,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum EdgeCommand {
    /// Allow a cross-domain flow now, for a limited time, without editing the policy file.
    /// Grants are kept across daemon restarts and policy applies until they expire or are
    /// revoked.
    Grant {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_parser = ["tcp", "udp", "any"])]
        protocol: String,
        /// Ports and ranges, comma separated: 5432,8000-8099.
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<String>,
        /// How long the grant lasts (30m, 2h, 1d); at most the policy's max_grant_ttl.
        #[arg(long, value_parser = enforcer_policy::parse_duration)]
        ttl: std::time::Duration,
        /// Who answers for the grant.
        #[arg(long)]
        owner: String,
        /// Why it is needed.
        #[arg(long)]
        reason: String,
        /// The grant's id (default: derived from its content and time).
        #[arg(long)]
        id: Option<String>,
        /// When the grant starts to allow traffic (RFC 3339, default now).
        #[arg(long)]
        not_before: Option<jiff::Timestamp>,
    },
    /// Remove a grant and end the live connections only it allowed.
    Revoke { id: String },
    /// List every edge, from the policy file and from grants, with its use.
    List {
        /// Mark edges unused for this long as stale.
        #[arg(long, value_parser = parse_period, default_value = "7d")]
        stale_after: std::time::Duration,
    },
    /// Show one edge.
    Show {
        id: String,
        #[arg(long, value_parser = parse_period, default_value = "7d")]
        stale_after: std::time::Duration,
    },
}

/// `events --domain` as events name it: a trust domain in either spelling the other flags
/// take (`spiffe://x` is `x`). `unlabeled` and `external` pass as they are, being valid
/// names too.
fn event_domain(text: &str) -> Result<String, String> {
    text.parse::<enforcer_policy::TrustDomain>()
        .map(|domain| domain.to_string())
        .map_err(|err| err.to_string())
}

/// A duration for `--stale-after`, where `0s` (everything unused right now) makes sense.
fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    if text.trim_end_matches(['s', 'm', 'h', 'd']) == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    enforcer_policy::parse_duration(text)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    File,
    Etcd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The command line as clap defines it, for generating completions and man pages
/// (`enforcer/examples/dist-docs.rs`).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and runs the verb it names.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Daemon { .. });
    if daemon {
        crate::observe::log::install();
    }
    match run(cli) {
        Ok(code) => code,
        // The daemon's last word goes to its log, at its level (under systemd, to the journal
        // as an error), and as one line.
        Err(err) if daemon => {
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
        Err(err) if err.is::<terminal::StdoutClosed>() => ExitCode::SUCCESS,
        Err(err) => {
            terminal::warn(format_args!("enforcer: error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            policy,
            source,
            node,
            etcd,
            cgroup_root,
            pin_dir,
            socket,
            state_dir,
            metrics_addr,
            admin_group,
            read_group,
            attest_socket,
            bundle_warn_before,
            bundle_endpoints,
            remote_admin,
            workload_api,
        } => crate::trust::bundle_endpoint::configure(&bundle_endpoints)
            .and_then(|()| {
                let workload_api =
                    daemon::workload_api(&workload_api, remote_admin.tls().is_some());
                daemon::run(daemon::Options {
                    source: policy_source(source, policy, node, etcd)?,
                    cgroup_root,
                    pin_dir: PinDir::new(pin_dir),
                    socket,
                    state_dir: StateDir::new(state_dir),
                    metrics_addr,
                    groups: daemon::access::Groups::resolve(
                        admin_group.as_deref(),
                        read_group.as_deref(),
                    )?,
                    attest_socket,
                    bundle_warn_before,
                    tls: remote_admin.tls(),
                    remote_admin: daemon::remote_admin::RemoteAdmin::from_args(
                        remote_admin,
                        workload_api.as_ref().and_then(|w| w.svid.as_ref()),
                    )?,
                    workload_api,
                })
            })
            .map(|()| ExitCode::SUCCESS),
        Command::Fleet { command, etcd } => fleet::run(command, &etcd),
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => policy::check(&files),
        Command::Policy {
            command: PolicyCommand::Apply { file, endpoint },
        } => policy::apply(&file, &endpoint),
        Command::Policy {
            command:
                PolicyCommand::Plan {
                    file,
                    endpoint,
                    output,
                },
        } => plan::run(&file, &endpoint, output),
        Command::Status { output, endpoint } => {
            match endpoint::call(&endpoint, &Request::Status)? {
                Response::Status(status) => {
                    match output {
                        Output::Text => terminal::text(status)?,
                        Output::Json => {
                            terminal::raw(format_args!(
                                "{}\n",
                                serde_json::to_string_pretty(&status)?
                            ))?;
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(endpoint::unexpected(other)),
            }
        }
        Command::Edge {
            command,
            endpoint,
            output,
        } => edge::run(command, &endpoint, output),
        Command::Events {
            follow,
            domain,
            output,
            endpoint,
        } => events::run(&endpoint, follow, domain.as_deref(), output),
        Command::Why(args) => why::run(args),
        Command::Attest(args) => attest::run(args),
        Command::Svid {
            command: SvidCommand::Verify(args),
        } => svid::run(&args),
        Command::Teardown {
            pin_dir,
            cgroup_root,
        } => {
            teardown::run(&PinDir::new(pin_dir), cgroup_root.as_deref()).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// `--source` with the flags that go with it, checked before anything else happens.
fn policy_source(
    source: SourceKind,
    policy: Option<PathBuf>,
    node: Option<String>,
    etcd: crate::fleet::client::EtcdArgs,
) -> Result<daemon::PolicySource> {
    match (source, policy) {
        (SourceKind::File, Some(policy)) => Ok(daemon::PolicySource::File(policy)),
        (SourceKind::File, None) => bail!("--policy FILE is required (or --source etcd)"),
        (SourceKind::Etcd, Some(policy)) => bail!(
            "--policy {} and --source etcd exclude each other: with --source etcd the policy is \
             the fleet's document (write it with `enforcer fleet apply FILE`)",
            policy.display()
        ),
        (SourceKind::Etcd, None) => {
            etcd.check()?;
            let node = match node {
                Some(node) => node,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .map_err(|err| anyhow::anyhow!("reading the host name for --node: {err}"))?,
            };
            let node = node
                .parse()
                .map_err(|err: String| anyhow::anyhow!("--node: {err}"))?;
            Ok(daemon::PolicySource::Etcd(
                daemon::fleet_source::FleetOptions { etcd, node },
            ))
        }
    }
}
