//! What a Shoal announcement looks like on the wire, and how a received one is checked.
//!
//! Everything here is pure: no sockets, no daemon, no clock.

use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use shoal_proto::{NodeId, PROTOCOL_VERSION, Subscription};

use crate::advert;
use crate::event::LocalNode;

/// The DNS-SD service type every Shoal node announces and browses.
pub const SERVICE_TYPE: &str = "_shoal._udp.local.";

/// TXT key holding the node's service name.
pub const TXT_SERVICE: &str = "svc";
/// TXT key holding the node id (32 lowercase hex digits, equal to the instance name).
pub const TXT_NODE_ID: &str = "id";
/// TXT key holding the wire protocol version ([`PROTOCOL_VERSION`]) in decimal.
pub const TXT_PROTOCOL_VERSION: &str = "pv";

/// The longest service name (in bytes) announced or accepted.
pub const MAX_SERVICE_NAME_LEN: usize = 128;

/// At most this many addresses are kept per announcement (extra ones are dropped).
pub const MAX_ADDRS_PER_INSTANCE: usize = 16;

/// Longest instance name kept verbatim in diagnostics; longer ones are cut.
const MAX_NAME_IN_DIAGNOSTICS: usize = 96;

/// Why a received announcement was not turned into a [`DiscoveryEvent`](crate::DiscoveryEvent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The full name is not `<instance>._shoal._udp.local.`.
    WrongServiceType,
    /// The instance name is not a node id (32 hex digits).
    BadInstanceName,
    /// A required TXT key is missing or has no value.
    MissingTxt(&'static str),
    /// The `id` TXT value is not a node id (32 hex digits).
    BadNodeId,
    /// The `id` TXT value differs from the instance name.
    NodeIdMismatch,
    /// The `svc` TXT value is empty, too long, not UTF-8 or contains control characters.
    BadService,
    /// The `pv` TXT value is not a decimal `u16`.
    BadProtocolVersion,
    /// The `pv` TXT value is a protocol version this build does not speak.
    UnsupportedProtocolVersion(u16),
    /// Another announcement uses this node's own id.
    ClaimsOurNodeId,
    /// The SRV port is 0.
    ZeroPort,
    /// No usable address (none, or only unspecified/multicast/broadcast ones).
    NoUsableAddress,
    /// Too many instances are tracked already; new ones are refused until some leave.
    TooManyInstances,
    /// Addresses not on the link the announcement was heard on: not in a subnet of the
    /// interface it arrived on (IPv6 link-local addresses always are). They are dropped, and
    /// the record lists them; an announcement with no address left is refused as a whole.
    OffLink,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongServiceType => write!(f, "not a {SERVICE_TYPE} instance"),
            Self::BadInstanceName => write!(f, "instance name is not a 32-hex-digit node id"),
            Self::MissingTxt(key) => write!(f, "TXT key `{key}` missing or without value"),
            Self::BadNodeId => write!(f, "TXT `{TXT_NODE_ID}` is not a 32-hex-digit node id"),
            Self::NodeIdMismatch => write!(f, "TXT `{TXT_NODE_ID}` differs from the instance name"),
            Self::BadService => write!(f, "TXT `{TXT_SERVICE}` is not a valid service name"),
            Self::BadProtocolVersion => write!(f, "TXT `{TXT_PROTOCOL_VERSION}` is not a number"),
            Self::UnsupportedProtocolVersion(v) => {
                write!(
                    f,
                    "protocol version {v} (this build speaks {PROTOCOL_VERSION})"
                )
            }
            Self::ClaimsOurNodeId => write!(f, "claims this node's own id"),
            Self::ZeroPort => write!(f, "port 0"),
            Self::NoUsableAddress => write!(f, "no usable address"),
            Self::TooManyInstances => write!(f, "too many instances tracked"),
            Self::OffLink => write!(f, "addresses not on the link it was heard on"),
        }
    }
}

