//! Announced addresses off the link a datagram was heard on (`link.rs`).

use super::*;
use crate::mdns::record::RejectReason;

/// The refusals recorded for addresses off the link: (addresses, interfaces, count) each.
fn off_link(listener: &Listener) -> Vec<(Vec<SocketAddr>, Vec<String>, u64)> {
    let rejected = lock(&listener.state).rejected();
    let off = rejected
        .iter()
        .filter(|r| r.reason == RejectReason::OffLink);
    off.map(|r| (r.addrs.clone(), r.via.clone(), r.count))
        .collect()
}

#[test]
fn an_announcement_of_an_address_off_the_link_is_refused_and_not_kept() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let ear = ear_on(&[("10.1.0.7", 24)]);
    let elsewhere = saying(&[], &["203.0.113.5"]);
    for _ in 0..2 {
        listener.on_datagram(&elsewhere, &ear, &mut table, Instant::now());
    }
    assert!(rx.try_recv().is_err(), "nothing reported");
    assert!(lock(&listener.state).peers().is_empty());
    assert_eq!(table.sizes(), (0, 0), "nothing kept, not even as a repeat");
    let at = "203.0.113.5:7000".parse().expect("addr");
    assert_eq!(
        off_link(&listener),
        vec![(vec![at], vec!["lan0".into()], 2)]
    );
    assert_eq!(lock(&listener.state).rejected_total, 2);
}

#[test]
fn only_the_addresses_on_the_link_are_kept() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let ear = ear_on(&[("10.1.0.7", 24), ("fd00:1::7", 64)]);
    let ips = [
        "10.1.0.5",
        "203.0.113.5",
        "2001:db8::5",
        "fe80::5",
        "fd00:1::5",
    ];
    listener.on_datagram(&saying(&[], &ips), &ear, &mut table, Instant::now());
    let Ok(DiscoveryEvent::Up(hint)) = rx.try_recv() else {
        panic!("no Up");
    };
    let kept: Vec<SocketAddr> = ["10.1.0.5:7000", "[fd00:1::5]:7000", "[fe80::5%7]:7000"]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
    assert_eq!(hint.addrs, kept);
    let dropped = ["203.0.113.5:7000", "[2001:db8::5]:7000"].map(|a| a.parse().expect("addr"));
    assert_eq!(
        off_link(&listener),
        vec![(dropped.to_vec(), vec!["lan0".into()], 1)]
    );
}

#[test]
fn an_announcement_on_the_link_is_taken_as_it_is() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let ear = ear_on(&[("10.1.0.7", 24)]);
    listener.on_datagram(
        &saying(&[], &["10.1.0.5"]),
        &ear,
        &mut table,
        Instant::now(),
    );
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    assert_eq!(
        peer_addrs(&listener),
        vec!["10.1.0.5:7000".parse().expect("addr")]
    );
    assert!(lock(&listener.state).rejected().is_empty());
    assert_eq!(table.sizes(), (1, 1));
}

#[test]
fn a_repeat_is_checked_again_once_the_link_changed() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let ear = ear_on(&[("10.1.0.7", 24)]);
    let now = Instant::now();
    let datagram = saying(&[], &["10.1.0.5"]);
    listener.on_datagram(&datagram, &ear, &mut table, now);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    // The interface is renumbered: the same datagram now points off the link. It is refused,
    // and the peer known from before stays until its addresses lapse.
    *lock(&ear.link) = Arc::new(Link::new(vec![Subnet::new(
        "10.2.0.7".parse().expect("ip"),
        24,
    )]));
    listener.on_datagram(&datagram, &ear, &mut table, now + Duration::from_secs(60));
    assert!(rx.try_recv().is_err());
    assert_eq!(off_link(&listener).len(), 1);
    assert_eq!(
        peer_addrs(&listener),
        vec!["10.1.0.5:7000".parse().expect("addr")]
    );
}
