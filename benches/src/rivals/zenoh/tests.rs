use super::*;
use crate::{BenchConfig, Measures, ScenarioResults, find_scenario, run_repeated};

fn latency_rows(name: &str) -> Vec<crate::AggregatedReport> {
    let scenario = find_scenario(name).expect("registered");
    assert_eq!(scenario.system, crate::systems::ZENOH);
    match run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {}) {
        Ok(ScenarioResults::Latency(rows)) => rows,
        Ok(other) => panic!("{name}: latency rows expected, got {other:?}"),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn every_variant_is_configured_for_loopback_only() {
    let tls = Tls::generate().expect("tls");
    for variant in VARIANTS {
        for role in [Role::Listen(7447), Role::Connect(&[7447, 7448])] {
            let config = variant.config(role, &tls).expect("config");
            let json = format!("{config}");
            for wildcard in ["[::]", "0.0.0.0"] {
                assert!(!json.contains(wildcard), "{}: {json}", variant.name);
            }
            if let Role::Connect(_) = role {
                assert!(json.contains("#bind=127.0.0.1:0"), "{json}");
            }
            for key in ["scouting/multicast/enabled", "scouting/gossip/enabled"] {
                assert_eq!(config.get_json(key).expect(key), "false", "{key}");
            }
            assert_eq!(
                config.get_json("transport/unicast/lowlatency").expect("ll"),
                variant.low_latency.to_string()
            );
        }
    }
    assert_eq!(QUIC_LL.link.endpoint(9), "quic/127.0.0.1:9");
}

#[test]
fn ready_futures_run_without_a_runtime_and_waiting_ones_fail() {
    assert_eq!(run_ready(async { 7 }).expect("ready"), 7);
    let never = std::future::pending::<()>();
    assert!(run_ready(never).is_err());
}

#[test]
fn request_rows_for_every_variant() {
    let rows = latency_rows(request::NAME);
    let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "zenoh-tcp-request",
            "zenoh-tcp-ll-request",
            "zenoh-quic-request",
            "zenoh-quic-ll-request"
        ]
    );
    for row in &rows {
        assert_eq!(
            row.median.count,
            BenchConfig::quick().count,
            "{}",
            row.median.name
        );
        assert!(row.median.p50 > 0 && row.median.p50 <= row.median.max);
    }
    let scenario = find_scenario(request::NAME).expect("registered");
    assert!(matches!(scenario.run, Measures::RoundTrip(_)) && scenario.in_all);
}

#[test]
fn publish_rows_count_every_subscriber() {
    let rows = latency_rows(publish::NAME);
    let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
    let mut expected = Vec::new();
    for variant in VARIANTS {
        expected.push(format!("{}-publish-1", variant.name));
        expected.push(format!("{}-publish-8", variant.name));
        expected.push(format!("{}-publish-8-last", variant.name));
    }
    assert_eq!(names, expected);
    for row in &rows {
        // `-8` holds every subscriber's samples; `-1` and `-last` one per message.
        let per_message = if row.median.name.ends_with("-8") {
            8
        } else {
            1
        };
        let count = BenchConfig::quick().count * per_message;
        assert_eq!(row.median.count, count, "{}", row.median.name);
    }
}

#[test]
fn throughput_rows_count_deliveries() {
    let scenario = find_scenario(throughput::NAME).expect("registered");
    let Ok(ScenarioResults::Throughput(rows)) =
        run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {})
    else {
        panic!("zenoh-throughput failed or gave no throughput rows");
    };
    let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "zenoh-tcp-pubsub-64",
            "zenoh-quic-pubsub-64",
            "zenoh-tcp-pubsub-1024",
            "zenoh-quic-pubsub-1024",
            "zenoh-tcp-pubsub-65536",
            "zenoh-quic-pubsub-65536"
        ]
    );
    for row in &rows {
        assert!(row.median.messages > 0, "{}", row.median.name);
        let baseline = format!("quinn-batch-{}", row.median.payload);
        assert_eq!(row.median.baseline.as_deref(), Some(baseline.as_str()));
    }
}

#[test]
fn unreachable_peer_is_a_clear_error() {
    let tls = Tls::generate().expect("tls");
    // Free, released, so nobody listens there.
    let port = free_ports(Link::Tcp, 1).expect("port")[0];
    let config = TCP.config(Role::Connect(&[port]), &tls).expect("config");
    let err = open(config).expect_err("nothing listens there");
    assert!(
        err.message().starts_with("zenoh failed to open session"),
        "{err}"
    );
}
