//! Access rules: a TOML file that says who may publish what and who may
//! read what (see docs/server.md, "Access rules"). The relay loads it at
//! start, and again on SIGHUP or when the file changes; a subscription that
//! loses its right at a reload is CLOSED with `restricted:` (or
//! `auth-required:`), without a reconnect.
//!
//! Who: a publish is judged by the event's author (and, with
//! `auth_required.write`, the connection must have proved that key with
//! NIP-42); a read by the keys the connection proved. Pubkeys are given as
//! hex or `npub`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use megalith::event::{Pubkey, nip19};

use megalith::{Event, Filter};

use super::bucket::TokenBucket;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    auth_required: AuthRequiredSpec,
    #[serde(default)]
    write: WriteSpec,
    #[serde(default)]
    read: ReadSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthRequiredSpec {
    #[serde(default)]
    read: bool,
    #[serde(default)]
    write: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WriteSpec {
    deny_pubkeys: Vec<String>,
    allow_pubkeys: Option<Vec<String>>,
    kinds: KindsSpec,
    deny_kinds: Vec<KindItem>,
    max_event_bytes: Option<usize>,
    events_per_minute: Option<f64>,
    grant: Vec<WriteGrantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteGrantSpec {
    pubkeys: Vec<String>,
    #[serde(default)]
    kinds: KindsSpec,
    #[serde(default)]
    deny_kinds: Vec<KindItem>,
    max_event_bytes: Option<usize>,
    events_per_minute: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReadSpec {
    deny_pubkeys: Vec<String>,
    allow_pubkeys: Option<Vec<String>>,
    kinds: KindsSpec,
    deny_kinds: Vec<KindItem>,
    tags: Option<Vec<String>>,
    grant: Vec<ReadGrantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadGrantSpec {
    pubkeys: Vec<String>,
    #[serde(default)]
    kinds: KindsSpec,
    #[serde(default)]
    deny_kinds: Vec<KindItem>,
    tags: Option<Vec<String>>,
}

/// `"any"` or a list of kinds and ranges.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KindsSpec {
    Word(String),
    List(Vec<KindItem>),
}

impl Default for KindsSpec {
    fn default() -> KindsSpec {
        KindsSpec::Word("any".to_string())
    }
}

/// A kind (`1`) or an inclusive range (`"30000-39999"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KindItem {
    One(u16),
    Range(String),
}

/// A set of kinds: every kind, or ranges.
#[derive(Debug, Clone, PartialEq)]
struct KindSet {
    any: bool,
    ranges: Vec<(u16, u16)>,
}

impl KindSet {
    fn contains(&self, kind: u16) -> bool {
        self.any
            || self
                .ranges
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&kind))
    }

    fn parse(spec: &KindsSpec, what: &str) -> Result<KindSet, String> {
        match spec {
            KindsSpec::Word(word) if word == "any" => Ok(KindSet {
                any: true,
                ranges: Vec::new(),
            }),
            KindsSpec::Word(word) => Err(format!(
                "{what}: \"{word}\" is neither \"any\" nor a list of kinds"
            )),
            KindsSpec::List(items) => KindSet::list(items, what),
        }
    }

    fn list(items: &[KindItem], what: &str) -> Result<KindSet, String> {
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            ranges.push(match item {
                KindItem::One(kind) => (*kind, *kind),
                KindItem::Range(text) => {
                    let bad = || {
                        format!("{what}: \"{text}\" is not a kind or a range like \"30000-39999\"")
                    };
                    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
                    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                    if lo > hi {
                        return Err(bad());
                    }
                    (lo, hi)
                }
            });
        }
        Ok(KindSet { any: false, ranges })
    }
}

fn pubkeys(values: &[String], what: &str) -> Result<HashSet<Pubkey>, String> {
    values
        .iter()
        .map(|value| {
            let value = value.trim();
            nip19::parse_pubkey(value)
                .map_err(|e| format!("{what}: \"{value}\" is not a pubkey (hex or npub): {e}"))
        })
        .collect()
}

/// What may be published, for some authors.
#[derive(Debug, Clone)]
struct WriteTerms {
    kinds: KindSet,
    deny_kinds: KindSet,
    max_event_bytes: Option<usize>,
    /// Per author, relay-wide.
    events_per_minute: Option<f64>,
}

/// What may be read, for some readers.
#[derive(Debug, Clone)]
struct ReadTerms {
    kinds: KindSet,
    deny_kinds: KindSet,
    /// Tag letters a filter may use (`None`: any).
    tags: Option<HashSet<String>>,
}

