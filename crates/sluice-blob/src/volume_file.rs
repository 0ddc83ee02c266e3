//! One volume file on disk (format in [`crate::volume`]): created durably, appended to in
//! batches with one `fdatasync` each (the group commit's unit), read back block-verified, and
//! recovered on open by cutting a torn tail. Blocking: call it off the async threads.
//!
//! What a crash leaves, at each step of an append: before the write, nothing; during the write
//! or before its `fdatasync` returns, some prefix of the batch (the caller acknowledged none of
//! it: it acknowledges only after `append` returns); after it, the whole batch.
//!
//! Opening never cuts anything by itself: bytes after the last whole record are a torn append
//! only if the index committed none of them, and only the store, holding the index, knows.
//! It calls [`VolumeFile::cut_tail`] when they are; until then the volume takes no appends.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BlobError;
use crate::layout::{BlockLayout, CRC_LEN};
use crate::volume::{self, Found, HEADER_LEN, RecordHeader, Stop, VolumeHeader};

/// Bytes read at a time when a volume is scanned on open.
const SCAN_WINDOW: usize = 8 << 20;

/// Longest record a volume holds (its files are small by definition): a header claiming more
/// is damage, not a record still arriving.
pub const MAX_RECORD: u64 = SCAN_WINDOW as u64 / 2;

/// An open volume, appended to at its end.
pub struct VolumeFile {
    path: PathBuf,
    file: File,
    header: VolumeHeader,
    /// Where the next record goes: the end of the last whole record.
    end: u64,
    /// Bytes after `end` that are no whole record, not yet cut: no append until they are.
    tail: Option<(u64, Stop)>,
    /// The file's length on disk: past `end` when zeros were written ahead (see
    /// [`VolumeFile::preallocate`]).
    allocated: u64,
    /// Zeros written ahead of the appends at a time; 0 for none.
    preallocate: u64,
}

/// What opening a volume found.
#[derive(Debug)]
pub struct Opened {
    pub volume: VolumeFile,
    /// Every whole record before the first that is not, in order.
    pub records: Vec<Found>,
    /// Bytes after the last whole record, and why the scan stopped there: a torn append, or
    /// damage (see [`VolumeFile::cut_tail`]).
    pub tail: Option<(u64, Stop)>,
}

impl std::fmt::Debug for VolumeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFile")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("end", &self.end)
            .field("tail", &self.tail)
            .finish()
    }
}

