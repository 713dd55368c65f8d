//! Tests of the ZeroMQ scenarios: each runs once with tiny counts on loopback.

use super::*;
use crate::{AggregatedReport, ScenarioResults, find_scenario, pubsub, run_repeated};

fn latency_rows(name: &str) -> Vec<AggregatedReport> {
    let scenario = find_scenario(name).expect("registered");
    match run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {}) {
        Ok(ScenarioResults::Latency(rows)) => rows,
        Ok(_) => panic!("{name}: latency rows expected"),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn wire_helpers_round_trip() {
    assert_eq!(parse_ack(&ack(7, 3)), Some((7, 3)));
    assert_eq!(parse_ack(&[0; 5]), None);
    let hello = on_topic(&HELLO.to_le_bytes());
    assert!(is_hello(body(&hello)));
    assert!(!is_hello(body(&on_topic(&[0xA5; pubsub::STAMP_LEN]))));
    assert!(body(b"short").is_empty());
}

#[test]
fn refuses_endpoints_off_loopback() {
    let ctx = Context::new();
    let push = socket(&ctx, ::zmq::PUSH, IO_TIMEOUT).expect("socket");
    let err = connect(&push, "tcp://192.0.2.1:5555").expect_err("must refuse");
    assert!(err.message().contains("not on 127.0.0.1"), "{err}");
}

#[test]
fn a_side_that_fails_or_never_binds_is_an_error() {
    let config = BenchConfig {
        run_timeout: Duration::from_millis(300),
        ..BenchConfig::quick()
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
    let err = run_threads(
        "t",
        &config,
        move |_| {
            drop(tx);
            Err(BenchError::msg("no socket"))
        },
        move |ctl| receive_endpoints(&rx, ctl),
    )
    .expect_err("must fail");
    assert!(err.message().contains("ended before binding"), "{err}");

    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
    let err = run_threads(
        "t",
        &config,
        move |ctl| {
            let _keep = tx;
            while !ctl.stopped() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        },
        move |ctl| receive_endpoints(&rx, ctl),
    )
    .expect_err("must time out");
    assert!(err.message().contains("did not bind in time"), "{err}");
}

#[test]
fn request_counts_every_round_trip() {
    let rows = latency_rows(REQUEST_NAME);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].median.name, REQUEST_NAME);
    assert_eq!(rows[0].median.count, BenchConfig::quick().count);
    assert!(rows[0].median.p50 > 0);
}

#[test]
fn publish_rows_count_every_subscriber() {
    let rows = latency_rows(PUBLISH_NAME);
    let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
    assert_eq!(
        names,
        ["zmq-publish-1", "zmq-publish-8", "zmq-publish-8-last"]
    );
    let count = BenchConfig::quick().count;
    let counts: Vec<u64> = rows.iter().map(|r| r.median.count).collect();
    assert_eq!(counts, [count, 8 * count, count]);
}

#[test]
fn throughput_rows_are_delivered_and_compared() {
    let scenario = find_scenario(THROUGHPUT_NAME).expect("registered");
    let Ok(ScenarioResults::Throughput(rows)) =
        run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {})
    else {
        panic!("{THROUGHPUT_NAME} failed or gave no throughput rows");
    };
    let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "zmq-pubsub-64",
            "zmq-p2p-64",
            "zmq-pubsub-1024",
            "zmq-p2p-1024",
            "zmq-pubsub-65536",
            "zmq-p2p-65536"
        ]
    );
    for row in &rows {
        let row = &row.median;
        assert!(row.messages > 0, "{}", row.name);
        let quinn = format!("quinn-batch-{}", row.payload);
        assert_eq!(row.baseline.as_deref(), Some(quinn.as_str()));
    }
    // PUSH waits at its high-water mark: everything sent was delivered.
    for row in rows.iter().filter(|r| r.median.name.starts_with("zmq-p2p")) {
        assert_eq!(row.median.dropped, 0, "{}", row.median.name);
    }
}
