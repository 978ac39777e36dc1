//! The owned Nostr event: parsing entry points, serialization, id hashing and verification.

use secp256k1::global::SECP256K1;
use secp256k1::{XOnlyPublicKey, schnorr};

use super::canonical::{self, IdForm, Parts};
use super::error::{EventError, EventErrorKind};
use super::event_ref::TagField;
use super::json;
use super::limits::Limits;
use super::types::{EventId, KindClass, Pubkey, Signature, parse_decimal_u64};

/// A NIP-01 event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// sha256 of the id serialization, in either [`IdForm`] (see [`Event::id_form`]).
    pub id: EventId,
    /// The author's x-only public key.
    pub pubkey: Pubkey,
    /// Unix timestamp in seconds, as claimed by the author.
    pub created_at: u64,
    /// The event kind.
    pub kind: u16,
    /// Tags: each an array of strings, conventionally a name followed by values.
    pub tags: Vec<Vec<String>>,
    /// Arbitrary UTF-8 content.
    pub content: String,
    /// BIP-340 signature of `id` by `pubkey`.
    pub sig: Signature,
}

impl Event {
    /// Parses a NIP-01 event object strictly: all seven fields required, duplicates rejected,
    /// unknown fields ignored, hex lowercase and of exact length, integers in range.
    /// Applies no size limits and does not check the id or signature.
    pub fn from_json(json: &str) -> Result<Event, EventError> {
        json::parse_event(json)
    }

    /// Like [`Event::from_json`], enforcing `limits`: the input size before parsing, then the tag
    /// count, each tag field's length and the content length.
    pub fn from_json_with(json: &str, limits: &Limits) -> Result<Event, EventError> {
        limits.check_event_size(json.len())?;
        let event = json::parse_event(json)?;
        limits.check_tags_and_content(&event.tags, &event.content)?;
        Ok(event)
    }

