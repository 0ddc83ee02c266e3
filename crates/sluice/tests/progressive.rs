//! Progressive uploads across processes: through a tracker into a replicating group (the
//! committed part is on the peer before the upload ends), and across a SIGKILL of the node
//! (acknowledged bytes survive and the upload resumes).

mod common;

use std::time::Duration;

use common::{Served, curl, curl_head, get, header, status, wait_for};
use sluice_proto::tus::encode_metadata;
use sluice_testkit::images::{djpeg_dimensions, progressive_jpeg};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret-for-tests";

fn patch(url: &str, offset: usize, file: &std::path::Path) -> String {
    curl_head(&[
        "-X",
        "PATCH",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        &format!("Upload-Offset: {offset}"),
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        url,
    ])
}

/// A tus creation (a JPEG of LENGTH bytes, q 0.3) at SERVER with EXTRA curl flags; its head.
fn create_upload(server: &str, length: usize, extra: &[&str]) -> String {
    let meta = encode_metadata([("content-type", "image/jpeg"), ("q", "0.3")]);
    let length = format!("Upload-Length: {length}");
    let meta = format!("Upload-Metadata: {meta}");
    let url = format!("{server}/v1/uploads");
    let mut args = extra.to_vec();
    args.extend_from_slice(&[
        "-X",
        "POST",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        &length,
        "-H",
        &meta,
        &url,
    ]);
    curl_head(&args)
}

/// A webhook endpoint on a thread: answers 204 and keeps each (event header, body).
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut event) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("sluice-event:") {
                    event = v.trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let _ = tx.send((event, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    (url, rx)
}

#[test]
fn through_a_tracker_the_committed_part_is_on_the_peer_before_the_upload_ends() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("SLUICE_CLUSTER_SECRET", SECRET)];
    let t = Served::tracker(dirs[0].path(), &[], &env);
    // Every node posts to the IM server's webhook, whichever takes the upload.
    let (hook, posts) = webhook_receiver();
    let node = |dir: &std::path::Path| {
        let config = dir.with_extension("toml");
        std::fs::write(&config, format!("webhook_url = \"{hook}\"\n")).unwrap();
        Served::storage(
            dir,
            "g1",
            &[&t.url],
            &["--config", config.to_str().unwrap()],
            &env,
        )
    };
    let a = node(dirs[1].path());
    let b = node(dirs[2].path());
    wait_for("both nodes active", WAIT, || {
        let out = curl(&["-sS", &format!("{}/v1/cluster", t.url)]);
        String::from_utf8_lossy(&out.stdout)
            .matches("\"active\"")
            .count()
            == 2
    });

    let image = progressive_jpeg(400, 300, 31);
    let half = image.len() / 2;
    let files = dirs[3].path();
    std::fs::write(files.join("first"), &image[..half]).unwrap();
    std::fs::write(files.join("rest"), &image[half..]).unwrap();
    // Creation at the tracker: 307 to a node, whose Location is its own absolute URL.
    let head = create_upload(&t.url, image.len(), &["-L"]);
    assert!(head.starts_with("HTTP/1.1 307"), "{head}");
    assert_eq!(status(&head), "201", "{head}");
    let upload = header(&head, "location").unwrap();
    let (taker, peer) = if upload.starts_with(&a.url) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(upload.starts_with(&taker.url), "{upload}");

    let head = patch(&upload, 0, &files.join("first"));
    assert_eq!(status(&head), "204", "{head}");
    let fileid = header(&head, "sluice-file-id").expect("committed at q = 0.3");
    // The peer already holds the committed part: a receiver routed there sees an image.
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", peer.url), &[]);
    assert_eq!(status(&head), "200", "{head}");
    assert_eq!(header(&head, "sluice-complete").as_deref(), Some("false"));
    assert_eq!(djpeg_dimensions(&body), Ok((400, 300)));
    // So does a read through the tracker.
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", t.url), &[]);
    assert_eq!(
        status(&head),
        "302",
        "curl without -L stops at the redirect: {head}"
    );
    assert!(body.is_empty());

    let head = patch(&upload, half, &files.join("rest"));
    assert_eq!(status(&head), "204", "{head}");
    for node in [taker, peer] {
        let (_, head, body) = get(&format!("{}/v1/files/{fileid}", node.url), &[]);
        assert_eq!(status(&head), "200");
        assert_eq!(header(&head, "sluice-complete"), None);
        assert_eq!(body, image, "whole on {}", node.url);
    }
    let got: Vec<(String, String)> = (0..2)
        .map(|_| posts.recv_timeout(WAIT).expect("webhook posts"))
        .collect();
    assert_eq!(got[0].0, "file.committed");
    assert_eq!(got[1].0, "file.completed");
    assert!(got.iter().all(|(_, body)| body.contains(&fileid)));
}

