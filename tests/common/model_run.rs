//! A model-based run driven by bytes: inserts, queries, checkpoints, clean
//! reopens, and power losses (in the middle of an insert or between
//! operations, with each kind of damage), checked against the brute-force
//! [`Model`] after every step. The cargo test feeds it seeded random bytes;
//! the `store_model` fuzz target feeds it the fuzzer's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use megalith::storage::{Damage, SimStorage};
use megalith::{Durability, Event, EventStore, Filter};

use super::{Generator, Model, Rng, now, outcome_kind};

/// Events the operations pick from (replaceable, addressable, deletions,
/// duplicates and ephemeral ones included).
pub fn pool() -> Vec<Event> {
    let mut generator = Generator::new(99, 4);
    (0..96).map(|_| generator.next_event()).collect()
}

fn open(sim: &SimStorage, dir: &Path) -> EventStore {
    EventStore::builder(dir)
        .shards(1) // one shard: I/O operations come in a fixed order
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Always)
        .segment_size(64 << 10)
        .checkpoint_dirty_nodes(16)
        .level_entries(48)
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        .open()
        .unwrap_or_else(|e| panic!("open failed: {e}"))
}

/// The bytes, consumed from the front; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// Runs the operations `bytes` describe against a store on `sim` (in `dir`)
/// and a model, panicking at the first difference. Returns the number of
/// operations run.
pub fn run(bytes: &[u8], pool: &[Event], dir: &Path) -> usize {
    let sim = SimStorage::new(dir).unwrap();
    let mut store = Some(open(&sim, dir));
    let mut model = Model::default();
    let mut applied: Vec<Event> = Vec::new();
    let mut input = Input(bytes);
    let mut steps = 0;
    let mut filters = Generator::new(7, 4);
    while !input.0.is_empty() && steps < 200 {
        steps += 1;
        let op = input.byte() % 8;
        let current = store.as_ref().expect("the store is open between steps");
        match op {
            0..=2 => {
                let batch = batch(&mut input, pool);
                let outcomes = current.insert(&batch).expect("insert");
                for (event, outcome) in batch.iter().zip(&outcomes) {
                    let expected = model.insert(event, now());
                    assert_eq!(
                        outcome_kind(outcome),
                        expected,
                        "step {steps}: insert of {} answered {outcome:?}, model {expected:?}",
                        event.id
                    );
                    applied.push(event.clone());
                }
            }
            3 | 4 => {
                filters.rng = Rng::new(u64::from(input.byte()) << 8 | u64::from(input.byte()));
                let filter = filters.filter();
                let got = current.query(std::slice::from_ref(&filter)).expect("query");
                let want = model.query(std::slice::from_ref(&filter));
                assert_eq!(got, want, "step {steps}: query {filter:?}");
            }
            5 => current.checkpoint().expect("checkpoint"),
            6 => {
                // Clean close and reopen.
                store.take().unwrap().close().expect("close");
                store = Some(open(&sim, dir));
            }
            _ => {
                // Power loss: during the next insert (after `cut` of its
                // operations), or, with nothing to insert, between steps.
                let batch = batch(&mut input, pool);
                let cut = u64::from(input.byte() % 6);
                let damage = Damage::ALL[usize::from(input.byte()) % Damage::ALL.len()];
                sim.reset_faults();
                sim.power_off_at(cut);
                let acknowledged = current.insert(&batch).is_ok();
                drop(store.take());
                sim.crash(damage, steps as u64).unwrap();
                let reopened = open(&sim, dir);
                let held = reopened.query(&[Filter::new()]).unwrap();
                let mut with = Model::default();
                for event in applied.iter().chain(&batch) {
                    with.insert(event, now());
                }
                let with_batch = with.query(&[Filter::new()]);
                if held == with_batch {
                    model = with;
                    applied.extend(batch);
                } else {
                    assert!(
                        !acknowledged,
                        "step {steps}: an acknowledged batch was lost ({damage:?}, cut {cut})"
                    );
                    assert_eq!(
                        held,
                        model.query(&[Filter::new()]),
                        "step {steps}: after power loss ({damage:?}, cut {cut}) the store holds \
                         neither the state before nor after the batch"
                    );
                }
                store = Some(reopened);
            }
        }
    }
    if let Some(store) = store {
        assert_eq!(
            store.query(&[Filter::new()]).unwrap(),
            model.query(&[Filter::new()])
        );
        store.close().expect("final close");
    }
    steps
}

fn batch(input: &mut Input<'_>, pool: &[Event]) -> Vec<Event> {
    let len = 1 + usize::from(input.byte() % 4);
    (0..len)
        .map(|_| pool[usize::from(input.byte()) % pool.len()].clone())
        .collect()
}
