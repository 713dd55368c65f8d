//! ZeroMQ latency: the REQ/REP round trip and the PUB/SUB one-way rows.

use std::sync::mpsc::{self, SyncSender};

use ::zmq::{Context, Message, Socket};
use hdrhistogram::Histogram;

use super::{
    ACK_LEN, Ctl, Endpoints, IO_TIMEOUT, MAX_LOOPS, POLL_INTERVAL, PUBLISH_NAME, REQUEST_NAME, ack,
    answer_hello, await_subscribers, bind, bind_publisher, body, connect, connect_subscriber,
    io_err, millis, parse_ack, receive_endpoints, run_threads, socket, would_block,
};
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::pubsub::{Probe, TOPIC};
use crate::report::LatencyReport;
use crate::{BenchConfig, runtime};

/// Subscriber counts of the one-way rows (`zmq-publish-1`, `zmq-publish-8`).
pub const PUBLISH_FAN_OUTS: [usize; 2] = [1, 8];

/// Measuring loops look at the run's deadline once every this many messages.
const CHECK_EVERY: u64 = 1024;

/// One run of [`REQUEST_NAME`]: closed-loop REQ/REP round trips of `--payload` bytes, the
/// REP side echoing the message it received (no copy).
pub fn run_request(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let (tx, rx) = mpsc::sync_channel::<String>(1);
    let rounds = config.max_round_trips();
    let client_config = *config;
    let report = run_threads(
        REQUEST_NAME,
        config,
        move |ctl| echo_server(&tx, rounds, ctl),
        move |ctl| {
            let endpoint = receive_endpoints(&rx, ctl)?;
            request_client(&endpoint, &client_config, ctl)
        },
    )?;
    Ok(vec![report])
}

