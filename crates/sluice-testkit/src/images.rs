//! Test images: photo-like pictures encoded by libjpeg-turbo's `cjpeg`, and `djpeg` as the
//! judge of whether bytes are an image. Both come from libjpeg-turbo-progs, which
//! `scripts/test.sh` installs.

use std::io::Write;
use std::process::{Command, Stdio};

/// A binary PPM of `width` x `height` that compresses like a photo: smooth gradients, soft
/// shapes and a little noise (flat colours would make every scan tiny and prove nothing).
pub fn photo_ppm(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut out = format!("P6\n{width} {height}\n255\n").into_bytes();
    let mut rng = seed.wrapping_mul(2_654_435_761).max(1);
    let (w, h) = (width as f32, height as f32);
    for y in 0..height {
        for x in 0..width {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            // Sensor-like grain, milder than white noise at full scale.
            let noise = (rng % 9) as f32 - 4.0;
            let (fx, fy) = (x as f32 / w, y as f32 / h);
            let s = seed as f32;
            let wave = ((fx * 9.0 + s).sin() * (fy * 7.0 - s).cos()) * 60.0
                // Fine texture (foliage, fabric): detail for the AC scans to carry.
                + ((x as f32 * 0.37 + s).sin() * (y as f32 * 0.29).cos()) * 14.0;
            let dx = fx - 0.5 - (s * 0.1).sin() * 0.2;
            let dy = fy - 0.5;
            let disc = if dx * dx + dy * dy < 0.06 { 70.0 } else { 0.0 };
            let r = 90.0 + 120.0 * fx + wave + noise + disc;
            let g = 70.0 + 140.0 * fy - wave * 0.5 + noise;
            let b = 160.0 - 90.0 * fx + wave * 0.3 + noise - disc;
            out.extend([r, g, b].map(|c| c.clamp(0.0, 255.0) as u8));
        }
    }
    out
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} could not start (libjpeg-turbo-progs installed?): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// A progressive JPEG of a photo-like picture, by `cjpeg -progressive` (libjpeg's default
/// scan script).
pub fn progressive_jpeg(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let ppm = photo_ppm(width, height, seed);
    pipe("cjpeg", &["-progressive", "-quality", "85"], &ppm).expect("cjpeg")
}

/// A baseline (sequential) JPEG of the same kind of picture.
pub fn baseline_jpeg(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let ppm = photo_ppm(width, height, seed);
    pipe("cjpeg", &["-quality", "85"], &ppm).expect("cjpeg")
}

/// Decodes `jpeg` with `djpeg`; `Ok((width, height))` when it decodes cleanly (exit 0 and no
/// warning, such as libjpeg's "premature end of data"), `Err` with djpeg's words otherwise.
pub fn djpeg_dimensions(jpeg: &[u8]) -> Result<(u32, u32), String> {
    let out = pipe("djpeg", &["-pnm"], jpeg)?;
    let header = String::from_utf8_lossy(&out[..out.len().min(32)]).into_owned();
    let mut fields = header.split_whitespace().skip(1);
    let mut next = || -> Result<u32, String> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("unexpected djpeg output {header:?}"))
    };
    Ok((next()?, next()?))
}
