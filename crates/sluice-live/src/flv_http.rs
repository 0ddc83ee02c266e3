//! HTTP-FLV: `GET /live/{app}/{stream}.flv` streams a live stream as an endless FLV file
//! (what mpegts.js and ffplay read), starting at the last keyframe.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use sluice_media::flv;
use tokio::sync::broadcast;

use crate::LiveState;
use crate::hub::{Frame, Subscription};

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
    let has_video = channel.has_video();
    let header = Bytes::copy_from_slice(&flv::header(channel.has_audio(), has_video));
    let subscription = channel.subscribe();
    let body = futures_util::stream::unfold(
        (subscription, Some(header), false, has_video),
        |(mut sub, header, mut skipping, has_video)| async move {
            if let Some(h) = header {
                let mut out = BytesMut::from(&h[..]);
                for f in std::mem::take(&mut sub.start) {
                    out.extend_from_slice(&f.flv_bytes());
                }
                return Some((
                    Ok::<_, std::convert::Infallible>(out.freeze()),
                    (sub, None, skipping, has_video),
                ));
            }
            let frames = next_frames(&mut sub, &mut skipping, has_video).await?;
            let mut out = BytesMut::new();
            for f in frames {
                out.extend_from_slice(&f.flv_bytes());
            }
            Some((Ok(out.freeze()), (sub, None, skipping, has_video)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// The next frames for an HTTP-FLV player; `None` when the stream ended or the player is too
/// far behind to catch up.
async fn next_frames(
    sub: &mut Subscription,
    skipping: &mut bool,
    has_video: bool,
) -> Option<Vec<Arc<Frame>>> {
    let mut lags = 0;
    loop {
        // Batches before the end: a stream's last frames reach every player.
        let first = tokio::select! {
            biased;
            batch = sub.live.recv() => batch,
            () = crate::hub::ended(&mut sub.ended) => return None,
        };
        let mut frames = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Ok(batch) => {
                    for frame in batch.iter() {
                        if frame.seq <= sub.start_seq {
                            continue;
                        }
                        if *skipping && (frame.keyframe || !has_video) {
                            *skipping = false;
                        }
                        if !*skipping {
                            frames.push(frame.clone());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    lags += 1;
                    if lags > 5 {
                        return None;
                    }
                    *skipping = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
            if frames.len() >= 256 {
                break;
            }
            next = match sub.live.try_recv() {
                Ok(b) => Some(Ok(b)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Some(Err(broadcast::error::RecvError::Closed))
                }
                Err(broadcast::error::TryRecvError::Empty) => None,
            };
        }
        if !frames.is_empty() {
            return Some(frames);
        }
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
            .header(header::CACHE_CONTROL, "public, max-age=60")
            .body(Body::from(data))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
    }
}
