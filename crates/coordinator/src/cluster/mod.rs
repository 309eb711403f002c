//! The coordinator over NATS JetStream: durable, recoverable, scalable.
//!
//! See `ARCHITECTURE.md` ("Running over NATS") for the design; [`store`]
//! holds the durable state.

pub mod api;
pub mod client;
pub mod engine;
pub mod history_view;
mod lease;
pub mod store;

pub use engine::{Cluster, ClusterError, ClusterHandle, ClusterOptions, Trigger};
pub use store::Store;
