//! Signalling for progressive uploads: server-sent events at `/v1/events` and the webhook
//! (signed, retried), as an IM server would consume them; and the stock clients: tuspy (the
//! Python tus client) and curl speaking the raw protocol.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use sluice_proto::tus::encode_metadata;
use sluice_storage::events::{WebhookConfig, sign_body};
use sluice_testkit::http::{curl, get};
use sluice_testkit::images::{djpeg_dimensions, progressive_jpeg};
use sluice_testkit::{NodeSettings, TestNode, wait_until};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");

/// Sends `data` over tus in `piece`-byte PATCHes; returns the file id.
async fn tus_upload(
    node: &TestNode,
    data: &[u8],
    metadata: &[(&str, &str)],
    piece: usize,
) -> String {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/uploads", node.url))
        .header(TUS.0, TUS.1)
        .header("upload-length", data.len())
        .header("upload-metadata", encode_metadata(metadata.iter().copied()))
        .header("authorization", "Bearer t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = format!("{}{}", node.url, r.headers()["location"].to_str().unwrap());
    let mut fileid = None;
    for (i, chunk) in data.chunks(piece).enumerate() {
        let r = client
            .patch(&url)
            .header(TUS.0, TUS.1)
            .header("upload-offset", i * piece)
            .header("content-type", "application/offset+octet-stream")
            .header("authorization", "Bearer t0ken")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        if let Some(id) = r.headers().get("sluice-file-id") {
            fileid = Some(id.to_str().unwrap().to_owned());
        }
    }
    fileid.unwrap()
}

#[derive(Default)]
struct Received {
    posts: Vec<(HeaderMap, Vec<u8>)>,
    failures_left: usize,
}

/// A webhook endpoint that fails its first `failures` posts with 500.
async fn webhook_receiver(failures: usize) -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received {
        failures_left: failures,
        ..Received::default()
    }));
    let shared = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let shared = shared.clone();
            async move {
                let mut r = shared.lock().unwrap();
                if r.failures_left > 0 {
                    r.failures_left -= 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                r.posts.push((headers, body.to_vec()));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// A node whose writes (and event stream) need the API token `t0ken`.
async fn node_with_a_token() -> TestNode {
    TestNode::start_with(NodeSettings {
        access: sluice_storage::AccessPolicy {
            url_secret: None,
            api_tokens: sluice_proto::SecretSet::parse("t0ken"),
        },
        ..NodeSettings::default()
    })
    .await
}

#[tokio::test]
async fn the_event_stream_needs_the_api_token() {
    let node = node_with_a_token().await;
    let client = reqwest::Client::new();
    // The stream names senders and receivers: it needs the token.
    let r = client
        .get(format!("{}/v1/events", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(format!("{}/v1/events", node.url))
        .header("authorization", "Bearer t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn events_reach_the_stream_and_the_webhook_signed_and_retried() {
    let (hook, received) = webhook_receiver(2).await;
    let mut webhook = WebhookConfig::new(
        hook,
        sluice_proto::SecretSet::parse("hook-secret,old-secret"),
    );
    webhook.backoff = Duration::from_millis(20);
    let node = TestNode::start_with(NodeSettings {
        webhook: Some(webhook),
        access: sluice_storage::AccessPolicy {
            url_secret: None,
            api_tokens: sluice_proto::SecretSet::parse("t0ken"),
        },
        ..NodeSettings::default()
    })
    .await;
    let client = reqwest::Client::new();
    let mut stream = client
        .get(format!("{}/v1/events", node.url))
        .header("authorization", "Bearer t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    let image = progressive_jpeg(320, 240, 21);
    let fileid = tus_upload(
        &node,
        &image,
        &[
            ("content-type", "image/jpeg"),
            ("q", "0.3"),
            ("sender", "alice"),
            ("receiver", "bob"),
        ],
        4000,
    )
    .await;

    // Server-sent events: committed, then completed.
    let mut text = String::new();
    while !text.contains("event: file.completed") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<(String, serde_json::Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(events[0].0, "file.committed");
    assert_eq!(events[1].0, "file.completed");
    let committed = &events[0].1;
    assert_eq!(committed["fileid"], fileid.as_str());
    assert_eq!(committed["sender"], "alice");
    assert_eq!(committed["receiver"], "bob");
    assert_eq!(committed["total"], image.len());
    assert!(committed["received"].as_u64().unwrap() < image.len() as u64);
    assert_eq!(events[1].1["received"], image.len());

    // The webhook got both, in order, despite failing twice, each signed with the first secret.
    wait_until("both webhook posts", Duration::from_secs(10), || async {
        received.lock().unwrap().posts.len() == 2
    })
    .await;
    let posts = received.lock().unwrap().posts.clone();
    for ((headers, body), name) in posts.iter().zip(["file.committed", "file.completed"]) {
        assert_eq!(headers["sluice-event"], name);
        let want = format!("sha256={}", sign_body("hook-secret", body));
        assert_eq!(headers["sluice-signature"].to_str().unwrap(), want);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["fileid"], fileid.as_str());
    }
    let metrics = String::from_utf8(get(&format!("{}/metrics", node.url), &[]).await.2).unwrap();
    for line in [
        "sluice_upload_events_total{event=\"file.committed\"} 1",
        "sluice_upload_events_total{event=\"file.completed\"} 1",
        "sluice_webhook_lost_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn tuspy_uploads_resumably_with_checksums() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let image = progressive_jpeg(480, 360, 4);
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, &image).unwrap();
    // The stock client: chunks of 8000 bytes, a sha1 checksum on each, our metadata.
    let script = r#"
import sys
from tusclient import client
c = client.TusClient(sys.argv[1] + "/v1/uploads")
u = c.uploader(sys.argv[2], chunk_size=8000, upload_checksum=True,
               metadata={"filename": "photo.jpg", "content-type": "image/jpeg", "q": "0.3"})
u.upload()
print(u.url)
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &node.url, path.to_str().unwrap()])
        .output()
        .await
        .expect("python3 runs (scripts/test.sh installs tuspy)");
    assert!(
        out.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upload_url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = reqwest::Client::new()
        .head(&upload_url)
        .header(TUS.0, TUS.1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["upload-offset"],
        image.len().to_string().as_str()
    );
    let fileid = r.headers()["sluice-file-id"].to_str().unwrap().to_owned();
    let (_, _, body) = get(&format!("{}/v1/files/{fileid}", node.url), &[]).await;
    assert_eq!(body, image);
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn curl_speaks_the_raw_protocol() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let image = progressive_jpeg(320, 240, 8);
    let cut = image.len() / 2;
    std::fs::write(dir.path().join("a"), &image[..cut]).unwrap();
    std::fs::write(dir.path().join("b"), &image[cut..]).unwrap();
    let meta = format!(
        "Upload-Metadata: {}",
        encode_metadata([("content-type", "image/jpeg"), ("q", "0.25")])
    );
    // creation-with-upload: the first half rides on the POST.
    let head = String::from_utf8(
        curl(&[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &format!("Upload-Length: {}", image.len()),
            "-H",
            &meta,
            "-H",
            "Content-Type: application/offset+octet-stream",
            "--data-binary",
            &format!("@{}", dir.path().join("a").display()),
            &format!("{}/v1/uploads", node.url),
        ])
        .await,
    )
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    assert_eq!(
        header(&head, "upload-offset"),
        Some(cut.to_string().as_str())
    );
    let location = header(&head, "location").unwrap().to_owned();
    let fileid = header(&head, "sluice-file-id")
        .expect("past the MTS already")
        .to_owned();
    // A receiver with curl gets a viewable image now.
    let partial = dir.path().join("partial.jpg");
    let head = String::from_utf8(
        curl(&[
            "-sS",
            "-D",
            "-",
            "-o",
            partial.to_str().unwrap(),
            &format!("{}/v1/files/{fileid}", node.url),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(header(&head, "sluice-complete"), Some("false"));
    assert_eq!(
        djpeg_dimensions(&std::fs::read(&partial).unwrap()),
        Ok((320, 240))
    );
    // HEAD, then the rest with PATCH.
    let head = String::from_utf8(
        curl(&[
            "-sS",
            "-I",
            "-H",
            "Tus-Resumable: 1.0.0",
            &format!("{}{location}", node.url),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(
        header(&head, "upload-offset"),
        Some(cut.to_string().as_str())
    );
    let head = String::from_utf8(
        curl(&[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "PATCH",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &format!("Upload-Offset: {cut}"),
            "-H",
            "Content-Type: application/offset+octet-stream",
            "--data-binary",
            &format!("@{}", dir.path().join("b").display()),
            &format!("{}{location}", node.url),
        ])
        .await,
    )
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert_eq!(header(&head, "sluice-file-id"), Some(fileid.as_str()));
    let whole = dir.path().join("whole.jpg");
    curl(&[
        "-sS",
        "-f",
        "-o",
        whole.to_str().unwrap(),
        &format!("{}/v1/files/{fileid}", node.url),
    ])
    .await;
    assert_eq!(std::fs::read(&whole).unwrap(), image);
}

/// A tus creation of an upload of `length` bytes at `url`, with `token` as its bearer if any.
async fn tus_create(
    url: String,
    token: Option<&str>,
    length: usize,
) -> reqwest::Result<reqwest::Response> {
    let mut r = reqwest::Client::new()
        .post(url)
        .header(TUS.0, TUS.1)
        .header("upload-length", length);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await
}

/// A PATCH of ten bytes at offset 0 to the upload at `url`, with `token` as its bearer if any.
async fn tus_patch_ten_bytes(
    url: String,
    token: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut r = reqwest::Client::new()
        .patch(url)
        .header(TUS.0, TUS.1)
        .header("upload-offset", 0)
        .header("content-type", "application/offset+octet-stream")
        .body(vec![1u8; 10]);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await
}

#[tokio::test]
async fn tus_creation_and_patches_need_the_api_token() {
    let node = node_with_a_token().await;
    let base = format!("{}/v1/uploads", node.url);
    assert_eq!(
        tus_create(base.clone(), None, 10).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        tus_create(base.clone(), Some("wrong"), 10)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Created with the token: its PATCHes need the token too.
    let r = tus_create(base.clone(), Some("t0ken"), 10).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let upload = format!("{}{}", node.url, r.headers()["location"].to_str().unwrap());
    assert_eq!(
        tus_patch_ten_bytes(upload.clone(), None)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        tus_patch_ten_bytes(upload, Some("t0ken"))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_signed_upload_link_lets_tus_create_within_its_cap_and_the_upload_id_is_the_credential() {
    let tokens = sluice_proto::SecretSet::parse("t0ken").unwrap();
    let node = node_with_a_token().await;
    // A phone with a signed upload link: the link caps the size, and the unguessable upload
    // id it gets back is its credential for the PATCHes.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let link = sluice_proto::signature::sign_upload(&tokens, "POST", "/v1/uploads", expires, 1000);
    let signed = format!("{}{link}", node.url);
    assert_eq!(
        tus_create(signed.clone(), None, 5000)
            .await
            .unwrap()
            .status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let r = tus_create(signed, None, 10).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let upload = format!("{}{}", node.url, r.headers()["location"].to_str().unwrap());
    let r = tus_patch_ten_bytes(upload, None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fileid = r.headers()["sluice-file-id"].to_str().unwrap().to_owned();
    let (_, _, body) = get(&format!("{}/v1/files/{fileid}", node.url), &[]).await;
    assert_eq!(body, [1u8; 10]);
}
