//! Reading input one line at a time, keeping at most a fixed number of bytes
//! of any line: the rest of an over-long line is read past, never buffered.

use std::io::{self, BufRead};

/// One line of input, without its `\n` (nor a `\r` just before it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than the cap: `bytes` long in all, none of it kept.
    TooLong {
        bytes: u64,
    },
}

pub(crate) struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
    max_line_bytes: usize,
    /// The number of the last line returned (lines count from 1).
    number: u64,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(inner: R, max_line_bytes: usize) -> LineReader<R> {
        LineReader {
            inner,
            line: Vec::new(),
            max_line_bytes,
            number: 0,
        }
    }

    /// The number of the last line returned; 0 before the first.
    pub(crate) fn line_number(&self) -> u64 {
        self.number
    }

    /// The next line, or `None` at the end of the input. After an error the
    /// line being read counts as unread: it is line `line_number() + 1`.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.line.clear();
        let mut bytes = 0u64;
        let mut too_long = false;
        let mut started = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !started {
                    return Ok(None);
                }
                break; // the last line, without a final newline
            }
            started = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let part = &available[..newline.unwrap_or(available.len())];
            bytes += part.len() as u64;
            if !too_long {
                if self.line.len() + part.len() > self.max_line_bytes {
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            let consumed = newline.map_or(available.len(), |at| at + 1);
            self.inner.consume(consumed);
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        if too_long {
            return Ok(Some(Line::TooLong { bytes }));
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(Some(Line::Text(&self.line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cap: usize, buffer: usize) -> Vec<(u64, Result<Vec<u8>, u64>)> {
        let mut reader = LineReader::new(io::BufReader::with_capacity(buffer, input), cap);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            let line = match line {
                Line::Text(text) => Ok(text.to_vec()),
                Line::TooLong { bytes } => Err(bytes),
            };
            out.push((reader.line_number(), line));
        }
        out
    }

    #[test]
    fn splits_on_newlines_whatever_the_buffer_size() {
        let input = b"one\r\n\ntwo\xff\x00\nthree-is-long\nlast";
        for buffer in [1, 2, 3, 5, 64] {
            assert_eq!(
                lines(input, 8, buffer),
                vec![
                    (1, Ok(b"one".to_vec())),
                    (2, Ok(Vec::new())),
                    (3, Ok(b"two\xff\x00".to_vec())),
                    (4, Err(13)),
                    (5, Ok(b"last".to_vec())),
                ],
                "buffer {buffer}"
            );
        }
    }

    #[test]
    fn an_over_long_line_is_not_kept() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\nok\n");
        let mut reader = LineReader::new(io::BufReader::with_capacity(4096, &input[..]), 1000);
        assert_eq!(
            reader.next_line().unwrap(),
            Some(Line::TooLong { bytes: 100_000 })
        );
        assert!(
            reader.line.capacity() <= 2 * 1000,
            "{}",
            reader.line.capacity()
        );
        assert_eq!(reader.next_line().unwrap(), Some(Line::Text(b"ok")));
        assert_eq!(reader.next_line().unwrap(), None);
        assert_eq!(reader.line_number(), 2);
    }
}
