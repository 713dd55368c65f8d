//! Subscriptions advertised in TXT records, so publishers learn every subscriber group without
//! a connection to every node.
//!
//! # Format
//!
//! `sn=<count>` (decimal), then `s0` … `s<count-1>`, each `<pattern>` for a subscription of
//! every instance, or `<pattern> <group>` (one space; patterns never contain whitespace, group
//! names may) for a grouped one:
//!
//! ```text
//! sn=2  s0=orders.* billing  s1=audit.>
//! ```
//!
//! An announcement without `sn` says nothing about its subscriptions (an older node, or more
//! than fit: see [`MAX_ADVERTISED_BYTES`]); one whose entries do not parse is treated the same.
//! Either way the node is then dialled at once and its subscriptions learned over the
//! connection. Nothing here is trusted: a subscription only decides where a publisher sends an
//! event copy, and the subscriber still has to accept it over mutual TLS.

use shoal_proto::Subscription;

/// TXT key holding the number of advertised subscriptions.
pub const TXT_SUBSCRIPTION_COUNT: &str = "sn";

/// Most bytes (keys, values and their length bytes) the advertised subscriptions may take in
/// one TXT record. mDNS answers must fit one packet (mdns-sd sends at most 1,452 bytes; the
/// SRV, A and PTR records and the other TXT entries take about 350): a node whose
/// subscriptions do not fit advertises none and is connected to instead.
pub const MAX_ADVERTISED_BYTES: usize = 900;

/// Most subscriptions read from one announcement.
pub const MAX_ADVERTISED: usize = 64;

/// The TXT entries advertising `subs` (deduplicated, in order), or `None` when they do not
/// fit in [`MAX_ADVERTISED_BYTES`] or a single TXT string (255 bytes).
pub fn txt_entries(subs: &[Subscription]) -> Option<Vec<(String, String)>> {
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
    let string_len = |(k, v): &(String, String)| k.len() + 1 + v.len();
    if entries.iter().any(|e| string_len(e) > 255)
        || entries.iter().map(|e| string_len(e) + 1).sum::<usize>() > MAX_ADVERTISED_BYTES
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
        let entries = txt_entries(&subs).expect("fits");
        assert_eq!(
            entries[0],
            ("sn".to_owned(), "4".to_owned()),
            "deduplicated"
        );
        assert_eq!(entries[1].1, "orders.* billing");
        assert_eq!(entries[2].1, "audit.>");
        assert_eq!(parse(&as_txt(entries)), Some(subs[..4].to_vec()));
        assert_eq!(
            parse(&as_txt(txt_entries(&[]).expect("fits"))),
            Some(vec![])
        );
    }

    #[test]
    fn what_does_not_fit_is_not_advertised() {
        let many: Vec<Subscription> = (0..40)
            .map(|i| sub(&format!("topic.number.{i}.>"), Some("a-fairly-long-group")))
            .collect();
        assert_eq!(txt_entries(&many), None, "over the byte budget");
        let long = sub(&"a".repeat(300), None);
        assert_eq!(txt_entries(&[long]), None, "over one TXT string");
        assert_eq!(
            txt_entries(&[sub("a b", None)]),
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
}
