//! `shoal-flood`: an honest peer's request round trip, quiet and during a flood of 10,000
//! handshake attempts from a client whose certificate a CA the node does not trust issued,
//! in one run.
//!
//! The serving node runs with Shoal's defaults, so the limits against floods are the
//! defaults (`NodeBuilder::handshake_penalty`, `handshake_rate`, `max_connections`): the
//! first attempts fail their TLS handshake, which puts the flooder's address in the penalty
//! box; from then on its attempts are refused before TLS (one more handshake each time the
//! penalty ends). The flooder dials from [`FLOODER`], not the honest peer's address, as an
//! attacker on another host would. The flooder is an
//! attacker's best case: it accepts any server certificate (so every admitted attempt costs
//! the node a full handshake, its signature included, before the node refuses the client's
//! certificate) and keeps [`IN_FLIGHT`] attempts going from one UDP socket.
//!
//! One run: the honest client (a Shoal node, its connection up) measures `--warmup` +
//! `--count` closed-loop requests (`shoal-flood-quiet`), then starts the flood on a third
//! thread and measures every request while the flood lasts (`shoal-flood-during`). The run
//! prints the flood's outcome and the ratio of the two rows' p99 (target: at most 2) on
//! stderr; `--baseline shoal-flood-quiet` puts the ratios in the table.
//!
//! ```sh
//! cargo run --release -p shoal-benches -- --scenario shoal-flood --baseline shoal-flood-quiet --runs 3
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use shoal::{MeshCa, Message};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::report::{self, LatencyReport};
use crate::runtime::{run_pair, spawn_runtime_thread};
use crate::shoal_scenarios::{SERVICE, serve, shoal_err, start_client};

/// Scenario name.
pub const NAME: &str = "shoal-flood";
/// Row: requests before the flood.
pub const QUIET_NAME: &str = "shoal-flood-quiet";
/// Row: requests while the flood lasts.
pub const DURING_NAME: &str = "shoal-flood-during";
/// Handshake attempts in the flood.
pub const ATTEMPTS: usize = 10_000;
/// The flooder's address: another loopback address than the honest peer's (the node's
/// penalty box is per address, and an attacker does not share the honest peer's host).
pub const FLOODER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0));
/// Attempts the flooder keeps going at once.
pub const IN_FLIGHT: usize = 64;
/// How long the flooder waits for one attempt's outcome.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The flood stops after this long even if not every attempt was made.
const FLOOD_LIMIT: Duration = Duration::from_secs(60);
/// Fewest requests the flood must leave time for, or the run fails (a flood too short to
/// measure anything during).
const MIN_DURING: u64 = 200;
const TIMEOUT: Duration = Duration::from_secs(5);

/// One run of `shoal-flood`: the quiet row, then the row during a flood of [`ATTEMPTS`].
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run_with(config, ATTEMPTS, MIN_DURING)
}

/// [`run`] with a flood of `attempts`, failing when fewer than `min_during` requests were
/// measured while it lasted (the tests run a small flood in a debug build).
pub fn run_with(
    config: &BenchConfig,
    attempts: usize,
    min_during: u64,
) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    run_pair(
        NAME,
        &config,
        move |announce, shutdown| serve(server_ca, announce, shutdown),
        move |addr| client(ca, addr, config, attempts, min_during),
    )
}

async fn client(
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    attempts: usize,
    min_during: u64,
) -> BenchResult<Vec<LatencyReport>> {
    let node = start_client(ca, server).await?;
    let payload = bytes::Bytes::from(vec![0xA5u8; config.payload]);
    let request = async || {
        let reply = node
            .request(SERVICE, Message::command("echo", payload.clone()), TIMEOUT)
            .await
            .map_err(shoal_err)?;
        if reply.payload().len() == payload.len() {
            Ok(())
        } else {
            Err(BenchError::msg("echo reply has the wrong length"))
        }
    };
    let quiet = measure(QUIET_NAME, &config, async |_| {
        request().await?;
        Ok(RoundTrip::Done)
    })
    .await?;

    // The flood runs on a thread of its own (as another process would), not pinned, at the
    // lowest priority: see `lowest_priority`.
    let (done_tx, done) = watch::channel(false);
    let flooder = spawn_runtime_thread(format!("{NAME}-flooder"), None, move || async move {
        lowest_priority()?;
        let outcome = flood(server, attempts).await;
        let _ = done_tx.send(true);
        outcome
    })?;
    let mut histogram = report::new_histogram()?;
    let started = Instant::now();
    while !*done.borrow() {
        let start = Instant::now();
        request().await?;
        report::record(&mut histogram, start.elapsed());
        if started.elapsed() > FLOOD_LIMIT + ATTEMPT_TIMEOUT * 2 {
            return Err(BenchError::msg("the flood did not end in time"));
        }
    }
    let outcome = flooder
        .join()
        .map_err(|_| BenchError::msg("the flooder panicked"))??;
    let during = LatencyReport::from_histogram(DURING_NAME, &histogram);
    if during.count < min_during {
        return Err(BenchError::msg(format!(
            "only {} requests during the flood ({:?}): too short to measure",
            during.count, outcome.took
        )));
    }
    eprintln!(
        "  {NAME}: {} attempts in {:.2} s ({} in flight): {} refused before TLS, {} failed their \
         TLS handshake, {} timed out; {} requests during; p99 during / quiet = x{:.2} \
         (p50 x{:.2})",
        outcome.attempts,
        outcome.took.as_secs_f64(),
        IN_FLIGHT,
        outcome.refused,
        outcome.failed,
        outcome.timed_out,
        during.count,
        during.p99 as f64 / quiet.p99.max(1) as f64,
        during.p50 as f64 / quiet.p50.max(1) as f64,
    );
    node.shutdown().await;
    Ok(vec![quiet, during])
}

