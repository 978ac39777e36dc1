//! `megalith serve` as a child process on a free loopback port.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};

/// A running `megalith serve`.
pub struct Serving {
    pub child: Child,
    /// `HOST:PORT` it listens on, from its log.
    pub addr: String,
    /// The rest of its log (read it, or the relay blocks once the pipe fills).
    pub stderr: BufReader<ChildStderr>,
    /// Its log up to the line naming the address.
    pub log: String,
}

/// Starts `megalith serve` with `args` and `--listen 127.0.0.1:0`, and waits
/// for the line that names its address.
pub fn spawn<I, S>(args: I) -> Serving
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_megalith"));
    command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A test that fails midway never reaches its SIGTERM: the relay dies
    // with the test's thread instead of running on (two were found still
    // running after failed runs, holding ports and CPU).
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early:\n{log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    Serving {
        child,
        addr,
        stderr,
        log,
    }
}
