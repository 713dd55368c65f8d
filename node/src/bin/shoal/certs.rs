//! `shoal ca init` and `shoal cert issue|rotate|revoke|show`: the mesh CA, node certificates and
//! revocation lists, as PEM files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use shoal::{CertSerial, CertificateInfo, Identity, MeshCa, RevocationList};

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
    /// Replace a service's certificate and key with new ones (a running `shoal serve` that
    /// uses these files reloads them without dropping connections).
    Rotate(CertRotateArgs),
    /// Revoke certificates: add them to the CA's signed revocation list (CA/revoked.crl),
    /// which nodes enforce (`shoal serve` re-reads it when it changes).
    Revoke(CertRevokeArgs),
    /// Print what a certificate says (service, serial, validity), or what a revocation list
    /// revokes.
    Show(CertShowArgs),
}

/// `shoal cert issue`
#[derive(Debug, Args)]
pub(crate) struct CertIssueArgs {
    #[command(flatten)]
    target: CertTarget,
    /// Replace existing certificate and key files.
    #[arg(long)]
    force: bool,
}

/// `shoal cert rotate`
#[derive(Debug, Args)]
pub(crate) struct CertRotateArgs {
    #[command(flatten)]
    target: CertTarget,
    /// Also revoke the certificate being replaced (when its key may have leaked).
    #[arg(long)]
    revoke_old: bool,
}

/// `shoal cert revoke`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true)))]
pub(crate) struct CertRevokeArgs {
    /// The CA folder that issued the certificates (needs ca.key).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// A certificate file to revoke. Repeatable.
    #[arg(long = "cert", value_name = "FILE", group = "what")]
    certs: Vec<PathBuf>,
    /// A serial to revoke (hex, as `shoal cert show` prints it). Repeatable.
    #[arg(long = "serial", value_name = "HEX", group = "what")]
    serials: Vec<CertSerial>,
    /// The revocation list to extend (created if missing) [default: <CA folder>/revoked.crl].
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
}

/// `shoal cert show`
#[derive(Debug, Args)]
pub(crate) struct CertShowArgs {
    /// A certificate (PEM) or a revocation list (PEM, `X509 CRL`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// For a revocation list: the CA folder or ca.pem that must have signed it [default: the
    /// list's folder].
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
}

/// Which certificate `issue` and `rotate` write, and for how long.
#[derive(Debug, Args)]
struct CertTarget {
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
    /// How many days the certificate is valid.
    #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
}

impl CertTarget {
    /// The CA (which must hold its key), and where the certificate and key go.
    fn resolve(&self) -> CliResult<(MeshCa, PathBuf, PathBuf)> {
        let ca = load_issuing_ca(&self.ca)?;
        let out = self.out.as_deref().unwrap_or(&self.ca);
        let cert_path = self
            .cert
            .clone()
            .unwrap_or_else(|| out.join(format!("{}.pem", self.service)));
        let key_path = self
            .key
            .clone()
            .unwrap_or_else(|| out.join(format!("{}.key", self.service)));
        Ok((ca, cert_path, key_path))
    }

    /// Issues the certificate.
    fn issue(&self, ca: &MeshCa) -> CliResult<Identity> {
        let lifetime = Duration::from_secs(u64::from(self.days) * 24 * 60 * 60);
        Ok(ca.issue_valid_for(&self.service, lifetime)?)
    }
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
        CertCommand::Rotate(args) => cert_rotate(&args),
        CertCommand::Revoke(args) => cert_revoke(&args),
        CertCommand::Show(args) => cert_show(&args),
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
    let (ca, cert_path, key_path) = args.target.resolve()?;
    if !args.force
        && let Some(existing) = [&cert_path, &key_path]
            .into_iter()
            .find(|p| fs::symlink_metadata(p).is_ok())
    {
        return Err(CliError::new(format!(
            "{} already exists; pass --force to replace it, or use `shoal cert rotate`",
            existing.display()
        )));
    }
    let identity = args.target.issue(&ca)?;
    identity.save(&cert_path, &key_path)?;
    say!(
        "issued certificate for service {}: {} {} serial {} expires {}",
        args.target.service,
        cert_path.display(),
        key_path.display(),
        identity.certificate().serial,
        rfc3339(identity.certificate().not_after)
    );
    Ok(())
}

