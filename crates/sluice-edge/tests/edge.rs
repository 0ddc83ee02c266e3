//! An edge in front of a real storage node, over a real (simulated-network) link: hits and
//! misses, one origin fetch for many clients who all get bytes as they arrive, ranges, LRU
//! eviction that survives a restart, origin trouble, signed URLs, incomplete files, attacks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

use reqwest::StatusCode;
use sluice_testkit::http::{get, metric, upload};
use sluice_testkit::link::Link;
use sluice_testkit::small_disk::SmallDisk;
use sluice_testkit::{NodeSettings, TestEdge, TestNode, wait_until};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// Uploads `body` as an MP4 straight to the node; its file id.
async fn upload_mp4(node: &TestNode, body: Vec<u8>) -> String {
    upload(&node.url, body, "video/mp4").await["fileid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn cache_header(h: &reqwest::header::HeaderMap) -> &str {
    h.get("sluice-cache").map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn miss_then_hit_with_the_origin_headers_and_conditionals() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let data = pattern(300_000, 1);
    let id = upload_mp4(&node, data.clone()).await;
    let url = format!("{}/v1/files/{id}", edge.url);

    let (s, h, body) = get(&url, &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "miss"));
    assert_eq!(body, data);
    assert_eq!(h["content-type"], "video/mp4");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let (_, origin_h, _) = get(&format!("{}/v1/files/{id}", node.url), &[]).await;
    assert_eq!(
        origin_h["etag"].to_str().unwrap(),
        etag,
        "the origin's ETag"
    );

    wait_until("the file is cached", Duration::from_secs(10), || async {
        edge.state.cache().files() == 1
    })
    .await;
    let (s, h, body) = get(&url, &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "hit"));
    assert_eq!(body, data);
    let (s, h, body) = get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::PARTIAL_CONTENT, "hit"));
    assert_eq!(body, &data[1000..2000]);
    let (s, _, _) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (s, h, _) = get(&url, &[("range", "bytes=400000-")]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"], "bytes */300000");
    assert_eq!(
        metric(&edge.url, "sluice_edge_origin_fetches_total").await,
        1
    );
    // The 416 is an error answer, not a hit.
    assert_eq!(metric(&edge.url, "sluice_edge_hits_total").await, 3);
    assert_eq!(
        metric(&edge.url, "sluice_edge_bytes_from_origin_total").await,
        300_000
    );
    assert!(metric(&edge.url, "sluice_edge_bytes_from_cache_total").await >= 301_000);

    edge.stop().await;
}

#[tokio::test]
async fn unknown_ids_get_the_origins_404_and_malformed_ones_our_400() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let (s, h, body) = get(
        &format!("{}/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa", edge.url),
        &[],
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(cache_header(&h), "miss");
    let (s, _, body) = get(&format!("{}/v1/files/nonsense", edge.url), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("malformed file id"));
    edge.stop().await;
}

/// The network between an edge and its origin, holding back what the origin sends: each
/// answer flows until `allowance` bytes have crossed, then nothing more until the test opens
/// the gate. While it is shut the rest of a file is provably still on its way, so what a
/// client gets meanwhile did not wait for the whole file, however slow the machine (a slow
/// link only makes that likely, and a busy machine can take longer than the link).
struct Gate {
    url: String,
    open: tokio::sync::watch::Sender<bool>,
    connections: Arc<AtomicU64>,
}

