//! JPEG prefixes arrive from any sender: the scan parser never panics, its boundaries stay in
//! bounds and in order, a viewable prefix is never longer than the input plus EOI, and the
//! incremental tracker, fed the same bytes in pieces, agrees with a parse of the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_media::jpeg::{ScanTracker, scan_boundaries, viewable_prefix};

fuzz_target!(|input: (&[u8], Vec<u16>)| {
    let (data, cuts) = input;
    let whole = scan_boundaries(data);
    if let Ok(layout) = &whole {
        assert!(layout.scan_ends.iter().all(|&e| e <= data.len()));
        assert!(layout.scan_ends.windows(2).all(|w| w[0] < w[1]));
    }
    if let Some(view) = viewable_prefix(data) {
        assert!(view.len() <= data.len() + 2);
    }
    let mut tracker = ScanTracker::new(usize::MAX);
    let mut at = 0;
    let mut failed = false;
    for cut in cuts.iter().map(|&c| usize::from(c)).chain([data.len()]) {
        let cut = cut.clamp(at, data.len());
        failed |= tracker.push(&data[at..cut]).is_err();
        at = cut;
    }
    match whole {
        Ok(layout) => assert!(!failed && *tracker.layout() == layout),
        Err(_) => assert!(failed),
    }
});
