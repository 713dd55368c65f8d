//! What a caller's error says, on loopback: a wait that timed out names what it waited for
//! (not "no reply"), a request whose message reached no handler says why, as a send does,
//! and a service name no node can have is refused at once.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal::{Error, MeshCa, Message, Node, NodeBuilder, RetryPolicy};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);

fn builder(ca: &MeshCa, service: &str) -> NodeBuilder {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
}

#[tokio::test(flavor = "current_thread")]
async fn waits_that_time_out_say_what_they_waited_for() {
    let ca = MeshCa::generate("errors").unwrap();
    let shop = builder(&ca, "shop").start().await.unwrap();
    let errors = [
        shop.wait_for_subscribers("order.placed", 1, SHORT).await,
        shop.wait_for_instances("billing", 2, SHORT).await,
        shop.ping("billing", SHORT).await.map(drop),
    ];
    let expected = [
        "1 audience(s) of topic `order.placed` (0 live)",
        "2 instance(s) of `billing` (0 connected)",
        "a pong from an instance of `billing`",
    ];
    for (error, what) in errors.into_iter().zip(expected) {
        match error {
            Err(e @ Error::WaitTimedOut { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!("gave up after {SHORT:?} waiting for {what}")
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    shop.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_that_reached_no_handler_says_why() {
    let ca = MeshCa::generate("errors").unwrap();
    let billing = builder(&ca, "billing").start().await.unwrap();
    // The first refusal is retried only after its backoff (2.5 s at least): the request's
    // timeout comes first, while the delivery waits.
    let slow_retries = RetryPolicy {
        initial_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let shop = builder(&ca, "shop")
        .retry_policy(slow_retries)
        .peer(billing.local_addr())
        .start()
        .await
        .unwrap();
    shop.wait_for_instances("billing", 1, WAIT).await.unwrap();
    let cases = [
        ("billing", "service `billing` has no handler for `charge`"),
        ("nobody", "no instance of service `nobody` is connected"),
    ];
    for (service, reason) in cases {
        let request = shop.request(
            service,
            Message::command("charge", "1"),
            Duration::from_secs(1),
        );
        match timeout(WAIT, request).await.unwrap() {
            Err(Error::DeadLettered(letter)) => {
                assert!(letter.last_failure.contains(reason), "{letter}");
            }
            other => panic!("request to `{service}`: {other:?}"),
        }
    }
    assert_eq!(shop.dead_letters().len(), 2);
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_name_no_node_can_have_is_refused_at_once() {
    let ca = MeshCa::generate("errors").unwrap();
    let shop = builder(&ca, "shop").start().await.unwrap();
    let long = "s".repeat(1000);
    let send = timeout(SHORT, shop.send("", Message::command("charge", "1"))).await;
    assert!(matches!(send, Ok(Err(Error::EmptyServiceName))), "{send:?}");
    let request = shop.request("", Message::command("charge", "1"), WAIT);
    let request = timeout(SHORT, request).await;
    assert!(
        matches!(request, Ok(Err(Error::EmptyServiceName))),
        "{request:?}"
    );
    let send = timeout(SHORT, shop.send(&long, Message::command("charge", "1"))).await;
    match send {
        Ok(Err(Error::Encode(e))) => assert!(e.to_string().contains("max_name_len"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(shop.dead_letters().is_empty());
    shop.shutdown().await;
}
