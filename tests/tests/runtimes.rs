//! On tokio's multi-thread runtime (what `#[tokio::main]` gives a service) handlers that
//! finish at once run where their message was read, as on a current-thread runtime: no task
//! for each, and the acks of those read together leave in one write. (That callers' messages
//! queued together leave together there too is a matter of timing, measured by the
//! `fixed-load` benchmark's `multi-thread` option, not here.)
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use shoal::{Message, Node};
use shoal_tests::{Mesh, WAIT, wait_instances};
use tokio::time::timeout;

/// A `billing` node and a `shop` node that dials it, connected.
async fn pair(mesh: &Mesh) -> (Node, Node) {
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    (billing, shop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_finish_at_once_need_no_task_of_their_own() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let tasks = Arc::new(Mutex::new(HashSet::new()));
    {
        let tasks = Arc::clone(&tasks);
        billing.handle("ping", move |_msg: Message| {
            let tasks = Arc::clone(&tasks);
            async move {
                // Polled first where the message was read: the connection's task.
                tasks.lock().unwrap().insert(tokio::task::try_id());
                Ok(())
            }
        });
    }
    for i in 0..10 {
        timeout(
            WAIT,
            shop.send("billing", Message::command("ping", format!("{i}"))),
        )
        .await
        .expect("send hung")
        .unwrap();
    }
    // Each send went on a quiet connection: written at once, by itself.
    assert!(shop.stats().writes >= 10, "{:?}", shop.stats());
    let tasks = tasks.lock().unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "ten handlers ran in {} tasks: {tasks:?}",
        tasks.len()
    );
}
