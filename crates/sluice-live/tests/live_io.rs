//! The live role over real sockets with byte-level clients (what ffmpeg in Debian 12 cannot
//! do): Enhanced RTMP codecs passed through to RTMP and HTTP-FLV players, and a stalled player
//! that neither slows the publisher nor keeps the others from getting every frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_live::{LiveConfig, LiveState};
use sluice_media::flv;
use sluice_rtmp::amf0::Amf0;
use sluice_rtmp::{ChunkDecoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    rtmp: String,
    http: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Server {
    start_with(LiveConfig::default()).await
}

async fn start_with(config: LiveConfig) -> Server {
    // This file tests fan-out, not flood limits: the publisher may send as fast as it likes.
    let state = LiveState::new(LiveConfig {
        max_ingest_rate: u64::MAX,
        ..config
    });
    let rtmp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (rtmp_addr, http_addr) = (rtmp.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    sluice_live::start(http, rtmp, state, Default::default(), async move {
        let _ = stopped.await;
    })
    .unwrap();
    Server {
        rtmp: rtmp_addr.to_string(),
        http: format!("http://{http_addr}"),
        _stop: stop,
    }
}

/// A byte-level RTMP client.
struct Client {
    tcp: TcpStream,
    decoder: ChunkDecoder,
}

impl Client {
    async fn connect(addr: &str, app: &str) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = vec![3u8];
        hello.extend_from_slice(&[5u8; 1536]);
        tcp.write_all(&hello).await.unwrap();
        let mut answer = vec![0u8; 1 + 2 * 1536];
        tcp.read_exact(&mut answer).await.unwrap();
        tcp.write_all(&[0u8; 1536]).await.unwrap();
        let mut c = Self {
            tcp,
            decoder: ChunkDecoder::new(16 << 20),
        };
        c.send(Message::command(
            0,
            &[
                Amf0::string("connect"),
                Amf0::Number(1.0),
                Amf0::object([("app", Amf0::string(app))]),
            ],
        ))
        .await;
        c.send(Message::command(
            0,
            &[Amf0::string("createStream"), Amf0::Number(2.0), Amf0::Null],
        ))
        .await;
        c
    }

    async fn send(&mut self, message: Message) {
        let mut out = BytesMut::new();
        sluice_rtmp::chunk::encode(&message, 128, &mut out);
        self.tcp.write_all(&out).await.unwrap();
    }

    async fn command(&mut self, name: &str, arg: &str) {
        self.send(Message::command(
            1,
            &[
                Amf0::string(name),
                Amf0::Number(3.0),
                Amf0::Null,
                Amf0::string(arg),
            ],
        ))
        .await;
    }

    async fn video(&mut self, ts: u32, payload: &[u8]) {
        self.send(Message {
            csid: 6,
            timestamp: ts,
            type_id: 9,
            stream_id: 1,
            payload: Bytes::copy_from_slice(payload),
        })
        .await;
    }

    /// Messages received until `until` returns true for one (or the deadline).
    async fn read_until(&mut self, mut until: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(m) = self.decoder.next_message().unwrap() {
                let done = until(&m);
                got.push(m);
                if done {
                    return got;
                }
            }
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf))
                .await
                .expect("the server answers in time")
                .unwrap();
            assert!(n > 0, "connection closed early");
            self.decoder.push(&buf[..n]);
        }
    }
}

fn status(m: &Message) -> Option<String> {
    let c = sluice_rtmp::Command::parse(m).ok()?;
    (c.name == "onStatus").then(|| c.args.first()?.get("code")?.as_str().map(str::to_owned))?
}

/// Enhanced RTMP video for `fourcc`: a sequence start, then `n` coded frames (keyframe every
/// tenth).
fn enhanced_frames(fourcc: &[u8; 4], n: u32) -> Vec<Vec<u8>> {
    let mut out = vec![[&[0x90u8][..], fourcc, &[1, 2, 3, 4]].concat()];
    for i in 0..n {
        let b0 = if i % 10 == 0 { 0x91 } else { 0xA1 };
        out.push([&[b0][..], fourcc, &[0, 0, 0], &i.to_be_bytes(), &[0xEE; 50]].concat());
    }
    out
}

