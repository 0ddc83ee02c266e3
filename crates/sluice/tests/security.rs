//! Closed by default (issue 10): each test performs an attack on real processes and checks it
//! gets nothing: cluster routes without the cluster secret, roles started without one, a node
//! id taken by a copied data directory or a wrong `--advertise`, garbage on every cluster
//! route.

mod common;

use std::time::Duration;

use common::{BIN, Served, curl, curl_ok, get_json, wait_for};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "cluster-s3cret";

/// Status and body of a request made with curl; `body` goes as the request body.
fn request(method: &str, url: &str, headers: &[&str], body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (body_file, out_file) = (dir.path().join("in"), dir.path().join("out"));
    let mut args = vec![
        "-sS".to_owned(),
        "-X".to_owned(),
        method.to_owned(),
        "-o".to_owned(),
        out_file.display().to_string(),
        "-w".to_owned(),
        "%{http_code}".to_owned(),
    ];
    for h in headers {
        args.extend(["-H".to_owned(), (*h).to_owned()]);
    }
    if let Some(body) = body {
        std::fs::write(&body_file, body).unwrap();
        args.extend([
            "--data-binary".to_owned(),
            format!("@{}", body_file.display()),
        ]);
    }
    args.push(url.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args);
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (code, std::fs::read(&out_file).unwrap_or_default())
}

fn cluster_view(url: &str) -> serde_json::Value {
    get_json(&format!("{url}/v1/cluster"))
}

fn node_urls(view: &serde_json::Value) -> Vec<String> {
    let mut urls: Vec<String> = view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["nodes"].as_array().unwrap().iter())
        .map(|n| n["url"].as_str().unwrap().to_owned())
        .collect();
    urls.sort();
    urls
}

fn heartbeat(node_id: &str, url: &str) -> Vec<u8> {
    serde_json::json!({
        "node_id": node_id, "group": "g1", "url": url, "state": "active",
        "files": 0, "bytes": 0, "free_bytes": 1u64 << 40, "writable": true
    })
    .to_string()
    .into_bytes()
}

fn edge_heartbeat(url: &str) -> Vec<u8> {
    serde_json::json!({
        "edge_id": "evil", "url": url, "region": "eu", "cache_free": 0, "cache_files": 0
    })
    .to_string()
    .into_bytes()
}

#[test]
fn cluster_roles_refuse_to_start_without_a_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let roles: [&[&str]; 4] = [
        &["tracker", "--http", "127.0.0.1:0", "--data", data],
        &[
            "storage",
            "--group",
            "g1",
            "--tracker",
            "http://127.0.0.1:9",
            "--http",
            "127.0.0.1:0",
            "--data",
            data,
        ],
        &[
            "edge",
            "--origin",
            "http://127.0.0.1:9",
            "--http",
            "127.0.0.1:0",
            "--cache",
            data,
        ],
        &["live", "--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    ];
    for args in roles {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env_remove("SLUICE_CLUSTER_SECRET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started without a secret");
        assert!(
            stderr.contains("SLUICE_CLUSTER_SECRET is not set")
                && stderr.contains("--insecure-no-cluster-secret"),
            "{args:?}: {stderr}"
        );
        // Open cluster routes beside a URL secret or API token would be the way round them
        // (a live server has none yet: publish links work in a lab too).
        let mut insecure = args.to_vec();
        insecure.push("--insecure-no-cluster-secret");
        if args[0] != "live" {
            let out = std::process::Command::new(BIN)
                .args(&insecure)
                .env_remove("SLUICE_CLUSTER_SECRET")
                .env("SLUICE_API_TOKEN", "t")
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{insecure:?} started open beside a token"
            );
        }
        // For a lab, the flag runs it, saying loudly what that means.
        let served = Served::spawn(&insecure, &[]);
        let log = served.startup_log.join("\n");
        assert!(log.contains("INSECURE"), "{insecure:?}: {log}");
    }
}

