//! A full disk, on a real small file system (a tmpfs mounted for the test;
//! CI runs as root). Skipped, saying so, where mounting is not possible;
//! `tests/recover_in_place.rs` covers the same paths on the simulated
//! storage.
//!
//! - Reads keep working on a full tmpfs: no SIGBUS from reading a pre-sized
//!   segment's holes through its memory map.
//! - `megalith serve` on a disk that fills up refuses writes with a plain
//!   message (no paths), says so on `/health` and `/metrics`, and takes
//!   writes again once space is freed, without a restart; after a restart
//!   every event that got `OK true` is there.
#![cfg(unix)]

#[path = "../../tests/service/relay.rs"]
mod relay;
#[path = "../../tests/service/serve.rs"]
mod serve;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use megalith::inspect::log::FRAME_OVERHEAD;
use megalith::{Durability, EventStore, Filter, Keys};
use relay::Client;

/// A tmpfs of `megabytes` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            _ => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root); \
                     tests/recover_in_place.rs covers this path on simulated storage"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a file of zeros until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    // The last partial chunk may not have fit: fill byte by byte.
    while file.write_all(&[0x5a]).is_ok() {}
    path
}

/// Finding 3: on a full tmpfs, `megalith count` died with SIGBUS when the
/// log's written end fell on a page boundary: opening read the frame header
/// there, in a hole of the pre-sized segment, through the memory map, and
/// the file system could not allocate a page for it.
#[test]
fn reads_work_on_a_full_tmpfs() {
    let Some(tmpfs) = Tmpfs::mount(40) else {
        return;
    };
    // Build the store elsewhere, with the log's end exactly on a page.
    let scratch = tempfile::tempdir().unwrap();
    let segment_size: u64 = 1 << 20;
    let store = EventStore::builder(scratch.path())
        .shards(1)
        .durability(Durability::Always)
        .segment_size(segment_size)
        .open()
        .unwrap();
    let keys = Keys::from_seed(3);
    let note = |i: u64, len: usize| keys.sign(1_700_000_000 + i, 1, vec![], "b".repeat(len));
    let frame = |e: &megalith::Event| (FRAME_OVERHEAD + e.payload_len()) as u64;
    let base = frame(&note(0, 0));
    let mut position: u64 = 32;
    let mut count = 0u64;
    for i in 0..40 {
        let event = note(i, 300);
        position += frame(&event);
        store.insert(&[event]).unwrap();
        count += 1;
    }
    let target = (position + base + 1).div_ceil(4096) * 4096;
    let last = note(99, (target - position - base) as usize);
    position += frame(&last);
    store.insert(&[last]).unwrap();
    count += 1;
    assert_eq!(position % 4096, 0);

    // What a kill leaves, copied to the tmpfs: every file as it is, the
    // active segment's data followed by a hole to its pre-sized length.
    let killed = tmpfs.path().join("store");
    copy_as_killed(scratch.path(), &killed, position);
    store.close().unwrap();
    let ballast = fill(tmpfs.path());

    let output = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["count", "--data"])
        .arg(&killed)
        .arg("{}")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        None,
        "megalith count was killed by a signal on a full tmpfs: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        count.to_string(),
        "stderr: {stderr}"
    );
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    std::fs::remove_file(ballast).unwrap();
    // With space again, the store opens, answers and closes cleanly.
    let store = EventStore::open(&killed).unwrap();
    assert_eq!(store.count(&[Filter::new()]).unwrap(), count);
    store.close().unwrap();
}

/// Copies the store in `from` to `to`; the segment keeps only its first
/// `written` bytes, then a hole up to its length.
fn copy_as_killed(from: &Path, to: &Path, written: u64) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_as_killed(&entry.path(), &target, written);
        } else if entry.file_name() == "LOCK" {
            continue;
        } else if entry.path().extension().is_some_and(|x| x == "seg") {
            let bytes = std::fs::read(entry.path()).unwrap();
            let file = std::fs::File::create(&target).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &bytes[..written as usize], 0).unwrap();
            file.set_len(bytes.len() as u64).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Starts `megalith serve` on `data`; returns the child and its address.
fn serve(data: &Path) -> (std::process::Child, String) {
    let mut serving = serve::spawn([
        "--shards".as_ref(),
        "1".as_ref(),
        "--recover-after-ms".as_ref(),
        "50".as_ref(),
        "--events-per-second".as_ref(),
        "100000".as_ref(),
        "--events-burst".as_ref(),
        "100000".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    // Keep draining the log so the relay never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = serving.stderr.read_to_string(&mut sink);
    });
    (serving.child, serving.addr)
}

