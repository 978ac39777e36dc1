//! `verify_nice`: the verify threads run at the nice value asked for (Linux
//! keeps one per thread), the store's other threads keep theirs, and a
//! value out of range is refused naming it.
#![cfg(target_os = "linux")]

use megalith::EventStore;

/// (thread name, nice) of this process's threads.
fn threads() -> Vec<(String, i64)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // comm is in parentheses and may hold spaces: fields follow the last ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            // After ')': state is field 3; nice is field 19.
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

/// This thread's nice value (the test may itself run under `nice`).
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn verify_threads_run_at_the_nice_value_asked_for() {
    let base = own_nice();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .verify_threads(2)
        .verify_nice(10)
        .open()
        .unwrap();
    // Threads name themselves and set their priority once started: give
    // them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let niced = threads()
            .iter()
            .filter(|(name, nice)| name.starts_with("megalith-verify") && *nice == 10.max(base))
            .count();
        if niced == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", threads());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for (name, nice) in threads() {
        if !name.starts_with("megalith-verify") {
            assert_eq!(nice, base, "{name} keeps its priority");
        }
    }
    store.close().unwrap();

    let error = EventStore::builder(dir.path())
        .verify_nice(40)
        .open()
        .unwrap_err()
        .to_string();
    assert!(error.contains("verify_nice 40"), "{error}");
}
