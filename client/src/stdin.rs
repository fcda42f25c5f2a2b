//! The stdin thread: reads input lines (bounded, piped or with rustyline on a
//! terminal) and hands them to the event loop over a bounded channel, waking it.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use mio::Waker;

use crate::controller::Input;
use crate::shell::{self, ShellError, MAX_LINE};

/// Reads one line of at most `max` bytes (newline and a trailing `\r` excluded).
/// `Ok(None)` at end of input; `Ok(Some(Err(())))` for a longer line, which is
/// consumed without being buffered.
pub fn read_bounded_line<R: BufRead>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            // One byte of slack for a '\r' before the newline.
            if line.len() + chunk.len() > max + 1 {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(buf.len());
        r.consume(used);
        if found.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_long || line.len() > max {
        return Ok(Some(Err(())));
    }
    Ok(Some(Ok(line)))
}

/// The stdin thread when piped: bounded lines into the channel, then `Eof`.
pub fn read_piped(tx: SyncSender<Input>, waker: Arc<Waker>) {
    let stdin = io::stdin();
    let mut r = stdin.lock();
    loop {
        let item = match read_bounded_line(&mut r, MAX_LINE) {
            Ok(None) => Input::Eof,
            Ok(Some(Ok(bytes))) => match String::from_utf8(bytes) {
                Ok(s) => Input::Line(s),
                Err(_) => Input::Bad(ShellError::NotUtf8),
            },
            Ok(Some(Err(()))) => Input::Bad(ShellError::TooLong),
            Err(e) => {
                log::warn!("reading stdin failed: {e}");
                Input::Eof
            }
        };
        if !deliver(&tx, &waker, item) {
            return;
        }
    }
}

/// The stdin thread on a terminal: rustyline with a prompt and history; the
/// next prompt appears only after the loop finished the previous command.
pub fn read_interactive(
    tx: SyncSender<Input>,
    waker: Arc<Waker>,
    ack: Receiver<()>,
    history: PathBuf,
) {
    use rustyline::error::ReadlineError;
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            log::warn!("line editing unavailable ({e}); reading plain lines");
            return read_piped(tx, waker);
        }
    };
    let _ = editor.load_history(&history);
    loop {
        let item = match editor.readline("swarmshare> ") {
            Ok(line) => {
                // Lines with a password stay out of the history (and its file).
                if !line.trim().is_empty() && !shell::carries_password(&line) {
                    let _ = editor.add_history_entry(line.as_str());
                    // Saved at once: the process may exit before this thread ends.
                    let _ = editor.save_history(&history);
                }
                if line.len() > MAX_LINE {
                    Input::Bad(ShellError::TooLong)
                } else {
                    Input::Line(line)
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => Input::Eof,
            Err(e) => {
                log::warn!("reading the terminal failed: {e}");
                Input::Eof
            }
        };
        if !deliver(&tx, &waker, item) || ack.recv().is_err() {
            break;
        }
    }
}

/// Hands one input item from a stdin thread to the event loop and wakes it.
/// Returns whether the thread should read on: not after `Eof`, nor once the
/// loop has gone (the channel is closed).
fn deliver(tx: &SyncSender<Input>, waker: &Waker, item: Input) -> bool {
    let eof = matches!(item, Input::Eof);
    if tx.send(item).is_err() {
        return false;
    }
    let _ = waker.wake();
    !eof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, ()>> {
        // A tiny buffer so lines span many fill_buf calls.
        let mut r = io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(l) = read_bounded_line(&mut r, max).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn bounded_lines() {
        assert_eq!(
            lines(b"ab\ncd\r\n\nlast", 10),
            vec![
                Ok(b"ab".to_vec()),
                Ok(b"cd".to_vec()),
                Ok(vec![]),
                Ok(b"last".to_vec())
            ]
        );
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&input, 10), vec![Err(()), Ok(b"ok".to_vec())]);
        assert_eq!(
            lines(b"0123456789\n01234567890\n", 10),
            vec![Ok(b"0123456789".to_vec()), Err(())]
        );
        assert!(lines(b"", 10).is_empty());
    }
}