    /// Checks an event built in code against `limits`: serialized size, tag count, tag field
    /// lengths, content length.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), EventError> {
        limits.check_event_size(self.json_len())?;
        limits.check_tags_and_content(&self.tags, &self.content)
    }

    /// Everything the serializers need, with tags viewed as text fields.
    fn parts(&self) -> Parts<'_, impl Iterator<Item = impl Iterator<Item = TagField<'_>>> + Clone> {
        Parts {
            id: self.id,
            pubkey: self.pubkey,
            created_at: self.created_at,
            kind: self.kind,
            tags: self
                .tags
                .iter()
                .map(|tag| tag.iter().map(|field| TagField::Text(field))),
            content: &self.content,
            sig: self.sig,
        }
    }

    /// Appends the compact NIP-01 JSON object to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        canonical::write_json(out, self.parts());
    }

    /// The compact NIP-01 JSON object.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.json_len());
        canonical::write_json(&mut out, self.parts());
        // The writer copies valid UTF-8 strings and adds only ASCII, so this never fails.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The exact byte length of [`Event::to_json`], computed without allocating.
    pub fn json_len(&self) -> usize {
        canonical::json_len(self.parts())
    }

    /// sha256 of the NIP-01 serialization `[0,"<pubkey>",<created_at>,<kind>,<tags>,"<content>"]`
    /// as NIP-01's text writes it ([`IdForm::Nip01`]); [`Keys::sign`](super::Keys::sign) signs
    /// this form.
    pub fn compute_id(&self) -> EventId {
        self.compute_id_as(IdForm::Nip01)
    }

    /// sha256 of the id serialization in `form`.
    pub fn compute_id_as(&self, form: IdForm) -> EventId {
        canonical::compute_id(self.parts(), form)
    }

    /// Whether a string of the event holds a character the two [`IdForm`]s write differently
    /// (a control character below U+0020 other than `\n \r \t \b \f`). Without one, both
    /// forms are the same bytes and hash alike.
    pub(crate) fn id_forms_differ(&self) -> bool {
        canonical::forms_differ(&self.content)
            || self
                .tags
                .iter()
                .flatten()
                .any(|field| canonical::forms_differ(field))
    }

    /// Which serialization `id` is the hash of: [`IdForm::Nip01`] is tried first; the JSON form
    /// is hashed only when that fails and the event holds a character the forms write
    /// differently. `None` if neither matches.
    pub fn id_form(&self) -> Option<IdForm> {
        if self.compute_id() == self.id {
            Some(IdForm::Nip01)
        } else if self.id_forms_differ() && self.compute_id_as(IdForm::JsonEscaped) == self.id {
            Some(IdForm::JsonEscaped)
        } else {
            None
        }
    }

    /// Checks that `id` is the hash of the event in either [`IdForm`] (see [`Event::id_form`]).
    pub fn verify_id(&self) -> Result<(), EventError> {
        match self.id_form() {
            Some(_) => Ok(()),
            None => Err(EventError::new(
                EventErrorKind::BadId,
                "id does not match the event's sha256 hash",
            )),
        }
    }

    /// Checks the BIP-340 signature over `id` (as given, not recomputed) with `pubkey`.
    pub fn verify_signature(&self) -> Result<(), EventError> {
        verify_schnorr(&self.id, &self.pubkey, &self.sig)
    }

    /// Checks the id, then the signature.
    pub fn verify(&self) -> Result<(), EventError> {
        self.verify_id()?;
        self.verify_signature()
    }

    /// How relays treat this event's kind.
    pub fn kind_class(&self) -> KindClass {
        KindClass::of(self.kind)
    }

    /// `tag[1]` of the first tag whose `tag[0]` is `name` (None if there is no such tag or it
    /// has no value).
    pub fn tag_value(&self, name: &str) -> Option<&str> {
        let tag = self
            .tags
            .iter()
            .find(|tag| tag.first().is_some_and(|n| n == name))?;
        tag.get(1).map(String::as_str)
    }

    /// The value of the first `d` tag, or "" (the NIP-01 address component).
    pub fn d_tag(&self) -> &str {
        self.tag_value("d").unwrap_or_default()
    }

    /// The value of the first `expiration` tag whose value is a plain decimal u64 (NIP-40).
    pub fn expiration(&self) -> Option<u64> {
        self.tags.iter().find_map(|tag| match tag.as_slice() {
            [name, value, ..] if name == "expiration" => parse_decimal_u64(value.as_bytes()),
            _ => None,
        })
    }
}

