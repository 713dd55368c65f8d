//! The authorization policy on real sockets: a sender the receiver's policy refuses is nacked
//! "not authorized" for good and dead-lettered with the reason, its handler never runs; a
//! forbidden subscription gets no events; a forbidden publish fails at once; the identity
//! used is always the certificate's service.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use shoal::policy::{Policy, Section};
use shoal::{Error, HandlerError, Message, Node, NodeEvent, NodeId};
use shoal_proto::{Frame, NackCode};
use shoal_tests::{Mesh, RawPeer, WAIT, deliver, envelope, next_event, until, wait_instances};
use tokio::time::timeout;

/// The mesh's policy: `billing` takes `invoice.*` from `shop` only; `orders` publishes
/// `order.>` only; `spy` may subscribe to `public.>` only.
fn policy() -> Policy {
    Policy::from_toml(
        r#"
        [services.billing]
        accept = [{ from = "shop", messages = ["invoice.*"] }]

        [services.orders]
        publish = ["order.>"]

        [services.spy]
        subscribe = ["public.>"]
        "#,
    )
    .unwrap()
}

/// Registers a handler for `name` on `node` that counts its runs.
fn counting(node: &Node, name: &str) -> Arc<AtomicU32> {
    let count = Arc::new(AtomicU32::new(0));
    let runs = Arc::clone(&count);
    node.handle(name, move |_msg: Message| {
        runs.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, HandlerError>(()) }
    });
    count
}

