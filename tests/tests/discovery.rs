//! Whole nodes finding each other by mDNS, each inside a Linux network namespace built by
//! `shoal_discovery::netns` (hosts of a bridged LAN: `lan0` = 10.99.0.<i+1>/24, and `lo`).
//!
//! The rule of this file: nothing runs mDNS, and no node socket exists, in the root network
//! namespace. Every in-process node is started on a thread inside a namespace the test created
//! ([`NsNode`]), so its QUIC socket and its mDNS daemon thread belong to that namespace; the
//! crash test's victim is a separate process started with `ip netns exec` ([`Victim`]).
//! `MdnsDiscovery` refuses the root namespace by default and nothing here allows it; the tests
//! also check that no mDNS daemon thread of this process is in the root namespace, and that the
//! victim process is in its host's namespace. Without root (no namespaces) every test prints
//! the skip line and passes.
//!
//! Every wait is bounded; every loop is bounded in count and in time.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod netns_nodes;

#[path = "discovery/killed.rs"]
mod killed;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{Error, Message, MulticastConfig, Node, NodeEvent, NodeId, Receipt};
use shoal_discovery::mdns::SERVICE_TYPE;
use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{InterfaceSelector, MdnsConfig, in_root_netns};
use shoal_proto::PROTOCOL_VERSION;
use shoal_tests::{Mesh, fresh_node_id};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use netns_nodes::{
    CHILD_ENV, HANDLER_TIME, KILL_TEST, NsNode, STEP, Seen, Victim, audit_mdns_threads,
    count_by_node, drain_events, lan_node, netns_or_skip, run_victim, runtime, send_batch,
    serve_jobs_and_quotes, stop_all, text, wait_event,
};

// ---------------------------------------------------------------------------------------------
// 1. Three hosts, mDNS only.
// ---------------------------------------------------------------------------------------------

/// Three hosts, each in its own namespace; services `a`, `b`, `b`; every node knows its peers
/// only from mDNS on `lan0`. `a` finds both instances of `b`, lists the multicast group b1
/// advertises (and none for b2), spreads 100 commands over them (all acknowledged) and gets a
/// reply to a request; the `b` nodes find `a` and each other.
#[test]
fn nodes_in_three_namespaces_discover_each_other_and_exchange_commands() {
    if !netns_or_skip("nodes_in_three_namespaces_discover_each_other_and_exchange_commands") {
        return;
    }
    let lan = Lan::new(3).unwrap();
    let mesh = Mesh::new();
    let t0 = Instant::now();
    // b1 has multicast on (default group): its announcement says so, b2's says nothing.
    let b1 = NsNode::start(
        lan.host(1),
        lan_node(&mesh, "b").multicast(MulticastConfig::new(netns::HOST_IF)),
    );
    let b2 = NsNode::start(lan.host(2), lan_node(&mesh, "b"));
    let a = NsNode::start(lan.host(0), lan_node(&mesh, "a"));
    audit_mdns_threads(&[lan.host(0), lan.host(1), lan.host(2)]);
    let seen: Seen = Arc::default();
    serve_jobs_and_quotes(&b1.node, &seen);
    serve_jobs_and_quotes(&b2.node, &seen);
    let b_ids = HashSet::from([b1.node.id(), b2.node.id()]);

    runtime().block_on(async {
        a.node
            .wait_for_instances("b", 2, STEP)
            .await
            .unwrap_or_else(|e| panic!("a did not find both b: {e}\n{}", a.node.diagnose("b")));
        println!(
            "a connected to both b instances {:?} after start",
            t0.elapsed()
        );
        let addrs: HashSet<IpAddr> = a
            .node
            .peers()
            .iter()
            .filter(|p| p.service == "b")
            .map(|p| p.addr.ip())
            .collect();
        assert_eq!(
            addrs,
            HashSet::from([lan.addr(1).into(), lan.addr(2).into()]),
            "b is reached at the LAN addresses of h1 and h2: {:?}",
            a.node.peers()
        );
        let groups: HashMap<NodeId, Option<String>> = a
            .node
            .discovered()
            .into_iter()
            .map(|d| (d.node, d.multicast.map(|g| g.to_string())))
            .collect();
        let default_group = Some("239.255.83.72:7451".to_owned());
        assert_eq!(groups[&b1.node.id()], default_group, "{groups:?}");
        assert_eq!(groups[&b2.node.id()], None, "{groups:?}");
        // The whole mesh formed from mDNS alone.
        for b in [&b1, &b2] {
            for (service, count) in [("a", 1), ("b", 1)] {
                b.node
                    .wait_for_instances(service, count, STEP)
                    .await
                    .unwrap_or_else(|e| panic!("a b node did not find `{service}`: {e}"));
            }
        }

        let receipts = send_batch(&a.node, "b", "job", 100).await;
        let by_node = count_by_node(&receipts);
        println!("100 commands acknowledged by: {by_node:?}");
        assert_eq!(receipts.len(), 100);
        assert!(by_node.keys().all(|n| b_ids.contains(n)), "{by_node:?}");
        assert_eq!(by_node.len(), 2, "both b instances take work: {by_node:?}");

        let seen = seen.lock().unwrap().clone();
        let handled: HashSet<&String> = seen.values().flatten().collect();
        assert_eq!(handled.len(), 100, "every command was handled");
        for id in &b_ids {
            assert!(
                seen.get(id).is_some_and(|v| !v.is_empty()),
                "instance {id} handled nothing: {seen:?}"
            );
        }

        let reply = a
            .node
            .request("b", Message::command("quote", "book"), STEP)
            .await
            .unwrap();
        let reply = text(&reply);
        assert!(
            b_ids.iter().any(|id| reply == format!("{id} quotes book")),
            "unexpected reply {reply:?}"
        );
    });
    stop_all([a, b1, b2]);
    drop(lan);
}

