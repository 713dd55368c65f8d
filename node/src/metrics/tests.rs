//! Label values that come from peers (group names) and from publishers (topics) are escaped
//! in the exposition text; the strict parser's check of the same is in node/tests/metrics.rs.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::{HandlerError, MeshCa, Message, MetricsConfig, Node, SubscribeOptions};

const WAIT: Duration = Duration::from_secs(10);

/// A group name that closes the label set, ends the line and writes a series of its own.
const HOSTILE_GROUP: &str = "g\",message=\"x\"} 1\nshoal_injected_total 42\n# ";

#[tokio::test(flavor = "current_thread")]
async fn a_group_name_or_topic_cannot_break_the_exposition() {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let ca = MeshCa::generate("metrics escaping").expect("CA");
    let publisher = Node::builder("pub")
        .identity(ca.issue("pub").expect("identity"))
        .trust(ca.clone())
        .listen(lo)
        .metrics(MetricsConfig::record())
        .start()
        .await
        .expect("pub starts");
    let subscriber = Node::builder("sub")
        .identity(ca.issue("sub").expect("identity"))
        .trust(ca.clone())
        .listen(lo)
        .peer(publisher.local_addr())
        .start()
        .await
        .expect("sub starts");
    let _sub = subscriber
        .subscribe_with(
            SubscribeOptions::new("orders.>").group(HOSTILE_GROUP),
            |_m: Message| async { Ok::<_, HandlerError>(()) },
        )
        .await
        .expect("subscribed");
    tokio::time::timeout(WAIT, publisher.wait_for_subscribers("orders.a", 1, WAIT))
        .await
        .expect("in time")
        .expect("the subscriber is known");
    tokio::time::timeout(
        WAIT,
        publisher.publish(Message::event("orders.a\"b\\c", "x")),
    )
    .await
    .expect("in time")
    .expect("published");

    let mut registry = Registry::default();
    publisher.register_metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("encodes");
    tokio::time::timeout(WAIT, async {
        subscriber.shutdown().await;
        publisher.shutdown().await;
    })
    .await
    .expect("shut down in time");

    assert!(
        !text.lines().any(|l| l.starts_with("shoal_injected")),
        "a group name wrote a series of its own:\n{text}"
    );
    let series = r#"shoal_messages_sent_total{service="g\",message=\"x\"} 1\nshoal_injected_total 42\n# ",message="orders.a\"b\\c"} 1"#;
    assert!(
        text.lines().any(|l| l == series),
        "no line `{series}` in:\n{text}"
    );
}
