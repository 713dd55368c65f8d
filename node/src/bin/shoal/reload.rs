//! How a running `shoal serve` follows its certificate files: it re-reads the certificate, key,
//! CA certificates and revocation lists when one of them changes (checked every
//! `--reload-every`, 2 s by default) and at once on SIGHUP, and applies them without dropping a
//! connection. A set of files that does not check out (a certificate whose key is not written
//! yet, a list not signed by a trusted CA) is refused with a `reload refused:` line, and the node
//! keeps what it has until the files change again.
//!
//! Prints on stdout, one line each:
//! - `reloaded certificate <serial> service <name> expires <date> trusting <n> CA(s)`;
//! - `revocations <n> certificate(s) revoked`;
//! - `reload refused: <why>`.

use std::path::Path;
use std::time::Duration;

use shoal::Node;

use crate::CliResult;
use crate::common::TlsFiles;

/// What the files held when last read ([`snapshot`]).
pub(crate) struct Snapshot(Vec<Option<Vec<u8>>>);

/// Reads the files as they are now. `serve` takes the first snapshot before it prints
/// `listening`, so a file changed after that line is always noticed as a change.
pub(crate) fn snapshot(files: &TlsFiles) -> Snapshot {
    Snapshot(contents(files))
}

/// Follows `files` until the returned future is dropped, starting from `seen`. `hangups` is
/// registered before the node starts, so an early SIGHUP reloads instead of ending the process.
pub(crate) async fn follow(
    node: Node,
    files: TlsFiles,
    every: Option<Duration>,
    mut hangups: Hangups,
    mut seen: Snapshot,
) {
    loop {
        let forced = tokio::select! {
            () = tick(every) => false,
            () = hangups.next() => true,
        };
        let now = contents(&files);
        if !forced && now == seen.0 {
            continue;
        }
        seen = Snapshot(now);
        if let Err(e) = apply(&node, &files) {
            tracing::warn!("reload refused: {e}");
            say!("reload refused: {e}");
        }
    }
}

/// Reads the files and hands what changed to the node.
fn apply(node: &Node, files: &TlsFiles) -> CliResult {
    let trust = files.load_trust()?;
    let identity = files.load_identity()?;
    let lists = files.load_lists(&trust, false)?;
    let unchanged =
        node.certificate() == *identity.certificate() && same_cas(&node.trusted_cas(), &trust);
    if !unchanged {
        node.reload_tls(identity, trust.iter().cloned())?;
        let cert = node.certificate();
        say!(
            "reloaded certificate {} service {} expires {} trusting {} CA(s)",
            cert.serial,
            cert.service.as_deref().unwrap_or("(none)"),
            crate::certs::rfc3339(cert.not_after),
            trust.len()
        );
    }
    let revocations = node.revocations();
    if revocations.replace_with_lists(&lists) {
        say!("revocations {} certificate(s) revoked", revocations.len());
    }
    Ok(())
}

fn same_cas(a: &[shoal::MeshCa], b: &[shoal::MeshCa]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.cert_pem() == b.cert_pem())
}

/// Every file's bytes (`None` if unreadable), to notice a change.
fn contents(files: &TlsFiles) -> Vec<Option<Vec<u8>>> {
    files
        .all()
        .into_iter()
        .map(|path: &Path| std::fs::read(path).ok())
        .collect()
}

/// Waits `every`, or forever when polling is off.
async fn tick(every: Option<Duration>) {
    match every {
        Some(every) => tokio::time::sleep(every).await,
        None => std::future::pending().await,
    }
}

/// SIGHUP, where there is one.
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    pub(crate) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .map_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
}
