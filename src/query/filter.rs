//! NIP-01 filters: parsing from JSON (strictly), building in code, and the
//! one predicate that decides whether a stored event matches.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::event::{Event, EventId, EventRef, Pubkey};
use crate::search::{self, MAX_SEARCH_BYTES};

/// A NIP-01 filter. `None` fields do not constrain; an empty list matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<EventId>>,
    pub authors: Option<Vec<Pubkey>>,
    pub kinds: Option<Vec<u16>>,
    /// `#x` conditions by tag letter (a-z, A-Z): the first value of some `x` tag
    /// must be one of the strings.
    pub tags: BTreeMap<u8, Vec<String>>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: Option<usize>,
    /// NIP-50 full-text search (see [`crate::search`]): the event must be of
    /// a searchable kind and have every term of the string.
    pub search: Option<String>,
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid filter: {}", self.0)
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    pub fn new() -> Filter {
        Filter::default()
    }

    pub fn ids(mut self, ids: impl IntoIterator<Item = EventId>) -> Filter {
        self.ids = Some(ids.into_iter().collect());
        self
    }

    pub fn authors(mut self, authors: impl IntoIterator<Item = Pubkey>) -> Filter {
        self.authors = Some(authors.into_iter().collect());
        self
    }

    pub fn kinds(mut self, kinds: impl IntoIterator<Item = u16>) -> Filter {
        self.kinds = Some(kinds.into_iter().collect());
        self
    }

    /// Adds a `#letter` condition. Panics if `letter` is not an ASCII letter.
    pub fn tag<S: Into<String>>(
        mut self,
        letter: char,
        values: impl IntoIterator<Item = S>,
    ) -> Filter {
        assert!(
            letter.is_ascii_alphabetic(),
            "tag filters take one ASCII letter"
        );
        self.tags
            .insert(letter as u8, values.into_iter().map(Into::into).collect());
        self
    }

    pub fn since(mut self, since: u64) -> Filter {
        self.since = Some(since);
        self
    }

    pub fn until(mut self, until: u64) -> Filter {
        self.until = Some(until);
        self
    }

    pub fn limit(mut self, limit: usize) -> Filter {
        self.limit = Some(limit);
        self
    }

    pub fn search(mut self, search: impl Into<String>) -> Filter {
        self.search = Some(search.into());
        self
    }

    /// Parses one filter object.
    pub fn from_json(json: &str) -> Result<Filter, FilterError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| FilterError(format!("malformed JSON: {e}")))?;
        Filter::from_value(&value)
    }

    /// Parses a filter object or an array of them.
    pub fn list_from_json(json: &str) -> Result<Vec<Filter>, FilterError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| FilterError(format!("malformed JSON: {e}")))?;
        match &value {
            Value::Array(items) => items.iter().map(Filter::from_value).collect(),
            _ => Ok(vec![Filter::from_value(&value)?]),
        }
    }

    pub fn from_value(value: &Value) -> Result<Filter, FilterError> {
        let Value::Object(fields) = value else {
            return Err(FilterError("a filter must be a JSON object".into()));
        };
        let mut filter = Filter::default();
        for (key, value) in fields {
            match key.as_str() {
                "ids" => filter.ids = Some(hex_list(key, value, |s| EventId::from_hex(s).ok())?),
                "authors" => {
                    filter.authors = Some(hex_list(key, value, |s| Pubkey::from_hex(s).ok())?)
                }
                "kinds" => {
                    let items = array(key, value)?;
                    let kinds = items
                        .iter()
                        .map(|k| {
                            k.as_u64()
                                .and_then(|k| u16::try_from(k).ok())
                                .ok_or_else(|| {
                                    FilterError(format!(
                                        "`kinds` holds {k}, not an integer in 0..=65535"
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?;
                    filter.kinds = Some(kinds);
                }
                "since" => filter.since = Some(timestamp(key, value)?),
                "until" => filter.until = Some(timestamp(key, value)?),
                "limit" => {
                    // A whole number past u64 (JSON allows any) is clamped
                    // like any other large limit, not refused.
                    let huge = || {
                        value
                            .as_f64()
                            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                            .map(|_| u64::MAX)
                    };
                    let limit = value.as_u64().or_else(huge).ok_or_else(|| {
                        FilterError(format!(
                            "`limit` must be a non-negative integer, got {value}"
                        ))
                    })?;
                    filter.limit = Some(usize::try_from(limit).unwrap_or(usize::MAX));
                }
                "search" => {
                    let Some(text) = value.as_str() else {
                        return Err(FilterError(format!(
                            "`search` must be a string, got {value}"
                        )));
                    };
                    if text.len() > MAX_SEARCH_BYTES {
                        return Err(FilterError(format!(
                            "`search` is {} bytes, more than {MAX_SEARCH_BYTES}",
                            text.len()
                        )));
                    }
                    filter.search = Some(text.to_string());
                }
                tag if tag.len() == 2
                    && tag.starts_with('#')
                    && tag.as_bytes()[1].is_ascii_alphabetic() =>
                {
                    let letter = tag.as_bytes()[1];
                    let items = array(key, value)?;
                    let mut values = Vec::with_capacity(items.len());
                    for item in items {
                        let Some(s) = item.as_str() else {
                            return Err(FilterError(format!(
                                "`{key}` values must be strings, got {item}"
                            )));
                        };
                        // NIP-01: e and p values are exact ids and pubkeys.
                        if matches!(letter, b'e' | b'p') && Pubkey::from_hex(s).is_err() {
                            return Err(FilterError(format!(
                                "`{key}` values must be 64 lowercase hex characters, got {s:?}"
                            )));
                        }
                        values.push(s.to_string());
                    }
                    filter.tags.insert(letter, values);
                }
                other => return Err(FilterError(format!("unknown filter field `{other}`"))),
            }
        }
        Ok(filter)
    }

    /// The filter as compact JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let mut sep = "";
        let mut field = |out: &mut String, name: &str, body: String| {
            let _ = write!(out, "{sep}\"{name}\":{body}");
            sep = ",";
        };
        if let Some(ids) = &self.ids {
            field(
                &mut out,
                "ids",
                json_strings(ids.iter().map(|i| i.to_hex())),
            );
        }
        if let Some(authors) = &self.authors {
            field(
                &mut out,
                "authors",
                json_strings(authors.iter().map(|a| a.to_hex())),
            );
        }
        if let Some(kinds) = &self.kinds {
            let list: Vec<String> = kinds.iter().map(u16::to_string).collect();
            field(&mut out, "kinds", format!("[{}]", list.join(",")));
        }
        for (letter, values) in &self.tags {
            field(
                &mut out,
                &format!("#{}", *letter as char),
                json_strings(values.iter().cloned()),
            );
        }
        if let Some(since) = self.since {
            field(&mut out, "since", since.to_string());
        }
        if let Some(until) = self.until {
            field(&mut out, "until", until.to_string());
        }
        if let Some(limit) = self.limit {
            field(&mut out, "limit", limit.to_string());
        }
        if let Some(search) = &self.search {
            field(
                &mut out,
                "search",
                Value::String(search.clone()).to_string(),
            );
        }
        out.push('}');
        out
    }

    /// A copy without the authors and the search: the authors are not
    /// cloned only to be dropped (a follow feed names hundreds).
    pub(crate) fn without_authors_and_search(&self) -> Filter {
        Filter {
            ids: self.ids.clone(),
            authors: None,
            kinds: self.kinds.clone(),
            tags: self.tags.clone(),
            since: self.since,
            until: self.until,
            limit: self.limit,
            search: None,
        }
    }

    /// A copy with `authors` in place of its own (not cloned first).
    pub(crate) fn with_authors(&self, authors: Vec<Pubkey>) -> Filter {
        Filter {
            authors: Some(authors),
            search: self.search.clone(),
            ..self.without_authors_and_search()
        }
    }

    /// Whether some field is an empty list, so nothing can match.
    pub fn matches_nothing(&self) -> bool {
        self.ids.as_ref().is_some_and(Vec::is_empty)
            || self.authors.as_ref().is_some_and(Vec::is_empty)
            || self.kinds.as_ref().is_some_and(Vec::is_empty)
            || self.tags.values().any(Vec::is_empty)
            || matches!((self.since, self.until), (Some(s), Some(u)) if s > u)
    }

    /// [`Filter::matches`] on an owned event, without encoding it (what a
    /// client of other relays checks each event it is sent against).
    pub fn matches_event(&self, event: &Event) -> bool {
        if self.since.is_some_and(|s| event.created_at < s)
            || self.until.is_some_and(|u| event.created_at > u)
            || self
                .kinds
                .as_ref()
                .is_some_and(|k| !k.contains(&event.kind))
            || self
                .authors
                .as_ref()
                .is_some_and(|a| !a.contains(&event.pubkey))
            || self.ids.as_ref().is_some_and(|i| !i.contains(&event.id))
        {
            return false;
        }
        let tags = self.tags.iter().all(|(&letter, values)| {
            event.tags.iter().any(|tag| {
                tag.len() >= 2 && tag[0].as_bytes() == [letter] && values.contains(&tag[1])
            })
        });
        tags && self.search.as_ref().is_none_or(|search| {
            search::is_searchable(event.kind)
                && search::terms_match(
                    &search::owned_event_terms(event),
                    &search::query_terms(search),
                )
        })
    }

    /// The full NIP-01 test of one event (limit aside), NIP-50 search
    /// included.
    pub fn matches(&self, event: &EventRef<'_>) -> bool {
        self.matches_unsearched(event)
            && self
                .search
                .as_ref()
                .is_none_or(|search| search::event_has_terms(event, &search::query_terms(search)))
    }

    /// [`Filter::matches`] without the `search` condition, for callers that
    /// check it with the search's terms worked out once.
    pub(crate) fn matches_unsearched(&self, event: &EventRef<'_>) -> bool {
        let created_at = event.created_at();
        if self.since.is_some_and(|s| created_at < s) || self.until.is_some_and(|u| created_at > u)
        {
            return false;
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&event.kind())
        {
            return false;
        }
        if let Some(authors) = &self.authors
            && !authors.contains(&event.pubkey())
        {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.contains(&event.id())
        {
            return false;
        }
        self.tags.iter().all(|(&letter, values)| {
            event.tags().any(|tag| {
                tag.name().and_then(|n| n.is_single_letter()) == Some(letter)
                    && tag
                        .value()
                        .is_some_and(|v| values.iter().any(|want| v.eq_str(want)))
            })
        })
    }
}

fn array<'a>(key: &str, value: &'a Value) -> Result<&'a Vec<Value>, FilterError> {
    value
        .as_array()
        .ok_or_else(|| FilterError(format!("`{key}` must be an array")))
}

fn hex_list<T>(
    key: &str,
    value: &Value,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, FilterError> {
    array(key, value)?
        .iter()
        .map(|item| {
            item.as_str().and_then(&parse).ok_or_else(|| {
                FilterError(format!(
                    "`{key}` values must be 64 lowercase hex characters, got {item}"
                ))
            })
        })
        .collect()
}

fn timestamp(key: &str, value: &Value) -> Result<u64, FilterError> {
    value.as_u64().ok_or_else(|| {
        FilterError(format!(
            "`{key}` must be a non-negative integer timestamp, got {value}"
        ))
    })
}

fn json_strings(items: impl Iterator<Item = String>) -> String {
    let list: Vec<String> = items.map(|s| Value::String(s).to_string()).collect();
    format!("[{}]", list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field_and_round_trips() {
        let hex = "a".repeat(64);
        let json = format!(
            r##"{{"ids":["{hex}"],"authors":["{hex}"],"kinds":[1,30023],"#e":["{hex}"],"#t":["nostr"],"since":5,"until":9,"limit":20,"search":"sunset \"clips\""}}"##
        );
        let filter = Filter::from_json(&json).unwrap();
        assert_eq!(filter.kinds, Some(vec![1, 30023]));
        assert_eq!(filter.tags.get(&b't'), Some(&vec!["nostr".to_string()]));
        assert_eq!(filter.search.as_deref(), Some("sunset \"clips\""));
        assert_eq!(Filter::from_json(&filter.to_json()).unwrap(), filter);
    }

    #[test]
    fn limits_past_u64_are_clamped_not_refused() {
        for json in [
            r#"{"limit":18446744073709551616}"#,
            r#"{"limit":1e300}"#,
            r#"{"limit":18446744073709551615}"#,
        ] {
            let filter = Filter::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(filter.limit, Some(usize::MAX), "{json}");
        }
        for json in [r#"{"limit":-1}"#, r#"{"limit":2.5}"#, r#"{"limit":"5"}"#] {
            assert!(Filter::from_json(json).is_err(), "{json}");
        }
    }

    #[test]
    fn hostile_filters_get_clear_errors() {
        let long_search = format!(r#"{{"search":"{}"}}"#, "a".repeat(MAX_SEARCH_BYTES + 1));
        for (json, needle) in [
            (r#"{"ids":["ABC"]}"#, "ids"),
            (r#"{"authors":"x"}"#, "array"),
            (r#"{"kinds":[70000]}"#, "0..=65535"),
            (r#"{"since":-1}"#, "since"),
            (r#"{"limit":1.5}"#, "limit"),
            (r##"{"#e":["short"]}"##, "#e"),
            (r##"{"#t":[1]}"##, "strings"),
            (r#"{"bogus":1}"#, "unknown"),
            (r#"{"search":5}"#, "search"),
            (long_search.as_str(), "more than 1024"),
            (r#"[1,2]"#, "object"),
            (r#"{"kinds":[1"#, "malformed"),
        ] {
            let error = Filter::list_from_json(json).unwrap_err();
            assert!(error.to_string().contains(needle), "{json}: {error}");
        }
    }

    #[test]
    fn empty_lists_and_inverted_ranges_match_nothing() {
        assert!(Filter::new().kinds([]).matches_nothing());
        assert!(Filter::new().since(10).until(5).matches_nothing());
        assert!(!Filter::new().since(5).until(5).matches_nothing());
    }
}
