//! Handshakes after the live TLS material changed: a reloaded identity, a CA rollover, a
//! revoked certificate, an expired or not yet valid one.

use super::*;

/// An echo server on `live`: answers every bidirectional stream with what it read, and reports
/// the serial of each client's certificate.
fn echo_server(live: &LiveTls) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<CertSerial>) {
    let config = server_config(live, transport()).unwrap();
    let endpoint = quinn::Endpoint::server(config, LOCALHOST.parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let _ = tx.send(peer_certificate_info(&conn).unwrap().serial);
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let got = recv.read_to_end(64).await.unwrap_or_default();
                    let _ = send.write_all(&got).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (addr, rx)
}

async fn dial(endpoint: &quinn::Endpoint, live: &LiveTls, addr: SocketAddr) -> quinn::Connection {
    let config = client_config(live, transport()).unwrap();
    timeout(
        PROMPT,
        endpoint.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .expect("handshake hung")
    .expect("handshake failed")
}

#[tokio::test]
async fn a_reload_changes_the_next_handshake_and_keeps_live_connections() {
    let ca = MeshCa::generate("rotation").unwrap();
    let (old, new) = (ca.issue("orders").unwrap(), ca.issue("orders").unwrap());
    let server_tls = live(&old, &ca);
    let (addr, mut clients_seen) = echo_server(&server_tls);
    let client_tls = live(&ca.issue("billing").unwrap(), &ca);
    let endpoint = client_endpoint();

    let first = dial(&endpoint, &client_tls, addr).await;
    assert_eq!(
        peer_certificate_info(&first).map(|i| i.serial).as_ref(),
        Some(&old.certificate().serial)
    );
    echo(&first).await;

    server_tls.reload(Some(new.clone()), None).unwrap();
    let client_new = ca.issue("billing").unwrap();
    client_tls.reload(Some(client_new.clone()), None).unwrap();

    let second = dial(&endpoint, &client_tls, addr).await;
    assert_eq!(
        peer_certificate_info(&second).map(|i| i.serial).as_ref(),
        Some(&new.certificate().serial)
    );
    echo(&second).await;
    echo(&first).await; // the first connection is untouched
    assert!(first.close_reason().is_none());
    let seen: Vec<CertSerial> = [clients_seen.recv().await, clients_seen.recv().await]
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(seen[1], client_new.certificate().serial, "{seen:?}");

    // A reload that does not check out changes nothing.
    let foreign = MeshCa::generate("foreign").unwrap();
    let err = server_tls
        .reload(Some(foreign.issue("orders").unwrap()), None)
        .unwrap_err();
    assert!(
        err.to_string().contains("not issued by a trusted mesh CA"),
        "{err}"
    );
    assert_eq!(
        server_tls.material().identity.certificate(),
        new.certificate()
    );
    let third = dial(&endpoint, &client_tls, addr).await;
    assert_eq!(
        peer_certificate_info(&third).map(|i| i.serial).as_ref(),
        Some(&new.certificate().serial)
    );
}

#[tokio::test]
async fn two_trust_anchors_side_by_side_carry_a_ca_rollover() {
    let old_ca = MeshCa::generate("old mesh").unwrap();
    let new_ca = MeshCa::generate("new mesh").unwrap();
    let both = vec![old_ca.clone(), new_ca.clone()];
    let server_tls = LiveTls::new(
        old_ca.issue("orders").unwrap(),
        both.clone(),
        Revocations::new(),
    )
    .unwrap();
    let (addr, _seen) = echo_server(&server_tls);
    let endpoint = client_endpoint();

    // Mid-rollover, clients of either CA get in.
    let old_client = live(&old_ca.issue("billing").unwrap(), &old_ca);
    let new_client =
        LiveTls::new(new_ca.issue("billing").unwrap(), both, Revocations::new()).unwrap();
    echo(&dial(&endpoint, &old_client, addr).await).await;
    echo(&dial(&endpoint, &new_client, addr).await).await;

    // The rollover ends: the server moves to the new CA alone.
    server_tls
        .reload(
            Some(new_ca.issue("orders").unwrap()),
            Some(vec![new_ca.clone()]),
        )
        .unwrap();
    echo(&dial(&endpoint, &new_client, addr).await).await;
    let config = client_config(&old_client, transport()).unwrap();
    let refused = timeout(
        PROMPT,
        endpoint.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .expect("handshake hung");
    assert!(refused.is_err(), "a client of the retired CA got in");

    // Dropping the CA that issued the node's own certificate is refused.
    let err = server_tls.reload(None, Some(vec![old_ca])).unwrap_err();
    assert!(
        err.to_string().contains("not issued by a trusted mesh CA"),
        "{err}"
    );
}

#[tokio::test]
async fn a_revoked_client_is_refused_with_its_serial_on_both_sides() {
    let ca = MeshCa::generate("revocation").unwrap();
    let revoked = ca.issue("billing").unwrap();
    let revocations = Revocations::new();
    revocations.revoke(revoked.certificate().serial.clone());
    let server_tls =
        LiveTls::new(ca.issue("orders").unwrap(), vec![ca.clone()], revocations).unwrap();
    let config = server_config(&server_tls, transport()).unwrap();
    let server = quinn::Endpoint::server(config, LOCALHOST.parse().unwrap()).unwrap();
    let client = client_endpoint();
    let connecting = client
        .connect_with(
            raw_client(&ca, Some(&revoked)),
            server.local_addr().unwrap(),
            SERVER_NAME,
        )
        .unwrap();
    // The client's side of the handshake may complete before the server has checked its
    // certificate; then the connection is closed with the server's reason.
    let client_saw = async {
        match timeout(PROMPT, connecting).await.expect("client hung") {
            Ok(conn) => timeout(PROMPT, conn.closed()).await.expect("not closed"),
            Err(e) => e,
        }
    };
    let (server_err, client_err) = tokio::join!(assert_server_refuses(&server), client_saw);
    let serial = revoked.certificate().serial.to_string();
    for (side, reason) in [("server", server_err), ("client", client_err)] {
        let reason = reason.to_string();
        eprintln!("{side}: {reason}");
        assert!(
            reason.contains("is revoked") && reason.contains(&serial),
            "{reason}"
        );
        assert!(reason.contains("`billing`"), "{reason}");
    }
}

#[tokio::test]
async fn a_revoked_server_is_refused_by_the_dialling_node() {
    let ca = MeshCa::generate("revocation").unwrap();
    let server_id = ca.issue("orders").unwrap();
    let (addr, _seen) = echo_server(&live(&server_id, &ca));
    let client_tls = live(&ca.issue("billing").unwrap(), &ca);
    let endpoint = client_endpoint();
    echo(&dial(&endpoint, &client_tls, addr).await).await;

    client_tls
        .revocations()
        .revoke(server_id.certificate().serial.clone());
    let config = client_config(&client_tls, transport()).unwrap();
    let err = timeout(
        PROMPT,
        endpoint.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .expect("handshake hung")
    .expect_err("the client accepted a revoked server");
    assert!(err.to_string().contains("is revoked"), "{err}");

    // A node cannot start, or reload, with a revoked certificate of its own.
    let renewed = ca.issue("billing").unwrap();
    client_tls
        .revocations()
        .revoke(renewed.certificate().serial.clone());
    let err = client_tls.reload(Some(renewed), None).unwrap_err();
    assert!(err.to_string().contains("is revoked"), "{err}");
}

/// A certificate whose `notAfter` passed within the current second is refused, as the node's
/// expiry task cuts such a peer off (webpki compares whole seconds, and rustls hands it now
/// rounded down, which would let the certificate in for the rest of that second). Tried early
/// in a second, so that the handshake ends within it; again if it did not.
#[tokio::test]
async fn a_certificate_expired_within_the_current_second_is_refused() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let ca = MeshCa::generate("validity").unwrap();
    let (server, addr) = server(&ca.issue("orders").unwrap(), &ca);
    let client = client_endpoint();
    let whole_second = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    for _ in 0..5 {
        // Wait (at most a second) for a moment just past a second's start.
        let now = loop {
            let now = SystemTime::now();
            let millis = now.duration_since(UNIX_EPOCH).unwrap().subsec_millis();
            if (20..300).contains(&millis) {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let second = UNIX_EPOCH + Duration::from_secs(whole_second(now));
        let hour = Duration::from_secs(3600);
        let expired = ca
            .issue_valid_between("billing", second - hour, second)
            .unwrap();
        let connecting = client
            .connect_with(raw_client(&ca, Some(&expired)), addr, SERVER_NAME)
            .unwrap();
        let (server_err, ()) = tokio::join!(
            assert_server_refuses(&server),
            assert_client_cut_off(connecting)
        );
        assert!(
            server_err.to_string().contains("certificate expired"),
            "{server_err}"
        );
        if whole_second(SystemTime::now()) == whole_second(now) {
            return;
        }
    }
    panic!("no handshake ended within the second it started in, in 5 tries");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused_and_the_error_says_which() {
    use std::time::SystemTime;
    let ca = MeshCa::generate("validity").unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let expired = ca
        .issue_valid_between("billing", now - 48 * hour, now - 24 * hour)
        .unwrap();
    let early = ca
        .issue_valid_between("billing", now + 24 * hour, now + 48 * hour)
        .unwrap();
    let (server, addr) = server(&ca.issue("orders").unwrap(), &ca);
    let client = client_endpoint();

    for (identity, says) in [(&expired, "certificate expired"), (&early, "not valid yet")] {
        let connecting = client
            .connect_with(raw_client(&ca, Some(identity)), addr, SERVER_NAME)
            .unwrap();
        let (server_err, ()) = tokio::join!(
            assert_server_refuses(&server),
            assert_client_cut_off(connecting)
        );
        assert!(server_err.to_string().contains(says), "{server_err}");

        // A node holding such a certificate cannot start (or reload) with it, and is told why.
        let err = LiveTls::new(identity.clone(), vec![ca.clone()], Revocations::new())
            .unwrap_err()
            .to_string();
        let why = if says == "not valid yet" {
            "is not valid yet"
        } else {
            "has expired"
        };
        assert!(err.contains(why), "{err}");
    }
}
