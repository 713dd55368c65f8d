//! The decisions of policies, and the file format.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::Error;

fn denied(decision: &Decision) -> &Denial {
    decision
        .denial()
        .unwrap_or_else(|| panic!("expected a denial, got {decision:?}"))
}

#[test]
fn the_default_policy_allows_everything_within_the_mesh() {
    let policy = Policy::allow_all();
    assert_eq!(policy.default_rule(), DefaultRule::Allow);
    assert_eq!(
        policy.may_send("shop", "billing", "anything"),
        Decision::AllowedByDefault
    );
    assert_eq!(
        policy.may_publish("shop", "order.created"),
        Decision::AllowedByDefault
    );
    assert_eq!(
        policy.may_subscribe("shop", ">"),
        Decision::AllowedByDefault
    );
    assert_eq!(Policy::default(), policy);
}

#[test]
fn deny_all_refuses_everything_and_says_it_was_the_default() {
    let policy = Policy::deny_all();
    let send = policy.may_send("shop", "billing", "invoice.create");
    let denial = denied(&send);
    assert!(denial.by_default);
    assert_eq!(denial.section, Section::Accept);
    assert_eq!(denial.from.as_deref(), Some("shop"));
    assert_eq!(
        send.to_string(),
        "not authorized: `billing` does not accept `invoice.create` from `shop` (the policy \
         denies by default and services.billing.accept is not set)"
    );
    assert!(!policy.may_publish("shop", "order.created").is_allowed());
    assert!(!policy.may_subscribe("shop", "order.*").is_allowed());
}

#[test]
fn accept_rules_are_per_sender_and_per_message_pattern() {
    let policy = Policy::builder()
        .accept("billing", "shop", ["invoice.*", "refund"])
        .accept("billing", "*", ["health"])
        .accept("billing", "admin", [">"])
        .build()
        .unwrap();
    let allowed = |from, message| policy.may_send(from, "billing", message).is_allowed();
    assert!(allowed("shop", "invoice.create"));
    assert!(allowed("shop", "refund"));
    assert!(allowed("shop", "health"), "`*` is any sender");
    assert!(allowed("ops", "health"));
    assert!(allowed("admin", "anything.at.all"), "`>` is every message");
    assert!(
        !allowed("shop", "invoice"),
        "`invoice.*` needs a second token"
    );
    assert!(!allowed("shop", "invoice.line.add"), "`*` is one token");
    assert!(!allowed("shop", "refunds"));
    assert!(
        !allowed("ops", "invoice.create"),
        "the rule is for shop only"
    );
    assert!(!allowed("", "health.x"));

    let decision = policy.may_send("shop", "billing", "invoice.create");
    assert_eq!(
        decision,
        Decision::Allowed {
            pattern: "invoice.*".into()
        }
    );
    let decision = policy.may_send("ops", "billing", "refund");
    let denial = denied(&decision);
    assert!(!denial.by_default);
    assert_eq!(denial.service, "billing");
    assert_eq!(denial.subject, "refund");
    assert_eq!(
        decision.to_string(),
        "not authorized: `billing` does not accept `refund` from `ops` \
         (services.billing.accept does not allow it)"
    );

    // Rules about billing say nothing about other receivers.
    assert_eq!(
        policy.may_send("ops", "pricing", "refund"),
        Decision::AllowedByDefault
    );
    // Nor about what billing publishes or subscribes to.
    assert!(policy.may_publish("billing", "x").is_allowed());
}

#[test]
fn publish_rules_match_topics() {
    let policy = Policy::builder()
        .publish("orders", ["order.>", "audit.orders"])
        .publish("silent", [] as [&str; 0])
        .build()
        .unwrap();
    assert!(policy.may_publish("orders", "order.created").is_allowed());
    assert!(
        policy
            .may_publish("orders", "order.eu.cancelled")
            .is_allowed()
    );
    assert!(policy.may_publish("orders", "audit.orders").is_allowed());
    assert!(!policy.may_publish("orders", "order").is_allowed());
    assert!(!policy.may_publish("orders", "audit.billing").is_allowed());
    assert!(!policy.may_publish("silent", "anything").is_allowed());
    let decision = policy.may_publish("orders", "payment.done");
    assert_eq!(
        decision.to_string(),
        "not authorized: `orders` may not publish `payment.done` (services.orders.publish \
         does not allow it)"
    );
    assert!(policy.may_publish("other", "payment.done").is_allowed());
}

