//! The worker pool: one rayon pool of `num_threads()` threads, sized by `FP8FAST_NUM_THREADS`
//! or the machine's parallelism, resizable with [`set_num_threads`].
//!
//! Work is split so that results never depend on the thread count: elementwise operations are
//! independent per element, and reductions combine per-chunk partial results in a fixed order.
//!
//! Most parallel loops go through [`for_each`] / [`map`], in which the calling thread works
//! too. Waking a sleeping pool thread costs 50-150 us on a virtual machine (measured here: an
//! inter-processor interrupt to a halted vCPU); with `ThreadPool::install` the caller would
//! wait that long before any work starts, which costs a 2^22-element conversion (about 0.5 ms
//! on one thread) a third of its speed-up. Here the caller starts on the first piece at once
//! and the helpers claim the remaining pieces when they wake.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// The most threads a pool may have: enough for any machine, few enough that a typo
/// (`set_num_threads(100000)`) is an error rather than an attempt to start that many threads.
pub const MAX_THREADS: usize = 1024;

/// Inputs smaller than this many elements run on the calling thread. Measured on a 2-vCPU VM,
/// calls back to back: 2 threads gain 1.3-1.6x at 2^18 float32 elements (25-80 us of work on
/// one thread) but only 0.9-1.2x at 2^16, where waking a helper costs as much as it saves.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// Bounds of the pieces [`chunk_len`] cuts: small enough that the thread which finishes last
/// waits for at most a few microseconds of work, large enough that claiming a piece (an atomic
/// add and an uncontended lock) costs nothing next to it.
const MIN_PIECE: usize = 1 << 12;
const MAX_PIECE: usize = 1 << 16;

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);
static ENV_ERROR: OnceLock<Option<String>> = OnceLock::new();

fn default_threads() -> usize {
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
    let from_env = std::env::var("FP8FAST_NUM_THREADS")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (n, err) = match from_env {
        None => (machine, None),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_THREADS).contains(&n) => (n, None),
            _ => (
                machine,
                Some(format!(
                    "FP8FAST_NUM_THREADS={v}: expected a whole number from 1 to {MAX_THREADS}"
                )),
            ),
        },
    };
    let _ = ENV_ERROR.set(err);
    n
}

/// Why `FP8FAST_NUM_THREADS` was ignored, if it was.
pub fn env_error() -> Option<String> {
    let _ = pool();
    ENV_ERROR.get().cloned().flatten()
}

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("fp8fast-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::value(format!("cannot start {n} worker threads: {e}")))
}

fn pool() -> Arc<ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(p);
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = slot.as_ref() {
        return Arc::clone(p);
    }
    // A pool of the default size; if the OS refuses threads, fall back to a single one.
    let p = build(default_threads())
        .or_else(|_| build(1))
        .expect("a one-thread pool");
    *slot = Some(Arc::clone(&p));
    p
}

/// The number of threads large operations use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Use `n >= 1` threads for later operations. Operations already running keep their pool.
pub fn set_num_threads(n: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(Error::value(format!(
            "number of threads must be >= 1 and <= {MAX_THREADS}, got {n}"
        )));
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_some_and(|p| p.current_num_threads() == n) {
        return Ok(()); // keep the running pool (and its warm threads)
    }
    *slot = Some(build(n)?);
    Ok(())
}

/// Run `f` inside the pool, so that rayon's parallel iterators in it use the pool's threads.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let p = pool();
    if p.current_num_threads() == 1 {
        f()
    } else {
        p.install(f)
    }
}

/// Chunk length that splits `n` elements into many pieces per thread (see `MAX_PIECE`), a
/// multiple of `align`. Returns `n` when the work should not be split.
pub fn chunk_len(n: usize, align: usize) -> usize {
    chunk_len_for(n, align, num_threads())
}

fn chunk_len_for(n: usize, align: usize, threads: usize) -> usize {
    if threads == 1 || n < PARALLEL_MIN_ELEMENTS {
        return n.max(1);
    }
    let per_task = n.div_ceil(threads * 16).clamp(MIN_PIECE, MAX_PIECE);
    per_task.div_ceil(align.max(1)) * align.max(1)
}