fn refused_peer(event: &NodeEvent, section: Section, peer: NodeId) -> bool {
    matches!(event, NodeEvent::NotAuthorized { peer: Some(p), denial }
        if *p == peer && denial.section == section)
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_not_allowed_to_send_a_command_is_refused_with_the_reason() {
    let mesh = Mesh::new();
    let billing = mesh
        .start_with(mesh.builder("billing").policy(policy()), &[])
        .await;
    let handled = counting(&billing, "invoice.create");
    let mut events = billing.events();
    let orders = mesh
        .start_with(
            mesh.builder("orders").policy(policy()),
            &[billing.local_addr()],
        )
        .await;
    let shop = mesh
        .start_with(
            mesh.builder("shop").policy(policy()),
            &[billing.local_addr()],
        )
        .await;
    wait_instances(&orders, "billing", 1).await;
    wait_instances(&shop, "billing", 1).await;

    let refused = timeout(
        WAIT,
        orders.send("billing", Message::command("invoice.create", "42")),
    )
    .await
    .expect("a refusal is permanent: no retries until the deadline");
    let Err(Error::DeadLettered(letter)) = refused else {
        panic!("expected a dead letter, got {refused:?}")
    };
    assert_eq!(letter.attempts, 1);
    let reason = "not authorized: `billing` does not accept `invoice.create` from `orders`";
    assert!(letter.last_failure.contains(reason), "{letter}");
    let kept = orders.dead_letters();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].last_failure.contains("not authorized"),
        "{}",
        kept[0]
    );

    // A request is refused the same way, at once rather than at its timeout.
    let asked = timeout(
        WAIT,
        orders.request("billing", Message::command("invoice.create", "43"), WAIT),
    )
    .await
    .unwrap();
    assert!(
        matches!(&asked, Err(Error::DeadLettered(l)) if l.last_failure.contains(reason)),
        "{asked:?}"
    );

    next_event(&mut events, WAIT, |e| {
        refused_peer(e, Section::Accept, orders.id())
    })
    .await;
    let receipt = timeout(
        WAIT,
        shop.send("billing", Message::command("invoice.create", "44")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipt.attempts, 1);
    assert_eq!(handled.load(Ordering::SeqCst), 1, "only shop's command ran");
    let stats = billing.stats();
    assert_eq!(stats.unauthorized_messages, 2);
    assert_eq!(stats.handled, 1);
    for node in [orders, shop, billing] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_nack_is_permanent_and_names_the_certificate_s_service() {
    // A hand-driven peer with a certificate for `orders` (and a hello that says so): the
    // refusal on the wire is NotAuthorized, not retryable, with the reason.
    let mesh = Mesh::new();
    let billing = mesh
        .start_with(mesh.builder("billing").policy(policy()), &[])
        .await;
    let handled = counting(&billing, "invoice.create");
    let mut peer = RawPeer::connect(&mesh, "orders", billing.local_addr()).await;
    peer.send_frame(&deliver(0, &envelope("invoice.create", b"x")))
        .await;
    let (frame, _) = peer
        .read_until(WAIT, 16, |f| matches!(f, Frame::Nack(_)))
        .await;
    let Frame::Nack(nack) = frame else {
        unreachable!()
    };
    assert_eq!(nack.seq, 0);
    assert_eq!(nack.code, NackCode::NotAuthorized);
    assert!(!nack.retryable);
    assert!(nack.reason.contains("from `orders`"), "{}", nack.reason);
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    billing.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_forbidden_subscription_gets_no_events() {
    let mesh = Mesh::new();
    let orders = mesh
        .start_with(mesh.builder("orders").policy(policy()), &[])
        .await;
    let mut events = orders.events();

    // A spy with the mesh's policy cannot even ask.
    let honest = mesh
        .start_with(mesh.builder("spy").policy(policy()), &[orders.local_addr()])
        .await;
    let err = honest
        .subscribe("order.>", |_msg: Message| async {
            Ok::<_, HandlerError>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotAuthorized(d) if d.section == Section::Subscribe),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("`spy` may not subscribe to `order.>`")
    );
    assert_eq!(honest.stats().unauthorized_subscriptions, 1);
    honest.shutdown().await;

    // A spy whose own policy lets it ask (an old or tampered configuration): the publisher
    // refuses its subscription and sends it nothing.
    let spy = mesh.start("spy", &[orders.local_addr()]).await;
    let leaked = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&leaked);
    spy.subscribe("order.>", move |_msg: Message| {
        count.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap();
    spy.subscribe("public.*", |_msg: Message| async {
        Ok::<_, HandlerError>(())
    })
    .await
    .unwrap();
    next_event(&mut events, WAIT, |e| {
        refused_peer(e, Section::Subscribe, spy.id())
    })
    .await;
    // The allowed subscription came after the refused one on the same stream.
    orders
        .wait_for_subscribers("public.news", 1, WAIT)
        .await
        .unwrap();
    assert!(orders.subscribers("order.created").is_empty());
    let receipt = timeout(WAIT, orders.publish(Message::event("order.created", "42")))
        .await
        .unwrap()
        .unwrap();
    assert!(receipt.deliveries.is_empty(), "{receipt:?}");
    assert_eq!(leaked.load(Ordering::SeqCst), 0);
    let stats = orders.stats();
    assert_eq!(stats.unauthorized_subscriptions, 1);
    assert_eq!(stats.events_unrouted, 1);
    spy.shutdown().await;
    orders.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_forbidden_publish_fails_at_once_and_subscribers_refuse_one_that_slips_through() {
    let mesh = Mesh::new();
    let audit = mesh
        .start_with(mesh.builder("audit").policy(policy()), &[])
        .await;
    let seen = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&seen);
    audit
        .subscribe(">", move |_msg: Message| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    let orders = mesh
        .start_with(
            mesh.builder("orders").policy(policy()),
            &[audit.local_addr()],
        )
        .await;
    orders
        .wait_for_subscribers("payment.done", 1, WAIT)
        .await
        .unwrap();

    // Refused before anything is sent: no wait, no delivery.
    let err = orders
        .publish(Message::event("payment.done", "x"))
        .await
        .unwrap_err();
    let Error::NotAuthorized(denial) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(denial.section, Section::Publish);
    assert_eq!(denial.subject, "payment.done");
    assert!(
        err.to_string()
            .starts_with("not authorized: `orders` may not publish `payment.done`"),
        "{err}"
    );
    let ok = timeout(WAIT, orders.publish(Message::event("order.created", "y")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.deliveries.len(), 1);
    let stats = orders.stats();
    assert_eq!((stats.unauthorized_publishes, stats.published), (1, 1));
    orders.shutdown().await;

    // An `orders` node without the policy publishes it anyway: the subscriber refuses it.
    let rogue = mesh.start("orders", &[audit.local_addr()]).await;
    rogue
        .wait_for_subscribers("payment.done", 1, WAIT)
        .await
        .unwrap();
    let err = timeout(WAIT, rogue.publish(Message::event("payment.done", "z")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::DeadLettered(l)
            if l.last_failure.contains("not authorized: `orders` may not publish `payment.done`")),
        "{err:?}"
    );
    until(&audit, "the refused event is counted", |n| {
        n.stats().unauthorized_events == 1
    })
    .await;
    assert_eq!(seen.load(Ordering::SeqCst), 1, "only the allowed event");
    rogue.shutdown().await;
    audit.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_default_policy_refuses_nothing() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let handled = counting(&billing, "anything");
    let orders = mesh.start("orders", &[billing.local_addr()]).await;
    wait_instances(&orders, "billing", 1).await;
    timeout(
        WAIT,
        orders.send("billing", Message::command("anything", "x")),
    )
    .await
    .unwrap()
    .unwrap();
    timeout(WAIT, orders.publish(Message::event("any.topic", "y")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    let stats = billing.stats();
    assert_eq!(
        stats.unauthorized_messages + stats.unauthorized_events + stats.unauthorized_subscriptions,
        0
    );
    orders.shutdown().await;
    billing.shutdown().await;
}
