//! The web console and player (`/console/`), embedded in the binary: its pages, script,
//! styles and the vendored players (hls.js, mpegts.js; see `vendor.sh` and
//! `assets/vendor/VERSIONS`) are compiled in, so the console needs no file on disk and loads
//! nothing from another host. Every role mounts [`routes`]; a browser that opens a role's
//! root is sent to the console.
//!
//! The pages are static; their script asks the role's own API (`/v1/about`, `/metrics`,
//! `/v1/cluster`, `/v1/files`, `/v1/uploads`, `/v1/live/...`) for everything it shows.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../assets/", $name)),
        }
    };
}

/// A page: its path under `/console/` ("" is the overview), its title, the name its script
/// knows it by, and its content (what goes in the layout's `<main>`).
struct Page {
    path: &'static str,
    title: &'static str,
    script: &'static str,
    content: &'static str,
}

macro_rules! page {
    ($path:literal, $title:literal, $script:literal, $file:literal) => {
        Page {
            path: $path,
            title: $title,
            script: $script,
            content: include_str!(concat!("../assets/pages/", $file)),
        }
    };
}

const PAGES: &[Page] = &[
    page!("", "Overview", "overview", "index.html"),
    page!("cluster", "Cluster", "cluster", "cluster.html"),
    page!("upload", "Upload", "upload", "upload.html"),
    page!("view", "Viewer", "view", "view.html"),
    page!("play", "Player", "play", "play.html"),
    page!("live", "Live", "live", "live.html"),
];

/// Every page's frame: head, navigation, the problem line and the token form.
const LAYOUT: &str = include_str!("../assets/layout.html");

/// The pages put together once, in the order of [`PAGES`].
fn rendered() -> &'static [String] {
    static RENDERED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    RENDERED.get_or_init(|| {
        PAGES
            .iter()
            .map(|p| {
                LAYOUT
                    .replace("{title}", p.title)
                    .replace("{page}", p.script)
                    .replace("{body}", p.content.trim_end())
            })
            .collect()
    })
}

/// What the pages load, under `/console/assets/`.
const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/hls.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/mpegts.min.js", "text/javascript; charset=utf-8"),
];

/// The pages may load only what this server serves: scripts and styles from here (none
/// inline), media and images from here or from blobs the page made, players' workers from
/// blobs; nothing may frame them.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; media-src 'self' blob:; worker-src 'self' blob:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The console's routes, for any role's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|headers: HeaderMap| async move { page("", &headers) }),
        )
        .route(
            "/console/{page}",
            get(
                |Path(name): Path<String>, headers: HeaderMap| async move { page(&name, &headers) },
            ),
        )
        .route(
            "/console/assets/{*name}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move {
                match ASSETS.iter().find(|a| a.name == name) {
                    Some(asset) => serve(asset, &headers, false),
                    None => not_found(),
                }
            }),
        )
        .route(
            "/favicon.ico",
            get(|headers: HeaderMap| async move {
                match ASSETS.iter().find(|a| a.name == "favicon.svg") {
                    Some(asset) => serve(asset, &headers, false),
                    None => not_found(),
                }
            }),
        )
}

fn page(name: &str, headers: &HeaderMap) -> Response {
    match PAGES.iter().position(|p| p.path == name) {
        Some(i) => serve(
            &Asset {
                name: "page",
                content_type: "text/html; charset=utf-8",
                bytes: rendered()[i].as_bytes(),
            },
            headers,
            true,
        ),
        None => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"error\":\"no such console page\"}",
    )
        .into_response()
}

/// An asset with a validator (its content's hash), revalidated on each use: a new binary's
/// console is never hidden behind an old cached one.
fn serve(asset: &Asset, headers: &HeaderMap, is_page: bool) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.bytes));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if is_page {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

/// FNV-1a, 64 bits: a validator, not a defence.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_names_only_assets_that_exist() {
        for (page, text) in PAGES.iter().zip(rendered()) {
            let path = page.path;
            assert!(
                !text.contains("{title}") && !text.contains("{body}"),
                "{path:?}"
            );
            for part in text.split("/console/assets/").skip(1) {
                let name = part.split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "page {path:?} loads a missing asset {name}"
                );
            }
            assert!(
                !text.contains("<script>"),
                "page {path:?} has an inline script"
            );
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "page {path:?} names another host"
            );
        }
    }
}
