//! One thread that writes filled buffers into a file at their offsets, while the thread that fills
//! them goes on: the output half of [`super::writer::SafetensorsWriter::write_tensor_pipelined`].
//!
//! Why a single writing thread: the kernel serialises writes into one file (the inode lock),
//! and one thread calling `pwrite` costs it about half the CPU that faulting the same pages
//! in through a map on every thread does (measured on tmpfs, 2 GiB on a 2-vCPU VM: 0.64-0.75 s
//! on one thread, against 0.73-1.1 s on both). The thread lives as long as the output file,
//! so it never waits while the filling thread moves from one tensor to the next.
//!
//! A few buffers circulate between the two threads (filled ones to the writer, written ones
//! back), so memory stays at `DEPTH + 1` pieces and the buffers stay warm in the caches. The
//! filling thread holds the one it hands over, so the queue (of `DEPTH`) can be full only
//! while the writer thread holds none and is about to take the next: [`WriterThread::send`]
//! never waits for a write. When none is free, [`WriterThread::buffer_now`] says so, so that
//! the filling thread can do something else rather than wait.

use std::fs::File;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// How many filled buffers may wait for the writer.
const DEPTH: usize = 2;

/// A buffer of `len` bytes to be written at `offset`.
type Piece = (Vec<u64>, usize, u64);

/// What [`WriterThread::buffer_now`] found.
#[derive(Debug)]
pub enum Available {
    /// A buffer to fill.
    Free(Vec<u64>),
    /// No buffer is free: all `DEPTH + 1` are out and none has come back.
    Busy,
    /// The thread has stopped (on an error, which [`WriterThread::finish`] returns).
    Stopped,
}

/// The writing thread and the buffers that circulate through it. Dropping it lets the
/// thread write what it was sent and waits for it.
#[derive(Debug)]
pub struct WriterThread {
    to_writer: Option<SyncSender<Piece>>,
    written: Receiver<Vec<u64>>,
    /// Buffers made so far (at most `limit`).
    made: usize,
    /// How many buffers may circulate: one more than the queue holds.
    limit: usize,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl WriterThread {
    /// Start a thread that writes into `file` (a handle of its own) by position, with
    /// `DEPTH + 1` buffers (one filling thread).
    pub fn start(file: File) -> std::io::Result<Self> {
        Self::with_buffers(file, DEPTH + 1)
    }

    /// As [`start`](Self::start), with `buffers >= 2` circulating (for several filling
    /// threads, each holding one while the others' wait for the writer).
    pub fn with_buffers(file: File, buffers: usize) -> std::io::Result<Self> {
        let limit = buffers.max(2);
        let (to_writer, filled) = sync_channel::<Piece>(limit - 1);
        let (give_back, written) = channel::<Vec<u64>>();
        let thread = std::thread::Builder::new()
            .name("fp8fast-writer".into())
            .spawn(move || -> std::io::Result<()> {
                for (buf, len, offset) in filled {
                    super::writer::write_all_at(
                        &file,
                        &bytemuck::cast_slice::<u64, u8>(&buf)[..len],
                        offset,
                    )?;
                    // The filling thread may have stopped (an error); then no one needs it.
                    let _ = give_back.send(buf);
                }
                Ok(())
            })?;
        Ok(WriterThread {
            to_writer: Some(to_writer),
            written,
            made: 0,
            limit,
            thread: Some(thread),
        })
    }

    /// A buffer of at least `words` words to fill: one the thread has written, or a new one
    /// while fewer than the pipeline holds exist. `None`: the thread has stopped (on an
    /// error, which [`finish`](Self::finish) returns).
    pub fn buffer(&mut self, words: usize) -> Option<Vec<u64>> {
        let mut buf = match self.written.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < self.limit => {
                self.made += 1;
                Vec::new()
            }
            Err(_) => self.written.recv().ok()?,
        };
        if buf.len() < words {
            buf.resize(words, 0);
        }
        Some(buf)
    }

    /// As [`buffer`](Self::buffer), without waiting.
    pub fn buffer_now(&mut self, words: usize) -> Available {
        let mut buf = match self.written.try_recv() {
            Ok(b) => b,
            Err(TryRecvError::Disconnected) => return Available::Stopped,
            Err(TryRecvError::Empty) if self.made < self.limit => {
                self.made += 1;
                Vec::new()
            }
            Err(TryRecvError::Empty) => return Available::Busy,
        };
        if buf.len() < words {
            buf.resize(words, 0);
        }
        Available::Free(buf)
    }

    /// Hand the first `len` bytes of `buf` to the thread, to be written at `offset`. `false`:
    /// the thread has stopped.
    pub fn send(&mut self, buf: Vec<u64>, len: usize, offset: u64) -> bool {
        debug_assert!(len <= buf.len() * 8);
        self.to_writer
            .as_ref()
            .is_some_and(|tx| tx.send((buf, len, offset)).is_ok())
    }

    /// Wait until everything sent is written; the first write error, if any.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<()> {
        drop(self.to_writer.take());
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the writer thread panicked")),
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_pieces_at_their_offsets_in_any_order() {
        let path = std::env::temp_dir().join(format!("fp8fast-pipeline-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(64 * 1000).unwrap();
        let mut w = WriterThread::start(file.try_clone().unwrap()).unwrap();
        for k in (0..64u64).rev() {
            let mut buf = w.buffer(125).unwrap();
            assert!(buf.len() >= 125);
            buf[..125].fill(k * 0x0101_0101_0101_0101);
            assert!(w.send(buf, 1000, k * 1000));
        }
        assert!(w.made <= DEPTH + 1, "buffers are reused: {}", w.made);
        w.finish().unwrap();
        let mut bytes = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (k, piece) in bytes.chunks(1000).enumerate() {
            assert!(piece.iter().all(|&b| b == k as u8), "piece {k}");
        }
    }

    #[test]
    fn buffer_now_says_when_no_buffer_is_free() {
        let path =
            std::env::temp_dir().join(format!("fp8fast-pipeline-now-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut w = WriterThread::start(file).unwrap();
        let held: Vec<Vec<u64>> = (0..=DEPTH)
            .map(|_| match w.buffer_now(4) {
                Available::Free(b) => b,
                other => panic!("a new buffer, not {other:?}"),
            })
            .collect();
        assert!(
            matches!(w.buffer_now(4), Available::Busy),
            "all DEPTH + 1 buffers are out"
        );
        // All DEPTH + 1 go to the thread (none waits for a write) and come back written.
        for (k, buf) in held.into_iter().enumerate() {
            assert!(w.send(buf, 32, 32 * k as u64));
        }
        let back = w.buffer(4).expect("one comes back");
        assert!(back.len() >= 4);
        w.finish().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            32 * (DEPTH as u64 + 1)
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_failed_write_stops_the_thread_and_is_reported() {
        let path = std::env::temp_dir().join(format!("fp8fast-pipeline-ro-{}", std::process::id()));
        File::create(&path).unwrap();
        let read_only = File::open(&path).unwrap();
        let mut w = WriterThread::start(read_only).unwrap();
        let mut stopped = false;
        for k in 0..100u64 {
            let Some(buf) = w.buffer(8) else {
                stopped = true;
                break;
            };
            if !w.send(buf, 64, k * 64) {
                stopped = true;
                break;
            }
        }
        assert!(
            stopped,
            "the thread stopped taking pieces after its write failed"
        );
        assert!(w.finish().is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
