//! Look-ups the write path makes against a shard's committed state:
//! duplicates, current versions of an address, and NIP-09 deletions.

use crate::error::Error;
use crate::event::{EventId, EventRef, KindClass, Pubkey};
use crate::ids::Location;
use crate::index::{
    IndexKind, IndexSet, TagSlot, address_prefix, author_kind_prefix, location_at_end, tag_prefix,
    time_range,
};
use crate::wal::LogSnapshot;

use super::deletions::{DeletionTargets, tag_key, vanish_key};

/// NIP-09 deletion kind.
pub(crate) const DELETION_KIND: u16 = 5;

/// NIP-62 request to vanish.
pub(crate) const VANISH_KIND: u16 = 62;

/// Whether a kind 62 asks this store to vanish its author: a `relay` tag
/// names `ALL_RELAYS` or one of `relays` (compared without a trailing `/`
/// and case-insensitively).
pub(crate) fn vanish_honored(event: &EventRef<'_>, relays: &[String]) -> bool {
    event.kind() == VANISH_KIND
        && event.tags().any(|tag| {
            tag.name().is_some_and(|n| n.eq_str("relay"))
                && tag.value().and_then(|v| v.as_text()).is_some_and(|value| {
                    value == "ALL_RELAYS" || relays.iter().any(|r| same_relay(r, value))
                })
        })
}

fn same_relay(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// (kind, pubkey, d) of a replaceable (d = "") or addressable event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Address {
    pub kind: u16,
    pub pubkey: Pubkey,
    pub d: String,
}

impl Address {
    /// The address of a replaceable or addressable event; `None` for other kinds.
    pub fn of(kind: u16, pubkey: Pubkey, d: impl FnOnce() -> String) -> Option<Address> {
        match KindClass::of(kind) {
            KindClass::Replaceable => Some(Address {
                kind,
                pubkey,
                d: String::new(),
            }),
            KindClass::Addressable => Some(Address {
                kind,
                pubkey,
                d: d(),
            }),
            KindClass::Regular | KindClass::Ephemeral => None,
        }
    }

    pub fn of_event_ref(event: &EventRef<'_>) -> Option<Address> {
        Address::of(event.kind(), event.pubkey(), || {
            event.d_tag().map(|d| d.to_string()).unwrap_or_default()
        })
    }

    /// Parses a NIP-09 `a` tag value, `kind:pubkey-hex:d`. A replaceable
    /// kind's address has an empty `d` (`0:<pubkey>:`); with any other `d` it
    /// names nothing.
    pub fn parse(value: &str) -> Option<Address> {
        let mut parts = value.splitn(3, ':');
        let kind_text = parts.next()?;
        let kind = kind_text.parse::<u16>().ok()?;
        // Only the canonical spelling (`30023`, not `030023` or `+30023`):
        // the deletion is found again later by this exact text.
        if kind.to_string() != kind_text {
            return None;
        }
        let pubkey = Pubkey::from_hex(parts.next()?).ok()?;
        // `kind:pubkey:` with the colon even when d is empty, as NIP-01 writes it.
        let d = parts.next()?;
        if KindClass::of(kind) == KindClass::Replaceable && !d.is_empty() {
            return None;
        }
        Address::of(kind, pubkey, || d.to_string())
    }

    /// The `a` tag value naming this address.
    pub fn tag_value(&self) -> String {
        format!("{}:{}:{}", self.kind, self.pubkey.to_hex(), self.d)
    }
}

/// The stored version of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub created_at: u64,
    pub id: EventId,
    pub location: Location,
}

impl Version {
    /// NIP-01: the newest wins; at equal created_at the lowest id wins.
    pub fn beats(&self, created_at: u64, id: &EventId) -> bool {
        self.created_at > created_at || (self.created_at == created_at && self.id < *id)
    }
}

/// Read access to one shard's committed indexes and log.
pub(crate) struct Committed<'a> {
    pub indexes: &'a IndexSet,
    pub log: &'a LogSnapshot,
    /// What stored deletions could name (see `DeletionTargets`): `None`, or
    /// an incomplete set, and every deletion check seeks the indexes.
    pub targets: Option<&'a DeletionTargets>,
}

