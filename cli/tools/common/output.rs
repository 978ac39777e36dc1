//! Standard output and standard error for the command-line tools, where a
//! reader that goes away is not an error. Every tool includes this file
//! (`#[path = "../common/output.rs"] mod output;`) and denies
//! `clippy::print_stdout` and `clippy::print_stderr`, so nothing prints with
//! `println!` or `eprintln!`, which panic when a write fails.
//!
//! The convention, for every command of every tool:
//! - Standard output goes through [`Output`]. When its reader goes away
//!   (`megalith query ... | head -1`: the write fails with `BrokenPipe`,
//!   since Rust ignores SIGPIPE), the output is closed: later writes are
//!   dropped and [`Output::is_open`] turns false, so the command stops
//!   producing output, finishes what it must (closing the store cleanly) and
//!   exits with the status it would have had for the work it did (0 when
//!   that work succeeded). Any other write error, such as a full disk
//!   behind `> file`, is returned as an error.
//! - Messages to standard error go through [`errln!`]: one that cannot be
//!   written is lost, and never stops the command.
//!
//! SIGPIPE stays ignored, in `megalith serve` too: a relay client's socket
//! that goes away must not end the process.
#![allow(dead_code, reason = "each tool uses the part it needs")]

use std::fs::File;
use std::io::{self, BufWriter, Write};

/// Buffered standard output (or a file given instead) that a closed pipe
/// turns into a sink.
pub(crate) struct Output {
    out: BufWriter<Box<dyn Write>>,
    closed: bool,
    /// Standard output's descriptor, to ask whether its reader is still there.
    fd: Option<i32>,
}

impl Output {
    pub(crate) fn stdout() -> Output {
        let mut out = Output::new(Box::new(io::stdout().lock()));
        out.fd = Some(libc::STDOUT_FILENO);
        out
    }

    /// Writes to `file` instead of standard output (it never closes early).
    pub(crate) fn file(file: File) -> Output {
        Output::new(Box::new(file))
    }

    fn new(sink: Box<dyn Write>) -> Output {
        Output {
            out: BufWriter::with_capacity(1 << 16, sink),
            closed: false,
            fd: None,
        }
    }

    /// Whether the reader of standard output has gone away, found without
    /// writing (a command that waits for something to print must notice
    /// `| head` having exited while it has nothing to write): a pipe whose
    /// read end is closed polls as an error. Closes the output when so.
    pub(crate) fn reader_gone(&mut self) -> bool {
        if self.closed {
            return true;
        }
        let Some(fd) = self.fd else {
            return false;
        };
        let mut poll = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready == 1 && poll.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            self.closed = true;
        }
        self.closed
    }

    /// False once the reader has gone away: stop producing output.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed
    }

    /// Flushes what is buffered. A closed pipe is not an error.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.flush()
    }

    /// Turns a broken pipe into the closed state.
    fn absorb<T>(&mut self, result: io::Result<T>, closed_value: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(closed_value)
            }
            other => other,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let result = self.out.write(buf);
        self.absorb(result, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.out.flush();
        self.absorb(result, ())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Without this, the BufWriter would try once more to write what a
        // closed pipe refused.
        if self.closed {
            let _ =
                std::mem::replace(&mut self.out, BufWriter::new(Box::new(io::sink()))).into_parts();
        }
    }
}

/// `eprintln!` that never panics: a message standard error cannot take is lost.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use errln;
