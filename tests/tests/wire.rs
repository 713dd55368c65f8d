//! Hostile and broken input on the wire, from a hand-driven QUIC client with a valid mesh
//! certificate: the node closes just that connection (or refuses just that frame), reports
//! it, and keeps serving everyone else.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal::{Message, Node, NodeEvent};
use shoal_proto::{Frame, Hello, Limits, PROTOCOL_VERSION, codec};
use shoal_tests::{
    Mesh, RawPeer, SERVER_NAME, WAIT, acks, client_config, client_endpoint, deliver, envelope,
    fresh_node_id, nacks, next_event, publish, wait_instances,
};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// A `billing` node with a handler, and a `shop` node connected to it.
async fn server(mesh: &Mesh) -> (Node, Node) {
    let billing = mesh.start("billing", &[]).await;
    billing.handle("create-invoice", |_msg: Message| async { Ok(()) });
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    (billing, shop)
}

/// Sends `count` commands from `shop` to `billing` concurrently; all must be acked.
async fn traffic(shop: &Node, count: usize) {
    let mut sends = JoinSet::new();
    for i in 0..count {
        let shop = shop.clone();
        sends.spawn(async move {
            shop.send("billing", Message::command("create-invoice", i.to_string()))
                .await
        });
    }
    let all = async {
        while let Some(joined) = sends.join_next().await {
            joined.unwrap().unwrap();
        }
    };
    timeout(WAIT, all).await.expect("traffic stalled");
}

fn protocol_error(event: &NodeEvent) -> bool {
    matches!(event, NodeEvent::ProtocolError { .. })
}

