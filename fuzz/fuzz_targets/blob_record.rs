//! Index records are read back from disk, which can be damaged: decoding never panics, and
//! what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_blob::record::BlobMeta;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = BlobMeta::decode(data) {
        let again = BlobMeta::decode(&meta.encode()).expect("re-encoded record decodes");
        assert_eq!(again, meta);
    }
});
