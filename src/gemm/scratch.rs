//! Per-thread float32 buffers of the small-m paths, reused across calls. A fresh buffer of a
//! few hundred KiB per call cost its page faults and zeroing every time: for 32 x 4096 x
//! 4096 `[in, out]` (Intel Xeon, one thread) the kernel's page faults, page clearing and
//! `memset` took 4-5% of the time. A buffer is handed out with stale contents: every user
//! writes what it later reads.

use std::cell::RefCell;

use crate::alloc::{self, Refused};

/// Buffers above this size are freed after the call instead of kept (the blocked driver keeps
/// up to the same amount of packed A).
const KEEP_MAX_BYTES: usize = 8 << 20;

/// The buffers a thread keeps, one per use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// The activation rows as contiguous float32 (calling thread).
    Activations,
    /// The activations in the order a kernel reads them (calling thread).
    Packed,
    /// A work item's output slice (worker).
    Output,
    /// A work item's decoded weight tile (worker).
    Tile,
}

const SLOTS: usize = 4;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; SLOTS]> = RefCell::new(Default::default());
}

/// Runs `f` on `len` floats of this thread's `slot` buffer (grown fallibly; stale contents),
/// starting at a 64-byte boundary: the kernels' full-vector loads and stores then never
/// split across cache lines (with the heap's 16-byte alignment, the tile kernel's stores of
/// decoded weights took 44% of its decode time). A nested call for the same slot gets a buffer
/// of its own.
pub(crate) fn with<R>(
    slot: Slot,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<R, Refused> {
    let mut buf = BUFFERS.with(|b| std::mem::take(&mut b.borrow_mut()[slot as usize]));
    const LINE_FLOATS: usize = 64 / std::mem::size_of::<f32>();
    let padded = len
        .checked_add(LINE_FLOATS - 1)
        .ok_or(Refused::of::<f32>(usize::MAX))?;
    alloc::grow(&mut buf, padded, 0.0)?;
    let start = buf.as_ptr().align_offset(64).min(LINE_FLOATS - 1);
    let result = f(&mut buf[start..start + len]);
    if buf.capacity() * std::mem::size_of::<f32>() <= KEEP_MAX_BYTES {
        BUFFERS.with(|b| b.borrow_mut()[slot as usize] = buf);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_grows_and_frees_large_buffers() {
        let first = with(Slot::Tile, 100, |b| {
            b.fill(7.0);
            b.as_ptr() as usize
        })
        .unwrap();
        assert_eq!(first % 64, 0, "64-byte aligned");
        // The same allocation again, contents kept (stale).
        let (again, stale) = with(Slot::Tile, 50, |b| (b.as_ptr() as usize, b[49])).unwrap();
        assert_eq!((again, stale), (first, 7.0));
        // Nested use of the same slot gets another buffer.
        with(Slot::Tile, 10, |outer| {
            with(Slot::Tile, 10, |inner| {
                assert_ne!(inner.as_ptr(), outer.as_ptr())
            })
            .unwrap()
        })
        .unwrap();
        // Too large to keep: freed, so the kept buffer is empty and a new one is allocated.
        let big = KEEP_MAX_BYTES / 4 + 1;
        with(Slot::Output, big, |b| assert_eq!(b.len(), big)).unwrap();
        BUFFERS.with(|b| assert_eq!(b.borrow()[Slot::Output as usize].capacity(), 0));
        // A refused size is an error, not an abort.
        assert!(with(Slot::Output, usize::MAX / 2, |_| ()).is_err());
    }
}
