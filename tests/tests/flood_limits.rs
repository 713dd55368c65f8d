//! Limits against floods on real sockets: connections over the caps and handshakes over the
//! rate limit are refused before TLS, so is an address whose TLS handshake was just refused,
//! a client that says nothing after TLS is closed at the hello deadline, and a peer that does
//! not read is cut off at the queued-bytes cap, while one that reads slowly only makes its
//! sender wait (reliable messages) or drop (best-effort copies). A node's socket has room for
//! bursts (the buffers it asks the kernel for).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal::{MeshCa, Message, Node, NodeEvent, PublishOptions};
use shoal_tests::{
    Mesh, RawPeer, SERVER_NAME, WAIT, client_config, client_endpoint, next_event, wait_instances,
};
use tokio::time::timeout;

/// Whether `result` is a connection the node refused before its handshake.
fn refused(result: &Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(result, Err(quinn::ConnectionError::ConnectionClosed(close))
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// A TLS handshake with the node at `addr`, presenting a certificate for `service` from `ca`.
async fn tls_handshake(
    endpoint: &quinn::Endpoint,
    ca: &MeshCa,
    service: &str,
    addr: std::net::SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let identity = ca.issue(service).unwrap();
    let connecting = endpoint
        .connect_with(client_config(ca, Some(&identity)), addr, SERVER_NAME)
        .unwrap();
    timeout(WAIT, connecting).await.expect("handshake hung")
}

#[tokio::test(flavor = "current_thread")]
async fn handshakes_over_the_connection_caps_are_refused_and_slots_come_back() {
    let mesh = Mesh::new();
    let node = mesh
        .start_with(mesh.builder("billing").max_connections(100, 2), &[])
        .await;
    let mut events = node.events();
    let addr = node.local_addr();

    let first = RawPeer::connect(&mesh, "a", addr).await;
    let second = RawPeer::connect(&mesh, "b", addr).await;
    let endpoint = client_endpoint();
    let third = tls_handshake(&endpoint, &mesh.ca, "c", addr).await;
    assert!(refused(&third), "{third:?}");
    let event = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    let NodeEvent::HandshakeFailed { reason, .. } = event else {
        unreachable!()
    };
    assert!(
        reason.contains("incoming connections from 127.0.0.1"),
        "{reason}"
    );
    let stats = node.stats();
    assert_eq!(stats.connections_refused, 1);
    assert_eq!(stats.handshake_failures, 0, "refused before any handshake");

    // A connection that ends gives its place back.
    first.conn.close(0u32.into(), b"done");
    drop(first);
    let mut admitted = None;
    for _ in 0..100 {
        let attempt = tls_handshake(&endpoint, &mesh.ca, "c", addr).await;
        if !refused(&attempt) {
            admitted = Some(attempt.unwrap());
            break;
        }
        // The place comes back when the node's connection task ends, a moment after the
        // close arrives; there is no event for it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        admitted.is_some(),
        "the closed connection's place never came back"
    );
    drop(second);
}

#[tokio::test(flavor = "current_thread")]
async fn handshakes_over_the_rate_limit_are_refused() {
    let mesh = Mesh::new();
    let node = mesh
        .start_with(mesh.builder("billing").handshake_rate(1, 3), &[])
        .await;
    let addr = node.local_addr();
    // Six attempts at once from a client with a foreign certificate: three get a TLS
    // handshake (and fail it), the rest are refused before it (one more at most, if a second
    // passed meanwhile).
    let foreign = MeshCa::generate("foreign").unwrap();
    let endpoint = client_endpoint();
    let mut attempts = Vec::new();
    for i in 0..6 {
        let identity = foreign.issue(&format!("intruder{i}")).unwrap();
        attempts.push(
            endpoint
                .connect_with(client_config(&mesh.ca, Some(&identity)), addr, SERVER_NAME)
                .unwrap(),
        );
    }
    let mut refusals = 0;
    for attempt in attempts {
        if refused_before_tls(attempt).await {
            refusals += 1;
        }
    }
    assert!((2..=3).contains(&refusals), "{refusals} refused");
    let stats = node.stats();
    assert_eq!(stats.connections_refused as usize, refusals);
    shoal_tests::until(&node, "the TLS failures are counted", |n| {
        n.stats().handshake_failures as usize == 6 - refusals
    })
    .await;
}

/// A TLS handshake from `endpoint` with a certificate from a CA the node does not trust:
/// whether the node refused it before TLS (`true`) or failed its TLS handshake (`false`).
async fn foreign_attempt(
    endpoint: &quinn::Endpoint,
    mesh: &Mesh,
    foreign: &MeshCa,
    addr: std::net::SocketAddr,
) -> bool {
    let identity = foreign.issue("intruder").unwrap();
    let connecting = endpoint
        .connect_with(client_config(&mesh.ca, Some(&identity)), addr, SERVER_NAME)
        .unwrap();
    refused_before_tls(connecting).await
}

/// Whether the node refused `connecting` before TLS (`true`) or failed its TLS handshake
/// (`false`); a client with a foreign certificate never gets in.
async fn refused_before_tls(connecting: quinn::Connecting) -> bool {
    let result = timeout(WAIT, connecting).await.expect("attempt hung");
    if refused(&result) {
        return true;
    }
    // In TLS 1.3 the client finishes first; the node checks the client's certificate after
    // and closes the connection with a TLS alert.
    let closed = match result {
        Ok(conn) => timeout(WAIT, conn.closed()).await.expect("never closed"),
        Err(e) => e,
    };
    assert!(
        matches!(&closed, quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code != quinn::TransportErrorCode::CONNECTION_REFUSED),
        "a foreign certificate never gets in: {closed:?}"
    );
    false
}

#[tokio::test(flavor = "current_thread")]
async fn an_address_whose_tls_was_refused_is_refused_before_tls_for_the_penalty() {
    let mesh = Mesh::new();
    let penalty = Duration::from_millis(500);
    let node = mesh
        .start_with(
            mesh.builder("billing")
                .handshake_penalty(penalty, 16)
                .handshake_penalty_after(1),
            &[],
        )
        .await;
    let mut events = node.events();
    let addr = node.local_addr();
    let foreign = MeshCa::generate("foreign").unwrap();
    // The intruder dials from another loopback address than the honest peer below.
    let intruder = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();

    assert!(
        !foreign_attempt(&intruder, &mesh, &foreign, addr).await,
        "the first attempt gets its TLS handshake"
    );
    shoal_tests::until(&node, "the address is penalised", |n| {
        n.stats().addresses_penalised == 1
    })
    .await;
    assert!(
        foreign_attempt(&intruder, &mesh, &foreign, addr).await,
        "dialling again is refused before TLS"
    );
    let event = next_event(
        &mut events,
        WAIT,
        |e| matches!(e, NodeEvent::HandshakeFailed { reason, .. } if reason.starts_with("refused")),
    )
    .await;
    let NodeEvent::HandshakeFailed { addr: from, reason } = event else {
        unreachable!()
    };
    assert_eq!(from.ip().to_string(), "127.0.0.2");
    assert!(
        reason.contains("failed its TLS handshake lately"),
        "{reason}"
    );
    let stats = node.stats();
    assert_eq!(stats.connections_refused, 1);
    assert_eq!(stats.handshake_failures, 1, "one TLS handshake, not two");

    // Another address is not touched.
    let honest = RawPeer::connect(&mesh, "shop", addr).await;
    wait_instances(&node, "shop", 1).await;

    // After the penalty the address gets a handshake again (and fails it again). Nothing
    // tells when a penalty ends, so the intruder dials every 50 ms, as a client would.
    let started = std::time::Instant::now();
    while foreign_attempt(&intruder, &mesh, &foreign, addr).await {
        assert!(started.elapsed() < WAIT, "the penalty never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shoal_tests::until(&node, "the address is penalised again", |n| {
        n.stats().addresses_penalised == 2
    })
    .await;
    drop(honest);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_sends_no_hello_is_closed_at_the_deadline() {
    let mesh = Mesh::new();
    let node = mesh
        .start_with(
            mesh.builder("billing")
                .handshake_timeout(Duration::from_millis(300)),
            &[],
        )
        .await;
    let mut events = node.events();
    let endpoint = client_endpoint();
    // TLS completes with a valid certificate; then nothing.
    let conn = tls_handshake(&endpoint, &mesh.ca, "lurker", node.local_addr())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = timeout(WAIT, conn.closed()).await.expect("never closed");
    let waited = started.elapsed();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.reason.as_ref() == b"hello timeout"),
        "{closed:?}"
    );
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    let event = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    assert!(
        matches!(&event, NodeEvent::HandshakeFailed { reason, .. } if reason == "no hello in time"),
        "{event:?}"
    );
    assert_eq!(node.stats().handshake_failures, 1);
    assert!(node.peers().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_does_not_read_is_cut_off_at_the_queued_bytes_cap() {
    let mesh = Mesh::new();
    let node = mesh
        .start_with(mesh.builder("billing").max_queued_bytes(256 * 1024), &[])
        .await;
    let mut events = node.events();
    // A peer of service `sink` that never reads its stream.
    let sink = RawPeer::connect(&mesh, "sink", node.local_addr()).await;
    wait_instances(&node, "sink", 1).await;
    // 4 MiB: more than QUIC's stream window (about 1.25 MB) plus the cap. The sends are on
    // their way from the call; their futures are kept so they are not cancelled.
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let pending: Vec<_> = (0..64)
        .map(|_| node.send("sink", Message::command("fill", payload.clone())))
        .collect();
    let closed = timeout(WAIT, sink.conn.closed())
        .await
        .expect("the node never closed the connection of a peer that does not read");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 4u32.into()),
        "{closed:?}"
    );
    next_event(
        &mut events,
        WAIT,
        |e| matches!(e, NodeEvent::PeerDown { service, .. } if service == "sink"),
    )
    .await;
    drop(pending);
    node.abort();
}

/// Starts `billing`, whose queue to each peer holds at most 256 KiB, and a `ledger` that runs
/// one handler at a time (so it reads its stream only as fast as its handlers go).
async fn slow_reader(mesh: &Mesh) -> (Node, Node) {
    let ledger = mesh
        .start_with(mesh.builder("ledger").max_concurrent_handlers(1), &[])
        .await;
    let billing = mesh
        .start_with(
            mesh.builder("billing").max_queued_bytes(256 * 1024),
            &[ledger.local_addr()],
        )
        .await;
    wait_instances(&billing, "ledger", 1).await;
    (billing, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_makes_reliable_sends_wait_at_the_cap_and_is_not_cut_off() {
    let mesh = Mesh::new();
    let (billing, ledger) = slow_reader(&mesh).await;
    ledger.handle("fill", |_msg: Message| async {
        tokio::time::sleep(Duration::from_millis(10)).await; // the handler's work
        Ok(())
    });
    let mut events = billing.events();
    // 4 MiB at once: 16 times the cap, and more than QUIC's stream window.
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (billing, payload) = (billing.clone(), payload.clone());
        sends.spawn(async move {
            billing
                .send("ledger", Message::command("fill", payload))
                .await
        });
    }
    let results = timeout(WAIT * 3, sends.join_all())
        .await
        .expect("the sends to a slow reader never finished");
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(ledger.stats().handled, 64);
    assert_eq!(billing.stats().retries, 0, "a send was retried");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, NodeEvent::PeerDown { .. }),
            "the slow reader was cut off: {event:?}"
        );
    }
    billing.shutdown().await;
    ledger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_copies_over_the_cap_are_dropped_and_reported_and_the_rest_arrive() {
    let mesh = Mesh::new();
    let (billing, ledger) = slow_reader(&mesh).await;
    let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let _sub = ledger
        .subscribe("fills", move |_msg: Message| {
            let handled_tx = handled_tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await; // the handler's work
                let _ = handled_tx.send(());
                Ok(())
            }
        })
        .await
        .unwrap();
    billing
        .wait_for_subscribers("fills", 1, WAIT)
        .await
        .unwrap();
    let mut events = billing.events();
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let (mut queued, mut dropped) = (0usize, 0usize);
    for _ in 0..64 {
        let event = Message::event("fills", payload.clone());
        let receipt = billing
            .publish_with(event, PublishOptions::best_effort())
            .await
            .unwrap();
        queued += receipt.deliveries.len();
        dropped += receipt.dropped.len();
    }
    assert_eq!(queued + dropped, 64);
    // 64 copies of 64 KiB published at once, with room for 4 in the queue.
    assert!(dropped > 0, "nothing dropped: the cap did not hold");
    assert_eq!(billing.stats().events_dropped, dropped as u64);
    for n in 0..queued {
        timeout(WAIT, handled.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} of {queued} queued copies arrived"));
    }
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, NodeEvent::PeerDown { .. }),
            "the subscriber was cut off: {event:?}"
        );
    }
    billing.shutdown().await;
    ledger.shutdown().await;
}

