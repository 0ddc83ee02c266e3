//! For a set of generated photos, encodes each with every candidate and prints the cumulative
//! share of bytes at each scan boundary, and the size. `photos DIR N` instead writes N
//! generated photos as baseline JPEGs (what a phone camera produces) for bench/progressive.sh.

use sluice_media::jpeg::scan_boundaries;
use sluice_testkit::images::photo_ppm;

fn rgb_of(ppm: &[u8], w: u32, h: u32) -> &[u8] {
    &ppm[ppm.len() - (w * h * 3) as usize..]
}

fn shares(jpeg: &[u8]) -> String {
    let layout = scan_boundaries(jpeg).expect("a JPEG");
    let len = jpeg.len() as f64;
    layout
        .scan_ends
        .iter()
        .map(|&e| format!("{:.0}", e as f64 * 100.0 / len))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("photos") {
        let dir = std::path::Path::new(args.get(2).expect("photos DIR N"));
        let n: u32 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(3);
        std::fs::create_dir_all(dir).expect("create DIR");
        for seed in 1..=n {
            let jpeg = sluice_testkit::images::baseline_jpeg(1600, 1200, seed);
            std::fs::write(dir.join(format!("photo-{seed}.jpg")), jpeg).expect("write photo");
        }
        return;
    }
    let sizes = [(1024u32, 768u32), (1600, 1200)];
    println!("encoder | photo | bytes | scans | cumulative % of bytes at each scan end");
    for (w, h) in sizes {
        for seed in 1..=3u32 {
            let ppm = photo_ppm(w, h, seed);
            let rgb = rgb_of(&ppm, w, h);
            let photo = format!("{w}x{h}#{seed}");
            let mut rows: Vec<(&str, Vec<u8>)> = Vec::new();
            // The baseline a phone camera would produce, then ours: lossless rearrangement.
            let baseline = sluice_testkit::images::baseline_jpeg(w, h, seed);
            let ours = sluice_transcode::to_progressive(&baseline)
                .expect("transcode")
                .jpeg;
            rows.push((
                "sluice (mozjpeg-sys, lossless, libjpeg script, tail split)",
                ours,
            ));
            rows.push((
                "cjpeg -progressive (libjpeg-turbo)",
                sluice_testkit::images::progressive_jpeg(w, h, seed),
            ));
            let moz = mozjpeg_rs::Encoder::new(mozjpeg_rs::Preset::ProgressiveBalanced)
                .quality(85)
                .encode_rgb(rgb, w, h)
                .expect("mozjpeg-rs");
            rows.push(("mozjpeg-rs ProgressiveBalanced", moz));
            let moz = mozjpeg_rs::Encoder::new(mozjpeg_rs::Preset::ProgressiveSmallest)
                .quality(85)
                .encode_rgb(rgb, w, h)
                .expect("mozjpeg-rs");
            rows.push(("mozjpeg-rs ProgressiveSmallest", moz));
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, 85);
            enc.set_progressive(true);
            enc.encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
                .expect("jpeg-encoder");
            rows.push(("jpeg-encoder 0.7 progressive", out));
            for (name, jpeg) in rows {
                let scans = scan_boundaries(&jpeg).unwrap().scan_ends.len();
                println!(
                    "{name} | {photo} | {} | {scans} | {}",
                    jpeg.len(),
                    shares(&jpeg)
                );
            }
        }
    }
}