impl VolumeFile {
    /// Creates `path` (which must not exist) with its header, durably: the file and its
    /// directory entry are on disk when this returns.
    pub fn create(path: &Path, header: VolumeHeader) -> Result<Self, BlobError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let written = file
            .write_all_at(&header.encode(), 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| match path.parent() {
                Some(dir) => File::open(dir)?.sync_all(),
                None => Ok(()),
            });
        if let Err(e) = written {
            // A full disk, say: no headerless file is left behind.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(BlobError::from_io(e));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            header,
            end: HEADER_LEN,
            tail: None,
            allocated: HEADER_LEN,
            preallocate: 0,
        })
    }

    /// Opens a volume and scans its records (verifying bodies with `verify`), stopping at the
    /// first that is not whole.
    pub fn open(path: &Path, verify: bool) -> Result<Opened, BlobError> {
        let file = File::options().read(true).write(true).open(path)?;
        let header = read_header(&file, path)?;
        let len = file.metadata()?.len();
        let mut records = Vec::new();
        let (at, stop) = scan_file(&file, header.block_size, HEADER_LEN, len, verify, |found| {
            records.push(found);
            true
        })?;
        // Zeros after the last record are space written ahead, not damage.
        let tail = if at < len && stop == Some(Stop::Damaged) && all_zero(&file, at, len)? {
            None
        } else {
            (at < len).then(|| (len - at, stop.unwrap_or(Stop::Truncated)))
        };
        Ok(Opened {
            volume: Self {
                path: path.to_owned(),
                file,
                header,
                end: at,
                tail,
                allocated: len,
                preallocate: 0,
            },
            records,
            tail,
        })
    }

    pub fn header(&self) -> VolumeHeader {
        self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a volume the index says is `committed` bytes long, for appending: whatever
    /// follows (records whose batch the index never committed, so nobody was told they were
    /// stored, or a torn append) is cut off durably. `None` if the file is shorter than that:
    /// acknowledged records are missing, and the volume must take no more appends.
    pub fn open_committed(path: &Path, committed: u64) -> Result<Option<Self>, BlobError> {
        let file = File::options().read(true).write(true).open(path)?;
        let header = read_header(&file, path)?;
        let len = file.metadata()?.len();
        let committed = committed.max(HEADER_LEN);
        if len < committed {
            return Ok(None);
        }
        if len > committed {
            file.set_len(committed).map_err(BlobError::from_io)?;
            file.sync_all().map_err(BlobError::from_io)?;
        }
        Ok(Some(Self {
            path: path.to_owned(),
            file,
            header,
            end: committed,
            tail: None,
            allocated: committed,
            preallocate: 0,
        }))
    }

    /// Bytes in the volume, header included.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// Writes zeros `bytes` at a time ahead of the appends. An append into space already
    /// written changes neither the file's size nor its block map, so its `fdatasync` writes
    /// the data alone (no inode, no allocation): about half the kernel time of an append
    /// that grows the file, measured on ext4. The zeros are cut off when the volume is sealed
    /// or reopened.
    pub fn preallocate(&mut self, bytes: u64) {
        self.preallocate = bytes;
    }

    /// Cuts the space written ahead, durably: for a volume that takes no more appends.
    pub fn seal(&mut self) -> Result<(), BlobError> {
        if self.allocated > self.end && self.tail.is_none() {
            self.file.set_len(self.end).map_err(BlobError::from_io)?;
            self.file.sync_all().map_err(BlobError::from_io)?;
            self.allocated = self.end;
        }
        Ok(())
    }

    /// Cuts off, durably, what follows the last whole record (the caller has checked the
    /// index committed none of it); appends may follow.
    pub fn cut_tail(&mut self) -> Result<(), BlobError> {
        if self.tail.is_some() {
            self.file.set_len(self.end)?;
            self.file.sync_all()?;
            self.tail = None;
            self.allocated = self.end;
        }
        Ok(())
    }

    /// Takes back the records appended from `to` on (a batch whose commit was refused): the
    /// next append writes over them. Until then they lie past the length, where nothing
    /// reads and an open cuts them off.
    pub fn rewind(&mut self, to: u64) {
        if (HEADER_LEN..=self.end).contains(&to) {
            self.end = to;
        }
    }

    /// Appends `records` (each a header and its file's bytes) in one write and one
    /// `fdatasync`, and returns each one's place. On failure (a full disk) the volume is cut
    /// back to where it was, so it holds only whole records, and nothing of the batch counts.
    pub fn append(&mut self, records: &[(RecordHeader, &[u8])]) -> Result<Vec<Found>, BlobError> {
        if self.tail.is_some() {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "{}: bytes after the last whole record are not cut yet",
                self.path.display()
            ))));
        }
        let block_size = self.header.block_size;
        let mut out = Vec::new();
        let mut found = Vec::with_capacity(records.len());
        for (header, data) in records {
            if data.len() as u64 != header.length || header.record_len(block_size) > MAX_RECORD {
                return Err(BlobError::TooLarge { limit: MAX_RECORD });
            }
            let offset = self.end + out.len() as u64;
            found.push(Found {
                offset,
                body_offset: offset + header.encoded_len(),
                header: header.clone(),
            });
            volume::encode_record(header, data, block_size, &mut out);
        }
        let need = self.end + out.len() as u64;
        self.write_ahead(need);
        let written = self
            .file
            .write_all_at(&out, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whatever of the batch (or of the zeros ahead) reached the file is cut off again.
            let _ = self.file.set_len(self.end);
            let _ = self.file.sync_data();
            self.allocated = self.end;
            return Err(BlobError::from_io(e));
        }
        self.end = need;
        self.allocated = self.allocated.max(need);
        Ok(found)
    }

    /// Writes zeros up to [`Self::preallocate`] bytes past `need`, if the file is shorter
    /// than `need`. Best effort: on a disk without that much room, the zeros are cut off
    /// again and the append goes on without them.
    fn write_ahead(&mut self, need: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        if self.preallocate == 0 || need <= self.allocated {
            return;
        }
        let target = need + self.preallocate;
        let from = self.allocated.max(self.end);
        let mut at = from;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            if self.file.write_all_at(&ZEROS[..n], at).is_err() {
                let _ = self.file.set_len(from);
                return;
            }
            at += n as u64;
        }
        self.allocated = target;
    }

    /// The bytes `start..end` of the file whose record is `found`, each block verified.
    pub fn read(&self, found: &Found, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        read_body(
            &self.file,
            self.header.block_size,
            &BodyRef::of(found),
            start,
            end,
        )
    }
}