#[test]
fn sigkill_mid_upload_loses_no_acknowledged_byte_and_the_upload_resumes() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let image = progressive_jpeg(400, 300, 41);
    let cut = image.len() * 6 / 10;
    std::fs::write(files.path().join("first"), &image[..cut]).unwrap();
    std::fs::write(files.path().join("rest"), &image[cut..]).unwrap();
    let server = Served::start(data.path(), &[]);
    let head = create_upload(&server.url, image.len(), &[]);
    let location = header(&head, "location").unwrap();
    let head = patch(
        &format!("{}{location}", server.url),
        0,
        &files.path().join("first"),
    );
    assert_eq!(header(&head, "upload-offset"), Some(cut.to_string()));
    let fileid = header(&head, "sluice-file-id").unwrap();
    drop(server); // SIGKILL

    let server = Served::start(data.path(), &[]);
    let upload = format!("{}{location}", server.url);
    let head = curl_head(&["-I", "-H", "Tus-Resumable: 1.0.0", &upload]);
    assert_eq!(
        header(&head, "upload-offset"),
        Some(cut.to_string()),
        "{head}"
    );
    assert_eq!(header(&head, "sluice-file-id"), Some(fileid.clone()));
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(header(&head, "sluice-complete").as_deref(), Some("false"));
    assert_eq!(djpeg_dimensions(&body), Ok((400, 300)));
    let head = patch(&upload, cut, &files.path().join("rest"));
    assert_eq!(status(&head), "204", "{head}");
    let (_, _, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(body, image);
}

