//! AMF0 comes from any client: decoding never panics, and what decodes re-encodes and decodes
//! to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_rtmp::amf0::{decode_all, encode_all};

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = decode_all(data) {
        let again = decode_all(&encode_all(&values)).expect("re-encoded AMF0 decodes");
        // NaN never equals itself; compare the encodings instead.
        assert_eq!(encode_all(&again), encode_all(&values));
    }
});
