//! Turns an image into a progressive JPEG for progressive transfer (DESIGN.md §1 on
//! `001_*.txt`): the sender's side of the signature feature.
//!
//! - A progressive JPEG is sent as it is.
//! - A baseline JPEG is rearranged losslessly, the way `jpegtran -progressive` does it: its
//!   DCT coefficients are copied into a progressive file, every APPn and COM segment (EXIF
//!   orientation, ICC profile) with them, so no pixel changes.
//! - A PNG is decoded and encoded at quality 90; its eXIf chunk (orientation) goes into the
//!   JPEG's APP1.
//!
//! The scan script starts as libjpeg's default does (`jpeg_simple_progression` under the
//! libjpeg-turbo profile): DC first, then luma AC 1-5, so the first scans already show a
//! recognisable picture within about a tenth of the bytes; its last scan, which holds most of
//! the file, is split into five frequency bands so later commits and sharpening steps exist
//! too. See `bench/encoders.sh` for how the candidates compare.

mod libjpeg;

use sluice_media::jpeg::scan_boundaries;

/// What was done to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Already progressive: sent unchanged.
    AlreadyProgressive,
    /// A baseline JPEG rearranged losslessly.
    FromBaseline,
    /// A PNG encoded as JPEG (lossy, quality 90).
    FromPng,
}

impl Conversion {
    pub fn describe(self) -> &'static str {
        match self {
            Conversion::AlreadyProgressive => "already progressive",
            Conversion::FromBaseline => "baseline JPEG made progressive losslessly",
            Conversion::FromPng => "PNG encoded as progressive JPEG (quality 90)",
        }
    }
}

#[derive(Debug)]
pub struct ProgressiveImage {
    pub jpeg: Vec<u8>,
    pub conversion: Conversion,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("not a JPEG or PNG image")]
    NotAnImage,
    #[error("the JPEG is damaged or unsupported: {0}")]
    Jpeg(String),
    #[error("the PNG is damaged or unsupported: {0}")]
    Png(String),
    #[error("the image is too large ({0} pixels)")]
    TooLarge(u64),
}

/// Largest image converted, in pixels (a 100-megapixel photo; more is not a chat image).
pub const MAX_PIXELS: u64 = 100_000_000;
/// Quality for images that have to be encoded (PNG).
pub const PNG_QUALITY: i32 = 90;

pub fn to_progressive(input: &[u8]) -> Result<ProgressiveImage, TranscodeError> {
    if input.starts_with(&[0xFF, 0xD8]) {
        let layout = scan_boundaries(input).map_err(|e| TranscodeError::Jpeg(e.to_string()))?;
        if layout.progressive {
            return Ok(ProgressiveImage {
                jpeg: input.to_vec(),
                conversion: Conversion::AlreadyProgressive,
            });
        }
        let jpeg =
            libjpeg::baseline_to_progressive(input, MAX_PIXELS).map_err(TranscodeError::Jpeg)?;
        return Ok(ProgressiveImage {
            jpeg,
            conversion: Conversion::FromBaseline,
        });
    }
    if input.starts_with(b"\x89PNG\r\n\x1a\n") {
        return png_to_progressive(input);
    }
    Err(TranscodeError::NotAnImage)
}

fn png_to_progressive(input: &[u8]) -> Result<ProgressiveImage, TranscodeError> {
    let bad = |e: png::DecodingError| TranscodeError::Png(e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(input));
    // 8-bit samples, palettes expanded: what a JPEG encoder takes.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(TranscodeError::TooLarge(pixels));
    }
    let exif = reader.info().exif_metadata.as_ref().map(|e| e.to_vec());
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| TranscodeError::Png("image too large".into()))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let buf = &buf[..frame.buffer_size()];
    // JPEG has no alpha: composite onto white, as a viewer would show it.
    let (samples, components) = match frame.color_type {
        png::ColorType::Rgb => (buf.to_vec(), 3),
        png::ColorType::Grayscale => (buf.to_vec(), 1),
        png::ColorType::Rgba => (flatten_alpha(buf, 4), 3),
        png::ColorType::GrayscaleAlpha => (flatten_alpha(buf, 2), 1),
        png::ColorType::Indexed => {
            return Err(TranscodeError::Png("palette was not expanded".into()));
        }
    };
    let mut markers = Vec::new();
    if let Some(exif) = exif {
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&exif);
        if app1.len() <= 65_533 {
            markers.push((0xE1u8, app1));
        }
    }
    let image = libjpeg::RawImage {
        width,
        height,
        components,
        samples: &samples,
    };
    let jpeg =
        libjpeg::encode_progressive(&image, PNG_QUALITY, &markers).map_err(TranscodeError::Png)?;
    Ok(ProgressiveImage {
        jpeg,
        conversion: Conversion::FromPng,
    })
}

/// Drops the alpha channel (the last of `stride` samples), blending onto white.
fn flatten_alpha(samples: &[u8], stride: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / stride * (stride - 1));
    for px in samples.chunks_exact(stride) {
        let alpha = u32::from(px[stride - 1]);
        for &c in &px[..stride - 1] {
            out.push(((u32::from(c) * alpha + 255 * (255 - alpha) + 127) / 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_blends_onto_white() {
        assert_eq!(
            flatten_alpha(&[0, 0, 0, 255, 0, 0, 0, 0, 100, 100, 100, 128], 4),
            vec![0, 0, 0, 255, 255, 255, 177, 177, 177]
        );
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        assert!(matches!(
            to_progressive(b"GIF89a..."),
            Err(TranscodeError::NotAnImage)
        ));
        assert!(matches!(
            to_progressive(&[0xFF, 0xD8, 0xFF, 0xC0, 0, 1]),
            Err(TranscodeError::Jpeg(_))
        ));
        assert!(matches!(
            to_progressive(b"\x89PNG\r\n\x1a\nnonsense"),
            Err(TranscodeError::Png(_))
        ));
    }
}
