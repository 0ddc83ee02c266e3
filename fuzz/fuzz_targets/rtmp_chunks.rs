//! RTMP chunk streams come from any client: the decoder never panics, whatever the bytes and
//! however they are split, and every message it returns is within its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_rtmp::ChunkDecoder;

fuzz_target!(|input: (&[u8], u8)| {
    let (data, split) = input;
    let mut decoder = ChunkDecoder::new(1 << 16);
    for piece in data.chunks(usize::from(split).max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(m)) => assert!(m.payload.len() <= 1 << 16),
                Ok(None) | Err(_) => break,
            }
        }
    }
});
