//! Tests of the comparison with synthetic rows, fake rival rows included.

use std::time::Duration;

use super::*;
use crate::throughput::Window;

fn latency(name: &str, p50_us: u64, p99_us: u64) -> LatencyReport {
    let mut h = crate::report::new_histogram().expect("histogram");
    crate::report::record(&mut h, Duration::from_micros(p50_us));
    let mut r = LatencyReport::from_histogram(name, &h);
    r.p50 = p50_us * 1_000;
    r.p99 = p99_us * 1_000;
    r
}

fn tput(name: &str, payload: usize, rate: u64) -> ThroughputReport {
    let window = Window {
        messages: rate,
        elapsed: Duration::from_secs(1),
    };
    ThroughputReport::new(name, payload, window)
}

fn kinds(row: &str) -> Vec<(String, String)> {
    classify(row)
        .into_iter()
        .map(|c| (c.kind, c.variant))
        .collect()
}

fn one(kind: &str, variant: &str) -> Vec<(String, String)> {
    vec![(kind.to_owned(), variant.to_owned())]
}

#[test]
fn rows_are_classified_by_kind_and_variant() {
    assert_eq!(kinds("shoal-request"), one("request", "shoal"));
    assert_eq!(kinds("nats-request"), one("request", "nats"));
    assert_eq!(
        kinds("zenoh-tcp-ll-request"),
        one("request", "zenoh-tcp-ll")
    );
    assert_eq!(kinds("quinn-stream"), one("request", "quinn-stream"));
    assert_eq!(kinds("shoal-send"), one("request", "shoal-send"));
    assert_eq!(kinds("shoal-typed-request"), one("request", "shoal-typed"));
    assert_eq!(
        kinds("shoal-publish-8-last"),
        one("publish-8-last", "shoal")
    );
    assert_eq!(
        kinds("zenoh-quic-publish-1"),
        one("publish-1", "zenoh-quic")
    );
    assert_eq!(kinds("quinn-oneway"), one("publish-1", "quinn"));
    assert_eq!(kinds("quinn-fanout-8-last"), one("publish-8-last", "quinn"));
    assert_eq!(kinds("zmq-pubsub-64"), one("pubsub-64", "zmq"));
    assert_eq!(
        kinds("shoal-pubsub-best-effort-65536"),
        one("pubsub-65536", "shoal-best-effort")
    );
    assert_eq!(
        kinds("shoal-p2p-request-1024"),
        one("p2p-1024", "shoal-request")
    );
    assert_eq!(kinds("nats-p2p-64"), one("p2p-64", "nats"));
    assert_eq!(kinds("quinn-batch-64").len(), 2);
    assert_eq!(
        kinds("shoal-request-at-10k"),
        one("request-at-10k", "shoal")
    );
    assert_eq!(
        kinds("shoal-send-at-10k"),
        one("request-at-10k", "shoal-send")
    );
    assert_eq!(
        kinds("quinn-stream-at-10k"),
        one("request-at-10k", "quinn-stream")
    );
    assert_eq!(
        kinds("nats-request-at-1500"),
        one("request-at-1500", "nats")
    );
    assert_eq!(kinds("quinn-connect"), one("connect", "quinn"));
    assert_eq!(kinds("shoal-connect-send"), one("connect", "shoal-send"));
    assert_eq!(kinds("shoal-discover"), one("discover", "shoal"));
    for not_comparable in [
        "quinn-datagram",
        "shoal-discover-start",
        "request",
        "pubsub-64",
        "shoal-pubsub-x",
        "x-at-fast",
    ] {
        assert!(classify(not_comparable).is_empty(), "{not_comparable}");
    }
}

fn sample() -> Vec<KindGroup> {
    let latencies = [
        latency("udp-echo", 15, 20),
        latency("quinn-stream", 25, 40),
        latency("shoal-send", 27, 48),
        latency("shoal-request", 30, 50),
        latency("nats-request", 60, 200),
        latency("zenoh-tcp-ll-request", 20, 25),
        latency("quinn-oneway", 30, 50),
        latency("shoal-publish-1", 33, 75),
    ];
    let rate = [RateReport::new(
        latency("shoal-request-at-10k", 40, 80),
        10_000,
        100,
        0,
    )];
    let throughput = [
        tput("quinn-batch-64", 64, 10_000_000),
        tput("shoal-pubsub-64", 64, 500_000),
        tput("shoal-pubsub-batch-64", 64, 1_500_000),
        tput("zmq-pubsub-64", 64, 2_000_000),
        tput("zmq-p2p-64", 64, 2_500_000),
    ];
    build(&latencies, &rate, &throughput)
}

