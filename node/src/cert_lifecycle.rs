//! Certificates while the node runs: reloading its certificate and trusted CAs, revoking
//! peers' certificates, and warning before its own certificate expires.
//!
//! Every handshake reads the node's [`LiveTls`](crate::tls::LiveTls), so a reload changes what
//! the next handshake presents and accepts; connections already up stay up (a TLS connection
//! is authenticated once, at its handshake). Two things end them all the same, because an
//! existing connection would otherwise keep working until it drops for some other reason: a
//! peer whose certificate becomes revoked is disconnected at once, and one whose certificate
//! expires is disconnected when it does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::identity::{CertSerial, CertificateInfo, Identity, MeshCa, Revocations};
use crate::runtime::Driver;
use crate::transport::connection::CloseCode;
use crate::{Error, Node, NodeEvent};

/// The default warning period before this node's certificate expires (and at most a third of
/// its lifetime, see [`crate::NodeBuilder::warn_before_expiry`]).
const DEFAULT_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Expiry warnings repeat this often; the check also wakes at least this often, so a wall
/// clock that jumps is noticed.
const REPEAT_WARNING: Duration = Duration::from_secs(24 * 60 * 60);

impl Node {
    /// Replaces this node's certificate and the mesh CAs it trusts, without dropping a
    /// connection: handshakes from now on present `identity` and accept peers whose
    /// certificate one of `trust` issued; connections already up stay up.
    ///
    /// Checked first, like at start: `identity` must be for this node's service, valid now,
    /// issued by one of `trust`, and not revoked. On error nothing changes. A CA rollover is
    /// three reloads: every node trusts both CAs, then each node takes a certificate from the
    /// new CA, then every node drops the old CA.
    pub fn reload_tls(
        &self,
        identity: Identity,
        trust: impl IntoIterator<Item = MeshCa>,
    ) -> Result<(), Error> {
        self.check_service(&identity)?;
        let trust: Vec<MeshCa> = trust.into_iter().collect();
        self.reloaded(self.driver().tls.reload(Some(identity), Some(trust)))
    }

    /// Replaces this node's certificate (a renewed one, say) and keeps the trusted CAs; see
    /// [`Node::reload_tls`].
    pub fn reload_identity(&self, identity: Identity) -> Result<(), Error> {
        self.check_service(&identity)?;
        self.reloaded(self.driver().tls.reload(Some(identity), None))
    }

    /// Replaces the mesh CAs this node trusts and keeps its certificate, which one of them must
    /// have issued; see [`Node::reload_tls`].
    pub fn reload_trust(&self, trust: impl IntoIterator<Item = MeshCa>) -> Result<(), Error> {
        let trust: Vec<MeshCa> = trust.into_iter().collect();
        self.reloaded(self.driver().tls.reload(None, Some(trust)))
    }

    /// What this node's current certificate says: service, serial, and when it expires.
    pub fn certificate(&self) -> CertificateInfo {
        self.driver().tls.material().identity.certificate().clone()
    }

    /// The mesh CAs this node trusts now.
    pub fn trusted_cas(&self) -> Vec<MeshCa> {
        self.driver().tls.material().trust.clone()
    }

    /// The certificates this node refuses (the handle given to
    /// [`crate::NodeBuilder::revocations`], or the node's own). Revoking a serial through it
    /// refuses that certificate's new handshakes at once and closes its live connections
    /// within a second.
    pub fn revocations(&self) -> Revocations {
        self.driver().tls.revocations().clone()
    }

    fn check_service(&self, identity: &Identity) -> Result<(), Error> {
        match identity.service() {
            Some(certified) if certified != self.service() => Err(Error::Identity(format!(
                "the certificate is for service `{certified}`, this node is `{}`",
                self.service()
            ))),
            _ => Ok(()),
        }
    }

    fn reloaded(&self, result: Result<(), Error>) -> Result<(), Error> {
        match &result {
            Ok(()) => {
                let info = self.certificate();
                tracing::info!(serial = %info.serial, cas = self.trusted_cas().len(), "TLS material reloaded");
            }
            Err(e) => tracing::warn!("TLS reload refused: {e}"),
        }
        result
    }
}

