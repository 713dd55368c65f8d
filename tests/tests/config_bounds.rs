//! Configuration values at their edges: what no node can work with is refused by `start`
//! with `Error::Config` naming the setting, before anything is bound; `Duration::MAX`
//! ("forever") works where it is accepted, rather than panicking a task of the node.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{Error, Message, Node, NodeBuilder, PublishOptions, RetryPolicy, SendOptions};
use shoal_tests::child::TempDir;
use shoal_tests::{Mesh, WAIT};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A retry policy that gives up within seconds, so a node that cannot connect fails fast.
fn short() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        deadline: Duration::from_secs(4),
        ack_timeout: Duration::from_secs(1),
        ..RetryPolicy::default()
    }
}

/// Retry policies no delivery can work with, each with what its refusal says.
fn unusable_policies() -> Vec<(RetryPolicy, &'static str)> {
    vec![
        (
            RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            },
            "max_attempts 0",
        ),
        (
            RetryPolicy {
                ack_timeout: Duration::ZERO,
                ..RetryPolicy::default()
            },
            "ack_timeout zero",
        ),
        (
            RetryPolicy {
                deadline: Duration::ZERO,
                ..RetryPolicy::default()
            },
            "deadline zero",
        ),
    ]
}

/// Starts a node of `billing` that tells `handled` about each `charge` it handles.
async fn billing(mesh: &Mesh, builder: NodeBuilder) -> (Node, mpsc::UnboundedReceiver<()>) {
    let node = mesh.start_with(builder, &[]).await;
    let (tx, rx) = mpsc::unbounded_channel();
    node.handle("charge", move |_m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            Ok(())
        }
    });
    (node, rx)
}

/// A change to a builder.
type Configure<'a> = Box<dyn Fn(NodeBuilder) -> NodeBuilder + 'a>;

#[tokio::test(flavor = "current_thread")]
async fn start_refuses_values_no_node_can_work_with_and_names_the_setting() {
    let mesh = Mesh::new();
    let dir = TempDir::new("config-bounds");
    let store: Arc<dyn OutboxStore> = Arc::new(SqliteOutbox::open(dir.path.join("o.db")).unwrap());
    let ms = Duration::from_millis;
    let cases: Vec<(&str, Configure<'_>)> = vec![
        (
            "NodeBuilder::liveness",
            Box::new(|b| b.liveness(ms(0), ms(1500))),
        ),
        (
            "NodeBuilder::liveness",
            Box::new(|b| b.liveness(ms(250), ms(0))),
        ),
        (
            "shorter than the idle timeout",
            Box::new(|b| b.liveness(ms(10_000), ms(300))),
        ),
        (
            "shorter than the idle timeout",
            Box::new(|b| b.liveness(ms(1000), ms(1000))),
        ),
        (
            "shorter than the idle timeout",
            Box::new(|b| b.liveness(Duration::MAX, ms(1500))),
        ),
        (
            "is too large",
            Box::new(|b| b.liveness(ms(250), Duration::MAX)),
        ),
        (
            "NodeBuilder::max_queued_bytes(0)",
            Box::new(|b| b.max_queued_bytes(0)),
        ),
        (
            "NodeBuilder::max_in_flight_per_peer(0)",
            Box::new(|b| b.max_in_flight_per_peer(0)),
        ),
        (
            "NodeBuilder::max_concurrent_handlers(0)",
            Box::new(|b| b.max_concurrent_handlers(0)),
        ),
        (
            "NodeBuilder::max_background_publishes(0)",
            Box::new(|b| b.max_background_publishes(0)),
        ),
        (
            "NodeBuilder::max_background_bytes(0)",
            Box::new(|b| b.max_background_bytes(0)),
        ),
        (
            "NodeBuilder::close_idle_after(Some(0))",
            Box::new(|b| b.close_idle_after(Some(ms(0)))),
        ),
        (
            "handshake timeout must be above zero",
            Box::new(|b| b.handshake_timeout(ms(0))),
        ),
        (
            "NodeBuilder::retry_policy: max_attempts 0",
            Box::new(|b| b.retry_policy(unusable_policies()[0].0.clone())),
        ),
        (
            "NodeBuilder::retry_policy: ack_timeout zero",
            Box::new(|b| b.retry_policy(unusable_policies()[1].0.clone())),
        ),
        (
            "NodeBuilder::retry_policy: deadline zero",
            Box::new(|b| b.retry_policy(unusable_policies()[2].0.clone())),
        ),
        (
            "RelayOptions::poll(0)",
            Box::new(move |b| b.outbox(Arc::clone(&store), RelayOptions::default().poll(ms(0)))),
        ),
    ];
    for (expected, configure) in &cases {
        match configure(mesh.builder("billing")).start().await {
            Err(Error::Config(why)) => assert!(why.contains(expected), "{expected}: {why}"),
            Err(other) => panic!("{expected}: another error: {other}"),
            Ok(_) => panic!("{expected}: accepted"),
        }
    }
    // The smallest usable values start.
    let node = mesh
        .builder("billing")
        .liveness(ms(1), ms(2))
        .max_queued_bytes(1)
        .max_in_flight_per_peer(1)
        .max_concurrent_handlers(1)
        .max_background_publishes(1)
        .close_idle_after(Some(ms(1)))
        .retry_policy(RetryPolicy {
            max_attempts: 1,
            ack_timeout: Duration::from_nanos(1),
            deadline: Duration::from_nanos(1),
            ..RetryPolicy::default()
        })
        .start()
        .await
        .unwrap();
    node.shutdown().await;
}

