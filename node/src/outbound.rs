//! Sending: pick an instance, deliver, wait for the ack, retry, or dead-letter.

use std::sync::Arc;

use bytes::BytesMut;
use shoal_proto::codec::PreparedEvent;
use shoal_proto::{Envelope, Frame, MessageId, NodeId, codec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::fanout::Audience;
use crate::core::retry::{Next, RetryState};
use crate::dead_letter::DeadLetter;
use crate::ordering::Ticket;
use crate::peer::{Outcome, Outgoing, Peer};
use crate::registry::Route;
use crate::stats::Counters;
use crate::{Error, Message, Receipt, RetryPolicy, node::Shared};

/// Per-message options for [`crate::Node::send_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// Overrides the node's retry policy for this message.
    pub retry: Option<RetryPolicy>,
    /// Fail with [`Error::Busy`] instead of waiting when the chosen instance already has the
    /// maximum of unacknowledged messages.
    pub fail_fast: bool,
}

impl SendOptions {
    /// Options that fail fast instead of waiting on a full in-flight window.
    pub fn fail_fast() -> Self {
        Self {
            fail_fast: true,
            ..Self::default()
        }
    }

    /// Options with a retry policy of their own.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self {
            retry: Some(retry),
            ..Self::default()
        }
    }
}

/// One message's way to its receiver: where it may go and how hard to try.
pub(crate) struct Delivery<'a> {
    pub(crate) route: Route,
    pub(crate) policy: RetryPolicy,
    pub(crate) fail_fast: bool,
    /// How long to hold the message while no instance is live; `None`: until the retry
    /// deadline.
    pub(crate) hold: Option<std::time::Duration>,
    /// For a published event: its encoding, shared with the other audiences' copies.
    pub(crate) event: Option<&'a PreparedEvent>,
    /// For a batch of events: its id and events, to encode again with a new attempt number
    /// on retries (`event` holds the first attempt's encoding).
    pub(crate) batch: Option<(MessageId, &'a [Envelope])>,
    /// For a message with a partition key: its place in the key's order, taken when the
    /// user's call was made.
    pub(crate) ticket: Option<Ticket>,
    /// When the user's call was made: deadlines and holds count from here.
    pub(crate) created: std::time::Instant,
}

impl Delivery<'_> {
    /// A delivery of `msg` on `route` under `policy`; a message with a partition key takes its
    /// ticket now ([`crate::ordering`]).
    pub(crate) fn new(shared: &Shared, route: Route, policy: RetryPolicy, msg: &Message) -> Self {
        let ticket = ticket_for(shared, &route, msg);
        Self {
            route,
            policy,
            fail_fast: false,
            hold: None,
            event: None,
            batch: None,
            ticket,
            created: std::time::Instant::now(),
        }
    }
}

