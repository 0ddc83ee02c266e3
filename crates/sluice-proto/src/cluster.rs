//! Cluster messages: storage node heartbeats, the tracker's cluster view, upload assignment.

use serde::{Deserialize, Serialize};

/// Header carrying `SLUICE_CLUSTER_SECRET` on every call inside the cluster.
pub const CLUSTER_SECRET_HEADER: &str = "sluice-cluster-secret";

/// Header carrying a replica's SHA-256 (64 lowercase hex digits) between nodes: a replica
/// whose bytes do not match is not stored.
pub const SHA256_HEADER: &str = "sluice-sha256";

/// A digest as [`SHA256_HEADER`] carries it.
pub fn sha256_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`SHA256_HEADER`]'s value: exactly 64 hex digits.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    Offline,
    Syncing,
}

/// What a storage node tells every tracker, every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub group: String,
    /// The URL clients and peers should use for this node (`--advertise`).
    pub url: String,
    /// `Active` or `Syncing`; a node never calls itself offline.
    pub state: NodeState,
    pub files: u64,
    pub bytes: u64,
    pub free_bytes: u64,
    /// False when the node is short of its free-space reserve: no uploads go to it.
    pub writable: bool,
    /// Operations its peers have that it has not applied yet.
    #[serde(default)]
    pub sync_lag: u64,
    /// Files its peers logged that it could not fetch yet (tried again with a back-off).
    #[serde(default)]
    pub catch_up_pending: u64,
    /// Copies its uploads need (its write rule); trackers send no uploads to a group with
    /// fewer active nodes.
    #[serde(default = "one")]
    pub min_copies: u32,
}

fn one() -> u32 {
    1
}

/// `GET /v1/internal/identity` of a storage node: who answers at its URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: String,
    pub group: String,
    /// Random for each run of the server: two URLs that answer with the same instance are
    /// one server under two names; the same node id with two instances is two servers.
    pub instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub url: String,
    pub state: NodeState,
    pub files: u64,
    pub bytes: u64,
    pub free_bytes: u64,
    pub writable: bool,
    /// Milliseconds since the tracker last heard from the node.
    pub last_seen_ms: u64,
    /// Operations its peers have that it has not applied yet, as it last reported.
    #[serde(default)]
    pub sync_lag: u64,
    /// Files its peers logged that it could not fetch yet, as it last reported.
    #[serde(default)]
    pub catch_up_pending: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub nodes: Vec<NodeView>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub groups: Vec<GroupView>,
}

/// A tracker's answer to a heartbeat: the other nodes of the sender's group, so nodes learn
/// their peers without a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub peers: Vec<NodeView>,
}

/// `GET /v1/internal/oplog` of a storage node: its operations after a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OplogPage {
    /// The node's newest sequence number when the page was read.
    pub head: u64,
    pub entries: Vec<OplogItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OplogItem {
    pub seq: u64,
    pub op: OplogOp,
    pub fileid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OplogOp {
    Put,
    Delete,
}

/// `GET /v1/assign`: where to send an upload (the same place `POST /v1/files` on a tracker
/// redirects to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub group: String,
    pub node: String,
    /// The node's upload URL: `{node url}/v1/files`.
    pub url: String,
    /// With API tokens in use, and asked with one: `url` with a short-lived signed upload link
    /// for that node, so the token itself never goes to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_url: Option<String>,
}

/// What an edge tells every tracker, every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeHeartbeat {
    pub edge_id: String,
    /// The URL clients should use for this edge.
    pub url: String,
    /// The region it serves; `None` serves clients of no region in particular.
    pub region: Option<String>,
    /// Bytes its cache can take before it evicts.
    pub cache_free: u64,
    pub cache_files: u64,
}

/// An edge as a tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    pub id: String,
    pub url: String,
    pub region: Option<String>,
    pub cache_free: u64,
    pub cache_files: u64,
    /// Whether it was heard from recently; only live edges get clients.
    pub live: bool,
    pub last_seen_ms: u64,
}

/// `POST /v1/preload` on a tracker: warm a file on the edges of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreloadRequest {
    pub fileid: String,
    pub region: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn digests_roundtrip(digest in any::<[u8; 32]>()) {
            prop_assert_eq!(parse_sha256_hex(&sha256_hex(&digest)), Some(digest));
        }

        #[test]
        fn bad_digests_are_refused(text in "\\PC{0,80}") {
            if let Some(d) = parse_sha256_hex(&text) {
                prop_assert_eq!(sha256_hex(&d), text.to_ascii_lowercase());
            }
        }
    }
}