impl Gate {
    /// A shut gate in front of `target` (`http://host:port`).
    async fn start(target: &str, allowance: usize) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (open, _) = tokio::sync::watch::channel(false);
        let connections = Arc::new(AtomicU64::new(0));
        let (opened, counted) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (target, opened) = (target.clone(), opened.subscribe());
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&target).await {
                        forward_gated(client, server, allowance, opened).await;
                    }
                });
            }
        });
        Self {
            url,
            open,
            connections,
        }
    }

    /// Lets everything through from now on.
    fn open(&self) {
        self.open.send_replace(true);
    }

    /// Connections that crossed the gate so far.
    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn forward_gated(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    allowance: usize,
    mut open: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0;
        loop {
            let room = if *open.borrow() {
                buf.len()
            } else if sent < allowance {
                buf.len().min(allowance - sent)
            } else {
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                continue;
            };
            let n = match server_read.read(&mut buf[..room]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent += n;
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

#[tokio::test]
async fn concurrent_misses_make_one_fetch_and_every_client_streams_as_bytes_arrive() {
    let node = TestNode::start().await;
    // The origin's answer stops after 512 KiB until the gate opens.
    let gate = Gate::start(&node.url, 512 * 1024).await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&gate.url, 64 << 20)).await;
    let data = pattern(2 << 20, 2);
    let id = upload_mp4(&node, data.clone()).await;
    let url = format!("{}/v1/files/{id}", edge.url);
    // Eight clients of the miss, each holding its first 64 KiB (each saw "miss").
    let clients = attached_clients(&url, 8, None).await;
    // Every client had its first 64 KiB while the rest of the file was still held back.
    assert_eq!(
        edge.state.cache().files(),
        0,
        "not cached yet: bytes came as they arrived"
    );
    gate.open();
    for (r, got) in clients {
        assert_eq!(rest(r, got).await.expect("a whole body"), data);
    }
    assert_eq!(
        metric(&edge.url, "sluice_edge_origin_fetches_total").await,
        1
    );
    assert_eq!(gate.connections(), 1, "one connection to the origin");
    wait_until("cached", WAIT, || async { edge.state.cache().files() == 1 }).await;
    let (_, h, _) = get(&url, &[]).await;
    assert_eq!(cache_header(&h), "hit");
    edge.stop().await;
}

#[tokio::test]
async fn a_seek_into_an_uncached_file_does_not_wait_for_the_whole_file() {
    let node = TestNode::start().await;
    // Every answer of the origin stops after 512 KiB until the gate opens: the whole file
    // cannot reach the edge before then.
    let gate = Gate::start(&node.url, 512 * 1024).await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&gate.url, 64 << 20)).await;
    let data = pattern(6 << 20, 3);
    let id = upload_mp4(&node, data.clone()).await;
    let url = format!("{}/v1/files/{id}", edge.url);
    let (s, h, body) = get(&url, &[("range", "bytes=5000000-5000099")]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::PARTIAL_CONTENT, "miss"));
    assert_eq!(h["content-range"], "bytes 5000000-5000099/6291456");
    assert_eq!(body, &data[5_000_000..5_000_100]);
    // The seek was answered while the fill was held at its first 512 KiB: it did not wait.
    assert!(
        edge.state.cache().files() == 0,
        "answered before any fill finished"
    );
    // A range near the start joins the fill, also without waiting for the whole file.
    let (s, h, body) = get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::PARTIAL_CONTENT, "miss"));
    assert_eq!(body, &data[10..20]);
    assert_eq!(
        edge.state.cache().files(),
        0,
        "both answered before the fill finished"
    );
    // Once the rest may come, the fill finishes and the file is cached.
    gate.open();
    wait_until("cached", WAIT, || async { edge.state.cache().files() == 1 }).await;
    edge.stop().await;
}