/// The send loop of one message. Runs in the caller's task: no task is spawned per message.
///
/// A message with a partition key first waits for its ticket's turn ([`crate::ordering`])
/// and keeps it, retries included, until it is acked or dead-lettered.
///
/// `stop` ends the loop with [`Error::ShuttingDown`]: the node's `stopping` token for users'
/// sends, the `killed` token for replies, which a graceful shutdown still lets out.
pub(crate) async fn deliver(
    shared: &Arc<Shared>,
    delivery: Delivery<'_>,
    mut msg: Message,
    stop: &CancellationToken,
) -> Result<Receipt, Error> {
    let key = msg.env.partition_key.clone();
    // Deadlines and holds count from the user's call, not from the turn of a keyed message.
    let started = Instant::from_std(delivery.created);
    let mut state = RetryState::new(delivery.policy.clone(), delivery.created);
    let hold_until = delivery.hold.map_or_else(
        || Instant::from_std(state.deadline()),
        |hold| started + hold,
    );
    let route = &delivery.route;
    if let Some(ticket) = &delivery.ticket {
        let deadline = Instant::from_std(state.deadline());
        tokio::select! {
            () = ticket.turn() => {}
            () = tokio::time::sleep_until(deadline) => {
                let reason = "the message before it with the same key was still in progress at \
                              the retry deadline (is that send's future still being polled?)";
                return Err(dead_letter(shared, route, msg, 0, reason.into()));
            }
            _ = stop.cancelled() => return Err(Error::ShuttingDown),
        }
    }
    let mut tried: Vec<NodeId> = Vec::new();
    let mut changes = shared.registry.watch();
    let mut last_failure;
    loop {
        if stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        match shared.registry.choose(route, &tried, key.as_deref()) {
            None => {
                // An audience that unsubscribed on purpose (or an every-instance subscriber
                // that left) is gone for good: its copy ends here, neither held nor retried.
                if let Route::Audience { topic, audience } = route
                    && !shared.registry.has_audience(topic, audience)
                {
                    return Err(Error::AudienceGone(audience.to_string()));
                }
                // Wait for an instance to appear instead of polling; give up at the deadline.
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_ok() { continue; }
                        return Err(Error::ShuttingDown);
                    }
                    _ = tokio::time::sleep_until(hold_until) => {
                        last_failure = no_instance(route, delivery.hold, started);
                        return Err(dead_letter(shared, route, msg, state.attempts(), last_failure));
                    }
                    _ = stop.cancelled() => return Err(Error::ShuttingDown),
                }
            }
            Some(peer) => {
                let attempt = state.begin_attempt();
                if attempt > 1 {
                    Counters::bump(&shared.counters.retries);
                }
                msg.env.attempt = attempt;
                let attempt_result =
                    attempt_once(shared, &peer, &delivery, &mut msg, &state, stop).await?;
                match attempt_result {
                    Ok(()) => {
                        Counters::bump(&shared.counters.acked);
                        return Ok(Receipt {
                            id: msg.id(),
                            node: peer.node,
                            attempts: attempt,
                        });
                    }
                    Err(Failure::Permanent(reason)) => {
                        return Err(dead_letter(shared, route, msg, attempt, reason));
                    }
                    Err(Failure::Retryable(reason)) => last_failure = reason,
                }
                if !tried.contains(&peer.node) {
                    tried.push(peer.node);
                }
            }
        }
        match state.after_failure(Instant::now().into_std(), rand::random()) {
            // Another live instance has not failed on this message yet: go there at once.
            // Backoff is for retrying the same instances.
            Next::RetryAt(_) if shared.registry.has_untried(route, &tried) => {}
            Next::RetryAt(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(at)) => {}
                    _ = stop.cancelled() => return Err(Error::ShuttingDown),
                }
            }
            Next::GiveUp => {
                return Err(dead_letter(
                    shared,
                    route,
                    msg,
                    state.attempts(),
                    last_failure,
                ));
            }
        }
    }
}

/// The place of `msg` in its key's order on `route`, if it has a key ([`crate::ordering`]).
pub(crate) fn ticket_for(shared: &Shared, route: &Route, msg: &Message) -> Option<Ticket> {
    let key = msg.key()?;
    Some(shared.key_order.ticket(destination(route), key.to_owned()))
}

/// The name a key's turns are kept under: messages are ordered per key *and* destination.
fn destination(route: &Route) -> String {
    match route {
        Route::Service(target) => format!("service/{}", target.service),
        Route::Audience {
            audience: Audience::Group(group),
            ..
        } => format!("group/{group}"),
        Route::Audience {
            audience: Audience::Instance(node),
            ..
        } => format!("node/{node}"),
    }
}

enum Failure {
    Retryable(String),
    Permanent(String),
}

/// One delivery attempt to `peer`. The outer `Result` is for errors that end the send at once
/// (the message breaks a limit, fail-fast on a full window, shutdown).
async fn attempt_once(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    delivery: &Delivery<'_>,
    msg: &mut Message,
    state: &RetryState,
    stop: &CancellationToken,
) -> Result<Result<(), Failure>, Error> {
    let fail_fast = delivery.fail_fast;
    let ack_deadline = Instant::from_std(state.ack_deadline(Instant::now().into_std()));
    // One timer for the whole attempt, polled only when the step before it has to wait (each
    // `select!` is biased), so an attempt that finds room and an answer registers it once.
    let timer = tokio::time::sleep_until(ack_deadline);
    tokio::pin!(timer);
    let permit = if fail_fast {
        match Arc::clone(&peer.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                return Err(Error::Busy {
                    service: peer.service.clone(),
                });
            }
        }
    } else {
        tokio::select! {
            biased;
            p = Arc::clone(&peer.permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(Err(Failure::Retryable("connection closed".into()))),
            },
            () = &mut timer => {
                return Ok(Err(Failure::Retryable(format!("{} messages already in flight to {}", peer.in_flight(), peer.node))));
            }
        }
    };

    let (item, id) = encode_attempt(delivery, msg, &shared.config.limits)?;
    let answer = peer.expect_answer(id);
    let pushed = tokio::select! {
        biased;
        pushed = peer.push(item) => pushed,
        () = &mut timer => Err(format!("write queue to {} stayed full", peer.node)),
    };
    if let Err(reason) = pushed {
        peer.forget_answer(id);
        return Ok(Err(Failure::Retryable(reason)));
    }
    let outcome = tokio::select! {
        biased;
        outcome = answer => outcome.unwrap_or_else(|_| Outcome::Lost("connection closed".into())),
        _ = stop.cancelled() => {
            peer.forget_answer(id);
            return Err(Error::ShuttingDown);
        }
        () = &mut timer => {
            peer.forget_answer(id);
            Outcome::Lost(format!("no ack from {} within {:?}", peer.node, state.ack_timeout()))
        }
    };
    drop(permit);
    Ok(match outcome {
        Outcome::Acked => Ok(()),
        Outcome::Nacked {
            retryable: true,
            reason,
        } => Err(Failure::Retryable(format!(
            "{} refused: {reason}",
            peer.node
        ))),
        Outcome::Nacked {
            retryable: false,
            reason,
        } => Err(Failure::Permanent(format!(
            "{} refused: {reason}",
            peer.node
        ))),
        Outcome::Lost(reason) => Err(Failure::Retryable(reason)),
    })
}

