//! The routes: `/start`, `/timeline`, `/status`, `/events`, and the form
//! the relay shows browsers on `GET /`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;
use megalith::event::nip19;

use crate::Web;
use crate::assets::CSP;
use crate::banner::banner;
use crate::events;
use crate::page::{self, Mode, Timeline};
use crate::read;
use crate::request::{Params, json, json_error};

/// The web layer's routes, to merge into the relay's router. Handlers read
/// the client's address from `ConnectInfo<SocketAddr>`.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/start", get(start))
        .route("/timeline", get(timeline))
        .route("/status", get(status))
        .route("/events", get(events::stream))
        .with_state(web)
}

/// The form, for a browser's `GET /`.
pub fn home_response() -> Response {
    let mut response = html(StatusCode::OK, page::home());
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// An HTML answer with the pages' security headers.
pub(crate) fn html(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&CSP) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bad_request(title: &str, message: &str, value: &str) -> Response {
    html(StatusCode::BAD_REQUEST, page::error(title, message, value))
}

async fn start(
    State(web): State<Arc<Web>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(params): Query<Params>,
) -> Response {
    let given = params.npub.clone().unwrap_or_default();
    let person = match params.person() {
        Ok(person) => person,
        Err(message) => return bad_request("Not a public key", &message, &given),
    };
    if let Err(wait) = web.limits.start(client.ip(), Instant::now()) {
        let secs = wait.as_secs() + 1;
        let mut response = html(
            StatusCode::TOO_MANY_REQUESTS,
            page::error(
                "Too many feeds started",
                &format!(
                    "This address started too many feeds in a short time. Try again in {secs} s."
                ),
                &given,
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    web.jobs.ensure_job(person);
    let location = format!("/timeline?npub={}", nip19::encode_npub(&person));
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn timeline(State(web): State<Arc<Web>>, Query(params): Query<Params>) -> Response {
    let given = params.npub.clone().unwrap_or_default();
    let asked = match params.check(&web) {
        Ok(asked) => asked,
        Err(message) => return bad_request("Cannot show this page", &message, &given),
    };
    let read = {
        let web = Arc::clone(&web);
        let (person, mode, cursor, limit) = (asked.person, asked.mode, asked.cursor, asked.limit);
        tokio::task::spawn_blocking(move || {
            read::page(
                &web.store,
                &person,
                mode,
                cursor,
                limit,
                web.config.max_follows,
            )
        })
        .await
    };
    let page_read = match read {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "timeline read failed");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                page::error("The store could not be read", &e, &given),
            );
        }
        Err(e) => {
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                page::error("Internal error", &e.to_string(), &given),
            );
        }
    };
    let status = web.jobs.status(&asked.person);
    let banner = banner(status.as_ref());
    let npub = nip19::encode_npub(&asked.person);
    let older = page_read.older.map(|c| {
        let mut href = format!("/timeline?npub={npub}&until={c}");
        if asked.limit != web.config.default_limit {
            href.push_str(&format!("&limit={}", asked.limit));
        }
        if asked.mode == Mode::Author {
            href.push_str("&mode=author");
        }
        href
    });
    html(
        StatusCode::OK,
        page::timeline(&Timeline {
            person: asked.person,
            profile: &page_read.profile,
            mode: asked.mode,
            posts: &page_read.posts,
            banner: &banner,
            has_job: status.is_some(),
            has_contacts: page_read.has_contacts,
            older,
            first_page: asked.cursor.is_none(),
            limit: asked.limit,
            now: megalith_ingest::stats::now_secs(),
        }),
    )
}

async fn status(State(web): State<Arc<Web>>, Query(params): Query<Params>) -> Response {
    let person = match params.person() {
        Ok(person) => person,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    match web.jobs.status(&person) {
        Some(status) => match serde_json::to_string(&status) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        None => json_error(
            StatusCode::NOT_FOUND,
            "no feed job ran for this person since the server started; GET /start?npub=… starts one",
        ),
    }
}