#[tokio::test]
async fn least_recently_used_files_are_evicted_and_the_cache_survives_a_restart() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let size = 100_000;
    let mut edge =
        TestEdge::start(cache.path(), TestEdge::config(&node.url, 3 * size as u64)).await;
    let mut ids = Vec::new();
    for i in 0..4u8 {
        ids.push(upload_mp4(&node, pattern(size, i)).await);
    }
    let fetch = |edge_url: String, id: String| async move {
        let (s, h, body) = get(&format!("{edge_url}/v1/files/{id}"), &[]).await;
        assert_eq!(s, StatusCode::OK);
        (cache_header(&h).to_owned(), body)
    };
    // One at a time, each cached before the next, so their order of use is known.
    for (n, id) in ids[..3].iter().enumerate() {
        assert_eq!(fetch(edge.url.clone(), id.clone()).await.0, "miss");
        wait_until("cached in turn", Duration::from_secs(10), || async {
            edge.state.cache().files() == n as u64 + 1
        })
        .await;
    }
    // Use the first again, then bring in a fourth: the second is the least recently used.
    assert_eq!(fetch(edge.url.clone(), ids[0].clone()).await.0, "hit");
    fetch(edge.url.clone(), ids[3].clone()).await;
    wait_until("the fourth cached", Duration::from_secs(10), || async {
        metric(&edge.url, "sluice_edge_evictions_total").await == 1
    })
    .await;
    assert!(edge.state.cache().bytes() <= 3 * size as u64);
    assert_eq!(fetch(edge.url.clone(), ids[0].clone()).await.0, "hit");
    assert_eq!(fetch(edge.url.clone(), ids[3].clone()).await.0, "hit");
    let (state, body) = fetch(edge.url.clone(), ids[1].clone()).await;
    assert_eq!((state.as_str(), body), ("miss", pattern(size, 1)));

    // A restarted edge has what it had.
    wait_until("settled", Duration::from_secs(10), || async {
        edge.state.cache().files() == 3
    })
    .await;
    edge.stop().await;
    edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 3 * size as u64)).await;
    assert_eq!(edge.state.cache().files(), 3);
    let (state, body) = fetch(edge.url.clone(), ids[1].clone()).await;
    assert_eq!((state.as_str(), body), ("hit", pattern(size, 1)));
    edge.stop().await;
}

#[tokio::test]
async fn with_the_origin_down_cached_files_are_served_and_others_fail_fast() {
    let node = TestNode::start().await;
    let link = Link::start(&node.url).await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&link.url, 64 << 20)).await;
    let cached = upload_mp4(&node, pattern(50_000, 4)).await;
    let other = upload_mp4(&node, pattern(50_000, 5)).await;
    get(&format!("{}/v1/files/{cached}", edge.url), &[]).await;
    wait_until("cached", Duration::from_secs(10), || async {
        edge.state.cache().files() == 1
    })
    .await;
    link.set_down(true);
    let (s, h, _) = get(&format!("{}/v1/files/{cached}", edge.url), &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "hit"));
    let started = std::time::Instant::now();
    let (s, _, body) = get(&format!("{}/v1/files/{other}", edge.url), &[]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("origin is unavailable"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");

    // Back by itself once the origin is.
    link.set_down(false);
    let (s, h, body) = get(&format!("{}/v1/files/{other}", edge.url), &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "miss"));
    assert_eq!(body, pattern(50_000, 5));
    edge.stop().await;
}

