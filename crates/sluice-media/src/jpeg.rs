//! JPEG scan boundaries (ITU T.81 Annex B).
//!
//! A progressive JPEG is a header (SOI, APPn, DQT, SOF2, DHT...) followed by scans: an SOS
//! segment and its entropy-coded data, with tables (DHT, DQT, DRI, COM, APPn) allowed between
//! scans. Inside entropy-coded data `FF 00` is a stuffed `FF`, `FF D0`..`FF D7` are restart
//! markers and `FF FF` is fill; any other marker ends the scan. A prefix of the file cut where a
//! scan ends and closed with EOI is a valid image that shows every scan up to there.
//!
//! The parser takes whatever prefix has arrived: what is complete is reported, the rest is
//! left for later. It never panics and never reads past the slice.

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;

/// What a (possibly incomplete) JPEG prefix holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanBoundaries {
    /// The frame is progressive (SOF2, or SOF6/SOF10/SOF14).
    pub progressive: bool,
    /// Offset where the frame header (SOFn) segment ends; 0 if not seen yet.
    pub header_end: usize,
    /// For each complete scan, the offset just past its entropy-coded data.
    pub scan_ends: Vec<usize>,
    /// Offset just past EOI, if the file is complete.
    pub eoi_end: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("not a JPEG (no SOI marker)")]
    NotJpeg,
    #[error("malformed JPEG at byte {0}")]
    Malformed(usize),
    #[error("a JPEG scan is longer than the {0} bytes tracked")]
    ScanTooLong(usize),
}

impl ScanBoundaries {
    /// Where to cut a prefix so it is a whole image once EOI is appended: just past the last
    /// complete scan. `None` before the first scan is whole.
    pub fn last_complete_scan(&self) -> Option<usize> {
        self.scan_ends.last().copied()
    }

    /// The first scan boundary at or after `offset` (a committed size moved up so the cut holds
    /// whole scans), and never before the first scan's end.
    pub fn boundary_at_or_after(&self, offset: usize) -> Option<usize> {
        let first = *self.scan_ends.first()?;
        self.scan_ends
            .iter()
            .copied()
            .find(|&end| end >= offset.max(first))
    }
}

/// Reads the structure of `data`, which may be any prefix of a JPEG file.
pub fn scan_boundaries(data: &[u8]) -> Result<ScanBoundaries, JpegError> {
    check_soi(data)?;
    let mut out = ScanBoundaries::default();
    parse_from(data, 0, 2, &mut out)?;
    Ok(out)
}

fn check_soi(data: &[u8]) -> Result<(), JpegError> {
    if data.len() >= 2 && (data[0] != 0xFF || data[1] != SOI) {
        return Err(JpegError::NotJpeg);
    }
    Ok(())
}

/// Parses segments of `data` (the file's bytes from offset `base` on) starting at local offset
/// `at`, adding what it finds to `out` in file offsets. Returns the local offset parsing can
/// resume from later: just past the last complete scan, or `at` when none completed.
fn parse_from(
    data: &[u8],
    base: usize,
    mut at: usize,
    out: &mut ScanBoundaries,
) -> Result<usize, JpegError> {
    let mut resume = at;
    loop {
        // Between segments: a marker, possibly preceded by fill bytes.
        let Some(marker_at) = next_marker(data, at).map_err(|e| e.shifted(base))? else {
            return Ok(resume);
        };
        let Some(&marker) = data.get(marker_at + 1) else {
            return Ok(resume);
        };
        match marker {
            EOI => {
                out.eoi_end = Some(base + marker_at + 2);
                return Ok(marker_at + 2);
            }
            TEM | 0xD0..=0xD7 => {
                at = marker_at + 2;
                continue;
            }
            SOI => return Err(JpegError::Malformed(base + marker_at)),
            _ => {}
        }
        // A segment with a length.
        let Some(len_bytes) = data.get(marker_at + 2..marker_at + 4) else {
            return Ok(resume);
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(JpegError::Malformed(base + marker_at + 2));
        }
        let segment_end = marker_at + 2 + len;
        if segment_end > data.len() {
            return Ok(resume);
        }
        if is_sof(marker) {
            out.progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
            out.header_end = base + segment_end;
        }
        if marker != SOS {
            at = segment_end;
            continue;
        }
        if out.header_end == 0 {
            return Err(JpegError::Malformed(base + marker_at));
        }
        // Entropy-coded data runs to the next marker that is not stuffing, restart or fill.
        match entropy_end(data, segment_end) {
            Some(end) => {
                out.scan_ends.push(base + end);
                at = end;
                resume = end;
            }
            None => return Ok(resume),
        }
    }
}

