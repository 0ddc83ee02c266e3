//! The web console in a real headless Chromium against real `sluice` processes. Screenshots of
//! each page are kept in `target/test-artefacts/console/`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Served, curl, publish};
use sluice_testkit::browser::Browser;

/// How often a test looks at the page again while it waits for something.
const POLL: Duration = Duration::from_millis(50);

fn artefact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-artefacts/console")
        .join(format!("{name}.png"))
}

/// The status and `Location` of a GET, without following it.
fn redirect_of(url: &str) -> (String, String) {
    let head = String::from_utf8_lossy(&curl(&["-sS", "-o", "/dev/null", "-D", "-", url]).stdout)
        .into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    (status, location)
}

#[test]
fn every_role_sends_a_browser_at_its_root_to_the_console() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret = [("SLUICE_CLUSTER_SECRET", "s3cret")];
    let serve = Served::start(dirs[0].path(), &[]);
    let tracker = Served::tracker(dirs[1].path(), &[], &secret);
    let storage = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &secret);
    let edge = Served::spawn(
        &[
            "edge",
            "--origin",
            &serve.url,
            "--http",
            "127.0.0.1:0",
            "--cache",
            dirs[3].path().to_str().unwrap(),
        ],
        &secret,
    );
    let live = Served::spawn(
        &["live", "--http", "127.0.0.1:0", "--rtmp", "127.0.0.1:0"],
        &secret,
    );
    for (role, served) in [
        ("serve", &serve),
        ("tracker", &tracker),
        ("storage", &storage),
        ("edge", &edge),
        ("live", &live),
    ] {
        assert_eq!(
            redirect_of(&format!("{}/", served.url)),
            ("303".to_owned(), "/console/".to_owned()),
            "{role}"
        );
        let page = curl(&["-sSf", &format!("{}/console/", served.url)]);
        assert!(page.status.success(), "{role}");
        let about = common::get_json(&format!("{}/v1/about", served.url));
        assert_eq!(about["role"], role);
    }
    assert!(
        serve
            .startup_log
            .iter()
            .any(|l| l.contains(&format!("console={}/console/", serve.url))),
        "serve says where its console is: {:?}",
        serve.startup_log
    );
}

#[tokio::test]
async fn every_console_page_loads_in_chromium_without_an_error() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &["--rtmp", "127.0.0.1:0"]);
    let stored = {
        let out = curl(&[
            "-sSf",
            "-H",
            "Content-Type: video/mp4",
            "--data-binary",
            "not really a video",
            &format!("{}/v1/files", served.url),
        ]);
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["fileid"].as_str().unwrap().to_owned()
    };
    let browser = Browser::start().await;
    for (name, path) in [
        ("overview", "/console/".to_owned()),
        ("cluster", "/console/cluster".to_owned()),
        ("upload", "/console/upload".to_owned()),
        ("live", "/console/live".to_owned()),
        ("view", format!("/console/view?file={stored}")),
        ("play", format!("/console/play?file={stored}")),
    ] {
        browser.goto(&format!("{}{path}", served.url)).await;
        // Each page fills itself from the API: wait until it has.
        let filled = match name {
            "overview" => "return document.getElementById('version').textContent !== '…'",
            "cluster" => "return document.querySelectorAll('[data-node]').length > 0",
            "live" => "return !document.getElementById('streams').textContent.includes('–')",
            _ => "return document.readyState === 'complete'",
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while browser.eval(filled).await != true {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never filled in"
            );
            tokio::time::sleep(POLL).await;
        }
        browser.screenshot(&artefact(name)).await;
        // With a keyboard: every link and control is in the tab order and visible.
        let unreachable = browser
            .eval(
                "return [...document.querySelectorAll('a[href], button, input, select')] \
                   .filter(e => !e.closest('[hidden]')) \
                   .filter(e => e.tabIndex < 0 || getComputedStyle(e).display === 'none' \
                                || getComputedStyle(e).visibility === 'hidden') \
                   .map(e => e.outerHTML)",
            )
            .await;
        assert_eq!(unreachable, serde_json::json!([]), "{name}");
        let errors = browser.console_errors().await;
        // The play page's stand-in "video" cannot be decoded; that is the media's fault.
        let errors: Vec<_> = errors
            .into_iter()
            .filter(|e| !(name == "play" && e.contains("MEDIA_ERR")))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    // At phone width the overview still shows its figures.
    browser.resize(390, 844).await;
    browser.goto(&format!("{}/console/", served.url)).await;
    let width = browser
        .eval("return document.documentElement.scrollWidth")
        .await;
    assert!(
        width.as_u64().is_some_and(|w| w <= 400),
        "no sideways scrolling at phone width: {width}"
    );
    browser.screenshot(&artefact("overview-phone")).await;
    browser.quit().await;
}

