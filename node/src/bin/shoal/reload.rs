//! How a running `shoal serve` follows its certificate files: it re-reads the certificate, key,
//! CA certificates and revocation lists when one of them changes (checked every
//! `--reload-every`, 2 s by default) and at once on SIGHUP, and applies them without dropping a
//! connection. A set of files that does not check out (a certificate whose key is not written
//! yet, a list not signed by a trusted CA) is refused with a `reload refused:` line, and the node
//! keeps what it has until the files change again. The revocation lists are applied first and
//! on their own, so a refused certificate does not hold back a new list; a list that cannot be
//! read (removed before its new version is written) keeps the version read before.
//!
//! Prints on stdout, one line each:
//! - `reloaded certificate <serial> service <name> expires <date> trusting <n> CA(s)`;
//! - `revocations <n> certificate(s) revoked`;
//! - `reload refused: <why>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal::{MeshCa, Node, RevocationList};

use crate::common::TlsFiles;
use crate::{CliError, CliResult};

/// What the files held when last read ([`snapshot`]), and the revocation lists last read well.
pub(crate) struct Snapshot {
    contents: Vec<Option<Vec<u8>>>,
    lists: Lists,
}

/// Reads the files as they are now. `serve` takes the first snapshot before it prints
/// `listening`, so a file changed after that line is always noticed as a change.
pub(crate) fn snapshot(files: &TlsFiles) -> Snapshot {
    let mut lists = Lists::default();
    if let Ok(trust) = files.load_trust() {
        // The node started with these lists; what cannot be read now is reported at the next
        // change.
        let _ = lists.read(files, &trust);
    }
    Snapshot {
        contents: contents(files),
        lists,
    }
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
        if !forced && now == seen.contents {
            continue;
        }
        seen.contents = now;
        for e in apply(&node, &files, &mut seen.lists) {
            tracing::warn!("reload refused: {e}");
            say!("reload refused: {e}");
        }
    }
}

/// Reads the files and hands what changed to the node. The revocation lists come first and on
/// their own (they need only the CAs), so a certificate that is refused (one staged before it
/// is valid, say) does not hold back a new list; then the certificate, key and CAs. Returns
/// what was refused, each on its own.
fn apply(node: &Node, files: &TlsFiles, lists: &mut Lists) -> Vec<CliError> {
    let trust = match files.load_trust() {
        Ok(trust) => trust,
        Err(e) => return vec![e],
    };
    let mut refused = lists.read(files, &trust);
    let revocations = node.revocations();
    if revocations.replace_with_lists(lists.all()) {
        say!("revocations {} certificate(s) revoked", revocations.len());
    }
    if let Err(e) = reload_identity(node, files, &trust) {
        refused.push(e);
    }
    refused
}

/// Hands the certificate, key and CAs to the node if they changed.
fn reload_identity(node: &Node, files: &TlsFiles, trust: &[MeshCa]) -> CliResult {
    let identity = files.load_identity()?;
    let unchanged =
        node.certificate() == *identity.certificate() && same_cas(&node.trusted_cas(), trust);
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
    Ok(())
}

/// The revocation lists last read well, by file. While watching, a list that cannot be read
/// or does not check out (removed before its new version is written, half written) keeps what
/// was read before, so the serials it revoked stay revoked.
#[derive(Default)]
pub(crate) struct Lists(BTreeMap<PathBuf, RevocationList>);

impl Lists {
    /// Reads every list of `files` again, checked against `trust`; returns why a list was
    /// kept from before (or is missing).
    fn read(&mut self, files: &TlsFiles, trust: &[MeshCa]) -> Vec<CliError> {
        let mut refused = Vec::new();
        for (path, required) in files.list_paths() {
            match RevocationList::load(path, trust) {
                Ok(list) => {
                    self.0.insert(path.to_owned(), list);
                }
                // A CA folder's list that does not exist, and never did, is no list.
                Err(_) if !required && !path.exists() && !self.0.contains_key(path) => {}
                Err(e) if self.0.contains_key(path) => refused.push(CliError::new(format!(
                    "{e}: keeping the revocation list read before"
                ))),
                Err(e) => refused.push(e.into()),
            }
        }
        refused
    }

    /// The lists, one per file.
    fn all(&self) -> impl Iterator<Item = &RevocationList> {
        self.0.values()
    }
}

