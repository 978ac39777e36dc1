//! `megalith serve` as a child process on a given address, for tests and
//! benchmarks that need relays on known ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed when dropped, so a test that fails midway
/// leaves no relay running behind it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `bin serve --data DATA --listen LISTEN` and returns once it says
/// it listens; the rest of its log is read (and dropped) in a thread.
pub fn serve_at(bin: &Path, data: &Path, listen: &str) -> KillOnDrop {
    serve_with(bin, data, listen, &[])
}

/// [`serve_at`] with more flags.
pub fn serve_with(bin: &Path, data: &Path, listen: &str, flags: &[&str]) -> KillOnDrop {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", listen])
        .arg("--data")
        .arg(data)
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited:\n{log}"
        );
        log.push_str(&line);
        if line.contains("address=") {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    KillOnDrop(child)
}

/// SIGTERM, then wait (a clean stop; dropping kills).
pub fn stop(mut child: KillOnDrop) {
    // SAFETY: kill(2) on a child this process spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// A free loopback port (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
