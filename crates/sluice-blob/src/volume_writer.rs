//! Group commit for volumes: one thread owns the appends of the active volume; every record
//! handed to it while its previous batch was being written and synced goes into the next
//! batch, so concurrent uploads share one write and one `fdatasync` ([`VolumeFile::append`]).
//!
//! The writer does not answer callers itself: it hands each batch that reached the disk to
//! `on_batch` (the store sends it to the index, whose commit answers them, and returns once
//! that commit is over); what arrives meanwhile gathers for the next batch. A failed batch
//! answers its callers through [`Pending::failed`].
//!
//! When the active volume reaches its size, the writer seals it (appends nothing more to it)
//! and goes on in a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;

use crate::BlobError;
use crate::volume::{Found, RecordHeader};
use crate::volume_file::VolumeFile;

/// Records waiting for the writer, at most: a caller beyond waits to hand its record over.
const QUEUE: usize = 4096;

/// What waits on a record: told of the failure if its batch fails; otherwise handed to
/// `on_batch` with the record's place.
pub trait Pending: Send + 'static {
    fn failed(self, error: BlobError);
}

struct Request<T> {
    header: RecordHeader,
    data: Bytes,
    then: T,
}

/// A batch on disk: the volume it went to (and its block size), the volume's length after it,
/// and each record's place with what waits on it.
pub struct Batch<T> {
    pub volume: u64,
    /// The block size the volume lays records out in.
    pub block_size: u32,
    pub end: u64,
    pub records: Vec<(Found, T)>,
}

/// What the writer has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterCounts {
    /// Batches written (each one write and one `fdatasync`).
    pub batches: AtomicU64,
    pub records: AtomicU64,
    /// The volume appended to now (never compacted while it is).
    pub active: AtomicU64,
    /// The sequence number of the last record handed to the disk.
    pub sequence: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// File bytes in one batch at most (one record always fits, whatever its size).
    pub max_batch_bytes: usize,
    /// A volume this long is sealed and the writer goes on in a new one.
    pub roll_at: u64,
}

/// The appending side of a store's volumes.
pub struct VolumeWriter<T> {
    requests: mpsc::SyncSender<Request<T>>,
    counts: Arc<WriterCounts>,
}

impl<T> Clone for VolumeWriter<T> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            counts: self.counts.clone(),
        }
    }
}

impl<T: Pending> VolumeWriter<T> {
    /// Starts the writer thread over `volume`. `next_volume(id)` makes the volume that follows
    /// the one of `id` when that one is full; `sequence` is the last sequence number used.
    pub fn start(
        mut volume: VolumeFile,
        limits: WriterLimits,
        sequence: u64,
        mut next_volume: impl FnMut(u64) -> Result<VolumeFile, BlobError> + Send + 'static,
        mut on_batch: impl FnMut(Batch<T>) -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::sync_channel::<Request<T>>(QUEUE);
        let counts = Arc::new(WriterCounts::default());
        counts
            .active
            .store(volume.header().volume_id, Ordering::Relaxed);
        counts.sequence.store(sequence, Ordering::Relaxed);
        let seen = counts.clone();
        std::thread::Builder::new()
            .name("sluice-volume-writer".into())
            .spawn(move || {
                let mut sequence = sequence;
                // Ends when every sender is gone.
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    let mut bytes = batch[0].data.len();
                    while bytes < limits.max_batch_bytes {
                        match queue.try_recv() {
                            Ok(next) => {
                                bytes += next.data.len();
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    for request in &mut batch {
                        sequence += 1;
                        request.header.sequence = sequence;
                    }
                    let records: Vec<(RecordHeader, &[u8])> = batch
                        .iter()
                        .map(|r| (r.header.clone(), &r.data[..]))
                        .collect();
                    let start = volume.len();
                    let result = volume.append(&records);
                    drop(records);
                    seen.batches.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(places) => {
                            seen.records
                                .fetch_add(places.len() as u64, Ordering::Relaxed);
                            seen.sequence.store(sequence, Ordering::Relaxed);
                            let committed = on_batch(Batch {
                                volume: volume.header().volume_id,
                                block_size: volume.header().block_size,
                                end: volume.len(),
                                records: places
                                    .into_iter()
                                    .zip(batch.into_iter().map(|r| r.then))
                                    .collect(),
                            });
                            // A batch its commit refused is no record: the next one is
                            // written over it, so no later commit's length takes it in (a
                            // load would replay it).
                            if !committed {
                                volume.rewind(start);
                            }
                        }
                        Err(e) => {
                            let no_space = matches!(e, BlobError::NoSpace);
                            let why = e.to_string();
                            for request in batch {
                                request.then.failed(if no_space {
                                    BlobError::NoSpace
                                } else {
                                    BlobError::Io(std::io::Error::other(why.clone()))
                                });
                            }
                        }
                    }
                    if volume.len() >= limits.roll_at {
                        let id = volume.header().volume_id;
                        if let Err(e) = volume.seal() {
                            tracing::warn!(volume = id, error = %e, "could not cut the space written ahead of a sealed volume");
                        }
                        match next_volume(id) {
                            Ok(next) => {
                                tracing::info!(sealed = id, next = next.header().volume_id, "volume full; appending to a new one");
                                seen.active
                                    .store(next.header().volume_id, Ordering::Relaxed);
                                volume = next;
                            }
                            // A full disk, say: go on appending here, and try again after
                            // the next batch.
                            Err(e) => {
                                tracing::warn!(volume = id, error = %e, "could not start a new volume; appending to the full one")
                            }
                        }
                    }
                }
                // Closed: leave the volume as long as its records, without the zeros ahead.
                if let Err(e) = volume.seal() {
                    tracing::warn!(error = %e, "could not cut the space written ahead of the active volume");
                }
            })?;
        Ok(Self { requests, counts })
    }

    /// Hands one record to the writer (its sequence number is the writer's to set); `then`
    /// hears what becomes of it. Blocking while the queue is full: call it off the async
    /// threads, or through [`Self::submit`].
    pub fn submit_blocking(
        &self,
        header: RecordHeader,
        data: Bytes,
        then: T,
    ) -> Result<(), BlobError> {
        self.requests
            .send(Request { header, data, then })
            .map_err(|_| BlobError::Closed)
    }

    /// [`Self::submit_blocking`] for async callers: only a full queue costs a hop to the
    /// blocking pool.
    pub async fn submit(
        &self,
        header: RecordHeader,
        data: Bytes,
        then: T,
    ) -> Result<(), BlobError> {
        match self.requests.try_send(Request { header, data, then }) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(BlobError::Closed),
            Err(mpsc::TrySendError::Full(request)) => {
                let requests = self.requests.clone();
                tokio::task::spawn_blocking(move || requests.send(request))
                    .await
                    .map_err(|_| BlobError::Closed)?
                    .map_err(|_| BlobError::Closed)
            }
        }
    }

