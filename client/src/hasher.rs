//! The small thread pool for SHA-1 and disk work, and upload hashing.
//!
//! [`Pool`] runs boxed jobs on N worker threads (N = available cores, at least 2),
//! all taking from one multi-consumer `crossbeam-channel` queue. A job sends its
//! result through a [`Completion`]: a channel sender plus the event loop's mio
//! `Waker`, so the loop wakes up and collects results without polling.
//!
//! [`hash_file`] computes a file's [`FileMeta`] for an upload with both cores busy:
//! the calling thread reads the file in large sequential chunks and streams them
//! through the whole-file SHA-1, while a helper thread computes the piece hashes of
//! the same chunks (shared, not copied). Only a few chunks are ever in memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use sha1::{Digest, Sha1};
use wire::file_meta::{FileMeta, PIECE_SIZE};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The receiving end of a [`Completion`], read by the event loop.
pub type Results<R> = Receiver<R>;

/// A fixed set of worker threads fed through one channel.
pub struct Pool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `n` workers (at least 2).
    pub fn new(n: usize) -> Pool {
        Pool::with_threads(n.max(2), "pool")
    }

    /// A single worker: jobs run one at a time, in order (the whole-file hashes).
    pub fn sequential(name: &str) -> Pool {
        Pool::with_threads(1, name)
    }

    fn with_threads(n: usize, name: &str) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let workers = (0..n)
            .map(|i| {
                let rx = rx.clone();
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    // Ends when the pool drops its sender and the queue is empty.
                    .spawn(move || rx.iter().for_each(|job| job()))
                    .expect("spawn pool thread")
            })
            .collect();
        Pool {
            tx: Some(tx),
            workers,
        }
    }

    /// A pool sized for this machine: one worker per core, at least 2.
    pub fn for_machine() -> Pool {
        Pool::new(
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Runs `job` on a worker.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Box::new(job));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Sends results back to the event loop and wakes it.
pub struct Completion<R> {
    tx: Sender<R>,
    waker: Option<Arc<Waker>>,
}

impl<R> Clone for Completion<R> {
    fn clone(&self) -> Self {
        Completion {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<R> Completion<R> {
    /// A completion channel; the loop reads the receiver after the waker fires.
    pub fn new(waker: Option<Arc<Waker>>) -> (Completion<R>, Results<R>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Completion { tx, waker }, rx)
    }

    pub fn send(&self, r: R) {
        if self.tx.send(r).is_ok() {
            if let Some(w) = &self.waker {
                let _ = w.wake();
            }
        }
    }
}

/// SHA-1 of a byte slice.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// Bytes read per chunk when hashing an upload (a multiple of the piece size).
const HASH_CHUNK: usize = 8 * PIECE_SIZE as usize;

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Chunk buffers in flight between the reader and the piece-hash thread.
const HASH_BUFFERS: usize = 4;

/// Computes the metadata of `path` for an upload (piece hashes + whole-file hash),
/// on this thread plus one helper thread. The name is the file's base name.
pub fn hash_file(path: &Path) -> io::Result<FileMeta> {
    let mut f = File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let (to_helper, chunks) = crossbeam_channel::bounded::<(Arc<Vec<u8>>, usize)>(2);
    let (back, spare) = crossbeam_channel::unbounded::<Arc<Vec<u8>>>();
    let helper = thread::Builder::new()
        .name("piece-hash".into())
        .spawn(move || hash_pieces(chunks, back))?;
    let mut whole = Sha1::new();
    let mut size = 0u64;
    let mut made = 0;
    let result = loop {
        let mut buf = chunk_buffer(&spare, &mut made);
        let n = match read_full(&mut f, &mut buf) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            break Ok(());
        }
        size += n as u64;
        let chunk = Arc::new(buf);
        if to_helper.send((chunk.clone(), n)).is_err() {
            break Err(io::Error::other("piece hash thread died"));
        }
        whole.update(&chunk[..n]);
        drop(chunk);
        if n < HASH_CHUNK {
            break Ok(());
        }
    };
    drop(to_helper);
    let hashes = helper
        .join()
        .map_err(|_| io::Error::other("piece hash thread panicked"))?;
    result?;
    Ok(FileMeta {
        name,
        size,
        piece_size: PIECE_SIZE,
        piece_hashes: hashes,
        file_sha1: whole.finalize().into(),
    })
}

/// The piece-hash thread of [`hash_file`]: hashes the pieces of each chunk in
/// order and hands the chunk back for reuse.
fn hash_pieces(
    chunks: Receiver<(Arc<Vec<u8>>, usize)>,
    back: Sender<Arc<Vec<u8>>>,
) -> Vec<[u8; 20]> {
    let mut hashes = Vec::new();
    for (chunk, len) in chunks {
        hashes.extend(chunk[..len].chunks(PIECE_SIZE as usize).map(sha1));
        let _ = back.send(chunk);
    }
    hashes
}

/// A chunk buffer for the reader: one the piece-hash thread gave back (once it
/// dropped its share), or a new one while fewer than [`HASH_BUFFERS`] exist.
fn chunk_buffer(spare: &Receiver<Arc<Vec<u8>>>, made: &mut usize) -> Vec<u8> {
    loop {
        let back = if *made < HASH_BUFFERS {
            match spare.try_recv() {
                Ok(b) => b,
                Err(_) => {
                    *made += 1;
                    return vec![0u8; HASH_CHUNK];
                }
            }
        } else {
            match spare.recv() {
                Ok(b) => b,
                // The helper is gone; the send that follows reports it.
                Err(_) => return vec![0u8; HASH_CHUNK],
            }
        };
        if let Ok(v) = Arc::try_unwrap(back) {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 1000) as u8).collect();
        std::fs::File::create(path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        data
    }

    #[test]
    fn hash_file_matches_direct_sha1() {
        let dir = tempfile::tempdir().unwrap();
        let p = PIECE_SIZE as usize;
        for len in [
            0,
            1,
            p - 1,
            p,
            p + 1,
            HASH_CHUNK,
            HASH_CHUNK + 1,
            3 * HASH_CHUNK + 5 * p + 17,
        ] {
            let path = dir.path().join(format!("f{len}"));
            let data = write(&path, len);
            let meta = hash_file(&path).unwrap();
            assert_eq!(meta.size, len as u64);
            assert_eq!(meta.file_sha1, sha1(&data), "len {len}");
            let want: Vec<[u8; 20]> = data.chunks(p).map(sha1).collect();
            assert_eq!(meta.piece_hashes, want, "len {len}");
            assert_eq!(
                meta.piece_count(),
                FileMeta::piece_count_for(len as u64, PIECE_SIZE)
            );
            assert_eq!(meta.name, format!("f{len}"));
        }
    }

    #[test]
    fn hash_missing_file_is_an_error() {
        assert!(hash_file(Path::new("/nonexistent/x")).is_err());
        assert!(hash_file(Path::new("/")).is_err());
    }

    #[test]
    fn pool_runs_jobs_and_completes() {
        let pool = Pool::new(2);
        assert_eq!(pool.threads(), 2);
        let (done, rx) = Completion::new(None);
        for i in 0..20u64 {
            let done = done.clone();
            pool.spawn(move || done.send(i * i));
        }
        let mut got: Vec<u64> = (0..20).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..20).map(|i| i * i).collect::<Vec<_>>());
    }
}
