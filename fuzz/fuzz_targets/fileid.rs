//! File ids arrive in every download URL: parsing must never panic, and whatever parses must
//! print back to exactly the same text (one spelling per id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::FileId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = FileId::parse(text) {
            assert_eq!(id.to_string(), text);
        }
    }
});
