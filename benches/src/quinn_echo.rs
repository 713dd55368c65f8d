//! Raw quinn floors: what QUIC with mutual TLS costs before Shoal adds anything.
//!
//! Both scenarios use one quinn `Endpoint` per side, certificates from
//! [`crate::certs::generate_pki`] (server *requires* a client certificate), ALPN
//! [`ALPN`], quinn's default transport settings, and one connection set up before timing
//! starts (the handshake is not measured).
//!
//! * `quinn-stream` — **the baseline** ("raw quinn"): ONE long-lived bidirectional stream;
//!   the client writes a frame (`u32` big-endian length + `payload` bytes), the server reads
//!   it and writes it back, the client reads the whole echo. Closed loop.
//! * `quinn-datagram` — the same over QUIC DATAGRAM frames (unreliable, unordered):
//!   `max(payload, 8)` bytes, the first 8 being the attempt number; a reply missing for
//!   [`crate::measure::LOSS_TIMEOUT`] counts as lost.
//! * `quinn-stream-at-<rate>` (scenario `quinn-stream-at-rate`) — the `quinn-stream` echo at
//!   a fixed offered rate, the floor of the `request-at-<rate>` rows: a writer sends frame
//!   `seq` (`max(payload, 8)` bytes, the first 8 being `seq`) when it is due
//!   ([`RateSchedule::wait_turn`]) whatever the echoes do, a reader records each echo
//!   against its frame's intended send time ([`RateRecorder`]). The stream keeps order, so
//!   echoes missing when the reader has waited [`open_loop::LOSS_TIMEOUT`] are the last ones
//!   and count as lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, ReadError, ReadExactError};
use tokio::time::Instant;

use crate::busy_poll::Spinner;
use crate::certs::{self, SERVER_NAME, TestPki};
use crate::error::{BenchError, BenchResult};
use crate::measure::open_loop::{self, RateRecorder, RateSchedule, at_rate_name};
use crate::measure::{LOSS_TIMEOUT, RoundTrip, measure};
use crate::report::LatencyReport;
use crate::report::rate::RateReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::{BenchConfig, datagram_len};

/// Stream scenario name (row name in the reports; the default ratio baseline).
pub const STREAM_NAME: &str = "quinn-stream";

/// Datagram scenario name (row name in the reports).
pub const DATAGRAM_NAME: &str = "quinn-datagram";

/// ALPN protocol both sides offer.
pub const ALPN: &[u8] = b"bench";

/// Largest frame the stream echo server accepts (bounds its buffer).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Stale echoes read per datagram round trip before giving up on it.
const MAX_STALE_REPLIES: usize = 64;

/// Application close code used when a side is done.
const DONE: u32 = 0;

/// A quinn server configuration: the PKI's server leaf, client certificates required and
/// verified against the PKI's CA, ALPN [`ALPN`], default transport settings.
pub fn server_config(pki: &TestPki) -> BenchResult<quinn::ServerConfig> {
    let tls = certs::server_tls_config(&pki.ca, &pki.server, &[ALPN])?;
    let crypto = QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A quinn client configuration: trusts the PKI's CA, presents the PKI's client leaf,
/// ALPN [`ALPN`], default transport settings.
pub fn client_config(pki: &TestPki) -> BenchResult<quinn::ClientConfig> {
    let tls = certs::client_tls_config(&pki.ca, &pki.client, &[ALPN])?;
    let crypto = QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Which way the echo travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Datagram,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Stream => STREAM_NAME,
            Self::Datagram => DATAGRAM_NAME,
        }
    }
}

/// Runs one `quinn-stream` run.
pub fn run_stream(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(config, Mode::Stream)
}

/// Runs one `quinn-datagram` run.
pub fn run_datagram(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(config, Mode::Datagram)
}

/// Runs one `quinn-stream-at-rate` run: the row `quinn-stream-at-<rate>`.
pub fn run_stream_at_rate(config: &BenchConfig, rate: u64) -> BenchResult<Vec<RateReport>> {
    Ok(vec![stream_at_rate(config, rate, STREAM_NAME, false)?])
}

/// The `quinn-stream-at-rate` run with both sides' runtimes polling for input all along
/// ([`Spinner`]), as row `<variant>-at-<rate>`.
pub fn run_stream_at_rate_busy_poll(
    config: &BenchConfig,
    rate: u64,
    variant: &str,
) -> BenchResult<RateReport> {
    stream_at_rate(config, rate, variant, true)
}

