//! (being rewritten)
#![allow(dead_code, unused_imports)]

mod config;
mod dead_letter;
mod engine;
mod error;
mod event;
mod handler;
mod identity;
mod message;
mod options;
mod receipts;
mod stats;
mod tls;
mod sync;

pub use dead_letter::DeadLetter;
pub use engine::retry::RetryPolicy;
pub use error::Error;
pub use event::NodeEvent;
pub use handler::{HandlerError, IntoReply};
pub use identity::{Identity, MeshCa};
pub use message::Message;
pub use options::{MAX_BATCH_EVENTS, PublishOptions, Reliability, SendOptions};
pub use receipts::{EventDelivery, PeerInfo, PublishReceipt, Receipt};
pub use shoal_proto::{Limits, MessageId, MessageKind, NodeId, ReturnAddress};
pub use stats::NodeStats;
