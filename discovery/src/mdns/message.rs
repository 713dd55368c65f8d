//! What a DNS message says about instances of [`SERVICE_TYPE`]: the start-up query's answers
//! and the group's announcements are read the same way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::RData;

use super::record::{Announcement, ReceivedAddr, SERVICE_TYPE};
use crate::dns_sd::txt_entry;

/// One TXT string as key and value (`None`: a key without `=`), as [`Announcement`] has them.
type TxtEntry = (String, Option<Vec<u8>>);

/// The instances an answer describes whole (PTR, SRV and TXT; addresses from A/AAAA records of
/// the SRV target), as [`Announcement`]s for [`record::check`](super::record::check): an answer
/// to the start-up query, an announcement, an introduction.
pub(super) fn announcements(message: &Message) -> Vec<Announcement> {
    let records = || message.answers.iter().chain(&message.additionals);
    let service_type = SERVICE_TYPE.to_ascii_lowercase();
    let mut instances: Vec<String> = Vec::new();
    let mut srv: HashMap<String, (u16, String)> = HashMap::new();
    let mut txt: HashMap<String, Vec<TxtEntry>> = HashMap::new();
    let mut addrs: HashMap<String, Vec<ReceivedAddr>> = HashMap::new();
    for record in records() {
        let owner = record.name.to_ascii().to_ascii_lowercase();
        match &record.data {
            RData::PTR(ptr) if owner == service_type => {
                let instance = ptr.0.to_ascii();
                if !instances.contains(&instance) {
                    instances.push(instance);
                }
            }
            RData::SRV(s) => {
                srv.insert(owner, (s.port, s.target.to_ascii().to_ascii_lowercase()));
            }
            RData::TXT(t) => {
                txt.insert(
                    owner,
                    t.txt_data.iter().filter_map(|e| txt_entry(e)).collect(),
                );
            }
            RData::A(a) => addrs.entry(owner).or_default().push(ReceivedAddr {
                ip: IpAddr::V4(a.0),
                scope_id: 0,
            }),
            RData::AAAA(a) => addrs.entry(owner).or_default().push(ReceivedAddr {
                ip: IpAddr::V6(a.0),
                scope_id: 0,
            }),
            _ => {}
        }
    }
    instances
        .into_iter()
        .filter_map(|fullname| {
            let key = fullname.to_ascii_lowercase();
            let (port, target) = srv.get(&key)?;
            Some(Announcement {
                port: *port,
                addrs: addrs.get(target).cloned().unwrap_or_default(),
                txt: txt.get(&key)?.clone(),
                via: Vec::new(),
                fullname,
            })
        })
        .collect()
}

/// What a response says besides whole announcements: which instances say goodbye (a PTR or
/// SRV record with TTL 0) and the SRV TTL of the others, keyed by lowercase full name.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Said {
    pub(super) goodbyes: Vec<String>,
    pub(super) ttls: HashMap<String, Duration>,
}

pub(super) fn said(message: &Message) -> Said {
    let service_type = SERVICE_TYPE.to_ascii_lowercase();
    let mut heard = Said::default();
    for record in message.answers.iter().chain(&message.additionals) {
        let owner = record.name.to_ascii().to_ascii_lowercase();
        let instance = match &record.data {
            RData::PTR(ptr) if owner == service_type => ptr.0.to_ascii().to_ascii_lowercase(),
            RData::SRV(_) if owner.ends_with(&service_type) => owner,
            _ => continue,
        };
        if record.ttl == 0 {
            if !heard.goodbyes.contains(&instance) {
                heard.goodbyes.push(instance);
            }
        } else if matches!(record.data, RData::SRV(_)) {
            heard
                .ttls
                .insert(instance, Duration::from_secs(u64::from(record.ttl)));
        }
    }
    heard
}
