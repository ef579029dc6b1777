//! The admin listener's status page (`GET /`, `/status`): one pass over the running proxy into a
//! `status::snapshot::Snapshot`, rendered by `status::page`. `admin.rs` routes here.

use crate::body::{self, ResponseBody};
use crate::proxy::Proxy;
use crate::status::page;
use crate::status::snapshot::{
    CacheFigures, FleetFigures, Snapshot, StorageFigures, FILLS_LISTED, TOP_IMAGES,
};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// What the page shows of `proxy` now.
pub fn gather(proxy: &Proxy) -> Snapshot {
    let config = proxy.config();
    let store = proxy.blob_store();
    let stats = store.stats();
    let board = proxy.metrics().board().view(TOP_IMAGES);
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        cache: CacheFigures {
            used: stats.bytes.saturating_add(stats.file_bytes),
            max: store.max_bytes(),
            blobs: stats.entries,
            evictions: stats.evictions,
            damaged: stats.damaged_by_scrub.saturating_add(stats.damaged_on_read),
            pinned_bytes: stats.pinned_bytes,
            downloads_in_flight: stats.in_flight,
        },
        storage: config.storage.as_ref().map(|s| StorageFigures {
            bucket: s.s3_bucket.clone(),
            health: board.bucket.clone(),
        }),
        fleet: config.fleet.as_ref().map(|f| FleetFigures {
            me: f.peer_url.clone().unwrap_or_default(),
        }),
        fills: store.fills_in_progress(FILLS_LISTED),
        board,
    }
}

/// The page: HTML that names no external asset and runs no script (the CSP says so to the
/// browser too), never cached.
pub fn respond(proxy: &Proxy, head: bool) -> Response<ResponseBody> {
    let html = page::render(&gather(proxy));
    let len = html.len() as u64;
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(html)
    });
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
