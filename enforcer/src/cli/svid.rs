//! `enforcer svid verify`: checks an X.509-SVID against a trust bundle exactly as the daemon's
//! TLS endpoints do, without a daemon, so a certificate set can be checked before it is
//! deployed (and the validation rules can be tried on any set).

use std::{cell::OnceCell, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use crate::cli::terminal;
use crate::trust::{self, Bundle, Usage};

#[derive(clap::Args)]
pub struct Args {
    /// The SVID (PEM): the leaf first, then any intermediates.
    #[arg(long, value_name = "FILE")]
    svid: PathBuf,
    /// The trust bundle (PEM certificates or a SPIFFE bundle document) of the SVID's trust
    /// domain.
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// What the SVID is checked for: a TLS client (as attestation and remote admin check
    /// it) or a TLS server.
    #[arg(long, value_enum, default_value_t = Role::Client)]
    role: Role,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Role {
    Client,
    Server,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let chain = CertificateDer::pem_file_iter(&args.svid)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", args.svid.display()))?;
    let bundle: OnceCell<Result<Bundle, trust::BundleError>> = OnceCell::new();
    let usage = match args.role {
        Role::Client => Usage::Client,
        Role::Server => Usage::Server,
    };
    // The bundle is read for the trust domain the SVID names, as the daemon picks it.
    let verified = trust::verify(
        &chain,
        |domain| {
            bundle
                .get_or_init(|| Bundle::read(&args.bundle, domain))
                .as_ref()
                .ok()
        },
        usage,
        jiff::Timestamp::now(),
    );
    if let Some(Err(err)) = bundle.get() {
        terminal::warn(format_args!("enforcer: invalid trust bundle {err}"));
        return Ok(ExitCode::FAILURE);
    }
    match verified {
        Ok(svid) => {
            terminal::text(format_args!("valid: {} until {}\n", svid.id, svid.expires))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            terminal::warn(format_args!("enforcer: invalid SVID: {err}"));
            Ok(ExitCode::FAILURE)
        }
    }
}