impl ReadTerms {
    fn may_read(&self, kind: u16) -> bool {
        self.kinds.contains(kind) && !self.deny_kinds.contains(kind)
    }
}

/// The rules, parsed and checked.
#[derive(Debug, Clone)]
pub struct Rules {
    auth_read: bool,
    auth_write: bool,
    write_deny: HashSet<Pubkey>,
    write_allow: Option<HashSet<Pubkey>>,
    write_default: WriteTerms,
    write_grants: Vec<(HashSet<Pubkey>, WriteTerms)>,
    read_deny: HashSet<Pubkey>,
    read_allow: Option<HashSet<Pubkey>>,
    read_default: ReadTerms,
    read_grants: Vec<(HashSet<Pubkey>, ReadTerms)>,
}

impl Default for Rules {
    /// No rules: anyone may publish and read anything (the relay's limits
    /// still apply).
    fn default() -> Rules {
        Rules::parse("").expect("the empty rules file is valid")
    }
}

/// Why a publish or a read is refused: the message, with its prefix.
pub type Refusal = String;

impl Rules {
    /// Parses a rules file's text; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let write_terms = |kinds: &KindsSpec,
                           deny: &[KindItem],
                           max: Option<usize>,
                           rate: Option<f64>,
                           what: &str|
         -> Result<WriteTerms, String> {
            if let Some(rate) = rate
                && !(rate > 0.0 && rate.is_finite())
            {
                return Err(format!(
                    "{what}.events_per_minute must be a positive number"
                ));
            }
            if max == Some(0) {
                return Err(format!("{what}.max_event_bytes must be at least 1"));
            }
            Ok(WriteTerms {
                kinds: KindSet::parse(kinds, &format!("{what}.kinds"))?,
                deny_kinds: KindSet::list(deny, &format!("{what}.deny_kinds"))?,
                max_event_bytes: max,
                events_per_minute: rate,
            })
        };
        let read_terms = |kinds: &KindsSpec,
                          deny: &[KindItem],
                          tags: &Option<Vec<String>>,
                          what: &str|
         -> Result<ReadTerms, String> {
            let tags = match tags {
                None => None,
                Some(tags) => {
                    let mut set = HashSet::new();
                    for tag in tags {
                        if tag.chars().count() != 1 {
                            return Err(format!(
                                "{what}.tags: \"{tag}\" is not a single-letter tag name"
                            ));
                        }
                        set.insert(tag.clone());
                    }
                    Some(set)
                }
            };
            Ok(ReadTerms {
                kinds: KindSet::parse(kinds, &format!("{what}.kinds"))?,
                deny_kinds: KindSet::list(deny, &format!("{what}.deny_kinds"))?,
                tags,
            })
        };
        let w = &file.write;
        let r = &file.read;
        let mut write_grants = Vec::new();
        for (i, g) in w.grant.iter().enumerate() {
            let what = format!("write.grant[{i}]");
            write_grants.push((
                pubkeys(&g.pubkeys, &format!("{what}.pubkeys"))?,
                write_terms(
                    &g.kinds,
                    &g.deny_kinds,
                    g.max_event_bytes,
                    g.events_per_minute,
                    &what,
                )?,
            ));
        }
        let mut read_grants = Vec::new();
        for (i, g) in r.grant.iter().enumerate() {
            let what = format!("read.grant[{i}]");
            read_grants.push((
                pubkeys(&g.pubkeys, &format!("{what}.pubkeys"))?,
                read_terms(&g.kinds, &g.deny_kinds, &g.tags, &what)?,
            ));
        }
        Ok(Rules {
            auth_read: file.auth_required.read,
            auth_write: file.auth_required.write,
            write_deny: pubkeys(&w.deny_pubkeys, "write.deny_pubkeys")?,
            write_allow: w
                .allow_pubkeys
                .as_ref()
                .map(|list| pubkeys(list, "write.allow_pubkeys"))
                .transpose()?,
            write_default: write_terms(
                &w.kinds,
                &w.deny_kinds,
                w.max_event_bytes,
                w.events_per_minute,
                "write",
            )?,
            write_grants,
            read_deny: pubkeys(&r.deny_pubkeys, "read.deny_pubkeys")?,
            read_allow: r
                .allow_pubkeys
                .as_ref()
                .map(|list| pubkeys(list, "read.allow_pubkeys"))
                .transpose()?,
            read_default: read_terms(&r.kinds, &r.deny_kinds, &r.tags, "read")?,
            read_grants,
        })
    }

    /// Whether reads need an authenticated connection.
    pub fn auth_required_for_reads(&self) -> bool {
        self.auth_read
    }

    /// Whether some publishing is refused by rule (NIP-11's
    /// `restricted_writes`).
    pub fn restricts_writes(&self) -> bool {
        let open = |t: &WriteTerms| {
            t.kinds.any && t.deny_kinds.ranges.is_empty() && t.max_event_bytes.is_none()
        };
        self.auth_write
            || !self.write_deny.is_empty()
            || self.write_allow.is_some()
            || !open(&self.write_default)
    }

    /// Whether publishing needs a connection authenticated as the author.
    pub fn auth_required_for_writes(&self) -> bool {
        self.auth_write
    }

    /// The terms for publishing as `author`, or why it may not publish at
    /// all.
    fn write_terms(&self, author: &Pubkey) -> Result<&WriteTerms, Refusal> {
        if self.write_deny.contains(author) {
            return Err("restricted: this author may not publish here".to_string());
        }
        if let Some((_, terms)) = self
            .write_grants
            .iter()
            .find(|(who, _)| who.contains(author))
        {
            return Ok(terms);
        }
        if let Some(allow) = &self.write_allow
            && !allow.contains(author)
        {
            return Err("restricted: only listed authors may publish here".to_string());
        }
        Ok(&self.write_default)
    }

    /// Whether `event` (`size` bytes of JSON) may be published on a
    /// connection that proved `keys`; the per-author rate is `rates`'.
    pub fn check_write(
        &self,
        event: &Event,
        size: usize,
        keys: &[Pubkey],
        rates: &AuthorRates,
    ) -> Result<(), Refusal> {
        if self.auth_write && !keys.contains(&event.pubkey) {
            return Err(if keys.is_empty() {
                "auth-required: publishing here needs AUTH as the event's author".to_string()
            } else {
                "restricted: publishing here needs AUTH as the event's author, \
                 and this connection proved other keys"
                    .to_string()
            });
        }
        let terms = self.write_terms(&event.pubkey)?;
        if !terms.kinds.contains(event.kind) || terms.deny_kinds.contains(event.kind) {
            return Err(format!(
                "restricted: events of kind {} may not be published here",
                event.kind
            ));
        }
        if let Some(max) = terms.max_event_bytes
            && size > max
        {
            return Err(format!(
                "restricted: events over {max} bytes may not be published here ({size} bytes)"
            ));
        }
        // Only a signed event spends its author's rate: a forged one must
        // not use up someone else's.
        if let Some(per_minute) = terms.events_per_minute
            && event.verify().is_ok()
            && !rates.take(event.pubkey, per_minute)
        {
            return Err(format!(
                "rate-limited: this author may publish {per_minute} events per minute here"
            ));
        }
        Ok(())
    }

    /// The terms for a connection that proved `keys`, or why it may not
    /// read at all.
    fn read_terms(&self, keys: &[Pubkey]) -> Result<&ReadTerms, Refusal> {
        if self.auth_read && keys.is_empty() {
            return Err(
                "auth-required: this relay serves only authenticated clients; send AUTH first"
                    .to_string(),
            );
        }
        if keys.iter().any(|k| self.read_deny.contains(k)) {
            return Err("restricted: this key may not read here".to_string());
        }
        if let Some((_, terms)) = self
            .read_grants
            .iter()
            .find(|(who, _)| keys.iter().any(|k| who.contains(k)))
        {
            return Ok(terms);
        }
        if let Some(allow) = &self.read_allow
            && !keys.iter().any(|k| allow.contains(k))
        {
            return Err(if keys.is_empty() {
                "auth-required: only listed keys may read here; send AUTH first".to_string()
            } else {
                "restricted: only listed keys may read here".to_string()
            });
        }
        Ok(&self.read_default)
    }

    /// Whether a connection that proved `keys` may ask `filters`: the
    /// kinds they name and the tags they filter on must be open to it.
    /// (Events of kinds it may not read are also never delivered to it:
    /// [`Rules::may_read`].)
    pub fn check_read(&self, filters: &[Filter], keys: &[Pubkey]) -> Result<(), Refusal> {
        let terms = self.read_terms(keys)?;
        for filter in filters {
            if let Some(kinds) = &filter.kinds
                && let Some(kind) = kinds.iter().find(|&&k| !terms.may_read(k))
            {
                return Err(format!(
                    "restricted: events of kind {kind} are not served here"
                ));
            }
            if let Some(tags) = &terms.tags
                && let Some(name) = filter
                    .tags
                    .keys()
                    .map(|&name| char::from(name))
                    .find(|name| !tags.contains(&name.to_string()))
            {
                return Err(format!(
                    "restricted: filters on #{name} are not served here"
                ));
            }
        }
        Ok(())
    }

    /// Whether an event of `kind` may be sent to a connection that proved
    /// `keys`.
    pub fn may_read(&self, kind: u16, keys: &[Pubkey]) -> bool {
        self.read_terms(keys)
            .is_ok_and(|terms| terms.may_read(kind))
    }
}

