//! The Prometheus endpoint (feature `metrics`): two nodes on loopback exchange messages, then
//! each endpoint is scraped over HTTP; the counters must hold exactly what happened, and the
//! text must pass the strict OpenMetrics parser of Prometheus's Python client (Debian's
//! python3-prometheus-client, which scripts/test.sh installs; the check says "skipped: ..."
//! where it cannot run).
//!
//! Not `promtool check metrics`: promtool 2.42 (Debian 12) reads only the classic text format,
//! where a counter's TYPE line names the `_total` series, and so reports every OpenMetrics
//! counter (TYPE `x`, sample `x_total`) as a family without help text. Prometheus itself
//! parses the endpoint with its OpenMetrics parser (the content type says which).
#![cfg(feature = "metrics")]

use std::net::SocketAddr;
use std::time::Duration;

use shoal::prometheus_client::encoding::text::encode;
use shoal::prometheus_client::registry::Registry;
use shoal::{Error, HandlerError, MeshCa, Message, MetricsConfig, Node, SubscribeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// A group name (a peer chooses it freely) that closes the label set, ends the line and
/// writes a series of its own, with a backslash, a tab and a carriage return as well.
const HOSTILE_GROUP: &str = "g\\\",message=\"x\"} 1\nshoal_injected_total 42\n# \t\r";
/// The same escaped as a label value: `\`, `"` and line feed, nothing else.
const HOSTILE_GROUP_LABEL: &str = concat!(
    r#"g\\\",message=\"x\"} 1\nshoal_injected_total 42\n# "#,
    "\t\r"
);
/// A topic may hold quotes and backslashes.
const HOSTILE_TOPIC: &str = "orders.a\"b\\c";
const HOSTILE_TOPIC_LABEL: &str = r#"orders.a\"b\\c"#;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `GET path` over a plain TCP connection (test code: the request is fixed, the answer is
/// read whole); returns the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("scrape in time");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of the sample written exactly as `series` (name and labels), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// The OpenMetrics parser of Prometheus's Python client (`prometheus_client`), strict about
/// the format: it fails on a malformed line, a counter sample without `_total`, histogram
/// buckets out of order, a missing `# EOF`. Prints each family's name and type.
const PARSE: &str = r#"
import sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    sys.exit(3)
for family in text_string_to_metric_families(sys.stdin.read()):
    print(family.name, family.type)
"#;

/// Parses `text` with [`PARSE`] and returns the `name type` line of every family; `None` (and
/// a "skipped" line) when no Python with `prometheus_client` is installed (scripts/test.sh
/// installs Debian's python3-prometheus-client).
fn openmetrics_families(text: &str) -> Option<Vec<String>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    for python in ["python3", "/usr/bin/python3"] {
        let Ok(mut child) = Command::new(python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            continue;
        };
        let mut stdin = child.stdin.take().expect("stdin");
        let input = text.to_owned();
        // Written from a thread, so a parser that answers early cannot block on a full pipe.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("the parser ran");
        let _ = writer.join();
        if out.status.code() == Some(3) {
            continue; // this Python has no prometheus_client
        }
        assert!(
            out.status.success(),
            "the OpenMetrics parser refused the text:\n{}\n--- the text:\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families = String::from_utf8_lossy(&out.stdout);
        return Some(families.lines().map(str::to_owned).collect());
    }
    println!(
        "skipped: OpenMetrics parser check (no python3 with prometheus_client; apt-get install python3-prometheus-client)"
    );
    None
}

/// Asserts that the strict parser reads `text` as the families `expected` (`name type`), when
/// the parser is installed. The parser runs on a blocking thread: the nodes' runtime (and
/// their keep-alives) go on meanwhile.
async fn assert_parses_as(text: &str, expected: &[&str]) {
    let input = text.to_owned();
    let parsed = tokio::task::spawn_blocking(move || openmetrics_families(&input));
    let parsed = tokio::time::timeout(WAIT, parsed)
        .await
        .expect("parsed in time");
    if let Some(families) = parsed.expect("the parser thread") {
        for family in expected {
            assert!(
                families.iter().any(|f| f == family),
                "{family} not parsed: {families:?}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_endpoint_counts_what_two_nodes_did_in_valid_openmetrics() {
    let ca = MeshCa::generate("metrics test").expect("CA");
    let pricing = Node::builder("pricing")
        .identity(ca.issue("pricing").expect("identity"))
        .trust(ca.clone())
        .metrics(MetricsConfig::listen(loopback()))
        .start()
        .await
        .expect("pricing starts");
    pricing.handle("quote", |_msg: Message| async { Ok::<_, HandlerError>(()) });
    pricing.handle("broken", |_msg: Message| async {
        Err::<(), _>(HandlerError::permanent("no such product"))
    });
    // Label values from the network: a group name and a topic the format must escape.
    let _orders = pricing
        .subscribe_with(
            SubscribeOptions::new("orders.>").group(HOSTILE_GROUP),
            |_msg: Message| async { Ok::<_, HandlerError>(()) },
        )
        .await
        .expect("subscribed");
    let shop = Node::builder("shop")
        .identity(ca.issue("shop").expect("identity"))
        .trust(ca.clone())
        .peer(pricing.local_addr())
        .metrics(MetricsConfig::listen(loopback()))
        .start()
        .await
        .expect("shop starts");

    for i in 0..5 {
        shop.send("pricing", Message::command("quote", format!("item {i}")))
            .await
            .expect("quote acked");
    }
    let refused = shop.send("pricing", Message::command("broken", "x")).await;
    assert!(
        matches!(refused, Err(Error::DeadLettered(_))),
        "{refused:?}"
    );
    tokio::time::timeout(WAIT, shop.wait_for_subscribers("orders.a", 1, WAIT))
        .await
        .expect("in time")
        .expect("shop knows the subscription");
    tokio::time::timeout(WAIT, shop.publish(Message::event(HOSTILE_TOPIC, "x")))
        .await
        .expect("in time")
        .expect("published");

    // The sender's side.
    let shop_addr = shop.metrics_addr().expect("shop serves metrics");
    assert!(shop_addr.ip().is_loopback() && shop_addr.port() != 0);
    let (status, text) = get(shop_addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let quote = r#"{service="pricing",message="quote"}"#;
    let broken = r#"{service="pricing",message="broken"}"#;
    assert_eq!(
        sample(&text, &format!("shoal_messages_sent_total{quote}")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("shoal_messages_acked_total{quote}")),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, &format!("shoal_messages_sent_total{broken}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("shoal_messages_acked_total{broken}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"shoal_messages_nacked_total{service="pricing",message="broken",reason="handler_failed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"shoal_messages_dead_lettered_total{service="pricing",message="broken",reason="refused"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("shoal_delivery_duration_seconds_count{quote}")
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"shoal_delivery_duration_seconds_bucket{le="+Inf",service="pricing",message="quote"}"#
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(sample(&text, "shoal_connections"), Some(1.0));
    assert_eq!(sample(&text, "shoal_connections_opened_total"), Some(1.0));
    assert_eq!(sample(&text, "shoal_background_publishes"), Some(0.0));
    assert_eq!(sample(&text, "shoal_background_refused_total"), Some(0.0));
    // One message at a time: the default busy polling (under load only) never started.
    assert_eq!(sample(&text, "shoal_busy_poll_seconds_total"), Some(0.0));
    assert_parses_as(
        &text,
        &[
            "shoal_messages_sent counter",
            "shoal_messages_nacked counter",
            "shoal_delivery_duration_seconds histogram",
            "shoal_connections gauge",
            "shoal_background_publishes gauge",
            "shoal_background_refused counter",
            "shoal_busy_poll_seconds counter",
        ],
    )
    .await;
    // The group name and the topic stay label values, escaped.
    let hostile = format!(r#"{{service="{HOSTILE_GROUP_LABEL}",message="{HOSTILE_TOPIC_LABEL}"}}"#);
    assert_eq!(
        sample(&text, &format!("shoal_messages_sent_total{hostile}")),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("shoal_injected")),
        "a group name wrote a series of its own:\n{text}"
    );

    // The receiver's side.
    let (status, text) = get(pricing.metrics_addr().expect("pricing serves"), "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let quote = r#"{service="shop",message="quote"}"#;
    assert_eq!(
        sample(&text, &format!("shoal_messages_handled_total{quote}")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("shoal_handler_duration_seconds_count{quote}")
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"shoal_messages_handler_failed_total{service="shop",message="broken"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("shoal_messages_deduplicated_total{quote}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"shoal_messages_handled_total{{service="shop",message="{HOSTILE_TOPIC_LABEL}"}}"#
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_parses_as(
        &text,
        &[
            "shoal_messages_handled counter",
            "shoal_handler_duration_seconds histogram",
        ],
    )
    .await;

    // Only /metrics is served.
    let (status, _) = get(shop_addr, "/other").await;
    assert!(status.contains(" 404 "), "{status}");

    // The same collector in a registry of the service's own.
    let mut registry = Registry::default();
    pricing.register_metrics(&mut registry);
    let mut own = String::new();
    encode(&mut own, &registry).expect("encodes");
    assert_eq!(
        sample(&own, &format!("shoal_messages_handled_total{quote}")),
        Some(5.0),
        "{own}"
    );

    shop.shutdown().await;
    pricing.shutdown().await;
    // The endpoint stops with the node.
    let refused = tokio::net::TcpStream::connect(shop_addr).await;
    assert!(
        refused.is_err(),
        "the endpoint still accepts after shutdown"
    );
}

/// A node that busy polls reports the time it polled, as `NodeStats::busy_poll_time` does.
#[tokio::test(flavor = "current_thread")]
async fn the_time_spent_busy_polling_is_reported() {
    let ca = MeshCa::generate("metrics test").expect("CA");
    let pricing = Node::builder("pricing")
        .identity(ca.issue("pricing").expect("identity"))
        .trust(ca.clone())
        .busy_poll(Duration::from_millis(5))
        .metrics(MetricsConfig::listen(loopback()))
        .start()
        .await
        .expect("pricing starts");
    pricing.handle("quote", |_msg: Message| async { Ok::<_, HandlerError>(()) });
    let shop = Node::builder("shop")
        .identity(ca.issue("shop").expect("identity"))
        .trust(ca.clone())
        .peer(pricing.local_addr())
        .start()
        .await
        .expect("shop starts");
    shop.send("pricing", Message::command("quote", "x"))
        .await
        .expect("quote acked");
    // Polling time is counted when a period of polling ends (a window after the last
    // message): wait for one to end, within WAIT.
    let waited = std::time::Instant::now();
    while pricing.stats().busy_poll_time.is_zero() {
        assert!(waited.elapsed() < WAIT, "no period of polling ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = pricing.stats().busy_poll_time.as_secs_f64();
    let (status, text) = get(pricing.metrics_addr().expect("serves"), "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let after = pricing.stats().busy_poll_time.as_secs_f64();
    let reported = sample(&text, "shoal_busy_poll_seconds_total").expect("reported");
    // A timer of the node's may start another period meanwhile: between the two readings.
    assert!(
        before <= reported && reported <= after,
        "{reported} s reported, {before} s polled before the scrape and {after} s after"
    );
    assert_parses_as(&text, &["shoal_busy_poll_seconds counter"]).await;
    shop.shutdown().await;
    pricing.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_are_off_unless_asked_for_and_a_taken_port_fails_start() {
    let ca = MeshCa::generate("metrics test").expect("CA");
    let plain = Node::builder("plain")
        .identity(ca.issue("plain").expect("identity"))
        .trust(ca.clone())
        .start()
        .await
        .expect("starts");
    assert_eq!(plain.metrics_addr(), None);

    let taken = std::net::TcpListener::bind(loopback()).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let clash = Node::builder("clash")
        .identity(ca.issue("clash").expect("identity"))
        .trust(ca)
        .metrics(MetricsConfig::listen(addr))
        .start()
        .await;
    assert!(
        matches!(clash, Err(Error::Bind { addr: a, .. }) if a == addr),
        "{clash:?}"
    );
    plain.shutdown().await;
}

#[cfg(feature = "outbox")]
#[tokio::test(flavor = "current_thread")]
async fn the_outbox_backlog_is_read_at_scrape_time() {
    use std::sync::Arc;

    use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("shoal-metrics-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let outbox = Arc::new(SqliteOutbox::open(dir.join("orders.db")).expect("outbox opens"));
    let ca = MeshCa::generate("metrics test").expect("CA");
    let store = Arc::clone(&outbox) as Arc<dyn OutboxStore>;
    let orders = Node::builder("orders")
        .identity(ca.issue("orders").expect("identity"))
        .trust(ca)
        .outbox(store, RelayOptions::default())
        .metrics(MetricsConfig::listen(loopback()))
        .start()
        .await
        .expect("orders starts");
    let mut conn = outbox.connect().expect("connection");
    for i in 0..3 {
        let tx = conn.transaction().expect("transaction");
        let message = Message::command("create-invoice", format!("order {i}"));
        outbox
            .enqueue(&tx, &Destination::Service("invoice".into()), &message)
            .expect("enqueued");
        outbox.commit(tx).expect("committed");
    }
    // No instance of `invoice` exists: the three rows wait in the outbox.
    let (status, text) = get(orders.metrics_addr().expect("serves"), "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(sample(&text, "shoal_outbox_pending"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "shoal_outbox_dead"), Some(0.0));
    let age = sample(&text, "shoal_outbox_oldest_pending_age_seconds");
    assert!(
        age.is_some_and(|age| (0.0..WAIT.as_secs_f64()).contains(&age)),
        "{age:?}"
    );
    assert_parses_as(&text, &["shoal_outbox_pending gauge"]).await;
    orders.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