/// An edge and its origin node, both reading only signed links (URL secrets `edge-secret`,
/// then `older`); writes to the node are open (no API token set).
async fn private_media() -> (
    sluice_proto::SecretSet,
    TestNode,
    TestEdge,
    tempfile::TempDir,
) {
    let secrets = sluice_proto::SecretSet::parse("edge-secret,older").unwrap();
    let access = sluice_http::AccessPolicy {
        url_secret: Some(secrets.clone()),
        api_tokens: None,
    };
    let node = TestNode::start_with(NodeSettings {
        access: access.clone(),
        ..NodeSettings::default()
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = TestEdge::config(&node.url, 64 << 20);
    config.access = access;
    let edge = TestEdge::start(cache.path(), config).await;
    (secrets, node, edge, cache)
}

#[tokio::test]
async fn with_private_media_and_no_cluster_secret_the_preload_route_is_closed() {
    let (_secrets, node, edge, _cache) = private_media().await;
    let id = upload_mp4(&node, pattern(10_000, 6)).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/internal/preload/{id}", edge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    edge.stop().await;
}

#[tokio::test]
async fn signed_urls_are_checked_and_signatures_stay_out_of_the_cache_key() {
    let (secrets, node, edge, _cache) = private_media().await;
    // Upload straight to the node (writes are open: no API token set).
    let data = pattern(10_000, 6);
    let id = upload_mp4(&node, data.clone()).await;
    let path = format!("/v1/files/{id}");
    let now = sluice_http::access::now_unix();
    let sign = |expires: u64| sluice_proto::signature::sign_download(&secrets, &path, expires);

    let (s, _, body) = get(&format!("{}{path}", edge.url), &[]).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, h, body) = get(&format!("{}{}", edge.url, sign(now + 60)), &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "miss"));
    assert_eq!(body, data);
    wait_until("cached", Duration::from_secs(10), || async {
        edge.state.cache().files() == 1
    })
    .await;
    // Another valid signature: the same cache entry.
    let (s, h, _) = get(&format!("{}{}", edge.url, sign(now + 120)), &[]).await;
    assert_eq!((s, cache_header(&h)), (StatusCode::OK, "hit"));
    let tampered = sign(now + 60).replace(&format!("{}", now + 60), &format!("{}", now + 6000));
    let expired = sign(now - 1);
    let repeated = format!("{}&expires={}", sign(now + 60), now + 60);
    for bad in [
        tampered,
        expired,
        format!("{path}?expires=x&sig=y"),
        repeated,
    ] {
        let (s, h, body) = get(&format!("{}{bad}", edge.url), &[]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(cache_header(&h), "", "refused before the cache: {bad}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string());
    }
    edge.stop().await;
}

#[tokio::test]
async fn files_still_arriving_are_passed_through_never_cached() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let image = sluice_testkit::images::progressive_jpeg(320, 240, 3);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/uploads", node.url))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", image.len())
        .header(
            "upload-metadata",
            sluice_proto::tus::encode_metadata([("content-type", "image/jpeg"), ("q", "0.3")]),
        )
        .send()
        .await
        .unwrap();
    let upload = format!("{}{}", node.url, r.headers()["location"].to_str().unwrap());
    let patch = |offset: usize, bytes: Vec<u8>| {
        client
            .patch(&upload)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
            .send()
    };
    let half = image.len() / 2;
    let r = patch(0, image[..half].to_vec()).await.unwrap();
    let id = r.headers()["sluice-file-id"].to_str().unwrap().to_owned();
    let url = format!("{}/v1/files/{id}", edge.url);
    for _ in 0..2 {
        let (s, h, body) = get(&url, &[]).await;
        assert_eq!((s, cache_header(&h)), (StatusCode::OK, "miss"));
        assert_eq!(h["sluice-complete"], "false");
        assert_eq!(
            sluice_testkit::images::djpeg_dimensions(&body),
            Ok((320, 240))
        );
    }
    assert_eq!(edge.state.cache().files(), 0);
    patch(half, image[half..].to_vec()).await.unwrap();
    let (_, h, body) = get(&url, &[]).await;
    assert_eq!(
        (cache_header(&h), body.as_slice()),
        ("miss", image.as_slice())
    );
    wait_until("cached once whole", Duration::from_secs(10), || async {
        edge.state.cache().files() == 1
    })
    .await;
    edge.stop().await;
}

#[tokio::test]
async fn a_stalled_client_holds_back_neither_other_clients_nor_the_fill() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let data = pattern(8 << 20, 7);
    let id = upload_mp4(&node, data.clone()).await;
    let url = format!("{}/v1/files/{id}", edge.url);
    // A client that reads one chunk and stalls.
    let mut stalled = reqwest::get(&url).await.unwrap();
    stalled.chunk().await.unwrap();
    // Another client gets everything, and the fill completes, while the first sits there.
    let (s, _, body) = get(&url, &[]).await;
    assert_eq!((s, body.len()), (StatusCode::OK, data.len()));
    wait_until(
        "cached despite the stalled client",
        Duration::from_secs(10),
        || async { edge.state.cache().files() == 1 },
    )
    .await;
    drop(stalled);
    edge.stop().await;
}

#[tokio::test]
async fn path_tricks_never_reach_a_file() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    // Path tricks never reach a file.
    let raw = |path: &'static str| {
        let addr = edge.url.trim_start_matches("http://").to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    for path in [
        "/v1/files/../../etc/passwd",
        "/v1/files/g1/..%2f..%2fetc%2fpasswd",
        "/v1/files/%2e%2e/%2e%2e/etc/passwd",
        "/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa/../../x",
    ] {
        let answer = raw(path).await;
        let status: u16 = answer[9..12].parse().unwrap();
        assert!(matches!(status, 400 | 404), "{path}: {answer}");
    }
    edge.stop().await;
}

