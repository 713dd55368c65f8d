//! mDNS discovery restricted to loopback inside a network namespace (feature `netns`, Linux,
//! root): loopback-only nodes find each other, see no LAN node and send no mDNS on the LAN.
//!
//! Every mDNS daemon here is created on a thread inside a namespace built by
//! `shoal_discovery::netns`; nothing runs in the root namespace (the tests check this for every
//! daemon thread of the process). Without root the tests print a skip line and pass.
#![cfg(target_os = "linux")]

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{Discovery, InterfaceSelector, MdnsConfig};
use shoal_proto::NodeId;

use support::{
    GOODBYE, Node, STEP, audit_daemon_threads, local, netns_or_skip, random_id, sock, start_in,
};

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