    pub fn counts(&self) -> &WriterCounts {
        &self.counts
    }

    pub fn counts_handle(&self) -> Arc<WriterCounts> {
        self.counts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{RecordKind, VolumeHeader};
    use sluice_proto::BlobKey;

    type Reply = tokio::sync::oneshot::Sender<Result<(u64, Found), BlobError>>;

    impl Pending for Reply {
        fn failed(self, error: BlobError) {
            let _ = self.send(Err(error));
        }
    }

    fn volume(dir: &std::path::Path, id: u64) -> VolumeFile {
        VolumeFile::create(
            &dir.join(format!("{id:08}.vol")),
            VolumeHeader {
                volume_id: id,
                block_size: 4096,
            },
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_share_batches_land_in_order_and_roll_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let writer: VolumeWriter<Reply> = VolumeWriter::start(
            volume(&root, 1),
            WriterLimits {
                max_batch_bytes: 100_000,
                roll_at: 300_000,
            },
            10,
            move |id| Ok(volume(&root, id + 1)),
            |batch: Batch<Reply>| {
                for (found, reply) in batch.records {
                    let _ = reply.send(Ok((batch.volume, found)));
                }
                true
            },
        )
        .unwrap();
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
                    sequence: 0,
                    meta: Vec::new(),
                };
                let (reply, answer) = tokio::sync::oneshot::channel();
                writer.submit(header, data, reply).await.unwrap();
                answer.await.unwrap().unwrap()
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
        assert_eq!(counts.sequence.load(Ordering::Relaxed), 210);
        let active = counts.active.load(Ordering::Relaxed);
        assert!(
            active > 1,
            "1 MB of records in volumes of 300 KB rolled over"
        );
        drop(writer);
        let mut sequences: Vec<u64> = places.iter().map(|(_, f)| f.header.sequence).collect();
        sequences.sort_unstable();
        assert_eq!(
            sequences,
            (11..=210).collect::<Vec<_>>(),
            "each its own number"
        );
        for id in 1..=active {
            let opened = VolumeFile::open(&dir.path().join(format!("{id:08}.vol")), true).unwrap();
            assert_eq!(opened.tail, None);
            for found in opened.records {
                let i = u32::from_le_bytes(found.header.key.as_bytes()[..4].try_into().unwrap());
                assert!(places.contains(&(id, found.clone())));
                assert_eq!(
                    opened.volume.read(&found, 0, 5000).unwrap(),
                    vec![(i % 251) as u8; 5000]
                );
            }
        }
    }
}
