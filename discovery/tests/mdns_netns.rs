//! mDNS discovery between nodes in network namespaces (feature `netns`, Linux, root).
//!
//! Every mDNS daemon in this file is created on a thread inside a namespace built by
//! `shoal_discovery::netns`; nothing runs in the root namespace (each test checks this for every
//! daemon thread of the process). Without root the tests print a skip line and pass.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_discovery::mdns::{RejectReason, SERVICE_TYPE};
use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{
    Discovery, DiscoveryEvent, InterfaceSelector, LocalNode, MdnsConfig, MdnsDiscovery, PeerHint,
    Source, in_root_netns,
};
use shoal_proto::{NodeId, PROTOCOL_VERSION};
use tokio::sync::mpsc::UnboundedReceiver;

/// Generous bound for one discovery step; typical times are tens of milliseconds.
const STEP: Duration = Duration::from_secs(5);

/// Goodbyes are TTL 0, which receivers keep for one more second (RFC 6762 §10.1).
const GOODBYE: Duration = Duration::from_secs(5);

fn netns_or_skip(test: &str) -> bool {
    netns::can_create_netns_or_say_skipped(test)
}

fn random_id() -> NodeId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hi = RandomState::new().build_hasher();
    hi.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut lo = RandomState::new().build_hasher();
    lo.write_u128(Instant::now().elapsed().as_nanos());
    NodeId::from_u128(u128::from(hi.finish()) << 64 | u128::from(lo.finish()))
}

fn local(node_id: NodeId, service: &str, addr: &str) -> LocalNode {
    LocalNode {
        node_id,
        service: service.into(),
        addrs: vec![addr.parse().expect("listen address")],
    }
}

/// A started source and its event stream. Drop stops it (goodbyes) before the LAN goes.
struct Node {
    id: NodeId,
    mdns: MdnsDiscovery,
    events: UnboundedReceiver<DiscoveryEvent>,
    /// Events received while waiting for something else, oldest first.
    backlog: Vec<DiscoveryEvent>,
}

impl Node {
    /// Waits (at most `within`) for an event matching `pred`, looking at the backlog first.
    /// Events that do not match stay in the backlog.
    fn wait_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&DiscoveryEvent) -> bool,
    ) -> Option<DiscoveryEvent> {
        if let Some(pos) = self.backlog.iter().position(&mut pred) {
            return Some(self.backlog.remove(pos));
        }
        let rt = runtime();
        let deadline = Instant::now() + within;
        // Bounded by time and by count.
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rt.block_on(async { tokio::time::timeout(left, self.events.recv()).await }) {
                Ok(Some(event)) if pred(&event) => return Some(event),
                Ok(Some(event)) => self.backlog.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        None
    }

    fn expect_up(&mut self, peer: NodeId, within: Duration) -> PeerHint {
        match self.wait_for(within, is_up_of(peer)) {
            Some(DiscoveryEvent::Up(hint)) => hint,
            _ => panic!(
                "{} did not see {peer} come up within {within:?}; other events: {:?}; diagnostics: {:#?}",
                self.id,
                self.backlog,
                self.mdns.diagnostics()
            ),
        }
    }

    fn expect_down(&mut self, peer: NodeId, within: Duration) -> PeerHint {
        match self.wait_for(within, is_down_of(peer)) {
            Some(DiscoveryEvent::Down(hint)) => hint,
            _ => panic!(
                "{} did not see {peer} go down within {within:?}; other events: {:?}",
                self.id, self.backlog
            ),
        }
    }
}

