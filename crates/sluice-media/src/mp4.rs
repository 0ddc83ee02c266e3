//! MP4 (ISO/IEC 14496-12/14/15) for recordings: H.264 and AAC samples into a file whose
//! `moov` comes before `mdat`, so it plays and seeks over HTTP at once. The samples' bytes are
//! the caller's (a recording spools them to disk as they arrive); this module writes the
//! header that describes them. Pure: tables in, bytes out.

use bytes::{BufMut, BytesMut};

/// One sample as the recording saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Byte offset within the sample data (what follows the header).
    pub offset: u64,
    pub size: u32,
    /// Decode time in the track's timescale.
    pub dts: u64,
    /// Presentation minus decode time, in the track's timescale.
    pub cts: i32,
    pub sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackKind {
    /// `avcc`: the AVCDecoderConfigurationRecord.
    H264 {
        avcc: Vec<u8>,
        width: u16,
        height: u16,
    },
    /// `asc`: the AudioSpecificConfig.
    Aac {
        asc: Vec<u8>,
        sample_rate: u32,
        channels: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub kind: TrackKind,
    /// Units per second of this track's times (1000 for video from RTMP milliseconds; the
    /// sample rate for AAC).
    pub timescale: u32,
    pub samples: Vec<Sample>,
    /// Duration of the last sample, in the timescale.
    pub last_duration: u32,
}

impl Track {
    fn duration(&self) -> u64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(f), Some(l)) => l.dts - f.dts + u64::from(self.last_duration),
            _ => 0,
        }
    }
}

fn boxed(kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(0);
    b.put_slice(kind);
    body(&mut b);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    boxed(kind, |b| {
        b.put_u32((u32::from(version) << 24) | flags);
        body(b);
    })
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The movie's duration in milliseconds.
pub fn duration_ms(tracks: &[Track]) -> u64 {
    tracks
        .iter()
        .map(|t| t.duration() * 1000 / u64::from(t.timescale.max(1)))
        .max()
        .unwrap_or(0)
}

/// `ftyp`, `moov` and the `mdat` header for samples of `data_len` bytes that will follow.
pub fn header(tracks: &[Track], data_len: u64) -> Vec<u8> {
    let ftyp = boxed(b"ftyp", |b| {
        b.put_slice(b"isom");
        b.put_u32(512);
        for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
            b.put_slice(brand);
        }
    });
    // co64 entries are 8 bytes whatever their values, so the moov's size does not depend on
    // where the data starts: build it once to measure, then with the real offsets.
    let probe = moov(tracks, 0);
    let data_start = (ftyp.len() + probe.len() + 16) as u64;
    let moov = moov(tracks, data_start);
    let mut out = Vec::with_capacity(ftyp.len() + moov.len() + 16);
    out.extend_from_slice(&ftyp);
    out.extend_from_slice(&moov);
    // mdat with a 64-bit size: recordings may pass 4 GiB.
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(&(data_len + 16).to_be_bytes());
    out
}

fn moov(tracks: &[Track], data_start: u64) -> BytesMut {
    let movie_ms = duration_ms(tracks);
    boxed(b"moov", |b| {
        b.put_slice(&full(b"mvhd", 0, 0, |b| {
            b.put_u32(0);
            b.put_u32(0);
            b.put_u32(1000);
            b.put_u32(movie_ms as u32);
            b.put_u32(0x0001_0000);
            b.put_u16(0x0100);
            b.put_slice(&[0; 10]);
            for m in MATRIX {
                b.put_u32(m);
            }
            b.put_slice(&[0; 24]);
            b.put_u32(tracks.len() as u32 + 1);
        }));
        for (i, t) in tracks.iter().enumerate() {
            b.put_slice(&trak(t, i as u32 + 1, movie_ms, data_start));
        }
    })
}