// ---------------------------------------------------------------------------------------------
// 2. One host, loopback only.
// ---------------------------------------------------------------------------------------------

/// Three nodes in one namespace, mDNS on loopback only, listening on 127.0.0.1: each finds the
/// other two at their loopback addresses, and sends work.
#[test]
fn several_nodes_in_one_namespace_find_each_other_on_loopback() {
    if !netns_or_skip("several_nodes_in_one_namespace_find_each_other_on_loopback") {
        return;
    }
    let lan = Lan::new(1).unwrap();
    // mDNS on loopback needs `lo` up with the MULTICAST flag; the LAN helper sets it.
    let lo = Command::new("ip")
        .args(["-n", lan.host(0), "-o", "link", "show", "lo"])
        .output()
        .unwrap();
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    let flags = lo
        .split(['<', '>'])
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .collect::<Vec<_>>();
    assert!(
        flags.contains(&"MULTICAST") && flags.contains(&"UP"),
        "lo in {}: {lo}",
        lan.host(0)
    );

    let mesh = Mesh::new();
    let nodes: Vec<NsNode> = (0..3)
        .map(|_| {
            let builder = mesh
                .builder("peer")
                .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .discovery(MdnsConfig::new([InterfaceSelector::LoopbackOnly]).build())
                .shutdown_grace(Duration::from_secs(2));
            NsNode::start(lan.host(0), builder)
        })
        .collect();
    audit_mdns_threads(&[lan.host(0)]);
    let seen: Seen = Arc::default();
    for n in &nodes {
        serve_jobs_and_quotes(&n.node, &seen);
    }

    runtime().block_on(async {
        for n in &nodes {
            n.node
                .wait_for_instances("peer", 2, STEP)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", n.node.diagnose("peer")));
        }
        for n in &nodes {
            let peers: HashSet<(NodeId, SocketAddr)> =
                n.node.peers().iter().map(|p| (p.node, p.addr)).collect();
            let others: HashSet<(NodeId, SocketAddr)> = nodes
                .iter()
                .filter(|o| o.node.id() != n.node.id())
                .map(|o| (o.node.id(), o.node.local_addr()))
                .collect();
            assert_eq!(peers, others, "each node sees exactly the other two");
            assert!(peers.iter().all(|(_, a)| a.ip().is_loopback()));
        }
        for n in &nodes {
            let receipts = send_batch(&n.node, "peer", "job", 10).await;
            assert!(receipts.iter().all(|r| r.node != n.node.id()));
            let reply = n
                .node
                .request("peer", Message::command("quote", "pen"), STEP)
                .await
                .unwrap();
            assert!(text(&reply).ends_with("quotes pen"));
        }
    });
    let handled: usize = seen.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(handled, 30);
    stop_all(nodes);
    drop(lan);
}