/// Starts a source on a new thread inside namespace `ns`.
fn start_in(ns: &str, config: MdnsConfig, local: LocalNode) -> Node {
    let id = local.node_id;
    let (mdns, events) = netns::run_in(ns, move || {
        assert!(
            !in_root_netns(),
            "about to start mDNS in the root network namespace"
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut mdns = config.build();
        mdns.start(&local, tx).expect("start mDNS");
        (mdns, rx)
    })
    .expect("enter namespace");
    Node {
        id,
        mdns,
        events,
        backlog: Vec::new(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn is_up_of(id: NodeId) -> impl FnMut(&DiscoveryEvent) -> bool {
    move |e| matches!(e, DiscoveryEvent::Up(h) if h.node_id == Some(id))
}

fn is_down_of(id: NodeId) -> impl FnMut(&DiscoveryEvent) -> bool {
    move |e| matches!(e, DiscoveryEvent::Down(h) if h.node_id == Some(id))
}

/// Every mdns-sd daemon thread in the process is outside the root namespace, and each of
/// `namespaces` has at least one (so the daemon thread inherited its creator's namespace).
fn audit_daemon_threads(namespaces: &[&str]) {
    let root = netns::root_netns_inode().expect("root netns inode");
    let wanted: Vec<u64> = namespaces
        .iter()
        .map(|ns| netns::netns_inode(ns).expect("netns inode"))
        .collect();
    // A new thread names itself after it starts: poll briefly (bounded) for the names.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let threads = netns::mdns_daemon_thread_netns().expect("list threads");
        assert!(
            !threads.contains(&root),
            "an mDNS daemon thread runs in the root network namespace"
        );
        let missing: Vec<&&str> = namespaces
            .iter()
            .zip(&wanted)
            .filter(|(_, inode)| !threads.contains(inode))
            .map(|(ns, _)| ns)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no mDNS daemon thread in {missing:?}: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A hostile instance: name, port, TXT entries, and the reason the observer must record.
type Hostile = (String, u16, Vec<(&'static str, String)>, RejectReason);

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

#[test]
fn two_hosts_find_each_other_and_goodbye_means_down() {
    if !netns_or_skip("two_hosts_find_each_other_and_goodbye_means_down") {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut a = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "invoice", "0.0.0.0:7000"),
    );
    let t0 = Instant::now();
    let mut b = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "billing", "0.0.0.0:7001"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1)]);

    let hint = a.expect_up(b.id, STEP);
    let a_saw_b = t0.elapsed();
    assert_eq!(hint.node_id, Some(b.id));
    assert_eq!(hint.service.as_deref(), Some("billing"));
    assert_eq!(
        hint.addrs,
        vec![sock(lan.addr(1), 7001)],
        "only lan0's IPv4 address, with the QUIC port"
    );
    assert_eq!(hint.source, Source::Mdns);

    let hint = b.expect_up(a.id, STEP);
    assert_eq!(hint.service.as_deref(), Some("invoice"));
    assert_eq!(hint.addrs, vec![sock(lan.addr(0), 7000)]);

    let diagnostics = a.mdns.diagnostics();
    assert!(diagnostics.running);
    assert_eq!(
        diagnostics.local_instance,
        Some(format!("{}.{SERVICE_TYPE}", a.id))
    );
    assert_eq!(diagnostics.peers.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics.peers[0].node_id, b.id);
    assert_eq!(diagnostics.peers[0].via, vec![netns::HOST_IF.to_owned()]);
    assert!(diagnostics.rejected.is_empty(), "{diagnostics:#?}");
    let report = a.mdns.report();
    assert_eq!(report.source, Some(Source::Mdns));
    assert_eq!(report.peers.len(), 1);

    // Goodbye: B stops, A hears it.
    let stop_started = Instant::now();
    b.mdns.stop();
    let stop_took = stop_started.elapsed();
    assert!(
        stop_took < Duration::from_secs(3),
        "stop took {stop_took:?}"
    );
    b.mdns.stop(); // idempotent
    assert!(!b.mdns.diagnostics().running);
    let hint = a.expect_down(b.id, GOODBYE);
    let down_after = stop_started.elapsed();
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7001)]);
    assert!(a.mdns.diagnostics().peers.is_empty());
    println!("A saw B after {a_saw_b:?}; stop took {stop_took:?}; Down after {down_after:?}");
}

