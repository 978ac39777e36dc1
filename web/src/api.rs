//! The REST API for video apps (issue 16, docs/api.md): Funnel's endpoints
//! and shapes, answered from the store's analytics
//! (`EventStore::analytics`), never from a second database.
//!
//! Every answer is JSON; an error is `{"error": "..."}` with
//! `Cache-Control: no-store`. Cacheable answers carry a strong ETag (a hash
//! of the body) and answer `If-None-Match` with `304 Not Modified`. With a
//! token configured, every endpoint but `/api/openapi.json` asks for
//! `Authorization: Bearer <token>`. The OpenAPI document
//! ([`OPENAPI`]) is the one the tests check the answers against.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use megalith::analytics::{
    AnalyticsGuard, DAY, Place, Sort, StoreAnalytics, VIDEO_KINDS, VideoKey, trending_score,
    video_fields,
};
use megalith::event::nip19;
use megalith::{Event, EventStore, Filter, Pubkey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::request::json_error;

/// The OpenAPI 3.0 document of the API, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Items a list returns when `limit` is not given, and the most it may ask.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;

/// Days `/api/users/active` gives when `days` is not given, and the most.
const DEFAULT_DAYS: u64 = 30;
const MAX_DAYS: u64 = 366;

/// The longest `q` a search may give, in characters.
const MAX_SEARCH_CHARS: usize = 1_024;

/// Events a word search reads at most (newest first) before it picks
/// the page.
const SEARCH_SCAN: usize = 1_000;

/// The API's settings.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Every endpoint but the OpenAPI document asks for this bearer token.
    pub token: Option<String>,
}

struct Api {
    store: Arc<EventStore>,
    token: Option<String>,
    /// [`OPENAPI`] as this server answers: with a token, its `security`
    /// asks for the bearer token (not bearer-or-nothing).
    document: String,
}

/// The `/api/...` routes, to merge into the relay's router.
pub fn api_router(store: Arc<EventStore>, config: ApiConfig) -> Router {
    let token = config.token.filter(|t| !t.is_empty());
    let document = served_document(token.is_some());
    let api = Arc::new(Api {
        store,
        token,
        document,
    });
    Router::new()
        .route("/api/videos", get(videos))
        .route("/api/videos/{id}/stats", get(video_stats))
        .route("/api/users/{pubkey}/videos", get(user_videos))
        .route("/api/users/active", get(active_users))
        .route("/api/search", get(search))
        .route("/api/stats", get(stats))
        .route("/api/hashtags", get(hashtags))
        .route("/api/creators/top", get(top_creators))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&api), authorize))
        .route("/api/openapi.json", get(openapi))
        .route("/api/{*rest}", any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "No such endpoint (see /api/openapi.json)",
    )
}

/// A method other than GET (or HEAD) on an endpoint: JSON like every other
/// answer (axum adds the `Allow` header).
async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "This endpoint answers GET only",
    )
}

async fn openapi(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    cached(&headers, api.document.clone(), 3_600)
}

/// The document a server answers with. [`OPENAPI`] says the bearer token
/// is optional (`security: [{bearer}, {}]`), which is true only without
/// one; a server with a token says that every endpoint needs it, so
/// clients and schema testers (schemathesis' `ignored_auth`) know.
fn served_document(token: bool) -> String {
    if !token {
        return OPENAPI.to_string();
    }
    let mut document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    document["security"] = json!([{ "bearer": [] }]);
    document.to_string()
}

/// Refuses a request without the configured bearer token.
async fn authorize(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "This API needs an Authorization: Bearer token",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Api {
    fn analytics(&self) -> Result<&StoreAnalytics, Refusal> {
        self.store.analytics().map(|a| &**a).ok_or_else(|| {
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "Analytics are off for this store (start the server with --analytics on)"
                    .to_string(),
            )
        })
    }
}

/// A JSON answer that caches may keep `max_age` seconds, with its ETag;
/// `304` when the client's `If-None-Match` names it.
fn cached(headers: &HeaderMap, body: String, max_age: u32) -> Response {
    let digest = Sha256::digest(body.as_bytes());
    let etag = format!("\"{}\"", megalith::hex::encode(&digest[..12]));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}

/// `text` for a URL's query: every byte but unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why a request gets no answer: its status and message, answered as
/// `{"error": message}`.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1)
    }
}