#[test]
fn a_subscription_is_allowed_only_if_an_allowed_pattern_covers_it() {
    let policy = Policy::builder()
        .subscribe("billing", ["order.>", "payment.*.done", "audit.billing"])
        .build()
        .unwrap();
    let may = |pattern| policy.may_subscribe("billing", pattern).is_allowed();
    for allowed in [
        "order.>",
        "order.*",
        "order.created",
        "order.*.cancelled",
        "order.eu.>",
        "payment.*.done",
        "payment.card.done",
        "audit.billing",
    ] {
        assert!(may(allowed), "{allowed} should be allowed");
    }
    for refused in [
        ">",
        "*",
        "order",
        "*.created",
        "payment.>",
        "payment.*.*",
        "payment.card.>",
        "payment.card.done.late",
        "audit.*",
        "audit.billing.x",
    ] {
        assert!(!may(refused), "{refused} should be refused");
    }
    let decision = policy.may_subscribe("billing", "payment.>");
    assert_eq!(
        decision.to_string(),
        "not authorized: `billing` may not subscribe to `payment.>` \
         (services.billing.subscribe does not allow it)"
    );
}

#[test]
fn covers_agrees_with_matching_on_concrete_topics() {
    // For a concrete topic, "covers" is exactly "matches".
    let patterns = ["a.b", "a.*", "a.>", "*.b", ">", "*", "a.*.c", "a.b.>"];
    let topics = ["a", "b", "a.b", "a.c", "a.b.c", "b.b", "a.x.c", "a.b.c.d"];
    for pattern in patterns {
        for t in topics {
            assert_eq!(
                covers(pattern, t),
                topic::matches(pattern, t),
                "{pattern} vs {t}"
            );
        }
    }
}

#[test]
fn lock_down_refuses_everything_but_what_is_added() {
    let policy = Policy::builder()
        .accept("vault", "billing", ["secret.get"])
        .lock_down("vault")
        .subscribe("vault", ["rotation.>"])
        .build()
        .unwrap();
    assert!(
        policy
            .may_send("billing", "vault", "secret.get")
            .is_allowed()
    );
    assert!(
        !policy
            .may_send("billing", "vault", "secret.put")
            .is_allowed()
    );
    assert!(!policy.may_send("shop", "vault", "secret.get").is_allowed());
    assert!(!policy.may_publish("vault", "vault.opened").is_allowed());
    assert!(policy.may_subscribe("vault", "rotation.keys").is_allowed());
    assert!(!policy.may_subscribe("vault", "order.>").is_allowed());
    // Others keep the default.
    assert!(policy.may_send("billing", "shop", "x").is_allowed());
    assert_eq!(policy.services().collect::<Vec<_>>(), vec!["vault"]);
}

#[test]
fn deny_by_default_with_allowances() {
    let policy = Policy::builder()
        .default_rule(DefaultRule::Deny)
        .accept("billing", "shop", ["invoice.create"])
        .publish("shop", ["order.>"])
        .build()
        .unwrap();
    assert!(
        policy
            .may_send("shop", "billing", "invoice.create")
            .is_allowed()
    );
    assert!(!policy.may_send("shop", "pricing", "quote").is_allowed());
    assert!(policy.may_publish("shop", "order.created").is_allowed());
    let decision = policy.may_subscribe("shop", "order.>");
    assert!(denied(&decision).by_default);
}

#[test]
fn bad_names_and_patterns_are_refused_with_their_place() {
    let cases = [
        (
            Policy::builder().accept("Billing", "shop", ["x"]),
            "services.Billing",
        ),
        (
            Policy::builder().accept("billing", "sh op", ["x"]),
            "services.billing.accept[0].from",
        ),
        (
            Policy::builder().accept("billing", "shop", ["ok"]).accept(
                "billing",
                "shop",
                ["ok", "a..b"],
            ),
            "services.billing.accept[1].messages[1]",
        ),
        (
            Policy::builder().publish("shop", ["order.>.x"]),
            "services.shop.publish[0]",
        ),
        (
            Policy::builder().subscribe("shop", ["or*der"]),
            "services.shop.subscribe[0]",
        ),
        (
            Policy::builder().publish("shop", [""]),
            "services.shop.publish[0]",
        ),
    ];
    for (builder, place) in cases {
        match builder.build() {
            Err(Error::Policy(msg)) => assert!(msg.starts_with(place), "{msg} (want {place})"),
            other => panic!("expected a policy error at {place}, got {other:?}"),
        }
    }
}

const EXAMPLE: &str = r#"
# Allow what is not said otherwise.
default = "allow"

[services.billing]
accept = [
  { from = "shop", messages = ["invoice.*"] },
  { from = "*", messages = ["health"] },
]
publish = ["billing.>"]
subscribe = ["order.>"]

[services.vault]
accept = []
publish = []
subscribe = []
"#;