fn trak(t: &Track, id: u32, movie_ms: u64, data_start: u64) -> BytesMut {
    let video = matches!(t.kind, TrackKind::H264 { .. });
    let (w, h) = match &t.kind {
        TrackKind::H264 { width, height, .. } => (*width, *height),
        TrackKind::Aac { .. } => (0, 0),
    };
    boxed(b"trak", |b| {
        b.put_slice(&full(b"tkhd", 0, 3, |b| {
            b.put_u32(0);
            b.put_u32(0);
            b.put_u32(id);
            b.put_u32(0);
            b.put_u32(movie_ms as u32);
            b.put_slice(&[0; 8]);
            b.put_u16(0);
            b.put_u16(0);
            b.put_u16(if video { 0 } else { 0x0100 });
            b.put_u16(0);
            for m in MATRIX {
                b.put_u32(m);
            }
            b.put_u32(u32::from(w) << 16);
            b.put_u32(u32::from(h) << 16);
        }));
        b.put_slice(&boxed(b"mdia", |b| {
            b.put_slice(&full(b"mdhd", 0, 0, |b| {
                b.put_u32(0);
                b.put_u32(0);
                b.put_u32(t.timescale);
                b.put_u32(t.duration() as u32);
                b.put_u16(0x55C4); // "und"
                b.put_u16(0);
            }));
            b.put_slice(&full(b"hdlr", 0, 0, |b| {
                b.put_u32(0);
                b.put_slice(if video { b"vide" } else { b"soun" });
                b.put_slice(&[0; 12]);
                b.put_slice(if video {
                    b"VideoHandler\0"
                } else {
                    b"SoundHandler\0"
                });
            }));
            b.put_slice(&boxed(b"minf", |b| {
                if video {
                    b.put_slice(&full(b"vmhd", 0, 1, |b| b.put_slice(&[0; 8])));
                } else {
                    b.put_slice(&full(b"smhd", 0, 0, |b| b.put_u32(0)));
                }
                b.put_slice(&boxed(b"dinf", |b| {
                    b.put_slice(&full(b"dref", 0, 0, |b| {
                        b.put_u32(1);
                        b.put_slice(&full(b"url ", 0, 1, |_| {}));
                    }));
                }));
                b.put_slice(&stbl(t, data_start));
            }));
        }));
    })
}

fn stbl(t: &Track, data_start: u64) -> BytesMut {
    boxed(b"stbl", |b| {
        b.put_slice(&full(b"stsd", 0, 0, |b| {
            b.put_u32(1);
            match &t.kind {
                TrackKind::H264 {
                    avcc,
                    width,
                    height,
                } => b.put_slice(&boxed(b"avc1", |b| {
                    b.put_slice(&[0; 6]);
                    b.put_u16(1);
                    b.put_slice(&[0; 16]);
                    b.put_u16(*width);
                    b.put_u16(*height);
                    b.put_u32(0x0048_0000);
                    b.put_u32(0x0048_0000);
                    b.put_u32(0);
                    b.put_u16(1);
                    b.put_slice(&[0; 32]);
                    b.put_u16(0x0018);
                    b.put_i16(-1);
                    b.put_slice(&boxed(b"avcC", |b| b.put_slice(avcc)));
                })),
                TrackKind::Aac {
                    asc,
                    sample_rate,
                    channels,
                } => b.put_slice(&boxed(b"mp4a", |b| {
                    b.put_slice(&[0; 6]);
                    b.put_u16(1);
                    b.put_slice(&[0; 8]);
                    b.put_u16(*channels);
                    b.put_u16(16);
                    b.put_u32(0);
                    b.put_u32((*sample_rate).min(0xFFFF) << 16);
                    b.put_slice(&esds(asc));
                })),
            }
        }));
        // Decode time deltas, run-length coded.
        b.put_slice(&full(b"stts", 0, 0, |b| {
            let deltas: Vec<u32> = t
                .samples
                .windows(2)
                .map(|w| (w[1].dts.saturating_sub(w[0].dts)) as u32)
                .chain((!t.samples.is_empty()).then_some(t.last_duration))
                .collect();
            let runs = runs(&deltas);
            b.put_u32(runs.len() as u32);
            for (count, delta) in runs {
                b.put_u32(count);
                b.put_u32(delta);
            }
        }));
        if matches!(t.kind, TrackKind::H264 { .. }) {
            let offsets: Vec<u32> = t.samples.iter().map(|s| s.cts as u32).collect();
            if offsets.iter().any(|&o| o != 0) {
                b.put_slice(&full(b"ctts", 1, 0, |b| {
                    let runs = runs(&offsets);
                    b.put_u32(runs.len() as u32);
                    for (count, offset) in runs {
                        b.put_u32(count);
                        b.put_u32(offset);
                    }
                }));
            }
            b.put_slice(&full(b"stss", 0, 0, |b| {
                let sync: Vec<u32> = (1..=t.samples.len() as u32)
                    .filter(|&i| t.samples[i as usize - 1].sync)
                    .collect();
                b.put_u32(sync.len() as u32);
                for i in sync {
                    b.put_u32(i);
                }
            }));
        }
        // One sample per chunk: every sample has its own offset (they interleave on disk).
        b.put_slice(&full(b"stsc", 0, 0, |b| {
            b.put_u32(1);
            b.put_u32(1);
            b.put_u32(1);
            b.put_u32(1);
        }));
        b.put_slice(&full(b"stsz", 0, 0, |b| {
            b.put_u32(0);
            b.put_u32(t.samples.len() as u32);
            for s in &t.samples {
                b.put_u32(s.size);
            }
        }));
        b.put_slice(&full(b"co64", 0, 0, |b| {
            b.put_u32(t.samples.len() as u32);
            for s in &t.samples {
                b.put_u64(data_start + s.offset);
            }
        }));
    })
}