/// Call `work` on every item, on the calling thread and up to `num_threads() - 1` pool threads,
/// each claiming the next unclaimed item (in order) until none is left. Returns when every
/// call has returned; a panic in `work` is resumed on the caller.
pub fn for_each<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) {
    for_each_in(&pool(), items, work);
}

fn for_each_in<T: Send>(p: &ThreadPool, items: Vec<T>, work: impl Fn(T) + Sync) {
    let helpers = p.current_num_threads().min(items.len()).saturating_sub(1);
    if helpers == 0 {
        items.into_iter().for_each(work);
        return;
    }
    // Each slot is taken exactly once: the index comes from `next`, so its lock is uncontended.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let next = AtomicUsize::new(0);
    // Set when a call of `work` panics, so that the other threads stop claiming items.
    let aborted = AtomicBool::new(false);
    let drain = || {
        let _on_panic = SetOnUnwind(&aborted);
        while !aborted.load(Ordering::Relaxed) {
            let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let item = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(item) = item {
                work(item);
            }
        }
    };
    p.in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| drain());
        }
        drain();
    });
}

/// Sets its flag when dropped by a panic unwinding.
struct SetOnUnwind<'a>(&'a AtomicBool);

impl Drop for SetOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// `items.map(work)` in item order, computed as by [`for_each`].
pub fn map<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    for_each(items.into_iter().zip(&results).collect(), |(item, slot)| {
        let r = work(item);
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .expect("for_each calls work on every item")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn for_each_calls_work_once_per_item_on_every_pool_size() {
        for threads in [1, 2, 3] {
            let pool = build(threads).unwrap();
            let seen: Vec<AtomicU64> = (0..1000).map(|_| AtomicU64::new(0)).collect();
            let count = |i: usize| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            };
            for_each_in(&pool, (0..1000).collect(), count);
            // Called from inside a pool thread too (nested parallelism).
            pool.install(|| for_each_in(&pool, (0..1000).collect(), count));
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 2));
        }
    }

    #[test]
    fn map_keeps_item_order_and_handles_empty_input() {
        let squares = map((0..5000u64).collect(), |i| i * i);
        assert_eq!(squares, (0..5000u64).map(|i| i * i).collect::<Vec<_>>());
        assert!(map(Vec::<u8>::new(), |i| i).is_empty());
    }

    #[test]
    fn mutable_pieces_are_written_in_place() {
        let mut v = vec![0u32; 100_000];
        let pieces: Vec<(usize, &mut [u32])> = v.chunks_mut(777).enumerate().collect();
        for_each(pieces, |(i, piece)| piece.fill(i as u32));
        assert!(v.iter().enumerate().all(|(j, &x)| x == (j / 777) as u32));
    }

    #[test]
    fn a_panic_in_work_reaches_the_caller_and_stops_the_loop() {
        const ITEMS: u64 = 100_000;
        let pool = build(2).unwrap();
        let done = AtomicU64::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for_each_in(&pool, (0..ITEMS).collect(), |i: u64| {
                assert!(i != 40, "item 40");
                // Items that take a while, as real ones do: 100_000 of them take seconds.
                std::thread::sleep(std::time::Duration::from_micros(20));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }));
        assert!(r.is_err());
        // The other thread goes on until the flag is set, which happens only after the panic
        // hook has printed its message (and, with RUST_BACKTRACE, a backtrace: tens of ms on a
        // loaded machine), then claims no more. Without the flag it would do all the items.
        assert!(done.load(Ordering::Relaxed) < ITEMS / 2, "{done:?}");
    }

    #[test]
    fn chunk_len_is_aligned_and_bounded() {
        for n in [PARALLEL_MIN_ELEMENTS, 1 << 20, 1 << 26, 12_345_678] {
            assert_eq!(chunk_len_for(n, 64, 1), n);
            for threads in [2, 3, 64] {
                let c = chunk_len_for(n, 64, threads);
                assert_eq!(c % 64, 0);
                assert!((MIN_PIECE..=MAX_PIECE).contains(&c), "{n} -> {c}");
            }
        }
        assert_eq!(chunk_len_for(10, 64, 2), 10);
        assert_eq!(chunk_len_for(0, 64, 2), 1);
        // Whole rows of 3000: 32768 rounded up.
        assert_eq!(chunk_len_for(1 << 20, 3000, 2), 33_000);
    }
}
