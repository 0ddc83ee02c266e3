//! Requests that in-process tests make of the servers they boot (over real sockets): a GET
//! with its status, headers and whole body, JSON answers, uploads, error texts, metrics, and
//! curl run as a real third-party client.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// A GET of `url` with `headers`: its status, headers and whole body.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let (status, headers) = (r.status(), r.headers().clone());
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("body of GET {url}: {e}"));
    (status, headers, body.to_vec())
}

/// A GET of `url` whose answer is JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let (status, _, body) = get(url, &[]).await;
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url} ({status}) is not JSON: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// POSTs `body` as `content_type` to `{base}/v1/files`; asserts 201 and returns its JSON
/// answer (`fileid`, `url`, `size`, ...).
pub async fn upload(base: &str, body: Vec<u8>, content_type: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/files"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/v1/files: {e}"));
    assert_eq!(r.status(), StatusCode::CREATED, "upload to {base}");
    r.json().await.expect("the upload's answer is JSON")
}

/// The `error` text of a JSON error body.
pub fn error_text(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is JSON: {e}: {}", String::from_utf8_lossy(body)));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("an error string in {v}"))
        .to_owned()
}

/// The value of the first line of Prometheus `text` that starts with `name`.
pub fn metric_in(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// `name`'s value in `{base}/metrics`; panics when it is missing.
pub async fn metric(base: &str, name: &str) -> u64 {
    let (_, _, body) = get(&format!("{base}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&body);
    metric_in(&text, name).unwrap_or_else(|| panic!("{name} in the metrics of {base}:\n{text}"))
}

/// Runs curl (a real third-party client) with `args`, asserts it succeeded, and returns what
/// it printed.
pub async fn curl(args: &[&str]) -> Vec<u8> {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("curl is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
