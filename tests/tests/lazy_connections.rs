//! Connections where they are used, between real nodes on 127.0.0.1: discovering an instance is
//! not connecting to it, a send or publish connects on first use, idle connections close, a
//! publisher learns subscribers from their announcements, and a send, a ping or a wait for
//! instances whose dial failed asks for another.
//!
//! Discovery here is [`Board`], an in-process stand-in for DNS-SD: each node's source announces
//! the node (its subscriptions included, updated when they change) to every other node's
//! source, so no multicast is involved.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::{Message, MessageId, Node, NodeEvent};
use shoal_discovery::{
    Discovery, DiscoveryError, DiscoveryEvent, EventSender, LocalNode, PeerHint, Source,
};
use shoal_tests::{Mesh, WAIT, audience_sizes, next_event, until};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Every node's announcement, and where to tell each node of the others'.
#[derive(Clone, Default)]
struct Board(Arc<Mutex<Vec<(LocalNode, EventSender)>>>);

/// One node's discovery source on a [`Board`].
struct BoardSource {
    board: Board,
    me: Option<LocalNode>,
}

fn hint(local: &LocalNode) -> PeerHint {
    PeerHint {
        node_id: Some(local.node_id),
        service: Some(local.service.clone()),
        addrs: local.addrs.clone(),
        source: Source::Mdns,
        subscriptions: Some(local.subscriptions.clone()),
        multicast: local.multicast,
    }
}

impl Board {
    fn source(&self) -> BoardSource {
        BoardSource {
            board: self.clone(),
            me: None,
        }
    }

    /// Tells every node but `from` of `event`.
    fn tell_others(&self, from: &LocalNode, event: &DiscoveryEvent) {
        for (other, tx) in self.0.lock().unwrap().iter() {
            if other.node_id != from.node_id {
                let _ = tx.send(event.clone());
            }
        }
    }
}

impl Discovery for BoardSource {
    fn start(&mut self, local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError> {
        for (other, _) in self.board.0.lock().unwrap().iter() {
            let _ = events.send(DiscoveryEvent::Up(hint(other)));
        }
        self.board
            .tell_others(local, &DiscoveryEvent::Up(hint(local)));
        self.board.0.lock().unwrap().push((local.clone(), events));
        self.me = Some(local.clone());
        Ok(())
    }

    fn update(&mut self, local: &LocalNode) {
        for (known, _) in self.board.0.lock().unwrap().iter_mut() {
            if known.node_id == local.node_id {
                *known = local.clone();
            }
        }
        self.board
            .tell_others(local, &DiscoveryEvent::Updated(hint(local)));
    }

    fn stop(&mut self) {
        if let Some(me) = self.me.take() {
            self.board
                .0
                .lock()
                .unwrap()
                .retain(|(l, _)| l.node_id != me.node_id);
            self.board
                .tell_others(&me, &DiscoveryEvent::Down(hint(&me)));
        }
    }
}

async fn start(mesh: &Mesh, board: &Board, service: &str, idle: Option<Duration>) -> Node {
    let builder = mesh
        .builder(service)
        .discovery(board.source())
        .close_idle_after(idle);
    mesh.start_with(builder, &[]).await
}

fn connected_services(node: &Node) -> Vec<String> {
    node.peers().into_iter().map(|p| p.service).collect()
}

/// `orders` discovers `billing` and `shipping` but connects to neither until it sends to
/// `billing`; then it holds one connection, which closes by itself once idle, and the next
/// send opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_instances_are_connected_on_first_use_and_closed_when_idle() {
    let (mesh, board) = (Mesh::new(), Board::default());
    let billing = start(&mesh, &board, "billing", None).await;
    let shipping = start(&mesh, &board, "shipping", None).await;
    let idle = Duration::from_millis(400);
    let orders = start(&mesh, &board, "orders", Some(idle)).await;
    let mut events = orders.events();
    until(&orders, "both services discovered", |n| {
        n.discovered().len() == 2
    })
    .await;
    assert!(orders.peers().is_empty(), "discovering is not connecting");
    assert!(orders.discovered().iter().all(|d| !d.connected));