/// An 8 MiB file uploaded to `node` and cached whole at `edge`; its id.
async fn cached_file(node: &TestNode, edge: &TestEdge) -> String {
    let id = upload_mp4(node, pattern(8 << 20, 7)).await;
    get(&format!("{}/v1/files/{id}", edge.url), &[]).await;
    wait_until("cached", WAIT, || async { edge.state.cache().files() == 1 }).await;
    id
}

#[tokio::test]
async fn overflowing_ranges_are_refused_never_a_server_error() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let id = cached_file(&node, &edge).await;
    let url = format!("{}/v1/files/{id}", edge.url);
    // Ranges that overflow.
    for range in [
        "bytes=18446744073709551615-",
        "bytes=0-99999999999999999999999",
        "bytes=5-1",
    ] {
        let (s, _, _) = get(&url, &[("range", range)]).await;
        assert!(matches!(s.as_u16(), 200 | 206 | 400 | 416), "{range}: {s}");
    }
    let (s, _, _) = get(&url, &[("range", "bytes=18446744073709551615-")]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    edge.stop().await;
}

#[tokio::test]
async fn a_huge_query_is_refused_or_ignored_never_a_server_error() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let id = cached_file(&node, &edge).await;
    // A huge query is refused or ignored, never a server error (and never a different file).
    let addr = edge.url.trim_start_matches("http://").to_owned();
    let status = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/files/{id}?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(200_000)
        );
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned()
    };
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 4") || status.starts_with("HTTP/1.1 200"),
        "{status}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_cache_disk_filled_by_another_process_degrades_to_proxying() {
    let disk = SmallDisk::mount("4m");
    let node = TestNode::start().await;
    let cache = disk.path().join("cache");
    let edge = TestEdge::start(&cache, TestEdge::config(&node.url, 64 << 20)).await;
    let data = pattern(1 << 20, 8);
    let id = upload_mp4(&node, data.clone()).await;
    // Another process takes every byte left on the disk.
    let hog = disk.fill("hog");
    let url = format!("{}/v1/files/{id}", edge.url);
    for _ in 0..2 {
        let (s, h, body) = get(&url, &[]).await;
        assert_eq!((s, cache_header(&h)), (StatusCode::OK, "miss"));
        assert_eq!(body, data, "served whole, straight from the origin");
    }
    assert_eq!(edge.state.cache().files(), 0);
    // Room again: caching resumes by itself.
    std::fs::remove_file(&hog).unwrap();
    get(&url, &[]).await;
    wait_until(
        "cached once there is room",
        Duration::from_secs(10),
        || async { edge.state.cache().files() == 1 },
    )
    .await;
    let (_, h, body) = get(&url, &[]).await;
    assert_eq!((cache_header(&h), body), ("hit", data));
    edge.stop().await;
}