/// A send or a publish given a retry policy no delivery can work with fails at once with
/// `Error::Config` naming the option and the value (it used to be accepted: the message was
/// dead-lettered, or timed out before its ack, without a word about why).
#[tokio::test(flavor = "current_thread")]
async fn a_send_or_publish_with_an_unusable_retry_policy_fails_naming_it() {
    let mesh = Mesh::new();
    let node = mesh.start_with(mesh.builder("orders"), &[]).await;
    for (policy, expected) in unusable_policies() {
        let options = SendOptions::with_retry(policy.clone());
        let send = node.send_with("billing", Message::command("charge", "1"), options);
        match timeout(WAIT, send).await.unwrap() {
            Err(Error::Config(why)) => {
                assert!(
                    why.contains("SendOptions::retry") && why.contains(expected),
                    "{why}"
                );
            }
            other => panic!("send with {expected}: {other:?}"),
        }
        let options = PublishOptions::default().with_retry(policy);
        let publish = node.publish_with(Message::event("order.created", "1"), options);
        match timeout(WAIT, publish).await.unwrap() {
            Err(Error::Config(why)) => {
                assert!(
                    why.contains("PublishOptions::retry") && why.contains(expected),
                    "{why}"
                );
            }
            other => panic!("publish with {expected}: {other:?}"),
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_handshake_timeout_of_duration_max_means_no_limit_on_both_ends() {
    let mesh = Mesh::new();
    let (server, mut handled) = billing(
        &mesh,
        mesh.builder("billing").handshake_timeout(Duration::MAX),
    )
    .await;
    // Accepting (above), dialling (here), and the revocation watch of both: each used to
    // panic adding the timeout to the clock, so no connection ever came up.
    let client = mesh
        .start_with(
            mesh.builder("orders")
                .handshake_timeout(Duration::MAX)
                .retry_policy(short()),
            &[server.local_addr()],
        )
        .await;
    let sent = client
        .send("billing", Message::command("charge", "o-1"))
        .await;
    assert!(sent.is_ok(), "{sent:?}");
    timeout(WAIT, handled.recv()).await.unwrap().unwrap();
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_outbox_relay_polling_every_duration_max_delivers_what_is_committed() {
    let mesh = Mesh::new();
    let (server, mut handled) = billing(&mesh, mesh.builder("billing")).await;
    let dir = TempDir::new("config-bounds-relay");
    let outbox = Arc::new(SqliteOutbox::open(dir.path.join("o.db")).unwrap());
    // The relay used to panic as it started (`poll * 3`): nothing was ever delivered.
    let options = RelayOptions::default().poll(Duration::MAX);
    let client = mesh
        .start_with(
            mesh.builder("orders")
                .outbox(Arc::clone(&outbox) as Arc<dyn OutboxStore>, options),
            &[server.local_addr()],
        )
        .await;
    let mut conn = outbox.connect().unwrap();
    let tx = conn.transaction().unwrap();
    let msg = Message::command("charge", "from the outbox");
    outbox
        .enqueue(&tx, &Destination::Service("billing".into()), &msg)
        .unwrap();
    outbox.commit(tx).unwrap();
    // Woken by the commit, not by a poll.
    timeout(WAIT, handled.recv()).await.unwrap().unwrap();
    client.shutdown().await;
    server.shutdown().await;
}