impl JpegError {
    fn shifted(self, base: usize) -> Self {
        match self {
            JpegError::Malformed(at) => JpegError::Malformed(base + at),
            other => other,
        }
    }
}

fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Offset of the next `FF xx` marker at or after `at`, skipping fill bytes; `Ok(None)` if the
/// data ends first. Anything but FF where a marker must be is malformed.
fn next_marker(data: &[u8], at: usize) -> Result<Option<usize>, JpegError> {
    let mut i = at;
    loop {
        match (data.get(i), data.get(i + 1)) {
            (None, _) => return Ok(None),
            (Some(&0xFF), None) => return Ok(None),
            (Some(&0xFF), Some(&0xFF)) => i += 1,
            (Some(&0xFF), Some(&0x00)) => return Err(JpegError::Malformed(i)),
            (Some(&0xFF), Some(_)) => return Ok(Some(i)),
            (Some(_), _) => return Err(JpegError::Malformed(i)),
        }
    }
}

/// Where the entropy-coded data starting at `from` ends (the offset of the marker that
/// follows it); `None` if the data ends first.
fn entropy_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < data.len() {
        if data[i] != 0xFF {
            i += 1;
            continue;
        }
        match data[i + 1] {
            0x00 | 0xD0..=0xD7 => i += 2,
            // Fill: FF FF ... FF xx; look at the last FF.
            0xFF => i += 1,
            _ => return Some(i),
        }
    }
    None
}

/// The bytes to serve for a JPEG still arriving: the prefix up to its last complete scan,
/// closed with EOI; `None` if no scan is complete yet (or `data` is not a JPEG).
pub fn viewable_prefix(data: &[u8]) -> Option<Vec<u8>> {
    let layout = scan_boundaries(data).ok()?;
    if layout.eoi_end.is_some() {
        return Some(data[..layout.eoi_end?].to_vec());
    }
    let cut = layout.last_complete_scan()?;
    let mut out = Vec::with_capacity(cut + 2);
    out.extend_from_slice(&data[..cut]);
    out.extend_from_slice(&[0xFF, EOI]);
    Some(out)
}

/// Follows a JPEG as it arrives, chunk by chunk, keeping only the bytes since the last complete
/// scan (the part a later chunk can still change): memory stays near the largest scan, however
/// large the file, and no byte is parsed more than once per chunk of its scan.
#[derive(Debug, Clone)]
pub struct ScanTracker {
    layout: ScanBoundaries,
    /// Bytes from file offset `base` on, not yet part of a complete scan.
    tail: Vec<u8>,
    base: usize,
    /// Where parsing restarts inside `tail`.
    resume: usize,
    received: usize,
    max_tail: usize,
    failed: Option<JpegError>,
}

impl ScanTracker {
    /// `max_tail`: the most bytes kept while a scan is incomplete; a longer scan stops the
    /// tracking (the file is then treated as opaque bytes).
    pub fn new(max_tail: usize) -> Self {
        Self {
            layout: ScanBoundaries::default(),
            tail: Vec::new(),
            base: 0,
            resume: 2,
            received: 0,
            max_tail,
            failed: None,
        }
    }