/// Serves `router` on 127.0.0.1:0 for the rest of the test; returns its URL.
async fn serve_router(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn redirects_are_followed_only_to_nodes_the_trackers_list() {
    use std::sync::atomic::AtomicUsize;
    // Someone else's server, ready to plant content in the cache.
    let planted = Arc::new(AtomicUsize::new(0));
    let attacker = serve_router(axum::Router::new().fallback({
        let planted = planted.clone();
        move || async move {
            planted.fetch_add(1, Ordering::SeqCst);
            ([("content-type", "text/html")], "<script>alert(1)</script>")
        }
    }))
    .await;
    // An origin that redirects there; its cluster view lists the attacker only when told to.
    let listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = serve_router(
        axum::Router::new()
            .route(
                "/v1/files/{*id}",
                axum::routing::get({
                    let attacker = attacker.clone();
                    move |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        (
                            StatusCode::FOUND,
                            [("location", format!("{attacker}/v1/files/{id}"))],
                        )
                    }
                }),
            )
            .route(
                "/v1/cluster",
                axum::routing::get({
                    let (attacker, listed) = (attacker.clone(), listed.clone());
                    move || async move {
                        let nodes = if listed.load(Ordering::SeqCst) {
                            serde_json::json!([{"id": "n", "url": attacker, "state": "active",
                                "files": 0, "bytes": 0, "free_bytes": 0, "writable": true,
                                "last_seen_ms": 0}])
                        } else {
                            serde_json::json!([])
                        };
                        axum::Json(serde_json::json!({"groups": [{"name": "g1", "nodes": nodes}]}))
                    }
                }),
            ),
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&origin, 64 << 20)).await;
    let id = sluice_proto::FileId::new(
        "g1".parse().unwrap(),
        sluice_proto::BlobKey::from_bytes([7; 16]),
    );
    let url = format!("{}/v1/files/{id}", edge.url);
    for _ in 0..3 {
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("no tracker lists"), "{text}");
    }
    assert_eq!(
        planted.load(Ordering::SeqCst),
        0,
        "the stranger was never asked"
    );
    assert_eq!(edge.state.cache().files(), 0);
    // The list is what decides: once the cluster lists that server as a node, it is followed
    // (after the once-a-second refresh).
    listed.store(true, Ordering::SeqCst);
    wait_until(
        "the redirect to a listed node to be followed",
        Duration::from_secs(10),
        || async { get(&url, &[]).await.0 == StatusCode::OK },
    )
    .await;
    assert!(planted.load(Ordering::SeqCst) >= 1);
    edge.stop().await;
}

/// Clients of a miss, each holding its response once its first 64 KiB arrived (so each is
/// attached to the fill), with what it read so far. `range` asks for part of the file.
async fn attached_clients(
    url: &str,
    n: usize,
    range: Option<&str>,
) -> Vec<(reqwest::Response, Vec<u8>)> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (url, range) = (url.to_owned(), range.map(str::to_owned));
            tokio::spawn(async move {
                let mut request = reqwest::Client::new().get(&url);
                if let Some(range) = range {
                    request = request.header("range", range);
                }
                let mut r = request.send().await.unwrap();
                assert_eq!(cache_header(r.headers()), "miss");
                let mut got = Vec::new();
                while got.len() < 64 * 1024 {
                    got.extend_from_slice(&r.chunk().await.unwrap().unwrap());
                }
                (r, got)
            })
        })
        .collect();
    let mut attached = Vec::new();
    for c in clients {
        attached.push(c.await.unwrap());
    }
    attached
}

/// The rest of a response's body, or the error that ended it.
async fn rest(mut r: reqwest::Response, mut got: Vec<u8>) -> Result<Vec<u8>, reqwest::Error> {
    while let Some(chunk) = r.chunk().await? {
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

#[tokio::test]
async fn clients_of_a_fill_the_origin_broke_off_get_the_rest_from_the_origin() {
    let node = TestNode::start().await;
    let link = Link::start(&node.url).await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&link.url, 64 << 20)).await;
    let data = pattern(3 << 20, 6);
    let id = upload_mp4(&node, data.clone()).await;
    link.set_rate(1_000_000);
    let url = format!("{}/v1/files/{id}", edge.url);
    let whole = attached_clients(&url, 3, None).await;
    let ranged = attached_clients(&url, 2, Some("bytes=1000-2999999")).await;
    // The fill's connection is cut mid-body; the origin itself is fine.
    link.set_down(true);
    link.set_down(false);
    for (r, got) in whole {
        assert_eq!(rest(r, got).await.expect("a whole body"), data);
    }
    for (r, got) in ranged {
        assert_eq!(
            rest(r, got).await.expect("a whole range"),
            &data[1000..3_000_000]
        );
    }
    assert!(metric(&edge.url, "sluice_edge_fill_continuations_total").await >= 1);
    // Nothing half-fetched was cached; the next request fills afresh.
    let (s, _, body) = get(&url, &[]).await;
    assert_eq!((s, body), (StatusCode::OK, data));
    edge.stop().await;
}

