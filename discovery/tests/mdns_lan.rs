//! mDNS discovery between hosts on a LAN of network namespaces (feature `netns`, Linux, root):
//! finding each other, goodbyes, IPv6 link-local addresses, `AllMulticast`, latency.
//!
//! Every mDNS daemon here is created on a thread inside a namespace built by
//! `shoal_discovery::netns`; nothing runs in the root namespace (the tests check this for every
//! daemon thread of the process). Without root the tests print a skip line and pass.
#![cfg(target_os = "linux")]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use shoal_discovery::mdns::SERVICE_TYPE;
use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{
    Browser, Discovery, DiscoveryEvent, InterfaceSelector, LocalNode, MdnsConfig, PeerHint, Source,
};

use support::{
    GOODBYE, STEP, audit_daemon_threads, local, netns_or_skip, random_id, sock, start_in,
};

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
    // B has multicast on (its group is only announced here: no group socket in this test).
    let group = "239.255.83.72:7451".parse().expect("group");
    let mut b = start_in(
        lan.host(1),
        lan0(),
        LocalNode {
            multicast: Some(group),
            ..local(random_id(), "billing", "0.0.0.0:7001")
        },
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
    assert_eq!(hint.multicast, Some(group), "B's group, from its TXT `mc`");

    let hint = b.expect_up(a.id, STEP);
    assert_eq!(hint.service.as_deref(), Some("invoice"));
    assert_eq!(hint.addrs, vec![sock(lan.addr(0), 7000)]);
    assert_eq!(hint.multicast, None, "A has multicast off");

    let diagnostics = a.mdns.diagnostics();
    assert!(diagnostics.running);
    assert_eq!(
        diagnostics.local_instance,
        Some(format!("{}.{SERVICE_TYPE}", a.id))
    );
    assert_eq!(diagnostics.peers.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics.peers[0].node_id, b.id);
    assert_eq!(diagnostics.peers[0].via, vec![netns::HOST_IF.to_owned()]);
    assert_eq!(diagnostics.peers[0].multicast, Some(group));
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

/// A node that starts while a running one may not multicast its records (it announced less
/// than a second ago, RFC 6762 §6) learns it from the start-up query's unicast answer; with
/// the query off it learns it from the browse alone, later.
#[test]
fn the_start_up_query_is_answered_at_once() {
    if !netns_or_skip("the_start_up_query_is_answered_at_once") {
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let a = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "invoice", "0.0.0.0:7000"),
    );
    // B starts within A's first second, when A's records are rate-limited.
    let mut b = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "orders", "0.0.0.0:7001"),
    );
    let mut c = start_in(
        lan.host(2),
        lan0().startup_query(false),
        local(random_id(), "shipping", "0.0.0.0:7002"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1), lan.host(2)]);

    let hint = b.expect_up(a.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(0), 7000)]);
    // On a busy machine A's second announcement may reach B's browse before A's answer is
    // read: the answer is counted when it is read (a counter: polled, bounded).
    let deadline = Instant::now() + STEP;
    let answers = loop {
        let answers = b.mdns.diagnostics().startup_query_answers;
        if answers >= 1 || Instant::now() >= deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(answers >= 1, "A answered B's start-up query: {answers}");

    let hint = c.expect_up(a.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(0), 7000)]);
    assert_eq!(c.mdns.diagnostics().startup_query_answers, 0);
}

/// A node that hears none of a newcomer's mDNS traffic from port 5353 (nftables in its
/// namespace drops it, as a burst of hundreds of nodes starting together loses their
/// multicast) still learns of the newcomer at once: the newcomer's start-up query reached it,
/// and the newcomer introduced itself to the group from the query's port. A newcomer without
/// the start-up query stays unseen, which shows the drop works.
#[test]
fn a_newcomer_introduces_itself_to_the_instances_that_answered() {
    if !netns_or_skip("a_newcomer_introduces_itself_to_the_instances_that_answered") {
        return;
    }
    if !netns::nft_available() {
        println!(
            "skipped: a_newcomer_introduces_itself_to_the_instances_that_answered (no nft; \
             apt-get install nftables)"
        );
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut a = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "invoice", "0.0.0.0:7000"),
    );
    let rule = format!(
        "ip saddr {{ {}, {} }} udp sport 5353 drop",
        lan.addr(1),
        lan.addr(2)
    );
    netns::nft_input_rule(lan.host(0), "newcomers", &rule).expect("nft");
    let mut b = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "orders", "0.0.0.0:7001"),
    );
    let c = start_in(
        lan.host(2),
        lan0().startup_query(false),
        local(random_id(), "shipping", "0.0.0.0:7002"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1), lan.host(2)]);

    b.expect_up(a.id, STEP);
    let hint = a.expect_up(b.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7001)]);
    assert_eq!(hint.service.as_deref(), Some("orders"));
    // B counts its introduction after sending it: A may have it first.
    let deadline = Instant::now() + STEP;
    while b.mdns.diagnostics().introductions_sent == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.mdns.diagnostics().introductions_sent >= 1);
    assert_eq!(c.mdns.diagnostics().introductions_sent, 0);
    // C's announcements and answers (multicast, or unicast to a query asking for that) all
    // come from port 5353: A never hears of C.
    let c_seen = a.wait_for(
        Duration::from_secs(2),
        |e| matches!(e, DiscoveryEvent::Up(h) if h.node_id == Some(c.id)),
    );
    assert!(c_seen.is_none(), "the drop rule let C through: {c_seen:?}");
}

