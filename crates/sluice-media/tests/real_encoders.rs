//! Scan boundaries of JPEGs made by libjpeg-turbo's `cjpeg` (fixtures, 64x48), and every cut
//! of a partial file decoded by `djpeg`: the promise progressive transfer rests on.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use sluice_media::jpeg::{scan_boundaries, viewable_prefix};

const PROGRESSIVE: &[u8] = include_bytes!("fixtures/progressive.jpg");
const PROGRESSIVE_RESTART: &[u8] = include_bytes!("fixtures/progressive-restart.jpg");
const BASELINE: &[u8] = include_bytes!("fixtures/baseline.jpg");

/// Decodes with djpeg; returns the PNM header's width and height.
fn djpeg_dimensions(jpeg: &[u8]) -> (u32, u32) {
    let mut child = Command::new("djpeg")
        .args(["-pnm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("djpeg is installed (scripts/test.sh installs libjpeg-turbo-progs)");
    child.stdin.take().unwrap().write_all(jpeg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "djpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libjpeg warns (but decodes) on a premature end; a cut at a scan boundary must not need that.
    assert!(
        out.stderr.is_empty(),
        "djpeg warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = String::from_utf8_lossy(&out.stdout[..20]).into_owned();
    let mut fields = header.split_whitespace().skip(1);
    let w = fields.next().unwrap().parse().unwrap();
    let h = fields.next().unwrap().parse().unwrap();
    (w, h)
}

#[test]
fn whole_files_from_cjpeg() {
    let p = scan_boundaries(PROGRESSIVE).unwrap();
    assert!(p.progressive);
    assert!(
        p.scan_ends.len() >= 6,
        "libjpeg's default progressive script has 10 scans for colour: {:?}",
        p.scan_ends
    );
    assert_eq!(p.eoi_end, Some(PROGRESSIVE.len()));
    assert_eq!(p.last_complete_scan(), Some(PROGRESSIVE.len() - 2));

    let r = scan_boundaries(PROGRESSIVE_RESTART).unwrap();
    assert!(r.progressive);
    assert_eq!(
        r.scan_ends.len(),
        p.scan_ends.len(),
        "restart markers do not split scans"
    );
    assert_eq!(r.eoi_end, Some(PROGRESSIVE_RESTART.len()));

    let b = scan_boundaries(BASELINE).unwrap();
    assert!(!b.progressive);
    assert_eq!(b.scan_ends.len(), 1);
}

#[test]
fn every_partial_file_decodes_at_full_size() {
    for file in [PROGRESSIVE, PROGRESSIVE_RESTART] {
        let mut seen = BTreeSet::new();
        for len in 0..=file.len() {
            let Some(view) = viewable_prefix(&file[..len]) else {
                // A scan is known whole once the next marker (two bytes) has arrived.
                assert!(
                    len < scan_boundaries(file).unwrap().scan_ends[0] + 2,
                    "no view at {len}"
                );
                continue;
            };
            assert!(view.len() <= len + 2);
            // Only a handful of distinct cuts exist; decode each once.
            if seen.insert(view.len()) {
                assert_eq!(
                    djpeg_dimensions(&view),
                    (64, 48),
                    "cut of {} bytes",
                    view.len()
                );
            }
        }
        assert_eq!(seen.len(), scan_boundaries(file).unwrap().scan_ends.len());
    }
}