/// One address of a received announcement, as resolved by the mDNS layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReceivedAddr {
    pub(crate) ip: IpAddr,
    /// Interface index for IPv6 link-local addresses (0 if unknown or not needed).
    pub(crate) scope_id: u32,
}

/// A resolved announcement, detached from mdns-sd's types so it can be checked in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Announcement {
    /// `<instance>._shoal._udp.local.` (as received).
    pub(crate) fullname: String,
    /// SRV port.
    pub(crate) port: u16,
    pub(crate) addrs: Vec<ReceivedAddr>,
    /// TXT entries in wire order; `None` for a key without `=`.
    pub(crate) txt: Vec<(String, Option<Vec<u8>>)>,
    /// Interfaces the records arrived on, if known.
    pub(crate) via: Vec<String>,
}

/// Who we are, to recognise our own announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Me {
    pub(crate) node_id: NodeId,
    pub(crate) service: String,
    pub(crate) port: u16,
}

/// A validated peer announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidPeer {
    pub(crate) node_id: NodeId,
    pub(crate) service: String,
    /// Sorted, deduplicated, at most [`MAX_ADDRS_PER_INSTANCE`].
    pub(crate) addrs: Vec<SocketAddr>,
    /// The advertised subscriptions, if the announcement says (see [`crate::advert`]).
    pub(crate) subscriptions: Option<Vec<Subscription>>,
    /// The advertised multicast group, if the announcement says and it parses.
    pub(crate) multicast: Option<SocketAddrV4>,
}

/// The outcome of checking an [`Announcement`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Peer(ValidPeer),
    /// Our own announcement, looped back: ignore silently.
    Ours,
    Rejected(RejectReason),
}

/// Parses exactly 32 hex digits (either case) into a node id. Stricter than
/// `NodeId::from_str`, which also takes `+`, fewer digits and so on.
pub(crate) fn parse_node_id(text: &str) -> Option<NodeId> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(text, 16).ok().map(NodeId::from_u128)
}

/// Whether `service` may be announced: 1..=[`MAX_SERVICE_NAME_LEN`] bytes, no control
/// characters.
pub(crate) fn valid_service_name(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= MAX_SERVICE_NAME_LEN
        && !service.chars().any(char::is_control)
}

/// The instance label of `fullname` if it is `<instance>.` + [`SERVICE_TYPE`] (case-insensitive).
fn instance_of(fullname: &str) -> Option<&str> {
    let split = fullname.len().checked_sub(SERVICE_TYPE.len() + 1)?;
    if !fullname.is_char_boundary(split) {
        return None;
    }
    let (instance, rest) = fullname.split_at(split);
    let suffix = rest.strip_prefix('.')?;
    suffix
        .eq_ignore_ascii_case(SERVICE_TYPE)
        .then_some(instance)
}

/// The TXT entries this node announces for `local` (in this order): service, node id,
/// protocol version, its multicast group when it has one ([`advert::multicast_entry`]), then
/// its subscriptions when they fit in what the group leaves of the budget
/// ([`advert::txt_entries`]).
pub(crate) fn txt_entries(local: &LocalNode) -> Vec<(String, String)> {
    let mut entries = vec![
        (TXT_SERVICE.to_owned(), local.service.clone()),
        (TXT_NODE_ID.to_owned(), local.node_id.to_string()),
        (
            TXT_PROTOCOL_VERSION.to_owned(),
            PROTOCOL_VERSION.to_string(),
        ),
    ];
    let mut budget = advert::MAX_ADVERTISED_BYTES;
    if let Some((key, value)) = local.multicast.and_then(advert::multicast_entry) {
        budget = budget.saturating_sub(advert::entry_bytes(&key, &value));
        entries.push((key, value));
    }
    match advert::txt_entries(&local.subscriptions, budget) {
        Some(subs) => entries.extend(subs),
        None => tracing::info!(
            count = local.subscriptions.len(),
            "mdns: subscriptions too large to advertise; publishers will connect to learn them"
        ),
    }
    entries
}