fn runs(values: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((count, last)) if *last == v => *count += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

/// The elementary stream descriptor of an AAC track.
fn esds(asc: &[u8]) -> BytesMut {
    fn descriptor(tag: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        // Lengths in the four-byte form every reader accepts.
        let len = body.len() as u32;
        out.extend_from_slice(&[
            0x80 | ((len >> 21) & 0x7F) as u8,
            0x80 | ((len >> 14) & 0x7F) as u8,
            0x80 | ((len >> 7) & 0x7F) as u8,
            (len & 0x7F) as u8,
        ]);
        out.extend_from_slice(body);
    }
    let mut specific = Vec::new();
    descriptor(0x05, asc, &mut specific);
    let mut config = vec![0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    config.extend_from_slice(&specific);
    let mut decoder = Vec::new();
    descriptor(0x04, &config, &mut decoder);
    let mut es = vec![0, 1, 0];
    es.extend_from_slice(&decoder);
    descriptor(0x06, &[0x02], &mut es);
    let mut top = Vec::new();
    descriptor(0x03, &es, &mut top);
    full(b"esds", 0, 0, |b| b.put_slice(&top))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(data: &[u8], kind: &[u8; 4]) -> Option<usize> {
        data.windows(4).position(|w| w == kind)
    }

    #[test]
    fn moov_comes_first_and_offsets_point_past_the_header() {
        let video = Track {
            kind: TrackKind::H264 {
                avcc: vec![1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 1, 1, 0, 1, 0x68],
                width: 320,
                height: 240,
            },
            timescale: 1000,
            samples: (0..50)
                .map(|i| Sample {
                    offset: i * 100,
                    size: 100,
                    dts: i * 40,
                    cts: 0,
                    sync: i % 25 == 0,
                })
                .collect(),
            last_duration: 40,
        };
        let audio = Track {
            kind: TrackKind::Aac {
                asc: vec![0x12, 0x10],
                sample_rate: 44100,
                channels: 2,
            },
            timescale: 44100,
            samples: (0..86)
                .map(|i| Sample {
                    offset: 5000 + i * 10,
                    size: 10,
                    dts: i * 1024,
                    cts: 0,
                    sync: true,
                })
                .collect(),
            last_duration: 1024,
        };
        let tracks = [video, audio];
        assert_eq!(duration_ms(&tracks), 2000);
        let h = header(&tracks, 5860);
        let moov = find(&h, b"moov").unwrap();
        let mdat = find(&h, b"mdat").unwrap();
        assert!(moov < mdat, "moov first");
        assert_eq!(
            mdat + 12,
            h.len(),
            "the header ends with mdat's 16-byte header"
        );
        // The first co64 entry of the video track points just past the header.
        let co64 = find(&h, b"co64").unwrap();
        let first = u64::from_be_bytes(h[co64 + 12..co64 + 20].try_into().unwrap());
        assert_eq!(first, h.len() as u64);
        assert!(find(&h, b"stss").is_some() && find(&h, b"esds").is_some());
    }
}
