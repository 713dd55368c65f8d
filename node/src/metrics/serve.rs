//! The metrics endpoint: `GET /metrics` over HTTP/1.1, served by hyper.
//!
//! Each scrape refreshes the outbox's counts (on a blocking thread, bounded) and encodes the
//! node's collector in a registry of its own. At most [`MAX_SCRAPERS`] connections are served
//! at once (more are closed at once), each must send its request head within
//! [`HEADER_TIMEOUT`], and the endpoint stops with the node.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::collect::NodeCollector;
use crate::Error;
use crate::runtime::Driver;

/// Connections served at once; Prometheus uses one per target.
const MAX_SCRAPERS: usize = 16;
/// How long a connection may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the endpoint's address (before the node starts, so a taken address fails `start`).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves the node's metrics on `listener` until the node stops.
pub(crate) fn serve(driver: &Arc<Driver>, listener: TcpListener) {
    if let Ok(bound) = listener.local_addr() {
        let _ = driver.metrics.addr.set(bound);
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector::new(Arc::downgrade(driver))));
    let endpoint = Arc::new(Endpoint {
        #[cfg(feature = "outbox")]
        driver: Arc::downgrade(driver),
        registry,
    });
    let stopping = driver.stopping.clone();
    let tasks = driver.tasks.clone();
    driver.tasks.spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stopping.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: try again after a moment.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue; // too many scrapers at once: dropped, the connection closes
            };
            let endpoint = Arc::clone(&endpoint);
            let stopping = stopping.clone();
            tasks.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let endpoint = Arc::clone(&endpoint);
                    async move { Ok::<_, Infallible>(endpoint.answer(&request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    result = connection => {
                        if let Err(e) = result {
                            tracing::debug!("metrics endpoint: connection ended: {e}");
                        }
                    }
                    () = stopping.cancelled() => {}
                }
                drop(slot);
            });
        }
    });
}

/// What each request is answered from.
struct Endpoint {
    /// For the outbox's counts.
    #[cfg(feature = "outbox")]
    driver: std::sync::Weak<Driver>,
    registry: Registry,
}

impl Endpoint {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/metrics" {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            response
                .headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        #[cfg(feature = "outbox")]
        if let Some(driver) = self.driver.upgrade() {
            super::collect::refresh_outbox(&driver).await;
        }
        let mut body = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            tracing::warn!("metrics endpoint: encoding failed: {e}");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            );
        }
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(OPENMETRICS),
        );
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