/// Where a file's bytes are in a volume: what the index keeps (with the volume's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub key: sluice_proto::BlobKey,
    /// Where the record's body starts in the volume.
    pub body_offset: u64,
    /// The file's length.
    pub length: u64,
}

impl BodyRef {
    pub fn of(found: &Found) -> Self {
        Self {
            key: found.header.key,
            body_offset: found.body_offset,
            length: found.header.length,
        }
    }
}

/// A volume opened for reading only: readers go on while its writer appends (positioned
/// reads of whole records never meet a record still being written: the index points at a
/// record only once its batch is on disk).
#[derive(Debug)]
pub struct VolumeReader {
    file: Arc<File>,
    header: VolumeHeader,
}

impl VolumeReader {
    pub fn open(path: &Path) -> Result<Self, BlobError> {
        let file = File::open(path)?;
        let header = read_header(&file, path)?;
        Ok(Self {
            file: Arc::new(file),
            header,
        })
    }

    /// The open file, shared: a reader holding it reads on after the volume is removed.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Hands every whole record of the first `len` bytes to `visit`, in order, until it
    /// returns false; returns where the last whole record ends and why the scan stopped early,
    /// if it did.
    pub fn scan(
        &self,
        len: u64,
        verify: bool,
        visit: impl FnMut(Found) -> bool,
    ) -> Result<(u64, Option<Stop>), BlobError> {
        self.scan_from(HEADER_LEN, len, verify, visit)
    }

    /// [`Self::scan`] from `start`, which must be where a record starts.
    pub fn scan_from(
        &self,
        start: u64,
        len: u64,
        verify: bool,
        visit: impl FnMut(Found) -> bool,
    ) -> Result<(u64, Option<Stop>), BlobError> {
        scan_file(
            &self.file,
            self.header.block_size,
            start,
            len,
            verify,
            visit,
        )
    }

    /// Where the next whole record header after `from` starts, before `len`: a scan stopped
    /// by damage goes on from there. A header is recognised by its magic and its checksum,
    /// which a few damaged bytes do not fake.
    pub fn next_record_after(&self, from: u64, len: u64) -> Result<Option<u64>, BlobError> {
        let mut buf = vec![0u8; SCAN_WINDOW];
        let mut at = from + 1;
        while at < len {
            let want = usize::try_from((len - at).min(SCAN_WINDOW as u64)).unwrap_or(SCAN_WINDOW);
            self.file.read_exact_at(&mut buf[..want], at)?;
            for i in 0..want.saturating_sub(1) {
                if &buf[i..i + 2] == volume::RECORD_MAGIC
                    && matches!(volume::parse_record_header(&buf[i..want]), Ok(Some(_)))
                {
                    return Ok(Some(at + i as u64));
                }
            }
            // Overlap the windows by a header's longest length so none is cut in two.
            if want < SCAN_WINDOW {
                break;
            }
            at += (want - volume::MAX_HEADER_LEN) as u64;
        }
        Ok(None)
    }

