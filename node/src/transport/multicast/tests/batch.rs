//! Batched sends and reads: what waits in the link's queue goes out in as few system calls as
//! the kernel allows (runs of equal-sized datagrams segmented by GSO), and arrives as the
//! datagrams it was, in order and whole, both at a group socket (GRO on: joined buffers split
//! by stride) and at a plain socket (the kernel cuts them).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::super::socket::segment_run;
use super::{
    GroupLink, HOST_IF, Inbound, Lan, MulticastConfig, ip, lan_or_skip, next, observer_on, open_on,
    recv_in_time,
};

/// 40 datagrams: runs of equal sizes, a shorter one ending a run, the largest the channel
/// sends, one byte; each filled with its own number.
fn batch() -> Vec<Bytes> {
    let sizes = [1200; 20]
        .into_iter()
        .chain([700])
        .chain([300; 10])
        .chain([1452; 8])
        .chain([1]);
    sizes
        .enumerate()
        .map(|(i, size)| Bytes::from(vec![u8::try_from(i).unwrap_or(u8::MAX); size]))
        .collect()
}

/// A link on host 0 that sends and one on host 1 that receives.
struct Links {
    a: GroupLink,
    b: GroupLink,
    b_rx: mpsc::Receiver<Inbound>,
    /// Kept open: a link whose channel is closed ends.
    _a_rx: mpsc::Receiver<Inbound>,
}

/// [`Links`] on `config`'s group, with room for `queue` datagrams each way.
fn links(lan: &Lan, config: &MulticastConfig, queue: usize) -> Links {
    let (a_in, _a_rx) = mpsc::channel(queue);
    let (b_in, b_rx) = mpsc::channel(queue);
    let open = |i, inbound| {
        let socket = open_on(lan, i, config).expect("open the group socket");
        GroupLink::spawn(socket, inbound, queue, Arc::default())
    };
    Links {
        a: open(0, a_in),
        b: open(1, b_in),
        b_rx,
        _a_rx,
    }
}

/// `got` is datagram `i` of the batch, whole (said briefly: they are long).
fn assert_same(got: &[u8], expected: &[u8], i: usize, at: &str) {
    assert!(
        got == expected,
        "datagram {i} at {at}: {} bytes starting {:?}, expected {} bytes of {:?}",
        got.len(),
        got.first(),
        expected.len(),
        expected.first()
    );
}

#[tokio::test]
async fn a_queued_batch_arrives_as_the_datagrams_it_was() {
    let Some(lan) = lan_or_skip("a_queued_batch_arrives_as_the_datagrams_it_was", 3) else {
        return;
    };
    let config = MulticastConfig::new(HOST_IF);
    let group = config.group_addr();
    let plain = observer_on(&lan, 2, group.port(), Some((*group.ip(), HOST_IF)));
    let Links {
        a,
        b,
        mut b_rx,
        _a_rx,
    } = links(&lan, &config, 64);
    let sent = batch();
    // Queued before the task runs (this runtime has one thread): taken as one batch.
    for d in &sent {
        a.try_send(d.clone()).expect("room in the queue");
    }
    for (i, d) in sent.iter().enumerate() {
        let got = recv_in_time(&mut b_rx).await.datagram;
        assert_same(&got, d, i, "the group socket");
    }
    for (i, d) in sent.iter().enumerate() {
        assert_same(&next(&plain).await.0, d, i, "the plain socket");
    }
    let stats = a.shutdown().await;
    assert_eq!((stats.sent, stats.send_errors), (40, 0));
    assert_eq!(b.shutdown().await.received, 40);
}

#[test]
fn a_segmented_run_is_equal_sizes_then_at_most_one_shorter() {
    let of = |sizes: &[usize]| -> Vec<Bytes> {
        sizes.iter().map(|&n| Bytes::from(vec![0; n])).collect()
    };
    assert_eq!(segment_run(&of(&[]), 64), 0);
    assert_eq!(segment_run(&of(&[100, 100, 100, 50, 50]), 64), 4);
    assert_eq!(segment_run(&of(&[100, 200, 100]), 64), 1);
    assert_eq!(segment_run(&of(&[100; 10]), 4), 4);
    assert_eq!(segment_run(&of(&[100; 10]), 1), 1);
    // The bytes of one send stay under UDP's limit.
    assert_eq!(segment_run(&of(&[1452; 64]), 64), 44);
    // A datagram too large to segment goes alone.
    assert_eq!(segment_run(&of(&[65_001, 65_001]), 64), 1);
}

/// On a link whose MTU is below the datagrams (an overlay, a tunnel), a queued batch is
/// refused by GSO, goes one by one, and arrives as fragments reassembled: nothing is lost.
#[tokio::test]
async fn datagrams_larger_than_the_mtu_go_as_fragments() {
    let Some(lan) = lan_or_skip("datagrams_larger_than_the_mtu_go_as_fragments", 2) else {
        return;
    };
    ip(&["-n", lan.host(0), "link", "set", HOST_IF, "mtu", "1000"]);
    let config = MulticastConfig::new(HOST_IF);
    let Links {
        a,
        b,
        mut b_rx,
        _a_rx,
    } = links(&lan, &config, 16);
    let sent: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 1452])).collect();
    for d in &sent {
        a.try_send(d.clone()).expect("room in the queue");
    }
    for (i, d) in sent.iter().enumerate() {
        let got = recv_in_time(&mut b_rx).await.datagram;
        assert_same(&got, d, i, "the group socket");
    }
    let stats = a.shutdown().await;
    assert_eq!((stats.sent, stats.send_errors), (3, 0));
    b.shutdown().await;
}
