//! tus headers come from any client: never panic, and a minimal size stays within the length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::tus::{MinimalSize, parse_checksum, parse_metadata};

fuzz_target!(|input: (&str, u64)| {
    let (header, length) = input;
    let _ = parse_checksum(header);
    if let Ok(metadata) = parse_metadata(header) {
        if let Ok(Some(mts)) = MinimalSize::from_metadata(&metadata, length) {
            assert!(mts.bytes_of(length) <= length);
        }
    }
});
