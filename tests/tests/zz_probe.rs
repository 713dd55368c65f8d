#![allow(clippy::unwrap_used, missing_docs)]
use shoal::Message;
use shoal_tests::{Mesh, wait_instances};
use std::time::{Duration, Instant};

async fn run(n: usize, pause: bool, shop_first: bool, request: bool) {
    let mesh = Mesh::new();
    let pricing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[pricing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    pricing.handle("quote", |_msg: Message| async move { Ok("x") });
    for _ in 0..n {
        if request {
            let r = shop
                .request(
                    "billing",
                    Message::command("quote", "a"),
                    Duration::from_secs(5),
                )
                .await;
            assert!(r.is_ok());
        } else {
            shop.send("billing", Message::command("quote", "a"))
                .await
                .unwrap();
        }
    }
    if pause {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t0 = Instant::now();
    if shop_first {
        shop.shutdown().await;
    }
    let t = Instant::now();
    pricing.shutdown().await;
    eprintln!(
        "n={n} pause={pause} shop_first={shop_first} request={request} shop {:?} pricing shutdown {:?} stats {:?} {:?}",
        t - t0,
        t.elapsed(),
        pricing.stats(),
        shop.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    for _ in 0..1 {
        run(3, false, true, true).await;
    }
}