/// Starts the node's certificate tasks: expiry warnings, and closing revoked or expired peers.
pub(crate) fn spawn_tasks(driver: &Arc<Driver>) {
    driver.tasks.spawn(warn_before_expiry(Arc::clone(driver)));
    driver.tasks.spawn(close_revoked_peers(Arc::clone(driver)));
    driver.tasks.spawn(close_expired_peers(Arc::clone(driver)));
}

/// How long before `cert` expires the node warns.
fn warning_period(configured: Option<Duration>, cert: &CertificateInfo) -> Duration {
    configured.unwrap_or_else(|| DEFAULT_WARNING.min(cert.lifetime() / 3))
}

/// Warns (log and [`NodeEvent::CertificateExpiring`]) when the node's certificate is about to
/// expire, again every day and after every reload, until a certificate that is not about to
/// expire is loaded.
async fn warn_before_expiry(shared: Arc<Driver>) {
    let mut reloads = shared.tls.watch();
    loop {
        let cert = reloads.borrow_and_update().identity.certificate().clone();
        let period = warning_period(shared.config.warn_before_expiry, &cert);
        let wait = match cert.remaining_at(SystemTime::now()) {
            Some(remaining) if remaining > period => (remaining - period).min(REPEAT_WARNING),
            remaining => {
                let remaining = remaining.unwrap_or(Duration::ZERO);
                if remaining.is_zero() {
                    tracing::error!(serial = %cert.serial, "this node's certificate has expired: \
                        peers refuse new connections with it; load a new one (Node::reload_identity)");
                } else {
                    tracing::warn!(serial = %cert.serial, "this node's certificate expires in {} \
                        hours; load a new one before (Node::reload_identity)", remaining.as_secs() / 3600);
                }
                shared.emit(NodeEvent::CertificateExpiring {
                    serial: cert.serial.clone(),
                    not_after: cert.not_after,
                    remaining,
                });
                if remaining.is_zero() {
                    REPEAT_WARNING
                } else {
                    remaining.min(REPEAT_WARNING)
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = reloads.changed() => if changed.is_err() { return },
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// Closes the connections of peers whose certificate is revoked, whenever the revocations
/// change. A handshake that was under way when they changed may register its peer a moment
/// later, so the connections are looked at again once such a handshake must have finished.
async fn close_revoked_peers(shared: Arc<Driver>) {
    let mut changes = shared.tls.revocations().watch();
    let look_again_after = shared
        .config
        .handshake_timeout
        .saturating_add(Duration::from_millis(100));
    let mut look_again = false;
    loop {
        let revoked = changes.borrow_and_update().clone();
        close_revoked(&shared, &revoked);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { return }
                look_again = true;
            }
            () = tokio::time::sleep(look_again_after), if look_again => look_again = false,
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// Closes every live connection whose peer presented a certificate in `revoked`.
fn close_revoked(driver: &Driver, revoked: &BTreeSet<CertSerial>) {
    if revoked.is_empty() {
        return;
    }
    for (_, io) in driver.connections() {
        // Parsed at the handshake (`ConnIo::peer_certificate`), not here: this runs for
        // every live connection at every change of the revocations.
        let info = &io.peer_certificate;
        if revoked.contains(&info.serial) {
            tracing::warn!(serial = %info.serial, addr = %io.conn.remote_address(), service = ?info.service,
                "closing the connection of a peer whose certificate was revoked");
            io.conn
                .close(CloseCode::Revoked.into(), b"certificate revoked");
        }
    }
}

/// Closes the connections of peers whose certificate expired while they were connected: a
/// peer that connected a moment before its certificate expired would otherwise stay in for as
/// long as its connection lasts (keep-alives keep it up), which defeats short-lived
/// certificates. Wakes at the next expiry among the live connections, when a connection comes
/// or goes, and at least every [`EXPIRY_RECHECK`] (the wall clock may jump).
async fn close_expired_peers(shared: Arc<Driver>) {
    let mut changes = shared.peer_changes();
    loop {
        let now = SystemTime::now();
        let wait = close_expired(&shared, now)
            .and_then(|next| next.duration_since(now).ok())
            .map_or(EXPIRY_RECHECK, |d| {
                (d + Duration::from_millis(1)).min(EXPIRY_RECHECK)
            });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = changes.changed() => if changed.is_err() { return },
            () = shared.stopping.cancelled() => return,
        }
    }
}

/// How often the expiry of live peers' certificates is looked at, at least.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);

/// Closes every live connection whose peer's certificate is no longer valid at `now`; returns
/// when the first of the others expires.
fn close_expired(driver: &Driver, now: SystemTime) -> Option<SystemTime> {
    let mut next: Option<SystemTime> = None;
    for (_, io) in driver.connections() {
        // Parsed at the handshake, not here: this runs for every live connection whenever a
        // connection comes or goes, which across a mesh starting up would be a number of
        // parses that grows with the square of its peers.
        let info = &io.peer_certificate;
        if now > info.not_after {
            tracing::warn!(serial = %info.serial, addr = %io.conn.remote_address(), service = ?info.service,
                "closing the connection of a peer whose certificate expired");
            io.conn
                .close(CloseCode::Expired.into(), b"certificate expired");
        } else {
            next = Some(next.map_or(info.not_after, |n| n.min(info.not_after)));
        }
    }
    next
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::tls::parse_count;

    /// Peers that connect to one node, one after another, in the parse count test.
    const PEERS: usize = 8;
    const WAIT: Duration = Duration::from_secs(10);

    /// The certificate tasks look at every live connection whenever a connection comes or
    /// goes; each peer's certificate is parsed once, at its handshake, however many changes
    /// follow. (When the expiry task parsed it at each look, 8 peers connecting one after
    /// another cost 60 parses instead of 16: the hub's task parsed 1 + 2 + ... + 8, each
    /// peer's its one.) On a current-thread runtime, so every node's tasks run on the thread
    /// whose parses are counted; they run whenever the test waits.
    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_certificate_is_parsed_once_per_connection_however_many_peers_connect() {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let ca = MeshCa::generate("parse count").unwrap();
        let hub = Node::builder("hub")
            .identity(ca.issue("hub").unwrap())
            .trust(ca.clone())
            .listen(lo)
            .start()
            .await
            .unwrap();
        let before = parse_count::parsed();
        let mut peers = Vec::new();
        for n in 1..=PEERS {
            let peer = Node::builder("peer")
                .identity(ca.issue("peer").unwrap())
                .trust(ca.clone())
                .listen(lo)
                .peer(hub.local_addr())
                .start()
                .await
                .unwrap();
            // Both sides admitted the connection: both handshakes read the certificate.
            hub.wait_for_instances("peer", n, WAIT).await.unwrap();
            peer.wait_for_instances("hub", 1, WAIT).await.unwrap();
            peers.push(peer);
        }
        let parsed = parse_count::parsed() - before;
        tokio::time::timeout(WAIT, async {
            for peer in peers {
                peer.shutdown().await;
            }
            hub.shutdown().await;
        })
        .await
        .unwrap();
        assert_eq!(
            parsed,
            2 * PEERS,
            "{PEERS} connections, each side's handshake parsing the other's certificate once"
        );
    }

    #[test]
    fn the_default_warning_period_is_a_month_or_a_third_of_the_lifetime() {
        let cert = |lifetime: Duration| {
            let not_before = SystemTime::UNIX_EPOCH;
            CertificateInfo {
                service: None,
                serial: CertSerial::from_bytes(&[1]),
                not_before,
                not_after: not_before + lifetime,
            }
        };
        let day = Duration::from_secs(24 * 60 * 60);
        assert_eq!(warning_period(None, &cert(365 * day)), DEFAULT_WARNING);
        assert_eq!(warning_period(None, &cert(3 * day)), day);
        assert_eq!(warning_period(Some(day), &cert(365 * day)), day);
    }
}
