//! What an [`MdnsDiscovery`](super::MdnsDiscovery) reports about itself.

use super::config::InterfaceSelector;
#[cfg(doc)]
use super::config::MdnsConfig;
#[cfg(doc)]
use super::state::MAX_REJECTED_RECORDS;
use super::state::{RejectedRecord, SeenInstance};

/// A snapshot of what [`MdnsDiscovery`](super::MdnsDiscovery) has seen, for logs and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MdnsDiagnostics {
    /// Whether the source is started and not stopped.
    pub running: bool,
    /// The configured interface selection.
    pub interfaces: Vec<InterfaceSelector>,
    /// This node's own DNS-SD full name, once started.
    pub local_instance: Option<String>,
    /// Whether this node's own announcement has come back to it (multicast works on at least
    /// one selected interface).
    pub own_announcement_seen: bool,
    /// The peers currently up, sorted by node id.
    pub peers: Vec<SeenInstance>,
    /// Recently rejected announcements, oldest first, at most [`MAX_REJECTED_RECORDS`].
    pub rejected: Vec<RejectedRecord>,
    /// How many announcements were rejected since start (repeats included), counting too
    /// those that kept some addresses but had others dropped as off the link
    /// ([`RejectReason::OffLink`](super::RejectReason::OffLink)).
    pub rejected_total: u64,
    /// Recent notes from the mDNS daemon (errors, address changes, announcements), oldest first.
    pub notes: Vec<String>,
    /// How many instance descriptions the start-up query's answers carried (see
    /// [`MdnsConfig::startup_query`]); repeats included.
    pub startup_query_answers: u64,
    /// How many instances that answered the start-up query were sent this node's records by
    /// unicast at once, so they need not wait for its multicast announcements.
    pub introductions_sent: u64,
    /// How many start-up queries (the first and its repeats) this node sent, per interface.
    pub startup_queries_sent: u64,
    /// How many times this node announced its records again, unasked (see
    /// [`MdnsConfig::reannounce`]).
    pub reannouncements: u64,
    /// Who keeps the table of instances on the link, once started.
    pub browser: Option<Browser>,
}

/// Who keeps the table of the instances on the link (see [`MdnsConfig::startup_query`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Browser {
    /// Shoal's listener, from the mDNS group's datagrams, with Shoal's start-up queries asking;
    /// mdns-sd only responds. Where the start-up query is on and a selected interface has an
    /// IPv4 address.
    Shoal,
    /// mdns-sd's browse, which also asks. Elsewhere.
    MdnsSd,
}