/// A reader paused by one thread (its handlers all busy) and resumed by another (a handler
/// that finished in its own task) must end up as the engine last said, whatever order the two
/// threads get to apply it in: a reader left paused by the engine's first word reads nothing
/// more, and the sends behind it never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_paused_and_resumed_from_several_threads_keeps_reading() {
    const SENDERS: usize = 32;
    const EACH: usize = 100;
    let mesh = Mesh::new();
    let (billing, ledger) = slow_reader(&mesh).await;
    // Each handler waits once, so it finishes in a task of its own, on any worker.
    ledger.handle("note", |_msg: Message| async {
        tokio::task::yield_now().await;
        Ok(())
    });
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let billing = billing.clone();
        sends.spawn(async move {
            for _ in 0..EACH {
                billing
                    .send("ledger", Message::command("note", &b"x"[..]))
                    .await?;
            }
            Ok::<_, shoal::Error>(())
        });
    }
    let results = timeout(WAIT * 3, sends.join_all())
        .await
        .expect("the sends never finished: the reader was left paused");
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(ledger.stats().handled, (SENDERS * EACH) as u64);
    billing.shutdown().await;
    ledger.shutdown().await;
}

/// The receive buffer of the UDP socket on `port`, as `ss` reports it (`rb` in its socket
/// memory line); `None` without `ss` or without such a socket.
fn receive_buffer(port: u16) -> Option<usize> {
    let filter = format!("sport = :{port}");
    let out = std::process::Command::new("ss")
        .args(["-u", "-a", "-m", "-n", &filter])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rb = text
        .split(['(', ',', ')'])
        .find_map(|f| f.strip_prefix("rb"))?;
    rb.parse().ok()
}