/// Finding 4: after ENOSPC every later EVENT got `OK false` until a
/// restart, `/health` kept answering 200, `/metrics` showed nothing, and the
/// `OK` message showed clients the server's file paths.
#[test]
fn serve_refuses_writes_on_a_full_disk_and_resumes_when_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount(40) else {
        return;
    };
    // Most of the space goes to a ballast file the test frees later.
    let ballast = tmpfs.path().join("ballast");
    std::fs::write(&ballast, vec![0x5au8; 30 << 20]).unwrap();
    let data = tmpfs.path().join("store");
    let (mut child, addr) = serve(&data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = Keys::from_seed(77);
    let mut accepted = Vec::new();
    runtime.block_on(async {
        let mut client = Client::connect(&format!("ws://{addr}")).await;
        let mut refused = None;
        for i in 0..20_000u64 {
            let event = keys.sign(
                1_700_000_000 + i,
                1,
                vec![vec!["t".into(), "disk".into()]],
                format!("{i} {}", "fill the disk ".repeat(150)),
            );
            let (ok, message) = client.publish(&event).await;
            if ok {
                accepted.push(event.id);
            } else {
                refused = Some(message);
                break;
            }
        }
        let message = refused.expect("the disk never filled up");
        assert_eq!(message, "error: store unavailable, try again later");
        assert!(accepted.len() > 100, "{} accepted", accepted.len());

        let (status, body) = http_get(&addr, "/health");
        assert!(status.contains("503"), "{status} {body}");
        assert!(
            body.contains("refuses writes") && body.contains("No space left on device"),
            "{body}"
        );
        assert!(!body.contains(tmpfs.path().to_str().unwrap()), "{body}");
        let (_, metrics) = http_get(&addr, "/metrics");
        assert!(
            metrics.contains("megalith_shard_writable{shard=\"0\"} 0"),
            "{metrics}"
        );
        // Reads go on meanwhile.
        let stored = client
            .req("r", &[serde_json::json!({"ids": [accepted[0].to_hex()]})])
            .await;
        assert_eq!(stored.len(), 1);

        // Space is freed: writes resume, no restart.
        std::fs::remove_file(&ballast).unwrap();
        let started = Instant::now();
        let mut resumed = false;
        let mut i = 1_000_000u64;
        while started.elapsed() < Duration::from_secs(30) {
            let event = keys.sign(1_700_000_000 + i, 1, vec![], format!("after {i}"));
            i += 1;
            let (ok, message) = client.publish(&event).await;
            if ok {
                accepted.push(event.id);
                resumed = true;
                break;
            }
            assert_eq!(message, "error: store unavailable, try again later");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(resumed, "writes did not resume after space was freed");
        let (status, body) = http_get(&addr, "/health");
        assert!(status.contains("200"), "{status} {body}");
        let (_, metrics) = http_get(&addr, "/metrics");
        assert!(
            metrics.contains("megalith_shard_writable{shard=\"0\"} 1")
                && !metrics.contains("megalith_shard_recoveries{shard=\"0\"} 0"),
            "{metrics}"
        );
        client.close().await;
    });

    // SIGTERM, then every acknowledged event is in the store.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let store = EventStore::open(&data).unwrap();
    for id in &accepted {
        assert!(
            store.get(id).unwrap().is_some(),
            "acknowledged {id} is gone"
        );
    }
    store.close().unwrap();
}

/// `megalith export --out FILE` on a disk too small for the export fails
/// saying why, leaves FILE as it was and no partial file behind; on a disk
/// with room it replaces FILE with the whole export.
#[test]
fn a_failed_export_leaves_the_old_file_and_nothing_else() {
    let Some(tmpfs) = Tmpfs::mount(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let store = EventStore::builder(&data).shards(1).open().unwrap();
    let keys = Keys::from_seed(77);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let events: Vec<_> = (0..3_000)
        .map(|i| {
            keys.sign(
                now - 10_000 + i,
                1,
                vec![],
                format!("{i} {}", "x".repeat(400)),
            )
        })
        .collect();
    store.insert(&events).unwrap();
    store.close().unwrap();

    let out = tmpfs.path().join("export.jsonl");
    std::fs::write(&out, "the previous export\n").unwrap();
    let export = |to: &Path| {
        Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(["export", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(to)
            .output()
            .unwrap()
    };
    let failed = export(&out);
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("cannot write the export"), "{said}");
    let kept = std::fs::read(&out).unwrap();
    assert!(
        kept == b"the previous export\n",
        "the old file was replaced by {} bytes",
        kept.len()
    );
    let left: Vec<_> = std::fs::read_dir(tmpfs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("export.jsonl")]);

    let roomy = dir.path().join("export.jsonl");
    std::fs::write(&roomy, "the previous export\n").unwrap();
    let done = export(&roomy);
    assert!(done.status.success(), "{done:?}");
    let lines = std::fs::read_to_string(&roomy).unwrap();
    assert_eq!(lines.lines().count(), 3_000);
    assert!(!dir.path().join("export.jsonl.partial").exists());
}
