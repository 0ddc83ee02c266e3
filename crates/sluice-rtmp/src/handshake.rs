//! The server side of the RTMP handshake: C0+C1 in, S0+S1+S2 out, then C2 in.
//!
//! Two forms exist. The simple one (Adobe RTMP 1.0 §5.2) echoes C1 as S2. Flash Player and
//! some older encoders use the digest form: C1 carries an HMAC-SHA256 digest at a position
//! derived from its own bytes (scheme 0: from bytes 8-11; scheme 1: from bytes 772-775), and
//! expect S1 and S2 to carry digests keyed with the "Genuine Adobe Flash Media Server" key.
//! A C1 whose digest validates gets the digest answer; any other gets the simple one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HANDSHAKE_SIZE: usize = 1536;
const RTMP_VERSION: u8 = 3;
const DIGEST_LEN: usize = 32;

const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
const PLAYER_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
const SERVER_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";

fn key(text: &[u8]) -> Vec<u8> {
    let mut k = text.to_vec();
    k.extend_from_slice(&KEY_TAIL);
    k
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Where a scheme puts the digest in a 1536-byte C1/S1.
fn digest_offset(packet: &[u8], base: usize) -> usize {
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 728 + base + 4
}

/// The digest of `packet` keyed with `key`, over every byte but the digest's own.
fn digest_at(packet: &[u8], offset: usize, key: &[u8]) -> [u8; 32] {
    hmac(key, &[&packet[..offset], &packet[offset + DIGEST_LEN..]])
}

const SCHEME_BASES: [usize; 2] = [8, 772];

/// The scheme base and digest of a C1 in the digest form, if it is one.
pub fn client_digest(c1: &[u8]) -> Option<(usize, [u8; 32])> {
    if c1.len() != HANDSHAKE_SIZE {
        return None;
    }
    // C1's digest is keyed with the text part of the player key; S2's with the whole server
    // key (text and tail).
    for base in SCHEME_BASES {
        let offset = digest_offset(c1, base);
        if digest_at(c1, offset, PLAYER_TEXT) == c1[offset..offset + DIGEST_LEN] {
            return Some((base, c1[offset..offset + DIGEST_LEN].try_into().ok()?));
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("RTMP version {0} is not supported (only 3; RTMPE is not)")]
    Version(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitC0C1,
    AwaitC2,
    Done,
}

/// What the handshake produced from the bytes fed to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HandshakeStep {
    /// Bytes to send to the client.
    pub send: Vec<u8>,
    /// Set once the handshake is over: the bytes after C2 (the first chunks).
    pub done: Option<Vec<u8>>,
}

pub struct ServerHandshake {
    phase: Phase,
    buf: Vec<u8>,
    filler: u64,
    /// Whether the client used the digest form.
    pub digest: bool,
}

impl ServerHandshake {
    /// `seed` fills S1's and S2's random parts (they need not be secret, only not constant).
    pub fn new(seed: u64) -> Self {
        Self {
            phase: Phase::AwaitC0C1,
            buf: Vec::new(),
            filler: seed | 1,
            digest: false,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            // xorshift64
            self.filler ^= self.filler << 13;
            self.filler ^= self.filler >> 7;
            self.filler ^= self.filler << 17;
            *b = self.filler as u8;
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<HandshakeStep, HandshakeError> {
        self.buf.extend_from_slice(data);
        let mut step = HandshakeStep::default();
        if self.phase == Phase::AwaitC0C1 {
            if let Some(&version) = self.buf.first() {
                if version != RTMP_VERSION {
                    return Err(HandshakeError::Version(version));
                }
            }
            if self.buf.len() < 1 + HANDSHAKE_SIZE {
                return Ok(step);
            }
            let c1: Vec<u8> = self.buf[1..1 + HANDSHAKE_SIZE].to_vec();
            self.buf.drain(..1 + HANDSHAKE_SIZE);
            step.send = self.answer(&c1);
            self.phase = Phase::AwaitC2;
        }
        if self.phase == Phase::AwaitC2 && self.buf.len() >= HANDSHAKE_SIZE {
            // C2's contents are not checked: clients differ too much in what they echo.
            self.buf.drain(..HANDSHAKE_SIZE);
            self.phase = Phase::Done;
            step.done = Some(std::mem::take(&mut self.buf));
        }
        Ok(step)
    }

    /// S0, S1 and S2 for this C1.
    fn answer(&mut self, c1: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 * HANDSHAKE_SIZE);
        out.push(RTMP_VERSION);
        let mut s1 = vec![0u8; HANDSHAKE_SIZE];
        self.fill(&mut s1[8..]);
        match client_digest(c1) {
            None => {
                s1[..8].fill(0);
                out.extend_from_slice(&s1);
                out.extend_from_slice(c1);
            }
            Some((base, c1_digest)) => {
                self.digest = true;
                // Time zero, then a server version (non-zero marks the digest form).
                s1[..4].fill(0);
                s1[4..8].copy_from_slice(&[4, 5, 0, 1]);
                let offset = digest_offset(&s1, base);
                let d = digest_at(&s1, offset, SERVER_TEXT);
                s1[offset..offset + DIGEST_LEN].copy_from_slice(&d);
                out.extend_from_slice(&s1);
                let mut s2 = vec![0u8; HANDSHAKE_SIZE];
                self.fill(&mut s2[..HANDSHAKE_SIZE - DIGEST_LEN]);
                let s2_key = hmac(&key(SERVER_TEXT), &[&c1_digest]);
                let sig = hmac(&s2_key, &[&s2[..HANDSHAKE_SIZE - DIGEST_LEN]]);
                s2[HANDSHAKE_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
                out.extend_from_slice(&s2);
            }
        }
        out
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// Makes a C1 in the digest form, as Flash Player does (for tests and the benchmark client).
pub fn digest_c1(base: usize, filler: u8) -> Vec<u8> {
    let mut c1: Vec<u8> = (0..HANDSHAKE_SIZE)
        .map(|i| (i as u8).wrapping_mul(filler) ^ 0x5A)
        .collect();
    c1[..4].fill(0);
    c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
    let offset = digest_offset(&c1, base);
    let d = digest_at(&c1, offset, PLAYER_TEXT);
    c1[offset..offset + DIGEST_LEN].copy_from_slice(&d);
    c1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c1: &[u8]) -> (ServerHandshake, Vec<u8>) {
        let mut hs = ServerHandshake::new(42);
        let mut input = vec![3];
        input.extend_from_slice(c1);
        // Fed in two uneven pieces.
        let a = hs.push(&input[..700]).unwrap();
        assert!(a.send.is_empty() && a.done.is_none());
        let b = hs.push(&input[700..]).unwrap();
        assert_eq!(b.send.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(b.send[0], 3);
        (hs, b.send)
    }

    #[test]
    fn simple_form_echoes_c1() {
        let c1: Vec<u8> = (0..HANDSHAKE_SIZE).map(|i| (i * 7) as u8).collect();
        let (mut hs, sent) = run(&c1);
        assert!(!hs.digest);
        assert_eq!(&sent[1 + HANDSHAKE_SIZE..], &c1[..]);
        // C2 then the first chunk bytes: the leftover is handed back.
        let mut c2 = vec![0u8; HANDSHAKE_SIZE];
        c2.extend_from_slice(&[0x03, 0xAA]);
        let step = hs.push(&c2).unwrap();
        assert_eq!(step.done, Some(vec![0x03, 0xAA]));
        assert!(hs.is_done());
    }

    #[test]
    fn digest_form_is_answered_with_digests_a_client_can_check() {
        for base in SCHEME_BASES {
            let c1 = digest_c1(base, 13);
            let (c1_base, c1_digest) = client_digest(&c1).expect("our own C1 validates");
            assert_eq!(c1_base, base);
            let (hs, sent) = run(&c1);
            assert!(hs.digest);
            let s1 = &sent[1..1 + HANDSHAKE_SIZE];
            let s2 = &sent[1 + HANDSHAKE_SIZE..];
            // What a client checks: S1's digest with the server key's text part...
            let offset = digest_offset(s1, base);
            assert_eq!(digest_at(s1, offset, SERVER_TEXT), s1[offset..offset + 32]);
            assert_ne!(&s1[4..8], &[0, 0, 0, 0]);
            // ...and S2's signature, keyed by its own C1 digest.
            let k = hmac(&key(SERVER_TEXT), &[&c1_digest]);
            assert_eq!(
                hmac(&k, &[&s2[..HANDSHAKE_SIZE - 32]]),
                s2[HANDSHAKE_SIZE - 32..]
            );
        }
    }

    #[test]
    fn refuses_other_versions() {
        let mut hs = ServerHandshake::new(1);
        assert_eq!(hs.push(&[6]), Err(HandshakeError::Version(6)));
        let mut hs = ServerHandshake::new(1);
        assert_eq!(
            hs.push(b"GET / HTTP/1.1\r\n"),
            Err(HandshakeError::Version(b'G'))
        );
    }
}
