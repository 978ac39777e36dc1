//! The store's lock file. A process that starts children shares its open
//! files with each child until the child's exec closes them, and an
//! `flock` belongs to the open file: a store closed and opened again at
//! once could find its own lock still held for a moment (found as a flaky
//! `Locked` in a test binary whose other tests spawn the tools). Opening
//! waits a moment for such a holder; a real holder still gets `Locked`.

use std::fs::File;
use std::sync::mpsc;
use std::time::Duration;

use megalith::{Error, EventStore};

/// The lock file held by another open file, as a forked child holds it.
fn hold(path: &std::path::Path) -> File {
    let file = File::options().write(true).open(path.join("LOCK")).unwrap();
    file.try_lock().unwrap();
    file
}

#[test]
fn a_lock_let_go_a_moment_later_does_not_refuse_the_open() {
    let dir = tempfile::tempdir().unwrap();
    EventStore::open(dir.path()).unwrap().close().unwrap();
    let held = hold(dir.path());
    let (opening, go) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        go.recv().unwrap();
        // The child's exec, a moment after the parent reopens.
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
    });
    opening.send(()).unwrap();
    let store = EventStore::open(dir.path());
    holder.join().unwrap();
    assert!(store.is_ok(), "{:?}", store.err());
}

#[test]
fn a_lock_that_stays_held_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    EventStore::open(dir.path()).unwrap().close().unwrap();
    let _held = hold(dir.path());
    match EventStore::open(dir.path()) {
        Err(Error::Locked(path)) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}
