//! `Filter::matches_event` (on an owned event) agrees with
//! `Filter::matches` (on the stored form) and with the reference, on
//! generated events and random filters.

mod common;

use common::Generator;
use megalith::reference;
use megalith::{EventRef, Filter};

#[test]
fn the_owned_matcher_agrees_with_the_stored_one() {
    let mut generator = Generator::new(17, 200);
    let events: Vec<_> = (0..3_000).map(|_| generator.next_event()).collect();
    let mut filters: Vec<Filter> = (0..300).map(|_| generator.filter()).collect();
    // Filters that match something: each event's own author, kind, a tag.
    for e in events.iter().step_by(97) {
        let mut f = Filter::new().authors([e.pubkey]).kinds([e.kind]);
        if let Some(tag) = e.tags.iter().find(|t| t.len() >= 2 && t[0].len() == 1) {
            f = f.tag(tag[0].chars().next().unwrap(), [tag[1].clone()]);
        }
        filters.push(f.since(e.created_at).until(e.created_at));
    }
    let mut hits = 0;
    for filter in &filters {
        for event in &events {
            let mut payload = Vec::new();
            event.encode_payload(&mut payload).unwrap();
            let stored = filter.matches(&EventRef::parse(&payload).unwrap());
            let owned = filter.matches_event(event);
            assert_eq!(owned, stored, "{} on {}", filter.to_json(), event.to_json());
            assert_eq!(owned, reference::matches(filter, event));
            hits += usize::from(owned);
        }
    }
    assert!(hits > 1_000, "{hits}");
}
