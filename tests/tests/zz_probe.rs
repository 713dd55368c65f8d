#![allow(clippy::unwrap_used, missing_docs)]
use std::time::{Duration, Instant};
use shoal::Message;
use shoal_tests::{Mesh, wait_instances};

async fn run(mode: &str) {
    let mesh = Mesh::new();
    let pricing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[pricing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    pricing.handle("quote", |_msg: Message| async move { Ok("x") });
    pricing.handle("noreply", |_msg: Message| async move { Ok(()) });
    shop.handle("replies", |_msg: Message| async move { Ok(()) });
    for _ in 0..3 {
        match mode {
            "request" => { shop.request("billing", Message::command("quote", "a"), Duration::from_secs(5)).await.unwrap(); }
            "send" => { shop.send("billing", Message::command("noreply", "a")).await.unwrap(); }
            "async" => { shop.send("billing", Message::command("quote", "a").with_reply_channel("replies")).await.unwrap(); }
            _ => unreachable!(),
        }
    }
    let t = Instant::now();
    shop.shutdown().await;
    let t1 = Instant::now();
    pricing.shutdown().await;
    eprintln!("RESULT {mode} shop {:?} pricing {:?} acked {}", t1-t, t1.elapsed(), pricing.stats().acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let _ = tracing_subscriber::fmt().with_env_filter("shoal=trace").with_ansi(false).with_test_writer().try_init();
    run(&std::env::var("MODE").unwrap()).await;
}
