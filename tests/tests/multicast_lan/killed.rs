//! A subscriber *process* killed mid-stream (issue 14): the test binary runs itself again as
//! the child, inside a namespace of the test's LAN, so a SIGKILL leaves exactly what a crash
//! leaves.

use std::time::Duration;

use shoal::{
    HandlerError, Message, MessageId, MulticastConfig, Node, NodeEvent, NodeId, SubscribeOptions,
};
use shoal_discovery::netns::{self, HOST_IF, Lan};
use shoal_tests::Mesh;

use super::netns_nodes::{STEP, netns_or_skip, runtime, stop_all, wait_event};
use super::{Seen, TOPIC, addr_of, publish, record, start_on, wait_ready};

/// The SIGKILL test's name: its subscriber child is this test binary running only it.
const KILL_TEST: &str = "killed::a_subscriber_killed_mid_stream_loses_nothing_and_the_key_changes";
/// Set in the child: the namespace to run in (the mesh's CA and the child's identity come
/// with `shoal_tests::child::credentials_env`).
const CHILD_NS: &str = "SHOAL_MULTICAST_CHILD_NS";
/// The host the child runs on.
const CHILD_HOST: usize = 2;
/// The longest the child lives: it has no other way out than the SIGKILL.
const CHILD_LIFE: Duration = Duration::from_secs(60);

/// The child: a group-`g` subscriber on host [`CHILD_HOST`] dialling the publisher, which
/// prints `ready <node id>`, then `handled <event id>` for each event, until it is killed.
fn run_killed_subscriber(ns: &str) {
    let (ca, identity) = shoal_tests::child::credentials();
    let run = move || {
        runtime().block_on(async {
            let node = Node::builder("sub")
                .listen(addr_of(CHILD_HOST))
                .peers([addr_of(0)])
                .identity(identity)
                .trust(ca)
                .multicast(MulticastConfig::new(HOST_IF))
                .start()
                .await
                .expect("the child's node starts");
            node.subscribe_with(SubscribeOptions::new(TOPIC).group("g"), |msg: Message| {
                println!("handled {}", msg.id());
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
            println!("ready {}", node.id());
            tokio::time::sleep(CHILD_LIFE).await;
        });
    };
    netns::run_in(ns, run).expect("the child enters its namespace");
}

/// A subscriber process of a group of two is SIGKILLed while events are published: the
/// publisher sees it gone, changes the channel's key (it had not before), and the group's
/// events go to the other instance; every event is handled by the group (on the survivor,
/// at most once) and by the every-instance subscriber once. That the dead node's key opens
/// nothing sealed after the rekey is shown on the simulated LAN, which can replay what
/// reached it (`a_subscriber_killed_mid_stream_fails_over_and_cannot_read_after_the_rekey`).
#[test]
fn a_subscriber_killed_mid_stream_loses_nothing_and_the_key_changes() {
    if let Ok(ns) = std::env::var(CHILD_NS) {
        return run_killed_subscriber(&ns);
    }
    let test = KILL_TEST;
    if !netns_or_skip(test) {
        return;
    }
    // Hosts: 0 the publisher, 1 the surviving instance of `g`, 2 the child, 3 every-instance.
    let lan = Lan::new(4).unwrap();
    let mesh = Mesh::new();
    let [ca, cert, key] = shoal_tests::child::credentials_env(&mesh.ca, &mesh.identity("sub"));
    let mut child = shoal_tests::child::Proc::spawn(
        test,
        &[(CHILD_NS, lan.host(CHILD_HOST).to_owned()), ca, cert, key],
    );
    let survivor = start_on(&lan, &mesh, 1, "sub", &[0]);
    let every = start_on(&lan, &mesh, 3, "sub", &[0]);
    let publisher = start_on(&lan, &mesh, 0, "pub", &[1, CHILD_HOST, 3]);
    // The test harness may have begun the line ("test … ... ").
    let ready = child.wait_for(|l| l.contains("ready "));
    let (_, id) = ready.split_once("ready ").unwrap();
    let victim = NodeId::from_u128(u128::from_str_radix(id.trim(), 16).unwrap());
    let seen = Seen::default();
    let ids = runtime().block_on(async {
        record(&survivor.node, Some("g"), "g", &seen).await;
        record(&every.node, None, "every", &seen).await;
        wait_ready(&publisher.node, 3, 2).await;
        let mut ids: Vec<MessageId> = publish(&publisher.node, 100, 4)
            .await
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            publisher.node.stats().multicast_rekeys,
            0,
            "a rekey before the kill"
        );
        let mut events = publisher.node.events();
        // Killed mid-stream: once a stream of 50 had 20 receipts, while three other streams
        // have events in flight.
        let (killed, kill) = tokio::sync::oneshot::channel::<()>();
        let node = publisher.node.clone();
        let stream = tokio::spawn(async move {
            let mut killed = Some(killed);
            let mut receipts = Vec::new();
            for n in 0..50 {
                let event = Message::event(TOPIC, format!("stream {n}"));
                receipts.push(node.publish(event).await.unwrap());
                if n == 20 {
                    killed.take().map(|k| k.send(()));
                }
            }
            receipts
        });
        let (during, ()) = tokio::join!(publish(&publisher.node, 150, 3), async {
            let _ = kill.await;
            child.kill();
        });
        ids.extend(during.iter().map(|r| r.id));
        let stream = tokio::time::timeout(STEP * 2, stream)
            .await
            .unwrap()
            .unwrap();
        ids.extend(stream.iter().map(|r| r.id));
        let down = wait_event(
            &mut events,
            STEP,
            |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == victim),
        );
        assert!(
            down.await.is_some(),
            "the publisher saw the killed subscriber go"
        );
        assert!(
            publisher.node.stats().multicast_rekeys >= 1,
            "no rekey after the kill"
        );
        let received = survivor.node.stats().multicast_received;
        ids.extend(publish(&publisher.node, 100, 4).await.iter().map(|r| r.id));
        assert!(
            survivor.node.stats().multicast_received > received,
            "the survivor took the events after the rekey by multicast"
        );
        ids
    });
    let handled_by_victim: Vec<String> = child
        .rest()
        .iter()
        .filter_map(|l| l.split_once("handled ").map(|(_, id)| id.trim().to_owned()))
        .collect();
    eprintln!(
        "the killed subscriber handled {} events before it died; publisher: {:?}",
        handled_by_victim.len(),
        publisher.node.stats()
    );
    assert!(
        !handled_by_victim.is_empty(),
        "the child took no event: it was not mid-stream"
    );
    let seen = seen.lock().unwrap();
    for id in &ids {
        let on_survivor = seen.iter().filter(|(l, _, i)| l == "g" && i == id).count();
        assert!(
            on_survivor <= 1,
            "event {id} handled {on_survivor} times by the survivor"
        );
        assert!(
            on_survivor == 1 || handled_by_victim.contains(&id.to_string()),
            "event {id} was never handled by group g"
        );
        let on_every = seen
            .iter()
            .filter(|(l, _, i)| l == "every" && i == id)
            .count();
        assert_eq!(
            on_every, 1,
            "event {id} handled {on_every} times by `every`"
        );
    }
    drop(seen);
    stop_all([survivor, every, publisher]);
}