#[test]
fn serve_gives_strangers_no_cluster_route() {
    let dir = tempfile::tempdir().unwrap();
    // Every secret but the cluster one: no registration, no internal route at all.
    let env = [("SLUICE_URL_SECRET", "u"), ("SLUICE_API_TOKEN", "t")];
    let serve = Served::start_with_env(dir.path(), &[], &env);
    wait_for("serve lists its node", WAIT, || {
        node_urls(&cluster_view(&serve.url)).len() == 1
    });
    let before = cluster_view(&serve.url);
    let attacker = "http://127.0.0.1:9";
    let guess = "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa";
    for secret in [None, Some("guess")] {
        let header = secret.map(|s| format!("sluice-cluster-secret: {s}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        let node_id = before["groups"][0]["nodes"][0]["id"].as_str().unwrap();
        for (method, path, body) in [
            (
                "POST",
                "/v1/cluster/heartbeat".to_owned(),
                Some(heartbeat("evil", attacker)),
            ),
            // The real node's id with the attacker's URL.
            (
                "POST",
                "/v1/cluster/heartbeat".to_owned(),
                Some(heartbeat(node_id, attacker)),
            ),
            (
                "POST",
                "/v1/edges/heartbeat".to_owned(),
                Some(edge_heartbeat(attacker)),
            ),
            (
                "DELETE",
                format!("/v1/cluster/nodes/{node_id}?force=true"),
                None,
            ),
            ("GET", "/v1/internal/oplog".to_owned(), None),
            ("GET", "/v1/internal/identity".to_owned(), None),
            ("GET", format!("/v1/internal/blobs/{guess}"), None),
            (
                "PUT",
                format!("/v1/internal/blobs/{guess}"),
                Some(b"planted".to_vec()),
            ),
            ("DELETE", format!("/v1/internal/blobs/{guess}"), None),
        ] {
            let (code, answer) = request(
                method,
                &format!("{}{path}", serve.url),
                &headers,
                body.as_deref(),
            );
            assert_eq!(code, 403, "{method} {path} with {secret:?}");
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.contains("SLUICE_CLUSTER_SECRET"),
                "{method} {path}: {text}"
            );
        }
    }
    // Preloading is an IM-backend call: it needs the API token.
    let preload = serde_json::json!({"fileid": guess, "region": "eu"}).to_string();
    let (code, _) = request(
        "POST",
        &format!("{}/v1/preload", serve.url),
        &["content-type: application/json"],
        Some(preload.as_bytes()),
    );
    assert_eq!(code, 401);
    assert_eq!(node_urls(&cluster_view(&serve.url)), node_urls(&before));
    let (_, edges) = request("GET", &format!("{}/v1/edges", serve.url), &[], None);
    assert!(!String::from_utf8_lossy(&edges).contains("evil"));
}

#[test]
fn serve_with_a_cluster_secret_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("SLUICE_CLUSTER_SECRET", SECRET), ("SLUICE_API_TOKEN", "t")];
    let serve = Served::start_with_env(dir.path(), &[], &env);
    let attacker = "http://127.0.0.1:9";
    let beat = heartbeat("evil", attacker);
    let url = format!("{}/v1/cluster/heartbeat", serve.url);
    let (code, _) = request("POST", &url, &[], Some(&beat));
    assert_eq!(code, 403);
    let (code, _) = request("POST", &url, &["sluice-cluster-secret: wrong"], Some(&beat));
    assert_eq!(code, 403);
    // Even with the secret, nothing at the attacker's URL says it is that node.
    let with_secret = format!("sluice-cluster-secret: {SECRET}");
    let (code, _) = request("POST", &url, &[&with_secret], Some(&beat));
    assert_eq!(code, 409);
    let (code, _) = request(
        "GET",
        &format!("{}/v1/internal/identity", serve.url),
        &[&with_secret],
        None,
    );
    assert_eq!(code, 200, "peers holding the secret are answered");
    assert!(!node_urls(&cluster_view(&serve.url)).contains(&attacker.to_owned()));
}

