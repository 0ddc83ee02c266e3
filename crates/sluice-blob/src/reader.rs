//! Reading a blob: whole blocks are read with their checksums and verified before any byte of
//! them is handed out, so damaged data is never served as good.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use sluice_proto::BlobKey;

use crate::layout::{BlockLayout, CRC_LEN};
use crate::record::BlobMeta;
use crate::{BlobError, blocking};

/// Most logical bytes one `read_chunk` returns: a few blocks, so a big range streams in pieces.
pub const CHUNK_BYTES: u64 = 256 * 1024;

pub struct BlobReader {
    key: BlobKey,
    meta: BlobMeta,
    file: Arc<File>,
}

impl BlobReader {
    pub(crate) fn new(key: BlobKey, meta: BlobMeta, file: File) -> Self {
        Self {
            key,
            meta,
            file: Arc::new(file),
        }
    }

    pub fn meta(&self) -> &BlobMeta {
        &self.meta
    }

    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// Reads verified bytes from `start` up to `end` (exclusive), at most [`CHUNK_BYTES`] of
    /// them; call again from where it stopped. An empty answer means `start >= end`.
    pub async fn read_chunk(&self, start: u64, end: u64) -> Result<Bytes, BlobError> {
        let end = end.min(self.meta.size);
        if start >= end {
            return Ok(Bytes::new());
        }
        let file = self.file.clone();
        let key = self.key;
        let size = self.meta.size;
        let layout = BlockLayout::new(self.meta.block_size);
        blocking(move || {
            read_verified(
                &file,
                key,
                &layout,
                size,
                start,
                end.min(start + CHUNK_BYTES),
            )
        })
        .await
    }
}

fn read_verified(
    file: &File,
    key: BlobKey,
    layout: &BlockLayout,
    size: u64,
    start: u64,
    end: u64,
) -> Result<Bytes, BlobError> {
    let bs = u64::from(layout.block_size);
    let first_block = start / bs;
    let last_block = (end - 1) / bs;
    let from = layout.block_offset(first_block);
    let to = layout.block_offset(last_block) + layout.block_data_len(last_block, size) + CRC_LEN;
    let mut raw = vec![0u8; (to - from) as usize];
    if let Err(e) = file.read_exact_at(&mut raw, from) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            tracing::error!(%key, "data file is shorter than its index record says");
            return Err(BlobError::Corrupt {
                key,
                block: first_block,
            });
        }
        return Err(e.into());
    }
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut at = 0usize;
    for block in first_block..=last_block {
        let n = layout.block_data_len(block, size) as usize;
        let stored = &raw[at..at + n + CRC_LEN as usize];
        let Some(data) = BlockLayout::verify_block(stored) else {
            tracing::error!(%key, block, "checksum mismatch: refusing to serve damaged data");
            return Err(BlobError::Corrupt { key, block });
        };
        let block_start = block * bs;
        let lo = start.saturating_sub(block_start) as usize;
        let hi = (end - block_start).min(n as u64) as usize;
        out.extend_from_slice(&data[lo..hi]);
        at += n + CRC_LEN as usize;
    }
    Ok(Bytes::from(out))
}
