//! Background sends over sockets (`Node::send_background`): the call returns the command's id
//! at once; commands sent in a loop while others are on their way are staged by the engine
//! and go together (`node/src/engine/send/staged.rs`), each still handled once by one
//! instance; they count towards the backlog's limit; keyed ones keep their order; a node that
//! shuts down delivers what it staged.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use shoal::{BacklogLimit, Error, Message, MessageId, Node};
use shoal_tests::{Mesh, WAIT, wait_instances};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

const SERVICE: &str = "billing";

/// `instances` instances of `billing` whose `charge` handler reports each command it handled
/// (with the instance's number) once `gate` lets it (a permit per command, given back), and
/// an `orders` node built by `orders` that knows them all.
async fn billing_and_orders(
    mesh: &Mesh,
    instances: usize,
    gate: Arc<Semaphore>,
    orders: shoal::NodeBuilder,
) -> (Vec<Node>, Node, mpsc::UnboundedReceiver<(usize, MessageId)>) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let mut billing = Vec::new();
    for instance in 0..instances {
        let node = mesh.start(SERVICE, &[]).await;
        let (seen_tx, gate) = (seen_tx.clone(), Arc::clone(&gate));
        node.handle("charge", move |msg: Message| {
            let (seen_tx, gate) = (seen_tx.clone(), Arc::clone(&gate));
            async move {
                let _permit = gate.acquire().await.unwrap();
                seen_tx.send((instance, msg.id())).unwrap();
                Ok(())
            }
        });
        billing.push(node);
    }
    let addrs: Vec<_> = billing.iter().map(Node::local_addr).collect();
    let orders = mesh.start_with(orders, &addrs).await;
    wait_instances(&orders, SERVICE, instances).await;
    (billing, orders, seen)
}

/// Sends `n` background commands from one loop, yielding every 64 when `yielding` (as a
/// service streaming commands would, to let the node work), with `key` if any; returns
/// their ids in the order sent.
async fn send_in_a_loop(
    orders: &Node,
    n: usize,
    key: Option<&str>,
    yielding: bool,
) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for i in 0..n {
        if yielding && i % 64 == 63 {
            tokio::task::yield_now().await;
        }
        let mut command = Message::command("charge", i.to_string());
        if let Some(key) = key {
            command = command.with_key(key);
        }
        let id = command.id();
        assert_eq!(orders.send_background(SERVICE, command).unwrap(), id);
        ids.push(id);
    }
    ids
}

/// Receives `n` handled ids in the order handled (at most [`WAIT`] in all); panics on a
/// repeat.
async fn handled(
    seen: &mut mpsc::UnboundedReceiver<(usize, MessageId)>,
    n: usize,
) -> Vec<MessageId> {
    let mut ids = Vec::new();
    let mut once = HashSet::new();
    timeout(WAIT, async {
        while ids.len() < n {
            let (_, id) = seen.recv().await.unwrap();
            assert!(once.insert(id), "{id} handled twice");
            ids.push(id);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} commands handled in {WAIT:?}", ids.len()));
    ids
}

fn set(ids: Vec<MessageId>) -> HashSet<MessageId> {
    ids.into_iter().collect()
}

async fn commands_in_a_loop_are_staged_and_each_handled_once() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_billing, orders, mut seen) =
        billing_and_orders(&mesh, 2, gate, mesh.builder("orders")).await;
    let sent = send_in_a_loop(&orders, 3000, None, true).await;
    assert_eq!(set(handled(&mut seen, 3000).await), set(sent));
    let stats = orders.stats();
    // The first of each burst goes alone; the others were staged, and went together.
    assert!(stats.gathered >= 2000, "{stats:?}");
    assert_eq!(stats.background_refused, 0);
    assert!(orders.dead_letters().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn background_commands_in_a_loop_are_staged_and_each_handled_once() {
    commands_in_a_loop_are_staged_and_each_handled_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_commands_in_a_loop_are_staged_and_each_handled_once_on_two_workers() {
    commands_in_a_loop_are_staged_and_each_handled_once().await;
}

#[tokio::test(flavor = "current_thread")]
async fn background_commands_count_towards_the_backlog_and_the_one_past_it_is_refused() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(0));
    let builder = mesh.builder("orders").max_background_publishes(50);
    let (_billing, orders, mut seen) =
        billing_and_orders(&mesh, 1, Arc::clone(&gate), builder).await;
    // The handler holds every command: the first is on its way, the 49 others are staged.
    let sent = send_in_a_loop(&orders, 50, None, true).await;
    match orders.send_background(SERVICE, Message::command("charge", "one too many")) {
        Err(Error::Backlog {
            limit: BacklogLimit::Events(50),
        }) => {}
        other => panic!("the 51st is refused: {other:?}"),
    }
    assert_eq!(orders.stats().background_refused, 1);
    gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(set(handled(&mut seen, 50).await), set(sent));
}

#[tokio::test(flavor = "current_thread")]
async fn keyed_background_commands_are_handled_in_the_order_sent() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_billing, orders, mut seen) =
        billing_and_orders(&mesh, 2, gate, mesh.builder("orders")).await;
    let sent = send_in_a_loop(&orders, 300, Some("customer-7"), true).await;
    assert_eq!(handled(&mut seen, 300).await, sent);
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_shuts_down_delivers_the_commands_it_staged() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_billing, orders, mut seen) =
        billing_and_orders(&mesh, 1, gate, mesh.builder("orders")).await;
    // No yield: every command but the first is still staged when the shutdown begins.
    let sent = send_in_a_loop(&orders, 500, None, false).await;
    assert_eq!(orders.stats().gathered, 0, "staged, not sent yet");
    orders.shutdown().await;
    assert_eq!(set(handled(&mut seen, 500).await), set(sent));
    assert!(orders.dead_letters().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_producer_waits_for_room_and_goes_on_once_half_was_delivered() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(0));
    let builder = mesh.builder("orders").max_background_publishes(50);
    let (_billing, orders, mut seen) =
        billing_and_orders(&mesh, 1, Arc::clone(&gate), builder).await;
    let mut sent = send_in_a_loop(&orders, 50, None, true).await;
    let refused = orders.send_background(SERVICE, Message::command("charge", "51"));
    assert!(matches!(refused, Err(Error::Backlog { .. })), "{refused:?}");
    // Nothing is delivered while the handler holds them: the wait goes on.
    let mut room = std::pin::pin!(orders.wait_for_background_room());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(room.as_mut().poll(&mut cx).is_pending(), "no room yet");
    gate.add_permits(Semaphore::MAX_PERMITS);
    timeout(WAIT, room)
        .await
        .expect("room once half was delivered");
    sent.extend(send_in_a_loop(&orders, 10, None, true).await);
    assert_eq!(set(handled(&mut seen, 60).await), set(sent));
}