#[tokio::test]
async fn enhanced_rtmp_hevc_av1_vp9_pass_through_to_rtmp_and_http_flv() {
    let server = start().await;
    for (fourcc, codec) in [(b"hvc1", "hevc"), (b"av01", "av1"), (b"vp09", "vp9")] {
        let name = format!("cam-{codec}");
        let mut publisher = Client::connect(&server.rtmp, "live").await;
        publisher.command("publish", &name).await;
        let started = publisher
            .read_until(|m| status(m).as_deref() == Some("NetStream.Publish.Start"))
            .await;
        assert!(!started.is_empty());
        let frames = enhanced_frames(fourcc, 25);
        for (i, f) in frames[..11].iter().enumerate() {
            publisher.video(i as u32 * 40, f).await;
        }
        // Players join now: they start at the last keyframe (coded frame 0) after the
        // sequence start.
        // The next keyframe (coded frame 10) is sent only once both players are attached,
        // or they would start there.
        let mut player = Client::connect(&server.rtmp, "live").await;
        player.command("play", &name).await;
        let mut got = player
            .read_until(|m| status(m).as_deref() == Some("NetStream.Play.Start"))
            .await;
        let flv_url = format!("{}/live/live/{name}.flv", server.http);
        let mut flv_response = reqwest::get(&flv_url).await.unwrap();
        assert_eq!(flv_response.headers()["content-type"], "video/x-flv");
        for (i, f) in frames[11..].iter().enumerate() {
            publisher.video((i as u32 + 11) * 40, f).await;
        }
        let last = frames.last().unwrap().clone();
        got.extend(
            player
                .read_until(|m| m.type_id == 9 && m.payload[..] == last[..])
                .await,
        );
        let video: Vec<&[u8]> = got
            .iter()
            .filter(|m| m.type_id == 9)
            .map(|m| &m.payload[..])
            .collect();
        assert_eq!(video[0], &frames[0][..], "{codec}: sequence start first");
        assert_eq!(
            &video[1..],
            frames[1..].iter().map(|f| &f[..]).collect::<Vec<_>>(),
            "{codec}: bytes untouched"
        );

        let mut body = Vec::new();
        while flv::read_tags(&body).map_or(true, |t| {
            t.iter().filter(|t| t.tag_type == 9).count() < video.len()
        }) {
            body.extend_from_slice(&flv_response.chunk().await.unwrap().expect("more FLV"));
        }
        let tags = flv::read_tags(&body).unwrap();
        let flv_video: Vec<&[u8]> = tags
            .iter()
            .filter(|t| t.tag_type == 9)
            .map(|t| &t.data[..])
            .collect();
        assert_eq!(
            flv_video, video,
            "{codec}: HTTP-FLV carries the same frames"
        );
        assert_eq!(flv::video_info(flv_video[1]).unwrap().codec.name(), codec);

        let list: serde_json::Value = reqwest::get(format!("{}/v1/live/streams", server.http))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entry = list["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == name.as_str())
            .unwrap()
            .clone();
        assert_eq!(entry["video_codec"], codec);
        assert_eq!(entry["players"], 2);
    }
}

/// A publisher of `live/NAME` whose publish was accepted and which sent a first keyframe.
async fn publishing_with_a_keyframe(server: &Server, name: &str) -> Client {
    let mut publisher = Client::connect(&server.rtmp, "live").await;
    publisher.command("publish", name).await;
    publisher
        .read_until(|m| status(m).as_deref() == Some("NetStream.Publish.Start"))
        .await;
    publisher.video(0, &[0x17, 0, 0, 0, 0, 1, 2, 3]).await;
    publisher
}

/// An HTTP-FLV request for `live/NAME` whose answer nobody reads (yet).
async fn stalled_flv_player(server: &Server, name: &str) -> TcpStream {
    let mut player = TcpStream::connect(server.http.trim_start_matches("http://"))
        .await
        .unwrap();
    let request =
        format!("GET /live/live/{name}.flv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    player.write_all(request.as_bytes()).await.unwrap();
    player
}

/// How many players the stream has, as `/v1/live/streams` says.
async fn players(server: &Server, stream: &str) -> u64 {
    let list: serde_json::Value = reqwest::get(format!("{}/v1/live/streams", server.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream)
        .map_or(0, |s| s["players"].as_u64().unwrap())
}

#[tokio::test]
async fn an_http_flv_player_that_takes_nothing_for_the_stall_timeout_is_dropped() {
    let server = start_with(LiveConfig {
        player_stall_timeout: Duration::from_secs(1),
        ..LiveConfig::default()
    })
    .await;
    let mut publisher = publishing_with_a_keyframe(&server, "stall").await;
    // A player that asks and then never reads (nor closes).
    let stalled = stalled_flv_player(&server, "stall").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while players(&server, "stall").await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the player never joined"
        );
        tokio::task::yield_now().await;
    }
    // The stream goes on (enough to fill the socket's buffers many times over) until the
    // server gives the player up: within seconds, not the download send timeout (60 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut i = 1u32;
    while players(&server, "stall").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a stalled HTTP-FLV player is still counted"
        );
        for _ in 0..20 {
            let mut f = vec![if i % 50 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
            f.resize(50_000, 0xAB);
            publisher.video(i * 40, &f).await;
            i += 1;
        }
    }
    drop(stalled);
}