/// Pixels as djpeg decodes them (PNM).
fn djpeg_pixels(jpeg: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("djpeg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(jpeg).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[test]
fn the_cli_prints_the_id_at_the_mts_then_finishes_the_upload() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let photo = work.path().join("photo.jpg");
    let baseline = sluice_testkit::images::baseline_jpeg(640, 480, 12);
    std::fs::write(&photo, &baseline).unwrap();
    // At 40 KiB/s a photo of this size takes seconds: plenty to look at the file while the
    // rest is still on its way.
    let rate = "40KiB";
    let mut child = std::process::Command::new(common::BIN)
        .args([
            "upload",
            photo.to_str().unwrap(),
            "--server",
            &server.url,
            "--progressive",
        ])
        .args(["--q", "0.3", "--limit-rate", rate, "--sender", "alice"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut fileid = String::new();
    stdout.read_line(&mut fileid).unwrap();
    let fileid = fileid.trim().to_owned();
    assert!(fileid.starts_with("g1/"), "{fileid:?}");
    // The id came out before the upload ended: the file is still incomplete, yet an image.
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(
        header(&head, "sluice-complete").as_deref(),
        Some("false"),
        "{head}"
    );
    assert_eq!(djpeg_dimensions(&body), Ok((640, 480)));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("baseline JPEG made progressive losslessly"),
        "{stderr}"
    );
    // The whole file is the baseline's coefficients in progressive order: the same pixels.
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(header(&head, "sluice-complete"), None);
    assert!(
        sluice_media::jpeg::scan_boundaries(&body)
            .unwrap()
            .progressive
    );
    assert_eq!(djpeg_pixels(&body), djpeg_pixels(&baseline));
    // It says when the id came and when the upload ended.
    let line = stderr
        .lines()
        .find(|l| l.contains("id after"))
        .expect(&stderr);
    let secs: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(secs[0] < secs[1], "{line}");
}

#[test]
fn without_q_the_cli_measures_the_link_and_chooses_the_mts() {
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let photo = work.path().join("photo.jpg");
    std::fs::write(&photo, progressive_jpeg(1024, 768, 13)).unwrap();
    let len = std::fs::metadata(&photo).unwrap().len();
    // 60 KiB/s with the id wanted within 0.1 s: 6 KiB, less than a fifth of the photo, so
    // the floor (q = 0.2) applies.
    assert!(len > 50_000, "the photo is large enough to measure: {len}");
    let out = common::sluice(&[
        "upload",
        photo.to_str().unwrap(),
        "--server",
        &server.url,
        "--progressive",
        "--limit-rate",
        "60KiB",
        "--chunk",
        "4KiB",
        "--id-budget-ms",
        "100",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("dynamic MTS"))
        .expect(&stderr);
    assert!(line.contains("q = 0.20"), "{line}");
    let fileid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (_, _, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(
        body,
        std::fs::read(&photo).unwrap(),
        "already progressive: sent unchanged"
    );

    // On a fast link (no limit) the whole file fits the budget: q = 1.
    let out = common::sluice(&[
        "upload",
        photo.to_str().unwrap(),
        "--server",
        &server.url,
        "--progressive",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("q = 1.00"), "{stderr}");
}

#[test]
fn the_cli_converts_png_and_refuses_bad_input_in_one_line() {
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let ppm = sluice_testkit::images::photo_ppm(120, 90, 2);
    let rgb = &ppm[ppm.len() - 120 * 90 * 3..];
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 120, 90);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(rgb).unwrap();
    }
    let path = work.path().join("drawing.png");
    std::fs::write(&path, &png).unwrap();
    let out = common::sluice(&[
        "upload",
        path.to_str().unwrap(),
        "--server",
        &server.url,
        "--progressive",
        "--q",
        "0.5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fileid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(header(&head, "content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(djpeg_dimensions(&body), Ok((120, 90)));

    // A damaged JPEG, and a bad q: one line, non-zero exit.
    let broken = work.path().join("broken.jpg");
    let baseline = sluice_testkit::images::baseline_jpeg(100, 100, 1);
    std::fs::write(&broken, &baseline[..baseline.len() / 2]).unwrap();
    for args in [
        vec![
            "upload",
            broken.to_str().unwrap(),
            "--server",
            &server.url,
            "--progressive",
        ],
        vec![
            "upload",
            path.to_str().unwrap(),
            "--server",
            &server.url,
            "--progressive",
            "--q",
            "0",
        ],
    ] {
        let out = common::sluice(&args);
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!text.is_empty());
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn an_upload_whose_bytes_all_arrived_is_completed_on_restart() {
    // The node dies after the last PATCH's bytes are fsynced and before it completes the
    // upload: a stock tus client's HEAD then says every byte arrived, and it sends nothing.
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (hook, posts) = webhook_receiver();
    let config = files.path().join("sluice.toml");
    std::fs::write(&config, format!("webhook_url = \"{hook}\"\n")).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let image = progressive_jpeg(400, 300, 43);
    let cut = image.len() * 6 / 10;
    std::fs::write(files.path().join("first"), &image[..cut]).unwrap();
    let server = Served::start(data.path(), &["--config", &config]);
    let head = create_upload(&server.url, image.len(), &[]);
    let location = header(&head, "location").unwrap();
    let head = patch(
        &format!("{}{location}", server.url),
        0,
        &files.path().join("first"),
    );
    let fileid = header(&head, "sluice-file-id").unwrap();
    let (event, _) = posts.recv_timeout(WAIT).unwrap();
    assert_eq!(event, "file.committed");
    drop(server); // SIGKILL
    // What the last PATCH had made durable when the node died: the rest of the bytes.
    let upload_id = location.rsplit('/').next().unwrap();
    let data_file = data
        .path()
        .join("uploads")
        .join(format!("{upload_id}.data"));
    let mut held = std::fs::read(&data_file).unwrap();
    assert_eq!(held.len(), cut);
    held.extend_from_slice(&image[cut..]);
    std::fs::write(&data_file, &held).unwrap();

    let server = Served::start(data.path(), &["--config", &config]);
    let (event, body) = posts.recv_timeout(WAIT).unwrap();
    assert_eq!(event, "file.completed", "{body}");
    assert!(body.contains(&fileid));
    let (_, head, body) = get(&format!("{}/v1/files/{fileid}", server.url), &[]);
    assert_eq!(header(&head, "sluice-complete"), None, "{head}");
    assert_eq!(body, image);
    let head = curl_head(&[
        "-I",
        "-H",
        "Tus-Resumable: 1.0.0",
        &format!("{}{location}", server.url),
    ]);
    assert_eq!(status(&head), "404", "the session is over");
    assert!(
        posts.recv_timeout(Duration::from_millis(500)).is_err(),
        "no file.abandoned or anything else"
    );
}
