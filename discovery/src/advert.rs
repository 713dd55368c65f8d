//! What a node advertises in its TXT record beyond who it is: its multicast group, and its
//! subscriptions, so publishers learn every subscriber group without a connection to every
//! node.
//!
//! # Format
//!
//! `mc=<IPv4 group>:<port>` when the node has multicast on (see [`multicast_entry`]), then
//! `sn=<count>` (decimal), then `s0` … `s<count-1>`, each `<pattern>` for a subscription of
//! every instance, or `<pattern> <group>` (one space; patterns never contain whitespace, group
//! names may) for a grouped one:
//!
//! ```text
//! mc=239.255.83.72:7451  sn=2  s0=orders.* billing  s1=audit.>
//! ```
//!
//! The group is for operators (who is on which group, and which node would fall back to
//! unicast with this one): a node learns over the QUIC connection, not from the announcement,
//! whether a peer shares its group. An announcement without `mc`, or with one that is not an
//! IPv4 multicast address and a port above 0, says nothing about its group; it is still
//! valid.
//!
//! An announcement without `sn` says nothing about its subscriptions (an older node, or more
//! than fit: see [`MAX_ADVERTISED_BYTES`]); one whose entries do not parse is treated the same.
//! Either way the node is then dialled at once and its subscriptions learned over the
//! connection. Nothing here is trusted: a subscription only decides where a publisher sends an
//! event copy, and the subscriber still has to accept it over mutual TLS.

use std::net::SocketAddrV4;

use shoal_proto::Subscription;

/// TXT key holding the node's multicast group and port (`239.255.83.72:7451`), when it has
/// multicast on.
pub const TXT_MULTICAST: &str = "mc";

/// TXT key holding the number of advertised subscriptions.
pub const TXT_SUBSCRIPTION_COUNT: &str = "sn";

/// Most bytes (keys, values and their length bytes) the advertised group and subscriptions
/// may take together in one TXT record. mDNS answers must fit one packet (mdns-sd sends at
/// most 1,452 bytes; the SRV, A and PTR records and the other TXT entries take about 350): a
/// node whose subscriptions do not fit in what its group entry leaves (at most 25 bytes)
/// advertises none and is connected to instead.
pub const MAX_ADVERTISED_BYTES: usize = 900;

/// The longest `mc` value: `255.255.255.255:65535`. Longer values are not parsed.
const MAX_MULTICAST_VALUE_LEN: usize = 21;

/// Most subscriptions read from one announcement.
pub const MAX_ADVERTISED: usize = 64;

/// The bytes one TXT entry takes in a record: its length byte, the key, `=` and the value.
pub fn entry_bytes(key: &str, value: &str) -> usize {
    1 + key.len() + 1 + value.len()
}

/// The TXT entry advertising the multicast group `group` (`mc=239.255.83.72:7451`), or `None`
/// when `group` is not an IPv4 multicast address with a port above 0 (receivers would ignore
/// it). It goes before the subscriptions, and its [`entry_bytes`] count against
/// [`MAX_ADVERTISED_BYTES`]: pass what it leaves to [`txt_entries`].
pub fn multicast_entry(group: SocketAddrV4) -> Option<(String, String)> {
    (group.ip().is_multicast() && group.port() != 0)
        .then(|| (TXT_MULTICAST.to_owned(), group.to_string()))
}

/// The multicast group `txt` advertises (its first `mc` entry), or `None` when it advertises
/// none, or one that is not `<IPv4 multicast address>:<port above 0>` (an IPv6 or unicast
/// address, garbage, an overlong value): such a value is ignored, never a reason to refuse
/// the announcement.
pub fn parse_multicast(txt: &[(String, Option<Vec<u8>>)]) -> Option<SocketAddrV4> {
    // RFC 6763 §6.4: only the first entry of a key counts; keys are case-insensitive.
    let (_, value) = txt
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TXT_MULTICAST))?;
    let value = value
        .as_deref()
        .filter(|v| v.len() <= MAX_MULTICAST_VALUE_LEN)?;
    let group: SocketAddrV4 = std::str::from_utf8(value).ok()?.parse().ok()?;
    (group.ip().is_multicast() && group.port() != 0).then_some(group)
}