#[tokio::test]
async fn a_stalled_player_neither_slows_the_publisher_nor_the_others() {
    // The publisher sends 40 MB as fast as TCP takes them, far beyond real time: the backlog
    // is sized so a reading player (in this debug build, on a shared CPU) is never more than
    // it behind, and what is tested is that the stalled one costs the others nothing.
    let server = start_with(LiveConfig {
        stream_limits: sluice_live::StreamLimits {
            backlog: 48 << 20,
            ..Default::default()
        },
        // It stalls while the whole 40 MB are sent (a debug build on a shared CPU): longer
        // than a player is let stall by default.
        player_stall_timeout: Duration::from_secs(120),
        ..LiveConfig::default()
    })
    .await;
    let mut publisher = publishing_with_a_keyframe(&server, "busy").await;
    // A player that asks and then never reads.
    let mut stalled = stalled_flv_player(&server, "busy").await;
    let mut good = reqwest::get(format!("{}/live/live/busy.flv", server.http))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut body = Vec::new();
        loop {
            match good.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => return body,
            }
            if body.len() > 64 << 20 {
                return body;
            }
        }
    });
    // 40 MB in 2000 frames of 20 KB, a keyframe every 50, as fast as TCP takes them.
    let started = std::time::Instant::now();
    for i in 1..=2000u32 {
        let mut f = vec![if i % 50 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        f.extend_from_slice(&i.to_be_bytes());
        f.resize(20_000, 0xAB);
        publisher.video(i * 40, &f).await;
    }
    let publish_time = started.elapsed();
    assert!(
        publish_time < Duration::from_secs(20),
        "the publisher was not held back: {publish_time:?}"
    );
    // The stalled player starts reading at last; once it is draining, the stream goes on.
    let drained = Arc::new(AtomicUsize::new(0));
    let counter = drained.clone();
    let stalled_reader = tokio::spawn(async move {
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stalled.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            counter.store(raw.len(), Ordering::SeqCst);
        }
        raw
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while drained.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled player never read"
        );
        tokio::task::yield_now().await;
    }
    for i in 2001..=2150u32 {
        let mut f = vec![if i % 50 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        f.extend_from_slice(&i.to_be_bytes());
        f.resize(2_000, 0xAB);
        publisher.video(i * 40, &f).await;
    }
    // The publisher leaves; the good player's body ends with every frame.
    drop(publisher);
    let body = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    let tags = flv::read_tags(&body).unwrap();
    let numbers = |tags: &[flv::Tag]| -> Vec<u32> {
        tags.iter()
            .filter(|t| t.tag_type == 9 && t.data.len() >= 9)
            .map(|t| u32::from_be_bytes(t.data[5..9].try_into().unwrap()))
            .collect()
    };
    let all = numbers(&tags);
    assert_eq!(
        all.last(),
        Some(&2150),
        "the reading player got the last frame"
    );
    assert_eq!(
        all,
        (1..=2150).collect::<Vec<u32>>(),
        "and every frame before it, in order"
    );

    // The stalled player got a valid FLV that skipped ahead, and resumed on a keyframe.
    let raw = stalled_reader.await.unwrap();
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = dechunk(&raw[body_start..]);
    let got = numbers(&flv::read_tags(&body).unwrap());
    assert!(
        got.len() < all.len(),
        "it did not get everything: {}",
        got.len()
    );
    let gap = got
        .windows(2)
        .position(|w| w[1] != w[0] + 1)
        .expect("a skip");
    assert_eq!(
        got[gap + 1] % 50,
        0,
        "after a skip comes a keyframe: {}",
        got[gap + 1]
    );
}