#[tokio::test]
async fn clients_of_a_fill_whose_origin_is_gone_get_an_error_never_a_short_file() {
    let node = TestNode::start().await;
    let link = Link::start(&node.url).await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&link.url, 64 << 20)).await;
    let data = pattern(3 << 20, 7);
    let id = upload_mp4(&node, data.clone()).await;
    link.set_rate(1_000_000);
    let url = format!("{}/v1/files/{id}", edge.url);
    let clients = attached_clients(&url, 2, None).await;
    link.set_down(true);
    for (r, got) in clients {
        assert_eq!(
            r.headers()["content-length"],
            data.len().to_string().as_str()
        );
        assert!(
            rest(r, got).await.is_err(),
            "the body ends in an error, which the client sees"
        );
    }
    assert_eq!(edge.state.cache().files(), 0);
    edge.stop().await;
}

#[tokio::test]
async fn clients_of_a_fill_whose_cache_disk_fills_get_every_byte() {
    // Room, once the hog goes, for the spool and the cached copy side by side.
    let disk = SmallDisk::mount("16m");
    let node = TestNode::start().await;
    let link = Link::start(&node.url).await;
    let edge = TestEdge::start(
        &disk.path().join("cache"),
        TestEdge::config(&link.url, 64 << 20),
    )
    .await;
    let data = pattern(4 << 20, 8);
    let id = upload_mp4(&node, data.clone()).await;
    // Another process leaves the disk room for about a quarter of the file.
    let hog = disk.fill_leaving("hog", 1 << 20);
    link.set_rate(2_000_000);
    let url = format!("{}/v1/files/{id}", edge.url);
    let whole = attached_clients(&url, 3, None).await;
    let ranged = attached_clients(&url, 1, Some("bytes=100000-")).await;
    for (r, got) in whole {
        assert_eq!(rest(r, got).await.expect("a whole body"), data);
    }
    for (r, got) in ranged {
        assert_eq!(rest(r, got).await.expect("a whole range"), &data[100_000..]);
    }
    assert!(metric(&edge.url, "sluice_edge_fill_continuations_total").await >= 1);
    // While the disk stays full, clients are proxied, whole.
    let (s, _, body) = get(&url, &[]).await;
    assert_eq!((s, body), (StatusCode::OK, data.clone()));
    // Room again: cached as usual.
    std::fs::remove_file(&hog).unwrap();
    get(&url, &[]).await;
    wait_until("cached once there is room", WAIT, || async {
        edge.state.cache().files() == 1
    })
    .await;
    let (_, h, body) = get(&url, &[]).await;
    assert_eq!((cache_header(&h), body), ("hit", data));
    edge.stop().await;
}

#[tokio::test]
async fn a_cached_copy_damaged_deep_inside_is_fetched_again_and_the_client_gets_every_byte() {
    let node = TestNode::start().await;
    let cache = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(cache.path(), TestEdge::config(&node.url, 64 << 20)).await;
    let data = pattern(8 << 20, 9);
    let id = upload_mp4(&node, data.clone()).await;
    let url = format!("{}/v1/files/{id}", edge.url);
    get(&url, &[]).await;
    wait_until("cached", WAIT, || async { edge.state.cache().files() == 1 }).await;
    // One byte of block 60 (of 64 KiB blocks, each followed by its checksum), far past the
    // first chunk a hit reads before its head goes out.
    let files = sluice_blob::data_file_paths(&cache.path().join("files")).unwrap();
    let [cached] = files.as_slice() else {
        panic!("one cached file: {files:?}")
    };
    let mut raw = std::fs::read(cached).unwrap();
    raw[16 + 60 * (65_536 + 4) + 7] ^= 0x01;
    std::fs::write(cached, raw).unwrap();
    for _ in 0..2 {
        let (s, h, body) = get(&url, &[]).await;
        assert_eq!((s, cache_header(&h)), (StatusCode::OK, "hit"));
        assert_eq!(body.len(), data.len());
        assert!(body == data, "every byte right");
    }
    edge.stop().await;
}