type Answer = Result<Response, Refusal>;

fn bad(message: &str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message.to_string())
}

/// `limit`: default 50, at most 100. Any larger whole number gets 100,
/// however many digits it has (the document's integer has no maximum).
fn limit(params: &HashMap<String, String>) -> Result<usize, Refusal> {
    let Some(text) = params.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    let digits = text.trim_start_matches('0');
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() {
        return Err(bad("'limit' must be a whole number from 1 to 100"));
    }
    Ok(digits
        .parse::<usize>()
        .map_or(MAX_LIMIT, |n| n.min(MAX_LIMIT)))
}

/// A path segment, or the refusal of one that is not UTF-8, as JSON.
fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    path.map(|Path(text)| text)
        .map_err(|rejection| Refusal(rejection.status(), rejection.body_text()))
}

/// A cursor: the place the previous page ended, opaque to clients.
fn encode_cursor(place: &Place) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}.{}:{}",
        place.score,
        place.time,
        place.key.text()
    ))
}

fn decode_cursor(
    analytics: &AnalyticsGuard<'_>,
    params: &HashMap<String, String>,
) -> Result<Option<Place>, Refusal> {
    let Some(text) = params.get("cursor").filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let invalid = || bad("'cursor' is not a cursor this API gave");
    let bytes = URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (numbers, key) = text.split_once(':').ok_or_else(invalid)?;
    let (score, time) = numbers.split_once('.').ok_or_else(invalid)?;
    Ok(Some(Place {
        score: score.parse().map_err(|_| invalid())?,
        time: time.parse().map_err(|_| invalid())?,
        key: analytics.resolve(key).ok_or_else(invalid)?,
    }))
}

/// A page of videos as Funnel gives them (an array), the cursor of the
/// next page (after `next`) in `X-Next-Cursor` and a `Link: rel="next"`
/// header.
fn video_page(
    headers: &HeaderMap,
    analytics: &AnalyticsGuard<'_>,
    page: Vec<(Place, &VideoKey)>,
    next: Option<Place>,
    next_link: impl Fn(&str) -> String,
    now: u64,
) -> Response {
    let next = next.map(|place| encode_cursor(&place));
    let items: Vec<Value> = page
        .iter()
        .filter_map(|(_, key)| video_json(analytics, key, now))
        .collect();
    let mut response = cached(headers, Value::Array(items).to_string(), 60);
    if let Some(cursor) = next {
        let response_headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&cursor) {
            response_headers.insert("x-next-cursor", value);
        }
        if let Ok(value) = HeaderValue::from_str(&format!("<{}>; rel=\"next\"", next_link(&cursor)))
        {
            response_headers.insert(header::LINK, value);
        }
    }
    response
}

/// The API's object for a live video.
fn video_json(analytics: &AnalyticsGuard<'_>, key: &VideoKey, now: u64) -> Option<Value> {
    let event = analytics.video(key)?;
    let figures = analytics.figures(key)?;
    Some(video_object(event, key, figures, now))
}

fn video_object(
    event: &Event,
    key: &VideoKey,
    figures: megalith::analytics::Figures,
    now: u64,
) -> Value {
    let fields = video_fields(event);
    let engagement = figures.engagement();
    let trending = if now.saturating_sub(event.created_at) <= 7 * DAY {
        trending_score(engagement, event.created_at, now)
    } else {
        0.0
    };
    let d_tag = match key {
        VideoKey::Address { d, .. } => Some(d.clone()),
        VideoKey::Id(_) => None,
    };
    let naddr = match key {
        // NIP-19 TLV values hold at most 255 bytes: a longer d has no naddr.
        VideoKey::Address { kind, pubkey, d } if d.len() <= 255 => {
            Some(nip19::encode_naddr(*kind, pubkey, d, &[]))
        }
        VideoKey::Address { .. } => None,
        VideoKey::Id(_) => None,
    };
    json!({
        "id": event.id.to_hex(),
        "pubkey": event.pubkey.to_hex(),
        "created_at": event.created_at,
        "kind": event.kind,
        "d_tag": d_tag,
        "address": matches!(key, VideoKey::Address { .. }).then(|| key.text()),
        "naddr": naddr,
        "title": fields.title,
        "thumbnail": fields.thumbnail,
        "video_url": fields.url,
        "duration": fields.duration,
        "dim": fields.dim,
        "mime": fields.mime,
        "hashtags": fields.hashtags,
        "reactions": figures.reactions,
        "downvotes": figures.downvotes,
        "comments": figures.comments,
        "legacy_comments": figures.legacy_comments,
        "reposts": figures.reposts,
        "engagement_score": engagement,
        "trending_score": trending,
    })
}