/// A node's records reach a cache that missed them at start with its next unasked
/// announcement, and only so: B starts after A's and C's start-up announcements, and nftables
/// in B's namespace drops their unicast answers to B's start-up queries (from port 5353 to
/// any other port). A announces again every 2 s and B learns of it; C never announces again
/// and B never learns of it, which also shows that nothing on B asks again after the start-up
/// queries (mdns-sd's browse would, and be answered by multicast, to port 5353, which the rule
/// lets through).
#[test]
fn a_missed_instance_is_learnt_from_its_next_announcement() {
    const TEST: &str = "a_missed_instance_is_learnt_from_its_next_announcement";
    if !netns_or_skip(TEST) {
        return;
    }
    if !netns::nft_available() {
        println!("skipped: {TEST} (no nft; apt-get install nftables)");
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let rule = format!(
        "ip saddr {{ {}, {} }} udp sport 5353 udp dport != 5353 drop",
        lan.addr(0),
        lan.addr(2)
    );
    netns::nft_input_rule(lan.host(1), "answers", &rule).expect("nft");
    let mut a = start_in(
        lan.host(0),
        lan0().reannounce(Some(Duration::from_secs(2))),
        local(random_id(), "invoice", "0.0.0.0:7000"),
    );
    let c = start_in(
        lan.host(2),
        lan0().reannounce(None),
        local(random_id(), "shipping", "0.0.0.0:7002"),
    );
    // A's first announcement again comes 1.5-2 s after its start, after both start-up
    // announcements of A and of C (the second goes about 1.1 s after the first).
    let deadline = Instant::now() + STEP;
    while a.mdns.diagnostics().reannouncements == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.mdns.diagnostics().reannouncements >= 1);
    a.expect_up(c.id, STEP);

    let mut b = start_in(
        lan.host(1),
        lan0(),
        local(random_id(), "orders", "0.0.0.0:7001"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1), lan.host(2)]);
    assert_eq!(b.mdns.diagnostics().browser, Some(Browser::Shoal));
    let hint = b.expect_up(a.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(0), 7000)]);
    let c_seen = b.wait_for(
        Duration::from_secs(4),
        |e| matches!(e, DiscoveryEvent::Up(h) if h.node_id == Some(c.id)),
    );
    assert!(
        c_seen.is_none(),
        "B learnt of C without an announcement: {c_seen:?}"
    );
    assert_eq!(c.mdns.diagnostics().reannouncements, 0);
}

/// An interface that gets its address after the node started (a DHCP lease that comes late)
/// is heard from the next interface check on: the node opens a group socket there and asks
/// the link with a start-up query, so it learns an instance that was already there and never
/// announces again. With only the sockets opened at start it would never learn it.
#[test]
fn an_interface_addressed_after_start_is_heard() {
    const TEST: &str = "an_interface_addressed_after_start_is_heard";
    if !netns_or_skip(TEST) {
        return;
    }
    let lan = Lan::new(2).expect("build LAN");
    let mut c = start_in(
        lan.host(1),
        MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]).reannounce(None),
        local(random_id(), "shipping", "0.0.0.0:7001"),
    );
    let address = format!("{}/24", lan.addr(0));
    let ip = |verb: &str| {
        let status = std::process::Command::new("ip")
            .args([
                "-n",
                lan.host(0),
                "addr",
                verb,
                &address,
                "dev",
                netns::HOST_IF,
            ])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip addr {verb} {address}: {status}");
    };
    // A starts with lan0 but no address on it: it hears loopback alone.
    ip("del");
    let mut a = start_in(
        lan.host(0),
        MdnsConfig::new([
            InterfaceSelector::name(netns::HOST_IF),
            InterfaceSelector::LoopbackOnly,
        ])
        .interface_check(Some(Duration::from_secs(1))),
        local(random_id(), "invoice", "0.0.0.0:7000"),
    );
    audit_daemon_threads(&[lan.host(0), lan.host(1)]);
    assert_eq!(a.mdns.diagnostics().browser, Some(Browser::Shoal));

    ip("add");
    let added = Instant::now();
    let hint = a.expect_up(c.id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7001)]);
    assert_eq!(c.mdns.diagnostics().reannouncements, 0);
    let notes = a.mdns.diagnostics().notes;
    assert!(
        notes.iter().any(|n| n.contains("now also hears lan0")),
        "{notes:#?}"
    );
    println!(
        "A learnt C {:?} after lan0 got its address",
        added.elapsed()
    );
    // And C learns A from mdns-sd's announcement on the new link, with its new address.
    let hint = c.expect_up(a.id, STEP);
    assert!(hint.addrs.contains(&sock(lan.addr(0), 7000)), "{hint:?}");

    // The address goes: the next check closes lan0's group socket.
    ip("del");
    let deadline = Instant::now() + STEP;
    let closed = |a: &support::Node| {
        a.mdns
            .diagnostics()
            .notes
            .iter()
            .any(|n| n.contains("lan0 is no longer selected"))
    };
    while !closed(&a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed(&a), "{:#?}", a.mdns.diagnostics().notes);
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

    // The IPv4 and the IPv6 link-local addresses may arrive in separate records (the first
    // hint may hold either): wait for a hint with both.
    let hint = a.expect_up(b.id, STEP);
    let v4 = sock(lan.addr(1), 7001);
    let complete = |h: &PeerHint| h.addrs.contains(&v4) && h.addrs.iter().any(SocketAddr::is_ipv6);
    let hint = if complete(&hint) {
        hint
    } else {
        match a.wait_for(
            STEP,
            |e| matches!(e, DiscoveryEvent::Updated(h) if complete(h)),
        ) {
            Some(DiscoveryEvent::Updated(h)) => h,
            _ => panic!(
                "no hint with both B's IPv4 and IPv6 addresses: first {hint:?}, then {:?}",
                a.backlog
            ),
        }
    };
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