/// What goes on the wire for this attempt, and the id its answer will carry. An event's first
/// attempt reuses the encoding shared by all its copies; later attempts carry a new attempt
/// number and are encoded again.
fn encode_attempt(
    delivery: &Delivery<'_>,
    msg: &mut Message,
    limits: &shoal_proto::Limits,
) -> Result<(Outgoing, MessageId), Error> {
    let (Some(prepared), Route::Audience { audience, .. }) = (delivery.event, &delivery.route)
    else {
        let bytes = encode_delivery(msg, limits)?;
        return Ok((Outgoing::Encoded(bytes), msg.id()));
    };
    let group = audience.wire_group();
    let frame = match delivery.batch {
        _ if msg.env.attempt <= 1 => prepared.frame_for(group, limits)?,
        None => PreparedEvent::new(&msg.env, true, limits)?.frame_for(group, limits)?,
        Some((id, envelopes)) => {
            let mut envelopes = envelopes.to_vec();
            envelopes
                .iter_mut()
                .for_each(|e| e.attempt = msg.env.attempt);
            PreparedEvent::new_batch(id, &envelopes, true, limits)?.frame_for(group, limits)?
        }
    };
    let key = frame.key();
    Ok((Outgoing::Event(frame), key))
}

/// Encodes a delivery once per attempt (the attempt number changes), without cloning the
/// envelope.
pub(crate) fn encode_delivery(
    msg: &mut Message,
    limits: &shoal_proto::Limits,
) -> Result<bytes::Bytes, Error> {
    let env = std::mem::replace(&mut msg.env, placeholder());
    let frame = Frame::Deliver(Box::new(env));
    // The codec reserves what the frame needs.
    let mut buf = BytesMut::new();
    let result = codec::encode(&frame, limits, &mut buf);
    if let Frame::Deliver(env) = frame {
        msg.env = *env;
    }
    result?;
    Ok(buf.freeze())
}

/// An envelope that allocates nothing, to stand in while the real one is being encoded.
fn placeholder() -> Envelope {
    let id = MessageId::from_u128(0);
    Envelope::new(
        id,
        shoal_proto::MessageKind::Command,
        String::new(),
        0,
        bytes::Bytes::new(),
    )
}

fn no_instance(route: &Route, hold: Option<std::time::Duration>, since: Instant) -> String {
    match hold {
        Some(_) => format!(
            "no live instance of {} (held {:?})",
            route.describe(),
            since.elapsed()
        ),
        None => format!("no instance of {} is connected", route.describe()),
    }
}

pub(crate) fn dead_letter(
    shared: &Shared,
    route: &Route,
    message: Message,
    attempts: u32,
    last_failure: String,
) -> Error {
    let (service, group) = match route {
        Route::Service(target) => (target.service.clone(), None),
        Route::Audience { audience, .. } => (String::new(), Some(audience.to_string())),
    };
    let letter = DeadLetter {
        service,
        group,
        message,
        attempts,
        last_failure,
    };
    tracing::warn!("{letter}");
    Counters::bump(&shared.counters.dead_lettered);
    shared.dead_letters.record(letter.clone());
    Error::DeadLettered(Box::new(letter))
}
