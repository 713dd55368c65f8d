//! Size limits enforced when encoding and decoding frames, and the one function that checks
//! them ([`validate_frame`]).

use crate::envelope::{Envelope, ReturnAddress};
use crate::error::LimitViolation;
use crate::frame::{Frame, Head, Item, Subscription, To};

/// Limits on what a frame may contain. Both ends enforce them: the sender gets an
/// [`crate::EncodeError`] before anything is written, the receiver a [`crate::DecodeError`]
/// that names the limit.
///
/// Errors name the exceeded limit by its field name (`"max_frame_len"`, `"max_headers"`,
/// `"max_name_len"`, `"max_header_value_len"`, `"max_reason_len"` or `"max_listen_addrs"`).
///
/// Whatever `max_frame_len` says, the codec never accepts a frame larger than
/// [`crate::codec::MAX_FRAME_LEN_CAP`] (64 MiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame, length prefix excluded. Default 4 MiB. Values above
    /// [`crate::codec::MAX_FRAME_LEN_CAP`] act as that cap.
    pub max_frame_len: usize,
    /// Most headers on one envelope. Default 64.
    pub max_headers: usize,
    /// Longest message name, service name, topic, header key, partition key, content type or
    /// channel, in bytes. Default 256.
    ///
    /// Applies to [`Envelope::name`], [`Envelope::content_type`], [`Envelope::partition_key`],
    /// every header key, [`crate::ReturnAddress::service`] and
    /// [`crate::ReturnAddress::channel`], [`crate::Hello::service`], and
    /// [`Subscription::pattern`] and [`Subscription::group`].
    pub max_name_len: usize,
    /// Longest header value, in bytes. Default 4096.
    pub max_header_value_len: usize,
    /// Longest reason in a [`crate::Nack`] or [`crate::Goodbye`], in bytes. Default 1024. A
    /// reason is a line for people (the sender keeps it in its dead letters), not a payload:
    /// a node cuts longer ones before sending ([`Limits::bounded_reason`]).
    pub max_reason_len: usize,
    /// Most addresses in a [`crate::Hello`]'s `listen_addrs`. Default 16 (a node sends the
    /// one it listens on).
    pub max_listen_addrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: 4 * 1024 * 1024,
            max_headers: 64,
            max_name_len: 256,
            max_header_value_len: 4096,
            max_reason_len: 1024,
            max_listen_addrs: 16,
        }
    }
}

impl Limits {
    /// `reason`, cut to at most [`Limits::max_reason_len`] bytes (at a character boundary,
    /// ending in `…`) if it is longer.
    ///
    /// ```
    /// let limits = shoal_proto::Limits::default();
    /// let cut = limits.bounded_reason("x".repeat(5000));
    /// assert!(cut.len() <= limits.max_reason_len);
    /// assert!(cut.ends_with('…'));
    /// assert_eq!(limits.bounded_reason("short".into()), "short");
    /// ```
    pub fn bounded_reason(&self, mut reason: String) -> String {
        const MARK: &str = "…";
        if reason.len() > self.max_reason_len {
            let mut end = self.max_reason_len.saturating_sub(MARK.len());
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            if self.max_reason_len >= MARK.len() {
                reason.push_str(MARK);
            }
        }
        reason
    }
}

/// Fails when `actual > max`, naming `limit`.
#[inline]
fn check(limit: &'static str, actual: usize, max: usize) -> Result<(), LimitViolation> {
    if actual > max {
        Err(LimitViolation { limit, actual, max })
    } else {
        Ok(())
    }
}

/// Fails when the string is longer than `max_name_len` bytes.
#[inline]
pub(crate) fn check_name(s: &str, limits: &Limits) -> Result<(), LimitViolation> {
    check("max_name_len", s.len(), limits.max_name_len)
}

/// Checks an envelope against every per-field limit (all but `max_frame_len`, which depends on
/// the encoding and is enforced by [`crate::codec`]).
///
/// Checks run in a fixed order and the first violation is returned: header count, then name,
/// content type, partition key, return address (service, channel), then each header's key
/// and value in order.
///
/// ```
/// use shoal_proto::{Limits, validate_envelope};
/// # use shoal_proto::{Envelope, MessageId, MessageKind};
/// # let mut envelope = Envelope {
/// #     id: MessageId::from_u128(1), kind: MessageKind::Command, name: Default::default(),
/// #     version: 1, content_type: Default::default(), headers: Vec::new(), correlation_id: None,
/// #     reply_to: None, partition_key: None, attempt: 1, timestamp_ms: 0,
/// #     payload: Default::default(),
/// # };
/// envelope.name = "x".repeat(300).into();
/// let violation = validate_envelope(&envelope, &Limits::default()).unwrap_err();
/// assert_eq!(violation.limit, "max_name_len");
/// assert_eq!((violation.actual, violation.max), (300, 256));
/// ```
pub fn validate_envelope(envelope: &Envelope, limits: &Limits) -> Result<(), LimitViolation> {
    check("max_headers", envelope.headers.len(), limits.max_headers)?;
    check_name(&envelope.name, limits)?;
    check_name(&envelope.content_type, limits)?;
    check_key_and_address(
        envelope.partition_key.as_deref(),
        envelope.reply_to.as_ref(),
        limits,
    )?;
    check_headers(&envelope.headers, limits)
}

