//! Replica batches arrive from peers over the network: parsing any bytes never panics, every
//! record's body lies inside the input, and what parses re-encodes to the very same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::replicas::{parse, push, start};

fuzz_target!(|input: (u32, Vec<u8>)| {
    let (max_file, bytes) = input;
    let Ok(heads) = parse(&bytes, u64::from(max_file)) else {
        return;
    };
    let mut again = start(bytes.len());
    for head in &heads {
        assert!(head.body.end <= bytes.len());
        assert!(head.body.len() as u64 <= u64::from(max_file));
        push(
            &mut again,
            &head.id,
            &head.content_type,
            &head.sha256,
            &bytes[head.body.clone()],
        );
    }
    assert_eq!(again, bytes);
});
