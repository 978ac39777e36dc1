//! What a page shows of a person: a name and a picture from their kind 0
//! metadata, or fallbacks.

use megalith::Pubkey;
use serde_json::Value;

use crate::text::short_npub;

/// The longest name shown, in characters.
const MAX_NAME: usize = 64;
/// The longest picture URL used, in bytes.
const MAX_PICTURE: usize = 2_048;

/// A person as a page shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// `display_name`, else `name`, trimmed; none when both are missing or
    /// blank.
    pub name: Option<String>,
    /// An `https:` picture URL (nothing else is ever used as an image).
    pub picture: Option<String>,
}

impl Profile {
    /// From a kind 0 event's content; anything unreadable is a missing field.
    pub fn from_metadata(content: &str) -> Profile {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(content) else {
            return Profile::default();
        };
        let text = |key: &str| {
            fields
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let name = text("display_name")
            .or_else(|| text("displayName"))
            .or_else(|| text("name"))
            .map(|name| {
                // Line breaks and other controls have no place in a name.
                let clean: String = name
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(MAX_NAME)
                    .collect();
                clean.trim().to_string()
            })
            .filter(|name| !name.is_empty());
        let picture = text("picture").and_then(https_image).map(str::to_string);
        Profile { name, picture }
    }

    /// The name to show: the profile's, or the key shown short.
    pub fn shown_name(&self, pubkey: &Pubkey) -> String {
        self.name.clone().unwrap_or_else(|| short_npub(pubkey))
    }

    /// One or two letters for a picture's stand-in.
    pub fn initials(&self, pubkey: &Pubkey) -> String {
        let letters: String = self
            .name
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|word| word.chars().find(|c| c.is_alphanumeric()))
            .take(2)
            .flat_map(char::to_uppercase)
            .collect();
        if letters.is_empty() {
            pubkey.to_hex()[..2].to_string()
        } else {
            letters
        }
    }
}

/// `url` if it may be an image source: `https:`, with a host, no spaces,
/// quotes or control characters, not too long.
pub fn https_image(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let ok = url.len() <= MAX_PICTURE
        && rest
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '[')
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'<>\\`".contains(c));
    ok.then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pictures_from_metadata() {
        let p = Profile::from_metadata(
            r#"{"name":"alice","display_name":" Alice A. ","picture":"https://img.example/a.png"}"#,
        );
        assert_eq!(p.name.as_deref(), Some("Alice A."));
        assert_eq!(p.picture.as_deref(), Some("https://img.example/a.png"));
        let p = Profile::from_metadata(r#"{"name":"bob\nsmith","picture":"http://x/a.png"}"#);
        assert_eq!(p.name.as_deref(), Some("bob smith"));
        assert_eq!(p.picture, None, "only https pictures");
        for bad in ["", "[]", "not json", r#"{"name":42}"#, r#"{"name":"  "}"#] {
            assert_eq!(Profile::from_metadata(bad), Profile::default(), "{bad}");
        }
        let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(500));
        assert_eq!(
            Profile::from_metadata(&long).name.unwrap().chars().count(),
            MAX_NAME
        );
    }

    #[test]
    fn only_plain_https_urls_are_images() {
        assert!(https_image("https://a.example/x.jpg?s=1").is_some());
        for bad in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "http://a.example/x.jpg",
            "https://",
            "https:///x",
            "https://a.example/x\" onerror=\"alert(1)",
            "https://a.example/x y",
            "//a.example/x.jpg",
            " https://a.example/x.jpg",
        ] {
            assert_eq!(https_image(bad), None, "{bad}");
        }
        assert_eq!(
            https_image(&format!("https://a.b/{}", "x".repeat(3_000))),
            None
        );
    }

    #[test]
    fn initials_or_key() {
        let key = Pubkey([0xab; 32]);
        let p = Profile {
            name: Some("ada lovelace".into()),
            picture: None,
        };
        assert_eq!(p.initials(&key), "AL");
        assert_eq!(Profile::default().initials(&key), "ab");
        let p = Profile {
            name: Some("🙂🙂".into()),
            picture: None,
        };
        assert_eq!(p.initials(&key), "ab");
        assert_eq!(Profile::default().shown_name(&key), short_npub(&key));
    }
}
