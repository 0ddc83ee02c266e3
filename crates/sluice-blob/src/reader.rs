//! Reading a blob: whole blocks are read with their checksums and verified before any byte of
//! them is handed out, so damaged data is never served as good.
//!
//! Reads first try the page cache without blocking (`preadv2` with `RWF_NOWAIT`) right on the
//! calling thread; only when the data is not cached do they go to the blocking pool. A hop to
//! the pool costs two context switches, which on a 64 KiB download was most of the work; so was
//! zero-filling buffers the kernel then overwrites, hence reads into uninitialised capacity.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use sluice_proto::BlobKey;

use crate::layout::{BlockLayout, CRC_LEN};
use crate::record::BlobMeta;
use crate::{BlobError, blocking};

/// Most logical bytes one `read_chunk` returns: a few blocks, so a big range streams in pieces
/// and a slow reader holds little memory.
pub const CHUNK_BYTES: u64 = 512 * 1024;

/// Verified bytes: slices of one read buffer, one per block touched (no copy to strip the
/// checksums out).
pub type Chunk = Vec<Bytes>;

pub struct BlobReader {
    key: BlobKey,
    meta: BlobMeta,
    file: Arc<File>,
    /// Where the first block starts in the file: after the header of a data file, at the
    /// record's body in a volume.
    base: u64,
}

/// Where a chunk's bytes sit in the file.
struct ChunkSpan {
    first_block: u64,
    last_block: u64,
    from: u64,
    len: usize,
}

impl BlobReader {
    pub(crate) fn new(key: BlobKey, meta: BlobMeta, file: Arc<File>, base: u64) -> Self {
        Self {
            key,
            meta,
            file,
            base,
        }
    }

    pub fn meta(&self) -> &BlobMeta {
        &self.meta
    }

    /// Reads every verified byte from `at` to the end, handing each piece to `visit`.
    pub async fn read_from(
        &self,
        mut at: u64,
        mut visit: impl FnMut(&[u8]),
    ) -> Result<(), BlobError> {
        let size = self.meta.size;
        while at < size {
            let chunk = self.read_chunk(at, size, crate::CHUNK_BYTES).await?;
            if chunk.is_empty() {
                break;
            }
            for part in chunk {
                at += part.len() as u64;
                visit(&part);
            }
        }
        Ok(())
    }

    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// Reads verified bytes from `start` up to `end` (exclusive), at most `max` of them
    /// (usually [`CHUNK_BYTES`]); call again from where it stopped. An empty chunk means
    /// `start >= end`.
    pub async fn read_chunk(&self, start: u64, end: u64, max: u64) -> Result<Chunk, BlobError> {
        let end = end
            .min(self.meta.size)
            .min(start.saturating_add(max.max(1)));
        if start >= end {
            return Ok(Vec::new());
        }
        let layout = BlockLayout::new(self.meta.block_size);
        let span = span(&layout, self.base, self.meta.size, start, end);
        let mut raw = Vec::with_capacity(span.len);
        let raw = match pread_into(&self.file, &mut raw, span.len, span.from, libc::RWF_NOWAIT) {
            Ok(()) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let file = self.file.clone();
                let key = self.key;
                let (len, from) = (span.len, span.from);
                blocking(move || {
                    raw.clear();
                    pread_into(&file, &mut raw, len, from, 0).map_err(|e| read_error(key, e))?;
                    Ok(raw)
                })
                .await?
            }
            Err(e) => return Err(read_error(self.key, e)),
        };
        verify(
            self.key,
            &layout,
            self.meta.size,
            &span,
            Bytes::from(raw),
            start,
            end,
        )
    }
}

fn span(layout: &BlockLayout, base: u64, size: u64, start: u64, end: u64) -> ChunkSpan {
    let bs = u64::from(layout.block_size);
    let stride = bs + CRC_LEN;
    let first_block = start / bs;
    let last_block = (end - 1) / bs;
    let from = base + first_block * stride;
    let to = base + last_block * stride + layout.block_data_len(last_block, size) + CRC_LEN;
    ChunkSpan {
        first_block,
        last_block,
        from,
        len: (to - from) as usize,
    }
}

/// Appends exactly `len` bytes read at `offset` to `buf` (which must be empty), without
/// zero-filling the buffer first. With `RWF_NOWAIT` it fails with `WouldBlock` as soon as any
/// part is not in the page cache, and the caller retries on the blocking pool.
fn pread_into(
    file: &File,
    buf: &mut Vec<u8>,
    len: usize,
    offset: u64,
    flags: libc::c_int,
) -> std::io::Result<()> {
    debug_assert!(buf.is_empty());
    buf.reserve_exact(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        let off = libc::off_t::try_from(offset + filled as u64)
            .map_err(|_| std::io::Error::other("offset too large"))?;
        // SAFETY: `iov` covers the vector's spare capacity, valid for writes of `iov_len` bytes
        // for the duration of the call; the descriptor belongs to `file`, open for reading.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, flags) };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    // Kernels or filesystems without RWF_NOWAIT: take the blocking path.
                    _ if flags != 0 && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    _ => return Err(e),
                }
            }
            // SAFETY: the kernel initialised the next `n` bytes of spare capacity.
            n => unsafe { buf.set_len(filled + n as usize) },
        }
    }
    Ok(())
}

fn read_error(key: BlobKey, e: std::io::Error) -> BlobError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        tracing::error!(%key, "data file is shorter than its index record says");
        BlobError::Corrupt { key, block: 0 }
    } else {
        BlobError::Io(e)
    }
}

fn verify(
    key: BlobKey,
    layout: &BlockLayout,
    size: u64,
    span: &ChunkSpan,
    raw: Bytes,
    start: u64,
    end: u64,
) -> Result<Chunk, BlobError> {
    let bs = u64::from(layout.block_size);
    let mut parts = Vec::with_capacity((span.last_block - span.first_block + 1) as usize);
    let mut at = 0usize;
    for block in span.first_block..=span.last_block {
        let n = layout.block_data_len(block, size) as usize;
        if BlockLayout::verify_block(&raw[at..at + n + CRC_LEN as usize]).is_none() {
            tracing::error!(%key, block, "checksum mismatch: refusing to serve damaged data");
            return Err(BlobError::Corrupt { key, block });
        }
        let block_start = block * bs;
        let lo = start.saturating_sub(block_start) as usize;
        let hi = (end - block_start).min(n as u64) as usize;
        parts.push(raw.slice(at + lo..at + hi));
        at += n + CRC_LEN as usize;
    }
    Ok(parts)
}