#[test]
fn a_copied_data_directory_or_a_wrong_advertise_cannot_take_a_nodes_place() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("SLUICE_CLUSTER_SECRET", SECRET)];
    let tracker = Served::tracker(dirs[0].path(), &["--offline-after-ms", "1000"], &env);
    let a = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &env);
    wait_for("a active", WAIT, || {
        let view = cluster_view(&tracker.url);
        node_urls(&view) == vec![a.url.clone()]
            && view["groups"][0]["nodes"][0]["state"] == "active"
    });
    // A second server started on a copy of a's data directory: the same node id.
    for name in ["FORMAT", "NODE_ID"] {
        std::fs::copy(dirs[1].path().join(name), dirs[2].path().join(name)).unwrap();
    }
    let mut clone = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &env);
    // A third whose --advertise names a's URL by mistake.
    let wrong = Served::storage(
        dirs[3].path(),
        "g1",
        &[&tracker.url],
        &["--advertise", &a.url],
        &env,
    );
    wait_for("the tracker to refuse both", WAIT, || {
        clone
            .drain_log()
            .iter()
            .any(|l| l.contains("409") && l.contains("still answers"))
    });
    wait_for("the wrong advertise to be refused", WAIT, || {
        String::from_utf8_lossy(
            &request("GET", &format!("{}/v1/cluster", tracker.url), &[], None).1,
        )
        .matches("\"url\"")
        .count()
            == 1
    });
    let view = cluster_view(&tracker.url);
    assert_eq!(node_urls(&view), vec![a.url.clone()], "a keeps its place");
    assert_eq!(view["groups"][0]["nodes"][0]["state"], "active");
    // Refused by its cluster, neither acknowledges uploads on its own (it cannot know whom
    // the write rule names).
    for refused in [&clone, &wrong] {
        let (code, body) = request(
            "POST",
            &format!("{}/v1/files", refused.url),
            &[],
            Some(b"x"),
        );
        assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("not joined"));
    }
    drop(wrong);
    // Once a is gone for real, the copy may take over its id (a node that moved).
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_for("the copy to take over", WAIT, || {
        node_urls(&cluster_view(&tracker.url)) == vec![clone.url.clone()]
    });
    // The same server under another name for the same address is a move too: its old name
    // still answers, but as the very same run of the server.
    clone.child.kill().unwrap();
    clone.child.wait().unwrap();
    let port = clone.url.rsplit(':').next().unwrap().to_owned();
    let renamed = format!("http://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let _same = Served::storage_at(
        dirs[2].path(),
        "g1",
        &[&tracker.url],
        &listen,
        &["--advertise", &renamed],
        &env,
    );
    wait_for("the renamed node to be taken", WAIT, || {
        node_urls(&cluster_view(&tracker.url)) == vec![renamed.clone()]
    });
}

/// A tracker, a storage node of g1 and an edge in region eu, all live, on DIRS[0..3]; the node
/// holds one file ("precious"), whose id comes last.
fn cluster_holding_a_file(dirs: &[tempfile::TempDir]) -> (Served, Served, Served, String) {
    let env = [("SLUICE_CLUSTER_SECRET", SECRET)];
    let tracker = Served::tracker(dirs[0].path(), &[], &env);
    let node = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &env);
    let edge = Served::spawn(
        &[
            "edge",
            "--origin",
            &tracker.url,
            "--http",
            "127.0.0.1:0",
            "--cache",
            dirs[2].path().to_str().unwrap(),
            "--tracker",
            &tracker.url,
            "--region",
            "eu",
        ],
        &env,
    );
    wait_for("node active and edge live", WAIT, || {
        let view = String::from_utf8_lossy(
            &request("GET", &format!("{}/v1/cluster", tracker.url), &[], None).1,
        )
        .into_owned();
        let edges = String::from_utf8_lossy(
            &request("GET", &format!("{}/v1/edges", tracker.url), &[], None).1,
        )
        .into_owned();
        view.contains("\"active\"") && edges.contains("\"live\":true")
    });
    let (code, body) = request(
        "POST",
        &format!("{}/v1/files", node.url),
        &[],
        Some(b"precious"),
    );
    assert_eq!(code, 201);
    let fileid = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned();
    (tracker, node, edge, fileid)
}