/// BIP-340 verification of `sig` over the 32-byte `id` with the x-only `pubkey`.
pub(crate) fn verify_schnorr(
    id: &EventId,
    pubkey: &Pubkey,
    sig: &Signature,
) -> Result<(), EventError> {
    let key = XOnlyPublicKey::from_byte_array(pubkey.0).map_err(|_| {
        EventError::new(
            EventErrorKind::BadSignature,
            "pubkey is not a valid secp256k1 x-only public key",
        )
    })?;
    let signature = schnorr::Signature::from_byte_array(sig.0);
    SECP256K1
        .verify_schnorr(&signature, id.as_bytes(), &key)
        .map_err(|_| {
            EventError::new(
                EventErrorKind::BadSignature,
                "signature verification failed",
            )
        })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::event::Keys;

    fn strings(fields: &[&str]) -> Vec<String> {
        fields.iter().map(|s| (*s).to_owned()).collect()
    }

    fn signed(tags: Vec<Vec<String>>, content: &str) -> Event {
        Keys::from_seed(42).sign(1_700_000_000, 1, tags, content.to_owned())
    }

    #[test]
    fn canonical_hash_matches_hand_built_reference() {
        let content = "a\u{1}b\u{2028}c\"d\\e\nf\t\r\u{8}\u{c}\u{1f}é";
        let tags = vec![
            strings(&["t", "x\"y\u{1}"]),
            vec![],
            strings(&["e", &"ab".repeat(32)]),
        ];
        let event = signed(tags, content);
        // Reference built independently: NIP-01 escapes exactly these seven characters.
        let reference = format!(
            "[0,\"{}\",1700000000,1,[[\"t\",\"x\\\"y\u{1}\"],[],[\"e\",\"{}\"]],\"{}\"]",
            event.pubkey.to_hex(),
            "ab".repeat(32),
            "a\u{1}b\u{2028}c\\\"d\\\\e\\nf\\t\\r\\b\\f\u{1f}é"
        );
        let expected = EventId(Sha256::digest(reference.as_bytes()).into());
        assert_eq!(event.compute_id(), expected);
        assert_eq!(event.id, expected);
        event.verify().unwrap();
    }

    #[test]
    fn canonical_hash_of_the_brief_example() {
        let event = signed(vec![], "\u{1}\u{2028}\"\\\n");
        let reference = format!(
            "[0,\"{}\",1700000000,1,[],\"\u{1}\u{2028}\\\"\\\\\\n\"]",
            event.pubkey.to_hex()
        );
        assert_eq!(
            event.compute_id(),
            EventId(Sha256::digest(reference.as_bytes()).into())
        );
    }

    /// `event` re-signed over the serialization `text` (built by the caller, independently).
    fn signed_over(mut event: Event, text: &str) -> Event {
        event.id = EventId(Sha256::digest(text.as_bytes()).into());
        event.sig = Keys::from_seed(42).sign_id(&event.id);
        event
    }

    #[test]
    fn either_id_form_verifies() {
        let tags = vec![strings(&["t", "a\u{7}b"])];
        let content = "x\u{0}\u{1f}\u{7f}\n";
        let nip01 = signed(tags.clone(), content);
        let pubkey = nip01.pubkey.to_hex();
        assert_eq!(nip01.id_form(), Some(IdForm::Nip01));
        // The form nostr-tools and rust-nostr hash, written by hand.
        let json_text = format!(
            "[0,\"{pubkey}\",1700000000,1,[[\"t\",\"a\\u0007b\"]],\"x\\u0000\\u001f\u{7f}\\n\"]"
        );
        let json = signed_over(nip01.clone(), &json_text);
        assert_ne!(json.id, nip01.id);
        assert_eq!(json.compute_id_as(IdForm::JsonEscaped), json.id);
        assert_eq!(json.id_form(), Some(IdForm::JsonEscaped));
        json.verify().unwrap();
        // Both serialize to the same JSON object apart from id and sig.
        assert_eq!(
            json.to_json()
                .replace(&json.id.to_hex(), "")
                .replace(&json.sig.to_hex(), ""),
            nip01
                .to_json()
                .replace(&nip01.id.to_hex(), "")
                .replace(&nip01.sig.to_hex(), "")
        );

        // Uppercase hex is neither form.
        let upper = signed_over(nip01.clone(), &json_text.replace("\\u001f", "\\u001F"));
        assert_eq!(upper.id_form(), None);
        let e = upper.verify().unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadId);
        assert!(e.to_string().starts_with("invalid: "), "{e}");

        // Without a character the forms write differently there is one serialization, and the
        // JSON form is not tried: a hash of anything else is refused.
        let plain = signed(vec![], "tab\there\u{7f}");
        assert!(!plain.id_forms_differ());
        assert_eq!(plain.compute_id_as(IdForm::JsonEscaped), plain.id);
        let other = signed_over(plain, "not the serialization");
        assert_eq!(other.id_form(), None);
    }

    #[test]
    fn id_forms_differ_looks_at_content_and_every_tag_field() {
        assert!(!signed(vec![strings(&["t", "\n"])], "\t\u{7f}").id_forms_differ());
        assert!(signed(vec![], "\u{1}").id_forms_differ());
        assert!(signed(vec![strings(&["t", "x", "\u{1b}"])], "").id_forms_differ());
        assert!(signed(vec![vec![], strings(&["\u{0}"])], "").id_forms_differ());
    }

    #[test]
    fn json_output_is_compact_ordered_and_escaped() {
        let event = signed(vec![strings(&["p", "q\u{0}"])], "line\nctl\u{1}\u{7f}");
        let json = event.to_json();
        let expected = format!(
            "{{\"id\":\"{}\",\"pubkey\":\"{}\",\"created_at\":1700000000,\"kind\":1,\
             \"tags\":[[\"p\",\"q\\u0000\"]],\"content\":\"line\\nctl\\u0001\u{7f}\",\"sig\":\"{}\"}}",
            event.id, event.pubkey, event.sig
        );
        assert_eq!(json, expected);
        assert_eq!(event.json_len(), json.len());
        let mut out = b"prefix".to_vec();
        event.write_json(&mut out);
        assert_eq!(&out[6..], json.as_bytes());
        assert_eq!(Event::from_json(&json).unwrap(), event);
    }

    #[test]
    fn verification_failures() {
        let event = signed(vec![], "hi");
        event.verify().unwrap();

        let mut wrong_content = event.clone();
        wrong_content.content.push('!');
        let e = wrong_content.verify().unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadId);
        assert_eq!(e.message(), "id does not match the event's sha256 hash");
        // The signature is over the stored id, which is unchanged.
        wrong_content.verify_signature().unwrap();

        let mut wrong_sig = event.clone();
        wrong_sig.sig.0[0] ^= 1;
        let e = wrong_sig.verify().unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadSignature);
        assert_eq!(e.message(), "signature verification failed");

        let mut other_key = event.clone();
        other_key.pubkey = Keys::from_seed(43).pubkey();
        other_key.id = other_key.compute_id();
        assert_eq!(
            other_key.verify().unwrap_err().kind(),
            EventErrorKind::BadSignature
        );

        // x = 5 is not on secp256k1 (5^3 + 7 = 132 is not a square mod p).
        let mut bad_point = event;
        bad_point.pubkey = Pubkey([0; 32]);
        bad_point.pubkey.0[31] = 5;
        let e = bad_point.verify_signature().unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadSignature);
        assert!(e.message().contains("not a valid secp256k1"), "{e}");
    }

    #[test]
    fn tag_accessors() {
        let event = signed(
            vec![
                strings(&["e"]),
                strings(&["d", "slug"]),
                strings(&["d", "second"]),
                strings(&["expiration", "soon"]),
                strings(&["expiration", "+5"]),
                strings(&["expiration", "1800000000"]),
                strings(&["expiration", "5"]),
            ],
            "",
        );
        assert_eq!(event.tag_value("d"), Some("slug"));
        assert_eq!(event.tag_value("e"), None);
        assert_eq!(event.tag_value("x"), None);
        assert_eq!(event.d_tag(), "slug");
        assert_eq!(event.expiration(), Some(1_800_000_000));

        let bare = signed(vec![strings(&["expiration"])], "");
        assert_eq!(bare.d_tag(), "");
        assert_eq!(bare.expiration(), None);
        assert_eq!(signed(vec![strings(&["d"])], "").d_tag(), "");
    }

    #[test]
    fn kind_class_follows_kind() {
        let mut event = signed(vec![], "");
        assert_eq!(event.kind_class(), KindClass::Regular);
        event.kind = 30_023;
        assert_eq!(event.kind_class(), KindClass::Addressable);
    }

    #[test]
    fn check_limits_on_built_events() {
        let event = signed(vec![strings(&["t", "abcd"])], "hello");
        event.check_limits(&Limits::default()).unwrap();
        let exact = Limits {
            max_event_bytes: event.json_len(),
            ..Limits::default()
        };
        event.check_limits(&exact).unwrap();
        let tight = Limits {
            max_event_bytes: event.json_len() - 1,
            ..Limits::default()
        };
        assert_eq!(
            event.check_limits(&tight).unwrap_err().kind(),
            EventErrorKind::TooLarge
        );
        let short_tags = Limits {
            max_tag_value_bytes: 3,
            ..Limits::default()
        };
        assert_eq!(
            event.check_limits(&short_tags).unwrap_err().kind(),
            EventErrorKind::TagTooLong
        );
        let no_tags = Limits {
            max_tags: 0,
            ..Limits::default()
        };
        assert_eq!(
            event.check_limits(&no_tags).unwrap_err().kind(),
            EventErrorKind::TooManyTags
        );
        let short_content = Limits {
            max_content_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            event.check_limits(&short_content).unwrap_err().kind(),
            EventErrorKind::TooLarge
        );
    }
}