/// A node asks the kernel for the socket buffers it was given (`socket_buffers`, 4 MiB by
/// default), so that a burst waits while its thread is busy instead of being dropped; `0`
/// keeps the kernel's default.
#[tokio::test(flavor = "current_thread")]
async fn a_node_socket_gets_the_buffers_it_asks_for() {
    let core = |name: &str| -> Option<usize> {
        let text = std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).ok()?;
        text.trim().parse().ok()
    };
    let (Some(max), Some(default)) = (core("rmem_max"), core("rmem_default")) else {
        eprintln!("skipped: no /proc/sys/net/core here");
        return;
    };
    let ask = max.min(4 * 1024 * 1024);
    if ask <= default {
        eprintln!("skipped: net.core.rmem_max ({max}) leaves no room above the default");
        return;
    }
    let mesh = Mesh::new();
    let sized = mesh
        .start_with(mesh.builder("sized").socket_buffers(ask), &[])
        .await;
    let plain = mesh
        .start_with(mesh.builder("plain").socket_buffers(0), &[])
        .await;
    let Some(got) = receive_buffer(sized.local_addr().port()) else {
        eprintln!("skipped: `ss` (iproute2) did not report the node's socket");
        return;
    };
    // Linux reports twice what it reserves for the data (the rest is its bookkeeping).
    assert!(got >= ask, "asked for {ask} bytes, the socket has {got}");
    let kept = receive_buffer(plain.local_addr().port()).expect("ss saw the first socket");
    assert!(
        kept < ask,
        "socket_buffers(0) kept the default, yet the socket has {kept}"
    );
    sized.abort();
    plain.abort();
}
