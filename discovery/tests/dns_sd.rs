//! DNS-SD over unicast DNS against a real DNS server: dnsmasq (Debian's `dnsmasq-base`), started
//! inside a network namespace this test creates, on that namespace's 127.0.0.1. Instances appear,
//! change and disappear as the records change (dnsmasq is restarted with the new records).
//!
//! Everything runs on one thread inside the namespace. Without root, or without dnsmasq, the
//! tests print a skip line and pass.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{
    Discovery, DiscoveryEvent, DnsSdConfig, LocalNode, PeerHint, Source, in_root_netns,
};
use shoal_proto::{NodeId, PROTOCOL_VERSION, Subscription};
use tokio::sync::mpsc::UnboundedReceiver;

/// Where dnsmasq answers, inside the namespace.
const DNS: &str = "127.0.0.1:5353";
const WAIT: Duration = Duration::from_secs(10);

fn ready_or_skip(test: &str) -> bool {
    if !netns::can_create_netns_or_say_skipped(test) {
        return false;
    }
    let found = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("skipped: {test}: dnsmasq is not installed (Debian package dnsmasq-base)");
    }
    found
}

/// A dnsmasq serving exactly `records` (dnsmasq options such as `srv-host=...`), killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(records: &[String]) -> Self {
        assert!(
            !in_root_netns(),
            "dnsmasq only runs inside the test's namespace"
        );
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--port=5353",
                "--pid-file=",
                "--user=root",
            ])
            .args(records.iter().map(|r| format!("--{r}")))
            .stdout(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        Self(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The records of one browsable instance `name` of `service` listening on 127.0.0.1:`port`.
fn instance(name: &str, txt: &[&str], port: u16) -> Vec<String> {
    let full = format!("{name}._shoal._udp.mesh.test");
    // dnsmasq takes quotes only in its configuration file; on its command line (no shell
    // here) each comma-separated string is taken as written.
    vec![
        format!("ptr-record=_shoal._udp.mesh.test,{full}"),
        format!("srv-host={full},{name}.hosts.mesh.test,{port}"),
        format!("txt-record={full},{}", txt.join(",")),
        format!("host-record={name}.hosts.mesh.test,127.0.0.1"),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn me() -> LocalNode {
    LocalNode {
        node_id: NodeId::from_u128(1),
        service: "orders".into(),
        addrs: vec!["127.0.0.1:7000".parse().expect("addr")],
        subscriptions: Vec::new(),
        multicast: None,
    }
}

/// The next event, at most [`WAIT`] away.
async fn next(events: &mut UnboundedReceiver<DiscoveryEvent>) -> DiscoveryEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no discovery event in time")
        .expect("source stopped")
}

fn hint(event: &DiscoveryEvent) -> &PeerHint {
    match event {
        DiscoveryEvent::Up(h) | DiscoveryEvent::Updated(h) | DiscoveryEvent::Down(h) => h,
        other => panic!("not a peer event: {other:?}"),
    }
}

#[test]
fn browsed_instances_appear_change_and_disappear_with_their_records() {
    let test = "browsed_instances_appear_change_and_disappear_with_their_records";
    if !ready_or_skip(test) {
        return;
    }
    let lan = Lan::new(1).expect("namespace");
    lan.run_on(0, || {
        let id = "0123456789abcdef0123456789abcdef";
        let pv = format!("pv={PROTOCOL_VERSION}");
        let billing = |extra: &[&str]| {
            let mut txt = vec!["svc=billing", "id=0123456789abcdef0123456789abcdef", &pv];
            txt.extend_from_slice(extra);
            instance("billing-1", &txt, 7001)
        };
        // An instance without a node id, and this node's own record (skipped).
        let mut records = billing(&["sn=0"]);
        // audit's group is not one (a unicast address): ignored, audit still counts.
        records.extend(instance(
            "audit-1",
            &["svc=audit", "mc=10.0.0.5:7451"],
            7002,
        ));
        records.extend(instance(
            "orders-1",
            &["svc=orders", "id=00000000000000000000000000000001"],
            7000,
        ));
        let mut dns = Dnsmasq::start(&records);
        runtime().block_on(async {
            let mut source = DnsSdConfig::browse("mesh.test")
                .server(DNS.parse().expect("addr"))
                .poll_every(Duration::from_millis(100))
                .build();
            let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
            source.start(&me(), tx).expect("start");

            let mut up = [next(&mut events).await, next(&mut events).await];
            up.sort_by_key(|e| hint(e).service.clone());
            let (audit, billing_up) = (hint(&up[0]), hint(&up[1]));
            assert!(matches!(up[1], DiscoveryEvent::Up(_)));
            assert_eq!(
                billing_up.node_id,
                Some(NodeId::from_u128(u128::from_str_radix(id, 16).unwrap()))
            );
            assert_eq!(
                billing_up.addrs,
                ["127.0.0.1:7001".parse::<SocketAddr>().unwrap()]
            );
            assert_eq!(billing_up.subscriptions, Some(vec![]));
            assert_eq!(billing_up.source, Source::DnsSd);
            assert_eq!(audit.service.as_deref(), Some("audit"));
            assert_eq!((audit.node_id, audit.subscriptions.clone()), (None, None));
            assert_eq!((billing_up.multicast, audit.multicast), (None, None));

            // billing now subscribes and has multicast on: its TXT record changes.
            drop(dns);
            let mut records = billing(&["mc=239.255.83.72:7451", "sn=1", "s0=order.* billing"]);
            records.extend(instance("audit-1", &["svc=audit"], 7002));
            dns = Dnsmasq::start(&records);
            let changed = next(&mut events).await;
            assert!(matches!(changed, DiscoveryEvent::Updated(_)), "{changed:?}");
            let sub = Subscription {
                pattern: "order.*".into(),
                group: Some("billing".into()),
            };
            assert_eq!(hint(&changed).subscriptions, Some(vec![sub]));
            assert_eq!(
                hint(&changed).multicast,
                Some("239.255.83.72:7451".parse().unwrap())
            );

            // audit's records are removed.
            drop(dns);
            let _dns = Dnsmasq::start(&billing(&[
                "mc=239.255.83.72:7451",
                "sn=1",
                "s0=order.* billing",
            ]));
            let gone = next(&mut events).await;
            assert!(matches!(gone, DiscoveryEvent::Down(_)), "{gone:?}");
            assert_eq!(hint(&gone).service.as_deref(), Some("audit"));
            source.stop();
        });
    })
    .expect("run in namespace");
}

#[test]
fn srv_records_list_the_instances_of_one_service() {
    let test = "srv_records_list_the_instances_of_one_service";
    if !ready_or_skip(test) {
        return;
    }
    let lan = Lan::new(1).expect("namespace");
    lan.run_on(0, || {
        // As a Kubernetes headless service publishes its pods.
        let name = "_shoal._udp.billing.shop.svc.cluster.local";
        let pods = |n: u16| -> Vec<String> {
            (0..n)
                .flat_map(|i| {
                    [
                        format!("srv-host={name},pod-{i}.cluster.local,{}", 7100 + i),
                        format!("host-record=pod-{i}.cluster.local,127.0.0.{}", i + 2),
                    ]
                })
                .collect()
        };
        let mut dns = Dnsmasq::start(&pods(2));
        runtime().block_on(async {
            let started = Instant::now();
            let mut source = DnsSdConfig::srv(name, "billing")
                .server(DNS.parse().expect("addr"))
                .poll_every(Duration::from_millis(100))
                .build();
            let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
            source.start(&me(), tx).expect("start");
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for _ in 0..2 {
                let event = next(&mut events).await;
                assert!(matches!(event, DiscoveryEvent::Up(_)), "{event:?}");
                assert_eq!(hint(&event).service.as_deref(), Some("billing"));
                assert_eq!(hint(&event).node_id, None, "known after the handshake");
                addrs.extend(&hint(&event).addrs);
            }
            addrs.sort();
            let want: Vec<SocketAddr> = vec![
                "127.0.0.2:7100".parse().unwrap(),
                "127.0.0.3:7101".parse().unwrap(),
            ];
            assert_eq!(addrs, want);
            assert!(started.elapsed() < WAIT);

            // Scaled down to one pod.
            drop(dns);
            dns = Dnsmasq::start(&pods(1));
            let gone = next(&mut events).await;
            assert!(matches!(gone, DiscoveryEvent::Down(_)), "{gone:?}");
            assert_eq!(hint(&gone).addrs, [want[1]]);
            drop(dns);
            source.stop();
        });
    })
    .expect("run in namespace");
}
