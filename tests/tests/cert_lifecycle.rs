//! Certificates while nodes run: rotation and CA rollover under load, revocation, expired and
//! not-yet-valid certificates (refused, and cut off when they expire while connected), expiry
//! warnings. Real nodes on 127.0.0.1, public API only.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use shoal::{Error, MeshCa, Message, Node, NodeEvent, RetryPolicy, SendOptions};
use shoal_tests::{Mesh, SERVER_NAME, WAIT, client_config, client_endpoint, next_event};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Messages sent during the rotation test, and how many are in flight at once.
const MESSAGES: usize = 1200;
const WINDOW: usize = 16;

fn handshake_failed_with(words: &'static str) -> impl FnMut(&NodeEvent) -> bool {
    move |event| matches!(event, NodeEvent::HandshakeFailed { reason, .. } if reason.contains(words))
}

/// Events that mean a connection went away.
fn drops(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> Vec<NodeEvent> {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, NodeEvent::PeerDown { .. }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_ca_rollover_under_load_lose_nothing_and_drop_no_connection() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    shoal_tests::wait_instances(&shop, "billing", 1).await;
    let (mut billing_events, mut shop_events) = (billing.events(), shop.events());

    // The handler records every payload; the test watches how many arrived.
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&handled);
    billing.handle("work", move |msg: Message| {
        let mut seen = seen.lock().unwrap();
        seen.insert(msg.payload().clone());
        count_tx.send_replace(seen.len());
        async { Ok(()) }
    });

    let sender = tokio::spawn({
        let shop = shop.clone();
        async move {
            let mut attempts = Vec::new();
            for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(WINDOW) {
                let mut sends = JoinSet::new();
                for i in chunk {
                    sends.spawn(shop.send("billing", Message::command("work", format!("m{i}"))));
                }
                while let Some(receipt) = sends.join_next().await {
                    let receipt = receipt.unwrap().expect("a send failed during rotation");
                    attempts.push(receipt.attempts);
                }
            }
            attempts
        }
    });

    // Rotate in the middle of the stream: a CA rollover (both CAs trusted), every node onto a
    // certificate of the new CA, then the old CA dropped.
    timeout(WAIT, count_rx.wait_for(|n| *n >= MESSAGES / 4))
        .await
        .unwrap()
        .unwrap();
    let new_ca = MeshCa::generate("rolled-over mesh").unwrap();
    for node in [&billing, &shop] {
        node.reload_trust([mesh.ca.clone(), new_ca.clone()])
            .unwrap();
    }
    let new_billing = new_ca.issue("billing").unwrap();
    billing.reload_identity(new_billing.clone()).unwrap();
    shop.reload_identity(new_ca.issue("shop").unwrap()).unwrap();
    for node in [&billing, &shop] {
        node.reload_trust([new_ca.clone()]).unwrap();
    }
    let rotated_at = *count_rx.borrow();
    eprintln!("rotated after {rotated_at} of {MESSAGES} messages");

    let attempts = timeout(Duration::from_secs(60), sender)
        .await
        .expect("sending hung")
        .unwrap();
    assert_eq!(attempts.len(), MESSAGES);
    assert!(attempts.iter().all(|&a| a == 1), "a message needed a retry");
    assert_eq!(
        handled.lock().unwrap().len(),
        MESSAGES,
        "a message was lost"
    );
    assert!(
        rotated_at < MESSAGES,
        "the rotation happened after the traffic"
    );
    assert!(drops(&mut billing_events).is_empty());
    assert!(drops(&mut shop_events).is_empty());
    assert_eq!(
        (billing.stats().connections, shop.stats().connections),
        (1, 1)
    );
    assert_eq!(billing.certificate(), *new_billing.certificate());
    assert_eq!(billing.trusted_cas().len(), 1);

    // New handshakes use the new certificate: a node of the new CA alone gets in, and a node
    // of the old CA alone is refused.
    let newcomer = Node::builder("audit")
        .identity(new_ca.issue("audit").unwrap())
        .trust(new_ca.clone())
        .peer(billing.local_addr())
        .start()
        .await
        .unwrap();
    shoal_tests::wait_instances(&newcomer, "billing", 1).await;
    // (It redials after a refusal, so a refusal before `events()` is followed by another.)
    let legacy = mesh.start("legacy", &[billing.local_addr()]).await;
    let mut legacy_events = legacy.events();
    next_event(&mut legacy_events, WAIT, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    assert!(legacy.peers().is_empty());

    for node in [&newcomer, &legacy, &shop, &billing] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_is_cut_off_within_3_seconds_and_cannot_come_back() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    shoal_tests::wait_instances(&shop, "billing", 1).await;
    shoal_tests::wait_instances(&billing, "shop", 1).await;
    let (mut billing_events, mut shop_events) = (billing.events(), shop.events());

    let started = Instant::now();
    assert!(billing.revocations().revoke(shop.certificate().serial));
    let down = next_event(
        &mut billing_events,
        Duration::from_secs(3),
        |e| matches!(e, NodeEvent::PeerDown { service, .. } if service == "shop"),
    )
    .await;
    let cut_off = started.elapsed();
    eprintln!("revoked peer cut off after {cut_off:?}: {down:?}");
    assert!(cut_off < Duration::from_secs(3));

    // The shop keeps redialling and is refused, and both sides are told why.
    let refused = next_event(
        &mut billing_events,
        WAIT,
        handshake_failed_with("is revoked"),
    )
    .await;
    eprintln!("billing: {refused:?}");
    let refused = next_event(&mut shop_events, WAIT, handshake_failed_with("is revoked")).await;
    eprintln!("shop: {refused:?}");
    assert!(billing.peers().is_empty());

    let quick = SendOptions::with_retry(RetryPolicy {
        deadline: Duration::from_millis(300),
        ..RetryPolicy::default()
    });
    let sent = shop
        .send_with("billing", Message::command("work", "x"), quick)
        .await;
    assert!(matches!(sent, Err(Error::DeadLettered(_))), "{sent:?}");

    // Reinstating (a mistaken revocation) lets the shop back in.
    billing.revocations().reinstate(&shop.certificate().serial);
    shoal_tests::wait_instances(&shop, "billing", 1).await;
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_expires_while_connected_is_cut_off() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut events = billing.events();
    let lifetime = Duration::from_secs(4);
    let short = mesh.ca.issue_valid_for("shop", lifetime).unwrap();
    let not_after = short.certificate().not_after;
    let shop = mesh
        .start_with(
            mesh.builder("shop").identity(short),
            &[billing.local_addr()],
        )
        .await;
    shoal_tests::wait_instances(&billing, "shop", 1).await;

    // The connection, authenticated while the certificate was valid, ends once it is not.
    let down = next_event(
        &mut events,
        lifetime + WAIT,
        |e| matches!(e, NodeEvent::PeerDown { service, .. } if service == "shop"),
    )
    .await;
    eprintln!("expired peer cut off: {down:?}");
    assert!(
        SystemTime::now() > not_after,
        "cut off before its certificate expired"
    );
    // The shop redials and is refused, saying why.
    next_event(
        &mut events,
        WAIT,
        handshake_failed_with("certificate expired"),
    )
    .await;
    assert!(billing.peers().is_empty());
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_revocation_list_given_at_start_refuses_the_peer() {
    let mesh = Mesh::new();
    let shop_identity = mesh.identity("shop");
    let list = mesh
        .ca
        .revoke(None, [shop_identity.certificate().serial.clone()])
        .unwrap();
    let revocations = shoal::Revocations::new();
    let trust = MeshCa::from_pem(&mesh.ca.cert_pem()).unwrap();
    let list = shoal::RevocationList::from_pem(&list.to_pem(), &[trust]).unwrap();
    revocations.replace_with_lists([&list]);
    let billing = mesh
        .start_with(mesh.builder("billing").revocations(revocations), &[])
        .await;
    let mut events = billing.events();
    let shop = mesh
        .start_with(
            Node::builder("shop")
                .identity(shop_identity)
                .trust(mesh.ca.clone()),
            &[billing.local_addr()],
        )
        .await;
    next_event(&mut events, WAIT, handshake_failed_with("is revoked")).await;
    assert!(billing.peers().is_empty());
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_refused_and_say_which() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut events = billing.events();
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 60 * 60);
    let endpoint = client_endpoint();
    let cases = [
        (
            now - 3 * day,
            now - day,
            "certificate expired",
            "has expired",
        ),
        (
            now + day,
            now + 3 * day,
            "not valid yet",
            "is not valid yet",
        ),
    ];
    for (not_before, not_after, peer_says, node_says) in cases {
        let identity = mesh
            .ca
            .issue_valid_between("shop", not_before, not_after)
            .unwrap();

        // A client presenting it (skipping the node's own checks) is refused, and the node's
        // event says why.
        let connecting = endpoint
            .connect_with(
                client_config(&mesh.ca, Some(&identity)),
                billing.local_addr(),
                SERVER_NAME,
            )
            .unwrap();
        let outcome = timeout(WAIT, async {
            let conn = connecting.await?;
            Err::<(), _>(conn.closed().await)
        })
        .await
        .expect("the refused client hung");
        eprintln!("client with a bad certificate: {outcome:?}");
        let event = next_event(&mut events, WAIT, handshake_failed_with(peer_says)).await;
        eprintln!("billing: {event:?}");

        // A node cannot start with it, and is told which.
        let started = Node::builder("shop")
            .identity(identity)
            .trust(mesh.ca.clone())
            .start()
            .await;
        match started {
            Err(Error::Identity(msg)) => assert!(msg.contains(node_says), "{msg}"),
            other => panic!(
                "expected an identity error, got {:?}",
                other.map(|n| n.id())
            ),
        }
    }
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_about_to_expire_is_warned_about_until_it_is_replaced() {
    let mesh = Mesh::new();
    let short = mesh
        .ca
        .issue_valid_for("billing", Duration::from_secs(600))
        .unwrap();
    let billing = Node::builder("billing")
        .identity(short.clone())
        .trust(mesh.ca.clone())
        .warn_before_expiry(Duration::from_secs(3600));
    // Subscribe before the warning task runs: start on this runtime, then read events.
    let billing = billing.start().await.unwrap();
    let mut events = billing.events();
    // The first warning may have been raised before `events()`; a reload raises it again.
    billing.reload_identity(short.clone()).unwrap();
    let warning = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::CertificateExpiring { .. })
    })
    .await;
    let NodeEvent::CertificateExpiring {
        serial, remaining, ..
    } = warning
    else {
        unreachable!()
    };
    assert_eq!(serial, short.certificate().serial);
    assert!(remaining <= Duration::from_secs(600), "{remaining:?}");
    assert!(
        billing
            .certificate()
            .remaining_at(SystemTime::now())
            .is_some()
    );

    // The warnings follow the loaded certificate: a renewed one raises none (the next warning
    // is about the short one, loaded again), the short one again does.
    let renewed = mesh.identity("billing");
    billing.reload_identity(renewed.clone()).unwrap();
    assert_eq!(billing.certificate().serial, renewed.certificate().serial);
    billing.reload_identity(short.clone()).unwrap();
    let again = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::CertificateExpiring { .. })
    })
    .await;
    assert!(
        matches!(&again, NodeEvent::CertificateExpiring { serial, .. } if *serial == short.certificate().serial),
        "{again:?}"
    );
    billing.shutdown().await;
}
