//! Live streaming with ffmpeg and ffprobe as the real peers: publish over RTMP, play over
//! RTMP and HTTP-FLV, one publisher per stream, players told when it ends, signed stream
//! names, and hostile RTMP input that closes only the connection that sent it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Served, curl, get_json, publish, wait_for};
use sluice_rtmp::Amf0;

const WAIT: Duration = Duration::from_secs(20);

fn serve_live(data: &std::path::Path, env: &[(&str, &str)]) -> Served {
    // A publisher may send 2 MB/s here (the generated test stream is about 40 KB/s).
    serve_live_with(
        data,
        "rtmp_max_ingest_rate = \"2MiB\"\nrtmp_idle_timeout_secs = 2\n",
        &[],
        env,
    )
}

/// `sluice serve --rtmp` on DATA/d with CONFIG as its config file and EXTRA flags.
fn serve_live_with(
    data: &std::path::Path,
    config: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Served {
    let config_file = data.join("sluice.toml");
    std::fs::write(&config_file, config).unwrap();
    let data_dir = data.join("d");
    let mut args = vec![
        "--rtmp",
        "127.0.0.1:0",
        "--config",
        config_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let served = Served::start_with_env(&data_dir, &args, env);
    assert!(served.rtmp.is_some(), "serve says where RTMP listens");
    served
}

/// ffprobe's view of a stream: `codec_name[,width,height]` per line.
fn probe(url: &str) -> Result<Vec<String>, String> {
    let out = Command::new("ffprobe")
        .args(["-hide_banner", "-v", "error", "-rw_timeout", "5000000"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("ffprobe is installed");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches(',').to_owned())
        .collect();
    lines.sort();
    Ok(lines)
}

fn streams(served: &Served) -> serde_json::Value {
    get_json(&format!("{}/v1/live/streams", served.url))
}

fn wait_live(served: &Served, name: &str) {
    wait_for("the stream to be live", WAIT, || {
        streams(served)["streams"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["stream"] == name && s["video_codec"] == "h264")
        })
    });
}

#[test]
fn ffmpeg_publishes_and_players_get_rtmp_and_http_flv() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_live(data.path(), &[]);
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/cam"), 6);
    wait_live(&served, "cam");

    let expected = vec!["aac".to_owned(), "h264,320,240".to_owned()];
    assert_eq!(
        probe(&format!("{rtmp}/live/cam")),
        Ok(expected.clone()),
        "RTMP play"
    );
    assert_eq!(
        probe(&format!("{}/live/live/cam.flv", served.url)),
        Ok(expected),
        "HTTP-FLV"
    );
    // HLS: a playlist of MPEG-TS segments cut on keyframes, which ffmpeg decodes cleanly.
    let m3u8 = format!("{}/live/live/cam.m3u8", served.url);
    wait_for("the first HLS segment", WAIT, || {
        String::from_utf8_lossy(&curl(&["-sS", &m3u8]).stdout).contains("#EXTINF")
    });
    let playlist = String::from_utf8_lossy(&curl(&["-sS", &m3u8]).stdout).into_owned();
    assert!(playlist.starts_with("#EXTM3U\n"), "{playlist}");
    assert!(playlist.contains("#EXT-X-TARGETDURATION:2\n"), "{playlist}");
    assert!(
        playlist.contains("#EXTINF:2.000,\ncam-0.ts\n"),
        "{playlist}"
    );
    assert!(!playlist.contains("ENDLIST"));
    // ffprobe lists an HLS stream's streams per program, with blank separators.
    // Web players on other sites (hls.js, mpegts.js) may read: CORS, preflight included.
    let cors = curl(&[
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Origin: https://player.example",
        &m3u8,
    ]);
    assert!(
        String::from_utf8_lossy(&cors.stdout)
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{}",
        String::from_utf8_lossy(&cors.stdout)
    );
    let preflight = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://player.example",
        "-H",
        "Access-Control-Request-Method: GET",
        &format!("{}/live/live/cam.flv", served.url),
    ]);
    assert!(String::from_utf8_lossy(&preflight.stdout).starts_with('2'));
    let mut hls = probe(&m3u8).expect("HLS plays");
    hls.retain(|l| !l.is_empty());
    hls.dedup();
    assert_eq!(
        hls,
        vec!["aac".to_owned(), "h264,320,240".to_owned()],
        "HLS"
    );
    let decoded = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(format!("{}/live/live/cam-0.ts", served.url))
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let list = streams(&served);
    let cam = &list["streams"][0];
    assert_eq!(
        (cam["app"].as_str(), cam["audio_codec"].as_str()),
        (Some("live"), Some("aac"))
    );
    assert_eq!(
        (cam["width"].as_u64(), cam["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(cam["frame_rate"].as_f64(), Some(25.0));
    assert!(cam["bitrate"].as_u64().unwrap() > 10_000, "{cam}");

    // A second publisher to the live stream is refused.
    let mut second = publish(&format!("{rtmp}/live/cam"), 2);
    let status = second.wait().unwrap();
    assert!(!status.success(), "the second publisher must be refused");

    // A player of the stream is told when it ends, and finishes.
    let mut player = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            &format!("{rtmp}/live/cam"),
        ])
        .args(["-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let published = publisher.wait().unwrap();
    assert!(published.success(), "the publisher ran to its end");
    wait_for("the player to finish after the stream ended", WAIT, || {
        player.try_wait().unwrap().is_some()
    });
    wait_for("the stream to be gone", WAIT, || {
        streams(&served)["streams"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert!(
        probe(&format!("{rtmp}/live/cam")).is_err(),
        "nothing to play now"
    );
    let ended = String::from_utf8_lossy(&curl(&["-sS", &m3u8]).stdout).into_owned();
    assert!(
        ended.ends_with("#EXT-X-ENDLIST\n"),
        "the playlist says the stream ended: {ended}"
    );
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/live/live/cam.flv", served.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
fn publish_links_and_play_links_are_different_credentials() {
    const SECRET: &str = "live-s3cret";
    const TOKEN: &str = "live-api-t0ken";
    let data = tempfile::tempdir().unwrap();
    let served = serve_live(
        data.path(),
        &[("SLUICE_URL_SECRET", SECRET), ("SLUICE_API_TOKEN", TOKEN)],
    );
    let rtmp = served.rtmp.clone().unwrap();
    let secrets = sluice_proto::SecretSet::parse(SECRET).unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let signed = |path: &str| sluice_proto::signature::sign_download(&secrets, path, expires);

    let mut unsigned = publish(&format!("{rtmp}/live/cam"), 2);
    assert!(
        !unsigned.wait().unwrap().success(),
        "unsigned publish refused"
    );
    // A viewer's play link does not publish.
    let mut viewer = publish(&format!("{rtmp}{}", signed("/live/cam")), 2);
    assert!(
        !viewer.wait().unwrap().success(),
        "a play link cannot take the stream name"
    );
    // The broadcaster's publish link, as `sluice sign --publish` makes it.
    let publish_link = common::sluice_env_ok(
        &["sign", "--publish", "/live/cam", "--ttl", "600"],
        &[("SLUICE_API_TOKEN", TOKEN)],
    );
    let mut publisher = publish(&format!("{rtmp}{publish_link}"), 5);
    wait_live(&served, "cam");
    assert!(
        probe(&format!("{rtmp}/live/cam")).is_err(),
        "unsigned play refused"
    );
    assert!(
        probe(&format!("{rtmp}{}", signed("/live/cam"))).is_ok(),
        "signed play"
    );
    let flv = format!("{}/live/live/cam.flv", served.url);
    let status = |url: &str| {
        let out = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&flv), "403");
    assert!(
        probe(&format!("{}{}", served.url, signed("/live/live/cam.flv"))).is_ok(),
        "signed HTTP-FLV"
    );
    // HLS: the playlist needs a signature, and signs the segment links it hands out.
    let m3u8 = format!("{}/live/live/cam.m3u8", served.url);
    assert_eq!(status(&m3u8), "403");
    let signed_m3u8 = format!("{}{}", served.url, signed("/live/live/cam.m3u8"));
    wait_for("the first HLS segment", WAIT, || {
        String::from_utf8_lossy(&curl(&["-sS", &signed_m3u8]).stdout).contains("#EXTINF")
    });
    let playlist = String::from_utf8_lossy(&curl(&["-sS", &signed_m3u8]).stdout).into_owned();
    let segment = playlist
        .lines()
        .find(|l| l.starts_with("cam-"))
        .unwrap()
        .to_owned();
    assert!(
        segment.contains("?expires=") && segment.contains("&sig="),
        "{segment}"
    );
    assert_eq!(
        status(&format!("{}/live/live/{segment}", served.url)),
        "200"
    );
    let bare = segment.split('?').next().unwrap();
    assert_eq!(status(&format!("{}/live/live/{bare}", served.url)), "403");
    assert!(
        probe(&signed_m3u8).is_ok(),
        "a player follows the signed segment links"
    );
    publisher.kill().unwrap();
    publisher.wait().unwrap();
}

/// A raw RTMP connection with the (simple) handshake done.
fn handshaken(rtmp: &str) -> TcpStream {
    let mut s = TcpStream::connect(rtmp.trim_start_matches("rtmp://")).unwrap();
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[7u8; 1536]);
    s.write_all(&hello).unwrap();
    let mut answer = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut answer).unwrap();
    s.write_all(&[0u8; 1536]).unwrap();
    s
}

/// An RTMP client in bytes: handshake done, then whatever the test sends. Returns whether
/// the server closed the connection within a few seconds.
fn closes_after(rtmp: &str, payload: &[u8]) -> bool {
    let mut s = handshaken(rtmp);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(payload);
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

fn chunk(csid: u8, type_id: u8, stream_id: u32, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![csid];
    out.extend_from_slice(&timestamp.to_be_bytes()[1..]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xC0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn amf_command(values: &[Amf0]) -> Vec<u8> {
    sluice_rtmp::amf0::encode_all(values)
}

/// `connect` to app `live`, then `createStream`: what precedes a publish.
fn connect_and_create_stream() -> Vec<u8> {
    let connect = amf_command(&[
        Amf0::string("connect"),
        Amf0::Number(1.0),
        Amf0::object([("app", Amf0::string("live"))]),
    ]);
    let create = amf_command(&[Amf0::string("createStream"), Amf0::Number(2.0), Amf0::Null]);
    [chunk(3, 20, 0, 0, &connect), chunk(3, 20, 0, 0, &create)].concat()
}

/// `publish` of NAME on message stream 1.
fn publish_command(name: &str) -> Vec<u8> {
    let publish = amf_command(&[
        Amf0::string("publish"),
        Amf0::Number(3.0),
        Amf0::Null,
        Amf0::string(name),
        Amf0::string("live"),
    ]);
    chunk(3, 20, 1, 0, &publish)
}

#[test]
fn hostile_rtmp_closes_that_connection_only() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_live(data.path(), &[]);
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/steady"), 20);
    wait_live(&served, "steady");

    // Garbage after the handshake (a chunk stream that continues a message never begun).
    assert!(closes_after(
        &rtmp,
        &[0x45, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    ));
    // Set Chunk Size of 0, and of more than 2^31.
    assert!(closes_after(&rtmp, &chunk(2, 1, 0, 0, &0u32.to_be_bytes())));
    assert!(closes_after(
        &rtmp,
        &chunk(2, 1, 0, 0, &0x8000_0001u32.to_be_bytes())
    ));
    // A message length that lies (claims 16 MB).
    assert!(closes_after(
        &rtmp,
        &[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0, 1, 2, 3]
    ));
    // A publisher whose timestamps jump back by a minute.
    let mut jumpy = [connect_and_create_stream(), publish_command("jumpy")].concat();
    jumpy.extend(chunk(6, 9, 1, 120_000, &[0x17, 1, 0, 0, 0, 1, 2]));
    jumpy.extend(chunk(6, 9, 1, 60_000, &[0x27, 1, 0, 0, 0, 1, 2]));
    assert!(closes_after(&rtmp, &jumpy));
    // Media on a stream that is not publishing.
    let mut rogue = connect_and_create_stream();
    rogue.extend(chunk(6, 9, 1, 0, &[0x17, 1, 0, 0, 0]));
    assert!(closes_after(&rtmp, &rogue));
    // A publisher that floods: as fast as it can, against a limit of 2 MB/s.
    let flooder = rtmp.clone();
    let flooded = std::thread::spawn(move || {
        let mut s = handshaken(&flooder);
        s.write_all(&[connect_and_create_stream(), publish_command("flood")].concat())
            .unwrap();
        let frame = chunk(6, 9, 1, 0, &vec![0x27; 64 * 1024]);
        // Back to back until the server cuts it off (or 10 s pass: the test fails).
        let started = std::time::Instant::now();
        let mut i = 0u32;
        while started.elapsed() < Duration::from_secs(10) {
            let mut f = frame.clone();
            f[1..4].copy_from_slice(&(i * 40).to_be_bytes()[1..]);
            if s.write_all(&f).is_err() {
                return Some(started.elapsed());
            }
            i += 1;
        }
        None
    });
    let cut_after = flooded.join().unwrap();
    assert!(cut_after.is_some(), "the flooding publisher was cut off");

    // A publisher that goes silent without closing is taken as gone after the idle timeout.
    let mut silent = handshaken(&rtmp);
    silent
        .write_all(&[connect_and_create_stream(), publish_command("quiet")].concat())
        .unwrap();
    let listed = |name: &str| {
        streams(&served)["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["stream"] == name))
    };
    wait_for("the silent publisher's stream to appear", WAIT, || {
        listed("quiet")
    });
    wait_for("the silent publisher to be taken as gone", WAIT, || {
        !listed("quiet")
    });
    drop(silent);

    // The steady stream and the server were never disturbed.
    assert_eq!(
        probe(&format!("{rtmp}/live/steady")),
        Ok(vec!["aac".to_owned(), "h264,320,240".to_owned()])
    );
    let list = streams(&served);
    assert_eq!(list["streams"].as_array().unwrap().len(), 1, "{list}");
    publisher.kill().unwrap();
    publisher.wait().unwrap();
}

#[test]
fn bench_live_reports_players_frames_and_latency() {
    let data = tempfile::tempdir().unwrap();
    let served = serve_live(data.path(), &[]);
    let rtmp = served.rtmp.clone().unwrap();
    for (protocol, extra) in [
        ("rtmp", vec![]),
        (
            "flv",
            vec![
                "--flv".to_owned(),
                format!("{}/live/live/b-flv.flv", served.url),
            ],
        ),
    ] {
        let stream = format!("{rtmp}/live/b-{protocol}");
        let mut args = vec![
            "bench",
            "live",
            "--rtmp",
            &stream,
            "--players",
            "5",
            "--duration",
            "2",
            "--protocol",
            protocol,
            "--json",
        ];
        args.extend(extra.iter().map(String::as_str));
        let out = common::sluice_ok(&args);
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["playing"], 5, "{report}");
        assert!(
            report["frames_per_player"].as_f64().unwrap() > 10.0,
            "{report}"
        );
        let p50 = report["latency_p50_ms"].as_f64().unwrap();
        assert!(p50 > 0.0, "{report}");
    }
}

#[test]
fn a_long_recording_is_stored_in_parts_each_starting_on_a_keyframe() {
    // 100 frames a part: about a second and a half of the test stream (25 video and ~43
    // audio frames a second), so its sample table never grows past that.
    let data = tempfile::tempdir().unwrap();
    let served = serve_live_with(data.path(), "record_max_frames = 100\n", &["--record"], &[]);
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/parts"), 5);
    assert!(publisher.wait().unwrap().success());
    let recordings_url = format!("{}/v1/live/recordings", served.url);
    let mut list = Vec::new();
    // Parts are stored as they fill, the last at unpublish: wait until nothing more comes.
    let mut stable_since = std::time::Instant::now();
    wait_for("every part to be stored", WAIT, || {
        let now: Vec<serde_json::Value> =
            serde_json::from_slice(&curl(&["-sS", &recordings_url]).stdout).unwrap_or_default();
        if now.len() != list.len() {
            list = now;
            stable_since = std::time::Instant::now();
        }
        list.len() >= 3 && stable_since.elapsed() > Duration::from_secs(2)
    });
    // Listed in order, numbered from 1.
    let parts: Vec<u64> = list.iter().map(|r| r["part"].as_u64().unwrap()).collect();
    assert_eq!(
        parts,
        (1..=list.len() as u64).collect::<Vec<_>>(),
        "{list:?}"
    );
    // Parts meet at keyframes: together they hold the whole publish.
    let total: f64 = list.iter().map(|r| r["duration"].as_f64().unwrap()).sum();
    assert!((4.5..=5.5).contains(&total), "{list:?}");
    for rec in &list {
        let url = format!(
            "{}/v1/files/{}",
            served.url,
            rec["fileid"].as_str().unwrap()
        );
        // Each part decodes from its first frame: it begins on a keyframe, with the codec
        // configuration carried over.
        assert_recording_decodes(&url);
    }
}

#[test]
fn recordings_are_stored_as_mp4_with_moov_first() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::spawn(
        &[
            "serve",
            "--data",
            data.path().to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--rtmp",
            "127.0.0.1:0",
            "--record",
        ],
        &[],
    );
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/rec"), 4);
    assert!(publisher.wait().unwrap().success());
    let recordings_url = format!("{}/v1/live/recordings", served.url);
    let mut list = serde_json::Value::Null;
    wait_for("the recording to be stored", WAIT, || {
        list = serde_json::from_slice(&curl(&["-sS", &recordings_url]).stdout).unwrap_or_default();
        list.as_array().is_some_and(|l| !l.is_empty())
    });
    let rec = &list[0];
    assert_eq!(
        (rec["app"].as_str(), rec["stream"].as_str()),
        (Some("live"), Some("rec"))
    );
    let duration = rec["duration"].as_f64().unwrap();
    assert!((3.0..=5.0).contains(&duration), "{rec}");
    let url = format!(
        "{}/v1/files/{}",
        served.url,
        rec["fileid"].as_str().unwrap()
    );
    assert_recording_decodes(&url);
    // moov before mdat: a player can start (and seek) after the first bytes.
    let head = curl(&["-sS", "-r", "0-65535", &url]).stdout;
    let moov = head
        .windows(4)
        .position(|w| w == b"moov")
        .expect("moov in the first 64 KiB");
    let mdat = head
        .windows(4)
        .position(|w| w == b"mdat")
        .expect("mdat after it");
    assert!(moov < mdat);
}

/// A recording of the test stream: ffprobe sees its AAC and 320x240 H.264 tracks, and ffmpeg
/// decodes every frame without a complaint.
fn assert_recording_decodes(url: &str) {
    assert_eq!(
        probe(url),
        Ok(vec!["aac".to_owned(), "h264,320,240".to_owned()]),
        "{url}"
    );
    let decoded = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i", url, "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{url}: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
}

#[test]
fn the_live_role_in_a_cluster_records_through_the_trackers() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("SLUICE_CLUSTER_SECRET", "live-cluster-s3cret")];
    let tracker = Served::tracker(dirs[0].path(), &[], &env);
    let _node = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &env);
    wait_for("the node to be active", WAIT, || {
        String::from_utf8_lossy(&curl(&["-sS", &format!("{}/v1/cluster", tracker.url)]).stdout)
            .contains("\"active\"")
    });
    let live = Served::spawn(
        &[
            "live",
            "--rtmp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--tracker",
            &tracker.url,
            "--record",
            "--data",
            dirs[2].path().to_str().unwrap(),
        ],
        &env,
    );
    let rtmp = live
        .rtmp
        .clone()
        .expect("sluice live says where RTMP listens");
    let mut publisher = publish(&format!("{rtmp}/live/talk"), 3);
    assert!(publisher.wait().unwrap().success());
    let mut list = serde_json::Value::Null;
    wait_for("the recording to be stored", WAIT, || {
        list = serde_json::from_slice(
            &curl(&["-sS", &format!("{}/v1/live/recordings", live.url)]).stdout,
        )
        .unwrap_or_default();
        list.as_array().is_some_and(|l| !l.is_empty())
    });
    let fileid = list[0]["fileid"].as_str().unwrap().to_owned();
    // Readable through the tracker like any file of the cluster.
    let out = curl(&[
        "-sS",
        "-L",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &format!("{}/v1/files/{fileid}", tracker.url),
    ]);
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.starts_with("200 "), "{answer}");
    assert_eq!(
        answer[4..].parse::<u64>().unwrap(),
        list[0]["size"].as_u64().unwrap()
    );
}

/// Resident and peak resident memory of a process, in bytes (from /proc).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn one_keyframe_and_100_mb_of_p_frames_stay_within_64_mib() {
    let data = tempfile::tempdir().unwrap();
    // Every buffer limit at its default; only the flood limit is raised, so the 100 MB go in
    // a few seconds.
    let served = serve_live_with(
        data.path(),
        "rtmp_max_ingest_rate = \"1GiB\"\nrtmp_idle_timeout_secs = 5\n",
        &["--record"],
        &[],
    );
    let rtmp = served.rtmp.clone().unwrap();
    let pid = served.child.id();
    let (baseline, _) = memory(pid);

    let mut publisher = handshaken(&rtmp);
    publisher
        .write_all(&[connect_and_create_stream(), publish_command("flood")].concat())
        .unwrap();
    // The stream's H.264 configuration, then its one keyframe.
    let avc = [
        0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 1, 1, 0, 1, 0x68,
    ];
    let frame = |key: bool, len: usize| {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.push(if key { 0x65 } else { 0x41 });
        p.extend(std::iter::repeat_n(0x5A, len - 1));
        p
    };
    publisher.write_all(&chunk(6, 9, 1, 0, &avc)).unwrap();
    publisher
        .write_all(&chunk(6, 9, 1, 0, &frame(true, 60_000)))
        .unwrap();
    wait_live(&served, "flood");
    // Players that never read: they hold whatever the server lets them.
    let mut flv = TcpStream::connect(served.url.trim_start_matches("http://")).unwrap();
    flv.write_all(b"GET /live/live/flood.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rtmp_player = handshaken(&rtmp);
    let play = amf_command(&[
        Amf0::string("play"),
        Amf0::Number(3.0),
        Amf0::Null,
        Amf0::string("flood"),
    ]);
    rtmp_player
        .write_all(&[connect_and_create_stream(), chunk(3, 20, 1, 0, &play)].concat())
        .unwrap();
    // 100 MB of P-frames, 64 KB each, their timestamps within two seconds: no keyframe and
    // no target duration ever ends the segment being built.
    let p_frame = chunk(6, 9, 1, 0, &frame(false, 64_000));
    let mut peak = 0;
    for i in 0..1600u32 {
        let mut f = p_frame.clone();
        f[1..4].copy_from_slice(&(i).to_be_bytes()[1..]);
        publisher.write_all(&f).unwrap();
        if i % 100 == 0 {
            peak = peak.max(memory(pid).0);
        }
    }
    drop(publisher);
    wait_for("the publisher to be taken as gone", WAIT, || {
        streams(&served)["streams"]
            .as_array()
            .is_some_and(|s| s.is_empty())
    });
    let (_, high_water) = memory(pid);
    let grew = high_water.max(peak).saturating_sub(baseline);
    eprintln!(
        "server memory: baseline {} MiB, peak while publishing {} MiB, high water {} MiB, grew {} MiB",
        baseline >> 20,
        peak >> 20,
        high_water >> 20,
        grew >> 20
    );
    assert!(
        grew < 64 << 20,
        "the server grew by {} MiB for one stream",
        grew >> 20
    );
    drop((flv, rtmp_player));
    // HLS went on, in segments of bounded size.
    let playlist = String::from_utf8(
        curl(&["-sS", "-f", &format!("{}/live/live/flood.m3u8", served.url)]).stdout,
    )
    .unwrap();
    let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(segments.len() >= 3, "{playlist}");
    for segment in segments {
        let out = curl(&[
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{}/live/live/{segment}", served.url),
        ]);
        let size: u64 = String::from_utf8_lossy(&out.stdout).parse().unwrap();
        assert!(size <= (4 << 20) + 70_000, "{segment}: {size} bytes");
    }
}

/// SIGTERM while a stream is published with a player attached: the stream ends at once (the
/// player does not hold shutdown for the grace), its recording is stored through the still
/// serving HTTP side and listed, and the data directory is closed cleanly.
#[test]
fn a_recording_in_progress_at_shutdown_is_stored_and_listed() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let args = [
        "serve",
        "--data",
        dir,
        "--http",
        "127.0.0.1:0",
        "--rtmp",
        "127.0.0.1:0",
        "--record",
    ];
    let mut served = Served::spawn(&args, &[]);
    let rtmp = served.rtmp.clone().unwrap();
    let mut publisher = publish(&format!("{rtmp}/live/cut"), 60);
    wait_live(&served, "cut");
    let mut player = Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(format!("{}/live/live/cut.flv", served.url))
        .spawn()
        .unwrap();
    wait_for("the player to attach", WAIT, || {
        streams(&served)["streams"][0]["players"].as_u64() == Some(1)
    });
    // A few seconds of stream, so the recording has frames.
    wait_for("some seconds of stream", WAIT, || {
        streams(&served)["streams"][0]["uptime_secs"].as_u64() >= Some(2)
    });
    served.signal("TERM");
    let status = served.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "{status:?}");
    let log = served.drain_log().join("\n");
    assert!(log.contains("recording stored"), "{log}");
    let _ = publisher.kill();
    let _ = publisher.wait();
    let _ = player.wait();
    assert!(data.path().join("CLEAN").exists(), "closed cleanly");

    let served = Served::spawn(&args, &[]);
    let list = get_json(&format!("{}/v1/live/recordings", served.url));
    let rec = &list[0];
    assert_eq!(rec["stream"], "cut", "{list}");
    assert!(rec["duration"].as_f64().unwrap() >= 1.5, "{rec}");
    assert_recording_decodes(&format!(
        "{}/v1/files/{}",
        served.url,
        rec["fileid"].as_str().unwrap()
    ));
}