fn stream_at_rate(
    config: &BenchConfig,
    rate: u64,
    variant: &str,
    poll: bool,
) -> BenchResult<RateReport> {
    let config = *config;
    let name = at_rate_name(variant, rate);
    let pki = certs::generate_pki()?;
    let server_cfg = server_config(&pki)?;
    let client_cfg = client_config(&pki)?;
    run_pair(
        &name.clone(),
        &config,
        move |announce, shutdown| async move {
            let _spinner = poll.then(Spinner::start);
            serve(announce, shutdown, server_cfg, Mode::Stream, config).await
        },
        move |addr| async move {
            let _spinner = poll.then(Spinner::start);
            stream_at_rate_client(addr, client_cfg, config, rate, name).await
        },
    )
}

/// One `quinn-stream` run with both sides' runtimes polling for input all along
/// ([`crate::busy_poll::Spinner`]), as row `name`: the floor of Shoal's busy-polling rows.
pub fn run_stream_busy_poll(config: &BenchConfig, name: &str) -> BenchResult<LatencyReport> {
    let mut report = run_polling(config, Mode::Stream, true)?;
    report.name = name.to_owned();
    Ok(report)
}

fn run(config: &BenchConfig, mode: Mode) -> BenchResult<Vec<LatencyReport>> {
    Ok(vec![run_polling(config, mode, false)?])
}

fn run_polling(config: &BenchConfig, mode: Mode, poll: bool) -> BenchResult<LatencyReport> {
    let config = *config;
    // Certificates are made outside the timed part and outside the runtimes.
    let pki = certs::generate_pki()?;
    let server_cfg = server_config(&pki)?;
    let client_cfg = client_config(&pki)?;
    run_pair(
        mode.name(),
        &config,
        move |announce, shutdown| async move {
            let _spinner = poll.then(Spinner::start);
            serve(announce, shutdown, server_cfg, mode, config).await
        },
        move |addr| async move {
            let _spinner = poll.then(Spinner::start);
            client(addr, client_cfg, mode, config).await
        },
    )
}

async fn serve(
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    server_cfg: quinn::ServerConfig,
    mode: Mode,
    config: BenchConfig,
) -> BenchResult<()> {
    let endpoint = crate::raw_endpoint::server(server_cfg)?;
    announce.send(endpoint.local_addr()?)?;
    let result = shutdown
        .run_until(async {
            let connection = first_connection(&endpoint).await?;
            match mode {
                Mode::Stream => echo_stream(&connection, config.max_round_trips()).await,
                Mode::Datagram => echo_datagrams(&connection, config.max_round_trips()).await,
            }
        })
        .await;
    endpoint.close(DONE.into(), b"done");
    result
}

/// `true` for the ways a peer ends a connection on purpose.
pub(crate) fn closed_by_peer(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed
    )
}

