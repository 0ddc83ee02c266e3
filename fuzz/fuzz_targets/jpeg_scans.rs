//! JPEG prefixes arrive from any sender: the scan parser never panics, its boundaries stay in
//! bounds and in order, and a viewable prefix is never longer than the input plus EOI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_media::jpeg::{scan_boundaries, viewable_prefix};

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = scan_boundaries(data) {
        assert!(layout.scan_ends.iter().all(|&e| e <= data.len()));
        assert!(layout.scan_ends.windows(2).all(|w| w[0] < w[1]));
    }
    if let Some(view) = viewable_prefix(data) {
        assert!(view.len() <= data.len() + 2);
    }
});
