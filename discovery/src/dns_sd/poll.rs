//! Polling: reading the records once per tick, keeping an instance whose lookup failed as it
//! was, and telling what changed since the last poll.
//!
//! A poll reads the whole record set (a browse: PTR, then each instance's TXT, SRV and
//! addresses; an SRV name: its targets and their addresses). What it found is compared with
//! what the last poll found ([`changes`]), after an instance whose lookup failed has been
//! taken as it was ([`carry_over`]), so a DNS server that fails now and then makes nothing
//! vanish.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::oneshot;

use super::{Found, MAX_INSTANCES, Poller, Query, SERVICE_LABELS, fqdn, from_txt, txt_entry};
use crate::event::DiscoveryEvent;
use crate::mdns::MAX_ADDRS_PER_INSTANCE;

impl Poller {
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
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

#[cfg(test)]
mod tests;