/// Puts the calling thread (the flooder) at the lowest CPU priority, nice 19.
///
/// The attacker stands for another host: its own CPU work (a key exchange and a
/// ClientHello for every attempt, about one CPU's worth at 64 in flight) is not the node's
/// cost. On a 2-vCPU machine it can only run on the CPUs of the node and the honest client,
/// and at normal priority it took a whole one of them, so the honest round trip waited on
/// the scheduler rather than on the node (a profile of the run: the flooder's thread 48 % of
/// the samples, the node's handling of the flood's packets under 1 %). At nice 19 it uses
/// the CPU time the node and the honest client leave; the run prints how fast it flooded.
fn lowest_priority() -> BenchResult<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system call; on Linux `PRIO_PROCESS` with id 0 sets the calling
        // thread's nice value (a per-thread attribute), nothing else.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            return Err(BenchError::msg(format!(
                "setpriority: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// What the flood's attempts ended with.
#[derive(Clone, Debug, Default)]
struct FloodOutcome {
    attempts: usize,
    /// Refused before TLS (QUIC `CONNECTION_REFUSED`).
    refused: usize,
    /// The TLS handshake failed (the node refused the certificate).
    failed: usize,
    /// No outcome within [`ATTEMPT_TIMEOUT`].
    timed_out: usize,
    took: Duration,
}

/// Makes `attempts` handshake attempts on `server`, [`IN_FLIGHT`] at a time, with a
/// certificate from a CA the node does not trust.
async fn flood(server: SocketAddr, attempts: usize) -> BenchResult<FloodOutcome> {
    let foreign = MeshCa::generate("foreign mesh").map_err(shoal_err)?;
    let identity = foreign.issue("intruder").map_err(shoal_err)?;
    let config = foreign_client(&identity.cert_pem(), &identity.key_pem())?;
    let endpoint = quinn::Endpoint::client(FLOODER)?;
    let started = Instant::now();
    let mut outcome = FloodOutcome::default();
    let mut pending = FuturesUnordered::new();
    let attempt = |config: quinn::ClientConfig| {
        let connecting = endpoint.connect_with(config, server, "shoal.mesh");
        async move {
            let connecting = connecting.map_err(|e| BenchError::msg(format!("connect: {e}")))?;
            Ok::<_, BenchError>(
                match tokio::time::timeout(ATTEMPT_TIMEOUT, connecting).await {
                    Err(_) => Outcome::TimedOut,
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                    {
                        Outcome::Refused
                    }
                    Ok(Err(_)) => Outcome::Failed,
                    // The client's side of TLS 1.3 completes before the server has checked the
                    // client's certificate: the refusal comes as the connection's close.
                    Ok(Ok(conn)) => {
                        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, conn.closed()).await;
                        Outcome::Failed
                    }
                },
            )
        }
    };
    while outcome.attempts < attempts || !pending.is_empty() {
        while outcome.attempts < attempts
            && pending.len() < IN_FLIGHT
            && started.elapsed() < FLOOD_LIMIT
        {
            pending.push(attempt(config.clone()));
            outcome.attempts += 1;
        }
        let Some(result) = pending.next().await else {
            break;
        };
        match result? {
            Outcome::Refused => outcome.refused += 1,
            Outcome::Failed => outcome.failed += 1,
            Outcome::TimedOut => outcome.timed_out += 1,
        }
    }
    outcome.took = started.elapsed();
    endpoint.close(0u32.into(), b"");
    Ok(outcome)
}

enum Outcome {
    Refused,
    Failed,
    TimedOut,
}

/// A QUIC client presenting the foreign certificate, speaking Shoal's ALPN, and accepting
/// any server certificate: every attempt the node admits gets as far as the node's check of
/// the client's certificate.
fn foreign_client(cert_pem: &str, key_pem: &str) -> BenchResult<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::msg(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| BenchError::msg(format!("key PEM: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| BenchError::msg(format!("QUIC client config: {e}")))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Accepts every server certificate (the attacker does not care whom it floods).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