    /// Adds the next bytes of the file. Once an error is returned the tracker stays failed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), JpegError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.received += bytes.len();
        if self.layout.eoi_end.is_some() {
            return Ok(());
        }
        self.tail.extend_from_slice(bytes);
        let result = (|| {
            if self.base == 0 {
                check_soi(&self.tail)?;
                if self.tail.len() < 2 {
                    return Ok(());
                }
            }
            let resume = parse_from(&self.tail, self.base, self.resume, &mut self.layout)?;
            // Everything before the resume point is settled: drop it.
            self.tail.drain(..resume);
            self.base += resume;
            self.resume = 0;
            if self.tail.len() > self.max_tail {
                return Err(JpegError::ScanTooLong(self.max_tail));
            }
            Ok(())
        })();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.tail = Vec::new();
        }
        result
    }

    pub fn layout(&self) -> &ScanBoundaries {
        &self.layout
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Whether the bytes so far are (the start of) a well-formed JPEG.
    pub fn is_jpeg(&self) -> bool {
        self.failed.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_made_stream() {
        // SOI, SOF2 (len 8), SOS (len 6) + data with stuffing and a restart, DHT between scans,
        // SOS + data, EOI.
        let mut f = vec![0xFF, SOI];
        f.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x08, 8, 0, 1, 0, 1, 1]);
        let sof_end = f.len();
        f.extend_from_slice(&[0xFF, SOS, 0x00, 0x06, 1, 2, 3, 4]);
        f.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56]);
        let first = f.len();
        f.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x03, 9]);
        f.extend_from_slice(&[0xFF, SOS, 0x00, 0x06, 1, 2, 3, 4, 0x78, 0x9A]);
        // A fill byte before EOI belongs to neither: the scan ends where the marker's FF is.
        f.push(0xFF);
        let second = f.len();
        f.extend_from_slice(&[0xFF, EOI]);
        let layout = scan_boundaries(&f).unwrap();
        assert!(layout.progressive);
        assert_eq!(layout.header_end, sof_end);
        assert_eq!(layout.scan_ends, vec![first, second]);
        assert_eq!(layout.eoi_end, Some(f.len()));
        assert_eq!(layout.boundary_at_or_after(0), Some(first));
        assert_eq!(layout.boundary_at_or_after(first + 1), Some(second));
        // Cut in the second scan: only the first is whole.
        let partial = scan_boundaries(&f[..second - 2]).unwrap();
        assert_eq!(partial.scan_ends, vec![first]);
        let view = viewable_prefix(&f[..second - 2]).unwrap();
        assert_eq!(&view[..first], &f[..first]);
        assert_eq!(&view[first..], &[0xFF, EOI]);
        assert_eq!(viewable_prefix(&f[..first - 1]), None);
    }

    #[test]
    fn refuses_what_is_not_jpeg() {
        assert_eq!(scan_boundaries(b"GIF89a"), Err(JpegError::NotJpeg));
        assert!(scan_boundaries(&[0xFF, SOI, 0x12]).is_err());
        assert!(scan_boundaries(&[0xFF, SOI, 0xFF, 0xC4, 0x00, 0x01]).is_err());
        // SOS before any frame header.
        assert!(scan_boundaries(&[0xFF, SOI, 0xFF, SOS, 0x00, 0x02, 0xFF, EOI]).is_err());
        assert_eq!(viewable_prefix(b"not a jpeg"), None);
        assert_eq!(scan_boundaries(&[0xFF]).unwrap(), ScanBoundaries::default());
    }

    /// The tracker fed in pieces agrees with a parse of the whole prefix.
    fn tracked(data: &[u8], cuts: &[usize]) -> Result<ScanBoundaries, JpegError> {
        let mut tracker = ScanTracker::new(usize::MAX);
        let mut at = 0;
        for &cut in cuts.iter().chain([data.len()].iter()) {
            let cut = cut.clamp(at, data.len());
            tracker.push(&data[at..cut])?;
            at = cut;
        }
        Ok(tracker.layout().clone())
    }

    #[test]
    fn tracker_matches_whole_parse_on_every_split() {
        let mut f = vec![0xFF, SOI];
        f.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x08, 8, 0, 1, 0, 1, 1]);
        f.extend_from_slice(&[0xFF, SOS, 0x00, 0x06, 1, 2, 3, 4, 0x12, 0xFF, 0x00, 0x34]);
        f.extend_from_slice(&[0xFF, 0xD3, 0x56, 0xFF, 0xC4, 0x00, 0x03, 9]);
        f.extend_from_slice(&[0xFF, SOS, 0x00, 0x06, 1, 2, 3, 4, 0x78, 0x9A, 0xFF, EOI]);
        for len in 0..=f.len() {
            for a in 0..=len {
                for b in a..=len {
                    assert_eq!(tracked(&f[..len], &[a, b]), scan_boundaries(&f[..len]));
                }
            }
        }
        let mut small = ScanTracker::new(4);
        assert_eq!(small.push(&f), Ok(()), "a whole file leaves no tail");
        let mut small = ScanTracker::new(4);
        assert!(small.push(&f[..20]).is_err());
        assert!(!small.is_jpeg());
    }

    proptest! {
        #[test]
        fn tracker_agrees_with_whole_parse(
            body in proptest::collection::vec(prop_oneof![Just(0xFFu8), Just(0xDA), Just(0), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..320, 0..6),
        ) {
            let mut data = vec![0xFF, SOI, 0xFF, 0xC2, 0x00, 0x03, 1];
            data.extend_from_slice(&body);
            let mut cuts = cuts;
            cuts.sort_unstable();
            match (tracked(&data, &cuts), scan_boundaries(&data)) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "tracker {:?} vs whole {:?}", a, b),
            }
        }

        #[test]
        fn never_panics_and_stays_in_bounds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut with_soi = vec![0xFF, SOI];
            with_soi.extend_from_slice(&data);
            for input in [&data[..], &with_soi[..]] {
                if let Ok(layout) = scan_boundaries(input) {
                    prop_assert!(layout.scan_ends.iter().all(|&e| e <= input.len()));
                    prop_assert!(layout.scan_ends.windows(2).all(|w| w[0] < w[1]));
                }
                let _ = viewable_prefix(input);
            }
        }
    }
}
