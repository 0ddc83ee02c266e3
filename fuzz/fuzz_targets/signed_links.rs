//! Signed-link queries (download, upload and publish links), replica digests and config
//! durations come from outside: parsing them never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::SecretSet;
use sluice_proto::signature::{verify_download, verify_publish, verify_upload};

fuzz_target!(|input: (&str, &str, u64)| {
    let (query, path, now) = input;
    let Some(key) = SecretSet::parse("fuzz-key") else {
        return;
    };
    let _ = verify_download(&key, path, Some(query), now);
    let _ = verify_upload(&key, "POST", path, Some(query), now);
    let _ = verify_publish(&key, path, Some(query), now);
    let _ = sluice_proto::cluster::parse_sha256_hex(query);
    let _ = query.parse::<sluice_proto::TimeSpan>();
});