async fn videos(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let analytics = api.analytics()?;
    let sort = match params.get("sort").map(String::as_str) {
        None | Some("recent") => Sort::Recent,
        Some("popular") => Sort::Popular,
        Some("trending") => Sort::Trending,
        Some(_) => return Err(bad("'sort' must be recent, popular or trending")),
    };
    let kind = match params.get("kind").filter(|k| !k.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(kind) if VIDEO_KINDS.contains(&kind) => Some(kind),
            _ => return Err(bad("'kind' must be a video kind: 21, 22, 34235 or 34236")),
        },
    };
    let limit = limit(&params)?;
    let now = now();
    let view = analytics.read(now);
    let after = decode_cursor(&view, &params)?;
    let (page, next) = view.page(sort, kind, after.as_ref(), limit, now);
    let link = |cursor: &str| {
        let mut link = format!(
            "/api/videos?sort={}&limit={limit}&cursor={cursor}",
            match sort {
                Sort::Recent => "recent",
                Sort::Popular => "popular",
                Sort::Trending => "trending",
            }
        );
        if let Some(kind) = kind {
            link.push_str(&format!("&kind={kind}"));
        }
        link
    };
    Ok(video_page(&headers, &view, page, next, link, now))
}

async fn video_stats(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = path_param(id)?;
    let analytics = api.analytics()?;
    let now = now();
    let view = analytics.read(now);
    let found = view
        .resolve(id.trim())
        .and_then(|key| video_json(&view, &key, now));
    match found {
        Some(video) => Ok(cached(&headers, video.to_string(), 30)),
        None => Err(Refusal(
            StatusCode::NOT_FOUND,
            "Video not found".to_string(),
        )),
    }
}

/// A creator's key as the path gives it: exactly 64 lowercase hex
/// characters or an `npub1...` (the document's pattern; no spaces around).
fn pubkey_param(text: &str) -> Result<Pubkey, Refusal> {
    nip19::parse_pubkey(text)
        .map_err(|_| bad("the public key must be 64 hex characters or an npub1..."))
}

async fn user_videos(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    pubkey: Result<Path<String>, PathRejection>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let analytics = api.analytics()?;
    let author = pubkey_param(&path_param(pubkey)?)?;
    let limit = limit(&params)?;
    let now = now();
    let view = analytics.read(now);
    let after = decode_cursor(&view, &params)?;
    let page = view.by_author(&author, after.as_ref(), limit);
    let next = (page.len() == limit)
        .then(|| page.last().map(|(place, _)| place.clone()))
        .flatten();
    let hex = author.to_hex();
    let link = |cursor: &str| format!("/api/users/{hex}/videos?limit={limit}&cursor={cursor}");
    Ok(video_page(&headers, &view, page, next, link, now))
}

async fn search(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let analytics = api.analytics()?;
    let limit = limit(&params)?;
    // Checked as given, and also when `tag` wins: every parameter a request
    // has is checked. Characters, as the document's maxLength counts them.
    if params
        .get("q")
        .is_some_and(|q| q.chars().count() > MAX_SEARCH_CHARS)
    {
        return Err(bad("'q' is longer than 1024 characters"));
    }
    let tag = params.get("tag").map(|t| t.trim().trim_start_matches('#'));
    let q = params.get("q").map(|q| q.trim());
    let now = now();
    // A cursor must be one this API gave, also beside `q` (a word search
    // answers one page and ignores it).
    let after = decode_cursor(&analytics.read(now), &params)?;
    if let Some(tag) = tag.filter(|t| !t.is_empty()) {
        let view = analytics.read(now);
        let page = view.by_tag(tag, after.as_ref(), limit);
        let next = (page.len() == limit)
            .then(|| page.last().map(|(place, _)| place.clone()))
            .flatten();
        let encoded = percent_encode(&tag.to_lowercase());
        let link =
            |cursor: &str| format!("/api/search?tag={encoded}&limit={limit}&cursor={cursor}");
        return Ok(video_page(&headers, &view, page, next, link, now));
    }
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return Err(bad("Search requires 'tag' or 'q' parameter"));
    };
    let filter = Filter {
        kinds: Some(VIDEO_KINDS.to_vec()),
        search: Some(q.to_string()),
        limit: Some(SEARCH_SCAN),
        ..Filter::default()
    };
    let store = Arc::clone(&api.store);
    let found = tokio::task::spawn_blocking(move || store.query(&[filter])).await;
    let events = match found {
        Ok(Ok(events)) => events,
        Ok(Err(e)) => return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => return Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let view = analytics.read(now);
    let mut seen = std::collections::HashSet::new();
    let items: Vec<Value> = events
        .iter()
        .filter_map(|event| view.resolve(&event.id.to_hex()))
        .filter(|key| seen.insert(key.clone()))
        .filter_map(|key| video_json(&view, &key, now))
        .take(limit)
        .collect();
    Ok(cached(&headers, Value::Array(items).to_string(), 60))
}

