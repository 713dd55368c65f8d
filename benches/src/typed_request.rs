//! `shoal-typed-request`: a typed request over a [`TypedNode`], whose JSON payload carries
//! `--payload` bytes (64 by default) of fields, answered by a typed handler with a typed
//! reply of the same size. Beside `shoal-request` (the same round trip with a byte payload)
//! and `quinn-stream` in one run, the difference is the cost of the typed layer: encoding and
//! decoding JSON twice per round trip, dispatch on (name, major version), the contract checks.
//!
//! ```sh
//! cargo run --release -p shoal-benches -- --scenario quinn-stream --scenario shoal-request \
//!     --scenario shoal-typed-request --runs 3
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal::contract::{ServiceContract, TypedNode};
use shoal::{MeshCa, Message};

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::{SERVICE, builder, shoal_err, start_client};

/// Row name: a typed request until its typed reply is decoded.
pub const NAME: &str = "shoal-typed-request";

const TIMEOUT: Duration = Duration::from_secs(5);

/// The request: a few fields, `note` padded so the JSON is `--payload` bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "bench.Quote", version = 1, kind = "command")]
pub struct Quote {
    seq: u64,
    customer: String,
    quantity: u32,
    note: String,
}

/// The reply: the same fields back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "bench.Quoted", version = 1, kind = "reply")]
pub struct Quoted {
    seq: u64,
    customer: String,
    quantity: u32,
    note: String,
}

impl Quote {
    /// A request whose JSON encoding is `len` bytes (at least the fields' minimum).
    pub fn of_len(seq: u64, len: usize) -> Self {
        let mut quote = Self {
            seq,
            customer: "customer-7".into(),
            quantity: 3,
            note: String::new(),
        };
        let bare = serde_json::to_vec(&quote).map_or(0, |v| v.len());
        quote.note = "x".repeat(len.saturating_sub(bare));
        quote
    }
}

fn server_contract() -> ServiceContract {
    ServiceContract::new(SERVICE, "1.0.0")
        .accepts::<Quote>()
        .replies::<Quoted>()
}

fn client_contract() -> ServiceContract {
    ServiceContract::new("bench-client", "1.0.0")
        .sends::<Quote>(SERVICE)
        .replies::<Quoted>()
}

/// One run of `shoal-typed-request`.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let report = run_pair(
        NAME,
        &config,
        move |announce, shutdown| serve(server_ca, announce, shutdown),
        move |addr| client(ca, addr, config),
    )?;
    Ok(vec![report])
}

async fn serve(ca: MeshCa, announce: Announce<SocketAddr>, shutdown: Shutdown) -> BenchResult<()> {
    let node = builder(&ca, SERVICE)?.start().await.map_err(shoal_err)?;
    let typed = node.typed(server_contract()).map_err(shoal_err)?;
    typed
        .handle(|q: Quote, _msg: Message| async move {
            Ok(Quoted {
                seq: q.seq,
                customer: q.customer,
                quantity: q.quantity,
                note: q.note,
            })
        })
        .map_err(shoal_err)?;
    announce.send(node.local_addr())?;
    shutdown.wait().await;
    node.shutdown().await;
    Ok(())
}

async fn client(ca: MeshCa, server: SocketAddr, config: BenchConfig) -> BenchResult<LatencyReport> {
    let node = start_client(ca, server).await?;
    let typed: TypedNode = node.typed(client_contract()).map_err(shoal_err)?;
    let report = measure(NAME, &config, async |attempt| {
        let quote = Quote::of_len(attempt, config.payload);
        let quoted: Quoted = typed
            .request(SERVICE, &quote, TIMEOUT)
            .await
            .map_err(shoal_err)?;
        if quoted.seq != attempt || quoted.note.len() != quote.note.len() {
            return Err(BenchError::msg("typed reply does not match the request"));
        }
        Ok(RoundTrip::Done)
    })
    .await;
    node.shutdown().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_as_long_as_the_payload_asked_for() {
        for len in [64, 256] {
            let json = serde_json::to_vec(&Quote::of_len(12_345, len)).expect("encodes");
            assert_eq!(json.len(), len);
        }
        // Below the fields' own size, the fields are sent as they are.
        assert!(
            serde_json::to_vec(&Quote::of_len(1, 8))
                .expect("encodes")
                .len()
                > 8
        );
    }
}
