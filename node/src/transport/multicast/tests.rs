//! The group socket and its task on a LAN of network namespaces that each test builds
//! (`shoal_discovery::netns::Lan`: hosts `10.99.0.<i+1>` on `lan0`, a bridge without multicast
//! snooping in a namespace of its own). No socket is opened in the root namespace; every
//! namespace is deleted when the test ends, also on a panic. Skipped (and passing) when not
//! root.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_discovery::netns::{self, HOST_IF, Lan};
use tokio::sync::{Notify, mpsc};

use super::link::{GroupLink, Inbound, LinkStats};
use super::socket::index_of;
use super::{GroupSocket, MulticastConfig};
use crate::error::{Error, MulticastProblem};

mod batch;
mod capture;

/// The bound on every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(5);
/// How long a socket is watched for a datagram that must not come, after a later one came.
const QUIET: Duration = Duration::from_millis(100);

/// A LAN of `hosts` namespaces, or `None` (and a "skipped" line) when namespaces cannot be made.
fn lan_or_skip(test: &str, hosts: usize) -> Option<Lan> {
    if !netns::can_create_netns_or_say_skipped(test) {
        return None;
    }
    Some(Lan::new(hosts).expect("build the LAN"))
}

/// Runs `ip <args>` (inside a test's namespaces only: every call names one with `-n`).
fn ip(args: &[&str]) {
    assert_eq!(args.first(), Some(&"-n"), "ip outside a test namespace");
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens the group socket of `config` inside host `i`'s namespace, registered with the test's
/// runtime.
fn open_on(lan: &Lan, i: usize, config: &MulticastConfig) -> Result<GroupSocket, Error> {
    let runtime = tokio::runtime::Handle::current();
    let config = config.clone();
    lan.run_on(i, move || {
        let _entered = runtime.enter();
        GroupSocket::open(&config)
    })
    .expect("enter the namespace")
}

/// A plain UDP socket on `0.0.0.0:port` in host `i`, joined to a group on an interface (by
/// name) or not.
fn observer_on(
    lan: &Lan,
    i: usize,
    port: u16,
    join: Option<(Ipv4Addr, &'static str)>,
) -> tokio::net::UdpSocket {
    let std = lan
        .run_on(i, move || -> std::io::Result<std::net::UdpSocket> {
            // SO_REUSEADDR: the port may be bound to the group by a group socket here too.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
            if let Some((group, interface)) = join {
                let index = index_of(interface).ok_or_else(|| std::io::Error::other("no index"))?;
                socket
                    .join_multicast_v4_n(&group, &socket2::InterfaceIndexOrAddress::Index(index))?;
            }
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .expect("enter the namespace")
        .expect("bind the observer");
    tokio::net::UdpSocket::from_std(std).expect("register the observer")
}

/// The next datagram `recv` reads into a buffer within [`WAIT`]: its bytes and sender.
async fn receive(
    recv: impl AsyncFnOnce(&mut [u8]) -> std::io::Result<(usize, SocketAddr)>,
) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 2048];
    let (n, from) = tokio::time::timeout(WAIT, recv(&mut buf))
        .await
        .expect("a datagram in time")
        .expect("receive");
    buf.truncate(n);
    (buf, from)
}

/// The next datagram on a plain socket.
async fn next(socket: &tokio::net::UdpSocket) -> (Vec<u8>, SocketAddr) {
    receive(async |buf| socket.recv_from(buf).await).await
}

/// The next datagram on a group socket.
async fn next_on_group(socket: &GroupSocket) -> (Vec<u8>, SocketAddr) {
    receive(async |buf| socket.recv(buf).await).await
}

/// Asserts that nothing more arrives on `socket` within [`QUIET`].
async fn assert_quiet(socket: &tokio::net::UdpSocket, who: &str) {
    let mut buf = vec![0; 2048];
    let more = tokio::time::timeout(QUIET, socket.recv_from(&mut buf)).await;
    assert!(more.is_err(), "{who} received another datagram: {more:?}");
}

/// The next datagram a link passes on, within [`WAIT`].
async fn recv_in_time(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a datagram in time")
        .expect("the link runs")
}

fn from_host(lan: &Lan, i: usize, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(lan.addr(i), port))
}

fn problem(result: Result<GroupSocket, Error>) -> MulticastProblem {
    match result {
        Err(Error::Multicast { problem, .. }) => problem,
        other => panic!("expected a multicast error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_configurations_get_clear_errors() {
    let Some(lan) = lan_or_skip("bad_configurations_get_clear_errors", 1) else {
        return;
    };
    // bare0: an interface without any address (both ends of its veth pair stay inside h0).
    ip(&[
        "-n",
        lan.host(0),
        "link",
        "add",
        "bare0",
        "type",
        "veth",
        "peer",
        "name",
        "bare1",
    ]);

    let on = |name: &str| MulticastConfig::new(name);
    let not_multicast = Ipv4Addr::new(10, 99, 0, 200);
    assert!(matches!(
        problem(open_on(&lan, 0, &on(HOST_IF).group(not_multicast))),
        MulticastProblem::NotMulticast(group) if group == not_multicast
    ));
    assert!(matches!(
        problem(open_on(&lan, 0, &on(HOST_IF).port(0))),
        MulticastProblem::PortZero
    ));
    assert!(matches!(
        problem(open_on(&lan, 0, &on("nosuch0"))),
        MulticastProblem::UnknownInterface
    ));
    assert!(matches!(
        problem(open_on(&lan, 0, &on("bare0"))),
        MulticastProblem::NoIpv4
    ));
    assert!(matches!(
        problem(open_on(&lan, 0, &on("lo"))),
        MulticastProblem::Loopback
    ));
    // The message names the interface and the problem.
    let message = open_on(&lan, 0, &on("nosuch0"))
        .expect_err("unknown")
        .to_string();
    assert_eq!(
        message,
        "multicast on interface `nosuch0`: no such interface"
    );

    let socket = open_on(&lan, 0, &on(HOST_IF)).expect("lan0 is fine");
    assert_eq!(socket.interface().addr, lan.addr(0));
    assert_eq!(socket.group(), MulticastConfig::new(HOST_IF).group_addr());
}

/// One datagram from h0 reaches the group sockets of h1 and h2; h0 (loopback off) and h3
/// (no member of the group) do not receive it.
#[tokio::test]
async fn a_datagram_reaches_the_members_only() {
    let Some(lan) = lan_or_skip("a_datagram_reaches_the_members_only", 4) else {
        return;
    };
    let config = MulticastConfig::new(HOST_IF);
    let group = config.group_addr();
    let port = group.port();
    let sender = open_on(&lan, 0, &config).expect("h0's group socket");
    let members = [
        open_on(&lan, 1, &config).expect("h1's group socket"),
        open_on(&lan, 2, &config).expect("h2's group socket"),
    ];
    // h0's namespace holds a second member on the same port: loopback off means no socket of
    // the sending host gets a copy, not only the sending one.
    let h0_member = observer_on(&lan, 0, port, Some((*group.ip(), HOST_IF)));
    // h3 listens on the port without joining: the bridge floods the datagram to it (no
    // snooping), and its kernel must drop it.
    let outsider = observer_on(&lan, 3, port, None);

    sender.send(b"to the group").await.expect("send");
    for member in &members {
        let (bytes, from) = next_on_group(member).await;
        assert_eq!(bytes, b"to the group");
        assert_eq!(
            from,
            from_host(&lan, 0, port),
            "sent from h0's lan0 and the group port"
        );
    }

    // Markers sent after the datagram arrived elsewhere: whatever these sockets receive first
    // must be the marker, or they got the datagram.
    members[0].send(b"marker").await.expect("h1 sends a marker");
    let (bytes, from) = next_on_group(&sender).await;
    assert_eq!(
        (bytes.as_slice(), from),
        (&b"marker"[..], from_host(&lan, 1, port)),
        "h0 read its own datagram back"
    );
    let (bytes, from) = next(&h0_member).await;
    assert_eq!(
        (bytes.as_slice(), from),
        (&b"marker"[..], from_host(&lan, 1, port))
    );
    assert_quiet(&h0_member, "h0's second member").await;

    let poke = observer_on(&lan, 2, 0, None);
    poke.send_to(b"unicast", SocketAddrV4::new(lan.addr(3), port))
        .await
        .expect("unicast to h3");
    let (bytes, _) = next(&outsider).await;
    assert_eq!(
        bytes, b"unicast",
        "h3 received a group datagram without joining"
    );
    assert_quiet(&outsider, "h3").await;
}

/// A veth pair `side0`–`side1` with both ends in h0, and a route that sends the group's
/// traffic out of `side0` (so it arrives back on `side1`, which accepts it).
fn add_side_link(lan: &Lan) {
    let h0 = lan.host(0);
    ip(&[
        "-n", h0, "link", "add", "side0", "type", "veth", "peer", "name", "side1",
    ]);
    ip(&["-n", h0, "addr", "add", "10.98.0.1/24", "dev", "side0"]);
    ip(&["-n", h0, "link", "set", "side1", "up"]);
    ip(&["-n", h0, "link", "set", "side0", "up"]);
    ip(&["-n", h0, "route", "add", "239.0.0.0/8", "dev", "side0"]);
    // What arrives on side1 comes from h0's own side0 address: accept it (not martian).
    netns::run_in(h0, || -> std::io::Result<()> {
        for (setting, value) in [
            ("all/rp_filter", "0"),
            ("side1/rp_filter", "0"),
            ("side1/accept_local", "1"),
        ] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{setting}"), value)?;
        }
        Ok(())
    })
    .expect("enter h0")
    .expect("accept side0's datagrams on side1");
}

/// The group arrives on h0's `side1`, where another socket joined it: h0's group socket, joined
/// on `lan0` only, does not read it (`IP_MULTICAST_ALL` off).
#[tokio::test]
async fn the_group_on_another_interface_is_not_read() {
    let Some(lan) = lan_or_skip("the_group_on_another_interface_is_not_read", 2) else {
        return;
    };
    add_side_link(&lan);
    let config = MulticastConfig::new(HOST_IF);
    let group = config.group_addr();
    let port = group.port();
    let socket = open_on(&lan, 0, &config).expect("h0's group socket");
    let side_member = observer_on(&lan, 0, port, Some((*group.ip(), "side1")));
    let plain = observer_on(&lan, 0, 0, None);
    plain
        .send_to(b"on side1", group)
        .await
        .expect("send out of side0");
    assert_eq!(
        next(&side_member).await.0,
        b"on side1",
        "the datagram arrives on side1"
    );

    let h1 = open_on(&lan, 1, &config).expect("h1's group socket");
    h1.send(b"marker").await.expect("h1 sends a marker");
    let (bytes, from) = next_on_group(&socket).await;
    assert_eq!(
        (bytes.as_slice(), from),
        (&b"marker"[..], from_host(&lan, 1, port)),
        "h0's group socket read the group from side1"
    );
}

/// Routing in h0 sends the group's traffic out of `side0`; the group socket still sends only
/// on `lan0`, one frame per datagram with TTL 1, and nothing on `side0` or `lo`.
#[tokio::test]
async fn nothing_leaves_on_another_interface() {
    let Some(lan) = lan_or_skip("nothing_leaves_on_another_interface", 2) else {
        return;
    };
    add_side_link(&lan);
    let h0 = lan.host(0);

    let config = MulticastConfig::new(HOST_IF);
    let group = config.group_addr();
    let capture = capture::open_in(h0).expect("a packet capture in h0");
    let sender = open_on(&lan, 0, &config).expect("h0's group socket");
    let member = open_on(&lan, 1, &config).expect("h1's group socket");
    let datagrams: Vec<Vec<u8>> = (0..3).map(|i| format!("group {i}").into_bytes()).collect();
    for datagram in &datagrams {
        sender.send(datagram).await.expect("send");
    }
    for datagram in &datagrams {
        assert_eq!(&next_on_group(&member).await.0, datagram);
    }
    // The control: a plain socket follows the route out of side0, and the capture sees it.
    let plain = observer_on(&lan, 0, 0, None);
    plain
        .send_to(b"control", group)
        .await
        .expect("control send");

    let seen = tokio::task::spawn_blocking(move || capture.until(b"control", WAIT))
        .await
        .expect("capture thread");
    let lan0 = sender.interface().index;
    let on = |payload: &[u8]| -> Vec<&capture::Seen> {
        seen.iter()
            .filter(|s| s.dst == group && s.payload == payload)
            .collect()
    };
    for datagram in &datagrams {
        let frames = on(datagram);
        assert_eq!(
            frames.len(),
            1,
            "one frame per datagram, on lan0 only: {seen:?}"
        );
        assert_eq!(
            frames[0].ifindex, lan0,
            "left by another interface: {seen:?}"
        );
        assert_eq!(frames[0].ttl, 1, "TTL 1: never routed");
    }
    let control = on(b"control");
    assert!(
        control.iter().any(|s| s.ifindex != lan0),
        "the route does not lead out of side0, so the test shows nothing: {seen:?}"
    );
}

/// The task sends what it is given and passes on what it receives, both ways; shutting down
/// sends what was queued.
#[tokio::test]
async fn the_link_sends_and_receives() {
    let Some(lan) = lan_or_skip("the_link_sends_and_receives", 2) else {
        return;
    };
    let config = MulticastConfig::new(HOST_IF);
    let port = config.group_addr().port();
    let (a_in, mut a_rx) = mpsc::channel(16);
    let (b_in, mut b_rx) = mpsc::channel(16);
    let a_idle = Arc::new(Notify::new());
    let a = GroupLink::spawn(
        open_on(&lan, 0, &config).expect("h0"),
        a_in,
        16,
        Arc::clone(&a_idle),
    );
    let b = GroupLink::spawn(
        open_on(&lan, 1, &config).expect("h1"),
        b_in,
        16,
        Arc::default(),
    );

    a.send(Bytes::from_static(b"one")).await.expect("queued");
    a.try_send(Bytes::from_static(b"two")).expect("queued");
    for expected in [&b"one"[..], b"two"] {
        let inbound = recv_in_time(&mut b_rx).await;
        assert_eq!(inbound.datagram, expected);
        assert_eq!(inbound.from, from_host(&lan, 0, port));
    }
    // Both sent: the link said it is idle.
    tokio::time::timeout(WAIT, a_idle.notified())
        .await
        .expect("the link says it is idle once it sent everything");
    b.send(Bytes::from_static(b"back")).await.expect("queued");
    let inbound = recv_in_time(&mut a_rx).await;
    assert_eq!(inbound.datagram, &b"back"[..]);
    assert_eq!(inbound.from, from_host(&lan, 1, port));

    // Queued just before the shutdown: still sent.
    for i in 0..8u8 {
        a.try_send(Bytes::from(vec![i])).expect("room in the queue");
    }
    let a_stats = a.shutdown().await;
    for i in 0..8u8 {
        assert_eq!(recv_in_time(&mut b_rx).await.datagram, vec![i]);
    }
    assert_eq!(
        (a_stats.sent, a_stats.received, a_stats.send_errors),
        (10, 1, 0)
    );
    let b_stats = b.shutdown().await;
    assert_eq!(
        (b_stats.sent, b_stats.received, b_stats.dropped_full),
        (1, 10, 0)
    );
}

/// A consumer that does not read: datagrams beyond the channel's room are dropped and
/// counted, and the reader goes on (the next datagram arrives once there is room).
#[tokio::test]
async fn a_full_channel_drops_and_counts() {
    let Some(lan) = lan_or_skip("a_full_channel_drops_and_counts", 2) else {
        return;
    };
    let config = MulticastConfig::new(HOST_IF);
    let sender = open_on(&lan, 0, &config).expect("h0");
    let (inbound, mut rx) = mpsc::channel(1);
    let link = GroupLink::spawn(
        open_on(&lan, 1, &config).expect("h1"),
        inbound,
        4,
        Arc::default(),
    );
    for i in 0..5u8 {
        sender.send(&[i]).await.expect("send");
    }
    // Counters have no event to await: polled, bounded by WAIT.
    let deadline = tokio::time::Instant::now() + WAIT;
    let counted = |s: LinkStats| s.received + s.dropped_full;
    while counted(link.stats()) < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(link.stats().received, 1, "{:?}", link.stats());
    assert_eq!(link.stats().dropped_full, 4, "{:?}", link.stats());
    assert_eq!(recv_in_time(&mut rx).await.datagram, vec![0]);
    sender.send(b"after").await.expect("send");
    assert_eq!(recv_in_time(&mut rx).await.datagram, &b"after"[..]);
    let stats = link.shutdown().await;
    assert_eq!((stats.received, stats.dropped_full), (2, 4));
}