    let mut handled = charges(&billing);
    for round in 0..2 {
        let msg = Message::command("charge", format!("order {round}"));
        let id = msg.id();
        let receipt = timeout(WAIT, orders.send("billing", msg))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(receipt.node, billing.id());
        assert_eq!(handled.recv().await, Some(id));
        assert_eq!(connected_services(&orders), ["billing"], "round {round}");
        assert!(shipping.peers().is_empty(), "nothing was sent to shipping");
        let billing_listed = orders
            .discovered()
            .into_iter()
            .find(|d| d.service == "billing")
            .unwrap();
        assert!(billing_listed.connected);

        // Unused for `idle`: closed by orders, which dialled it.
        let down = next_event(&mut events, WAIT, |e| {
            matches!(e, NodeEvent::PeerDown { .. })
        })
        .await;
        let NodeEvent::PeerDown {
            service, reason, ..
        } = down
        else {
            unreachable!()
        };
        assert_eq!(
            (service.as_str(), reason.as_str()),
            ("billing", "closed after being idle")
        );
        until(&billing, "billing sees the connection go", |n| {
            n.peers().is_empty()
        })
        .await;
        assert_eq!(orders.discovered().len(), 2, "still discovered");
    }
    for node in [orders, billing, shipping] {
        node.shutdown().await;
    }
}

/// `billing` subscribes after everyone started; its announcement is updated, so `orders` counts
/// it as an audience without a connection, and connects to billing alone to deliver the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_learns_subscribers_from_announcements_and_connects_only_to_them() {
    let (mesh, board) = (Mesh::new(), Board::default());
    let billing = start(&mesh, &board, "billing", None).await;
    let shipping = start(&mesh, &board, "shipping", None).await;
    let orders = start(&mesh, &board, "orders", None).await;
    let (tx, mut got) = mpsc::unbounded_channel();
    let _sub = billing
        .subscribe("order.*", move |msg: Message| {
            let tx = tx.clone();
            async move {
                tx.send(msg.id()).unwrap();
                Ok(())
            }
        })
        .await
        .unwrap();
    orders
        .wait_for_subscribers("order.created", 1, WAIT)
        .await
        .expect("billing's subscription announced");
    assert_eq!(audience_sizes(&orders, "order.created"), [1]);
    assert!(orders.peers().is_empty(), "learned without a connection");

    let event = Message::event("order.created", "42");
    let id = event.id();
    let receipt = timeout(WAIT, orders.publish(event)).await.unwrap().unwrap();
    assert_eq!(receipt.deliveries.len(), 1);
    assert_eq!(timeout(WAIT, got.recv()).await.unwrap(), Some(id));
    assert_eq!(connected_services(&orders), ["billing"]);
    assert!(shipping.peers().is_empty());
    for node in [orders, billing, shipping] {
        node.shutdown().await;
    }
}

/// Registers `billing`'s `charge` handler; yields the id of every charge it handles.
fn charges(billing: &Node) -> mpsc::UnboundedReceiver<MessageId> {
    let (tx, handled) = mpsc::unbounded_channel();
    billing.handle("charge", move |msg: Message| {
        let tx = tx.clone();
        async move {
            tx.send(msg.id()).unwrap();
            Ok(())
        }
    });
    handled
}

/// A discovery source the test drives: it hands the test the node's event sender.
#[derive(Clone, Default)]
struct Manual(Arc<Mutex<Option<EventSender>>>);

impl Manual {
    fn tell(&self, event: DiscoveryEvent) {
        let sender = self.0.lock().unwrap();
        sender.as_ref().expect("started").send(event).unwrap();
    }
}