/// What must hold after hostile requests: the same node at the same place, the file intact,
/// everyone healthy.
fn nothing_changed(
    before: &serde_json::Value,
    tracker: &Served,
    node: &Served,
    edge: &Served,
    fileid: &str,
) {
    assert_eq!(node_urls(&cluster_view(&tracker.url)), node_urls(before));
    let (code, body) = request("GET", &format!("{}/v1/files/{fileid}", node.url), &[], None);
    assert_eq!((code, body), (200, b"precious".to_vec()));
    for url in [&tracker.url, &node.url, &edge.url] {
        assert_eq!(request("GET", &format!("{url}/healthz"), &[], None).0, 200);
    }
}

#[test]
fn every_cluster_route_answers_garbage_and_oversized_bodies_without_a_5xx() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (tracker, node, edge, fileid) = cluster_holding_a_file(&dirs);
    let before = cluster_view(&tracker.url);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut garbage = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let oversized = vec![b'{'; 24 << 20];
    let other_group = "g2/aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let routes: Vec<(&str, String)> = vec![
        ("POST", format!("{}/v1/cluster/heartbeat", tracker.url)),
        ("POST", format!("{}/v1/edges/heartbeat", tracker.url)),
        ("POST", format!("{}/v1/cluster/unreachable", tracker.url)),
        (
            "DELETE",
            format!("{}/v1/cluster/nodes/{}", tracker.url, "%00%ff"),
        ),
        ("PUT", format!("{}/v1/internal/blobs/{fileid}", node.url)),
        (
            "PUT",
            format!("{}/v1/internal/blobs/{other_group}", node.url),
        ),
        ("PUT", format!("{}/v1/internal/blobs/not-an-id", node.url)),
        (
            "DELETE",
            format!("{}/v1/internal/blobs/{other_group}", node.url),
        ),
        (
            "GET",
            format!("{}/v1/internal/oplog?after=-1&limit=x", node.url),
        ),
        ("GET", format!("{}/v1/internal/identity", node.url)),
        (
            "POST",
            format!("{}/v1/internal/preload/{}", edge.url, "../../etc"),
        ),
        ("POST", format!("{}/v1/internal/preload/{fileid}", edge.url)),
    ];
    let with_secret = format!("sluice-cluster-secret: {SECRET}");
    for (method, url) in &routes {
        for headers in [vec![], vec![with_secret.as_str()]] {
            let mut bodies = vec![garbage(17), garbage(4096), oversized.clone()];
            bodies.push(b"{\"node_id\":1,\"group\":[],\"url\":null}".to_vec());
            for body in &bodies {
                let (code, answer) = request(method, url, &headers, Some(body));
                // A body the server will not read may be cut off before curl has sent it all
                // (curl then reports no final status): refused either way, never a 5xx.
                let cut_off = body.len() == oversized.len() && matches!(code, 0 | 100);
                assert!(
                    (200..500).contains(&code) || cut_off,
                    "{method} {url} ({} bytes, {} headers): {code}",
                    body.len(),
                    headers.len()
                );
                if code >= 400 && !answer.is_empty() {
                    let v: serde_json::Value =
                        serde_json::from_slice(&answer).unwrap_or_else(|_| {
                            panic!("{method} {url}: {}", String::from_utf8_lossy(&answer))
                        });
                    assert!(v["error"].is_string(), "{method} {url}: {v}");
                }
            }
        }
    }
    nothing_changed(&before, &tracker, &node, &edge, &fileid);
}

#[test]
fn a_heartbeat_with_another_nodes_id_at_a_url_that_is_not_it_is_refused() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (tracker, node, edge, fileid) = cluster_holding_a_file(&dirs);
    let before = cluster_view(&tracker.url);
    let node_id = before["groups"][0]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let with_secret = format!("sluice-cluster-secret: {SECRET}");
    // With the secret: another node's id at a URL that is not it.
    let (code, _) = request(
        "POST",
        &format!("{}/v1/cluster/heartbeat", tracker.url),
        &[&with_secret],
        Some(&heartbeat(&node_id, "http://127.0.0.1:9")),
    );
    assert_eq!(code, 409);
    nothing_changed(&before, &tracker, &node, &edge, &fileid);
}

