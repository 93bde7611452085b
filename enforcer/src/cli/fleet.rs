//! `enforcer fleet apply | status`: the fleet administrator's side of `--source etcd`. These
//! talk to etcd directly, not to a daemon: every node follows the document on its own.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde::Serialize;

use super::Output;
use crate::cli::terminal;
use crate::{
    fleet::{
        client::{self, EtcdArgs, Written},
        keys::NodeRecord,
    },
    pipeline::policy_file,
};

/// How many times a request that failed is tried, and how long apart: long enough for a
/// cluster that lost its leader to elect another (about a second with etcd's defaults).
const ATTEMPTS: u32 = 8;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(400);

#[derive(Subcommand)]
pub enum Command {
    /// Check a policy file here, then make it the fleet's document, with compare-and-swap on
    /// its revision: if another writer changed it since it was read (or since
    /// --expect-revision), nothing is written and the conflict is reported. Prints the new
    /// revision.
    Apply {
        file: PathBuf,
        /// Write only if the fleet's document is still at this revision (0: there is none
        /// yet), as `fleet status` or the last `fleet apply` printed it. Default: the revision
        /// read just before writing.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
    /// The fleet's document revision and every node that publishes a heartbeat: the
    /// generation and revision it enforces, its last heartbeat and its errors.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(command: Command, etcd: &EtcdArgs) -> Result<ExitCode> {
    etcd.check()?;
    // The command line is a process of its own, not the daemon: a runtime for this one call.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an async runtime for etcd")?;
    match command {
        Command::Apply {
            file,
            expect_revision,
        } => runtime.block_on(apply(&file, expect_revision, etcd)),
        Command::Status { output } => runtime.block_on(status(output, etcd)),
    }
}

async fn apply(file: &std::path::Path, expected: Option<i64>, etcd: &EtcdArgs) -> Result<ExitCode> {
    // The nodes refuse a bad document, but it would still be the fleet's: check it first.
    if super::policy::check(std::slice::from_ref(&file.to_path_buf()))? != ExitCode::SUCCESS {
        terminal::warn(format_args!(
            "enforcer: {} refused; nothing was written to the fleet",
            file.display()
        ));
        return Ok(ExitCode::FAILURE);
    }
    let text = policy_file::read(file).map_err(anyhow::Error::msg)?;
    let keys = etcd.keys()?;
    let client = etcd.connect().await?;
    let mut kv = client::kv(&client);
    let mut attempt = 0;
    let (expected, written) = loop {
        attempt += 1;
        let tried = async {
            let expected = match expected {
                Some(revision) => revision,
                None => client::policy_revision(&mut kv, &keys)
                    .await
                    .with_context(|| format!("reading the revision of {}", keys.policy()))?,
            };
            let written = client::write_policy(&mut kv, &keys, &text, expected)
                .await
                .with_context(|| format!("writing {}", keys.policy()))?;
            anyhow::Ok((expected, written))
        }
        .await;
        match tried {
            Ok(done) => break done,
            // A member lost or a leader being elected fails a request for a moment; the
            // compare-and-swap makes trying again safe.
            Err(err) if attempt < ATTEMPTS => {
                terminal::warn(format_args!("enforcer: {err:#}; trying again"));
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(err) => return Err(err),
        }
    };
    // An earlier attempt that failed on the way back may have written it: that is no
    // conflict.
    let written = match written {
        Written::Conflict { current } if attempt > 1 && current != 0 => {
            match client::policy(&mut kv, &keys).await {
                Ok(Some(doc)) if doc.text == text => Written::Written { revision: current },
                _ => Written::Conflict { current },
            }
        }
        other => other,
    };
    match written {
        Written::Written { revision } => {
            terminal::text(format_args!(
                "fleet policy {} revision {revision} written from {} (was {}); every node applies \
                 it (see `enforcer fleet status`)\n",
                keys.policy(),
                file.display(),
                describe(expected)
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Written::Conflict { current } => bail!(
            "conflict: the fleet policy {} is at {}, not at {} as this apply expected: another \
             writer changed it. Nothing was written. Read what is there, merge, and apply again \
             with --expect-revision {current}",
            keys.policy(),
            describe(current),
            describe(expected)
        ),
    }
}

fn describe(revision: i64) -> String {
    if revision == 0 {
        "no document".into()
    } else {
        format!("revision {revision}")
    }
}

/// `fleet status -o json`.
#[derive(Serialize)]
struct FleetStatus {
    policy_key: String,
    /// The document's revision; 0 when there is none.
    revision: i64,
    nodes: Vec<NodeStatus>,
    /// Node keys whose content is not a node record.
    unreadable: Vec<String>,
}

#[derive(Serialize)]
struct NodeStatus {
    #[serde(flatten)]
    record: NodeRecord,
    /// Whether the node enforces the fleet's current document.
    current: bool,
}

async fn status(output: Output, etcd: &EtcdArgs) -> Result<ExitCode> {
    let keys = etcd.keys()?;
    let client = etcd.connect().await?;
    let mut kv = client::kv(&client);
    let mut attempt = 0;
    let (revision, records) = loop {
        attempt += 1;
        let read = async {
            let revision = client::policy_revision(&mut kv, &keys).await?;
            anyhow::Ok((revision, client::nodes(&mut kv, &keys).await?))
        }
        .await;
        match read {
            Ok(read) => break read,
            Err(err) if attempt < ATTEMPTS => {
                terminal::warn(format_args!("enforcer: {err:#}; trying again"));
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(err) => return Err(err),
        }
    };
    let mut nodes = Vec::new();
    let mut unreadable = Vec::new();
    for record in records {
        match record {
            Ok(record) => nodes.push(NodeStatus {
                current: record.revision == Some(revision) && record.error.is_none(),
                record,
            }),
            Err(why) => unreadable.push(why),
        }
    }
    let status = FleetStatus {
        policy_key: keys.policy(),
        revision,
        nodes,
        unreadable,
    };
    match output {
        Output::Json => {
            terminal::raw(format_args!("{}\n", serde_json::to_string_pretty(&status)?))?
        }
        Output::Text => print_text(&status)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(status: &FleetStatus) -> Result<()> {
    terminal::text(format_args!(
        "fleet policy: {} at {}\n",
        status.policy_key,
        describe(status.revision)
    ))?;
    terminal::text(format_args!(
        "{:<24} {:>10} {:>9} {:<30} STATE\n",
        "NODE", "GENERATION", "REVISION", "HEARTBEAT"
    ))?;
    let now = jiff::Timestamp::now();
    for node in &status.nodes {
        let r = &node.record;
        let age = now.duration_since(r.heartbeat).as_secs_f64();
        let state = match (&r.error, node.current) {
            (Some(error), _) => format!("error: {error}"),
            (None, true) => "current".to_owned(),
            (None, false) => "behind".to_owned(),
        };
        terminal::text(format_args!(
            "{:<24} {:>10} {:>9} {:<30} {state}\n",
            r.node,
            r.generation,
            r.revision.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            format!("{} ({age:.1}s ago)", r.heartbeat.strftime("%H:%M:%S")),
        ))?;
    }
    for why in &status.unreadable {
        terminal::text(format_args!("{why}\n"))?;
    }
    Ok(())
}
