//! Edges as processes in a cluster: they register with the tracker, which routes each region's
//! clients to them (by `?region=`, or by address through trusted proxies) and asks them to
//! preload; signed URLs hold at every step.

mod common;

use std::time::Duration;

use common::{Served, curl, get, header, wait_for};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "cluster-s3cret";
const URL_SECRET: &str = "url-s3cret";
const TOKEN: &str = "api-t0ken";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SLUICE_CLUSTER_SECRET", SECRET),
        ("SLUICE_URL_SECRET", URL_SECRET),
    ]
}

fn edge(dir: &std::path::Path, tracker: &Served, region: &str) -> Served {
    Served::spawn(
        &[
            "edge",
            "--origin",
            &tracker.url,
            "--http",
            "127.0.0.1:0",
            "--cache",
            dir.to_str().unwrap(),
            "--cache-size",
            "64MiB",
            "--region",
            region,
            "--tracker",
            &tracker.url,
        ],
        &env(),
    )
}

fn signed(path: &str) -> String {
    let secrets = sluice_proto::SecretSet::parse(URL_SECRET).unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    sluice_proto::signature::sign_download(&secrets, path, expires)
}

/// A cluster on DIRS[0..4]: a tracker mapping 127.0.0.0/8 to asia and 10.9.0.0/16 to eu
/// (trusting 127.0.0.1 as a proxy), a storage node, and an edge in each of eu and asia, all
/// live. The node holds a 400 kB file.
struct Regions {
    tracker: Served,
    node: Served,
    eu: Served,
    asia: Served,
    fileid: String,
    data: Vec<u8>,
    /// `/v1/route/{fileid}?expires=..&sig=..`: a signed route to the file.
    route: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Regions {
    fn start() -> Self {
        let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut tracker_env = env();
        tracker_env.push(("SLUICE_API_TOKEN", TOKEN));
        let tracker = Served::tracker(
            dirs[0].path(),
            &[
                "--region-map",
                "127.0.0.0/8=asia",
                "--region-map",
                "10.9.0.0/16=eu",
                "--trusted-proxy",
                "127.0.0.1",
            ],
            &tracker_env,
        );
        let node = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &env());
        let eu = edge(dirs[2].path(), &tracker, "eu");
        let asia = edge(dirs[3].path(), &tracker, "asia");
        wait_for("both edges live and the node active", WAIT, || {
            let out = curl(&["-sS", &format!("{}/v1/edges", tracker.url)]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let live = v["edges"]
                .as_array()
                .map_or(0, |e| e.iter().filter(|e| e["live"] == true).count());
            let cluster = curl(&["-sS", &format!("{}/v1/cluster", tracker.url)]);
            live == 2 && String::from_utf8_lossy(&cluster.stdout).contains("\"active\"")
        });

        let file = dirs[4].path().join("clip.mp4");
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let out = curl(&[
            "-sS",
            "-f",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/v1/files", node.url),
        ]);
        let fileid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["fileid"]
            .as_str()
            .unwrap()
            .to_owned();

        let route = signed(&format!("/v1/files/{fileid}")).replacen("/v1/files/", "/v1/route/", 1);
        Self {
            tracker,
            node,
            eu,
            asia,
            fileid,
            data,
            route,
            _dirs: dirs,
        }
    }
}

#[test]
fn the_tracker_refuses_an_unsigned_route() {
    let r = Regions::start();
    let Regions {
        tracker, fileid, ..
    } = &r;
    // Unsigned: refused at the tracker, as at the node and the edges.
    let (status, _, _) = get(&format!("{}/v1/route/{fileid}?region=eu", tracker.url), &[]);
    assert_eq!(status, "403");
}

#[test]
fn a_region_parameter_picks_its_edge_and_the_signature_goes_along() {
    let r = Regions::start();
    let Regions {
        tracker,
        eu,
        fileid,
        data,
        route,
        ..
    } = &r;
    // ?region= picks the edge; the signature goes along (region does not).
    let (status, head, _) = get(&format!("{}{route}&region=eu", tracker.url), &[]);
    assert_eq!(status, "302");
    let location = header(&head, "location").unwrap();
    assert!(
        location.starts_with(&format!("{}/v1/files/{fileid}?expires=", eu.url)),
        "{location}"
    );
    assert!(!location.contains("region="), "{location}");
    let (status, head, body) = get(&location, &[]);
    assert_eq!(
        (status.as_str(), header(&head, "sluice-cache").as_deref()),
        ("200", Some("miss"))
    );
    assert_eq!(&body, data);
}

#[test]
fn without_a_region_the_client_address_decides_through_trusted_proxies() {
    let r = Regions::start();
    let Regions {
        tracker,
        eu,
        asia,
        route,
        ..
    } = &r;
    // No parameter: the client's address decides. Straight from 127.0.0.1: asia.
    let (_, head, _) = get(&format!("{}{route}", tracker.url), &[]);
    assert!(header(&head, "location").unwrap().starts_with(&asia.url));
    // Through a trusted proxy (127.0.0.1) for a client in 10.9/16: eu.
    let (_, head, _) = get(
        &format!("{}{route}", tracker.url),
        &["-H", "X-Forwarded-For: 10.9.0.5"],
    );
    assert!(header(&head, "location").unwrap().starts_with(&eu.url));
}

#[test]
fn a_region_with_no_edge_is_sent_to_the_origin() {
    let r = Regions::start();
    let Regions {
        tracker,
        node,
        route,
        ..
    } = &r;
    // A region with no edge: the origin (a node of the file's group).
    let (_, head, _) = get(&format!("{}{route}&region=mars", tracker.url), &[]);
    assert!(header(&head, "location").unwrap().starts_with(&node.url));
}

#[test]
fn preload_needs_the_api_token_and_fills_the_regions_edge_before_anyone_asks() {
    let r = Regions::start();
    let Regions {
        tracker,
        asia,
        fileid,
        data,
        ..
    } = &r;
    // Preload: authenticated, then the asia edge has the file before anyone asks it.
    let body = format!("{{\"fileid\":\"{fileid}\",\"region\":\"asia\"}}");
    let preload = |token: Option<&str>| {
        let mut args = vec![
            "-sS".to_owned(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            body.clone(),
        ];
        if let Some(t) = token {
            args.push("-H".into());
            args.push(format!("Authorization: Bearer {t}"));
        }
        args.push(format!("{}/v1/preload", tracker.url));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        String::from_utf8_lossy(&curl(&args).stdout).into_owned()
    };
    assert_eq!(preload(None), "401");
    assert_eq!(preload(Some(TOKEN)), "202");
    wait_for("the asia edge preloaded the file", WAIT, || {
        let out = curl(&["-sS", &format!("{}/metrics", asia.url)]);
        String::from_utf8_lossy(&out.stdout).contains("sluice_edge_cache_files 1")
    });
    let (status, head, body) = get(
        &format!("{}{}", asia.url, signed(&format!("/v1/files/{fileid}"))),
        &[],
    );
    assert_eq!(
        (status.as_str(), header(&head, "sluice-cache").as_deref()),
        ("200", Some("hit"))
    );
    assert_eq!(&body, data);
}

#[test]
fn a_bad_edge_command_line_is_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    for args in [
        vec![
            "edge",
            "--origin",
            "nonsense",
            "--http",
            "127.0.0.1:0",
            "--cache",
            cache,
        ],
        vec![
            "edge",
            "--origin",
            "http://127.0.0.1:1",
            "--cache-size",
            "lots",
            "--cache",
            cache,
        ],
        vec![
            "edge",
            "--origin",
            "http://127.0.0.1:1",
            "--cache-size",
            "0",
            "--cache",
            cache,
        ],
    ] {
        let out = common::sluice(&args);
        assert!(!out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(
            !text.is_empty() && text.lines().count() <= 3,
            "{args:?}: {text}"
        );
    }
}