/// A TCP proxy on 127.0.0.1 that records every byte clients send through it; its target is set
/// once known (connections wait for it).
struct RecordingProxy {
    url: String,
    target: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, s) = (target.clone(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let (t, s) = (t.clone(), s.clone());
                std::thread::spawn(move || {
                    let mut addr = None;
                    wait_for("the proxy's target", WAIT, || {
                        addr = t.lock().unwrap().clone();
                        addr.is_some()
                    });
                    let Ok(server) = std::net::TcpStream::connect(addr.unwrap()) else {
                        return;
                    };
                    let (mut c_in, mut s_out) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut s_in, mut c_out) = (server, client);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = c_in.read(&mut buf) {
                            if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            s.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = s_out.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { url, target, seen }
    }
}

#[test]
fn the_api_token_never_reaches_a_node_a_tracker_chose() {
    const TOKEN: &str = "api-t0ken-for-trackers-only";
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [
        ("SLUICE_CLUSTER_SECRET", SECRET),
        ("SLUICE_API_TOKEN", TOKEN),
    ];
    let tracker = Served::tracker(dirs[0].path(), &[], &env);
    // The node is reached only through a proxy that records what it is sent.
    let proxy = RecordingProxy::start();
    let node = Served::storage(
        dirs[1].path(),
        "g1",
        &[&tracker.url],
        &["--advertise", &proxy.url],
        &env,
    );
    *proxy.target.lock().unwrap() = Some(node.url.trim_start_matches("http://").to_owned());
    wait_for("the node active", WAIT, || {
        String::from_utf8_lossy(
            &request("GET", &format!("{}/v1/cluster", tracker.url), &[], None).1,
        )
        .contains("\"active\"")
    });
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("voice.ogg");
    std::fs::write(&file, vec![3u8; 300_000]).unwrap();
    let file = file.to_str().unwrap();
    // The CLI, plain and progressive (tus), through the tracker; and a delete through it.
    let token = [("SLUICE_API_TOKEN", TOKEN)];
    for extra in [&[][..], &["--progressive", "--q", "0.5"][..]] {
        let mut args = vec!["upload", file, "--tracker", &tracker.url];
        args.extend_from_slice(extra);
        let fileid = common::sluice_env_ok(&args, &token);
        if extra.is_empty() {
            common::sluice_env_ok(&["delete", &fileid, "--tracker", &tracker.url], &token);
            let (code, _) = request("GET", &format!("{}/v1/files/{fileid}", node.url), &[], None);
            assert_eq!(code, 404, "deleted through the tracker");
        }
    }
    // curl following the tracker's redirect, without being told to trust the new host.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    curl_ok(&[
        "-sS",
        "-f",
        "-L",
        "--post301",
        "--post302",
        "--post303",
        "-H",
        &bearer,
        "--data-binary",
        "hello",
        &format!("{}/v1/files", tracker.url),
    ]);
    let seen = String::from_utf8_lossy(&proxy.seen.lock().unwrap()).to_lowercase();
    assert!(
        seen.contains("sig="),
        "the uploads went through the node's proxy with signed links"
    );
    assert!(
        !seen.contains(&TOKEN.to_lowercase()),
        "the token reached the node"
    );
    assert!(
        !seen.contains("authorization:"),
        "an Authorization header reached the node"
    );
    // Without the token, the tracker hands out nothing signed, and the node takes nothing.
    let (code, body) = request("GET", &format!("{}/v1/assign", tracker.url), &[], None);
    assert_eq!(code, 200);
    let assignment: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(assignment.get("upload_url").is_none(), "{assignment}");
    let (code, _) = request("POST", assignment["url"].as_str().unwrap(), &[], Some(b"x"));
    assert_eq!(code, 401);
    let (code, _) = request(
        "GET",
        &format!("{}/v1/assign", tracker.url),
        &["Authorization: Bearer wrong"],
        None,
    );
    assert_eq!(code, 401);

    // A phone's short link, and the node link the tracker makes of it, never outlive it:
    // presenting the node link to the tracker again gets nothing longer.
    let phone = common::sluice_env_ok(
        &[
            "sign",
            "/v1/files",
            "--upload",
            "--ttl",
            "3",
            "--max-size",
            "1KiB",
        ],
        &token,
    );
    let param = |link: &str, name: &str| -> u64 {
        link.split(['?', '&'])
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    let expires = |link: &str| param(link, "expires");
    let location = |link: &str| {
        let out = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            "-X",
            "POST",
            "--data-binary",
            "x",
            &format!("{}{link}", tracker.url),
        ]);
        String::from_utf8(out.stdout).unwrap()
    };
    let node_link = location(&phone);
    assert!(expires(&node_link) <= expires(&phone), "{node_link}");
    assert!(param(&node_link, "max_size") <= 1024, "{node_link}");
    let again = location(&format!(
        "/v1/files?{}",
        node_link.split_once('?').unwrap().1
    ));
    assert!(expires(&again) <= expires(&phone), "{again}");
}