#[test]
fn nodes_on_one_host_find_each_other_over_loopback_only() {
    if !netns_or_skip("nodes_on_one_host_find_each_other_over_loopback_only") {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let lo = || MdnsConfig::new([InterfaceSelector::LoopbackOnly]);
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            start_in(
                lan.host(0),
                lo(),
                local(random_id(), "svc", &format!("0.0.0.0:{}", 7000 + i)),
            )
        })
        .collect();
    // Two LAN-only nodes, on different hosts, as a barrier and a witness.
    let mut on_lan_h0 = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "svc", "0.0.0.0:7100"),
    );
    let on_lan_h1 = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "svc", "0.0.0.0:7101"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1)]);

    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, peer) in ids.iter().enumerate() {
            if i != j {
                let hint = node.expect_up(*peer, STEP);
                assert_eq!(hint.addrs, vec![sock(Ipv4Addr::LOCALHOST, 7000 + j as u16)]);
            }
        }
    }
    // Once the LAN node on h0 has heard the one on h1, LAN traffic demonstrably flows...
    on_lan_h0.expect_up(on_lan_h1.id, STEP);
    // ...and the loopback-only nodes still know only each other, the LAN nodes only each other.
    for node in &nodes {
        let seen: HashSet<NodeId> = node
            .mdns
            .diagnostics()
            .peers
            .iter()
            .map(|p| p.node_id)
            .collect();
        assert!(
            !seen.contains(&on_lan_h0.id) && !seen.contains(&on_lan_h1.id),
            "loopback node saw a LAN node"
        );
        assert_eq!(seen.len(), 2);
    }
    let seen: Vec<NodeId> = on_lan_h0
        .mdns
        .diagnostics()
        .peers
        .iter()
        .map(|p| p.node_id)
        .collect();
    assert_eq!(seen, vec![on_lan_h1.id], "LAN node saw a loopback node");
}

