//! Mutual TLS between nodes: only certificates from the mesh CA get in, every client must
//! present one, and a certificate only vouches for the service it was issued for.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shoal::{Error, MeshCa, Message, Node, NodeEvent, RetryPolicy, SendOptions};
use shoal_proto::{Frame, Hello, Limits, PROTOCOL_VERSION, codec};
use shoal_tests::{
    Mesh, RawPeer, SERVER_NAME, WAIT, client_config, client_config_with_alpn, client_endpoint,
    fresh_node_id, loopback, next_event,
};
use tokio::time::timeout;

fn handshake_failed(event: &NodeEvent) -> bool {
    matches!(event, NodeEvent::HandshakeFailed { .. })
}

/// Tries to use a connection as a Shoal client would (hello out, the node's stream in);
/// returns the first error. Bounded by [`WAIT`]: a refused client must fail, not hang.
async fn try_to_talk(connecting: quinn::Connecting) -> Result<(), String> {
    let steps = async {
        let conn = connecting.await.map_err(|e| format!("handshake: {e}"))?;
        let mut send = conn.open_uni().await.map_err(|e| format!("open: {e}"))?;
        let mut buf = bytes::BytesMut::new();
        let hello = Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: fresh_node_id(),
            service: "shop".into(),
            listen_addrs: Vec::new(),
        });
        codec::encode(&hello, &Limits::default(), &mut buf).unwrap();
        send.write_all(&buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut recv = conn
            .accept_uni()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let mut byte = [0u8; 1];
        recv.read_exact(&mut byte)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(())
    };
    timeout(WAIT, steps)
        .await
        .expect("a refused client hung instead of failing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_certificate_from_another_ca_cannot_connect() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut billing_events = billing.events();

    // A well-formed node of another mesh: its own CA, trusting only that CA.
    let foreign = MeshCa::generate("foreign mesh").unwrap();
    let intruder = timeout(
        WAIT,
        Node::builder("shop")
            .listen(loopback())
            .identity(foreign.issue("shop").unwrap())
            .trust(foreign.clone())
            .peer(billing.local_addr())
            .start(),
    )
    .await
    .unwrap()
    .unwrap();

    let event = next_event(&mut billing_events, WAIT, handshake_failed).await;
    let NodeEvent::HandshakeFailed { reason, .. } = &event else {
        unreachable!()
    };
    eprintln!("the listening node refused the foreign node: {reason}");
    assert!(billing.stats().handshake_failures > 0);

    let policy = RetryPolicy {
        deadline: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    let err = timeout(
        WAIT,
        intruder.send_with(
            "billing",
            Message::command("create-invoice", "x"),
            SendOptions::with_retry(policy),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    let Error::DeadLettered(letter) = err else {
        panic!("{err:?}")
    };
    assert!(letter.last_failure.contains("no instance"), "{letter}");
    assert!(intruder.peers().is_empty(), "{:?}", intruder.peers());
    assert!(billing.peers().is_empty(), "{:?}", billing.peers());
    assert!(intruder.stats().handshake_failures > 0);
    assert_eq!(billing.stats().connections, 0);
    intruder.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_does_not_dial_into_a_foreign_mesh() {
    let mesh = Mesh::new();
    let foreign = MeshCa::generate("foreign mesh").unwrap();
    let stranger = timeout(
        WAIT,
        Node::builder("billing")
            .listen(loopback())
            .identity(foreign.issue("billing").unwrap())
            .trust(foreign.clone())
            .start(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut stranger_events = stranger.events();
    let shop = mesh.start("shop", &[stranger.local_addr()]).await;
    // The dialling node refuses the foreign server's certificate; the foreign node sees the
    // handshake fail too.
    next_event(&mut stranger_events, WAIT, handshake_failed).await;
    assert!(
        shop.wait_for_instances("billing", 1, Duration::from_millis(300))
            .await
            .is_err()
    );
    assert!(shop.stats().handshake_failures > 0);
    assert!(shop.peers().is_empty());
    shop.shutdown().await;
    stranger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused_promptly() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut events = billing.events();
    let endpoint = client_endpoint();
    let started = Instant::now();
    let connecting = endpoint
        .connect_with(
            client_config(&mesh.ca, None),
            billing.local_addr(),
            SERVER_NAME,
        )
        .unwrap();
    let err = try_to_talk(connecting)
        .await
        .expect_err("a client without a certificate got through");
    eprintln!(
        "anonymous client refused after {:?}: {err}",
        started.elapsed()
    );
    next_event(&mut events, WAIT, handshake_failed).await;
    assert!(billing.stats().handshake_failures > 0);
    assert!(billing.peers().is_empty());
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_speaking_another_protocol_version_is_refused() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut events = billing.events();
    let identity = mesh.identity("shop");
    let endpoint = client_endpoint();
    let connecting = endpoint
        .connect_with(
            // A node of protocol 1: runs of messages and ranged acks came with protocol 2.
            client_config_with_alpn(&mesh.ca, Some(&identity), b"shoal/1"),
            billing.local_addr(),
            SERVER_NAME,
        )
        .unwrap();
    let err = try_to_talk(connecting)
        .await
        .expect_err("a client with another ALPN got through");
    eprintln!("shoal/1 client refused: {err}");
    next_event(&mut events, WAIT, handshake_failed).await;
    assert!(billing.peers().is_empty());
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_service_fails_at_start() {
    let mesh = Mesh::new();
    let result = Node::builder("b")
        .listen(loopback())
        .identity(mesh.identity("a"))
        .trust(mesh.ca.clone())
        .start()
        .await;
    match result {
        Err(Error::Identity(msg)) => {
            assert!(msg.contains("`a`") && msg.contains("`b`"), "{msg}");
        }
        other => panic!("expected an identity error, got {other:?}"),
    }

    // A certificate from another CA fails at start too, naming the problem.
    let foreign = MeshCa::generate("foreign mesh").unwrap();
    let result = Node::builder("b")
        .listen(loopback())
        .identity(foreign.issue("b").unwrap())
        .trust(mesh.ca.clone())
        .start()
        .await;
    assert!(
        matches!(&result, Err(Error::Identity(_))),
        "{:?}",
        result.map(|n| n.id())
    );
}

/// A valid certificate for `shop` does not let its holder claim to be `billing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_claiming_another_service_than_the_certificate_is_refused() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let mut events = billing.events();
    let result = RawPeer::connect_as(
        &mesh.ca,
        &mesh.identity("shop"),
        "admin",
        billing.local_addr(),
    )
    .await;
    let event = next_event(&mut events, WAIT, handshake_failed).await;
    let NodeEvent::HandshakeFailed { reason, .. } = &event else {
        unreachable!()
    };
    assert!(
        reason.contains("admin") && reason.contains("shop"),
        "{reason}"
    );
    match result {
        Err(e) => eprintln!("impostor refused: {e}"),
        Ok(mut raw) => {
            // The hellos may cross before the node refuses: then the connection closes.
            let closed = raw.closed(WAIT).await;
            eprintln!("impostor's connection closed: {closed}");
            assert!(raw.next_frame(WAIT).await.is_err());
        }
    }
    assert!(billing.peers().is_empty(), "{:?}", billing.peers());
    billing.shutdown().await;
}