impl Discovery for Manual {
    fn start(&mut self, _local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError> {
        *self.0.lock().unwrap() = Some(events);
        Ok(())
    }
}

/// `orders` has learnt of `billing` at an address where nothing answers (a socket nobody
/// reads), so the dial a caller asks for fails; [`SilentAddress::move_to_billing`] then moves
/// the announcement to where billing listens, which by itself changes no peer and asks for
/// nothing.
struct SilentAddress {
    _mesh: Mesh,
    billing: Node,
    orders: Node,
    manual: Manual,
    events: tokio::sync::broadcast::Receiver<NodeEvent>,
    silent: std::net::UdpSocket,
}

impl SilentAddress {
    async fn new() -> Self {
        let mesh = Mesh::new();
        let billing = mesh.start("billing", &[]).await;
        let manual = Manual::default();
        let builder = mesh
            .builder("orders")
            .discovery(manual.clone())
            .handshake_timeout(Duration::from_millis(300));
        let orders = mesh.start_with(builder, &[]).await;
        let events = orders.events();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let scene = Self {
            _mesh: mesh,
            billing,
            orders,
            manual,
            events,
            silent,
        };
        let silent_addr = scene.silent.local_addr().unwrap();
        scene
            .manual
            .tell(DiscoveryEvent::Up(scene.billing_at(silent_addr)));
        until(&scene.orders, "billing discovered", |n| {
            n.discovered().len() == 1
        })
        .await;
        scene
    }

    /// Billing announced at `addr`.
    fn billing_at(&self, addr: SocketAddr) -> PeerHint {
        PeerHint {
            node_id: Some(self.billing.id()),
            service: Some("billing".to_owned()),
            addrs: vec![addr],
            source: Source::Mdns,
            subscriptions: Some(Vec::new()),
            multicast: None,
        }
    }

    /// Waits for the dial to the silent address to fail, then announces billing where it
    /// listens.
    async fn move_to_billing_once_the_dial_failed(&mut self) {
        let silent_addr = self.silent.local_addr().unwrap();
        next_event(
            &mut self.events,
            WAIT,
            |e| matches!(e, NodeEvent::HandshakeFailed { addr, .. } if *addr == silent_addr),
        )
        .await;
        let moved = self.billing_at(self.billing.local_addr());
        self.manual.tell(DiscoveryEvent::Updated(moved));
    }

    async fn shut_down(self) {
        for node in [self.orders, self.billing] {
            node.shutdown().await;
        }
    }
}

/// What a caller of `orders` does while the dial to `billing` fails.
enum Caller {
    /// [`Node::wait_for_instances`].
    WaitForInstances,
    /// [`Node::ping`].
    Ping,
}

/// `caller` waits for billing (10 s at most) at a [`SilentAddress`]: the caller asks again by
/// itself when the directory allows (a second or so after its first ask) and reaches billing
/// well within its time.
async fn a_caller_whose_dial_failed_asks_again(caller: Caller) {
    let mut scene = SilentAddress::new().await;
    let waiting = {
        let orders = scene.orders.clone();
        tokio::spawn(async move {
            match caller {
                Caller::WaitForInstances => orders.wait_for_instances("billing", 1, WAIT).await,
                Caller::Ping => orders.ping("billing", WAIT).await.map(|_| ()),
            }
        })
    };
    scene.move_to_billing_once_the_dial_failed().await;
    timeout(WAIT + Duration::from_secs(1), waiting)
        .await
        .unwrap()
        .unwrap()
        .expect("billing not reached in 10 s: nothing dialled it again");
    assert_eq!(connected_services(&scene.orders), ["billing"]);
    scene.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_instances_asks_again_after_a_failed_dial() {
    a_caller_whose_dial_failed_asks_again(Caller::WaitForInstances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_asks_again_after_a_failed_dial() {
    a_caller_whose_dial_failed_asks_again(Caller::Ping).await;
}

/// A send to billing at a [`SilentAddress`]: the dial it asks for fails (a few rounds, then
/// given up); the send, still waiting, asks again (a second or so later) once billing is
/// announced where it listens, and goes, rather than waiting for its deadline to be
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_dial_failed_asks_again_and_goes() {
    let mut scene = SilentAddress::new().await;
    let mut handled = charges(&scene.billing);
    let msg = Message::command("charge", "order-1");
    let id = msg.id();
    let send = tokio::spawn(scene.orders.send("billing", msg));
    scene.move_to_billing_once_the_dial_failed().await;
    let receipt = timeout(WAIT, send)
        .await
        .expect("the send did not go within 10 s: nothing dialled billing again")
        .unwrap()
        .unwrap();
    assert_eq!(receipt.node, scene.billing.id());
    assert_eq!(timeout(WAIT, handled.recv()).await.unwrap(), Some(id));
    scene.shut_down().await;
}
