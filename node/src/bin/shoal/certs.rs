//! `shoal ca init` and `shoal cert issue`: the mesh CA and node certificates, as PEM files.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use shoal::MeshCa;

use crate::{CliError, CliResult};

/// `shoal ca ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a new mesh CA: DIR/ca.pem (trusted by every node) and DIR/ca.key (secret).
    Init(CaInitArgs),
}

/// `shoal ca init`
#[derive(Debug, Args)]
pub(crate) struct CaInitArgs {
    /// Folder to write ca.pem and ca.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The CA's common name, a label for humans.
    #[arg(long, default_value = "Shoal mesh CA")]
    name: String,
    /// Replace an existing CA in DIR. Every certificate the old CA issued stops working.
    #[arg(long)]
    force: bool,
}

/// `shoal cert ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Issue a node certificate for a service (valid one year), signed by the mesh CA.
    Issue(CertIssueArgs),
}

/// `shoal cert issue`
#[derive(Debug, Args)]
pub(crate) struct CertIssueArgs {
    /// The CA folder (needs ca.key).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The service the certificate is for: 1-63 of a-z, 0-9 and `-`.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Folder to write NAME.pem and NAME.key into [default: the CA folder, where `shoal serve`
    /// looks for them].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the certificate here instead of <out>/NAME.pem.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Write the private key here instead of <out>/NAME.key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Replace existing certificate and key files.
    #[arg(long)]
    force: bool,
}

/// Runs `shoal ca ...`.
pub(crate) fn run_ca(cmd: CaCommand) -> CliResult {
    match cmd {
        CaCommand::Init(args) => ca_init(&args),
    }
}

/// Runs `shoal cert ...`.
pub(crate) fn run_cert(cmd: CertCommand) -> CliResult {
    match cmd {
        CertCommand::Issue(args) => cert_issue(&args),
    }
}

fn ca_init(args: &CaInitArgs) -> CliResult {
    let dir = &args.dir;
    let cert_path = dir.join(MeshCa::CERT_FILE);
    let key_path = dir.join(MeshCa::KEY_FILE);
    let existing = [&cert_path, &key_path]
        .into_iter()
        .find(|p| fs::symlink_metadata(p).is_ok());
    if let Some(existing) = existing
        && !args.force
    {
        return Err(CliError::new(format!(
            "a mesh CA already exists in {} ({}); pass --force to replace it (every \
                 certificate it issued stops working)",
            dir.display(),
            existing.display()
        )));
    }
    let ca = MeshCa::generate(&args.name)?;
    if existing.is_some() {
        replace_ca(&ca, dir, &cert_path, &key_path)?;
    } else {
        ca.save(dir)?;
    }
    say!("created mesh CA {:?} in {}", args.name, dir.display());
    say!(
        "  {}  certificate: every node trusts it",
        cert_path.display()
    );
    say!(
        "  {}  private key: issues certificates; keep it secret",
        key_path.display()
    );
    Ok(())
}

/// Replaces the CA files in `dir` with `ca`'s. [`MeshCa::save`] refuses to overwrite, so the
/// new CA is saved into a staging folder inside `dir` and its files renamed over the old ones.
fn replace_ca(ca: &MeshCa, dir: &Path, cert_path: &Path, key_path: &Path) -> CliResult {
    let staging = dir.join(format!(".shoal-ca-new-{}", std::process::id()));
    let io_err = |path: &Path, e: std::io::Error| {
        CliError::new(format!("could not replace {}: {e}", path.display()))
    };
    let result = (|| -> CliResult {
        ca.save(&staging)?;
        fs::rename(staging.join(MeshCa::KEY_FILE), key_path).map_err(|e| io_err(key_path, e))?;
        fs::rename(staging.join(MeshCa::CERT_FILE), cert_path).map_err(|e| io_err(cert_path, e))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

fn cert_issue(args: &CertIssueArgs) -> CliResult {
    let ca = MeshCa::load(&args.ca)?;
    if !ca.can_issue() {
        return Err(CliError::new(format!(
            "{} has no {}: certificates can only be issued where the CA key is",
            args.ca.display(),
            MeshCa::KEY_FILE
        )));
    }
    let out = args.out.as_deref().unwrap_or(&args.ca);
    let cert_path = args
        .cert
        .clone()
        .unwrap_or_else(|| out.join(format!("{}.pem", args.service)));
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| out.join(format!("{}.key", args.service)));
    if !args.force
        && let Some(existing) = [&cert_path, &key_path]
            .into_iter()
            .find(|p| fs::symlink_metadata(p).is_ok())
    {
        return Err(CliError::new(format!(
            "{} already exists; pass --force to replace it",
            existing.display()
        )));
    }
    let identity = ca.issue(&args.service)?;
    identity.save(&cert_path, &key_path)?;
    say!(
        "issued certificate for service {}: {} {}",
        args.service,
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}