// ---------------------------------------------------------------------------------------------
// 4. Bogus announcements.
// ---------------------------------------------------------------------------------------------

/// A raw mdns-sd responder in h2 announces two instances of `b` with valid-looking node ids:
/// one at a port nobody listens on, one at a plain UDP socket that never answers. The honest
/// `b` in h1 is still found and used; the sender reports `HandshakeFailed` for both bogus
/// addresses, never connects to them, and keeps working.
#[test]
fn hostile_announcement_does_not_stop_honest_discovery() {
    if !netns_or_skip("hostile_announcement_does_not_stop_honest_discovery") {
        return;
    }
    let lan = Lan::new(3).unwrap();
    let hostile_ip = lan.addr(2);
    let (daemon, deaf, bogus) = netns::run_in(lan.host(2), move || {
        assert!(
            !in_root_netns(),
            "about to start mDNS in the root network namespace"
        );
        // Not Shoal, not QUIC: a socket that never reads.
        let deaf = UdpSocket::bind((hostile_ip, 0)).unwrap();
        let deaf_addr = deaf.local_addr().unwrap();
        // A port nobody listens on: bound (while `deaf` holds its own) and released at once;
        // nothing else runs in this namespace, so it stays free.
        let nobody = UdpSocket::bind((hostile_ip, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let daemon = mdns_sd::ServiceDaemon::new().unwrap();
        daemon.disable_interface(mdns_sd::IfKind::All).unwrap();
        daemon.enable_interface(netns::HOST_IF).unwrap();
        let mut bogus = Vec::new();
        for (n, addr) in [nobody, deaf_addr].into_iter().enumerate() {
            let id = fresh_node_id();
            let txt = [
                ("svc", "b".to_owned()),
                ("id", id.to_string()),
                ("pv", PROTOCOL_VERSION.to_string()),
            ];
            let mut info = mdns_sd::ServiceInfo::new(
                SERVICE_TYPE,
                &id.to_string(),
                &format!("bogus{n}.local."),
                addr.ip(),
                addr.port(),
                &txt[..],
            )
            .unwrap();
            info.set_requires_probe(false);
            daemon.register(info).unwrap();
            bogus.push((id, addr));
        }
        (daemon, deaf, bogus)
    })
    .unwrap();
    let bogus_addrs: HashSet<SocketAddr> = bogus.iter().map(|(_, a)| *a).collect();
    let bogus_ids: HashSet<NodeId> = bogus.iter().map(|(id, _)| *id).collect();

    let mesh = Mesh::new();
    let b = NsNode::start(lan.host(1), lan_node(&mesh, "b"));
    let seen: Seen = Arc::default();
    serve_jobs_and_quotes(&b.node, &seen);
    let a = NsNode::start(lan.host(0), lan_node(&mesh, "a"));
    let mut events = a.node.events();
    let mut all_events = a.node.events();
    audit_mdns_threads(&[lan.host(0), lan.host(1), lan.host(2)]);
    let honest = b.node.id();

    runtime().block_on(async {
        a.node
            .wait_for_instances("b", 1, STEP)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", a.node.diagnose("b")));
        let receipts = send_batch(&a.node, "b", "job", 50).await;
        assert!(receipts.iter().all(|r| r.node == honest));

        // Both bogus addresses fail their handshake (the node's handshake timeout is 5 s, the
        // QUIC idle timeout 2 s).
        let t0 = Instant::now();
        let mut failed: HashMap<SocketAddr, String> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for _ in 0..100 {
            if failed.len() == bogus_addrs.len() {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match wait_event(&mut events, left, |e| {
                matches!(e, NodeEvent::HandshakeFailed { addr, .. } if bogus_addrs.contains(addr))
            })
            .await
            {
                Some(NodeEvent::HandshakeFailed { addr, reason }) => {
                    failed.entry(addr).or_insert(reason);
                }
                _ => panic!(
                    "HandshakeFailed not reported for every bogus address: {failed:?}\n{}",
                    a.node.diagnose("b")
                ),
            }
        }
        assert_eq!(failed.len(), bogus_addrs.len(), "{failed:?}");
        println!("handshakes failed after {:?}: {failed:?}", t0.elapsed());
        let diagnosis = a.node.diagnose("b");
        println!("{diagnosis}");
        for (id, addr) in &bogus {
            let announced = diagnosis.announced.iter().find(|i| i.node == Some(*id));
            assert!(
                announced.is_some_and(|i| !i.connected && i.last_error.is_some()),
                "bogus {id} at {addr} is listed as announced, unreachable: {diagnosis}"
            );
        }

        // Still only the honest instance, and it still works.
        let connected: Vec<NodeId> = a
            .node
            .peers()
            .iter()
            .filter(|p| p.service == "b")
            .map(|p| p.node)
            .collect();
        assert_eq!(connected, vec![honest]);
        let receipts = send_batch(&a.node, "b", "job", 50).await;
        assert!(receipts.iter().all(|r| r.node == honest));
        let reply = a
            .node
            .request("b", Message::command("quote", "ok?"), STEP)
            .await
            .unwrap();
        assert_eq!(text(&reply), format!("{honest} quotes ok?"));
        // The honest b is not disturbed either.
        b.node.wait_for_instances("a", 1, STEP).await.unwrap();
    });
    for event in drain_events(&mut all_events) {
        match event {
            NodeEvent::PeerUp { node, addr, .. } => assert!(
                !bogus_ids.contains(&node) && !bogus_addrs.contains(&addr),
                "connected to a bogus instance: {node} at {addr}"
            ),
            NodeEvent::ProtocolError { addr, reason } => {
                panic!("protocol error from {addr}: {reason}")
            }
            _ => {}
        }
    }
    let handled: usize = seen.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(handled, 100);

    stop_all([a, b]);
    if let Ok(status) = daemon.shutdown() {
        let _ = status.recv_timeout(Duration::from_secs(2));
    }
    drop(deaf);
    drop(lan);
}

// ---------------------------------------------------------------------------------------------
// 5. A departed instance.
// ---------------------------------------------------------------------------------------------

/// An instance that leaves for good (graceful shutdown: a QUIC goodbye and an mDNS goodbye) is
/// no longer dialled once discovery has withdrawn it.
#[test]
fn departed_instance_is_no_longer_dialled() {
    if !netns_or_skip("departed_instance_is_no_longer_dialled") {
        return;
    }
    let lan = Lan::new(2).unwrap();
    let mesh = Mesh::new();
    let b = NsNode::start(lan.host(1), lan_node(&mesh, "b"));
    let a = NsNode::start(lan.host(0), lan_node(&mesh, "a"));
    let mut events = a.node.events();
    let b_id = b.node.id();
    let b_addr = SocketAddr::new(lan.addr(1).into(), b.node.local_addr().port());
    let rt = runtime();
    rt.block_on(a.node.wait_for_instances("b", 1, STEP))
        .unwrap();
    // a's own mDNS reported b too (the connection may have been b's dial): discovery reports
    // have no event, so look again (bounded) until it does.
    let announced = |want: bool| {
        let deadline = Instant::now() + STEP;
        for _ in 0..1_000 {
            if a.node.diagnose("b").announced.is_empty() != want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "b's announcement is{} listed: {}",
                if want { " not" } else { " still" },
                a.node.diagnose("b")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    announced(true);
    b.stop();
    let down = rt.block_on(wait_event(
        &mut events,
        STEP,
        |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == b_id),
    ));
    assert!(down.is_some(), "no PeerDown after b's goodbye");
    // The mDNS goodbye withdraws b.
    announced(false);
    drain_events(&mut events);
    rt.block_on(async {
        let is_redial =
            |e: &NodeEvent| matches!(e, NodeEvent::HandshakeFailed { addr, .. } if *addr == b_addr);
        // A dial already under way may still fail (the QUIC idle timeout is 2 s)...
        let _ = wait_event(&mut events, Duration::from_millis(2_500), is_redial).await;
        // ...but then nothing more. (A dialler that keeps going fails at least every ~4.5 s.)
        let redial = wait_event(&mut events, Duration::from_secs(6), is_redial).await;
        assert!(
            redial.is_none(),
            "a still dials the departed b at {b_addr}: {redial:?}"
        );
    });
    stop_all([a]);
    drop(lan);
}
