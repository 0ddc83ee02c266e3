//! HTTP-FLV: `GET /live/{app}/{stream}.flv` streams a live stream as an endless FLV file
//! (what mpegts.js and ffplay read), starting at the last keyframe.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_http::SendTimeout;
use sluice_media::flv;

use crate::LiveState;
use crate::hub::{Feed, FeedStep, Frame, MAX_BATCH_BYTES};

fn error(status: StatusCode, message: &str) -> Response {
    sluice_http::errors::Refusal::new(status, message).into_response()
}

pub(crate) async fn play(
    State(state): State<LiveState>,
    send_timeout: Option<Extension<SendTimeout>>,
    uri: Uri,
    Path((app, file)): Path<(String, String)>,
) -> Response {
    if let Err(denied) = state.config().access.check_read(&uri) {
        return denied.into_response();
    }
    if let Some(stream) = file.strip_suffix(".m3u8") {
        return playlist(&state, &app, stream);
    }
    if let Some(name) = file.strip_suffix(".ts") {
        return segment(&state, &app, name);
    }
    let Some(stream) = file.strip_suffix(".flv") else {
        return error(
            StatusCode::NOT_FOUND,
            "live streams are .flv, .m3u8 and their .ts segments",
        );
    };
    let Some(channel) = state.hub().get(&app, stream) else {
        return error(StatusCode::NOT_FOUND, "no such live stream");
    };
    // A player that stalls is dropped as an RTMP one is, not after a download's send timeout.
    if let Some(Extension(timeout)) = send_timeout {
        timeout.set(state.config().player_stall_timeout);
    }
    let header = flv::header(channel.has_audio(), channel.has_video());
    let player = FlvPlayer {
        feed: Feed::new(channel.subscribe()),
        header: Some(header),
        waiting: VecDeque::new(),
    };
    let body = futures_util::stream::unfold(player, |mut player| async move {
        let piece = player.next_piece().await?;
        Some((Ok::<_, std::convert::Infallible>(piece), player))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// One HTTP-FLV player's position: its feed, and the frames it was given but has not yet
/// written out.
struct FlvPlayer {
    feed: Feed,
    header: Option<[u8; 13]>,
    waiting: VecDeque<Arc<Frame>>,
}

impl FlvPlayer {
    /// The next piece of the FLV body: the frames waiting, as tags, in one buffer of at most
    /// about [`MAX_BATCH_BYTES`] (one copy, written in one go). A player that stops reading
    /// thus holds one such piece, not a copy of everything it was given (a GOP at its start).
    async fn next_piece(&mut self) -> Option<Bytes> {
        if self.waiting.is_empty() {
            let FeedStep::Frames(frames) = self.feed.next(256).await else {
                return None;
            };
            self.waiting.extend(frames);
        }
        let mut out = BytesMut::new();
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
        while let Some(f) = self.waiting.pop_front() {
            let len = f.payload.len();
            out.extend_from_slice(&flv::tag_header(f.kind.type_id(), f.timestamp, len));
            out.extend_from_slice(&f.payload);
            out.extend_from_slice(&(11 + len as u32).to_be_bytes());
            if out.len() >= MAX_BATCH_BYTES {
                break;
            }
        }
        Some(out.freeze())
    }
}

/// `/live/{app}/{stream}.m3u8`. With signed URLs, each segment URI in it is signed too:
/// players (hls.js, Safari) drop the playlist's query when they fetch segments.
fn playlist(state: &LiveState, app: &str, stream: &str) -> Response {
    let Some(hls) = state.hls(app, stream) else {
        return error(StatusCode::NOT_FOUND, "no such live stream");
    };
    let secret = state.config().access.url_secret.clone();
    let expires = sluice_http::access::now_unix() + SEGMENT_LINK_TTL;
    let text = hls.playlist(|seq| {
        let name = format!("{stream}-{seq}.ts");
        match &secret {
            None => name,
            Some(s) => {
                let signed = sluice_proto::signature::sign_download(
                    s,
                    &format!("/live/{app}/{name}"),
                    expires,
                );
                signed.rsplit('/').next().unwrap_or_default().to_owned()
            }
        }
    });
    match text {
        None => error(
            StatusCode::NOT_FOUND,
            "the stream has no segment yet; try again shortly",
        ),
        Some(text) => Response::builder()
            .header(header::CONTENT_TYPE, "application/vnd.apple.mpegurl")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::from(text))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
    }
}

/// How long the segment links a signed playlist hands out stay valid.
const SEGMENT_LINK_TTL: u64 = 3600;

/// `/live/{app}/{stream}-{seq}.ts`.
fn segment(state: &LiveState, app: &str, name: &str) -> Response {
    let found = name
        .rsplit_once('-')
        .and_then(|(stream, seq)| Some((stream, seq.parse::<u64>().ok()?)))
        .and_then(|(stream, seq)| state.hls(app, stream)?.segment(seq));
    match found {
        None => error(
            StatusCode::NOT_FOUND,
            "no such segment (it may have left the window)",
        ),
        Some(data) => Response::builder()
            .header(header::CONTENT_TYPE, "video/mp2t")
            .header(header::CONTENT_LENGTH, data.len)
            .header(header::CACHE_CONTROL, "public, max-age=60")
            .body(Body::from_stream(futures_util::stream::iter(
                data.parts
                    .into_iter()
                    .map(Ok::<_, std::convert::Infallible>),
            )))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
    }
}