#[test]
fn the_toml_file_means_what_the_builder_means() {
    let from_file = Policy::from_toml(EXAMPLE).unwrap();
    let built = Policy::builder()
        .accept("billing", "shop", ["invoice.*"])
        .accept("billing", "*", ["health"])
        .publish("billing", ["billing.>"])
        .subscribe("billing", ["order.>"])
        .lock_down("vault")
        .build()
        .unwrap();
    assert_eq!(from_file, built);
    assert!(!from_file.may_send("shop", "vault", "x").is_allowed());
    assert!(from_file.may_send("ops", "billing", "health").is_allowed());

    // An empty file is the default policy.
    assert_eq!(Policy::from_toml("").unwrap(), Policy::allow_all());
    assert_eq!(
        Policy::from_toml("default = \"deny\"").unwrap(),
        Policy::deny_all()
    );
}

#[test]
fn the_json_file_has_the_same_structure() {
    let json = r#"{
        "default": "allow",
        "services": {
            "billing": {
                "accept": [
                    {"from": "shop", "messages": ["invoice.*"]},
                    {"from": "*", "messages": ["health"]}
                ],
                "publish": ["billing.>"],
                "subscribe": ["order.>"]
            },
            "vault": {"accept": [], "publish": [], "subscribe": []}
        }
    }"#;
    assert_eq!(
        Policy::from_json(json).unwrap(),
        Policy::from_toml(EXAMPLE).unwrap()
    );
}

#[test]
fn malformed_files_are_refused_with_a_clear_error() {
    let cases = [
        // A misspelt section must not silently leave the service open.
        ("[services.billing]\naccpet = []", "accpet"),
        ("default = \"maybe\"", "maybe"),
        (
            "[services.billing]\naccept = [{ from = \"shop\" }]",
            "messages",
        ),
        (
            "[services.billing]\naccept = [{ from = \"shop\", messages = [\"x\"], to = \"y\" }]",
            "to",
        ),
        ("[services.billing]\npublish = \"billing.>\"", "sequence"),
        (
            "[services.billing]\npublish = [\"a..b\"]",
            "services.billing.publish[0]",
        ),
        ("[services.Bad_Name]", "services.Bad_Name"),
        ("services = 3", "services"),
        ("not toml at all [", ""),
    ];
    for (text, mention) in cases {
        match Policy::from_toml(text) {
            Err(Error::Policy(msg)) => {
                eprintln!("{text:?}: {msg}");
                assert!(msg.contains(mention), "{text:?}: {msg}");
            }
            other => panic!("{text:?} should be refused, got {other:?}"),
        }
    }
    assert!(matches!(
        Policy::from_json("{\"default\": \"allow\", \"extra\": 1}"),
        Err(Error::Policy(msg)) if msg.contains("extra")
    ));
}

#[test]
fn files_are_read_by_their_extension() {
    let dir = std::env::temp_dir().join(format!("shoal-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml_path = dir.join("policy.toml");
    let json_path = dir.join("policy.json");
    let other_path = dir.join("policy.yaml");
    std::fs::write(&toml_path, EXAMPLE).unwrap();
    std::fs::write(&json_path, r#"{"default": "deny"}"#).unwrap();
    std::fs::write(&other_path, "").unwrap();
    assert_eq!(
        Policy::load(&toml_path).unwrap(),
        Policy::from_toml(EXAMPLE).unwrap()
    );
    assert_eq!(Policy::load(&json_path).unwrap(), Policy::deny_all());
    let err = Policy::load(&other_path).unwrap_err();
    assert!(err.to_string().contains(".toml or .json"), "{err}");
    std::fs::write(&toml_path, "default = 1").unwrap();
    let err = Policy::load(&toml_path).unwrap_err();
    assert!(err.to_string().contains("policy.toml"), "{err}");
    assert!(matches!(
        Policy::load(dir.join("missing.toml")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn can_refuse_says_which_questions_need_asking() {
    let open = Policy::allow_all();
    for section in [Section::Accept, Section::Publish, Section::Subscribe] {
        assert!(!open.can_refuse(section, None));
        assert!(!open.can_refuse(section, Some("billing")));
        assert!(Policy::deny_all().can_refuse(section, Some("billing")));
    }
    let policy = Policy::builder()
        .accept("billing", "shop", ["invoice.*"])
        .publish("orders", ["order.>"])
        .build()
        .unwrap();
    assert!(policy.can_refuse(Section::Accept, Some("billing")));
    assert!(!policy.can_refuse(Section::Accept, Some("orders")));
    assert!(policy.can_refuse(Section::Publish, None));
    assert!(policy.can_refuse(Section::Publish, Some("orders")));
    assert!(!policy.can_refuse(Section::Publish, Some("billing")));
    assert!(!policy.can_refuse(Section::Subscribe, None));
    // Whatever can_refuse says no to, the policy indeed allows.
    assert!(policy.may_send("anyone", "orders", "x.y").is_allowed());
    assert!(policy.may_publish("billing", "x.y").is_allowed());
    assert!(policy.may_subscribe("anyone", ">").is_allowed());
}