/// The TXT entries advertising `subs` (deduplicated, in order), or `None` when they do not
/// fit in `budget` bytes (counted as [`entry_bytes`]: [`MAX_ADVERTISED_BYTES`] less what the
/// entries before them, the group's, take; a larger budget counts as [`MAX_ADVERTISED_BYTES`])
/// or an entry does not fit a single TXT string (255 bytes).
pub fn txt_entries(subs: &[Subscription], budget: usize) -> Option<Vec<(String, String)>> {
    let mut distinct: Vec<&Subscription> = Vec::new();
    for sub in subs {
        if !distinct.contains(&sub) {
            distinct.push(sub);
        }
    }
    if distinct.len() > MAX_ADVERTISED {
        return None;
    }
    let mut entries = vec![(
        TXT_SUBSCRIPTION_COUNT.to_owned(),
        distinct.len().to_string(),
    )];
    for (i, sub) in distinct.iter().enumerate() {
        if sub.pattern.is_empty() || sub.pattern.chars().any(char::is_whitespace) {
            return None;
        }
        let value = match &sub.group {
            Some(group) => format!("{} {group}", sub.pattern),
            None => sub.pattern.clone(),
        };
        entries.push((format!("s{i}"), value));
    }
    let bytes = |(k, v): &(String, String)| entry_bytes(k, v);
    // A TXT string holds at most 255 bytes after its length byte.
    if entries.iter().any(|e| bytes(e) > 256)
        || entries.iter().map(bytes).sum::<usize>() > budget.min(MAX_ADVERTISED_BYTES)
    {
        return None;
    }
    Some(entries)
}

