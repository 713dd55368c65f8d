//! The node's decisions as plain data structures: no sockets, no timers, no tasks.
//!
//! Following quinn-proto, everything here takes `now` as an argument and returns what to do,
//! so retries, dedup ageing and instance choice are unit-tested with made-up instants.

pub(crate) mod dedup;
pub(crate) mod dial_plan;
pub(crate) mod fanout;
pub(crate) mod replies;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod topic;
