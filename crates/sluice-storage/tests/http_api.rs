//! The HTTP file API of DESIGN.md §3 against a real node on 127.0.0.1.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header;
use sluice_testkit::http::{curl, error_text, get, metric, upload};
use sluice_testkit::{NodeSettings, TestNode, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The URL of `path` on `node`.
fn at(node: &TestNode, path: &str) -> String {
    format!("{}{path}", node.url)
}

#[tokio::test]
async fn upload_then_read_whole_ranges_and_conditionals() {
    let node = TestNode::start().await;
    let data = pattern(200_000);
    let created = upload(&node.url, data.clone(), "image/jpeg").await;
    let fileid = created["fileid"].as_str().unwrap();
    assert!(fileid.starts_with("g1/"));
    assert_eq!(created["url"], format!("/v1/files/{fileid}"));
    assert_eq!(created["size"], 200_000);
    let path = format!("/v1/files/{fileid}");

    let (status, h, body) = get(&at(&node, &path), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);
    assert_eq!(h[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );

    let (status, h, body) = get(&at(&node, &path), &[("range", "bytes=65530-65545")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h[header::CONTENT_RANGE], "bytes 65530-65545/200000");
    assert_eq!(body, &data[65530..65546]);

    let (status, _, body) = get(&at(&node, &path), &[("range", "bytes=-10")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &data[199_990..]);

    let (status, _, body) = get(&at(&node, &path), &[("range", "bytes=199999-")]).await;
    assert_eq!((status, body.len()), (StatusCode::PARTIAL_CONTENT, 1));

    let (status, h, body) = get(&at(&node, &path), &[("range", "bytes=200000-")]).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h[header::CONTENT_RANGE], "bytes */200000");
    assert!(!error_text(&body).is_empty());

    let (status, _, body) = get(&at(&node, &path), &[("range", "bytes=9-3")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_text(&body).contains("Range"));

    // Several ranges, or another unit: the whole file, as RFC 9110 allows.
    let (status, _, body) = get(&at(&node, &path), &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 200_000));

    let (status, _, body) = get(&at(&node, &path), &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (status, _, _) = get(
        &at(&node, &path),
        &[("if-none-match", "\"other\", W/\"x\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&at(&node, &path), &[("if-none-match", "*")]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // If-Range: the range applies only if the client's copy is this one.
    let (status, _, _) = get(
        &at(&node, &path),
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let (status, _, body) = get(
        &at(&node, &path),
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 200_000));

    let head = reqwest::Client::new()
        .head(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "200000");
    assert_eq!(head.headers()[header::ETAG].to_str().unwrap(), etag);
    node.stop().await;
}

#[tokio::test]
async fn default_content_type_and_empty_file() {
    let node = TestNode::start().await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/files", node.url))
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["size"], 0);
    let (status, h, body) = get(&at(&node, v["url"].as_str().unwrap()), &[]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
    let (status, _, _) = get(
        &at(&node, v["url"].as_str().unwrap()),
        &[("range", "bytes=0-")],
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn multipart_upload_keeps_the_part_type() {
    let node = TestNode::start().await;
    let data = pattern(70_000);
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored")
        .part(
            "file",
            reqwest::multipart::Part::bytes(data.clone())
                .file_name("v.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/files", node.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["size"], 70_000);
    let (_, h, body) = get(&at(&node, v["url"].as_str().unwrap()), &[]).await;
    assert_eq!(body, data);
    assert_eq!(h[header::CONTENT_TYPE], "video/mp4");

    let form = reqwest::multipart::Form::new().text("other", "x");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/files", node.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(error_text(&r.bytes().await.unwrap()).contains("file"));
    assert_eq!(node.state.store().files(), 1);
}

#[tokio::test]
async fn delete_then_gone() {
    let node = TestNode::start().await;
    let v = upload(&node.url, pattern(1000), "audio/amr").await;
    let url = format!("{}{}", node.url, v["url"].as_str().unwrap());
    let c = reqwest::Client::new();
    assert_eq!(
        c.delete(&url).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!error_text(&r.bytes().await.unwrap()).is_empty());
    assert_eq!(
        c.delete(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        (node.state.store().files(), node.state.store().bytes()),
        (0, 0)
    );
}

#[tokio::test]
async fn malformed_unknown_and_foreign_ids() {
    let node = TestNode::start().await;
    for bad in [
        "g1/short",
        "g1/AAAAAAAAAAAAAAAAAAAAAAAAAA",
        "G1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "nogroup",
        "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa/extra",
        "g1/%2e%2e%2f%2e%2e",
    ] {
        let (status, _, body) = get(&at(&node, &format!("/v1/files/{bad}")), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(error_text(&body).contains("file id"), "{bad}");
    }
    let (status, _, _) = get(&at(&node, "/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(&at(&node, "/v1/files/g2/aaaaaaaaaaaaaaaaaaaaaaaaaa"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(&at(&node, "/nothing/here"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!error_text(&body).is_empty());

    // Traversal-shaped paths sent raw, as a hostile client would (reqwest would normalise them).
    for raw in [
        "/v1/files/../../etc/passwd",
        "/v1/files/g1/../../../etc/passwd",
        "/v1/files/g1/..%2f..%2fetc%2fpasswd",
    ] {
        let (status, body) = raw_request(
            &node,
            &format!("GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(status == 400 || status == 404, "{raw}: {status}");
        assert!(!body.contains("root:"), "{raw} leaked a file");
    }
}

#[tokio::test]
async fn unknown_methods_get_405_with_allow() {
    let node = TestNode::start().await;
    let c = reqwest::Client::new();
    let r = c
        .put(format!(
            "{}/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
            node.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD, DELETE");
    assert!(!error_text(&r.bytes().await.unwrap()).is_empty());
    let r = c
        .get(format!("{}/v1/files", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "POST");
    let (status, _) = raw_request(
        &node,
        "BREW /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn oversized_uploads_get_413_and_store_nothing() {
    let node = TestNode::start_with(NodeSettings {
        max_upload_size: 100_000,
        ..NodeSettings::default()
    })
    .await;
    let c = reqwest::Client::new();
    // Declared too large: refused before the body is read.
    let r = c
        .post(format!("{}/v1/files", node.url))
        .body(vec![0u8; 100_001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_text(&r.bytes().await.unwrap()).contains("100000"));
    // Chunked, so the size shows only as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..30).map(|_| Ok(vec![1u8; 10_000])).collect();
    let r = c
        .post(format!("{}/v1/files", node.url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server may answer 413 or close the connection while the client is still sending.
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Multipart too.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(vec![2u8; 150_000]));
    let r = c
        .post(format!("{}/v1/files", node.url))
        .multipart(form)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Exactly the limit is fine.
    let r = c
        .post(format!("{}/v1/files", node.url))
        .body(vec![0u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(node.state.store().files(), 1);
    wait_until("temp files cleaned", Duration::from_secs(10), || async {
        node.temp_files().is_empty()
    })
    .await;
}

#[tokio::test]
async fn short_body_and_vanishing_clients_leave_nothing() {
    let node = TestNode::start().await;
    // A body shorter than its Content-Length, then the client stops sending.
    let mut s = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![7u8; 2_000_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    if !answer.is_empty() {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    // A client that disconnects mid-upload without a word.
    let mut s = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![7u8; 3_000_000]).await.unwrap();
    drop(s);

    // A chunked body cut off mid-chunk.
    let mut s = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\nabc",
    )
    .await
    .unwrap();
    drop(s);

    wait_until(
        "temp files of broken uploads removed",
        Duration::from_secs(10),
        || async { node.temp_files().is_empty() },
    )
    .await;
    assert_eq!(node.state.store().files(), 0);
    // And the node still works.
    upload(&node.url, pattern(10), "text/plain").await;
}

#[tokio::test]
async fn bad_content_type_is_refused() {
    let node = TestNode::start().await;
    let (status, body) = raw_request(
        &node,
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: nonsense\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(node.state.store().files(), 0);
}

#[tokio::test]
async fn large_file_streams_in_and_out() {
    let node = TestNode::start_with(NodeSettings {
        max_upload_size: 1 << 30,
        ..NodeSettings::default()
    })
    .await;
    const LEN: usize = 96 << 20;
    let chunk = pattern(1 << 20);
    let body = futures_util::stream::iter(
        (0..LEN >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/files", node.url))
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["size"], LEN);
    let path = v["url"].as_str().unwrap();
    let one = pattern(1 << 20);
    let (status, _, body) = get(&at(&node, path), &[("range", "bytes=50331640-50331660")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let at = 50_331_640 % (1 << 20);
    let want: Vec<u8> = (at..at + 21).map(|i| one[i % (1 << 20)]).collect();
    assert_eq!(body, want);
    // The whole body, streamed.
    let mut r = reqwest::Client::new()
        .get(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    let mut seen = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, one[(seen + i) % (1 << 20)]);
        }
        seen += chunk.len();
    }
    assert_eq!(seen, LEN);
}

#[tokio::test]
async fn damaged_file_is_never_served_as_good() {
    let node = TestNode::start().await;
    // Larger than one read chunk (512 KiB), so the damage is met after the head went out.
    let v = upload(&node.url, pattern(1_500_000), "image/png").await;
    // Damage the one data file on disk.
    let file = sluice_blob::data_file_paths(node.data_dir())
        .unwrap()
        .remove(0);
    let mut raw = std::fs::read(&file).unwrap();
    let n = raw.len();
    raw[n - 1000] ^= 0x55;
    std::fs::write(&file, raw).unwrap();
    let path = v["url"].as_str().unwrap();
    // The damage is in the last block: a range there gets a clean 500.
    let (status, _, body) = get(&at(&node, path), &[("range", "bytes=-100")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_text(&body).contains("damaged"));
    // A whole read starts fine and then fails: the client must see an error, never a full body.
    let r = reqwest::Client::new()
        .get(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the first chunk is sound");
    assert!(
        r.bytes().await.is_err(),
        "damaged body delivered as complete"
    );
    // Undamaged blocks still read.
    let (status, _, body) = get(&at(&node, path), &[("range", "bytes=0-999")]).await;
    assert_eq!((status, body), (StatusCode::PARTIAL_CONTENT, pattern(1000)));
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_files() {
    let node = TestNode::start().await;
    let v = upload(&node.url, pattern(5000), "image/jpeg").await;
    get(&at(&node, v["url"].as_str().unwrap()), &[]).await;
    get(&at(&node, "/v1/files/g1/bad"), &[]).await;
    let (status, h, body) = get(&at(&node, "/metrics"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    for want in [
        "sluice_http_requests_total{route=\"/v1/files\",method=\"POST\",status=\"201\"} 1",
        "sluice_http_requests_total{route=\"/v1/files/{*fileid}\",method=\"GET\",status=\"200\"} 1",
        "sluice_http_requests_total{route=\"/v1/files/{*fileid}\",method=\"GET\",status=\"400\"} 1",
        "sluice_http_request_duration_seconds_count{route=\"/v1/files\",method=\"POST\"} 1",
        "sluice_http_received_bytes_total 5000",
        "sluice_store_files 1",
        "sluice_store_bytes 5000",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let sent: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_http_sent_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent >= 5000);
    let (status, _, body) = get(&at(&node, "/healthz"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(body).unwrap().contains("ok"));
}

#[tokio::test]
async fn curl_uploads_and_reads_ranges() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("photo.jpg");
    std::fs::write(&src, pattern(123_456)).unwrap();
    let out = curl(&[
        "-sS",
        "-f",
        "-H",
        "Content-Type: image/jpeg",
        "--data-binary",
        &format!("@{}", src.display()),
        &format!("{}/v1/files", node.url),
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let url = format!("{}{}", node.url, v["url"].as_str().unwrap());
    assert_eq!(curl(&["-sS", "-f", &url]).await, pattern(123_456));
    assert_eq!(
        curl(&["-sS", "-f", "-r", "1000-1999", &url]).await,
        &pattern(123_456)[1000..2000]
    );
    let out = curl(&[
        "-sS",
        "-f",
        "-F",
        &format!("file=@{};type=image/jpeg", src.display()),
        &format!("{}/v1/files", node.url),
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["size"], 123_456);
}

/// Sends raw bytes and returns the status code and body text.
async fn raw_request(node: &TestNode, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_stalled_upload_times_out_with_408_and_leaves_nothing() {
    let node = TestNode::start_with(NodeSettings {
        body_idle_timeout: Duration::from_millis(300),
        ..NodeSettings::default()
    })
    .await;
    let mut s = TcpStream::connect(node.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![1u8; 1_500_000]).await.unwrap();
    // The client now goes quiet without closing; the server must give up on its own.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "server waited forever for a stalled body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stalled"));
    wait_until("temp file removed", Duration::from_secs(10), || async {
        node.temp_files().is_empty()
    })
    .await;
    assert_eq!(node.state.store().files(), 0);
}

#[tokio::test]
async fn hot_files_are_served_from_memory_until_deleted() {
    let node = TestNode::start().await;
    let data = pattern(150_000);
    let v = upload(&node.url, data.clone(), "image/webp").await;
    let path = v["url"].as_str().unwrap();

    // First whole read comes from disk and fills the cache; the next ones are hits.
    assert_eq!(get(&at(&node, path), &[]).await.2, data);
    assert_eq!(metric(&node.url, "sluice_hot_cache_hits_total").await, 0);
    assert_eq!(metric(&node.url, "sluice_hot_cache_bytes").await, 150_000);
    let (status, h, body) = get(&at(&node, path), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, data.clone()));
    assert_eq!(h[header::CONTENT_TYPE], "image/webp");
    let (status, h, body) = get(&at(&node, path), &[("range", "bytes=65530-131080")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h[header::CONTENT_RANGE], "bytes 65530-131080/150000");
    assert_eq!(body, &data[65530..131081]);
    assert_eq!(metric(&node.url, "sluice_hot_cache_hits_total").await, 2);

    // A delete takes it out of memory too.
    let r = reqwest::Client::new()
        .delete(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&at(&node, path), &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(metric(&node.url, "sluice_hot_cache_bytes").await, 0);
}

#[tokio::test]
async fn a_full_node_refuses_with_507_and_keeps_what_it_has() {
    let node = TestNode::start_with(NodeSettings {
        capacity: Some(100_000),
        ..NodeSettings::default()
    })
    .await;
    let first = upload(&node.url, pattern(60_000), "image/jpeg").await;
    let c = reqwest::Client::new();
    // Declared too large for the room left.
    let r = c
        .post(format!("{}/v1/files", node.url))
        .body(pattern(60_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(error_text(&r.bytes().await.unwrap()).contains("full"));
    // Chunked: found full while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..6).map(|_| Ok(vec![3u8; 10_000])).collect();
    let r = c
        .post(format!("{}/v1/files", node.url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
    // What fits still goes in; what was there is intact.
    upload(&node.url, pattern(30_000), "image/jpeg").await;
    let (status, _, body) = get(&at(&node, first["url"].as_str().unwrap()), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, pattern(60_000)));
    assert_eq!(node.state.store().files(), 2);
    wait_until("temp files removed", Duration::from_secs(10), || async {
        node.temp_files().is_empty()
    })
    .await;
}

/// The URL secret of [`guarded_node`]: links signed with either of its keys open reads.
fn url_secret() -> sluice_proto::SecretSet {
    sluice_proto::SecretSet::parse("new-secret,old-secret").unwrap()
}

/// The API token of [`guarded_node`].
fn api_tokens() -> sluice_proto::SecretSet {
    sluice_proto::SecretSet::parse("tok").unwrap()
}

/// A node whose reads need a signed link and whose writes need the API token.
async fn guarded_node() -> TestNode {
    TestNode::start_with(NodeSettings {
        access: sluice_storage::AccessPolicy {
            url_secret: Some(url_secret()),
            api_tokens: Some(api_tokens()),
        },
        ..NodeSettings::default()
    })
    .await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A POST of `body` to `{node}/v1/files`, with `token` as its bearer if any.
async fn post_file(node: &TestNode, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/files", node.url))
        .body(body);
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    r.send().await.unwrap()
}

/// Uploads `pattern(1000)` to a guarded node with its token; the file's path.
async fn upload_with_the_token(node: &TestNode) -> String {
    let r = post_file(node, Some("tok"), pattern(1000)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    v["url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn writes_need_the_api_token() {
    let node = guarded_node().await;
    let r = post_file(&node, None, b"x".to_vec()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(error_text(&r.bytes().await.unwrap()).contains("Bearer"));
    let r = post_file(&node, Some("wrong"), b"x".to_vec()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post_file(&node, Some("tok"), pattern(1000)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_signed_upload_link_is_reusable_until_it_expires_and_caps_the_size() {
    use sluice_proto::signature::sign_upload;
    let node = guarded_node().await;
    let c = reqwest::Client::new();
    let now = now();
    // A signed upload link: what a phone gets from its app backend.
    let link = sign_upload(&api_tokens(), "POST", "/v1/files", now + 60, 500);
    let r = c
        .post(format!("{}{link}", node.url))
        .body(pattern(400))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Reusable until it expires, like an S3 presigned URL (README: give short expiries).
    let r = c
        .post(format!("{}{link}", node.url))
        .body(pattern(300))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "a second upload with the link"
    );
    let r = c
        .post(format!("{}{link}", node.url))
        .body(pattern(600))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "the link's size cap holds"
    );
    let expired = sign_upload(&api_tokens(), "POST", "/v1/files", now - 1, 500);
    let r = c
        .post(format!("{}{expired}", node.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(error_text(&r.bytes().await.unwrap()).contains("expired"));
}

#[tokio::test]
async fn an_upload_link_signed_with_the_url_secret_is_refused() {
    let node = guarded_node().await;
    // The URL secret is not a write key.
    let wrong_key =
        sluice_proto::signature::sign_upload(&url_secret(), "POST", "/v1/files", now() + 60, 500);
    let r = reqwest::Client::new()
        .post(format!("{}{wrong_key}", node.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reads_without_a_valid_signature_are_refused_with_the_reason() {
    use sluice_proto::signature::sign_download;
    let node = guarded_node().await;
    let path = upload_with_the_token(&node).await;
    let now = now();
    // Reads: 403 with a reason unless signed.
    for (query, reason) in [
        (String::new(), "needs a signature"),
        (
            sign_download(&url_secret(), &path, now - 1)
                .split_once('?')
                .unwrap()
                .1
                .to_owned(),
            "expired",
        ),
        (
            sign_download(&url_secret(), "/v1/files/g1/other", now + 60)
                .split_once('?')
                .unwrap()
                .1
                .to_owned(),
            "does not match",
        ),
        ("expires=abc&sig=zz".to_owned(), "malformed"),
    ] {
        let (status, _, body) = get(&at(&node, &format!("{path}?{query}")), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{query}");
        assert!(
            error_text(&body).contains(reason),
            "{query}: {}",
            error_text(&body)
        );
    }
    let head = reqwest::Client::new()
        .head(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn signed_links_open_reads_with_the_current_or_the_old_url_secret() {
    use sluice_proto::signature::sign_download;
    let node = guarded_node().await;
    let path = upload_with_the_token(&node).await;
    let signed = sign_download(&url_secret(), &path, now() + 60);
    let (status, _, body) = get(&at(&node, &signed), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, pattern(1000)));
    // Rotation: a link signed with the old secret still opens.
    let old_secret = sluice_proto::SecretSet::parse("old-secret").unwrap();
    let old = sign_download(&old_secret, &path, now() + 60);
    assert_eq!(get(&at(&node, &old), &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn deletes_need_the_api_token() {
    let node = guarded_node().await;
    let path = upload_with_the_token(&node).await;
    let c = reqwest::Client::new();
    let r = c
        .delete(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .delete(format!("{}{path}", node.url))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn probes_and_scrapers_need_no_credential_on_a_guarded_node() {
    let node = guarded_node().await;
    assert_eq!(get(&at(&node, "/healthz"), &[]).await.0, StatusCode::OK);
    assert_eq!(get(&at(&node, "/metrics"), &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn internal_routes_are_no_way_round_the_signed_link_rule() {
    let node = TestNode::start_with(NodeSettings {
        access: sluice_storage::AccessPolicy {
            url_secret: sluice_proto::SecretSet::parse("k"),
            api_tokens: None,
        },
        ..NodeSettings::default()
    })
    .await;
    let v = upload(&node.url, pattern(100), "image/png").await;
    let fileid = v["fileid"].as_str().unwrap();
    for path in [
        format!("/v1/internal/blobs/{fileid}"),
        "/v1/internal/oplog".to_owned(),
    ] {
        let (status, _, body) = get(&at(&node, &path), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(error_text(&body).contains("SLUICE_CLUSTER_SECRET"));
    }
}

#[tokio::test]
async fn web_players_on_any_origin_may_read_and_preflight_ranges() {
    let node = TestNode::start().await;
    let v = upload(&node.url, pattern(2000), "video/mp2t").await;
    let path = v["url"].as_str().unwrap();
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}{path}", node.url))
        .header("origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(
        r.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap()
            .contains("Content-Range")
    );
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{}{path}", node.url))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("Range")
    );
}

#[tokio::test]
async fn writes_are_not_opened_to_other_origins() {
    let node = TestNode::start().await;
    let c = reqwest::Client::new();
    // Writes are not opened to other origins.
    let r = c
        .post(format!("{}/v1/files", node.url))
        .header("origin", "https://x.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn with_a_list_of_origins_only_those_may_read() {
    let c = reqwest::Client::new();
    let listed = TestNode::start_with(NodeSettings {
        cors: sluice_storage::CorsPolicy::from_list(&["https://app.example".into()]),
        ..NodeSettings::default()
    })
    .await;
    let v = upload(&listed.url, pattern(10), "image/png").await;
    let url = format!("{}{}", listed.url, v["url"].as_str().unwrap());
    let r = c
        .get(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    assert!(
        r.headers()
            .get_all(header::VARY)
            .iter()
            .any(|v| v == "Origin")
    );
    let r = c
        .get(&url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn peers_need_the_cluster_secret_to_push_or_pull() {
    let node = TestNode::start_with(NodeSettings {
        cluster: sluice_storage::ClusterAccess::Secret(
            sluice_proto::SecretSet::parse("cs").unwrap(),
        ),
        ..NodeSettings::default()
    })
    .await;
    let v = upload(&node.url, pattern(100), "image/png").await;
    let fileid = v["fileid"].as_str().unwrap();
    let c = reqwest::Client::new();
    let internal = format!("{}/v1/internal/blobs/{fileid}", node.url);
    for secret in [None, Some("wrong")] {
        let mut get = c.get(&internal);
        let mut put = c
            .put(format!(
                "{}/v1/internal/blobs/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
                node.url
            ))
            .body("pushed");
        let mut oplog = c.get(format!("{}/v1/internal/oplog", node.url));
        if let Some(s) = secret {
            get = get.header("sluice-cluster-secret", s);
            put = put.header("sluice-cluster-secret", s);
            oplog = oplog.header("sluice-cluster-secret", s);
        }
        assert_eq!(get.send().await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(put.send().await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(oplog.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(node.state.store().files(), 1, "nothing was pushed in");
    let r = c
        .get(&internal)
        .header("sluice-cluster-secret", "cs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(100));
}

#[tokio::test]
async fn a_stored_id_is_immutable_even_to_peers() {
    let node = TestNode::start_with(NodeSettings {
        cluster: sluice_storage::ClusterAccess::Secret(
            sluice_proto::SecretSet::parse("cs").unwrap(),
        ),
        ..NodeSettings::default()
    })
    .await;
    let original = pattern(3000);
    let v = upload(&node.url, original.clone(), "image/png").await;
    let fileid = v["fileid"].as_str().unwrap();
    let path = format!("/v1/files/{fileid}");
    let (_, before, _) = get(&at(&node, &path), &[]).await;
    let c = reqwest::Client::new();
    let put = |body: Vec<u8>, digest: Option<String>| {
        let mut r = c
            .put(format!("{}/v1/internal/blobs/{fileid}", node.url))
            .header("sluice-cluster-secret", "cs")
            .header("content-type", "text/html")
            .body(body);
        if let Some(d) = digest {
            r = r.header("sluice-sha256", d);
        }
        r.send()
    };
    let hex = |data: &[u8]| {
        sluice_proto::cluster::sha256_hex(&<sha2::Sha256 as sha2::Digest>::digest(data).into())
    };
    // Other bytes, honestly declared: refused.
    let forged = b"<script>alert(1)</script>".to_vec();
    let r = put(forged.clone(), Some(hex(&forged))).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Bytes that do not match what they claim, or no claim at all: refused before anything.
    let r = put(forged.clone(), Some(hex(&original))).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = put(forged.clone(), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The same bytes again: accepted, and nothing changes.
    let r = put(original.clone(), Some(hex(&original))).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, after, body) = get(&at(&node, &path), &[]).await;
    assert_eq!((status, body), (StatusCode::OK, original.clone()));
    assert_eq!(after[header::ETAG], before[header::ETAG]);
    assert_eq!(after[header::CONTENT_TYPE], "image/png");
    assert_eq!(node.state.store().files(), 1);
    assert!(node.temp_files().is_empty());
    // Peers see the recorded digest.
    let r = c
        .get(format!("{}/v1/internal/blobs/{fileid}", node.url))
        .header("sluice-cluster-secret", "cs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["sluice-sha256"], hex(&original).as_str());
}

/// A replica batch as a peer sends it: each record gets its own status, a bad record spoils
/// none of the others, and a malformed or foreign batch stores nothing.
#[tokio::test]
async fn a_replica_batch_stores_each_good_record_and_answers_each_one() {
    use sluice_proto::replicas;
    let node = TestNode::start_with(NodeSettings {
        cluster: sluice_storage::ClusterAccess::Secret(
            sluice_proto::SecretSet::parse("cs").unwrap(),
        ),
        ..NodeSettings::default()
    })
    .await;
    let digest = |data: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(data).into() };
    let good: Vec<(String, Vec<u8>)> = (0..5u8)
        .map(|i| {
            let key = sluice_proto::BlobKey::from_bytes([i + 1; 16]);
            (format!("g1/{key}"), pattern(3000 + usize::from(i)))
        })
        .collect();
    let mut body = replicas::start(0);
    for (id, data) in &good[..3] {
        replicas::push(&mut body, id, "image/jpeg", &digest(data), data);
    }
    // Bytes that are not what they claim, another group's id, a malformed id.
    let (liar, liar_bytes) = &good[3];
    replicas::push(&mut body, liar, "image/jpeg", &digest(b"other"), liar_bytes);
    replicas::push(
        &mut body,
        "g2/aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "a/b",
        &digest(b"x"),
        b"x",
    );
    replicas::push(&mut body, "not an id", "a/b", &digest(b"x"), b"x");
    let (last, last_bytes) = &good[4];
    replicas::push(
        &mut body,
        last,
        "image/jpeg",
        &digest(last_bytes),
        last_bytes,
    );
    let c = reqwest::Client::new();
    let post = |body: Vec<u8>, secret: Option<&str>| {
        let mut r = c
            .post(format!("{}/v1/internal/replicas", node.url))
            .header("content-type", replicas::CONTENT_TYPE)
            .body(body);
        if let Some(s) = secret {
            r = r.header("sluice-cluster-secret", s.to_owned());
        }
        r.send()
    };
    for secret in [None, Some("wrong")] {
        let r = post(body.clone(), secret).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(node.state.store().files(), 0, "nothing was pushed in");

    let r = post(body.clone(), Some("cs")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: replicas::ReplicaResults = r.json().await.unwrap();
    let statuses: Vec<u16> = answer.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 201, 201, 422, 404, 400, 201]);
    assert!(
        answer.results[3]
            .error
            .as_deref()
            .unwrap()
            .contains("SHA-256")
    );
    assert_eq!(node.state.store().files(), 4);
    for (id, data) in good[..3].iter().chain(&good[4..]) {
        let (status, _, got) = get(&at(&node, &format!("/v1/files/{id}")), &[]).await;
        assert_eq!((status, &got), (StatusCode::OK, data));
    }
    // The same batch again changes nothing: each good record is already there.
    let r = post(body.clone(), Some("cs")).await.unwrap();
    let again: replicas::ReplicaResults = r.json().await.unwrap();
    assert_eq!(again.results[0].status, 201);
    assert_eq!(node.state.store().files(), 4);

    // Malformed batches: refused whole, with a JSON reason, storing nothing.
    let mut cut = replicas::start(0);
    replicas::push(&mut cut, &good[3].0, "a/b", &digest(&good[3].1), &good[3].1);
    cut.truncate(cut.len() - 10);
    for bad in [b"not a batch".to_vec(), cut] {
        let r = post(bad, Some("cs")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let text = r.text().await.unwrap();
        assert!(text.contains("bad replica batch"), "{text}");
    }
    // Oversized: refused before it is all read.
    let huge = vec![0u8; 11 << 20];
    let r = post(huge, Some("cs")).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(node.state.store().files(), 4);
    assert!(node.temp_files().is_empty());
}

/// A record over this node's upload limit (peers may be set up differently) gets its own 413;
/// the rest of its batch is stored.
#[tokio::test]
async fn a_replica_over_the_upload_limit_is_refused_alone() {
    use sluice_proto::replicas;
    let node = TestNode::start_with(NodeSettings {
        cluster: sluice_storage::ClusterAccess::Secret(
            sluice_proto::SecretSet::parse("cs").unwrap(),
        ),
        max_upload_size: 100_000,
        ..NodeSettings::default()
    })
    .await;
    let digest = |data: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(data).into() };
    let mut body = replicas::start(0);
    let sizes = [1000usize, 200_000, 1000];
    for (i, size) in sizes.iter().enumerate() {
        let key = sluice_proto::BlobKey::from_bytes([i as u8 + 1; 16]);
        let data = pattern(*size);
        replicas::push(
            &mut body,
            &format!("g1/{key}"),
            "a/b",
            &digest(&data),
            &data,
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/internal/replicas", node.url))
        .header("sluice-cluster-secret", "cs")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: replicas::ReplicaResults = r.json().await.unwrap();
    let statuses: Vec<u16> = answer.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 413, 201]);
    assert_eq!(node.state.store().files(), 2);
}