fn same_cas(a: &[MeshCa], b: &[MeshCa]) -> bool {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use shoal::{CertSerial, MeshCa, Node};

    use super::{Lists, apply};
    use crate::common::TlsFiles;

    /// A CA in a folder of its own, a node of service `svc` with files for `serve` to follow
    /// (its list as a `--crl` file, or as the CA folder's `revoked.crl` when not `named`), and
    /// the serial of another certificate, which the list revokes.
    struct Harness {
        dir: PathBuf,
        ca: MeshCa,
        files: TlsFiles,
        node: Node,
        serial: CertSerial,
    }

    impl Harness {
        async fn start(name: &str, named: bool) -> Self {
            let dir =
                std::env::temp_dir().join(format!("shoal-reload-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let ca = MeshCa::generate("reload CA").unwrap();
            ca.save(dir.join("ca")).unwrap();
            let identity = ca.issue("svc").unwrap();
            let (cert, key) = (dir.join("svc.pem"), dir.join("svc.key"));
            identity.save(&cert, &key).unwrap();
            let list = vec![dir.join("ca/revoked.crl")];
            let (lists, default_lists) = if named {
                (list, Vec::new())
            } else {
                (Vec::new(), list)
            };
            let files = TlsFiles {
                cert,
                key,
                cas: vec![dir.join("ca/ca.pem")],
                lists,
                default_lists,
            };
            let node = Node::builder("svc")
                .identity(identity)
                .trust(MeshCa::from_pem(&ca.cert_pem()).unwrap())
                .listen("127.0.0.1:0".parse().unwrap())
                .start()
                .await
                .unwrap();
            let serial = ca.issue("other").unwrap().certificate().serial.clone();
            Self {
                dir,
                ca,
                files,
                node,
                serial,
            }
        }

        /// Writes the list revoking `serials`.
        fn write_list(&self, serials: &[CertSerial]) {
            let list = self.ca.revoke(None, serials.iter().cloned()).unwrap();
            list.save(self.dir.join("ca/revoked.crl")).unwrap();
        }

        async fn stop(self) {
            self.node.shutdown().await;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A certificate staged before it is valid is refused, and the revocation list written
    /// with it is applied all the same; the two are reported apart.
    #[tokio::test]
    async fn a_refused_certificate_does_not_hold_back_a_new_revocation_list() {
        let h = Harness::start("staged", false).await;
        let now = SystemTime::now();
        h.ca.issue_valid_between(
            "svc",
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(172_800),
        )
        .unwrap()
        .save(&h.files.cert, &h.files.key)
        .unwrap();
        h.write_list(std::slice::from_ref(&h.serial));
        let refused = apply(&h.node, &h.files, &mut Lists::default());
        let revoked = h.node.revocations().is_revoked(&h.serial);
        h.stop().await;
        assert!(revoked, "the new revocation list was not applied");
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("not valid yet"), "{refused:?}");
    }

    /// A list removed before its new version is written keeps its serials revoked, for a
    /// `--crl` file and for a CA folder's `revoked.crl`; the new version is applied once
    /// written.
    #[tokio::test]
    async fn a_revocation_list_being_replaced_keeps_its_serials_revoked() {
        for named in [true, false] {
            let h = Harness::start(if named { "named" } else { "default" }, named).await;
            let mut lists = Lists::default();
            h.write_list(std::slice::from_ref(&h.serial));
            let first = apply(&h.node, &h.files, &mut lists);
            let loaded = h.node.revocations().is_revoked(&h.serial);

            std::fs::remove_file(h.dir.join("ca/revoked.crl")).unwrap();
            let missing = apply(&h.node, &h.files, &mut lists);
            let kept = h.node.revocations().is_revoked(&h.serial);

            let next = h.ca.issue("next").unwrap().certificate().serial.clone();
            h.write_list(&[h.serial.clone(), next.clone()]);
            let rewritten = apply(&h.node, &h.files, &mut lists);
            let both = h.node.revocations().is_revoked(&h.serial)
                && h.node.revocations().is_revoked(&next);
            h.stop().await;

            assert!(first.is_empty() && loaded, "named {named}: {first:?}");
            assert!(
                kept,
                "named {named}: the list's serials were un-revoked while it was missing"
            );
            assert_eq!(missing.len(), 1, "named {named}: {missing:?}");
            assert!(
                missing[0]
                    .to_string()
                    .contains("keeping the revocation list read before"),
                "{missing:?}"
            );
            assert!(rewritten.is_empty() && both, "named {named}: {rewritten:?}");
        }
    }
}
