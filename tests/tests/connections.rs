//! Connection management: one connection per pair of nodes, whoever dials.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shoal::{Message, NodeEvent};
use shoal_tests::{Mesh, WAIT, next_event, wait_instances};
use tokio::time::timeout;

/// Two free loopback UDP ports (bound, read, released), so each node can be told the other's
/// address before either starts.
fn two_free_ports() -> (SocketAddr, SocketAddr) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Both nodes list each other as static peers and start together, so both dial at once. The
/// duplicate is settled without talking (the connection dialled by the smaller node id wins,
/// on both sides): each ends with exactly one live connection to the other, traffic flows both
/// ways, and the dropped duplicate is not reported as the peer going down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    let mesh = Mesh::new();
    for round in 0..10 {
        let (addr_a, addr_b) = two_free_ports();
        let (peers_of_a, peers_of_b) = ([addr_b], [addr_a]);
        let (a, b) = tokio::join!(
            mesh.start_with(mesh.builder("alpha").listen(addr_a), &peers_of_a),
            mesh.start_with(mesh.builder("beta").listen(addr_b), &peers_of_b),
        );
        let mut a_events = a.events();
        wait_instances(&a, "beta", 1).await;
        wait_instances(&b, "alpha", 1).await;

        let handled = Arc::new(AtomicU32::new(0));
        for node in [&a, &b] {
            let handled = Arc::clone(&handled);
            node.handle("ping", move |_msg: Message| {
                let handled = Arc::clone(&handled);
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
        }
        for _ in 0..20 {
            timeout(WAIT, a.send("beta", Message::command("ping", "")))
                .await
                .unwrap()
                .unwrap();
            timeout(WAIT, b.send("alpha", Message::command("ping", "")))
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(handled.load(Ordering::SeqCst), 40, "round {round}");
        assert_eq!(a.peers().len(), 1, "round {round}: {:?}", a.peers());
        assert_eq!(b.peers().len(), 1, "round {round}: {:?}", b.peers());
        assert_eq!(a.peers()[0].node, b.id());
        assert_eq!(b.peers()[0].node, a.id());
        while let Ok(event) = a_events.try_recv() {
            assert!(
                !matches!(event, NodeEvent::PeerDown { .. }),
                "round {round}: a duplicate was reported as the peer going down: {event:?}"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// A port free both on 0.0.0.0 and on [::1] (UDP), or `None` when [::1] cannot be bound.
fn port_free_on_both() -> Option<u16> {
    for _ in 0..20 {
        let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).is_ok() {
            return Some(port);
        }
    }
    None
}

/// Alpha lists bravo and charlie as static peers at the same port P: bravo listens on
/// 0.0.0.0:P (so at 127.0.0.1:P), charlie on [::1]:P and starts only after alpha's dial to it
/// failed while bravo was connected. Alpha connects to charlie: bravo, which listens on every
/// one of *its* addresses at P, does not stand for charlie at another address with that port
/// (it did, and charlie was never dialled again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_an_unspecified_address_does_not_stand_for_another_at_its_port() {
    let Some(port) = port_free_on_both() else {
        println!("skipped: [::1] cannot be bound here");
        return;
    };
    let mesh = Mesh::new();
    let b_listen = SocketAddr::from(([0, 0, 0, 0], port));
    let b_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c_addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let b = mesh
        .start_with(mesh.builder("bravo").listen(b_listen), &[])
        .await;
    let a = mesh
        .start_with(
            mesh.builder("alpha")
                .listen("[::]:0".parse().unwrap())
                .handshake_timeout(Duration::from_millis(500)),
            &[b_addr, c_addr],
        )
        .await;
    wait_instances(&a, "bravo", 1).await;
    // A dial to charlie fails while bravo is connected: the dialler looks again after it.
    let mut events = a.events();
    next_event(
        &mut events,
        WAIT,
        |e| matches!(e, NodeEvent::HandshakeFailed { addr, .. } if *addr == c_addr),
    )
    .await;
    let c = mesh
        .start_with(mesh.builder("charlie").listen(c_addr), &[])
        .await;
    wait_instances(&a, "charlie", 1).await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
