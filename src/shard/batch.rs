//! Decides what one group of events does to a shard, in order, before any of
//! it is written: NIP-01 duplicates and replacement, NIP-09 deletion. State
//! made earlier in the same group is consulted first, so a group behaves
//! exactly like its events inserted one by one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::Error;
use crate::event::{EventId, EventRef, KindClass, Pubkey, TagField};
use crate::ids::Location;
use crate::wal::{RemovePayload, RemoveReason};

use super::lookup::{Address, Committed, DELETION_KIND, VANISH_KIND, Version, vanish_honored};

/// What became of one event at the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    Stored,
    Replaced {
        previous: EventId,
    },
    Duplicate,
    /// A newer version of its address is stored.
    Superseded,
    /// Its author deleted it (NIP-09).
    Deleted,
}

/// An event leaving the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removal {
    pub target: Location,
    pub target_id: EventId,
    pub reason: RemoveReason,
}

impl Removal {
    /// The payload of its remove record.
    pub fn payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(RemovePayload::LEN);
        RemovePayload {
            target: self.target,
            reason: self.reason,
            target_id: self.target_id.0,
        }
        .encode(&mut payload);
        payload
    }
}

/// A stored event as later events of the same group see it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    location: Location,
    pubkey: Pubkey,
    kind: u16,
    created_at: u64,
}

#[derive(Debug, Default)]
pub(crate) struct GroupState {
    stored: HashMap<EventId, Pending>,
    removed: HashSet<Location>,
    /// Address → its version after this group so far (`None`: removed).
    addresses: HashMap<Address, Option<Version>>,
    /// Ids named by deletions of this group → the authors that named them.
    deleted_ids: HashMap<EventId, Vec<Pubkey>>,
    /// Addresses named by deletions of this group → the newest such deletion.
    deleted_addresses: HashMap<Address, u64>,
    /// The relay URLs a NIP-62 request must name (besides `ALL_RELAYS`).
    relays: Arc<Vec<String>>,
    /// Honored vanish requests of the authors this group has seen,
    /// committed or of this group: author → the newest `created_at`
    /// (none: the author has not vanished).
    vanished: HashMap<Pubkey, Option<u64>>,
}

impl GroupState {
    /// A group's state, honoring NIP-62 requests that name `relays`.
    pub fn new(relays: Arc<Vec<String>>) -> GroupState {
        GroupState {
            relays,
            ..GroupState::default()
        }
    }

    /// The newest honored vanish request of `author`, if any.
    fn vanished_upto(
        &mut self,
        committed: &Committed<'_>,
        author: &Pubkey,
    ) -> Result<Option<u64>, Error> {
        if let Some(known) = self.vanished.get(author) {
            return Ok(*known);
        }
        let upto = committed.vanished(author, &self.relays)?;
        self.vanished.insert(*author, upto);
        Ok(upto)
    }

    /// Decides the fate of `event`. When it is to be stored, `store` is called
    /// to append it and returns its location; each removal it causes is
    /// passed to `remove`.
    pub fn decide(
        &mut self,
        committed: &Committed<'_>,
        event: &EventRef<'_>,
        store: &mut dyn FnMut() -> Result<Location, Error>,
        remove: &mut dyn FnMut(Removal) -> Result<(), Error>,
    ) -> Result<WriteOutcome, Error> {
        let (id, pubkey, kind, created_at) =
            (event.id(), event.pubkey(), event.kind(), event.created_at());
        // Events removed earlier in this group are gone, as they would be
        // had the group's events been inserted one by one.
        let stored = committed
            .find(&id)?
            .is_some_and(|location| !self.removed.contains(&location));
        if self.stored.contains_key(&id) || stored {
            return Ok(WriteOutcome::Duplicate);
        }
        // A deletion request naming a deletion request, or a request to
        // vanish, has no effect (NIP-09, NIP-62), whichever arrives first.
        if kind != DELETION_KIND
            && kind != VANISH_KIND
            && (self
                .deleted_ids
                .get(&id)
                .is_some_and(|authors| authors.contains(&pubkey))
                || committed.deleted_by_id(&id, &pubkey)?)
        {
            return Ok(WriteOutcome::Deleted);
        }
        // NIP-62: nothing its author created up to a request to vanish
        // comes back (the requests themselves stay, to keep it so).
        if kind != VANISH_KIND
            && self
                .vanished_upto(committed, &pubkey)?
                .is_some_and(|upto| created_at <= upto)
        {
            return Ok(WriteOutcome::Deleted);
        }
        let address = Address::of_event_ref(event);
        let mut outcome = WriteOutcome::Stored;
        if let Some(address) = &address {
            if self
                .deleted_addresses
                .get(address)
                .is_some_and(|&upto| upto >= created_at)
                || committed.deleted_by_address(address, created_at)?
            {
                return Ok(WriteOutcome::Deleted);
            }
            if let Some(current) = self.current_version(committed, address)? {
                if current.beats(created_at, &id) {
                    return Ok(WriteOutcome::Superseded);
                }
                self.remove(current.location, current.id, RemoveReason::Replaced, remove)?;
                outcome = WriteOutcome::Replaced {
                    previous: current.id,
                };
            }
        }
        let location = store()?;
        if let Some(targets) = committed.targets {
            targets.add_event(event);
        }
        self.stored.insert(
            id,
            Pending {
                location,
                pubkey,
                kind,
                created_at,
            },
        );
        if let Some(address) = address {
            self.addresses.insert(
                address,
                Some(Version {
                    created_at,
                    id,
                    location,
                }),
            );
        }
        if kind == DELETION_KIND {
            self.apply_deletion(committed, event, remove)?;
        }
        if kind == VANISH_KIND && vanish_honored(event, &self.relays) {
            self.apply_vanish(committed, pubkey, created_at, remove)?;
        }
        Ok(outcome)
    }

