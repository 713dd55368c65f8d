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

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use shoal_proto::{NodeId, PROTOCOL_VERSION};
use tokio::sync::oneshot;

use crate::advert;
use crate::event::{
    Discovery, DiscoveryError, DiscoveryEvent, DiscoveryReport, EventSender, LocalNode, PeerHint,
    Source,
};
use crate::mdns::{MAX_ADDRS_PER_INSTANCE, TXT_NODE_ID, TXT_PROTOCOL_VERSION, TXT_SERVICE};

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

impl Poller {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(self.config.poll_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = &mut stop => return,
            }
            match self.poll().await {
                Ok(polled) => {
                    let found = carry_over(&self.known, polled);
                    if !self.apply(found) {
                        return; // the node is gone
                    }
                }
                // A failed poll changes nothing: a DNS server that does not answer for a while
                // does not make instances vanish.
                Err(e) => tracing::debug!("dns-sd: poll failed: {e}"),
            }
        }
    }

    /// Tells what changed since the last poll; `false` when nobody listens any more.
    fn apply(&mut self, found: BTreeMap<String, Found>) -> bool {
        let events = changes(&self.known, &found);
        self.known = found;
        events.into_iter().all(|e| self.events.send(e).is_ok())
    }

    /// Reads the whole record set once: each instance listed, as its records describe it, or
    /// the error that kept one of its lookups from answering. Instances that are this node, or
    /// whose records are unusable or give no address, are left out.
    async fn poll(&self) -> Result<BTreeMap<String, Polled>, String> {
        let mut found = BTreeMap::new();
        match &self.config.query {
            Query::Browse { domain } => {
                let browse = format!("{SERVICE_LABELS}.{}", fqdn(domain));
                for instance in self.ptr(&browse).await?.into_iter().take(MAX_INSTANCES) {
                    match self.instance(&instance).await {
                        Ok(Some(f)) => {
                            found.insert(instance, Ok(f));
                        }
                        Ok(None) => {}
                        Err(Skipped::Unusable) => tracing::debug!(
                            %instance,
                            "dns-sd: instance skipped: TXT record without a usable `svc` (or \
                             with a bad `id` or `pv`)"
                        ),
                        Err(Skipped::Lookup(e)) => {
                            found.insert(instance, Err(e));
                        }
                    }
                }
            }
            Query::Srv { name, service } => {
                for (target, port) in self.srv(&fqdn(name)).await? {
                    let key = format!("{target}:{port}");
                    let addrs = match self.addrs(&target, port).await {
                        Ok(addrs) if addrs.is_empty() => continue,
                        Ok(addrs) => addrs,
                        Err(e) => {
                            found.insert(key, Err(e));
                            continue;
                        }
                    };
                    found.insert(
                        key,
                        Ok(Found {
                            node_id: None,
                            service: service.clone(),
                            addrs,
                            subscriptions: None,
                            multicast: None,
                        }),
                    );
                }
            }
        }
        Ok(found)
    }

    /// One browsed instance: `None` when it is this node, or it has no address.
    async fn instance(&self, name: &str) -> Result<Option<Found>, Skipped> {
        let txt = self.txt(name).await.map_err(Skipped::Lookup)?;
        let Some(f) = from_txt(&txt) else {
            return Err(Skipped::Unusable);
        };
        if f.node_id == Some(self.me) {
            return Ok(None);
        }
        let mut addrs = Vec::new();
        for (target, port) in self.srv(name).await.map_err(Skipped::Lookup)? {
            addrs.extend(self.addrs(&target, port).await.map_err(Skipped::Lookup)?);
        }
        addrs.sort();
        addrs.dedup();
        addrs.truncate(MAX_ADDRS_PER_INSTANCE);
        Ok((!addrs.is_empty()).then_some(Found { addrs, ..f }))
    }

    async fn ptr(&self, name: &str) -> Result<Vec<String>, String> {
        let lookup = self.lookup(name, RecordType::PTR).await?;
        Ok(lookup
            .into_iter()
            .filter_map(|r| match r {
                RData::PTR(ptr) => Some(ptr.0.to_ascii()),
                _ => None,
            })
            .collect())
    }

    async fn srv(&self, name: &str) -> Result<Vec<(String, u16)>, String> {
        let lookup = self.lookup(name, RecordType::SRV).await?;
        Ok(lookup
            .into_iter()
            .filter_map(|r| match r {
                // Port 0 or target "." : the service is not offered there.
                RData::SRV(srv) if srv.port != 0 && !srv.target.is_root() => {
                    Some((srv.target.to_ascii(), srv.port))
                }
                _ => None,
            })
            .collect())
    }

    async fn txt(&self, name: &str) -> Result<Vec<(String, Option<Vec<u8>>)>, String> {
        let lookup = self.lookup(name, RecordType::TXT).await?;
        Ok(lookup
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(txt),
                _ => None,
            })
            .flat_map(|txt| txt.txt_data.into_vec())
            .filter_map(|entry| txt_entry(&entry))
            .collect())
    }

    /// The addresses of `target` (or `target` itself, written as an address), with `port`,
    /// sorted; none when the name has no address.
    async fn addrs(&self, target: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = target.trim_end_matches('.').parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        match self.resolver.lookup_ip(target).await {
            Ok(ips) => {
                let mut addrs: Vec<SocketAddr> = ips
                    .iter()
                    .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                // A server rotating its answers is no change.
                addrs.sort();
                addrs.dedup();
                Ok(addrs)
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                tracing::debug!(%target, "dns-sd: no address: {e}");
                Ok(Vec::new())
            }
            Err(e) => Err(format!("addresses of {target}: {e}")),
        }
    }

    /// The records of `record_type` at `name`; none when the name does not exist.
    async fn lookup(&self, name: &str, record_type: RecordType) -> Result<Vec<RData>, String> {
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => Ok(lookup.answers().iter().map(|r| r.data.clone()).collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(format!("{record_type} {name}: {e}")),
        }
    }
}

