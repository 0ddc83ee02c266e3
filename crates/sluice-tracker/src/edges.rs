//! Edges as a tracker knows them (from their heartbeats), routing a client to a live edge of
//! its region (`GET /v1/route/{fileid}`), and preloading (`POST /v1/preload`).
//!
//! Within a region a file always goes to the same edge while the set of live edges stays the
//! same (highest random weight of edge id and file id), so each file is cached once per region
//! rather than once per edge; when an edge goes, only its files move.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_proto::FileId;
use sluice_proto::cluster::{CLUSTER_SECRET_HEADER, EdgeHeartbeat, EdgeView, PreloadRequest};
use sluice_proto::net::{client_address, region_of};
use sluice_state::LockRecover;

use crate::{
    BodyBytes, TrackerState, admit_beat, error, file_location, read_body, redirect, with_query,
};

/// How long a preload request to one edge may take; preloading never holds a caller long.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(2);

pub struct EdgeRegistry {
    live_for: Duration,
    edges: Mutex<HashMap<String, (EdgeHeartbeat, Instant)>>,
}

impl EdgeRegistry {
    pub fn new(live_for: Duration) -> Self {
        Self {
            live_for,
            edges: Mutex::default(),
        }
    }

    /// Records a heartbeat; true when the edge is new.
    pub fn heartbeat(&self, beat: EdgeHeartbeat) -> bool {
        self.edges
            .lock_or_recover()
            .insert(beat.edge_id.clone(), (beat, Instant::now()))
            .is_none()
    }

    pub fn view(&self) -> Vec<EdgeView> {
        let edges = self.edges.lock_or_recover();
        let mut out: Vec<EdgeView> = edges
            .values()
            .map(|(beat, seen)| EdgeView {
                id: beat.edge_id.clone(),
                url: beat.url.clone(),
                region: beat.region.clone(),
                cache_free: beat.cache_free,
                cache_files: beat.cache_files,
                live: seen.elapsed() < self.live_for,
                last_seen_ms: seen.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Live edges of `region`, as (id, url).
    pub fn live_in(&self, region: &str) -> Vec<(String, String)> {
        self.view()
            .into_iter()
            .filter(|e| e.live && e.region.as_deref() == Some(region))
            .map(|e| (e.id, e.url))
            .collect()
    }

    /// The edge of `region` that serves `fileid`.
    pub fn pick(&self, region: &str, fileid: &str) -> Option<String> {
        self.live_in(region)
            .into_iter()
            .max_by_key(|(id, _)| {
                let digest = Sha256::digest(format!("{id} {fileid}").as_bytes());
                u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
            })
            .map(|(_, url)| url)
    }
}

pub(crate) async fn heartbeat(State(state): State<TrackerState>, body: BodyBytes) -> Response {
    let beat: EdgeHeartbeat = match admit_beat(body, "edge heartbeat") {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let region_ok = beat
        .region
        .as_deref()
        .is_none_or(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_graphic()));
    if !(beat.url.starts_with("http://") || beat.url.starts_with("https://"))
        || beat.edge_id.is_empty()
        || beat.edge_id.len() > 64
        || !region_ok
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad edge heartbeat: edge_id, an http(s) url and a short region are required",
        );
    }
    let (id, url, region) = (beat.edge_id.clone(), beat.url.clone(), beat.region.clone());
    if state.edges().heartbeat(beat) {
        tracing::info!(edge = %id, %url, region = region.as_deref().unwrap_or("-"), "edge joined");
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn list(State(state): State<TrackerState>) -> Response {
    axum::Json(json!({ "edges": state.edges().view() })).into_response()
}

/// `GET /v1/route/{fileid}[?region=R]`: 302 to a live edge of the client's region (named, or
/// from the address map), else to a node of the file's group. The signature rule is the one
/// of `/v1/files/{fileid}`, so routing is no way around it.
pub(crate) async fn route(
    State(state): State<TrackerState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let files_uri: Uri = match format!(
        "/v1/files/{text}{}",
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    )
    .parse()
    {
        Ok(u) => u,
        Err(_) => return error(StatusCode::BAD_REQUEST, "malformed file id"),
    };
    if let Err(denied) = state.config().access.check_read(&files_uri) {
        return denied.into_response();
    }
    let id = match FileId::parse(&text) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed file id: {e}")),
    };
    // The query the client goes on with: everything but `region` (signatures included).
    let mut named_region = None;
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| match p.strip_prefix("region=") {
            Some(r) => {
                named_region = Some(r.to_owned());
                false
            }
            None => true,
        })
        .collect();
    let query = (!rest.is_empty()).then(|| rest.join("&"));
    let region = named_region.or_else(|| {
        let config = state.config();
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let client = client_address(peer.ip(), forwarded, &config.trusted_proxies);
        region_of(client, &config.regions).map(str::to_owned)
    });
    if let Some(region) = &region {
        if let Some(edge) = state.edges().pick(region, &id.to_string()) {
            return redirect(
                StatusCode::FOUND,
                &with_query(format!("{edge}/v1/files/{id}"), query),
            );
        }
    }
    match file_location(&state, &text, query) {
        Ok(url) => redirect(StatusCode::FOUND, &url),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/preload {"fileid","region"}`: asks every live edge of the region to fetch the
/// file now, so a receiver's first view is a hit. Needs the API token when one is set.
pub(crate) async fn preload(
    State(state): State<TrackerState>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Response {
    if let Err(denied) = state.config().access.check_bearer(&headers) {
        return denied.into_response();
    }
    let body = match read_body(body) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let request: PreloadRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"fileid\", \"region\"}}: {e}"),
            );
        }
    };
    let id = match FileId::parse(&request.fileid) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed file id: {e}")),
    };
    let edges = state.edges().live_in(&request.region);
    if edges.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live edge in region {:?}", request.region),
        );
    }
    let secret = state.config().cluster.secret().cloned();
    let asks = edges.iter().map(|(_, url)| {
        let mut ask = state
            .probe()
            .post(format!("{url}/v1/internal/preload/{id}"))
            .timeout(PRELOAD_TIMEOUT);
        if let Some(s) = &secret {
            ask = ask.header(CLUSTER_SECRET_HEADER, s.current());
        }
        ask.send()
    });
    let accepted = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "edges": edges.len(), "accepted": accepted })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, region: &str) -> EdgeHeartbeat {
        EdgeHeartbeat {
            edge_id: id.into(),
            url: format!("http://{id}"),
            region: Some(region.into()),
            cache_free: 0,
            cache_files: 0,
        }
    }

    #[test]
    fn a_file_sticks_to_one_edge_of_its_region_and_moves_only_when_that_edge_goes() {
        let r = EdgeRegistry::new(Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            r.heartbeat(beat(id, "eu"));
        }
        r.heartbeat(beat("z", "asia"));
        let files: Vec<String> = (0..200).map(|i| format!("g1/file{i}")).collect();
        let first: Vec<String> = files.iter().map(|f| r.pick("eu", f).unwrap()).collect();
        assert!(first.iter().all(|u| u != "http://z"));
        let spread: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(spread.len(), 3, "files spread over the region's edges");
        assert_eq!(r.pick("mars", "g1/x"), None);
        // Edge "b" goes: its files move, the others stay.
        let r2 = EdgeRegistry::new(Duration::from_secs(60));
        for id in ["a", "c"] {
            r2.heartbeat(beat(id, "eu"));
        }
        for (f, before) in files.iter().zip(&first) {
            let after = r2.pick("eu", f).unwrap();
            if before != "http://b" {
                assert_eq!(&after, before);
            }
        }
    }
}
