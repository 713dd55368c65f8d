//! How often a peer acknowledges a multicast member's QUIC packets: a member's statuses to its
//! publisher are one packet each, and QUIC's default answers every second one.

#![allow(clippy::unwrap_used)]

use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;
use crate::identity::{MeshCa, Revocations};

const PROMPT: Duration = Duration::from_secs(5);
/// Packets the member sends after the warm-up, one at a time.
const PACKETS: u64 = 100;

/// A member (`multicast` on, or a plain node) sends [`PACKETS`] small writes, each once the
/// peer has read the one before (so each is a packet of its own); returns the ACK frames the
/// peer sent for them and the datagrams it received meanwhile.
async fn acks_for_lone_packets(multicast: bool) -> (u64, u64) {
    let ca = MeshCa::generate("ack frequency").unwrap();
    let live = |service: &str| {
        LiveTls::new(
            ca.issue(service).unwrap(),
            vec![ca.clone()],
            Revocations::new(),
        )
        .unwrap()
    };
    let keep_alive = Duration::from_secs(1);
    let idle = Duration::from_secs(5);
    let publisher = Arc::new(transport(keep_alive, idle, false).unwrap());
    let member = Arc::new(transport(keep_alive, idle, multicast).unwrap());
    let server = quinn::Endpoint::server(
        server_config(&live("publisher"), publisher).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = client_config(&live("member"), member).unwrap();
    let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
    let (conn, accepted) = tokio::join!(timeout(PROMPT, connecting), async {
        let incoming = timeout(PROMPT, server.accept()).await.unwrap().unwrap();
        timeout(PROMPT, incoming).await.unwrap()
    });
    let (conn, accepted) = (conn.unwrap().unwrap(), accepted.unwrap());

    // The peer reads each write and says so; the member writes the next one only then.
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let reader = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut recv = accepted.accept_uni().await.unwrap();
            let mut buf = [0u8; 16];
            while recv.read_exact(&mut buf).await.is_ok() {
                if read_tx.send(()).is_err() {
                    break;
                }
            }
        })
    };
    let mut send = conn.open_uni().await.unwrap();
    let mut write_one = async || {
        send.write_all(&[7u8; 16]).await.unwrap();
        timeout(PROMPT, read_rx.recv()).await.unwrap().unwrap();
    };
    // Warm-up: the handshake's acknowledgements and the member's ACK_FREQUENCY frame.
    for _ in 0..10 {
        write_one().await;
    }
    let before = accepted.stats();
    for _ in 0..PACKETS {
        write_one().await;
    }
    let after = accepted.stats();
    conn.close(0u32.into(), b"done");
    reader.abort();
    (
        after.frame_tx.acks - before.frame_tx.acks,
        after.udp_rx.datagrams - before.udp_rx.datagrams,
    )
}

#[tokio::test]
async fn a_multicast_member_asks_its_peers_to_acknowledge_every_tenth_packet() {
    let (plain, received) = acks_for_lone_packets(false).await;
    assert!(
        received >= PACKETS,
        "{received} datagrams for {PACKETS} writes"
    );
    // QUIC's default: every second packet.
    assert!(plain >= PACKETS / 3, "{plain} acks for {received} packets");

    let (member, received) = acks_for_lone_packets(true).await;
    assert!(
        received >= PACKETS,
        "{received} datagrams for {PACKETS} writes"
    );
    // About one in ten (a delayed acknowledgement's timer may add a few on a slow machine).
    assert!(
        member <= PACKETS / 5,
        "{member} acks for {received} packets"
    );
}