/// The body of an HTTP/1.1 chunked response (as far as it goes).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let Ok(size) =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap_or("0"), 16)
        else {
            return out;
        };
        if size == 0 || data.len() < line_end + 2 + size {
            out.extend_from_slice(
                &data[(line_end + 2).min(data.len())..data.len().min(line_end + 2 + size)],
            );
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

/// A hook endpoint: allows streams named `ok*`, refuses others, and never answers for `slow*`.
async fn hook_server() -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
            let stream = v["stream"].as_str().unwrap_or_default().to_owned();
            if stream.starts_with("slow") {
                std::future::pending::<()>().await;
            }
            if stream.starts_with("ok") && v["app"] == "live" && v["client"] == "127.0.0.1" {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::FORBIDDEN
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn publish_and_play_hooks_decide_with_a_timeout_that_stalls_no_one_else() {
    let hook = hook_server().await;
    let server = start_with(LiveConfig {
        on_publish: Some(hook.clone()),
        on_play: Some(hook),
        hook_timeout: Duration::from_secs(2),
        ..LiveConfig::default()
    })
    .await;
    let publish = |name: &'static str| {
        let addr = server.rtmp.clone();
        async move {
            let mut c = Client::connect(&addr, "live").await;
            c.command("publish", name).await;
            let got = c.read_until(|m| status(m).is_some()).await;
            (c, status(got.last().unwrap()).unwrap())
        }
    };
    // A slow hook for one stream, and meanwhile an allowed one goes through at once.
    let slow = tokio::spawn(publish("slow-cam"));
    let started = std::time::Instant::now();
    let (_ok, code) = publish("ok-cam").await;
    assert_eq!(code, "NetStream.Publish.Start");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not held up by the slow hook"
    );
    let (_no, code) = publish("nope").await;
    assert_eq!(code, "NetStream.Publish.Denied");
    let (_slow, code) = slow.await.unwrap();
    assert_eq!(
        code, "NetStream.Publish.Denied",
        "a hook that does not answer refuses"
    );
    // Play asks too.
    let mut player = Client::connect(&server.rtmp, "live").await;
    player.command("play", "ok-cam").await;
    let got = player.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        status(got.last().unwrap()).as_deref(),
        Some("NetStream.Play.Reset")
    );
}

/// What a publish of `name` gets back (its onStatus code), and the client still connected.
async fn try_publish(server: &Server, name: &str) -> (Client, String) {
    let mut c = Client::connect(&server.rtmp, "live").await;
    c.command("publish", name).await;
    let got = c.read_until(|m| status(m).is_some()).await;
    let code = got.last().and_then(status).unwrap_or_default();
    (c, code)
}

fn live_streams(state: &LiveState) -> Vec<String> {
    state.hub().list().into_iter().map(|s| s.stream).collect()
}

