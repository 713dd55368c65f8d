//! The documents Shoal writes pass the official AsyncAPI parser, `@asyncapi/parser` from
//! npm (installed by `scripts/test.sh` into `scripts/asyncapi/`). Without Node.js or the
//! installed parser the test says "skipped: ..." and passes.
#![cfg(feature = "contracts")]
#![allow(clippy::unwrap_used)]

mod contracts {
    pub(crate) mod types;
}

use std::path::{Path, PathBuf};
use std::process::Command;

use contracts::types::{OrderPlaced, PlaceOrder, orders_contract, v1};
use shoal::contract::{Codec, ServiceContract};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Contracts that use every feature of the document: replies, deprecations, groups, every
/// instance subscriptions, CBOR, several services sent to, an event published and
/// subscribed to on one topic (its channel lists it twice, a key for each way).
fn contracts() -> Vec<ServiceContract> {
    vec![
        orders_contract()
            .sends::<PlaceOrder>("warehouse")
            .codec(Codec::Cbor),
        ServiceContract::new("audit", "1.0.0")
            .default_codec(Codec::Cbor)
            .subscribes::<OrderPlaced>("order.*")
            .group("auditors")
            .subscribes::<v1::OrderPlaced>("order.>")
            .every_instance()
            .sends::<v1::PlaceOrder>("orders")
            .replies::<v1::OrderAccepted>(),
        ServiceContract::new("relay", "1.0.0")
            .publishes::<OrderPlaced>("order.placed")
            .subscribes::<OrderPlaced>("order.placed")
            .every_instance(),
    ]
}

#[test]
fn documents_pass_the_official_asyncapi_parser() {
    let validator = repo().join("scripts/asyncapi/validate.mjs");
    let installed = repo().join("scripts/asyncapi/node_modules/@asyncapi/parser");
    if Command::new("node").arg("--version").output().is_err() {
        println!("skipped: Node.js is not installed (scripts/test.sh needs node and npm)");
        return;
    }
    if !installed.is_dir() {
        println!(
            "skipped: @asyncapi/parser is not installed (scripts/test.sh installs it with npm)"
        );
        return;
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = vec![
        repo().join("examples/typed_orders/asyncapi.json"),
        repo().join("examples/typed_orders/asyncapi-1.0.0.json"),
    ];
    for contract in contracts() {
        let json = dir.join(format!("{}.json", contract.service()));
        std::fs::write(&json, contract.asyncapi_json().unwrap()).unwrap();
        let yaml = dir.join(format!("{}.yaml", contract.service()));
        std::fs::write(&yaml, contract.asyncapi_yaml().unwrap()).unwrap();
        files.extend([json, yaml]);
    }
    // A document the parser must refuse (an operation lists a message its channel does not
    // have), so this test can tell a parser that accepts everything.
    let broken = dir.join("broken.json");
    std::fs::write(
        &broken,
        r##"{"asyncapi": "3.0.0", "info": {"title": "t", "version": "1"},
            "channels": {"c": {"address": "c", "messages": {"m": {"payload": {"type": "object"}}}}},
            "operations": {"o": {"action": "send", "channel": {"$ref": "#/channels/c"},
                                 "messages": [{"$ref": "#/channels/other/messages/m"}]}}}"##,
    )
    .unwrap();
    let out = Command::new("node")
        .arg(&validator)
        .args(&files)
        .arg(&broken)
        .env("SCARF_ANALYTICS", "false")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success(),
        "the broken document passed:\n{report}"
    );
    assert!(report.contains("broken.json: INVALID"), "{report}");
    for file in &files {
        let file = file.display().to_string();
        assert!(
            report.contains(&format!("{file}: valid AsyncAPI 3.0.0")),
            "{file}:\n{report}"
        );
        // Warnings are fine to have (the parser suggests 3.1), errors are not.
        assert!(
            !report.contains(&format!("{file}: error ")),
            "{file}:\n{report}"
        );
    }
}