/// REP: binds, announces its endpoint, then echoes up to `rounds` requests.
fn echo_server(announce: &SyncSender<String>, rounds: u64, ctl: &Ctl) -> BenchResult<()> {
    let ctx = Context::new();
    let rep = socket(&ctx, ::zmq::REP, POLL_INTERVAL)?;
    announce
        .send(bind(&rep)?)
        .map_err(|_| BenchError::msg("client side is gone"))?;
    let mut answered = 0;
    for _ in 0..MAX_LOOPS {
        if answered == rounds {
            break;
        }
        match rep.recv_msg(0) {
            Ok(request) => {
                rep.send(request, 0).map_err(io_err("zmq REP reply"))?;
                answered += 1;
            }
            Err(e) if would_block(&e) => {
                if ctl.stopped() {
                    break;
                }
                ctl.check("zmq REP server")?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// REQ: connects and times the round trips.
fn request_client(endpoint: &str, config: &BenchConfig, ctl: &Ctl) -> BenchResult<LatencyReport> {
    let ctx = Context::new();
    let req = socket(&ctx, ::zmq::REQ, IO_TIMEOUT)?;
    req.set_immediate(true)?;
    connect(&req, endpoint)?;
    let payload = vec![0xA5u8; config.payload];
    let mut reply = Message::new();
    runtime::build()?.block_on(measure(REQUEST_NAME, config, async |attempt| {
        if attempt % CHECK_EVERY == 0 {
            ctl.check(REQUEST_NAME)?;
        }
        req.send(&payload[..], 0)
            .map_err(io_err("zmq REQ request"))?;
        req.recv(&mut reply, 0).map_err(io_err("zmq REQ reply"))?;
        if reply.len() == payload.len() {
            Ok(RoundTrip::Done)
        } else {
            Err(BenchError::msg(format!(
                "zmq REQ: reply of {} bytes to a {}-byte request",
                reply.len(),
                payload.len()
            )))
        }
    }))
}

/// One run of [`PUBLISH_NAME`]: for each of [`PUBLISH_FAN_OUTS`], closed-loop publishes to
/// that many subscribers, each on fresh sockets.
pub fn run_publish(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let mut rows = Vec::new();
    for n in PUBLISH_FAN_OUTS {
        rows.extend(publish_rows(config, n)?);
    }
    Ok(rows)
}

fn publish_rows(config: &BenchConfig, n: usize) -> BenchResult<Vec<LatencyReport>> {
    if !(1..=64).contains(&n) {
        return Err(BenchError::msg("zmq-publish measures 1 to 64 subscribers"));
    }
    let name = format!("{PUBLISH_NAME}-{n}");
    let probe = Probe::new(config, n)?;
    let (sub_probe, pub_probe) = (probe.clone(), probe.clone());
    let (tx, rx) = mpsc::sync_channel::<Endpoints>(1);
    let last = run_threads(
        &name,
        config,
        move |ctl| {
            let endpoints = receive_endpoints(&rx, ctl)?;
            subscribers(&endpoints, n, &sub_probe, ctl)
        },
        move |ctl| publisher(&tx, n, &pub_probe, ctl),
    )?;
    probe.rows(&name, &last)
}

/// The receiving side: `n` SUB sockets (each with its own PUSH for acks) on one thread and
/// one context. Each stamped message is recorded, then acked with its sequence number.
fn subscribers(endpoints: &Endpoints, n: usize, probe: &Probe, ctl: &Ctl) -> BenchResult<()> {
    let ctx = Context::new();
    let (subs, acks): (Vec<Socket>, Vec<Socket>) = (0..n)
        .map(|_| connect_subscriber(&ctx, endpoints))
        .collect::<BenchResult<Vec<_>>>()?
        .into_iter()
        .unzip();
    let handle = |i: usize, message: &[u8]| -> BenchResult<()> {
        if answer_hello(message, &acks[i], i)? {
            return Ok(());
        }
        let stamped = body(message);
        probe
            .arrived(i, stamped)
            .ok_or_else(|| BenchError::msg("zmq subscriber got a message without a stamp"))?;
        let seq = u64::from_le_bytes(stamped[..8].try_into()?);
        acks[i]
            .send(&ack(seq, i)[..], 0)
            .map_err(io_err("zmq subscriber ack"))
    };
    let mut message = Message::new();
    let mut items: Vec<_> = subs.iter().map(|s| s.as_poll_item(::zmq::POLLIN)).collect();
    for _ in 0..MAX_LOOPS {
        if ctl.stopped() {
            return Ok(());
        }
        ctl.check("zmq subscribers")?;
        if let [sub] = subs.as_slice() {
            // One subscriber: a plain blocking receive, as an application would do.
            match sub.recv(&mut message, 0) {
                Ok(()) => handle(0, &message)?,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        if ::zmq::poll(&mut items, i64::from(millis(POLL_INTERVAL)))? == 0 {
            continue;
        }
        for (i, item) in items.iter().enumerate() {
            if !item.is_readable() {
                continue;
            }
            for _ in 0..MAX_LOOPS {
                match subs[i].recv(&mut message, ::zmq::DONTWAIT) {
                    Ok(()) => handle(i, &message)?,
                    Err(e) if would_block(&e) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// The measuring side: binds PUB and the acks' PULL, waits for the `n` subscribers, then
/// runs the closed loop (publish one stamped message, wait for `n` acks of it).
fn publisher(
    announce: &SyncSender<Endpoints>,
    n: usize,
    probe: &Probe,
    ctl: &Ctl,
) -> BenchResult<Histogram<u64>> {
    let ctx = Context::new();
    let (publisher, acks, endpoints) = bind_publisher(&ctx)?;
    announce
        .send(endpoints)
        .map_err(|_| BenchError::msg("subscriber side is gone"))?;
    await_subscribers(&publisher, &acks, n)?;
    let all = u64::MAX >> (64 - n);
    let mut buf = [0u8; ACK_LEN];
    runtime::build()?.block_on(probe.closed_loop(TOPIC.as_bytes(), async |seq, message| {
        if seq % CHECK_EVERY == 0 {
            ctl.check(PUBLISH_NAME)?;
        }
        publisher
            .send(message, 0)
            .map_err(io_err("zmq PUB publish"))?;
        let mut acked = 0u64;
        // Acks of late hellos may come first; each subscriber acks each message once.
        for _ in 0..n + 10_000 {
            let len = acks
                .recv_into(&mut buf, 0)
                .map_err(io_err("zmq PULL waiting for acks"))?;
            if let Some((s, i)) = buf.get(..len).and_then(parse_ack)
                && s == seq
                && i < n
            {
                acked |= 1 << i;
                if acked == all {
                    return Ok(());
                }
            }
        }
        Err(BenchError::msg(format!(
            "message {seq}: {} of {n} subscribers acked",
            acked.count_ones()
        )))
    }))
}
