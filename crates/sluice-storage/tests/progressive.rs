//! Progressive uploads over tus against a real node: the file id at the MTS, partial images
//! that always decode (judged by djpeg), follow streams, events, and bad input.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use sluice_proto::tus::encode_metadata;
use sluice_testkit::http::{error_text, get};
use sluice_testkit::images::{djpeg_dimensions, progressive_jpeg};
use sluice_testkit::{NodeSettings, TestNode, wait_until};
use tokio::io::AsyncWriteExt;

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const PATCH_TYPE: &str = "application/offset+octet-stream";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Creates an upload; returns its absolute URL.
async fn create(node: &TestNode, length: usize, metadata: &[(&str, &str)]) -> String {
    let r = client()
        .post(format!("{}/v1/uploads", node.url))
        .header(TUS.0, TUS.1)
        .header("upload-length", length)
        .header("upload-metadata", encode_metadata(metadata.iter().copied()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/v1/uploads/"), "{location}");
    format!("{}{location}", node.url)
}

async fn patch(url: &str, offset: usize, bytes: &[u8]) -> reqwest::Response {
    client()
        .patch(url)
        .header(TUS.0, TUS.1)
        .header("upload-offset", offset)
        .header("content-type", PATCH_TYPE)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

fn file_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("sluice-file-id")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The URL of file `fileid` on `node`.
fn file_url(node: &TestNode, fileid: &str) -> String {
    format!("{}/v1/files/{fileid}", node.url)
}

/// A node that takes uploads of up to 1 MiB.
async fn node_with_a_1_mib_limit() -> TestNode {
    TestNode::start_with(NodeSettings {
        max_upload_size: 1 << 20,
        ..NodeSettings::default()
    })
    .await
}

/// Upload sessions the node keeps on disk.
fn upload_sessions(node: &TestNode) -> usize {
    std::fs::read_dir(node.data_dir().join("uploads"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn options_lists_the_tus_version_extensions_size_limit_and_checksums() {
    let node = node_with_a_1_mib_limit().await;
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/uploads", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(h["tus-resumable"], "1.0.0");
    assert_eq!(h["tus-max-size"], (1 << 20).to_string().as_str());
    let extensions = h["tus-extension"].to_str().unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    ] {
        assert!(extensions.split(',').any(|e| e == ext), "{ext}");
    }
    assert!(
        h["tus-checksum-algorithm"]
            .to_str()
            .unwrap()
            .contains("sha1")
    );
}

#[tokio::test]
async fn bad_creations_are_refused_with_a_reason_and_leave_no_session() {
    let node = node_with_a_1_mib_limit().await;
    let post = |headers: Vec<(&'static str, String)>| {
        let mut r = client().post(format!("{}/v1/uploads", node.url));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    type Case = (Vec<(&'static str, String)>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![("upload-length", "10".into())],
            StatusCode::PRECONDITION_FAILED,
            "tus 1.0.0",
        ),
        (
            vec![(TUS.0, TUS.1.into())],
            StatusCode::BAD_REQUEST,
            "Upload-Length",
        ),
        (
            vec![(TUS.0, TUS.1.into()), ("upload-length", "ten".into())],
            StatusCode::BAD_REQUEST,
            "whole number",
        ),
        (
            vec![
                (TUS.0, TUS.1.into()),
                ("upload-length", (2 << 20).to_string()),
            ],
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
        (
            vec![
                (TUS.0, TUS.1.into()),
                ("upload-length", "10".into()),
                ("upload-metadata", "q !!!".into()),
            ],
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            vec![
                (TUS.0, TUS.1.into()),
                ("upload-length", "10".into()),
                ("upload-metadata", encode_metadata([("q", "1.5")])),
            ],
            StatusCode::BAD_REQUEST,
            "0 < q <= 1",
        ),
        (
            vec![
                (TUS.0, TUS.1.into()),
                ("upload-length", "10".into()),
                ("upload-metadata", encode_metadata([("mts", "11")])),
            ],
            StatusCode::BAD_REQUEST,
            "mts",
        ),
        (
            vec![
                (TUS.0, TUS.1.into()),
                ("upload-length", "10".into()),
                ("upload-defer-length", "1".into()),
            ],
            StatusCode::BAD_REQUEST,
            "Defer",
        ),
    ];
    for (headers, status, words) in cases {
        let shown = format!("{headers:?}");
        let r = post(headers).await.unwrap();
        assert_eq!(r.status(), status, "{shown}");
        assert_eq!(r.headers()["tus-resumable"], "1.0.0");
        let text = error_text(&r.bytes().await.unwrap());
        assert!(text.contains(words), "{shown}: {text}");
    }
    // Nothing of the refused creations is left.
    assert_eq!(upload_sessions(&node), 0);
}

#[tokio::test]
async fn unknown_and_malformed_upload_ids_are_not_found() {
    let node = node_with_a_1_mib_limit().await;
    for id in ["aaaaaaaaaaaaaaaaaaaaaaaaaa", "../../etc/passwd", "x"] {
        let r = client()
            .head(format!("{}/v1/uploads/{id}", node.url))
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
    }
}

/// Sends `image` in `piece`-byte PATCHes; after each, checks what a receiver sees.
#[tokio::test]
async fn progressive_jpeg_gets_its_id_at_a_scan_boundary_and_every_state_decodes() {
    let node = TestNode::start().await;
    let mut all_etags = Vec::new();
    for (seed, q) in [(1u32, "0.3"), (2, "0.2"), (3, "0.5")] {
        let image = progressive_jpeg(320, 240, seed);
        let layout = sluice_media::jpeg::scan_boundaries(&image).unwrap();
        let mts = (image.len() as f64 * q.parse::<f64>().unwrap()).ceil() as usize;
        let expected_cut = layout.boundary_at_or_after(mts).unwrap();
        let url = create(
            &node,
            image.len(),
            &[
                ("filename", "photo.jpg"),
                ("content-type", "image/jpeg"),
                ("q", q),
                ("sender", "alice"),
                ("receiver", "bob"),
            ],
        )
        .await;
        let piece = 700;
        let mut fileid = None;
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < image.len() {
            let end = (offset + piece).min(image.len());
            let r = patch(&url, offset, &image[offset..end]).await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            assert_eq!(r.headers()["upload-offset"], end.to_string().as_str());
            assert!(r.headers().contains_key("upload-expires"));
            let id = file_id(r.headers());
            if fileid.is_none() {
                // The id comes with the PATCH that completes the scan holding the MTS.
                let scan_known_whole = end >= expected_cut + 2 || end == image.len();
                assert_eq!(
                    id.is_some(),
                    scan_known_whole,
                    "at {end} (cut {expected_cut})"
                );
                fileid = id.clone();
            } else {
                assert_eq!(id, fileid, "every later PATCH carries the id");
            }
            offset = end;
            let Some(fid) = &fileid else { continue };
            let (status, h, body) = get(&file_url(&node, fid), &[]).await;
            assert_eq!(status, StatusCode::OK);
            djpeg_dimensions(&body)
                .map(|d| assert_eq!(d, (320, 240)))
                .unwrap_or_else(|e| panic!("partial image at {end} does not decode: {e}"));
            if end < image.len() {
                assert_eq!(h["sluice-complete"], "false");
                assert_eq!(h["sluice-received"], end.to_string().as_str());
                assert_eq!(h["sluice-total"], image.len().to_string().as_str());
                assert_eq!(h["cache-control"], "no-store");
                assert!(
                    body.len() >= expected_cut,
                    "never less than the committed cut"
                );
                let etag = h["etag"].to_str().unwrap().to_owned();
                let again = client()
                    .get(format!("{}/v1/files/{fid}", node.url))
                    .header("if-none-match", &etag)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    again.status(),
                    StatusCode::NOT_MODIFIED,
                    "same bytes at {end}"
                );
                etags.push(etag);
            } else {
                assert!(!h.contains_key("sluice-complete"));
                assert_eq!(body, image, "the whole file at the end");
            }
        }
        etags.dedup();
        all_etags.extend(etags);
        // HEAD on the upload after the end still answers, with the id.
        let r = client()
            .head(&url)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["upload-offset"],
            image.len().to_string().as_str()
        );
        assert_eq!(file_id(r.headers()), fileid);
    }
    assert!(
        all_etags.len() >= 4,
        "the ETag changes as scans arrive: {all_etags:?}"
    );
    // Session files are gone once uploads end.
    assert_eq!(upload_sessions(&node), 0);
}

#[tokio::test]
async fn other_files_commit_at_exactly_their_mts_and_readers_see_what_arrived() {
    let node = TestNode::start().await;
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let url = create(
        &node,
        data.len(),
        &[("content-type", "audio/ogg"), ("mts", "12345")],
    )
    .await;
    let r = patch(&url, 0, &data[..12_000]).await;
    assert!(file_id(r.headers()).is_none());
    let r = patch(&url, 12_000, &data[12_000..20_000]).await;
    let fileid = file_id(r.headers()).expect("committed once 12345 bytes arrived");
    let key = sluice_proto::FileId::parse(&fileid).unwrap().key;
    let stored = node.state.store().stat(key).unwrap().unwrap();
    assert_eq!(
        stored.size, 12_345,
        "the committed prefix is exactly the MTS"
    );
    let (status, h, body) = get(&file_url(&node, &fileid), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "audio/ogg");
    assert_eq!(body, &data[..20_000], "readers get everything that arrived");
    // HEAD on the file tells the same without a body.
    let r = client()
        .head(format!("{}/v1/files/{fileid}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["sluice-received"], "20000");
    assert_eq!(r.headers()["content-length"], "20000");
    let r = patch(&url, 20_000, &data[20_000..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, h, body) = get(&file_url(&node, &fileid), &[]).await;
    assert_eq!(body, data);
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
}

/// A JPEG upload (q 0.3) whose first 1000 bytes are in; its URL and the whole image.
async fn jpeg_upload_with_its_first_1000_bytes(node: &TestNode) -> (String, Vec<u8>) {
    let image = progressive_jpeg(160, 120, 7);
    let url = create(
        node,
        image.len(),
        &[("content-type", "image/jpeg"), ("q", "0.3")],
    )
    .await;
    let r = patch(&url, 0, &image[..1000]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    (url, image)
}

/// The offset the node gives for the upload at `url`.
async fn upload_offset(url: &str) -> String {
    let r = client()
        .head(url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    r.headers()["upload-offset"].to_str().unwrap().to_owned()
}

/// Sends the rest of `image` from `offset`; the file must then be the image, byte for byte:
/// nothing refused before corrupted it.
async fn finish_and_expect_the_image(node: &TestNode, url: &str, image: &[u8], offset: usize) {
    let r = patch(url, offset, &image[offset..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fileid = file_id(r.headers()).unwrap();
    assert_eq!(get(&file_url(node, &fileid), &[]).await.2, image);
}

#[tokio::test]
async fn a_patch_at_the_wrong_offset_gets_409_with_the_right_one_and_corrupts_nothing() {
    let node = TestNode::start().await;
    let (url, image) = jpeg_upload_with_its_first_1000_bytes(&node).await;
    let r = patch(&url, 500, &image[500..1500]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["upload-offset"], "1000");
    finish_and_expect_the_image(&node, &url, &image, 1000).await;
}

#[tokio::test]
async fn a_patch_of_the_wrong_content_type_gets_415_and_corrupts_nothing() {
    let node = TestNode::start().await;
    let (url, image) = jpeg_upload_with_its_first_1000_bytes(&node).await;
    let r = client()
        .patch(&url)
        .header(TUS.0, TUS.1)
        .header("upload-offset", 1000)
        .header("content-type", "image/jpeg")
        .body(image[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    finish_and_expect_the_image(&node, &url, &image, 1000).await;
}

#[tokio::test]
async fn a_patch_failing_its_checksum_gets_460_and_keeps_nothing_then_the_right_one_is_taken() {
    use base64::Engine;
    use sha1::Digest;
    let node = TestNode::start().await;
    let (url, image) = jpeg_upload_with_its_first_1000_bytes(&node).await;
    let digest = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(b));
    let send_checked = |offset: usize, body: Vec<u8>, sum: String| {
        client()
            .patch(&url)
            .header(TUS.0, TUS.1)
            .header("upload-offset", offset)
            .header("content-type", PATCH_TYPE)
            .header("upload-checksum", format!("sha1 {sum}"))
            .body(body)
            .send()
    };
    // A body that does not match its checksum: 460, nothing kept.
    let r = send_checked(1000, image[1000..3000].to_vec(), digest(b"something else"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(upload_offset(&url).await, "1000");
    // The right checksum is taken.
    let r = send_checked(1000, image[1000..3000].to_vec(), digest(&image[1000..3000]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["upload-offset"], "3000");
    finish_and_expect_the_image(&node, &url, &image, 3000).await;
}

#[tokio::test]
async fn a_patch_past_the_upload_length_gets_413_and_corrupts_nothing() {
    let node = TestNode::start().await;
    let (url, image) = jpeg_upload_with_its_first_1000_bytes(&node).await;
    // A body past Upload-Length: 413 before anything is read.
    let mut long = image[1000..].to_vec();
    long.extend_from_slice(b"extra");
    let r = patch(&url, 1000, &long).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    finish_and_expect_the_image(&node, &url, &image, 1000).await;
}

#[tokio::test]
async fn garbage_claiming_to_be_a_jpeg_is_refused_and_makes_no_file() {
    let node = TestNode::start().await;
    let mut garbage = vec![0xFF, 0xD8, 0xFF, 0xC4, 0x00, 0x01];
    garbage.extend((0..5000).map(|i| (i * 7) as u8));
    let url = create(
        &node,
        garbage.len(),
        &[("content-type", "image/jpeg"), ("q", "0.1")],
    )
    .await;
    let r = patch(&url, 0, &garbage).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(file_id(r.headers()).is_none());
    let text = error_text(&r.bytes().await.unwrap());
    assert!(text.contains("not a valid JPEG"), "{text}");
    let files_before = node.state.store().files();
    let r = patch(&url, 6, &garbage[6..]).await;
    assert!(r.status().is_client_error());
    assert_eq!(node.state.store().files(), files_before);
    assert_eq!(node.state.store().files(), 0, "no file came of it");
}

/// A valid image that turns to garbage after its id: the garbage is refused and not kept, so
/// the file, finalised, is still an image.
#[tokio::test]
async fn a_jpeg_turning_to_garbage_after_its_id_is_refused_and_the_file_stays_an_image() {
    let node = TestNode::start().await;
    let image = progressive_jpeg(320, 240, 9);
    let url = create(
        &node,
        image.len(),
        &[("content-type", "image/jpeg"), ("q", "0.3")],
    )
    .await;
    let part = image.len() * 6 / 10;
    let fileid = file_id(patch(&url, 0, &image[..part]).await.headers()).unwrap();
    let mut bad = image[part..part + 100].to_vec();
    bad.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xD8]);
    let r = patch(&url, part, &bad).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client()
        .head(&url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["upload-offset"], part.to_string().as_str());
    let r = client()
        .delete(&url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, h, body) = get(&file_url(&node, &fileid), &[]).await;
    assert_eq!(
        (status, &h["sluice-complete"]),
        (StatusCode::OK, &"false".parse().unwrap())
    );
    assert_eq!(djpeg_dimensions(&body), Ok((320, 240)));
}

/// A node whose watchdog gives up on an upload quiet for 400 ms.
async fn node_that_abandons_quiet_uploads() -> TestNode {
    TestNode::start_with(NodeSettings {
        progressive: sluice_storage::progressive::ProgressiveConfig {
            abandon_after: Duration::from_millis(400),
            ..Default::default()
        },
        ..NodeSettings::default()
    })
    .await
}

#[tokio::test]
async fn a_sender_that_vanishes_leaves_the_file_finalised_at_what_arrived() {
    let node = node_that_abandons_quiet_uploads().await;
    let mut events = node.state.events().subscribe();
    let image = progressive_jpeg(320, 240, 11);
    let url = create(
        &node,
        image.len(),
        &[
            ("content-type", "image/jpeg"),
            ("q", "0.3"),
            ("sender", "a"),
            ("receiver", "b"),
        ],
    )
    .await;
    let part = image.len() * 6 / 10;
    let r = patch(&url, 0, &image[..part]).await;
    let fileid = file_id(r.headers()).expect("past the MTS");
    let key = sluice_proto::FileId::parse(&fileid).unwrap().key;
    // Nothing more comes: the watchdog finalises the file at what arrived.
    wait_until("the file is abandoned", Duration::from_secs(10), || async {
        matches!(
            node.state.store().stat(key).unwrap().map(|m| m.state),
            Some(sluice_blob::BlobState::Abandoned { .. })
        )
    })
    .await;
    let stored = node.state.store().stat(key).unwrap().unwrap();
    assert_eq!(stored.size, part as u64, "everything that arrived is kept");
    let (status, h, body) = get(&file_url(&node, &fileid), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["sluice-complete"], "false");
    assert_eq!(djpeg_dimensions(&body), Ok((320, 240)));
    let first = events.recv().await.unwrap();
    let second = events.recv().await.unwrap();
    assert_eq!(
        (first.kind, second.kind),
        (
            sluice_storage::events::EventKind::Committed,
            sluice_storage::events::EventKind::Abandoned
        )
    );
    assert_eq!(
        (second.received, second.total),
        (part as u64, image.len() as u64)
    );
    assert_eq!(
        (second.sender.as_str(), second.receiver.as_str()),
        ("a", "b")
    );
    // The upload is over: a late PATCH finds nothing.
    wait_until(
        "the session is forgotten",
        Duration::from_secs(10),
        || async {
            let r = patch(&url, part, &image[part..]).await;
            r.status() == StatusCode::NOT_FOUND
        },
    )
    .await;
}

#[tokio::test]
async fn a_quiet_upload_that_never_reached_its_mts_is_dropped_without_a_trace() {
    let node = node_that_abandons_quiet_uploads().await;
    let image = progressive_jpeg(320, 240, 11);
    let url = create(
        &node,
        image.len(),
        &[("content-type", "image/jpeg"), ("q", "0.9")],
    )
    .await;
    let r = patch(&url, 0, &image[..1000]).await;
    assert!(file_id(r.headers()).is_none());
    wait_until(
        "the quiet upload is dropped",
        Duration::from_secs(10),
        || async { upload_sessions(&node) == 0 },
    )
    .await;
    assert_eq!(node.state.store().files(), 0, "no file came of it");
}

/// DELETE of the upload at `url`, as tus terminates it.
async fn terminate(url: &str) -> StatusCode {
    client()
        .delete(url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn termination_before_the_mts_leaves_nothing() {
    let node = TestNode::start().await;
    let data = vec![7u8; 10_000];
    let url = create(&node, data.len(), &[("mts", "5000")]).await;
    patch(&url, 0, &data[..1000]).await;
    assert_eq!(terminate(&url).await, StatusCode::NO_CONTENT);
    let r = client()
        .head(&url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(upload_sessions(&node), 0);
    assert_eq!(node.state.store().files(), 0);
}

#[tokio::test]
async fn termination_after_the_mts_keeps_the_file_finalised_at_what_arrived() {
    let node = TestNode::start().await;
    let data = vec![7u8; 10_000];
    // After the MTS the id is out, so the file stays, finalised at what arrived.
    let url = create(&node, data.len(), &[("mts", "5000")]).await;
    let r = patch(&url, 0, &data[..6000]).await;
    let fileid = file_id(r.headers()).unwrap();
    assert_eq!(terminate(&url).await, StatusCode::NO_CONTENT);
    let (status, h, body) = get(&file_url(&node, &fileid), &[]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 6000));
    assert_eq!(h["sluice-complete"], "false");
    assert_eq!(terminate(&url).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn follow_streams_bytes_as_they_arrive() {
    let node = TestNode::start().await;
    let image = progressive_jpeg(320, 240, 5);
    let url = create(
        &node,
        image.len(),
        &[("content-type", "image/jpeg"), ("q", "0.2")],
    )
    .await;
    let half = image.len() / 2;
    let r = patch(&url, 0, &image[..half]).await;
    let fileid = file_id(r.headers()).unwrap();
    let mut response = client()
        .get(format!("{}/v1/files/{fileid}?follow=1", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["sluice-complete"], "false");
    // The follower has every byte that arrived before any more is sent.
    let mut got = Vec::new();
    while got.len() < half {
        got.extend_from_slice(&response.chunk().await.unwrap().expect("more bytes"));
    }
    assert_eq!(got, &image[..half]);
    let mut offset = half;
    while offset < image.len() {
        let end = (offset + 3000).min(image.len());
        patch(&url, offset, &image[offset..end]).await;
        offset = end;
        while got.len() < offset {
            got.extend_from_slice(&response.chunk().await.unwrap().expect("more bytes"));
        }
    }
    assert!(
        response.chunk().await.unwrap().is_none(),
        "ends with the file"
    );
    assert_eq!(got, image);
}

#[tokio::test]
async fn a_dropped_connection_keeps_what_arrived_and_the_upload_resumes() {
    let node = TestNode::start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let url = create(&node, data.len(), &[("mts", "150000")]).await;
    let path = url.strip_prefix(&node.url).unwrap().to_owned();
    // A PATCH whose connection dies halfway through its body.
    let mut tcp = tokio::net::TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: {PATCH_TYPE}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&data[..80_000]).await.unwrap();
    tcp.flush().await.unwrap();
    let head_offset = || async {
        let r = client()
            .head(&url)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap();
        r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    wait_until(
        "the first bytes arrive",
        Duration::from_secs(10),
        || async { head_offset().await == 80_000 },
    )
    .await;
    drop(tcp);
    // Resume from where the server says (even before it noticed the drop, a new PATCH
    // takes the upload over).
    let offset = head_offset().await;
    assert_eq!(offset, 80_000);
    let r = patch(&url, offset, &data[offset..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fileid = file_id(r.headers()).unwrap();
    assert_eq!(get(&file_url(&node, &fileid), &[]).await.2, data);
}