async fn stats(State(api): State<Arc<Api>>, headers: HeaderMap) -> Answer {
    let analytics = api.analytics()?;
    let now = now();
    let events = api.store.gauges().events;
    let view = analytics.read(now);
    let totals = view.totals();
    let today = now / DAY;
    let body = json!({
        "total_events": events,
        "total_videos": view.video_count(),
        "total_creators": view.creator_count(),
        "total_hashtags": view.tag_count(),
        "total_reactions": totals.reactions,
        "total_downvotes": totals.downvotes,
        "total_comments": totals.comments,
        "total_legacy_comments": totals.legacy_comments,
        "total_reposts": totals.reposts,
        "active_authors_today": view.active_authors(today, 1),
        "active_authors_week": view.active_authors(today, 7),
        "active_authors_month": view.active_authors(today, 30),
        "generated_at": now,
    });
    Ok(cached(&headers, body.to_string(), 60))
}

async fn hashtags(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    top_list(&api, &headers, &params, |view, limit| {
        view.top_tags(limit)
            .into_iter()
            .map(|(tag, f)| {
                json!({
                    "hashtag": tag,
                    "count": f.videos,
                    "creators": f.creators,
                    "last_used": f.last_used,
                })
            })
            .collect()
    })
}

async fn top_creators(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    top_list(&api, &headers, &params, |view, limit| {
        view.top_creators(limit)
            .into_iter()
            .map(|(pubkey, c)| {
                json!({
                    "pubkey": pubkey.to_hex(),
                    "npub": nip19::encode_npub(&pubkey),
                    "videos": c.videos(),
                    "normal_videos": c.normal,
                    "short_videos": c.short,
                    "first_video": c.first,
                    "last_video": c.last,
                    "engagement_score": c.engagement,
                })
            })
            .collect()
    })
}

/// A top list: `limit` (checked) items that `items` makes from the
/// analytics as of now, cacheable for a minute.
fn top_list(
    api: &Api,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    items: impl FnOnce(&AnalyticsGuard<'_>, usize) -> Vec<Value>,
) -> Answer {
    let analytics = api.analytics()?;
    let limit = limit(params)?;
    let view = analytics.read(now());
    Ok(cached(
        headers,
        Value::Array(items(&view, limit)).to_string(),
        60,
    ))
}

async fn active_users(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let analytics = api.analytics()?;
    let (period, window) = match params.get("period").map(String::as_str) {
        None | Some("day") => ("day", 1),
        Some("week") => ("week", 7),
        Some("month") => ("month", 30),
        Some(_) => return Err(bad("'period' must be day, week or month")),
    };
    let days = match params.get("days") {
        None => DEFAULT_DAYS,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=MAX_DAYS).contains(&n) => n,
            _ => return Err(bad("'days' must be a whole number from 1 to 366")),
        },
    };
    let now = now();
    let today = now / DAY;
    let counts = analytics.read(now).active_series(today, days, window);
    let first = today + 1 - counts.len() as u64;
    let series: Vec<Value> = counts
        .into_iter()
        .enumerate()
        .map(|(i, active)| {
            let day = first + i as u64;
            json!({
                "date": crate::text::date(day * DAY),
                "day": day * DAY,
                "active": active,
            })
        })
        .collect();
    let body = json!({ "period": period, "days": days, "series": series });
    Ok(cached(&headers, body.to_string(), 60))
}