/// Per-author publishing rates (`events_per_minute`), relay-wide, kept
/// across reloads: a token bucket per author, one minute's worth deep.
#[derive(Debug, Default)]
pub struct AuthorRates {
    buckets: Mutex<HashMap<Pubkey, TokenBucket>>,
}

/// Authors tracked before full (idle) buckets are dropped.
const MAX_TRACKED_AUTHORS: usize = 100_000;

impl AuthorRates {
    fn take(&self, author: Pubkey, per_minute: f64) -> bool {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED_AUTHORS && !buckets.contains_key(&author) {
            // A full bucket is the same as none.
            buckets.retain(|_, bucket| !bucket.is_full());
        }
        let bucket = buckets
            .entry(author)
            .or_insert_with(|| TokenBucket::new(per_minute / 60.0, per_minute));
        // The terms may have changed at a reload.
        bucket.set_rate(per_minute / 60.0, per_minute);
        bucket.try_take(1.0)
    }
}

/// The rules in force, where they come from, and how often they changed.
#[derive(Debug)]
pub struct RulesHandle {
    path: Option<PathBuf>,
    current: RwLock<Arc<Rules>>,
    /// The file's modification time when last loaded.
    loaded_mtime: Mutex<Option<SystemTime>>,
    pub rates: AuthorRates,
}