    pub fn header(&self) -> VolumeHeader {
        self.header
    }

    /// The header of the record at `offset` (read with one positioned read, or two for a
    /// record whose meta is unusually long).
    pub fn record_header(&self, offset: u64) -> Result<RecordHeader, BlobError> {
        let mut buf = vec![0u8; 512];
        loop {
            let got = read_up_to(&self.file, &mut buf, offset)?;
            match volume::parse_record_header(&buf[..got]) {
                Ok(Some(header)) => return Ok(header),
                Ok(None) if got == buf.len() && buf.len() < volume::MAX_HEADER_LEN => {
                    buf.resize(volume::MAX_HEADER_LEN, 0);
                }
                _ => return Err(BlobError::BadRecord),
            }
        }
    }

    /// The bytes `start..end` of the file at `body`, each block verified.
    pub fn read(&self, body: &BodyRef, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        read_body(&self.file, self.header.block_size, body, start, end)
    }
}

/// Scans the records of a volume `len` bytes long from its first, handing each whole one to
/// `visit` (which may stop the scan by returning false); returns where the last whole record
/// ends and why the scan stopped before `len`, if it did.
fn scan_file(
    file: &File,
    block_size: u32,
    start: u64,
    len: u64,
    verify: bool,
    mut visit: impl FnMut(Found) -> bool,
) -> Result<(u64, Option<Stop>), BlobError> {
    let mut at = start;
    let mut buf = vec![0u8; SCAN_WINDOW];
    while at < len {
        let want = usize::try_from((len - at).min(SCAN_WINDOW as u64)).unwrap_or(SCAN_WINDOW);
        file.read_exact_at(&mut buf[..want], at)?;
        let found = volume::scan(&buf[..want], at, block_size, verify);
        let progressed = found.valid_end > at;
        for record in found.records {
            if !visit(record) {
                return Ok((at, None));
            }
        }
        at = found.valid_end;
        match found.stop {
            None => {}
            // The window ended inside a record: read on from that record's start.
            Some(Stop::Truncated) if progressed => {}
            // Nothing whole in a full window: a header claiming more than any record of
            // ours (damage). At the end of the file: an append cut short.
            Some(Stop::Truncated) => {
                let why = if want == SCAN_WINDOW {
                    Stop::Damaged
                } else {
                    Stop::Truncated
                };
                return Ok((at, Some(why)));
            }
            Some(Stop::Damaged) => return Ok((at, Some(Stop::Damaged))),
        }
    }
    Ok((at, None))
}

/// Whether the bytes `from..to` of `file` are all zero.
fn all_zero(file: &File, from: u64, to: u64) -> Result<bool, BlobError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The header of the volume open as `file`, checked.
fn read_header(file: &File, path: &Path) -> Result<VolumeHeader, BlobError> {
    let mut head = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|_| BlobError::WrongFormat(format!("{}: no volume header", path.display())))?;
    VolumeHeader::parse(&head).ok_or_else(|| {
        BlobError::WrongFormat(format!("{}: not a volume of format 1", path.display()))
    })
}

