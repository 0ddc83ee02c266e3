//! A session's declaration, `DATA/uploads/ID.json`, written durably.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::now_ms;

pub(crate) const RECORD_VERSION: u32 = 1;

/// What a session declared at creation; `DATA/uploads/ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub version: u32,
    pub length: u64,
    /// The minimal transport size in bytes, as asked (a JPEG's is moved up to a scan end).
    pub mts: u64,
    pub content_type: String,
    /// The `Upload-Metadata` header as sent, echoed by HEAD.
    pub metadata_header: String,
    pub sender: String,
    pub receiver: String,
    /// The key of the file id, chosen (and saved) before the first commit.
    pub key: Option<String>,
    pub created_ms: u64,
    /// Created through a signed upload link: the unguessable upload id is the credential for
    /// its later PATCH, HEAD and DELETE.
    pub signed: bool,
}

pub(crate) fn expects_jpeg(record: &SessionRecord) -> bool {
    let ct = record.content_type.to_ascii_lowercase();
    ct.starts_with("image/jpeg") || ct.starts_with("image/pjpeg")
}

pub(crate) fn write_record(path: &Path, record: &SessionRecord) -> std::io::Result<()> {
    Ok(sluice_state::save_blocking(path, RECORD_VERSION, record)?)
}

/// A record saved by [`write_record`], or by a release before the version envelope.
pub(crate) fn read_record(path: &Path) -> std::io::Result<SessionRecord> {
    let record: SessionRecord = sluice_state::load(path, RECORD_VERSION)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no session record"))?;
    if record.version != RECORD_VERSION {
        return Err(std::io::Error::other("unknown session record version"));
    }
    Ok(record)
}

pub(crate) fn new_record(
    length: u64,
    mts: u64,
    content_type: String,
    metadata_header: String,
    metadata: &BTreeMap<String, String>,
    signed: bool,
) -> SessionRecord {
    SessionRecord {
        version: RECORD_VERSION,
        length,
        mts,
        content_type,
        metadata_header,
        sender: metadata.get("sender").cloned().unwrap_or_default(),
        receiver: metadata.get("receiver").cloned().unwrap_or_default(),
        key: None,
        created_ms: now_ms(),
        signed,
    }
}