#[test]
fn dual_stack_announces_link_local_ipv6_with_scope() {
    if !netns_or_skip("dual_stack_announces_link_local_ipv6_with_scope") {
        return;
    }
    let lan = Lan::new_dual_stack(2).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut a = start_in(lan.host(0), lan0(), local(random_id(), "svc", "[::]:7000"));
    let b = start_in(lan.host(1), lan0(), local(random_id(), "svc", "[::]:7001"));
    let lan0_index_on_a = lan
        .run_on(0, || {
            let name = std::ffi::CString::new(netns::HOST_IF).expect("name");
            // SAFETY: `name` is a valid NUL-terminated string for the call.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })
        .expect("enter h0");

    // IPv6 link-local addresses may show up in a later Updated: wait for one.
    let hint = a.expect_up(b.id, STEP);
    let has_v6 = |h: &PeerHint| h.addrs.iter().any(SocketAddr::is_ipv6);
    let hint = if has_v6(&hint) {
        hint
    } else {
        match a.wait_for(
            STEP,
            |e| matches!(e, DiscoveryEvent::Updated(h) if has_v6(h)),
        ) {
            Some(DiscoveryEvent::Updated(h)) => h,
            _ => panic!(
                "no IPv6 address for B: first {hint:?}, then {:?}",
                a.backlog
            ),
        }
    };
    assert!(hint.addrs.contains(&sock(lan.addr(1), 7001)), "{hint:?}");
    for addr in hint.addrs.iter().filter(|a| a.is_ipv6()) {
        let SocketAddr::V6(v6) = addr else {
            unreachable!()
        };
        assert_eq!(v6.port(), 7001);
        if v6.ip().segments()[0] & 0xffc0 == 0xfe80 {
            assert_eq!(
                v6.scope_id(),
                lan0_index_on_a,
                "link-local needs A's interface index: {hint:?}"
            );
        }
    }
}

/// A responder in a third namespace announces broken and hostile `_shoal._udp` instances; the
/// observer reports only the honest peer and lists the rest in its diagnostics.
#[test]
fn hostile_announcements_are_rejected_and_recorded() {
    if !netns_or_skip("hostile_announcements_are_rejected_and_recorded") {
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut a = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "observer", "0.0.0.0:7000"),
    );
    let (a_id, b_id) = (a.id, random_id());

    let pv = PROTOCOL_VERSION.to_string();
    let id = |n: NodeId| n.to_string();
    let (x1, x2, x3, x4, x5, x6) = (
        random_id(),
        random_id(),
        random_id(),
        random_id(),
        random_id(),
        random_id(),
    );
    // The longest legal DNS label. Longer instance names (one is tried below) are not valid
    // DNS; mdns-sd's parser drops them before the checks. They must not come up either.
    let huge = "h".repeat(63);
    let illegal = "i".repeat(200);
    // (instance, port, TXT, expected reason)
    let hostile: Vec<Hostile> = vec![
        (
            id(x1),
            7201,
            vec![("svc", "x".into()), ("id", id(x1))],
            RejectReason::MissingTxt("pv"),
        ),
        (
            "zz-not-an-id".into(),
            7202,
            vec![("svc", "x".into()), ("id", "zz".into()), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
        (
            id(x2),
            7203,
            vec![
                ("svc", "x".into()),
                ("id", "+123".into()),
                ("pv", pv.clone()),
            ],
            RejectReason::BadNodeId,
        ),
        (
            id(x3),
            7204,
            vec![("svc", "x".into()), ("id", id(b_id)), ("pv", pv.clone())],
            RejectReason::NodeIdMismatch,
        ),
        (
            id(a_id),
            7205,
            vec![("svc", "evil".into()), ("id", id(a_id)), ("pv", pv.clone())],
            RejectReason::ClaimsOurNodeId,
        ),
        (
            huge.clone(),
            7206,
            vec![("svc", "x".into()), ("id", id(x4)), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
        (
            id(x5),
            7207,
            vec![("svc", "x".into()), ("id", id(x5)), ("pv", "999".into())],
            RejectReason::UnsupportedProtocolVersion(999),
        ),
        (
            id(x6),
            7208,
            vec![
                ("svc", "bell\u{7}".into()),
                ("id", id(x6)),
                ("pv", pv.clone()),
            ],
            RejectReason::BadService,
        ),
        (
            illegal,
            7209,
            vec![("svc", "x".into()), ("id", id(x4)), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
    ];
    // All but the illegal name must be recorded.
    let expected: Vec<(String, RejectReason)> = hostile
        .iter()
        .take(hostile.len() - 1)
        .map(|(instance, _, _, reason)| (instance.clone(), reason.clone()))
        .collect();

    // The hostile responder: a raw mdns-sd daemon inside host 2.
    let evil_ip = IpAddr::V4(lan.addr(2));
    let evil = netns::run_in(lan.host(2), move || {
        assert!(
            !in_root_netns(),
            "about to start mDNS in the root network namespace"
        );
        let daemon = mdns_sd::ServiceDaemon::new().expect("raw daemon");
        daemon
            .disable_interface(mdns_sd::IfKind::All)
            .expect("disable");
        daemon
            .enable_interface(netns::HOST_IF)
            .expect("enable lan0");
        for (n, (instance, port, txt, _)) in hostile.into_iter().enumerate() {
            let host = format!("evil{n}.local.");
            match mdns_sd::ServiceInfo::new(SERVICE_TYPE, &instance, &host, evil_ip, port, &txt[..])
            {
                Ok(mut info) => {
                    info.set_requires_probe(false);
                    daemon.register(info).expect("register hostile service");
                }
                Err(e) => println!("mdns-sd refused to build hostile instance {n}: {e}"),
            }
        }
        daemon
    })
    .expect("enter h2");

    let mut b = start_in(lan.host(1), lan0(), local(b_id, "honest", "0.0.0.0:7001"));
    audit_daemon_threads(&[lan.host(0), lan.host(1), lan.host(2)]);

    let hint = a.expect_up(b_id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7001)]);
    assert_eq!(hint.service.as_deref(), Some("honest"));
    b.expect_up(a_id, STEP);

    // Wait (bounded) until every hostile instance shows up in A's diagnostics.
    let deadline = Instant::now() + STEP;
    let missing = loop {
        let rejected = a.mdns.diagnostics().rejected;
        let missing: Vec<_> = expected
            .iter()
            .filter(|(instance, reason)| {
                !rejected.iter().any(|r| {
                    r.reason == *reason
                        && r.instance.starts_with(&instance[..instance.len().min(32)])
                })
            })
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let diagnostics = a.mdns.diagnostics();
    assert!(
        missing.is_empty(),
        "not recorded: {missing:?}\ndiagnostics: {diagnostics:#?}"
    );
    for r in &diagnostics.rejected {
        assert!(r.via.iter().all(|v| v == netns::HOST_IF), "{r:?}");
        println!(
            "rejected {} ({}): {} x{}",
            r.instance,
            r.via.join(","),
            r.reason,
            r.count
        );
    }
    assert!(
        diagnostics
            .rejected
            .iter()
            .any(|r| r.instance.starts_with(&huge[..32]))
    );

    // Nothing but B was ever reported to A.
    a.wait_for(Duration::ZERO, |_| false);
    for event in &a.backlog {
        let (DiscoveryEvent::Up(h) | DiscoveryEvent::Updated(h) | DiscoveryEvent::Down(h)) = event
        else {
            continue;
        };
        assert_eq!(h.node_id, Some(b_id), "unexpected event {event:?}");
    }
    assert_eq!(
        diagnostics
            .peers
            .iter()
            .map(|p| p.node_id)
            .collect::<Vec<_>>(),
        vec![b_id]
    );

    // The honest peer is unaffected by the instance that claims its id.
    b.mdns.stop();
    a.expect_down(b_id, GOODBYE);

    if let Ok(status) = evil.shutdown() {
        let _ = status.recv_timeout(Duration::from_secs(2));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Time from starting B to A reporting B up, and from starting B to B reporting A up, ten times
/// each with and without name probing. `cargo test -p shoal-discovery --all-features --
/// --ignored --nocapture discovery_latency`.
#[test]
#[ignore = "measurement; prints p50/max"]
fn discovery_latency() {
    if !netns_or_skip("discovery_latency") {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let lan0 = |probe| MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]).probe(probe);
    for probe in [false, true] {
        let mut a = start_in(
            lan.host(0),
            lan0(probe),
            local(random_id(), "a", "0.0.0.0:7000"),
        );
        let (mut a_sees_b, mut b_sees_a) = (Vec::new(), Vec::new());
        for round in 0..10 {
            let t0 = Instant::now();
            let mut b = start_in(
                lan.host(1),
                lan0(probe),
                local(random_id(), "b", &format!("0.0.0.0:{}", 7100 + round)),
            );
            a.expect_up(b.id, STEP);
            a_sees_b.push(t0.elapsed());
            b.expect_up(a.id, STEP);
            b_sees_a.push(t0.elapsed());
            b.mdns.stop();
            a.expect_down(b.id, GOODBYE);
            a.backlog.clear();
        }
        for (what, mut samples) in [("A sees new B", a_sees_b), ("new B sees A", b_sees_a)] {
            samples.sort();
            println!(
                "probe={probe}: {what}: p50 {:?}, max {:?}, all {samples:?}",
                percentile(&samples, 50),
                samples[samples.len() - 1]
            );
        }
    }
}

/// Counts of frames seen on the bridge, by kind.
#[derive(Debug, Default)]
struct Captured {
    mdns: usize,
    igmp: usize,
    ipv6: usize,
    other: usize,
}

/// A raw packet socket on every interface of the namespace it was opened in.
struct Capture(std::os::fd::OwnedFd);

impl Capture {
    /// Opens the capture inside namespace `ns`.
    fn open_in(ns: &str) -> Self {
        netns::run_in(ns, || {
            let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
            // SAFETY: plain socket(2) call; the descriptor is owned below.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
        })
        .expect("enter bridge namespace")
    }

    /// Reads everything queued so far (bounded) and classifies it.
    fn drain(&self) -> Captured {
        use std::os::fd::AsRawFd;
        let mut counts = Captured::default();
        let mut buf = [0u8; 2048];
        for _ in 0..100_000 {
            // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            let frame = &buf[..n];
            let ipv4 = frame.len() > 34 && frame[12..14] == [0x08, 0x00];
            let ihl = if ipv4 {
                usize::from(frame[14] & 0x0f) * 4
            } else {
                0
            };
            match (ipv4, frame.get(23)) {
                (true, Some(2)) => counts.igmp += 1,
                (true, Some(17))
                    if frame.get(14 + ihl + 2..14 + ihl + 4) == Some(&[0x14, 0xe9]) =>
                {
                    counts.mdns += 1
                }
                _ if frame.get(12..14) == Some(&[0x86, 0xdd]) => counts.ipv6 += 1,
                _ => counts.other += 1,
            }
        }
        counts
    }
}

/// Nodes that select only loopback send no mDNS on the LAN interface; a LAN node does (which
/// shows the capture works). Reports the IGMP membership traffic mdns-sd causes on every
/// interface when it starts (before the interface selection applies).
#[test]
fn loopback_only_sends_no_mdns_on_the_lan() {
    if !netns_or_skip("loopback_only_sends_no_mdns_on_the_lan") {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let capture = Capture::open_in(lan.bridge());
    let before = capture.drain();

    let lo = || MdnsConfig::new([InterfaceSelector::LoopbackOnly]);
    let mut a = start_in(lan.host(0), lo(), local(random_id(), "svc", "0.0.0.0:7000"));
    let mut b = start_in(lan.host(0), lo(), local(random_id(), "svc", "0.0.0.0:7001"));
    audit_daemon_threads(&[lan.host(0)]);
    a.expect_up(b.id, STEP);
    b.expect_up(a.id, STEP);
    b.mdns.stop();
    a.expect_down(b.id, GOODBYE);
    a.mdns.stop();
    let loopback_only = capture.drain();
    println!("before: {before:?}; loopback-only nodes: {loopback_only:?}");
    assert_eq!(
        loopback_only.mdns, 0,
        "mDNS left a loopback-only namespace on lan0"
    );
    // mdns-sd joins the multicast group on every interface before the selection applies (and
    // leaves it again): IGMP membership reports are all that may appear.
    assert_eq!(
        (loopback_only.ipv6, loopback_only.other),
        (0, 0),
        "{loopback_only:?}"
    );

    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut c = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "svc", "0.0.0.0:7002"),
    );
    let d = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "svc", "0.0.0.0:7003"),
    );
    c.expect_up(d.id, STEP);
    let with_lan = capture.drain();
    println!("LAN nodes: {with_lan:?}");
    assert!(
        with_lan.mdns > 0,
        "the capture saw no mDNS at all: {with_lan:?}"
    );
}

/// `AllMulticast` covers every multicast-capable interface: here `lan0` and `lo` (the LAN
/// helper turns multicast on for `lo`). Each peer is reported with the addresses of the
/// interface it was heard on.
#[test]
fn all_multicast_covers_lan_and_loopback() {
    if !netns_or_skip("all_multicast_covers_lan_and_loopback") {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let all = MdnsConfig::new([InterfaceSelector::AllMulticast]);
    let mut a = start_in(lan.host(0), all, local(random_id(), "svc", "0.0.0.0:7000"));
    let on_lo = start_in(
        lan.host(0),
        MdnsConfig::new([InterfaceSelector::LoopbackOnly]),
        local(random_id(), "svc", "0.0.0.0:7001"),
    );
    let on_lan = start_in(
        lan.host(1),
        MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]),
        local(random_id(), "svc", "0.0.0.0:7002"),
    );
    let hint = a.expect_up(on_lo.id, STEP);
    assert_eq!(hint.addrs, vec![sock(Ipv4Addr::LOCALHOST, 7001)]);
    let hint = a.expect_up(on_lan.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7002)]);
    let via: Vec<Vec<String>> = a
        .mdns
        .diagnostics()
        .peers
        .into_iter()
        .map(|p| p.via)
        .collect();
    assert!(
        via.contains(&vec!["lo".to_owned()]) && via.contains(&vec![netns::HOST_IF.to_owned()]),
        "{via:?}"
    );
}
