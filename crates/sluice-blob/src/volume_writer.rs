//! Group commit for a volume: one thread owns the volume's appends; every record handed to it
//! while its previous batch was being written and synced goes into the next batch, so
//! concurrent uploads share one write and one `fdatasync` ([`VolumeFile::append`]). A caller
//! hears back (and may acknowledge) only once its batch is on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;

use crate::BlobError;
use crate::volume::{Found, RecordHeader};
use crate::volume_file::VolumeFile;

/// Records waiting for the writer, at most: a caller beyond waits to hand its record over.
const QUEUE: usize = 4096;

struct Request {
    header: RecordHeader,
    data: Bytes,
    reply: tokio::sync::oneshot::Sender<Result<Found, BlobError>>,
}

/// What the writer has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterCounts {
    /// Batches written (each one write and one `fdatasync`).
    pub batches: AtomicU64,
    pub records: AtomicU64,
}

/// The appending side of one volume.
pub struct VolumeWriter {
    requests: mpsc::SyncSender<Request>,
    counts: Arc<WriterCounts>,
}

impl VolumeWriter {
    /// Starts the writer thread over `volume`; a batch holds at most `max_batch_bytes` of file
    /// bytes (one record always fits, whatever its size).
    pub fn start(mut volume: VolumeFile, max_batch_bytes: usize) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::sync_channel::<Request>(QUEUE);
        let counts = Arc::new(WriterCounts::default());
        let seen = counts.clone();
        std::thread::Builder::new()
            .name("volume writer".into())
            .spawn(move || {
                // Ends when every sender is gone.
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    let mut bytes = batch[0].data.len();
                    while bytes < max_batch_bytes {
                        match queue.try_recv() {
                            Ok(next) => {
                                bytes += next.data.len();
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    let records: Vec<(RecordHeader, &[u8])> = batch
                        .iter()
                        .map(|r| (r.header.clone(), &r.data[..]))
                        .collect();
                    let result = volume.append(&records);
                    seen.batches.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(places) => {
                            seen.records
                                .fetch_add(places.len() as u64, Ordering::Relaxed);
                            for (request, place) in batch.into_iter().zip(places) {
                                let _ = request.reply.send(Ok(place));
                            }
                        }
                        Err(e) => {
                            let no_space = matches!(e, BlobError::NoSpace);
                            let why = e.to_string();
                            for request in batch {
                                let _ = request.reply.send(Err(if no_space {
                                    BlobError::NoSpace
                                } else {
                                    BlobError::Io(std::io::Error::other(why.clone()))
                                }));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { requests, counts })
    }

    /// Appends one record and returns its place once its batch is on disk.
    pub async fn append(&self, header: RecordHeader, data: Bytes) -> Result<Found, BlobError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let requests = self.requests.clone();
        let request = Request {
            header,
            data,
            reply,
        };
        // The queue is bounded: waiting for room is blocking, so off the async threads.
        tokio::task::spawn_blocking(move || requests.send(request))
            .await
            .map_err(|_| BlobError::Closed)?
            .map_err(|_| BlobError::Closed)?;
        answer.await.map_err(|_| BlobError::Closed)?
    }

    pub fn counts(&self) -> &WriterCounts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{RecordKind, VolumeHeader};
    use sluice_proto::BlobKey;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_share_batches_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.vol");
        let volume = VolumeFile::create(
            &path,
            VolumeHeader {
                volume_id: 1,
                block_size: 4096,
            },
        )
        .unwrap();
        let writer = Arc::new(VolumeWriter::start(volume, 4 << 20).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(vec![(i % 251) as u8; 5000]);
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&i.to_le_bytes());
                let header = RecordHeader {
                    kind: RecordKind::Put,
                    key: BlobKey::from_bytes(key),
                    length: 5000,
                    sequence: u64::from(i),
                    meta: Vec::new(),
                };
                writer.append(header, data).await.unwrap()
            }));
        }
        let mut places = Vec::new();
        for t in tasks {
            places.push(t.await.unwrap());
        }
        let counts = writer.counts();
        assert_eq!(counts.records.load(Ordering::Relaxed), 200);
        let batches = counts.batches.load(Ordering::Relaxed);
        assert!(
            batches < 200,
            "200 concurrent appends took {batches} fsyncs"
        );
        drop(writer);
        let opened = VolumeFile::open(&path, true).unwrap();
        assert_eq!(opened.records.len(), 200);
        assert_eq!(opened.tail, None);
        for place in places {
            let i = u32::from_le_bytes(place.header.key.as_bytes()[..4].try_into().unwrap());
            assert_eq!(
                opened.volume.read(&place, 0, 5000).unwrap(),
                vec![(i % 251) as u8; 5000]
            );
        }
    }
}