/// An HTML page and an SVG image that, if a browser ran them in the server's origin, would
/// mark the page as taken over.
const HOSTILE: [(&str, &str); 2] = [
    (
        "text/html",
        "<html><body><p id=p>harmless</p><script>document.body.setAttribute('data-pwned', location.origin)</script></body></html>",
    ),
    (
        "image/svg+xml",
        "<svg xmlns='http://www.w3.org/2000/svg'><script>document.documentElement.setAttribute('data-pwned', location.origin)</script></svg>",
    ),
];

fn upload_as(server: &str, content_type: &str, body: &str) -> String {
    let header = format!("content-type: {content_type}");
    let (code, answer) = request(
        "POST",
        &format!("{server}/v1/files"),
        &[&header],
        Some(body.as_bytes()),
    );
    assert_eq!(code, 201);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    format!("{server}{}", answer["url"].as_str().unwrap())
}

/// Whether a script of [`HOSTILE`] ran in the page.
const PWNED: &str = "return document.documentElement.hasAttribute('data-pwned') \
                     || !!(document.body && document.body.hasAttribute('data-pwned'))";

#[tokio::test]
async fn uploaded_pages_and_svgs_run_no_script_in_a_browser() {
    let browser = sluice_testkit::browser::Browser::start().await;
    // The harness can see an attack succeed: the same page from a server without our headers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let page = axum::routing::get(|| async { ([("content-type", "text/html")], HOSTILE[0].1) });
        axum::serve(listener, axum::Router::new().route("/page", page)).await
    });
    browser.goto(&format!("{bare}/page")).await;
    assert_eq!(
        browser.eval(PWNED).await,
        true,
        "the control page's script runs"
    );

    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let inline_config = dirs[1].path().join("sluice.toml");
    std::fs::write(&inline_config, "active_content_inline = true\n").unwrap();
    let attachment = Served::start(dirs[0].path(), &[]);
    let inline = Served::start(
        &dirs[1].path().join("data"),
        &["--config", inline_config.to_str().unwrap()],
    );
    // Types a browser would read another way than the server (Chromium takes `text/html x`
    // and `text/plain,text/html` as HTML) are refused at upload.
    for odd in [
        "text/html x",
        "text/plain,text/html",
        "application/xhtml+xml(",
    ] {
        let header = format!("content-type: {odd}");
        let (code, _) = request(
            "POST",
            &format!("{}/v1/files", attachment.url),
            &[&header],
            Some(HOSTILE[0].1.as_bytes()),
        );
        assert_eq!(code, 400, "{odd}");
    }
    for (content_type, body) in HOSTILE {
        // By default such files are downloads, never pages: the browser stays where it was.
        let url = upload_as(&attachment.url, content_type, body);
        browser.goto("about:blank").await;
        browser.goto(&url).await;
        assert_eq!(
            browser.location().await,
            "about:blank",
            "{content_type} opened as a page"
        );
        assert_eq!(browser.eval(PWNED).await, false);
        // Allowed inline, they show but stay sandboxed: no script runs.
        let url = upload_as(&inline.url, content_type, body);
        browser.goto(&url).await;
        assert_eq!(browser.location().await, url, "{content_type} inline");
        assert_eq!(
            browser.eval(PWNED).await,
            false,
            "{content_type} ran script"
        );
    }
    browser.quit().await;
}
