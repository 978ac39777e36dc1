//! What a request asks for, checked (`npub`, `limit`, `mode`, `until`),
//! and the JSON answers the endpoints share.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use megalith::Pubkey;
use megalith::event::nip19;
use serde::Deserialize;

use crate::Web;
use crate::page::Mode;
use crate::read::Cursor;

/// A JSON answer that is never cached.
pub(crate) fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// The query of the pages.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct Params {
    pub(crate) npub: Option<String>,
    limit: Option<String>,
    until: Option<String>,
    mode: Option<String>,
}

/// What a request asks for, checked.
pub(crate) struct Asked {
    pub(crate) person: Pubkey,
    pub(crate) limit: usize,
    pub(crate) mode: Mode,
    pub(crate) cursor: Option<Cursor>,
}

impl Params {
    /// The person, or what is wrong with the `npub` parameter.
    pub(crate) fn person(&self) -> Result<Pubkey, String> {
        let Some(given) = self
            .npub
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Err("Enter a public key: npub1…, nprofile1… or 64 hex characters.".into());
        };
        nip19::parse_profile(given).map(|(p, _)| p).map_err(|e| {
            format!("That is not a public key ({e}). Enter an npub1…, an nprofile1… or 64 hex characters.")
        })
    }

    pub(crate) fn check(&self, web: &Web) -> Result<Asked, String> {
        let person = self.person()?;
        let limit = match self.limit.as_deref() {
            None | Some("") => web.config.default_limit,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=web.config.max_limit).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "`limit` is {text:?}; it must be a number from 1 to {}.",
                        web.config.max_limit
                    ));
                }
            },
        };
        let mode = match self.mode.as_deref() {
            None | Some("") | Some("feed") => Mode::Feed,
            Some("author") => Mode::Author,
            Some(other) => {
                return Err(format!(
                    "`mode` is {other:?}; it is `author` (their own posts) or left out (their feed)."
                ));
            }
        };
        let cursor = match self.until.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Cursor::parse(text)?),
        };
        Ok(Asked {
            person,
            limit,
            mode,
            cursor,
        })
    }
}