#[tokio::test]
async fn files_uploaded_through_the_page_download_byte_identical() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let clip = work.path().join("clip.bin");
    let clip_bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&clip, &clip_bytes).unwrap();
    let picture = work.path().join("picture.jpg");
    let jpeg = sluice_testkit::images::progressive_jpeg(640, 480, 7);
    std::fs::write(&picture, &jpeg).unwrap();
    // Named like a JPEG, but not one: it goes up as it is.
    let fake = work.path().join("fake.jpg");
    let fake_bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&fake, &fake_bytes).unwrap();

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/console/upload", served.url))
        .await;
    for (file, want) in [
        (&clip, &clip_bytes),
        (&fake, &fake_bytes),
        (&picture, &jpeg),
    ] {
        let before = browser
            .eval("return document.querySelectorAll('li[data-fileid]').length")
            .await
            .as_u64()
            .unwrap();
        browser.type_into("#files", file.to_str().unwrap()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let fileid = loop {
            // One look at the page: the newest row, once its upload has ended.
            let newest = browser
                .eval(
                    "const rows = document.querySelectorAll('#uploads li'); \
                     const row = rows[rows.length - 1]; \
                     const failed = row && row.querySelector('.state-offline'); \
                     if (failed) return {failed: failed.textContent}; \
                     const count = document.querySelectorAll('li[data-fileid]').length; \
                     return row && row.dataset.fileid && row.querySelector('progress').value === 1 \
                         ? {fileid: row.dataset.fileid, count} : null",
                )
                .await;
            assert!(newest["failed"].is_null(), "{newest}");
            if let Some(id) = newest["fileid"].as_str() {
                assert_eq!(newest["count"].as_u64(), Some(before + 1));
                break id.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the upload never ended"
            );
            tokio::time::sleep(POLL).await;
        };
        let got = curl(&["-sSf", &format!("{}/v1/files/{fileid}", served.url)]).stdout;
        assert_eq!(&got, want, "{}", file.display());
    }
    // The picture went up progressively: its row says when its id came.
    let note = browser
        .eval("const rows = document.querySelectorAll('li[data-fileid]'); return rows[rows.length - 1].textContent")
        .await;
    assert!(
        note.as_str().is_some_and(|t| t.contains("id after")),
        "{note}"
    );
    browser.screenshot(&artefact("upload-done")).await;
    assert!(browser.console_errors().await.is_empty());
    browser.quit().await;
}