/// The peer's first bidi stream; `None` if the peer closed the connection instead.
pub(crate) async fn accept_bi_or_end(
    connection: &quinn::Connection,
) -> BenchResult<Option<(quinn::SendStream, quinn::RecvStream)>> {
    match connection.accept_bi().await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if closed_by_peer(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Fills `buf` from `recv`: `true` once filled, `false` if the peer cleanly ended the stream
/// or closed the connection before the first byte.
pub(crate) async fn read_or_end(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> BenchResult<bool> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(true),
        Err(ReadExactError::FinishedEarly(0)) => Ok(false),
        Err(ReadExactError::ReadError(ReadError::ConnectionLost(e))) if closed_by_peer(&e) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

async fn echo_stream(connection: &quinn::Connection, max_frames: u64) -> BenchResult<()> {
    let Some((mut send, mut recv)) = accept_bi_or_end(connection).await? else {
        return Ok(());
    };
    let mut frame = Vec::new();
    for _ in 0..max_frames {
        let mut header = [0u8; 4];
        if !read_or_end(&mut recv, &mut header).await? {
            return Ok(());
        }
        let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(BenchError::msg(format!(
                "frame of {len} bytes is too large"
            )));
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(4 + len, 0);
        recv.read_exact(&mut frame[4..]).await?;
        send.write_all(&frame).await?;
    }
    Ok(())
}

async fn echo_datagrams(connection: &quinn::Connection, max_datagrams: u64) -> BenchResult<()> {
    for _ in 0..max_datagrams {
        let datagram = match connection.read_datagram().await {
            Ok(d) => d,
            Err(e) if closed_by_peer(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        connection.send_datagram(datagram)?;
    }
    Ok(())
}

async fn client(
    server: SocketAddr,
    client_cfg: quinn::ClientConfig,
    mode: Mode,
    config: BenchConfig,
) -> BenchResult<LatencyReport> {
    let mut endpoint = crate::raw_endpoint::client()?;
    endpoint.set_default_client_config(client_cfg);
    let connection = endpoint.connect(server, SERVER_NAME)?.await?;
    let result = match mode {
        Mode::Stream => stream_client(&connection, &config).await,
        Mode::Datagram => datagram_client(&connection, &config).await,
    };
    connection.close(DONE.into(), b"done");
    // Let the CONNECTION_CLOSE go out; bounded, and its outcome does not matter.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn stream_client(
    connection: &quinn::Connection,
    config: &BenchConfig,
) -> BenchResult<LatencyReport> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let len = u32::try_from(config.payload)
        .map_err(|_| BenchError::msg("payload does not fit a u32 length prefix"))?;
    if config.payload > MAX_FRAME {
        return Err(BenchError::msg(format!(
            "{STREAM_NAME}: payload above {MAX_FRAME} bytes"
        )));
    }
    let mut frame = Vec::with_capacity(4 + config.payload);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.resize(4 + config.payload, 0xA5);
    let mut reply = vec![0u8; frame.len()];
    let report = measure(STREAM_NAME, config, async |_attempt| {
        send.write_all(&frame).await?;
        recv.read_exact(&mut reply).await?;
        if reply[..4] != frame[..4] {
            return Err(BenchError::msg("echoed frame has the wrong length prefix"));
        }
        Ok(RoundTrip::Done)
    })
    .await?;
    // A clean end of stream for the server; an error only means it is already gone.
    let _ = send.finish();
    Ok(report)
}

async fn datagram_client(
    connection: &quinn::Connection,
    config: &BenchConfig,
) -> BenchResult<LatencyReport> {
    let len = datagram_len(config.payload);
    let max = connection
        .max_datagram_size()
        .ok_or_else(|| BenchError::msg("peer does not accept datagrams"))?;
    if len > max {
        return Err(BenchError::msg(format!(
            "{DATAGRAM_NAME}: payload {len} exceeds the path's datagram limit of {max} bytes"
        )));
    }
    let mut out = vec![0xA5u8; len];
    measure(DATAGRAM_NAME, config, async |attempt| {
        out[..8].copy_from_slice(&attempt.to_le_bytes());
        connection.send_datagram(Bytes::copy_from_slice(&out))?;
        let deadline = Instant::now() + LOSS_TIMEOUT;
        for _ in 0..MAX_STALE_REPLIES {
            match tokio::time::timeout_at(deadline, connection.read_datagram()).await {
                Err(_elapsed) => return Ok(RoundTrip::Lost),
                Ok(received) => {
                    let reply = received?;
                    if reply.len() == out.len() && reply[..8] == out[..8] {
                        return Ok(RoundTrip::Done);
                    }
                }
            }
        }
        Ok(RoundTrip::Lost)
    })
    .await
}

async fn stream_at_rate_client(
    server: SocketAddr,
    client_cfg: quinn::ClientConfig,
    config: BenchConfig,
    rate: u64,
    name: String,
) -> BenchResult<RateReport> {
    let mut endpoint = crate::raw_endpoint::client()?;
    endpoint.set_default_client_config(client_cfg);
    let connection = endpoint.connect(server, SERVER_NAME)?.await?;
    let result = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        let len = datagram_len(config.payload);
        let prefix = u32::try_from(len)
            .map_err(|_| BenchError::msg("payload does not fit a u32 length prefix"))?;
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&prefix.to_be_bytes());
        frame.resize(4 + len, 0xA5);
        let schedule = RateSchedule::starting_now(&config, rate)?;
        let recorder = RateRecorder::new(schedule)?;
        let total = schedule.total();
        let writer = async {
            for seq in 0..total {
                if schedule.wait_turn(seq).await {
                    recorder.late(seq);
                }
                frame[4..12].copy_from_slice(&seq.to_le_bytes());
                send.write_all(&frame).await?;
            }
            Ok::<_, BenchError>(())
        };
        let reader = async {
            let mut reply = vec![0u8; 4 + len];
            let mut answered = 0;
            for _ in 0..total {
                let read = recv.read_exact(&mut reply);
                match tokio::time::timeout(open_loop::LOSS_TIMEOUT, read).await {
                    Err(_elapsed) => break,
                    Ok(read) => read?,
                }
                let at = Instant::now();
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&reply[4..12]);
                recorder.complete(u64::from_le_bytes(seq), at);
                answered += 1;
            }
            Ok::<_, BenchError>(answered)
        };
        let (written, answered) = tokio::join!(writer, reader);
        written?;
        // In order: the unanswered ones are the last ones.
        for seq in answered?..total {
            recorder.lost(seq);
        }
        let _ = send.finish();
        recorder.report(&name)
    }
    .await;
    connection.close(DONE.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

/// The first connection `endpoint` accepts (every raw quinn scenario serves one client).
pub(crate) async fn first_connection(endpoint: &Endpoint) -> BenchResult<quinn::Connection> {
    let incoming = endpoint
        .accept()
        .await
        .ok_or_else(|| BenchError::msg("endpoint closed before a client connected"))?;
    Ok(incoming.await?)
}