    fn current_version(
        &self,
        committed: &Committed<'_>,
        address: &Address,
    ) -> Result<Option<Version>, Error> {
        match self.addresses.get(address) {
            Some(version) => Ok(*version),
            None => committed.current_version(address, |location| self.removed.contains(location)),
        }
    }

    fn remove(
        &mut self,
        target: Location,
        target_id: EventId,
        reason: RemoveReason,
        remove: &mut dyn FnMut(Removal) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.removed.insert(target) {
            self.stored.remove(&target_id);
            remove(Removal {
                target,
                target_id,
                reason,
            })?;
        }
        Ok(())
    }

    /// NIP-09: removes what a kind 5 names, when its author wrote it. Deletions
    /// of deletions have no effect.
    fn apply_deletion(
        &mut self,
        committed: &Committed<'_>,
        deletion: &EventRef<'_>,
        remove: &mut dyn FnMut(Removal) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (author, created_at) = (deletion.pubkey(), deletion.created_at());
        for tag in deletion.tags() {
            let (Some(name), Some(value)) = (tag.name(), tag.value()) else {
                continue;
            };
            match name.is_single_letter() {
                Some(b'e') => {
                    let Some(id) = event_id(value) else { continue };
                    self.deleted_ids.entry(id).or_default().push(author);
                    let target = match self.stored.get(&id) {
                        Some(pending) => Some((pending.location, pending.pubkey, pending.kind)),
                        None => match committed.find(&id)? {
                            Some(location) if !self.removed.contains(&location) => {
                                let event = committed.log.read_event(location)?;
                                Some((location, event.pubkey(), event.kind()))
                            }
                            _ => None,
                        },
                    };
                    let Some((location, pubkey, kind)) = target else {
                        continue;
                    };
                    if pubkey != author || kind == DELETION_KIND || kind == VANISH_KIND {
                        continue;
                    }
                    if let Some(address) = self.address_at(committed, location, kind, pubkey)? {
                        let current = self.current_version(committed, &address)?;
                        if current.is_some_and(|v| v.location == location) {
                            self.addresses.insert(address, None);
                        }
                    }
                    self.remove(location, id, RemoveReason::Deleted, remove)?;
                }
                Some(b'a') => {
                    let Some(address) = Address::parse(&value.to_string()) else {
                        continue;
                    };
                    if address.pubkey != author {
                        continue;
                    }
                    let upto = self.deleted_addresses.entry(address.clone()).or_insert(0);
                    *upto = (*upto).max(created_at);
                    if let Some(current) = self.current_version(committed, &address)?
                        && current.created_at <= created_at
                    {
                        self.addresses.insert(address, None);
                        self.remove(current.location, current.id, RemoveReason::Deleted, remove)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// NIP-62: removes every event `author` created up to `upto`, but their
    /// requests to vanish (all in this shard: events go to their author's).
    fn apply_vanish(
        &mut self,
        committed: &Committed<'_>,
        author: Pubkey,
        upto: u64,
        remove: &mut dyn FnMut(Removal) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let newest = self
            .vanished_upto(committed, &author)?
            .unwrap_or(0)
            .max(upto);
        self.vanished.insert(author, Some(newest));
        let mut doomed: Vec<(Location, EventId, u16)> = Vec::new();
        for location in committed.authored_until(&author, upto)? {
            if self.removed.contains(&location) {
                continue;
            }
            let event = committed.log.read_event(location)?;
            doomed.push((location, event.id(), event.kind()));
        }
        doomed.extend(
            self.stored
                .iter()
                .filter(|(_, p)| p.pubkey == author && p.created_at <= upto)
                .map(|(id, p)| (p.location, *id, p.kind)),
        );
        for (location, id, kind) in doomed {
            if kind == VANISH_KIND {
                continue;
            }
            if let Some(address) = self.address_at(committed, location, kind, author)? {
                let current = self.current_version(committed, &address)?;
                if current.is_some_and(|v| v.location == location) {
                    self.addresses.insert(address, None);
                }
            }
            self.remove(location, id, RemoveReason::Deleted, remove)?;
        }
        Ok(())
    }

    /// The address of the event at `location`, if its kind has one.
    fn address_at(
        &self,
        committed: &Committed<'_>,
        location: Location,
        kind: u16,
        pubkey: Pubkey,
    ) -> Result<Option<Address>, Error> {
        match KindClass::of(kind) {
            KindClass::Replaceable => Ok(Address::of(kind, pubkey, String::new)),
            KindClass::Addressable => {
                // The event may be in this group (not yet readable): its d tag
                // is only needed to find its address entry, which the group
                // state holds by location.
                if let Some((address, _)) = self
                    .addresses
                    .iter()
                    .find(|(_, v)| v.is_some_and(|v| v.location == location))
                {
                    return Ok(Some(address.clone()));
                }
                let event = committed.log.read_event(location)?;
                Ok(Address::of_event_ref(&event))
            }
            KindClass::Regular | KindClass::Ephemeral => Ok(None),
        }
    }
}

/// An `e` tag value as an event id (a 64-char lowercase hex value is stored
/// as its 32 raw bytes; anything else names no event).
pub(super) fn event_id(value: TagField<'_>) -> Option<EventId> {
    match value {
        TagField::Hex(raw) => <[u8; 32]>::try_from(raw).ok().map(EventId),
        TagField::Text(text) => EventId::from_hex(text).ok(),
    }
}