#[test]
fn groups_put_shoal_first_then_floors_rivals_and_other_shoal_rows() {
    let groups = sample();
    let kinds: Vec<&str> = groups.iter().map(|g| g.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "request",
            "publish-1",
            "pubsub-64",
            "p2p-64",
            "request-at-10k"
        ]
    );
    let request: Vec<&str> = groups[0].entries.iter().map(|e| e.row.as_str()).collect();
    assert_eq!(
        request,
        [
            "shoal-request",
            "udp-echo",
            "quinn-stream",
            "nats-request",
            "zenoh-tcp-ll-request",
            "shoal-send"
        ]
    );
    assert_eq!(groups[0].entries[3].role, Role::Rival);
    assert_eq!(groups[0].entries[3].system, "nats");
    // No Shoal row of p2p-64 in this sample: no ratios.
    assert!(groups[3].shoal().is_none());
    assert!(
        groups[3]
            .entries
            .iter()
            .all(|e| groups[3].ratio(e).is_none())
    );
    // Only Shoal in request-at-10k.
    assert_eq!(groups[4].entries.len(), 1);
}

#[test]
fn ratios_are_shoal_over_the_row() {
    let groups = sample();
    let request = &groups[0];
    let ratio = |row: &str| {
        let e = request.entries.iter().find(|e| e.row == row).expect("row");
        request.ratio(e)
    };
    assert_eq!(ratio("shoal-request"), None);
    assert_eq!(ratio("quinn-stream"), Some((1.2, Some(1.25))));
    assert_eq!(ratio("nats-request"), Some((0.5, Some(0.25))));
    let pubsub = &groups[2];
    let zmq = pubsub.entries.iter().find(|e| e.row == "zmq-pubsub-64");
    assert_eq!(pubsub.ratio(zmq.expect("row")), Some((0.25, None)));
}

#[test]
fn renderings() {
    let groups = sample();
    let text = render_table(&groups);
    let line = |row: &str| {
        text.lines()
            .find(|l| l.split_whitespace().any(|w| w == row))
            .unwrap_or_else(|| panic!("{row} missing in\n{text}"))
            .to_owned()
    };
    assert!(line("nats-request").ends_with("x0.50 / x0.25"), "{text}");
    assert!(line("shoal-request").starts_with("request "), "{text}");
    assert!(line("shoal-request").ends_with("(Shoal)"), "{text}");
    assert!(line("zmq-pubsub-64").ends_with("x0.250"), "{text}");
    assert!(line("zmq-p2p-64").ends_with(" -"), "{text}");
    assert!(
        line("zenoh-tcp-ll-request").contains("20.0 / 25.0 µs"),
        "{text}"
    );
    let md = render_markdown(&groups);
    assert!(
        md.contains("| **pubsub-64** | shoal-pubsub-64 | shoal | 500,000 msgs/s | (Shoal) |"),
        "{md}"
    );
    assert!(
        md.contains("|  | quinn-batch-64 | floor | 10,000,000 msgs/s | x0.050 |"),
        "{md}"
    );
    let json = render_json(&groups);
    assert!(
        json.contains("{\"kind\": \"request\", \"shoal\": \"shoal-request\", \"rows\": ["),
        "{json}"
    );
    assert!(
        json.contains(
            "\"name\": \"nats-request\", \"system\": \"nats\", \"role\": \"rival\", \
             \"variant\": \"nats\", \"p50_us\": 60.000, \"p99_us\": 200.000, \
             \"shoal_ratio_p50\": 0.5000, \"shoal_ratio_p99\": 0.2500}"
        ),
        "{json}"
    );
    assert!(
        json.contains("\"name\": \"zmq-pubsub-64\", \"system\": \"zmq\", \"role\": \"rival\", \"variant\": \"zmq\", \"msgs_per_sec\": 2000000.0, \"shoal_ratio\": 0.2500}"),
        "{json}"
    );
    assert!(json.contains("\"shoal\": null"), "{json}");
    assert!(LEGEND.contains("Shoal"));
}
