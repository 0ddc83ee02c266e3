//! The storage role: Sluice's HTTP file API (`/v1/files`) over the local blob store, plus
//! `/healthz` and `/metrics`.
//!
//! [`start`] takes an already bound listener, the node's config and a shutdown future, so tests
//! bind port 0 and the binary binds what the user asked for; both start a node the same way.
//!
//! Layers, bottom up (no module imports one above it): `error`; `replication` and `events`;
//! `progressive` (upload sessions, on a narrow context); `state` (the node's shared state);
//! `http` (handlers); `cluster` and `scrub` (workers); `node` (startup).

pub mod cluster;
mod error;
pub mod events;
mod http;
pub mod node;
pub mod progressive;
pub mod replication;
pub mod scrub;
mod state;

pub use error::ApiError;
pub use http::router;
pub use node::{Membership, NodeConfig, StartError, start};
pub use sluice_blob::{
    BlobError, BlobStore, BlobStoreOptions, HotCacheLimits, MAX_VOLUME_FILE, VolumeOptions,
    VolumeStats,
};
pub use sluice_http::{
    AccessPolicy, ActiveContent, ClusterAccess, CorsPolicy, HttpLimits, HttpMetrics,
};
pub use state::{NodeCounters, StorageConfig, StorageState};