impl RulesHandle {
    /// Loads the rules file (`None`: no rules).
    pub fn load(path: Option<&Path>) -> Result<RulesHandle, String> {
        let handle = RulesHandle {
            path: path.map(Path::to_path_buf),
            ..RulesHandle::open()
        };
        handle.reload()?;
        Ok(handle)
    }

    /// No rules: everything allowed.
    pub fn open() -> RulesHandle {
        RulesHandle {
            path: None,
            current: RwLock::new(Arc::new(Rules::default())),
            loaded_mtime: Mutex::new(None),
            rates: AuthorRates::default(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn current(&self) -> Arc<Rules> {
        Arc::clone(&self.current.read())
    }

    /// Reads the file again; on an error the rules in force stay.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        // Looked at, whatever comes of it: a broken file is reported once,
        // not at every poll, and read again when it changes.
        *self.loaded_mtime.lock() = mtime;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("rules file {}: {e}", path.display()))?;
        let rules =
            Rules::parse(&text).map_err(|e| format!("rules file {}: {e}", path.display()))?;
        *self.current.write() = Arc::new(rules);
        Ok(())
    }

    /// Whether the file's modification time differs from the loaded one.
    pub fn changed_on_disk(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        mtime != *self.loaded_mtime.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megalith::Keys;

    #[test]
    fn the_empty_file_allows_everything() {
        let rules = Rules::parse("").unwrap();
        let keys = Keys::from_seed(1);
        let event = keys.sign(1, 4, vec![], String::new());
        assert!(
            rules
                .check_write(&event, 100, &[], &AuthorRates::default())
                .is_ok()
        );
        assert!(
            rules
                .check_read(&[Filter::new().kinds([1, 4])], &[])
                .is_ok()
        );
        assert!(rules.may_read(30023, &[]));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[write]\nkinds = \"all\"", "write.kinds"),
            ("[write]\nkinds = [\"9-1\"]", "write.kinds"),
            ("[read]\ndeny_pubkeys = [\"abc\"]", "read.deny_pubkeys"),
            ("[read]\ntags = [\"ee\"]", "read.tags"),
            ("[write]\nevents_per_minute = 0.0", "events_per_minute"),
            ("[writes]\n", "writes"),
            ("[[write.grant]]\nkinds = [1]", "pubkeys"),
        ] {
            let error = Rules::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn writes_follow_deny_grants_allow_then_the_defaults() {
        let banned = Keys::from_seed(1);
        let member = Keys::from_seed(2);
        let stranger = Keys::from_seed(3);
        let text = format!(
            r#"
            [write]
            deny_pubkeys = ["{banned}"]
            allow_pubkeys = []
            kinds = [1, 7, "30000-39999"]
            deny_kinds = [30001]
            max_event_bytes = 500

            [[write.grant]]
            pubkeys = ["{member}"]
            kinds = "any"
            events_per_minute = 2
            "#,
            banned = banned.pubkey().to_hex(),
            member = nip19::encode_npub(&member.pubkey()),
        );
        let rules = Rules::parse(&text).unwrap();
        let rates = AuthorRates::default();
        let check = |keys: &Keys, kind: u16, size: usize| {
            let event = keys.sign(1, kind, vec![], String::new());
            rules.check_write(&event, size, &[], &rates)
        };
        assert!(
            check(&banned, 1, 10)
                .unwrap_err()
                .starts_with("restricted:")
        );
        assert!(
            check(&stranger, 1, 10)
                .unwrap_err()
                .starts_with("restricted:")
        );
        // The member's grant: any kind, any size, two a minute.
        assert!(check(&member, 4, 10_000).is_ok());
        assert!(check(&member, 1, 10).is_ok());
        assert!(
            check(&member, 1, 10)
                .unwrap_err()
                .starts_with("rate-limited:")
        );
        let open = Rules::parse(
            "[write]\nkinds = [1, 7, \"30000-39999\"]\ndeny_kinds = [30001]\nmax_event_bytes = 500",
        )
        .unwrap();
        let check = |kind: u16, size: usize| {
            let event = stranger.sign(1, kind, vec![], String::new());
            open.check_write(&event, size, &[], &rates)
        };
        assert!(check(1, 500).is_ok());
        assert!(check(30023, 10).is_ok());
        assert!(check(30001, 10).unwrap_err().contains("kind 30001"));
        assert!(check(4, 10).unwrap_err().contains("kind 4"));
        assert!(check(1, 501).unwrap_err().contains("over 500 bytes"));
    }

    #[test]
    fn auth_required_for_writes_means_as_the_author() {
        let rules = Rules::parse("[auth_required]\nwrite = true").unwrap();
        let author = Keys::from_seed(1);
        let other = Keys::from_seed(2);
        let event = author.sign(1, 1, vec![], String::new());
        let rates = AuthorRates::default();
        let refused = rules.check_write(&event, 10, &[], &rates).unwrap_err();
        assert!(refused.starts_with("auth-required:"), "{refused}");
        let refused = rules
            .check_write(&event, 10, &[other.pubkey()], &rates)
            .unwrap_err();
        assert!(refused.starts_with("restricted:"), "{refused}");
        assert!(
            rules
                .check_write(&event, 10, &[author.pubkey()], &rates)
                .is_ok()
        );
    }

    #[test]
    fn reads_check_named_kinds_tags_and_readers() {
        let reader = Keys::from_seed(5).pubkey();
        let banned = Keys::from_seed(6).pubkey();
        let text = format!(
            r#"
            [read]
            deny_pubkeys = ["{banned}"]
            kinds = [0, 1, 3, 7]
            tags = ["e", "p"]

            [[read.grant]]
            pubkeys = ["{reader}"]
            kinds = "any"
            deny_kinds = [4]
            "#,
            banned = banned.to_hex(),
            reader = reader.to_hex(),
        );
        let rules = Rules::parse(&text).unwrap();
        let kinds = |k: &[u16]| Filter::new().kinds(k.iter().copied());
        assert!(rules.check_read(&[kinds(&[1, 7])], &[]).is_ok());
        let refused = rules.check_read(&[kinds(&[1, 30023])], &[]).unwrap_err();
        assert!(refused.contains("kind 30023"), "{refused}");
        let refused = rules
            .check_read(&[Filter::new().tag('t', ["nostr"])], &[])
            .unwrap_err();
        assert!(refused.contains("#t"), "{refused}");
        assert!(
            rules
                .check_read(&[Filter::new().tag('p', ["x"])], &[])
                .is_ok()
        );
        assert!(!rules.may_read(30023, &[]));
        assert!(rules.may_read(1, &[]));
        // The grant: any kind but 4, any tag.
        assert!(rules.check_read(&[kinds(&[30023])], &[reader]).is_ok());
        assert!(rules.check_read(&[kinds(&[4])], &[reader]).is_err());
        assert!(rules.may_read(30023, &[reader]));
        assert!(!rules.may_read(4, &[reader]));
        let refused = rules.check_read(&[kinds(&[1])], &[banned]).unwrap_err();
        assert!(refused.starts_with("restricted:"), "{refused}");
        let members = Rules::parse(&format!(
            "[read]\nallow_pubkeys = [\"{}\"]",
            reader.to_hex()
        ))
        .unwrap();
        let refused = members.check_read(&[kinds(&[1])], &[]).unwrap_err();
        assert!(refused.starts_with("auth-required:"), "{refused}");
        let refused = members.check_read(&[kinds(&[1])], &[banned]).unwrap_err();
        assert!(refused.starts_with("restricted:"), "{refused}");
        assert!(members.check_read(&[kinds(&[1])], &[reader]).is_ok());
    }
}
