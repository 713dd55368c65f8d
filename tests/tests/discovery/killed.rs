//! A `kill -9` of a separate process: its instance is found dead and the traffic moves to
//! the other instances without loss.

use super::*;

// ---------------------------------------------------------------------------------------------
// 3. kill -9 of a separate process.
// ---------------------------------------------------------------------------------------------

const MESSAGES: usize = 2_000;
const KILL_AFTER: usize = 500;
const CONCURRENCY: usize = 64;

/// How one send of the stream ended, and when.
type Sent = (usize, Result<Receipt, Error>, Instant);

/// Sends [`MESSAGES`] commands to `work`, at most [`CONCURRENCY`] at a time; signals `reached`
/// when [`KILL_AFTER`] are acknowledged.
async fn send_stream(node: Node, reached: oneshot::Sender<()>) -> Vec<Sent> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let acked = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(Mutex::new(Some(reached)));
    let mut tasks = JoinSet::new();
    for i in 0..MESSAGES {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let (node, acked, reached) = (node.clone(), Arc::clone(&acked), Arc::clone(&reached));
        tasks.spawn(async move {
            let sent = node
                .send("work", Message::command("job", i.to_string()))
                .await;
            let at = Instant::now();
            drop(permit);
            if sent.is_ok()
                && acked.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER
                && let Some(tx) = reached.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
            (i, sent, at)
        });
    }
    // The caller bounds the time.
    let mut out = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        match tasks.join_next().await {
            Some(joined) => out.push(joined.unwrap()),
            None => break,
        }
    }
    out
}

/// Two instances of `work` (one in-process in h1, one a separate process in h2), a sender in
/// h0 with 2,000 commands streaming. The process in h2 is killed with SIGKILL after 500 acks:
/// every send still succeeds (the ones in flight at the victim are retried on the survivor),
/// the sender reports the victim down within 5 s (QUIC idle timeout, 2 s by default), and a
/// restarted victim (new node id, same host) is connected again.
#[test]
fn killed_instance_is_detected_and_traffic_moves_without_loss() {
    if std::env::var(CHILD_ENV).as_deref() == Ok("victim") {
        run_victim();
        return;
    }
    if !netns_or_skip(KILL_TEST) {
        return;
    }
    let lan = Lan::new(3).unwrap();
    let mesh = Mesh::new();
    let survivor = NsNode::start(lan.host(1), lan_node(&mesh, "work"));
    // When the survivor first handled a redelivery (a message first sent to the victim).
    let first_redelivery: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let first_redelivery = Arc::clone(&first_redelivery);
        survivor.node.handle("job", move |msg: Message| {
            let first_redelivery = Arc::clone(&first_redelivery);
            async move {
                tokio::time::sleep(HANDLER_TIME).await;
                if msg.attempt() > 1 {
                    first_redelivery
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                }
                Ok(())
            }
        });
    }
    let sender = NsNode::start(lan.host(0), lan_node(&mesh, "sender"));
    let mut events = sender.node.events();
    let mut victim = Victim::spawn(lan.host(2), &mesh);
    audit_mdns_threads(&[lan.host(0), lan.host(1)]);
    let (survivor_id, victim_id) = (survivor.node.id(), victim.node);
    let h2: IpAddr = lan.addr(2).into();
    let rt = runtime();

    // Phase 1: stream, kill, detect.
    let (killed_at, down_after, down_reason, results) = rt.block_on(async {
        sender
            .node
            .wait_for_instances("work", 2, STEP)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sender.node.diagnose("work")));
        let victim_peer = sender
            .node
            .peers()
            .into_iter()
            .find(|p| p.node == victim_id);
        assert_eq!(
            victim_peer.map(|p| p.addr),
            Some(SocketAddr::new(h2, victim.port)),
            "the sender reaches the victim in h2"
        );

        let (reached_tx, reached_rx) = oneshot::channel();
        let stream = tokio::spawn(send_stream(sender.node.clone(), reached_tx));
        tokio::time::timeout(STEP, reached_rx)
            .await
            .expect("500 acks did not come in time")
            .expect("the stream ended early");
        // Startup events (a duplicate connection closing, say) must not count as the kill's.
        drain_events(&mut events);
        let killed_at = Instant::now();
        let status = victim.kill();
        println!("victim killed: {status}");
        let down = wait_event(
            &mut events,
            STEP,
            |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == victim_id),
        )
        .await;
        let down_after = killed_at.elapsed();
        let Some(NodeEvent::PeerDown { reason, .. }) = down else {
            panic!("no PeerDown for the killed victim within {STEP:?}");
        };
        let results = tokio::time::timeout(Duration::from_secs(40), stream)
            .await
            .expect("the send stream did not finish in time")
            .unwrap();
        (killed_at, down_after, reason, results)
    });

    assert_eq!(results.len(), MESSAGES);
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(i, sent, _)| sent.as_ref().err().map(|e| (i, e.to_string())))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {MESSAGES} sends failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let receipts: Vec<(Receipt, Instant)> = results
        .iter()
        .map(|(_, sent, at)| (*sent.as_ref().unwrap(), *at))
        .collect();
    let by_victim = receipts.iter().filter(|(r, _)| r.node == victim_id).count();
    let by_survivor = receipts
        .iter()
        .filter(|(r, _)| r.node == survivor_id)
        .count();
    assert_eq!(
        by_victim + by_survivor,
        MESSAGES,
        "acks come from `work` only"
    );
    // Retried on the survivor after a first attempt at the victim (nothing else fails here).
    let moved: Vec<Instant> = receipts
        .iter()
        .filter(|(r, at)| r.node == survivor_id && r.attempts > 1 && *at >= killed_at)
        .map(|(_, at)| *at)
        .collect();
    let first_moved_ack = moved
        .iter()
        .min()
        .map(|at| at.duration_since(killed_at))
        .expect("no message was in flight at the victim when it was killed");
    let first_handled = first_redelivery
        .lock()
        .unwrap()
        .map(|at| at.saturating_duration_since(killed_at));
    println!(
        "kill -> PeerDown: {down_after:?} ({down_reason}); kill -> first ack by the survivor of a \
         message sent to the victim: {first_moved_ack:?} (survivor handled it after \
         {first_handled:?}); {} messages moved; acks: victim {by_victim}, survivor {by_survivor}",
        moved.len()
    );
    assert!(
        down_after <= Duration::from_secs(5),
        "PeerDown took {down_after:?}"
    );
    assert!(by_victim > 0, "the victim took part before it died");

    // Phase 2: the victim comes back (new node id, same host) and is connected again.
    let restarted_at = Instant::now();
    let back = Victim::spawn(lan.host(2), &mesh);
    assert_ne!(back.node, victim_id);
    rt.block_on(async {
        let up = wait_event(&mut events, STEP, |e| {
            matches!(e, NodeEvent::PeerUp { node, service, addr }
                if service == "work" && addr.ip() == h2 && *node == back.node)
        })
        .await;
        assert!(
            up.is_some(),
            "the restarted victim was not connected within {STEP:?}\n{}",
            sender.node.diagnose("work")
        );
        println!(
            "restarted victim connected {:?} after its start",
            restarted_at.elapsed()
        );
        let receipts = send_batch(&sender.node, "work", "job", 40).await;
        let by_node = count_by_node(&receipts);
        assert!(
            by_node.get(&back.node).is_some_and(|n| *n > 0),
            "the restarted victim gets work again: {by_node:?}"
        );
    });
    let status = back.finish();
    assert!(
        status.success(),
        "the restarted victim exited with {status}"
    );
    stop_all([sender, survivor]);
    drop(lan);
}