fn cert_rotate(args: &CertRotateArgs) -> CliResult {
    let (ca, cert_path, key_path) = args.target.resolve()?;
    let old = fs::read_to_string(&cert_path)
        .ok()
        .and_then(|pem| CertificateInfo::from_pem(&pem).ok());
    if args.revoke_old && old.is_none() {
        return Err(CliError::new(format!(
            "--revoke-old: {} is not a readable certificate",
            cert_path.display()
        )));
    }
    let identity = args.target.issue(&ca)?;
    // The key is written first, then the certificate, each in one step: a node watching the
    // files reloads once both match.
    identity.save(&cert_path, &key_path)?;
    let new = identity.certificate();
    let old_serial = old
        .as_ref()
        .map_or_else(|| "none".to_owned(), |old| old.serial.to_string());
    say!(
        "rotated certificate for service {}: serial {old_serial} -> {} expires {} ({} {})",
        args.target.service,
        new.serial,
        rfc3339(new.not_after),
        cert_path.display(),
        key_path.display()
    );
    if let Some(old) = old.filter(|_| args.revoke_old) {
        let crl = args.target.ca.join(RevocationList::FILE);
        revoke(&ca, &crl, vec![old.serial])?;
    }
    Ok(())
}

fn cert_revoke(args: &CertRevokeArgs) -> CliResult {
    let ca = load_issuing_ca(&args.ca)?;
    let mut serials = args.serials.clone();
    for path in &args.certs {
        let pem = fs::read_to_string(path)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
        let info = CertificateInfo::from_pem(&pem)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        serials.push(info.serial);
    }
    let crl = args
        .crl
        .clone()
        .unwrap_or_else(|| args.ca.join(RevocationList::FILE));
    revoke(&ca, &crl, serials)
}

/// Adds `serials` to the list in `crl` (created if missing), signed by `ca`.
fn revoke(ca: &MeshCa, crl: &Path, serials: Vec<CertSerial>) -> CliResult {
    let previous = if crl.exists() {
        Some(RevocationList::load(crl, std::slice::from_ref(ca))?)
    } else {
        None
    };
    for serial in &serials {
        say!("revoked {serial}");
    }
    let list = ca.revoke(previous.as_ref(), serials)?;
    list.save(crl)?;
    say!(
        "revocation list {} number {} revokes {} certificate(s)",
        crl.display(),
        list.number(),
        list.len()
    );
    Ok(())
}

fn cert_show(args: &CertShowArgs) -> CliResult {
    let text = fs::read_to_string(&args.file)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", args.file.display())))?;
    if text.contains("-----BEGIN X509 CRL-----") {
        let ca_path = args.ca.clone().unwrap_or_else(|| {
            args.file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        });
        let ca = if ca_path.is_dir() {
            MeshCa::load_cert(ca_path.join(MeshCa::CERT_FILE))?
        } else {
            MeshCa::load_cert(&ca_path)?
        };
        let list = RevocationList::from_pem(&text, &[ca])?;
        say!(
            "revocation list number {} issued {} revokes {} certificate(s)",
            list.number(),
            rfc3339(list.issued()),
            list.len()
        );
        for serial in list.serials() {
            say!("revoked {serial}");
        }
        return Ok(());
    }
    let info = CertificateInfo::from_pem(&text)
        .map_err(|e| CliError::new(format!("{}: {e}", args.file.display())))?;
    say!("service {}", info.service.as_deref().unwrap_or("(none)"));
    say!("serial {}", info.serial);
    say!("not_before {}", rfc3339(info.not_before));
    say!("not_after {}", rfc3339(info.not_after));
    Ok(())
}

/// The CA folder `dir`, which must hold its key.
fn load_issuing_ca(dir: &Path) -> CliResult<MeshCa> {
    let ca = MeshCa::load(dir)?;
    if !ca.can_issue() {
        return Err(CliError::new(format!(
            "{} has no {}: certificates can only be issued and revoked where the CA key is",
            dir.display(),
            MeshCa::KEY_FILE
        )));
    }
    Ok(ca)
}

/// `2026-05-01T12:00:00Z`
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
