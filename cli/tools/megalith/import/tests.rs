//! The import loop against a real store whose disk fills up in the middle of
//! a run: the batches before stay stored, the summary counts them, and the
//! run stops at the first line of the batch that failed, with the
//! `--skip-lines` that resumes there.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use megalith::datagen::{GenConfig, Generator};
use megalith::storage::{FileStorage, Mapping, OpenMode, Storage, StorageFile};
use megalith::{Durability, Event, EventStore, Filter, Limits};

use super::summary::{Stop, Summary, Tally};
use super::{Input, Settings, import, max_line_bytes};

/// The local file system, until `full` is set: from then on every write
/// fails as on a full disk.
#[derive(Debug)]
struct FillingDisk {
    full: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FillingFile {
    inner: Box<dyn StorageFile>,
    full: Arc<AtomicBool>,
}

fn disk_full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "no space left on device")
}

impl Storage for FillingDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(FillingFile {
            inner: FileStorage.open(path, mode)?,
            full: self.full.clone(),
        }))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        FileStorage.list(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        FileStorage.exists(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        FileStorage.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        FileStorage.sync_dir(dir)
    }
    fn size_on_disk(&self, path: &Path) -> io::Result<u64> {
        FileStorage.size_on_disk(path)
    }
}

impl StorageFile for FillingFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn map(&self, reserve: u64) -> io::Result<Option<Mapping>> {
        self.inner.map(reserve)
    }
}

/// Hands out one line per read, and fills the disk when line `fill_at`
/// (counted from 1) is asked for, once `ready` says so (the import stores
/// a batch while it reads the next).
struct LinesFillingDisk {
    lines: Vec<Vec<u8>>,
    next: usize,
    fill_at: usize,
    full: Arc<AtomicBool>,
    ready: Box<dyn Fn() -> bool>,
}

impl Read for LinesFillingDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(line) = self.lines.get(self.next) else {
            return Ok(0);
        };
        self.next += 1;
        if self.next == self.fill_at {
            while !(self.ready)() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.full.store(true, Ordering::SeqCst);
        }
        assert!(buf.len() > line.len(), "the test's lines fit the buffer");
        buf[..line.len()].copy_from_slice(line);
        buf[line.len()] = b'\n';
        Ok(line.len() + 1)
    }
}

fn notes(count: usize) -> Vec<Event> {
    let mut generator = Generator::new(GenConfig {
        seed: 12,
        authors: 20,
        ..GenConfig::default()
    });
    let notes: Vec<Event> = generator
        .batch(400, 1)
        .into_iter()
        .filter(|e| e.kind == 1)
        .take(count)
        .collect();
    assert_eq!(notes.len(), count);
    notes
}

fn settings(batch: usize) -> Settings {
    let limits = Limits::default();
    Settings {
        batch,
        trusted: false,
        quiet: true,
        max_line_bytes: max_line_bytes(&limits),
        limits,
        skip_lines: 0,
    }
}

#[test]
fn a_full_disk_stops_the_run_at_the_first_line_of_the_failed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let full = Arc::new(AtomicBool::new(false));
    let store = Arc::new(
        EventStore::builder(&data)
            .storage(Arc::new(FillingDisk { full: full.clone() }))
            .durability(Durability::Always)
            .shards(1)
            .open()
            .unwrap(),
    );
    let notes = notes(7);
    // Line 2 is refused; batches of two events: lines 1 and 3, 4 and 5,
    // then 6 and 7, whose insert meets the full disk (it fills as line 6
    // is read), then line 8, never stored.
    let mut lines: Vec<Vec<u8>> = notes.iter().map(|e| e.to_json().into_bytes()).collect();
    lines.insert(1, b"null".to_vec());
    let inputs = vec![
        Input {
            name: "first.jsonl".into(),
            reader: Box::new(LinesFillingDisk {
                lines,
                next: 0,
                fill_at: 6,
                full: full.clone(),
                // Lines 1 and 3, 4 and 5 stored.
                ready: {
                    let store = Arc::clone(&store);
                    Box::new(move || store.count(&[Filter::new()]).unwrap() == 4)
                },
            }),
            size: None,
        },
        Input {
            name: "second.jsonl".into(),
            reader: Box::new(io::empty()),
            size: None,
        },
    ];
    let mut tally = Tally::default();
    let stop = import(&store, inputs, &settings(2), &mut tally).expect("the run must stop");
    assert_eq!(stop.file, "first.jsonl");
    assert_eq!(stop.resume_line, 6);
    assert_eq!(stop.skip_lines(), 5);
    assert_eq!(stop.files, ["first.jsonl", "second.jsonl"]);
    assert!(stop.error.starts_with("storing events: "), "{}", stop.error);
    assert_eq!(tally.stored(), 4);
    assert_eq!(tally.invalid, 1);
    // Line 8 is read while lines 6 and 7 are being stored, and is not
    // stored: the run stops at the batch that failed.
    assert_eq!(tally.lines, 8);
    // The store refuses writes now; closing it may fail too.
    let _ = Arc::into_inner(store).expect("the reader is gone").close();

    let summary = Summary {
        tally: &tally,
        stop: Some(&stop),
        close_error: None,
        seconds: 0.5,
    };
    let advice = summary.resume_advice().unwrap();
    assert!(
        advice.starts_with("stopped at first.jsonl:6: storing events: "),
        "{advice}"
    );
    assert!(
        advice.contains("--skip-lines 5 on first.jsonl second.jsonl"),
        "{advice}"
    );
    assert_eq!(summary.json()["stopped"]["resume_line"], 6);
    assert_eq!(summary.json()["stored"], 4);

    // What the summary counted as stored is there after reopening; the
    // failed batch is not.
    let store = EventStore::open(&data).unwrap();
    let stored: Vec<_> = store
        .query(&[Filter::new()])
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    store.close().unwrap();
    for (i, note) in notes.iter().enumerate() {
        // notes[i] is on line i + 1 for i = 0, and i + 2 after the null line.
        assert_eq!(stored.contains(&note.id), i < 4, "note {i}");
    }

    // Resuming as told stores the rest.
    let resumed = Stop {
        file: "first.jsonl".into(),
        resume_line: 6,
        files: vec!["first.jsonl".into()],
        error: String::new(),
    };
    let store = EventStore::open(&data).unwrap();
    let mut lines: Vec<Vec<u8>> = notes.iter().map(|e| e.to_json().into_bytes()).collect();
    lines.insert(1, b"null".to_vec());
    let input = Input {
        name: "first.jsonl".into(),
        reader: Box::new(LinesFillingDisk {
            lines,
            next: 0,
            fill_at: usize::MAX,
            full: Arc::new(AtomicBool::new(false)),
            ready: Box::new(|| true),
        }),
        size: None,
    };
    let mut settings = settings(2);
    settings.skip_lines = resumed.skip_lines();
    let mut tally = Tally::default();
    assert_eq!(import(&store, vec![input], &settings, &mut tally), None);
    assert_eq!(tally.skipped_lines, 5);
    assert_eq!(tally.stored(), 3);
    assert_eq!(tally.invalid, 0);
    assert_eq!(store.count(&[Filter::new()]).unwrap(), 7);
    store.close().unwrap();
}
