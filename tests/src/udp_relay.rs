//! A UDP relay on loopback between one client and one server, which a test can cut: every
//! datagram is dropped both ways while it is cut, as if a cable were pulled, without either
//! side closing anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::loopback;

/// Relays datagrams from the first client that sends to [`UdpRelay::addr`] on to `server`,
/// and the server's answers back. Stops when dropped.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// A relay to `server`, listening on a free loopback port.
    pub async fn start(server: SocketAddr) -> Self {
        let front = UdpSocket::bind(loopback()).await.unwrap();
        let back = UdpSocket::bind(loopback()).await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(relay(front, back, Arc::clone(&cut)));
        Self { addr, cut, task }
    }

    /// Where the client dials instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram from now on (`true`), or relays again (`false`).
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(front: UdpSocket, back: UdpSocket, cut: Arc<AtomicBool>) {
    let mut client = None;
    let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    loop {
        tokio::select! {
            received = front.recv_from(&mut up) => {
                let Ok((n, from)) = received else { return };
                client = Some(from);
                if !cut.load(Ordering::SeqCst) {
                    let _ = back.send(&up[..n]).await;
                }
            }
            received = back.recv(&mut down) => {
                let Ok(n) = received else { continue };
                if let (Some(to), false) = (client, cut.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&down[..n], to).await;
                }
            }
        }
    }
}