/// The subscriptions `txt` advertises: `None` when it does not say, or says something that
/// does not parse (treated alike: the node connects to learn them).
pub fn parse(txt: &[(String, Option<Vec<u8>>)]) -> Option<Vec<Subscription>> {
    // RFC 6763 §6.4: only the first entry of a key counts; keys are case-insensitive.
    let value = |key: &str| {
        txt.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    };
    let count: usize = value(TXT_SUBSCRIPTION_COUNT)?
        .parse()
        .ok()
        .filter(|n| *n <= MAX_ADVERTISED)?;
    let mut subs = Vec::with_capacity(count);
    for i in 0..count {
        let entry = value(&format!("s{i}"))?;
        let (pattern, group) = match entry.split_once(' ') {
            Some((pattern, group)) => (pattern, Some(group.into())),
            None => (entry, None),
        };
        if pattern.is_empty() || entry.chars().any(char::is_control) {
            return None;
        }
        subs.push(Subscription {
            pattern: pattern.to_owned(),
            group,
        });
    }
    Some(subs)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn sub(pattern: &str, group: Option<&str>) -> Subscription {
        Subscription {
            pattern: pattern.into(),
            group: group.map(Into::into),
        }
    }

    fn as_txt(entries: Vec<(String, String)>) -> Vec<(String, Option<Vec<u8>>)> {
        entries
            .into_iter()
            .map(|(k, v)| (k, Some(v.into_bytes())))
            .collect()
    }

    #[test]
    fn subscriptions_round_trip_with_and_without_groups() {
        let subs = vec![
            sub("orders.*", Some("billing")),
            sub("audit.>", None),
            sub("x", Some("a group with spaces")),
            sub("y", Some("")),
            sub("orders.*", Some("billing")),
        ];
        let entries = txt_entries(&subs, MAX_ADVERTISED_BYTES).expect("fits");
        assert_eq!(
            entries[0],
            ("sn".to_owned(), "4".to_owned()),
            "deduplicated"
        );
        assert_eq!(entries[1].1, "orders.* billing");
        assert_eq!(entries[2].1, "audit.>");
        assert_eq!(parse(&as_txt(entries)), Some(subs[..4].to_vec()));
        assert_eq!(
            parse(&as_txt(
                txt_entries(&[], MAX_ADVERTISED_BYTES).expect("fits")
            )),
            Some(vec![])
        );
    }

    #[test]
    fn what_does_not_fit_is_not_advertised() {
        let many: Vec<Subscription> = (0..40)
            .map(|i| sub(&format!("topic.number.{i}.>"), Some("a-fairly-long-group")))
            .collect();
        assert_eq!(
            txt_entries(&many, MAX_ADVERTISED_BYTES),
            None,
            "over the byte budget"
        );
        let long = sub(&"a".repeat(300), None);
        assert_eq!(
            txt_entries(&[long], MAX_ADVERTISED_BYTES),
            None,
            "over one TXT string"
        );
        assert_eq!(
            txt_entries(&[sub("a b", None)], MAX_ADVERTISED_BYTES),
            None,
            "whitespace in a pattern"
        );
    }

    #[test]
    fn missing_or_broken_entries_mean_unknown() {
        assert_eq!(parse(&[]), None, "an announcement that does not say");
        let txt = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect::<Vec<_>>()
        };
        assert_eq!(parse(&txt(&[("sn", "2"), ("s0", "a")])), None, "s1 missing");
        assert_eq!(parse(&txt(&[("sn", "x")])), None);
        assert_eq!(parse(&txt(&[("sn", "1000")])), None, "too many");
        assert_eq!(
            parse(&txt(&[("sn", "1"), ("s0", "")])),
            None,
            "empty pattern"
        );
        assert_eq!(
            parse(&txt(&[("SN", "1"), ("S0", "a g"), ("sn", "0")])),
            Some(vec![sub("a", Some("g"))]),
            "keys are case-insensitive and the first one counts"
        );
        let no_value = vec![("sn".to_owned(), None)];
        assert_eq!(parse(&no_value), None);
    }

    #[test]
    fn the_subscriptions_fit_what_the_group_leaves() {
        let subs = [sub("orders.*", Some("billing"))];
        let entries = txt_entries(&subs, MAX_ADVERTISED_BYTES).expect("fits");
        let used: usize = entries.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        assert_eq!(
            used,
            5 + 20,
            "sn=1 and s0=orders.* billing, with their length bytes"
        );
        assert!(txt_entries(&subs, used).is_some(), "exactly the budget");
        assert_eq!(txt_entries(&subs, used - 1), None, "one byte short");
        assert!(txt_entries(&subs, usize::MAX).is_some());

        // The largest group entry, and subscriptions that fill the rest of the budget.
        let widest = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 255), 65_535);
        let (k, v) = multicast_entry(widest).expect("a multicast group");
        assert_eq!(entry_bytes(&k, &v), 25, "the most a group entry takes");
        let left = MAX_ADVERTISED_BYTES - entry_bytes(&k, &v);
        let filling: Vec<Subscription> = (0..26)
            .map(|i| sub(&format!("t{i:02}.{}", "x".repeat(25)), None))
            .collect();
        let all = txt_entries(&filling, MAX_ADVERTISED_BYTES).expect("fits alone");
        let bytes: usize = all.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        assert!(
            bytes > left && bytes <= MAX_ADVERTISED_BYTES,
            "{bytes} bytes"
        );
        assert_eq!(txt_entries(&filling, left), None, "not beside the group");
    }

    fn txt(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn the_multicast_group_round_trips() {
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 83, 72), 7451);
        let entry = multicast_entry(group).expect("a multicast group");
        assert_eq!(entry, ("mc".to_owned(), "239.255.83.72:7451".to_owned()));
        assert_eq!(parse_multicast(&as_txt(vec![entry])), Some(group));
        let widest = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 255), 65_535);
        let entry = multicast_entry(widest).expect("a multicast group");
        assert_eq!(entry.1.len(), MAX_MULTICAST_VALUE_LEN);
        assert_eq!(parse_multicast(&as_txt(vec![entry])), Some(widest));

        // What a receiver would ignore is not announced.
        let unicast = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 7451);
        assert_eq!(multicast_entry(unicast), None);
        assert_eq!(multicast_entry(SocketAddrV4::new(*group.ip(), 0)), None);
    }

    #[test]
    fn a_missing_or_malformed_group_is_no_group() {
        assert_eq!(
            parse_multicast(&[]),
            None,
            "an announcement that does not say"
        );
        assert_eq!(parse_multicast(&txt(&[("sn", "0")])), None);
        for bad in [
            "",
            "garbage",
            "239.255.83.72",
            "239.255.83.72:",
            "239.255.83.72:port",
            "239.255.83.72:65536",
            "239.255.83.72:0",
            "10.0.0.5:7451",
            "255.255.255.255:7451",
            "0.0.0.0:7451",
            "[ff02::1]:7451",
            "ff02::1",
            "239.255.83.72:7451 ",
            " 239.255.83.72:7451",
            "239.255.83.072:7451",
            "239.255.083.72:0007451",
            "239.255.83.72:7451239.255.83.72:7451",
        ] {
            assert_eq!(parse_multicast(&txt(&[("mc", bad)])), None, "{bad:?}");
        }
        let overlong = format!("239.255.83.72:{}7451", "0".repeat(300));
        assert_eq!(
            parse_multicast(&txt(&[("mc", &overlong)])),
            None,
            "overlong"
        );
        let not_utf8 = vec![("mc".to_owned(), Some(vec![0xff, 0xfe, b':', b'1']))];
        assert_eq!(parse_multicast(&not_utf8), None, "not UTF-8");
        let no_value = vec![("mc".to_owned(), None)];
        assert_eq!(parse_multicast(&no_value), None, "a key without `=`");
        assert_eq!(
            parse_multicast(&txt(&[("MC", "239.1.2.3:7000"), ("mc", "239.9.9.9:7000")])),
            Some(SocketAddrV4::new(Ipv4Addr::new(239, 1, 2, 3), 7000)),
            "keys are case-insensitive and the first one counts"
        );
        assert_eq!(
            parse_multicast(&txt(&[("mc", "bad"), ("mc", "239.9.9.9:7000")])),
            None,
            "a bad first entry is not made up for by a later one"
        );
    }
}