/// One positioned read of the blocks covering `start..end` of a body, each block verified; a
/// damaged one is `Corrupt { key, block }`, as for data files.
fn read_body(
    file: &File,
    block_size: u32,
    body: &BodyRef,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, BlobError> {
    let length = body.length;
    let end = end.min(length);
    if start >= end {
        return Ok(Vec::new());
    }
    let bs = u64::from(block_size.max(1));
    let stride = bs + CRC_LEN;
    let (first, last) = (start / bs, (end - 1) / bs);
    let from = body.body_offset + first * stride;
    let to = body.body_offset + last * stride + (length - last * bs).min(bs) + CRC_LEN;
    let mut stored = vec![0u8; usize::try_from(to - from).map_err(|_| BlobError::BadRecord)?];
    file.read_exact_at(&mut stored, from)?;
    let mut out = Vec::with_capacity((end - start) as usize);
    for (i, block) in stored.chunks(stride as usize).enumerate() {
        let index = first + i as u64;
        let data = BlockLayout::verify_block(block).ok_or(BlobError::Corrupt {
            key: body.key,
            block: index,
        })?;
        let block_start = index * bs;
        let lo = start.saturating_sub(block_start) as usize;
        let hi = (end - block_start).min(data.len() as u64) as usize;
        out.extend_from_slice(&data[lo..hi]);
    }
    Ok(out)
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns how much it read.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, BlobError> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::RecordKind;
    use sluice_proto::BlobKey;

    fn put(key: u8, data: &[u8], sequence: u64) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Put,
            key: BlobKey::from_bytes([key; 16]),
            length: data.len() as u64,
            sequence,
            meta: vec![key],
        }
    }

    /// A new volume `id` with blocks of `block_size` in `dir`, and its path.
    fn new_volume(dir: &Path, id: u64, block_size: u32) -> (VolumeFile, PathBuf) {
        let path = dir.join(format!("{id:08}.vol"));
        let volume = VolumeFile::create(
            &path,
            VolumeHeader {
                volume_id: id,
                block_size,
            },
        )
        .unwrap();
        (volume, path)
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_batch_is_appended_read_back_and_found_again_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, path) = new_volume(dir.path(), 1, 100);
        let (a, b) = (bytes(250, 1), bytes(5, 2));
        let placed = v
            .append(&[(put(1, &a, 1), &a[..]), (put(2, &b, 2), &b[..])])
            .unwrap();
        assert_eq!(v.read(&placed[0], 0, 250).unwrap(), a);
        assert_eq!(
            v.read(&placed[0], 95, 205).unwrap(),
            &a[95..205],
            "a range across blocks"
        );
        assert_eq!(v.read(&placed[1], 0, 5).unwrap(), b);
        let len = v.len();
        drop(v);

        let opened = VolumeFile::open(&path, true).unwrap();
        assert_eq!(opened.tail, None);
        assert_eq!(opened.records, placed);
        assert_eq!(opened.volume.len(), len);
    }

    #[test]
    fn a_torn_append_is_found_on_open_and_once_cut_the_next_append_goes_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, path) = new_volume(dir.path(), 2, 64);
        let a = bytes(100, 3);
        v.append(&[(put(1, &a, 1), &a[..])]).unwrap();
        let whole = v.len();
        drop(v);
        // A crash in the middle of the next append: half a record at the end.
        let mut torn = Vec::new();
        let b = bytes(300, 4);
        volume::encode_record(&put(2, &b, 2), &b, 64, &mut torn);
        let file = File::options().append(true).open(&path).unwrap();
        file.write_all_at(&torn[..torn.len() / 2], whole).unwrap();
        drop(file);

        let mut opened = VolumeFile::open(&path, true).unwrap();
        assert_eq!(opened.records.len(), 1);
        assert_eq!(
            opened.tail,
            Some(((torn.len() / 2) as u64, Stop::Truncated))
        );
        assert!(
            opened
                .volume
                .append(&[(put(3, b"x", 3), &b"x"[..])])
                .is_err(),
            "no append before the tail is dealt with"
        );
        opened.volume.cut_tail().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        let placed = opened.volume.append(&[(put(2, &b, 2), &b[..])]).unwrap();
        assert_eq!(placed[0].offset, whole);
        assert_eq!(opened.volume.read(&placed[0], 0, 300).unwrap(), b);
        assert_eq!(VolumeFile::open(&path, true).unwrap().records.len(), 2);
    }

    #[test]
    fn a_damaged_block_is_refused_by_name_and_stops_a_verifying_open_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, path) = new_volume(dir.path(), 3, 64);
        let (a, b) = (bytes(200, 5), bytes(200, 6));
        let placed = v
            .append(&[(put(1, &a, 1), &a[..]), (put(2, &b, 2), &b[..])])
            .unwrap();
        // Flip a byte of the second file's second block.
        let at = placed[1].body_offset + 64 + 4 + 10;
        let mut byte = [0u8];
        v.file.read_exact_at(&mut byte, at).unwrap();
        v.file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        match v.read(&placed[1], 0, 200) {
            Err(BlobError::Corrupt { key, block: 1 }) => assert_eq!(key, placed[1].header.key),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.read(&placed[1], 0, 64).unwrap(),
            &b[..64],
            "other blocks still read"
        );
        let len = v.len();
        drop(v);
        let opened = VolumeFile::open(&path, true).unwrap();
        assert_eq!(opened.records.len(), 1);
        assert_eq!(opened.tail.map(|(_, why)| why), Some(Stop::Damaged));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "opening cuts nothing: an acknowledged record may be repaired"
        );
    }

    #[test]
    fn a_file_that_is_no_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.vol");
        std::fs::write(&path, b"not a volume at all, but long enough for a header").unwrap();
        assert!(matches!(
            VolumeFile::open(&path, true),
            Err(BlobError::WrongFormat(_))
        ));
    }

    #[test]
    fn a_full_disk_refuses_the_batch_and_leaves_the_volume_whole() {
        let disk = sluice_testkit::small_disk::SmallDisk::mount("2m");
        let (mut v, path) = new_volume(disk.path(), 4, 4096);
        let a = bytes(1000, 7);
        v.append(&[(put(1, &a, 1), &a[..])]).unwrap();
        let before = v.len();
        let hog = disk.fill_leaving("hog", 8 << 10);
        let big = bytes(200_000, 8);
        match v.append(&[(put(2, &big, 2), &big[..])]) {
            Err(BlobError::NoSpace) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(v.len(), before);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            before,
            "the partial record is cut"
        );
        std::fs::remove_file(hog).unwrap();
        let placed = v.append(&[(put(2, &big, 2), &big[..])]).unwrap();
        assert_eq!(
            v.read(&placed[0], 0, 200_000).unwrap(),
            big,
            "it resumes once there is room"
        );
        drop(v);
        let opened = VolumeFile::open(&path, true).unwrap();
        assert_eq!((opened.records.len(), opened.tail), (2, None));
    }

    #[test]
    fn a_reader_reads_whole_records_while_the_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, path) = new_volume(dir.path(), 5, 128);
        let reader = VolumeReader::open(&path).unwrap();
        assert_eq!(reader.header().volume_id, 5);
        let a = bytes(1000, 9);
        let first = v.append(&[(put(1, &a, 1), &a[..])]).unwrap();
        let body = BodyRef::of(&first[0]);
        // The writer goes on; the reader's record is untouched by it.
        for i in 0..20u8 {
            let more = bytes(300, i);
            v.append(&[(put(10 + i, &more, 10 + u64::from(i)), &more[..])])
                .unwrap();
            assert_eq!(reader.read(&body, 0, 1000).unwrap(), a);
            assert_eq!(
                reader.read(&body, 127, 129).unwrap(),
                &a[127..129],
                "across a block edge"
            );
        }
        assert_eq!(
            reader.read(&body, 990, 5000).unwrap(),
            &a[990..],
            "clamped to the file"
        );
        assert!(reader.read(&body, 1000, 1000).unwrap().is_empty());
        assert!(matches!(
            VolumeReader::open(&dir.path().join("missing.vol")),
            Err(BlobError::Io(_))
        ));
    }
}