/// The value of the first TXT entry named `key` (RFC 6763 §6.4: later duplicates are ignored).
fn txt_value<'a>(
    txt: &'a [(String, Option<Vec<u8>>)],
    key: &'static str,
) -> Result<&'a [u8], RejectReason> {
    match txt.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        Some((_, Some(value))) => Ok(value),
        _ => Err(RejectReason::MissingTxt(key)),
    }
}

/// Turns received addresses into dialable ones: drops unspecified, multicast and broadcast
/// addresses, keeps the scope of IPv6 link-local ones, sorts, dedups, caps the count.
pub(crate) fn usable_addrs(addrs: &[ReceivedAddr], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter_map(|a| match a.ip {
            IpAddr::V4(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => None,
            IpAddr::V6(ip) if ip.is_unspecified() || ip.is_multicast() => None,
            IpAddr::V4(ip) => Some(SocketAddr::V4(SocketAddrV4::new(ip, port))),
            IpAddr::V6(ip) => {
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                let scope = if link_local { a.scope_id } else { 0 };
                Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_ADDRS_PER_INSTANCE);
    out
}

/// Checks a received announcement. Never panics, whatever the input.
pub(crate) fn check(a: &Announcement, me: &Me) -> Verdict {
    match check_inner(a, me) {
        Ok(verdict) => verdict,
        Err(reason) => Verdict::Rejected(reason),
    }
}

fn check_inner(a: &Announcement, me: &Me) -> Result<Verdict, RejectReason> {
    let instance = instance_of(&a.fullname).ok_or(RejectReason::WrongServiceType)?;
    let instance_id = parse_node_id(instance).ok_or(RejectReason::BadInstanceName)?;

    let id_text = std::str::from_utf8(txt_value(&a.txt, TXT_NODE_ID)?)
        .map_err(|_| RejectReason::BadNodeId)?;
    let node_id = parse_node_id(id_text).ok_or(RejectReason::BadNodeId)?;
    if node_id != instance_id {
        return Err(RejectReason::NodeIdMismatch);
    }

    let service = std::str::from_utf8(txt_value(&a.txt, TXT_SERVICE)?)
        .map_err(|_| RejectReason::BadService)?;
    if !valid_service_name(service) {
        return Err(RejectReason::BadService);
    }

    let pv_text = txt_value(&a.txt, TXT_PROTOCOL_VERSION)?;
    let pv = std::str::from_utf8(pv_text)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u16>().ok())
        .ok_or(RejectReason::BadProtocolVersion)?;

    if node_id == me.node_id {
        // Our own announcement loops back to us; anything else with our id is an impostor
        // (or a stale announcement from a previous run that reused the id, which cannot
        // happen with random ids).
        return if service == me.service && a.port == me.port && pv == PROTOCOL_VERSION {
            Ok(Verdict::Ours)
        } else {
            Err(RejectReason::ClaimsOurNodeId)
        };
    }
    if pv != PROTOCOL_VERSION {
        return Err(RejectReason::UnsupportedProtocolVersion(pv));
    }
    if a.port == 0 {
        return Err(RejectReason::ZeroPort);
    }
    let addrs = usable_addrs(&a.addrs, a.port);
    if addrs.is_empty() {
        return Err(RejectReason::NoUsableAddress);
    }
    Ok(Verdict::Peer(ValidPeer {
        node_id,
        service: service.to_owned(),
        addrs,
        subscriptions: advert::parse(&a.txt),
        multicast: advert::parse_multicast(&a.txt),
    }))
}

/// `name` cut to a length fit for diagnostics, control characters escaped.
pub(crate) fn printable_name(name: &str) -> String {
    let mut out = String::new();
    for (count, c) in name.chars().enumerate() {
        if count == MAX_NAME_IN_DIAGNOSTICS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