/// Polls `script` in the page until it returns something other than null/false, or panics
/// naming `what` after `timeout`.
async fn wait_in_page(
    browser: &Browser,
    what: &str,
    timeout: Duration,
    script: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = browser.eval(script).await;
        if !(got.is_null() || got == false) {
            return got;
        }
        if std::time::Instant::now() >= deadline {
            let page = browser
                .eval(
                    "const v = document.getElementById('video'); \
                     return {problem: document.getElementById('problem')?.textContent, \
                             video: v && {time: v.currentTime, paused: v.paused, ready: v.readyState, \
                                          error: v.error && v.error.message, src: v.currentSrc}}",
                )
                .await;
            let errors = browser.console_errors().await;
            panic!("timed out: {what}; page {page}; console {errors:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn the_cluster_page_shows_a_node_going_offline() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret = [("SLUICE_CLUSTER_SECRET", "s3cret")];
    let tracker = Served::tracker(dirs[0].path(), &["--offline-after-ms", "1000"], &secret);
    let node = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &secret);
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/console/cluster", tracker.url))
        .await;
    wait_in_page(
        &browser,
        "the node shown active",
        Duration::from_secs(15),
        "return document.querySelector('[data-node] .state-active') !== null",
    )
    .await;
    browser.screenshot(&artefact("cluster-up")).await;
    // A tracker stores no files: its upload page says so and names the nodes that do.
    browser
        .goto(&format!("{}/console/upload", tracker.url))
        .await;
    let told = wait_in_page(
        &browser,
        "the tracker's upload page to point at a node",
        Duration::from_secs(15),
        "const a = document.querySelector('#uploads a'); \
         return !document.getElementById('problem').hidden && a ? a.getAttribute('href') : null",
    )
    .await;
    assert_eq!(
        told,
        serde_json::json!(format!("{}/console/upload", node.url))
    );
    browser
        .goto(&format!("{}/console/cluster", tracker.url))
        .await;
    drop(node);
    wait_in_page(
        &browser,
        "the node shown offline",
        Duration::from_secs(15),
        "return document.querySelector('tr.down[data-node] .state-offline') !== null",
    )
    .await;
    browser.screenshot(&artefact("cluster-down")).await;
    assert!(browser.console_errors().await.is_empty());
    browser.quit().await;
}

/// A tus request with curl; returns the response head.
fn tus(method: &str, url: &str, headers: &[String], body: Option<&std::path::Path>) -> String {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        "-X".into(),
        method.into(),
        "-H".into(),
        "Tus-Resumable: 1.0.0".into(),
    ];
    for h in headers {
        args.extend(["-H".into(), h.clone()]);
    }
    if let Some(path) = body {
        args.extend([
            "-H".into(),
            "Content-Type: application/offset+octet-stream".into(),
            "--data-binary".into(),
            format!("@{}", path.display()),
        ]);
    }
    args.push(url.into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8_lossy(&curl(&refs).stdout).into_owned()
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// What the viewer shows: the decoded image's size and a digest of its pixels.
const PIXELS: &str = "const img = document.getElementById('image'); \
    if (!img.complete || !img.naturalWidth) return null; \
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight; \
    const g = c.getContext('2d'); g.drawImage(img, 0, 0); \
    const d = g.getImageData(0, 0, c.width, c.height).data; let h = 0; \
    for (let i = 0; i < d.length; i += 61) h = (h * 31 + d[i]) >>> 0; \
    return {w: img.naturalWidth, h: img.naturalHeight, digest: h, \
            paints: Number(img.dataset.paints), complete: img.dataset.complete};";

#[tokio::test]
async fn a_progressive_picture_sharpens_in_the_viewer() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let jpeg = sluice_testkit::images::progressive_jpeg(640, 480, 11);
    let cut = jpeg.len() * 2 / 5;
    let (first, rest) = (work.path().join("first"), work.path().join("rest"));
    std::fs::write(&first, &jpeg[..cut]).unwrap();
    std::fs::write(&rest, &jpeg[cut..]).unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let created = tus(
        "POST",
        &format!("{}/v1/uploads", served.url),
        &[
            format!("Upload-Length: {}", jpeg.len()),
            format!(
                "Upload-Metadata: filetype {},q {}",
                b64("image/jpeg"),
                b64("0.3")
            ),
        ],
        None,
    );
    let location = header_of(&created, "location").expect("a tus Location");
    let patched = tus(
        "PATCH",
        &format!("{}{location}", served.url),
        &["Upload-Offset: 0".into()],
        Some(&first),
    );
    let fileid = header_of(&patched, "sluice-file-id").expect("an id at q = 0.3");

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/console/view?file={fileid}", served.url))
        .await;
    let early = wait_in_page(&browser, "the first paint", Duration::from_secs(15), PIXELS).await;
    assert_eq!(
        (early["w"].as_u64(), early["h"].as_u64()),
        (Some(640), Some(480)),
        "whole size from the first paint"
    );
    assert_eq!(early["complete"], "false");
    browser.screenshot(&artefact("view-partial")).await;

    tus(
        "PATCH",
        &format!("{}{location}", served.url),
        &[format!("Upload-Offset: {cut}")],
        Some(&rest),
    );
    let last = wait_in_page(
        &browser,
        "the whole picture shown",
        Duration::from_secs(15),
        &PIXELS.replace(
            "return {w:",
            "if (img.dataset.complete !== 'true') return null; return {w:",
        ),
    )
    .await;
    assert!(
        last["paints"].as_u64() > early["paints"].as_u64(),
        "{early} {last}"
    );
    assert_ne!(last["digest"], early["digest"], "the picture sharpened");
    browser.screenshot(&artefact("view-whole")).await;
    assert!(browser.console_errors().await.is_empty());
    browser.quit().await;
}

/// Whether the page's video is playing: its time has passed `secs`.
fn played_past(secs: f64) -> String {
    format!(
        "const v = document.getElementById('video'); \
         return v.currentTime > {secs} && !v.paused ? v.currentTime : null"
    )
}

#[tokio::test]
async fn a_live_stream_plays_over_hls_and_http_flv_and_a_stored_mp4_seeks() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &["--rtmp", "127.0.0.1:0"]);
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/cam"), 90);
    // The page is opened once the stream has a playlist (before its first segment, a player
    // retries, and its browser logs the 404s).
    common::wait_for("the stream's HLS playlist", Duration::from_secs(30), || {
        curl(&[
            "-sSf",
            "-o",
            "/dev/null",
            &format!("{}/live/live/cam.m3u8", served.url),
        ])
        .status
        .success()
    });
    let browser = Browser::start().await;
    for via in ["hls", "flv"] {
        browser
            .goto(&format!(
                "{}/console/play?stream=live/cam&via={via}",
                served.url
            ))
            .await;
        wait_in_page(
            &browser,
            &format!("the live stream playing over {via}"),
            Duration::from_secs(30),
            &played_past(1.0),
        )
        .await;
        let stats = browser
            .eval("return document.getElementById('stats').textContent")
            .await;
        assert!(
            stats
                .as_str()
                .is_some_and(|s| s.contains("320×240") && s.contains("Behind live")),
            "{via}: {stats}"
        );
        browser
            .screenshot(&artefact(&format!("play-live-{via}")))
            .await;
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "{via}: {errors:?}");
    }
    let _ = publisher.kill();
    let _ = publisher.wait();

    // A stored MP4 (moov first), played and sought to its fourth second.
    let work = tempfile::tempdir().unwrap();
    let mp4 = work.path().join("clip.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "6",
        ])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ])
        .arg(&mp4)
        .status()
        .unwrap();
    assert!(made.success());
    let out = curl(&[
        "-sSf",
        "-H",
        "Content-Type: video/mp4",
        "--data-binary",
        &format!("@{}", mp4.display()),
        &format!("{}/v1/files", served.url),
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fileid = answer["fileid"].as_str().unwrap();
    browser
        .goto(&format!("{}/console/play?file={fileid}", served.url))
        .await;
    wait_in_page(
        &browser,
        "the video's length known",
        Duration::from_secs(15),
        "const v = document.getElementById('video'); return v.readyState >= 1 && v.duration > 5",
    )
    .await;
    browser
        .eval("const v = document.getElementById('video'); v.currentTime = 4; return true")
        .await;
    wait_in_page(
        &browser,
        "the seek to 4 s",
        Duration::from_secs(15),
        "const v = document.getElementById('video'); \
         return !v.seeking && v.readyState >= 2 && Math.abs(v.currentTime - 4) < 0.5",
    )
    .await;
    browser.screenshot(&artefact("play-file")).await;
    assert!(browser.console_errors().await.is_empty());
    browser.quit().await;
}

/// A private deployment (API token and URL secret set): the console asks for the token once,
/// keeps it in the tab, uploads with it, and shows private media through links the server
/// signs for the token holder; the URL secret never reaches the page.
#[tokio::test]
async fn a_private_deployment_asks_for_the_token_once_and_plays_through_signed_links() {
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("SLUICE_API_TOKEN", "console-token"),
        ("SLUICE_URL_SECRET", "console-url-secret"),
    ];
    let served = Served::start_with_env(data.path(), &[], &env);
    // Without the token, no link is signed.
    let refused = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/v1/sign?path=/v1/files/g1/x", served.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");

    let work = tempfile::tempdir().unwrap();
    let picture = work.path().join("private.jpg");
    let jpeg = sluice_testkit::images::progressive_jpeg(320, 240, 5);
    std::fs::write(&picture, &jpeg).unwrap();
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/console/upload", served.url))
        .await;
    browser.type_into("#files", picture.to_str().unwrap()).await;
    wait_in_page(
        &browser,
        "the token form",
        Duration::from_secs(15),
        "return !document.getElementById('token').hidden",
    )
    .await;
    browser.screenshot(&artefact("private-token")).await;
    browser.type_into("#token-input", "console-token").await;
    browser
        .eval("document.getElementById('token').requestSubmit(); return true")
        .await;
    let fileid = wait_in_page(
        &browser,
        "the upload with the token",
        Duration::from_secs(15),
        "const row = document.querySelector('#uploads li'); \
         return row && row.dataset.fileid && row.querySelector('progress').value === 1 \
             ? row.dataset.fileid : null",
    )
    .await;
    let fileid = fileid.as_str().unwrap();
    // The viewer, in the same tab: no second question, the picture through a signed link.
    browser
        .goto(&format!("{}/console/view?file={fileid}", served.url))
        .await;
    let shown = wait_in_page(
        &browser,
        "the private picture",
        Duration::from_secs(15),
        "const img = document.getElementById('image'); \
         return img.complete && img.naturalWidth ? [img.naturalWidth, img.dataset.complete] : null",
    )
    .await;
    assert_eq!(shown, serde_json::json!([320, "true"]));
    assert_eq!(
        browser
            .eval("return document.getElementById('token').hidden")
            .await,
        true,
        "asked once per tab"
    );
    let page = browser
        .eval("return document.documentElement.outerHTML + JSON.stringify(sessionStorage)")
        .await;
    assert!(
        !page.as_str().unwrap().contains("console-url-secret"),
        "the URL secret reached the page"
    );
    // The refused first try (401) is the only error the page logged.
    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e.contains("401") || e.contains("403")),
        "{errors:?}"
    );
    browser.quit().await;
}
