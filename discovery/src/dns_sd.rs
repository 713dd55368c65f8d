//! DNS-SD over unicast DNS: instances listed by a DNS server an operator already runs (a zone
//! of their own, Kubernetes headless services, Consul DNS), polled through hickory-resolver.
//!
//! Two ways to list instances:
//!
//! - **Browse** ([`DnsSdConfig::browse`]): RFC 6763 service discovery in a domain. A PTR query
//!   for `_shoal._udp.<domain>` lists instance names; each instance's SRV record says where it
//!   listens (the target's A/AAAA records give the addresses) and its TXT record says what it
//!   is, with the keys mDNS uses: `svc` (service name, required), and optionally `id` (node id,
//!   32 hex digits), `pv` (protocol version), the multicast group (`mc`) and the advertised
//!   subscriptions (`sn`, `s0`, …; see [`crate::advert`]).
//! - **SRV** ([`DnsSdConfig::srv`]): one SRV name lists the instances of one service, as a
//!   Kubernetes headless service (`_shoal._udp.billing.shop.svc.cluster.local`) or Consul
//!   (`billing.service.consul`) publishes it; there is no TXT record.
//!
//! An instance whose record gives its node id is connected to on first use, like an mDNS one;
//! one without (every SRV-only instance) is a hint to dial: it is connected to at once and
//! kept, like a static peer, since its node is known only after the handshake.
//!
//! The records are polled every [`DnsSdConfig::poll_every`] (5 s by default): instances appear
//! and disappear as the records change. A lookup that fails (no answer, or an error such as
//! SERVFAIL, after the resolver's retries) changes nothing: a failed poll keeps every instance,
//! and an instance whose own lookup failed stays as the last poll found it. As with mDNS, a record is only a hint: the mutual-TLS
//! handshake proves who is there, and a vanished record never closes a live connection.
//!
//! This file holds the configuration, the source and what a TXT record says; the polling, and
//! the events a change of the records makes, are in `dns_sd/poll.rs`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use shoal_proto::{NodeId, PROTOCOL_VERSION};
use tokio::sync::oneshot;

use crate::advert;
use crate::event::{
    Discovery, DiscoveryError, DiscoveryReport, EventSender, LocalNode, PeerHint, Source,
};
use crate::mdns::{TXT_NODE_ID, TXT_PROTOCOL_VERSION, TXT_SERVICE};

mod poll;

/// The service label browsed for, before the domain.
pub const SERVICE_LABELS: &str = "_shoal._udp";

/// At most this many instances are kept from one poll (the rest are ignored and noted).
pub const MAX_INSTANCES: usize = 1024;

/// What to ask the DNS server for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Query {
    /// PTR `_shoal._udp.<domain>`, then each instance's SRV and TXT.
    Browse { domain: String },
    /// One SRV name listing the instances of `service`.
    Srv { name: String, service: String },
}

/// How a [`DnsSdDiscovery`] finds instances. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct DnsSdConfig {
    query: Query,
    servers: Vec<SocketAddr>,
    poll_every: Duration,
}

impl DnsSdConfig {
    /// Browses `_shoal._udp.<domain>` (RFC 6763 over unicast DNS).
    pub fn browse(domain: impl Into<String>) -> Self {
        Self::with(Query::Browse {
            domain: domain.into(),
        })
    }

    /// Lists the instances of `service` from the SRV records of `name` (a Kubernetes headless
    /// service, a Consul service name, ...).
    pub fn srv(name: impl Into<String>, service: impl Into<String>) -> Self {
        Self::with(Query::Srv {
            name: name.into(),
            service: service.into(),
        })
    }

    fn with(query: Query) -> Self {
        Self {
            query,
            servers: Vec::new(),
            poll_every: Duration::from_secs(5),
        }
    }

    /// Asks this DNS server (repeatable; UDP, then TCP for long answers). Without one, the
    /// servers of the system's configuration (`/etc/resolv.conf`) are asked.
    #[must_use]
    pub fn server(mut self, addr: SocketAddr) -> Self {
        self.servers.push(addr);
        self
    }