/// Why a browsed instance was left out of a poll.
#[derive(Debug)]
enum Skipped {
    /// One of its lookups failed (the server did not answer, or answered with an error).
    Lookup(String),
    /// Its TXT record is unusable.
    Unusable,
}

/// One instance as a poll read it: its records, or why a lookup of them failed.
type Polled = Result<Found, String>;

/// What a poll found, with an instance whose lookup failed taken as it was before: a DNS
/// server that fails one query does not make an instance vanish (and come back next poll).
/// An instance never seen before whose lookup failed is left for the next poll.
fn carry_over(
    known: &BTreeMap<String, Found>,
    polled: BTreeMap<String, Polled>,
) -> BTreeMap<String, Found> {
    polled
        .into_iter()
        .filter_map(|(name, polled)| match polled {
            Ok(found) => Some((name, found)),
            Err(e) => {
                tracing::debug!(instance = %name, "dns-sd: lookup failed, kept as it was: {e}");
                known.get(&name).cloned().map(|before| (name, before))
            }
        })
        .collect()
}

/// The events that take `known` to `found`. An instance whose node id changed, or whose node is
/// unknown and whose addresses changed, goes `Down` and comes back `Up` (see
/// [`DiscoveryEvent::Updated`]): for a node-less instance the addresses are all that name it.
fn changes(
    known: &BTreeMap<String, Found>,
    found: &BTreeMap<String, Found>,
) -> Vec<DiscoveryEvent> {
    let mut events = Vec::new();
    for (name, gone) in known {
        if !found.contains_key(name) {
            events.push(DiscoveryEvent::Down(gone.hint()));
        }
    }
    for (name, now) in found {
        match known.get(name) {
            None => events.push(DiscoveryEvent::Up(now.hint())),
            Some(before)
                if before.node_id != now.node_id
                    || (now.node_id.is_none() && before.addrs != now.addrs) =>
            {
                events.push(DiscoveryEvent::Down(before.hint()));
                events.push(DiscoveryEvent::Up(now.hint()));
            }
            Some(before) if before != now => {
                events.push(DiscoveryEvent::Updated(now.hint()));
            }
            Some(_) => {}
        }
    }
    events
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