/// Expects the node to close the raw connection with the protocol-error code (1) and a reason
/// containing `fragment`; returns the reason.
async fn expect_protocol_close(raw: &RawPeer, fragment: &str) -> String {
    match raw.closed(WAIT).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            assert_eq!(close.error_code, quinn::VarInt::from_u32(1), "{reason}");
            assert!(reason.contains(fragment), "{reason}");
            reason
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// Sends `bytes` after a valid hello and expects the node to close the connection with a
/// protocol error naming `fragment`, emit `ProtocolError`, count a malformed frame, and keep
/// serving `shop` meanwhile.
async fn garbage_closes_only_that_connection(bytes: &[u8], fragment: &str) {
    let mesh = Mesh::new();
    let (billing, shop) = server(&mesh).await;
    traffic(&shop, 20).await;
    let mut events = billing.events();
    let mut raw = RawPeer::connect(&mesh, "mallory", billing.local_addr()).await;
    wait_instances(&billing, "mallory", 1).await;

    let background = {
        let shop = shop.clone();
        tokio::spawn(async move { traffic(&shop, 200).await })
    };
    raw.send_raw(bytes).await;
    let reason = expect_protocol_close(&raw, fragment).await;
    eprintln!("node closed the connection: {reason}");
    let event = next_event(&mut events, WAIT, protocol_error).await;
    let NodeEvent::ProtocolError { addr, reason } = &event else {
        unreachable!()
    };
    assert_eq!(*addr, raw.endpoint.local_addr().unwrap());
    assert!(reason.contains(fragment), "{reason}");
    assert!(billing.stats().malformed_frames >= 1);
    assert!(raw.next_frame(WAIT).await.is_err());

    timeout(WAIT, background).await.unwrap().unwrap();
    traffic(&shop, 20).await;
    assert_eq!(billing.stats().handled, 240);
    let services: Vec<String> = billing.peers().into_iter().map(|p| p.service).collect();
    assert_eq!(services, ["shop"], "only the offender is gone");
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_body_with_a_valid_length_prefix_closes_the_connection() {
    // 8 bytes of 0xFF: not a frame tag bincode knows.
    let mut bytes = 8u32.to_be_bytes().to_vec();
    bytes.extend([0xFF; 8]);
    garbage_closes_only_that_connection(&bytes, "malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_closes_the_connection() {
    garbage_closes_only_that_connection(&0u32.to_be_bytes(), "malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix_closes_the_connection() {
    let too_long = u32::try_from(Limits::default().max_frame_len + 1).unwrap();
    // Only the prefix: the node must not wait for (or buffer) 4 MiB of body.
    garbage_closes_only_that_connection(&too_long.to_be_bytes(), "max_frame_len").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_length_prefix_closes_the_connection() {
    garbage_closes_only_that_connection(&u32::MAX.to_be_bytes(), "max_frame_len").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_bytes_inside_a_frame_close_the_connection() {
    // A valid ping body followed by junk, all inside one length prefix.
    let mut valid = bytes::BytesMut::new();
    codec::encode(&Frame::Ping(9), &Limits::default(), &mut valid).unwrap();
    let mut body = valid[4..].to_vec();
    body.extend([1, 2, 3]);
    let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend(body);
    garbage_closes_only_that_connection(&bytes, "trailing").await;
}

/// A second hello mid-stream breaks the protocol: the connection is closed. The node should
/// report it like any other protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_closes_the_connection() {
    let mesh = Mesh::new();
    let (billing, shop) = server(&mesh).await;
    let mut raw = RawPeer::connect(&mesh, "mallory", billing.local_addr()).await;
    raw.send_frame(&Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: fresh_node_id(),
        service: "mallory".into(),
        listen_addrs: Vec::new(),
    }))
    .await;
    expect_protocol_close(&raw, "second hello").await;
    traffic(&shop, 20).await;
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A second hello is a protocol violation like any other: reported and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_is_reported_as_a_protocol_error() {
    let mesh = Mesh::new();
    let (billing, _shop) = server(&mesh).await;
    let mut events = billing.events();
    let mut raw = RawPeer::connect(&mesh, "mallory", billing.local_addr()).await;
    raw.send_frame(&Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: fresh_node_id(),
        service: "mallory".into(),
        listen_addrs: Vec::new(),
    }))
    .await;
    expect_protocol_close(&raw, "second hello").await;
    next_event(&mut events, Duration::from_secs(2), protocol_error).await;
    assert!(billing.stats().malformed_frames >= 1);
}

/// A connection whose first frame is not a hello never becomes a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_before_the_hello_is_refused() {
    let mesh = Mesh::new();
    let (billing, shop) = server(&mesh).await;
    let mut events = billing.events();
    let endpoint = client_endpoint();
    let identity = mesh.identity("mallory");
    let conn = timeout(
        WAIT,
        endpoint
            .connect_with(
                client_config(&mesh.ca, Some(&identity)),
                billing.local_addr(),
                SERVER_NAME,
            )
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut send = conn.open_uni().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let sneaky = deliver(0, &envelope("create-invoice", b"sneaky"));
    codec::encode(&sneaky, &Limits::default(), &mut buf).unwrap();
    send.write_all(&buf).await.unwrap();

    let event = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    let NodeEvent::HandshakeFailed { reason, .. } = &event else {
        unreachable!()
    };
    assert!(reason.contains("expected hello"), "{reason}");
    let closed = timeout(WAIT, conn.closed()).await.unwrap();
    eprintln!("closed: {closed}");
    assert_eq!(billing.stats().handled, 0);
    traffic(&shop, 10).await;
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A well-formed delivery that breaks a per-field limit is refused on its own (a permanent
/// nack naming the limit); the connection stays up for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_over_a_field_limit_is_nacked_and_the_connection_stays_usable() {
    let mesh = Mesh::new();
    let (billing, shop) = server(&mesh).await;
    let mut events = billing.events();
    let mut raw = RawPeer::connect(&mesh, "mallory", billing.local_addr()).await;
    let max_headers = Limits::default().max_headers;

    let mut bad = envelope("create-invoice", b"too much metadata");
    bad.headers = (0..=max_headers)
        .map(|i| (format!("h{i}"), "v".to_owned()))
        .collect();
    let generous = Limits {
        max_headers: 10 * max_headers,
        ..Limits::default()
    };
    raw.send_frame_with(&deliver(0, &bad), &generous).await;
    let (frame, skipped) = raw.read_until(WAIT, 16, |f| nacks(f, 0)).await;
    assert!(
        skipped.iter().all(|f| !matches!(f, Frame::Ack(_))),
        "{skipped:?}"
    );
    let Frame::Nack(nack) = frame else {
        unreachable!()
    };
    assert!(!nack.retryable, "{nack:?}");
    assert!(nack.reason.contains("max_headers"), "{}", nack.reason);
    let event = next_event(&mut events, WAIT, protocol_error).await;
    assert!(
        matches!(&event, NodeEvent::ProtocolError { reason, .. } if reason.contains("max_headers")),
        "{event:?}"
    );
    assert_eq!(billing.stats().malformed_frames, 1);

    let good = envelope("create-invoice", b"fine");
    raw.send_frame(&deliver(1, &good)).await;
    raw.read_until(WAIT, 16, |f| acks(f, 1)).await;
    assert_eq!(billing.stats().handled, 1, "only the good delivery ran");
    assert_eq!(billing.peers().len(), 2, "{:?}", billing.peers());
    traffic(&shop, 10).await;
    shop.shutdown().await;
    billing.shutdown().await;
}

/// Publish/subscribe frames from a hostile or confused peer: a malformed subscription is
/// refused and reported without closing the connection; an event for a group this node has
/// no subscription in is refused with a retryable nack; and
/// the node's own subscriptions reach the raw peer when it connects.
#[tokio::test(flavor = "current_thread")]
async fn bad_subscriptions_and_stray_events_are_refused_not_fatal() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    billing
        .subscribe("order.created", |_msg: Message| async { Ok(()) })
        .await
        .unwrap();
    let mut events = billing.events();
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    raw.read_until(WAIT, 16, |f| {
        matches!(f, Frame::Subscribe(s) if s.pattern == "order.created" && s.group.as_deref() == Some("billing"))
    })
    .await;

    let bad = shoal_proto::Subscription {
        pattern: "orders.>.late".into(),
        group: None,
    };
    raw.send_frame(&Frame::Subscribe(bad)).await;
    let event = next_event(&mut events, WAIT, |e| {
        matches!(e, NodeEvent::ProtocolError { .. })
    })
    .await;
    assert!(
        format!("{event:?}").contains("subscription refused"),
        "{event:?}"
    );

    let env = envelope("order.created", b"x");
    raw.send_frame(&publish(0, &env, Some("audit"), true)).await;
    let nack = raw.read_until(WAIT, 16, |f| nacks(f, 0)).await;
    let (Frame::Nack(nack), _) = nack else {
        unreachable!()
    };
    assert!(
        nack.retryable && nack.reason.contains("no subscription"),
        "{nack:?}"
    );

    // The connection is still up: a good event for the billing group is handled and acked.
    let env = envelope("order.created", b"y");
    raw.send_frame(&publish(1, &env, Some("billing"), true))
        .await;
    raw.read_until(WAIT, 16, |f| acks(f, 1)).await;
    assert_eq!(billing.stats().handled, 1);
}

/// A subscriber that unsubscribes while an event is on its way to it refuses the copy; the
/// publisher then drops that copy (counted, listed in the receipt), neither holding it nor
/// dead-lettering it: the group is gone on purpose.
#[tokio::test(flavor = "current_thread")]
async fn an_audience_that_unsubscribes_mid_flight_has_its_copy_dropped() {
    let mesh = Mesh::new();
    let publisher = mesh.start("orders", &[]).await;
    let mut raw = RawPeer::connect(&mesh, "audit", publisher.local_addr()).await;
    let sub = shoal_proto::Subscription {
        pattern: "order.*".into(),
        group: Some("audit".into()),
    };
    raw.send_frame(&Frame::Subscribe(sub.clone())).await;
    publisher
        .wait_for_subscribers("order.created", 1, WAIT)
        .await
        .unwrap();

    let publish = tokio::spawn(publisher.publish(Message::event("order.created", "x")));
    let (frame, _) = raw
        .read_until(WAIT, 16, |f| matches!(f, Frame::Messages(_)))
        .await;
    let Frame::Messages(copy) = frame else {
        unreachable!()
    };
    assert_eq!(copy.head.to, shoal_proto::To::Group("audit".into()));
    raw.send_frame(&Frame::Unsubscribe(sub)).await;
    raw.send_frame(&Frame::Nack(shoal_proto::Nack {
        seq: copy.first_seq,
        retryable: true,
        code: shoal_proto::NackCode::NoSubscription,
        reason: "unsubscribed".into(),
    }))
    .await;
    let receipt = timeout(WAIT, publish).await.unwrap().unwrap().unwrap();
    assert!(receipt.deliveries.is_empty(), "{receipt:?}");
    assert_eq!(receipt.dropped, ["group `audit`"]);
    let stats = publisher.stats();
    assert_eq!((stats.events_dropped, stats.dead_lettered), (1, 0));
}
