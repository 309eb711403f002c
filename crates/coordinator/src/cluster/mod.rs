//! The coordinator over NATS JetStream: durable, recoverable, scalable.
//!
//! See `ARCHITECTURE.md` ("Running over NATS") for the design; [`store`]
//! holds the durable state.

pub mod api;
pub mod client;
pub mod history_view;
pub mod store;

// The engine (`Cluster`, `ClusterOptions`, `ClusterHandle`) is in
// `engine.rs`; the API service in `api.rs`; the API client in `client.rs`.
