//! A whole RTMP connection's bytes from any client: the server session never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_rtmp::{ServerSession, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(SessionConfig::default(), 7);
    // A valid handshake first, so the fuzzer's bytes reach the chunk stream and commands.
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[1u8; 1536 * 2]);
    let _ = session.push(&hello);
    for piece in data.chunks(97) {
        if session.push(piece).is_err() {
            break;
        }
        let _ = session.take_output();
    }
});