    /// How often the records are read again (default 5 s, at least 100 ms).
    #[must_use]
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every.max(Duration::from_millis(100));
        self
    }

    /// The discovery source.
    pub fn build(self) -> DnsSdDiscovery {
        DnsSdDiscovery {
            config: self,
            stop: None,
        }
    }
}

/// A discovery source reading DNS-SD records from unicast DNS. See the [module docs](self).
#[derive(Debug)]
pub struct DnsSdDiscovery {
    config: DnsSdConfig,
    stop: Option<oneshot::Sender<()>>,
}

impl Discovery for DnsSdDiscovery {
    /// Starts polling on the current Tokio runtime (a node starts its sources on its own).
    fn start(&mut self, local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| DiscoveryError::Start(format!("dns-sd needs a Tokio runtime: {e}")))?;
        let resolver = resolver(&self.config)?;
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        let poller = Poller {
            resolver,
            config: self.config.clone(),
            me: local.node_id,
            events,
            known: BTreeMap::new(),
        };
        runtime.spawn(poller.run(stopped));
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    fn report(&self) -> DiscoveryReport {
        DiscoveryReport::default()
    }
}

/// A resolver that asks the configured servers (or the system's), with its cache off: every
/// poll reads the records afresh.
fn resolver(config: &DnsSdConfig) -> Result<TokioResolver, DiscoveryError> {
    let start = |e: &dyn std::fmt::Display| DiscoveryError::Start(format!("dns-sd: {e}"));
    let mut builder = if config.servers.is_empty() {
        Resolver::builder_tokio().map_err(|e| start(&e))?
    } else {
        let servers = config
            .servers
            .iter()
            .map(|addr| {
                let connection = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    builder.build().map_err(|e| start(&e))
}

/// One instance as the records describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Found {
    node_id: Option<NodeId>,
    service: String,
    addrs: Vec<SocketAddr>,
    subscriptions: Option<Vec<shoal_proto::Subscription>>,
    multicast: Option<SocketAddrV4>,
}

impl Found {
    fn hint(&self) -> PeerHint {
        PeerHint {
            node_id: self.node_id,
            service: Some(self.service.clone()),
            addrs: self.addrs.clone(),
            source: Source::DnsSd,
            subscriptions: self.subscriptions.clone(),
            multicast: self.multicast,
        }
    }
}

struct Poller {
    resolver: TokioResolver,
    config: DnsSdConfig,
    me: NodeId,
    events: EventSender,
    /// What the last successful poll found, by instance name.
    known: BTreeMap<String, Found>,
}

/// `name` with its final dot.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// One TXT string as a key and value (`None`: a key without `=`); empty strings are skipped.
pub(crate) fn txt_entry(entry: &[u8]) -> Option<(String, Option<Vec<u8>>)> {
    let (key, value) = match entry.iter().position(|b| *b == b'=') {
        Some(eq) => (&entry[..eq], Some(entry[eq + 1..].to_vec())),
        None => (entry, None),
    };
    let key = std::str::from_utf8(key).ok().filter(|k| !k.is_empty())?;
    Some((key.to_owned(), value))
}

/// What a browsed instance's TXT record says, if usable: `svc` must be a valid service name;
/// `id`, when present, a node id; `pv`, when present, this build's protocol version.
fn from_txt(txt: &[(String, Option<Vec<u8>>)]) -> Option<Found> {
    let value = |key: &str| {
        txt.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_deref().and_then(|v| std::str::from_utf8(v).ok()))
    };
    let service = value(TXT_SERVICE)??;
    if !crate::mdns::valid_service_name(service) {
        return None;
    }
    let node_id = match value(TXT_NODE_ID) {
        None => None,
        Some(id) => Some(crate::mdns::parse_node_id(id?)?),
    };
    if let Some(pv) = value(TXT_PROTOCOL_VERSION)
        && pv?.parse::<u16>().ok()? != PROTOCOL_VERSION
    {
        return None;
    }
    Some(Found {
        node_id,
        service: service.to_owned(),
        addrs: Vec::new(),
        // Advertised subscriptions count only for an instance whose node is known.
        subscriptions: node_id.and_then(|_| advert::parse(txt)),
        // For information (`Node::discovered`), like the service: a bad value is no group.
        multicast: advert::parse_multicast(txt),
    })
}

#[cfg(test)]
mod tests;