impl Committed<'_> {
    /// Location of the stored event with this id.
    pub fn find(&self, id: &EventId) -> Result<Option<Location>, Error> {
        Ok(self.indexes.find_id(id)?)
    }

    /// The stored version of `address`, skipping locations `skip` says are gone.
    pub fn current_version(
        &self,
        address: &Address,
        skip: impl Fn(&Location) -> bool,
    ) -> Result<Option<Version>, Error> {
        let mut best: Option<Version> = None;
        for version in self.versions(address, skip)? {
            if best.is_none_or(|b| version.beats(b.created_at, &b.id)) {
                best = Some(version);
            }
        }
        Ok(best)
    }

    /// Every stored version of `address` (one, unless a repair lost the
    /// remove record of a replaced one), skipping what `skip` says is gone.
    pub fn versions(
        &self,
        address: &Address,
        skip: impl Fn(&Location) -> bool,
    ) -> Result<Vec<Version>, Error> {
        let prefix = address_prefix(
            address.kind,
            &address.pubkey,
            &TagSlot::from_str(&address.d),
        );
        let mut cursor = self.indexes.tree(IndexKind::Address).seek(&prefix)?;
        let mut versions = Vec::new();
        while let Some(entry) = cursor.next()? {
            if !entry.starts_with(&prefix) {
                break;
            }
            let location = location_at_end(entry);
            if skip(&location) {
                continue;
            }
            let event = self.log.read_event(location)?;
            // Long d values share a hashed slot: confirm on the record.
            if Address::of_event_ref(&event).as_ref() != Some(address) {
                continue;
            }
            versions.push(Version {
                created_at: event.created_at(),
                id: event.id(),
                location,
            });
        }
        Ok(versions)
    }

    /// The newest honored vanish request of `author` (NIP-62), if any:
    /// one seek of the author's kind 62 entries, newest first, reading
    /// them only until an honored one (requests naming other relays are
    /// stored too, and an author could send many).
    pub fn vanished(&self, author: &Pubkey, relays: &[String]) -> Result<Option<u64>, Error> {
        if self
            .targets
            .is_some_and(|targets| !targets.may_name(vanish_key(author)))
        {
            return Ok(None);
        }
        let (lower, upper) = time_range(
            IndexKind::AuthorKindTime,
            &author_kind_prefix(author, VANISH_KIND),
            0,
            u64::MAX,
        );
        let mut cursor = self.indexes.tree(IndexKind::AuthorKindTime).seek(&lower)?;
        while let Some(entry) = cursor.next()? {
            if entry > upper.as_slice() {
                break;
            }
            let event = self.log.read_event(location_at_end(entry))?;
            if vanish_honored(&event, relays) {
                return Ok(Some(event.created_at()));
            }
        }
        Ok(None)
    }

    /// Locations of `author`'s stored events created at or before `upto`.
    pub fn authored_until(&self, author: &Pubkey, upto: u64) -> Result<Vec<Location>, Error> {
        let (lower, upper) = time_range(IndexKind::AuthorTime, &author.0, 0, upto);
        let mut cursor = self.indexes.tree(IndexKind::AuthorTime).seek(&lower)?;
        let mut out = Vec::new();
        while let Some(entry) = cursor.next()? {
            if entry > upper.as_slice() {
                break;
            }
            out.push(location_at_end(entry));
        }
        Ok(out)
    }

    /// Whether a stored kind 5 from `author` names `id` in an `e` tag.
    pub fn deleted_by_id(&self, id: &EventId, author: &Pubkey) -> Result<bool, Error> {
        self.any_deletion(b'e', &id.to_hex(), 0, |deletion| {
            deletion.pubkey() == *author
        })
    }

    /// Whether a stored kind 5 from the address's author, created at or after
    /// `created_at`, names the address in an `a` tag.
    pub fn deleted_by_address(&self, address: &Address, created_at: u64) -> Result<bool, Error> {
        self.any_deletion(b'a', &address.tag_value(), created_at, |deletion| {
            deletion.pubkey() == address.pubkey
        })
    }

    fn any_deletion(
        &self,
        letter: u8,
        value: &str,
        since: u64,
        accept: impl Fn(&EventRef<'_>) -> bool,
    ) -> Result<bool, Error> {
        let slot = TagSlot::from_str(value);
        if self
            .targets
            .is_some_and(|targets| !targets.may_name(tag_key(letter, &slot)))
        {
            return Ok(false);
        }
        let prefix = tag_prefix(letter, &slot);
        let (lower, upper) = time_range(IndexKind::TagTime, &prefix, since, u64::MAX);
        let mut cursor = self.indexes.tree(IndexKind::TagTime).seek(&lower)?;
        while let Some(entry) = cursor.next()? {
            if entry > upper.as_slice() {
                break;
            }
            let event = self.log.read_event(location_at_end(entry))?;
            if event.kind() != DELETION_KIND || !accept(&event) {
                continue;
            }
            let names_it = event.tags().any(|tag| {
                tag.name()
                    .is_some_and(|n| n.is_single_letter() == Some(letter))
                    && tag.value().is_some_and(|v| v.eq_str(value))
            });
            if names_it {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let pk = "b".repeat(64);
        let a = Address::parse(&format!("30023:{pk}:my:article")).unwrap();
        assert_eq!((a.kind, a.d.as_str()), (30023, "my:article"));
        assert_eq!(a.tag_value(), format!("30023:{pk}:my:article"));
        let replaceable = Address::parse(&format!("0:{pk}:")).unwrap();
        assert_eq!((replaceable.kind, replaceable.d.as_str()), (0, ""));
        assert!(
            Address::parse(&format!("0:{pk}:x")).is_none(),
            "replaceable kinds have no d"
        );
        assert!(
            Address::parse(&format!("1:{pk}:")).is_none(),
            "regular kinds have no address"
        );
        assert!(Address::parse("30023:nothex:x").is_none());
        assert!(
            Address::parse(&format!("030023:{pk}:x")).is_none(),
            "kinds are spelled canonically"
        );
        assert!(Address::parse(&format!("+30023:{pk}:x")).is_none());
        assert!(Address::parse("x:y").is_none());
        assert!(
            Address::parse(&format!("0:{pk}")).is_none(),
            "the colon before d is required"
        );
    }

    #[test]
    fn newest_then_lowest_id_wins() {
        let v = Version {
            created_at: 10,
            id: EventId([5; 32]),
            location: Location {
                segment: crate::ids::SegmentId(1),
                offset: 32,
            },
        };
        assert!(v.beats(9, &EventId([0; 32])));
        assert!(!v.beats(11, &EventId([9; 32])));
        assert!(v.beats(10, &EventId([6; 32])));
        assert!(!v.beats(10, &EventId([4; 32])));
    }
}
