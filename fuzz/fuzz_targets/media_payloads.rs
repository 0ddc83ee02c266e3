//! RTMP audio/video payloads and FLV come from any publisher: what reads them (codec info,
//! FLV tags, H.264 and AAC configuration, the Annex B conversion HLS does) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_media::{flv, ts};

fuzz_target!(|data: &[u8]| {
    let _ = flv::video_info(data);
    let _ = flv::audio_info(data);
    let _ = flv::read_tags(data);
    let _ = ts::AacConfig::parse(data);
    if let Ok(config) = ts::AvcConfig::parse(data) {
        let _ = ts::annex_b(&config, data, true);
    }
    if let Ok(config) = ts::AvcConfig::parse(&[1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0]) {
        let _ = ts::annex_b(&config, data, false);
    }
});