/// Checks what a run of messages shares ([`Head`]): name, content type, partition key, return
/// address and the group it is for.
pub fn validate_head(head: &Head, limits: &Limits) -> Result<(), LimitViolation> {
    check_name(&head.name, limits)?;
    check_name(&head.content_type, limits)?;
    check_key_and_address(
        head.partition_key.as_deref(),
        head.reply_to.as_ref(),
        limits,
    )?;
    match &head.to {
        To::Group(group) => check_name(group, limits),
        To::Handler | To::Instance => Ok(()),
    }
}

/// Checks what one message of a run carries on its own ([`Item`]): its headers, and the
/// partition key, content type and return address it may carry.
#[inline]
pub fn validate_item(item: &Item, limits: &Limits) -> Result<(), LimitViolation> {
    // An item of nothing but an id, numbers and a payload (most are) has nothing a limit
    // bounds.
    if item.headers.is_empty() && item.partition_key.is_none() && item.differs.is_none() {
        return Ok(());
    }
    let differs = item
        .differs
        .as_deref()
        .map(|d| (d.content_type.as_str(), d.reply_to.as_ref()));
    validate_item_parts(
        &item.headers,
        item.partition_key.as_deref(),
        differs,
        limits,
    )
}

/// [`validate_item`] on an item's fields where they are (the codec encodes an item straight
/// from its message's envelope): its headers, its own partition key, and the content type and
/// return address it carries when they differ from its run's head.
pub(crate) fn validate_item_parts(
    headers: &[(String, String)],
    key: Option<&str>,
    differs: Option<(&str, Option<&ReturnAddress>)>,
    limits: &Limits,
) -> Result<(), LimitViolation> {
    check("max_headers", headers.len(), limits.max_headers)?;
    check_key_and_address(key, None, limits)?;
    if let Some((content_type, reply_to)) = differs {
        check_name(content_type, limits)?;
        check_key_and_address(None, reply_to, limits)?;
    }
    check_headers(headers, limits)
}

fn check_key_and_address(
    key: Option<&str>,
    reply_to: Option<&ReturnAddress>,
    limits: &Limits,
) -> Result<(), LimitViolation> {
    if let Some(key) = key {
        check_name(key, limits)?;
    }
    if let Some(reply_to) = reply_to {
        check_name(&reply_to.service, limits)?;
        check_name(&reply_to.channel, limits)?;
    }
    Ok(())
}

fn check_headers(headers: &[(String, String)], limits: &Limits) -> Result<(), LimitViolation> {
    for (key, value) in headers {
        check_name(key, limits)?;
        check(
            "max_header_value_len",
            value.len(),
            limits.max_header_value_len,
        )?;
    }
    Ok(())
}

/// Checks a frame against every per-field limit: [`validate_head`] and [`validate_item`] for
/// [`Frame::Messages`], [`validate_envelope`] for [`Frame::Reply`], the service name and the
/// number of addresses (`max_listen_addrs`) of a [`Frame::Hello`], the reason of a
/// [`Frame::Nack`] or [`Frame::Goodbye`] (`max_reason_len`), and the pattern and group of a
/// [`Frame::Subscribe`] or [`Frame::Unsubscribe`]. Other frames have no per-field limits.
///
/// `max_frame_len` is not checked here: [`crate::codec::encode`] and
/// [`crate::codec::decode`] enforce it on the encoded bytes, after calling this function.
pub fn validate_frame(frame: &Frame, limits: &Limits) -> Result<(), LimitViolation> {
    match frame {
        Frame::Messages(run) => {
            validate_head(&run.head, limits)?;
            run.items
                .iter()
                .try_for_each(|item| validate_item(item, limits))
        }
        Frame::Reply(envelope) => validate_envelope(envelope, limits),
        Frame::Hello(hello) => {
            check_name(&hello.service, limits)?;
            check(
                "max_listen_addrs",
                hello.listen_addrs.len(),
                limits.max_listen_addrs,
            )
        }
        Frame::Nack(nack) => check("max_reason_len", nack.reason.len(), limits.max_reason_len),
        Frame::Goodbye(goodbye) => check(
            "max_reason_len",
            goodbye.reason.len(),
            limits.max_reason_len,
        ),
        Frame::Subscribe(sub) | Frame::Unsubscribe(sub) => validate_subscription(sub, limits),
        // A repair is checked as a datagram by the receiver (header, seal, body limits); the
        // range lists of acks, statuses and NAKs are bounded by the frame's length, and the
        // node looks at no more numbers than it has sent (an ack's ranges are cut to the
        // connection's window).
        Frame::Ack(_)
        | Frame::Ping(_)
        | Frame::Pong(_)
        | Frame::ChannelHello(_)
        | Frame::ChannelKey(_)
        | Frame::ChannelStatus(_)
        | Frame::ChannelNak(_)
        | Frame::ChannelRepair(_)
        | Frame::ChannelDemote(_) => Ok(()),
    }
}

/// Checks a subscription's pattern and group against `max_name_len`.
fn validate_subscription(sub: &Subscription, limits: &Limits) -> Result<(), LimitViolation> {
    check_name(&sub.pattern, limits)?;
    if let Some(group) = &sub.group {
        check_name(group, limits)?;
    }
    Ok(())
}
