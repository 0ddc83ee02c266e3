//! HTTP-FLV: `GET /live/{app}/{stream}.flv` streams a live stream as an endless FLV file
//! (what mpegts.js and ffplay read), starting at the last keyframe.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use sluice_media::flv;

use crate::LiveState;
use crate::hub::{Feed, FeedStep};

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(sluice_proto::ErrorBody {
            error: message.to_owned(),
        }),
    )
        .into_response()
}

pub(crate) async fn play(
    State(state): State<LiveState>,
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
    let header = flv::header(channel.has_audio(), channel.has_video());
    let feed = Feed::new(channel.subscribe());
    // Each poll sends every frame waiting, as one piece; the first also carries the header.
    let body =
        futures_util::stream::unfold((feed, Some(header)), |(mut feed, header)| async move {
            let FeedStep::Frames(frames) = feed.next(256).await else {
                return None;
            };
            let mut out = BytesMut::new();
            if let Some(h) = header {
                out.extend_from_slice(&h);
            }
            for f in frames {
                out.extend_from_slice(&f.flv_bytes());
            }
            Some((
                Ok::<_, std::convert::Infallible>(out.freeze()),
                (feed, None),
            ))
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
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
            .header(header::CACHE_CONTROL, "public, max-age=60")
            .body(Body::from(data))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
    }
}
