//! Tests of what DNS-SD records say about an instance; what a poll reports is tested in
//! `poll/tests.rs`.

use super::*;

fn txt(entries: &[&str]) -> Vec<(String, Option<Vec<u8>>)> {
    entries
        .iter()
        .filter_map(|e| txt_entry(e.as_bytes()))
        .collect()
}

#[test]
fn txt_records_say_what_an_instance_is() {
    let id = "0123456789abcdef0123456789abcdef";
    let pv = format!("pv={PROTOCOL_VERSION}");
    let full = from_txt(&txt(&[
        "svc=billing",
        &format!("id={id}"),
        &pv,
        "mc=239.255.83.72:7451",
        "sn=1",
        "s0=order.* billing",
    ]))
    .expect("usable");
    assert_eq!(full.service, "billing");
    assert_eq!(
        full.node_id,
        Some(NodeId::from_u128(0x0123456789abcdef0123456789abcdef))
    );
    assert_eq!(full.subscriptions.map(|s| s.len()), Some(1));
    assert_eq!(
        full.multicast,
        Some("239.255.83.72:7451".parse().expect("group"))
    );

    let bare = from_txt(&txt(&["svc=billing"])).expect("svc alone is enough");
    assert_eq!(
        (bare.node_id, bare.subscriptions, bare.multicast),
        (None, None, None)
    );

    assert!(from_txt(&txt(&["id=0123"])).is_none(), "no svc");
    assert!(
        from_txt(&txt(&["svc=billing", "id=xyz"])).is_none(),
        "bad id"
    );
    assert!(
        from_txt(&txt(&["svc=billing", "pv=999"])).is_none(),
        "other protocol"
    );
    assert!(from_txt(&txt(&["svc"])).is_none(), "svc without a value");
    assert_eq!(txt_entry(b""), None);
    assert_eq!(txt_entry(b"=x"), None);
}

#[test]
fn names_are_made_fully_qualified() {
    assert_eq!(fqdn("mesh.example"), "mesh.example.");
    assert_eq!(fqdn("mesh.example."), "mesh.example.");
}

#[test]
fn a_group_is_read_whether_or_not_the_node_is_known_and_a_bad_one_ignored() {
    let group = Some("239.1.2.3:7000".parse().expect("group"));
    let without_id = from_txt(&txt(&["svc=audit", "mc=239.1.2.3:7000"])).expect("usable");
    assert_eq!(without_id.multicast, group);
    assert_eq!(without_id.hint().multicast, group, "carried in the hint");

    let id = "id=0123456789abcdef0123456789abcdef";
    let overlong = format!("mc=239.1.2.3:{}", "7".repeat(300));
    for bad in [
        "mc=garbage",
        "mc=[ff02::1]:7000",
        "mc=10.99.0.2:7000",
        "mc=239.1.2.3:0",
        "mc=239.1.2.3",
        "mc=",
        "mc",
        &overlong,
    ] {
        let found = from_txt(&txt(&["svc=billing", id, bad, "sn=0"]))
            .unwrap_or_else(|| panic!("`{bad}` made the record unusable"));
        assert_eq!(found.multicast, None, "{bad}");
        assert_eq!(found.subscriptions, Some(vec![]), "the rest still counts");
    }
    assert_eq!(txt_entry(b"mc=\xff").map(|(k, _)| k), Some("mc".to_owned()));
    let not_utf8 = vec![("mc".to_owned(), Some(vec![0xff, 0xfe]))];
    let mut record = txt(&["svc=billing"]);
    record.extend(not_utf8);
    assert_eq!(from_txt(&record).map(|f| f.multicast), Some(None));
}