#[tokio::test]
async fn a_play_link_never_opens_a_publish() {
    let (url_secret, tokens) = (
        sluice_proto::SecretSet::parse("url-key").unwrap(),
        sluice_proto::SecretSet::parse("api-token").unwrap(),
    );
    let expires = sluice_http::access::now_unix() + 600;
    let query = |link: String| format!("cam?{}", link.split_once('?').unwrap().1);
    let play_link = query(sluice_proto::signature::sign_download(
        &url_secret,
        "/live/cam",
        expires,
    ));
    let publish_link = query(sluice_proto::signature::sign_publish(
        &tokens,
        "/live/cam",
        expires,
    ));
    // Both secrets: publishing needs the API token's publish link; a viewer's link is refused.
    let server = start_with(LiveConfig {
        access: sluice_http::AccessPolicy {
            url_secret: Some(url_secret.clone()),
            api_tokens: Some(tokens.clone()),
        },
        ..LiveConfig::default()
    })
    .await;
    for refused in ["cam", play_link.as_str()] {
        let (_c, code) = try_publish(&server, refused).await;
        assert_eq!(code, "NetStream.Publish.Denied", "{refused}");
    }
    let (_publisher, code) = try_publish(&server, &publish_link).await;
    assert_eq!(code, "NetStream.Publish.Start");
    // The recordings list names file ids: token holders only.
    let recordings = format!("{}/v1/live/recordings", server.http);
    let c = reqwest::Client::new();
    assert_eq!(c.get(&recordings).send().await.unwrap().status(), 401);
    let with_token = c.get(&recordings).bearer_auth("api-token").send();
    assert_eq!(with_token.await.unwrap().status(), 200);
    let mut player = Client::connect(&server.rtmp, "live").await;
    player.command("play", &play_link).await;
    let got = player.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        got.last().and_then(status).as_deref(),
        Some("NetStream.Play.Reset")
    );
    let mut player = Client::connect(&server.rtmp, "live").await;
    player.command("play", &publish_link).await;
    let got = player.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        got.last().and_then(status).as_deref(),
        Some("NetStream.Play.Failed"),
        "a publish link is no play link either"
    );

    // Only a URL secret: nothing publishes, unless on_publish admits it.
    let server = start_with(LiveConfig {
        access: sluice_http::AccessPolicy {
            url_secret: Some(url_secret.clone()),
            api_tokens: None,
        },
        ..LiveConfig::default()
    })
    .await;
    let (_c, code) = try_publish(&server, &play_link).await;
    assert_eq!(code, "NetStream.Publish.Denied");
    let server = start_with(LiveConfig {
        access: sluice_http::AccessPolicy {
            url_secret: Some(url_secret),
            api_tokens: None,
        },
        on_publish: Some(hook_server().await),
        ..LiveConfig::default()
    })
    .await;
    let (_c, code) = try_publish(&server, "nope").await;
    assert_eq!(code, "NetStream.Publish.Denied");
    let (_c, code) = try_publish(&server, "ok-cam").await;
    assert_eq!(code, "NetStream.Publish.Start");
}

#[tokio::test]
async fn a_second_publish_on_one_stream_id_is_refused_and_names_are_freed() {
    let state = LiveState::new(LiveConfig {
        max_ingest_rate: u64::MAX,
        ..LiveConfig::default()
    });
    let rtmp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = rtmp.local_addr().unwrap().to_string();
    sluice_live::start(
        http,
        rtmp,
        state.clone(),
        Default::default(),
        std::future::pending(),
    )
    .unwrap();
    let server = Server {
        rtmp: addr,
        http: String::new(),
        _stop: tokio::sync::oneshot::channel().0,
    };
    let (mut publisher, code) = try_publish(&server, "first").await;
    assert_eq!(code, "NetStream.Publish.Start");
    // The same stream id again, under another name.
    publisher.command("publish", "second").await;
    let got = publisher.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        got.last().and_then(status).as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(live_streams(&state), vec!["first"]);
    // Nor may it play there (a play would hide the publish from closeStream).
    publisher.command("play", "first").await;
    let got = publisher.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        got.last().and_then(status).as_deref(),
        Some("NetStream.Play.Failed")
    );
    // closeStream ends the publish and frees the name; the stream id may publish again.
    publisher
        .send(Message::command(
            1,
            &[Amf0::string("closeStream"), Amf0::Number(0.0), Amf0::Null],
        ))
        .await;
    wait_until_free(&state).await;
    publisher.command("publish", "again").await;
    let got = publisher.read_until(|m| status(m).is_some()).await;
    assert_eq!(
        got.last().and_then(status).as_deref(),
        Some("NetStream.Publish.Start")
    );
    assert_eq!(live_streams(&state), vec!["again"]);
    // The publisher goes (its socket closed): its name is free at once.
    drop(publisher);
    wait_until_free(&state).await;
    let (_again, code) = try_publish(&server, "first").await;
    assert_eq!(code, "NetStream.Publish.Start", "the name was freed");
    let (_other, code) = try_publish(&server, "second").await;
    assert_eq!(code, "NetStream.Publish.Start");
}

/// How often a test re-checks a condition it waits for.
const POLL: Duration = Duration::from_millis(20);

async fn wait_until_free(state: &LiveState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !live_streams(state).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the name was never freed"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn the_live_role_answers_health_metrics_and_json_404s_like_every_role() {
    let server = start().await;
    let (_publisher, code) = try_publish(&server, "cam-metrics").await;
    assert_eq!(code, "NetStream.Publish.Start");
    let missing = reqwest::get(format!("{}/nowhere", server.http))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "no such endpoint");
    let health = reqwest::get(format!("{}/healthz", server.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "sluice_live_streams 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_http_requests_total{") && metrics.contains("status=\"404\""),
        "{metrics}"
    );
}
