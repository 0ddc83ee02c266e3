//! Volumes are read back from disk after crashes and damage: a scan of any bytes never panics,
//! stops within them, and every record it accepts re-encodes to the very bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_blob::volume::{RecordKind, encode_record, scan};

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (block, bytes) = input;
    let block = u32::from(block % 512) + 1;
    let found = scan(&bytes, 0, block, true);
    assert!(found.valid_end <= bytes.len() as u64);
    for record in &found.records {
        let start = record.offset as usize;
        let end = start + record.header.record_len(block) as usize;
        let body = &bytes[record.body_offset as usize..end];
        let data: Vec<u8> = match record.header.kind {
            RecordKind::Put => body
                .chunks(block as usize + 4)
                .flat_map(|b| b[..b.len() - 4].to_vec())
                .collect(),
            RecordKind::Delete => Vec::new(),
        };
        let mut again = Vec::new();
        encode_record(&record.header, &data, block, &mut again);
        assert_eq!(&again[..], &bytes[start..end]);
    }
});
