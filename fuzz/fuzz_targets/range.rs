//! Range headers come from any client: never panic, and a resolved range stays in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::range::{RangeRequest, request_for};

fuzz_target!(|input: (&str, u64)| {
    let (header, len) = input;
    if let Ok(RangeRequest::Partial { start, end }) = request_for(Some(header), len) {
        assert!(start < end && end <= len);
    }
});
