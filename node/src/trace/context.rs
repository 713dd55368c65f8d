//! [`TraceContext`]: a W3C Trace Context (`traceparent` and `tracestate`), parsed strictly.
//!
//! Plain data and string handling: no IO, no tracing subscriber. The rules are those of the
//! W3C Trace Context recommendation (<https://www.w3.org/TR/trace-context/>), section 3.2
//! (`traceparent`) and 3.3 (`tracestate`).

use std::fmt;

/// The header that carries the trace and parent span ids.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The header that carries vendor-specific trace state alongside `traceparent`.
pub(crate) const TRACESTATE: &str = "tracestate";

/// Length of a version-00 `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
const TRACEPARENT_LEN: usize = 55;
/// The longest `tracestate` kept. W3C asks vendors to propagate at least 512 characters and
/// lets them drop a longer one; a message's headers should not grow with hostile input.
const MAX_TRACESTATE_LEN: usize = 512;
/// W3C: a `tracestate` has at most 32 list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The `sampled` trace flag, the only flag version 00 defines.
const SAMPLED: u8 = 0x01;

/// Where a message sits in a distributed trace: a W3C Trace Context.
///
/// Shoal carries it in a message's `traceparent` (and `tracestate`) header, in the format of
/// the W3C Trace Context recommendation, the same one HTTP services and OpenTelemetry use, so
/// a trace can go from an HTTP request through several Shoal services and back out. Inside a
/// handler, [`TraceContext::current`] is the context of the handler's `shoal.handle` span,
/// and every message the handler sends carries it on. Outside a handler, run code in a
/// context with [`TraceContext::scope`] or [`TraceContext::in_scope`] (for example one parsed
/// from an incoming HTTP request), or set it on one message with
/// [`crate::Message::with_trace_context`].
///
/// ```
/// use shoal::TraceContext;
///
/// let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
///     .expect("a valid traceparent");
/// assert_eq!(ctx.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert!(ctx.is_sampled());
/// // A malformed header (here: an all-zero trace id) is refused, never half-read.
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<Box<str>>,
}

impl TraceContext {
    /// A context from its parts; `None` if an id is zero (W3C: all-zero ids are invalid).
    pub fn from_parts(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags: if sampled { SAMPLED } else { 0 },
            state: None,
        })
    }

    /// The start of a new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(rand::random),
            span_id: nonzero(rand::random),
            flags: SAMPLED,
            state: None,
        }
    }

    /// A child in the same trace: a new random span id, the same trace id, flags and state.
    /// Its parent is `self`'s span.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(rand::random),
            ..self.clone()
        }
    }

    /// Reads a `traceparent` header and its optional `tracestate`, strictly: `None` for
    /// anything W3C says to ignore (wrong length or separators, hex that is not lowercase,
    /// all-zero ids, version `ff`, a version-00 header with trailing data). A header of a
    /// later version is read by its version-00 prefix, as W3C asks. A `tracestate` that is
    /// not printable ASCII, longer than 512 bytes or of more than 32 members is dropped, and
    /// the trace goes on without it.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let (trace_id, span_id, flags) = parse_traceparent(traceparent).ok()?;
        Some(Self {
            trace_id,
            span_id,
            flags,
            state: tracestate.filter(|s| valid_tracestate(s)).map(Into::into),
        })
    }

    /// The 128-bit trace id, shared by every span of the trace.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The 64-bit id of the span this context names (the parent of what it is sent with).
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Whether the trace is sampled (the caller may be recording it).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate` carried along, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Sets the `tracestate` (vendor-specific data, e.g. from an OpenTelemetry context); an
    /// invalid one (see [`TraceContext::parse`]) is dropped.
    pub fn with_tracestate(mut self, tracestate: &str) -> Self {
        self.state = valid_tracestate(tracestate).then(|| tracestate.into());
        self
    }

    /// The `traceparent` header value: `00-<trace id>-<span id>-<flags>`. Shoal writes
    /// version 00 and only the flags version 00 defines.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            self.flags & SAMPLED
        )
    }

    /// The trace id as 32 lowercase hex digits, as in `traceparent` (and in OpenTelemetry's
    /// exporters), for logs and span fields.
    pub(crate) fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub(crate) fn span_id_hex(&self) -> SpanIdHex {
        SpanIdHex(self.span_id)
    }
}

/// A trace id, displayed as 32 lowercase hex digits (formatted only if a subscriber reads it).
pub(crate) struct TraceIdHex(u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id, displayed as 16 lowercase hex digits.
pub(crate) struct SpanIdHex(pub(crate) u64);

impl fmt::Display for SpanIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.state)
            .finish()
    }
}

impl fmt::Display for TraceContext {
    /// Formats as the `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// Draws ids until one is not zero (a zero id is invalid; drawing one is a 2^-64 event).
fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let id = draw();
        if id != T::default() {
            return id;
        }
    }
}

/// Why a `traceparent` was refused (for the debug log; the header is ignored either way).
pub(crate) fn parse_traceparent(s: &str) -> Result<(u128, u64, u8), &'static str> {
    let b = s.as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return Err("too short");
    }
    let version = hex_field::<u8>(&b[0..2]).ok_or("version is not two lowercase hex digits")?;
    if version == 0xff {
        return Err("version ff is invalid");
    }
    if version == 0 && b.len() != TRACEPARENT_LEN {
        return Err("version 00 with trailing data");
    }
    // A later version: read its version-00 prefix; what follows must start with a dash.
    if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
        return Err("trailing data without a separator");
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Err("misplaced separators");
    }
    let trace_id = hex_field::<u128>(&b[3..35]).ok_or("trace id is not 32 lowercase hex digits")?;
    let span_id = hex_field::<u64>(&b[36..52]).ok_or("parent id is not 16 lowercase hex digits")?;
    let flags = hex_field::<u8>(&b[53..55]).ok_or("flags are not two lowercase hex digits")?;
    if trace_id == 0 {
        return Err("all-zero trace id");
    }
    if span_id == 0 {
        return Err("all-zero parent id");
    }
    Ok((trace_id, span_id, flags))
}

/// Lowercase hex digits into an unsigned integer of exactly their width.
fn hex_field<T: From<u8> + std::ops::Shl<u32, Output = T> + std::ops::BitOr<Output = T>>(
    digits: &[u8],
) -> Option<T> {
    digits.iter().try_fold(T::from(0), |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | T::from(v))
    })
}

/// Whether `s` is a `tracestate` worth carrying: printable ASCII, at most 512 bytes and 32
/// members, each a `key=value`. (The exact key grammar is the vendors' business; Shoal only
/// keeps hostile input out.)
fn valid_tracestate(s: &str) -> bool {
    s.len() <= MAX_TRACESTATE_LEN
        && s.bytes().all(|c| (0x20..=0x7e).contains(&c))
        && s.split(',').count() <= MAX_TRACESTATE_MEMBERS
        && s.split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .all(|m| m.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_a_valid_traceparent() {
        let ctx = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.trace_id(), 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(ctx.span_id(), 0x00f0_67aa_0ba9_02b7);
        assert!(ctx.is_sampled());
        assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
        assert_eq!(ctx.traceparent(), VALID);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceContext::parse(&unsampled, None).unwrap().is_sampled());
    }

    #[test]
    fn refuses_what_w3c_says_to_ignore() {
        let bad = [
            "",
            "00",
            &VALID[..54],                                               // one short
            &format!("{VALID}0"),                                       // version 00, trailing
            &format!("{VALID}-extra"),                                  // version 00, trailing
            &VALID.replace("4bf9", "4BF9"),                             // uppercase hex
            &VALID.replace("4bf9", "4bg9"),                             // not hex
            &VALID.replacen('-', "_", 1),                               // separator
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",  // flags not hex
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later, no dash
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",   // multibyte
        ];
        for header in bad {
            assert!(
                TraceContext::parse(header, None).is_none(),
                "accepted {header:?}"
            );
        }
    }

    #[test]
    fn reads_a_later_version_by_its_prefix() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next";
        let ctx = TraceContext::parse(later, None).unwrap();
        assert_eq!(ctx.span_id(), 0x00f0_67aa_0ba9_02b7);
        // Written back as version 00 with only the flags version 00 knows.
        assert_eq!(ctx.traceparent(), VALID);
        let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceContext::parse(exact, None).is_some());
    }

    #[test]
    fn drops_a_hostile_tracestate_but_keeps_the_trace() {
        let huge = format!("k={}", "v".repeat(10_000));
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for state in [huge.as_str(), &many, "k=v\n", "novalue", "=v", "k=\u{e9}"] {
            let ctx = TraceContext::parse(VALID, Some(state)).expect("the traceparent is valid");
            assert_eq!(ctx.tracestate(), None, "kept {state:?}");
        }
        let ok = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE";
        assert_eq!(
            TraceContext::parse(VALID, Some(ok)).unwrap().tracestate(),
            Some(ok)
        );
    }

    #[test]
    fn roots_and_children_have_fresh_nonzero_ids() {
        let root = TraceContext::new_root();
        assert!(root.trace_id() != 0 && root.span_id() != 0 && root.is_sampled());
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_eq!(TraceContext::parse(&child.traceparent(), None), Some(child));
        assert!(TraceContext::from_parts(0, 1, true).is_none());
        assert!(TraceContext::from_parts(1, 0, true).is_none());
    }
}
