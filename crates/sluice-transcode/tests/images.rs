//! Conversions checked by libjpeg-turbo's own tools: djpeg decodes every result, a baseline
//! JPEG made progressive decodes to exactly the same pixels, and orientation survives.

use sluice_media::jpeg::scan_boundaries;
use sluice_testkit::images::{baseline_jpeg, djpeg_dimensions, photo_ppm, progressive_jpeg};
use sluice_transcode::{Conversion, TranscodeError, to_progressive};

fn djpeg_pixels(jpeg: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("djpeg")
        .args(["-pnm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("djpeg installed");
    child.stdin.take().unwrap().write_all(jpeg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// An EXIF APP1 saying "rotate 90° clockwise" (orientation 6), big-endian TIFF.
fn exif_orientation_6() -> Vec<u8> {
    let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    app1.extend_from_slice(&[0, 1]); // one IFD entry
    app1.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]); // Orientation = 6
    app1.extend_from_slice(&[0, 0, 0, 0]);
    app1
}

fn with_segment(jpeg: &[u8], marker: u8, data: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn baseline_is_made_progressive_without_changing_a_pixel_and_keeps_orientation() {
    let exif = exif_orientation_6();
    let baseline = with_segment(&baseline_jpeg(321, 243, 3), 0xE1, &exif);
    let result = to_progressive(&baseline).unwrap();
    assert_eq!(result.conversion, Conversion::FromBaseline);
    let layout = scan_boundaries(&result.jpeg).unwrap();
    assert!(layout.progressive);
    assert_eq!(
        layout.scan_ends.len(),
        14,
        "libjpeg's script for colour, its last scan split in five bands"
    );
    assert_eq!(
        djpeg_pixels(&result.jpeg),
        djpeg_pixels(&baseline),
        "lossless"
    );
    let found = result
        .jpeg
        .windows(exif.len())
        .any(|w| w == exif.as_slice());
    assert!(found, "the EXIF orientation is carried over");
    // Every scan cut decodes at full size.
    for &end in &layout.scan_ends {
        let mut cut = result.jpeg[..end].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(djpeg_dimensions(&cut), Ok((321, 243)));
    }
}

#[test]
fn progressive_input_is_sent_as_it_is() {
    let jpeg = progressive_jpeg(100, 80, 1);
    let result = to_progressive(&jpeg).unwrap();
    assert_eq!(result.conversion, Conversion::AlreadyProgressive);
    assert_eq!(result.jpeg, jpeg);
}

fn png_of(
    width: u32,
    height: u32,
    color: png::ColorType,
    samples: &[u8],
    exif: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut info_writer = encoder.write_header().unwrap();
    if let Some(exif) = exif {
        info_writer.write_chunk(png::chunk::eXIf, exif).unwrap();
    }
    info_writer.write_image_data(samples).unwrap();
    info_writer.finish().unwrap();
    out
}

#[test]
fn png_becomes_a_progressive_jpeg_with_its_orientation() {
    let ppm = photo_ppm(200, 150, 9);
    let rgb = &ppm[ppm.len() - 200 * 150 * 3..];
    let exif = &exif_orientation_6()[6..];
    let png = png_of(200, 150, png::ColorType::Rgb, rgb, Some(exif));
    let result = to_progressive(&png).unwrap();
    assert_eq!(result.conversion, Conversion::FromPng);
    assert!(scan_boundaries(&result.jpeg).unwrap().progressive);
    assert_eq!(djpeg_dimensions(&result.jpeg), Ok((200, 150)));
    assert!(result.jpeg.windows(exif.len()).any(|w| w == exif));

    // Grey with alpha, and a palette image, decode too.
    let ga: Vec<u8> = (0..64 * 64).flat_map(|i| [(i % 256) as u8, 200]).collect();
    let r = to_progressive(&png_of(64, 64, png::ColorType::GrayscaleAlpha, &ga, None)).unwrap();
    assert_eq!(djpeg_dimensions(&r.jpeg), Ok((64, 64)));
}

#[test]
fn damaged_input_is_refused_not_patched() {
    let baseline = baseline_jpeg(160, 120, 4);
    let truncated = &baseline[..baseline.len() / 2];
    assert!(matches!(
        to_progressive(truncated),
        Err(TranscodeError::Jpeg(_))
    ));
    let ppm = photo_ppm(50, 50, 1);
    let png = png_of(
        50,
        50,
        png::ColorType::Rgb,
        &ppm[ppm.len() - 50 * 50 * 3..],
        None,
    );
    assert!(matches!(
        to_progressive(&png[..png.len() - 40]),
        Err(TranscodeError::Png(_))
    ));
}
