//! The worker pool: one rayon pool of `num_threads()` threads, sized by `FP8FAST_NUM_THREADS`
//! or the machine's parallelism, resizable with [`set_num_threads`].
//!
//! Work is split so that results never depend on the thread count: elementwise operations are
//! independent per element, and reductions combine per-chunk partial results in a fixed order.

use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// The most threads a pool may have: enough for any machine, few enough that a typo
/// (`set_num_threads(100000)`) is an error rather than an attempt to start that many threads.
pub const MAX_THREADS: usize = 1024;

/// Inputs smaller than this many elements run on the calling thread.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

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

/// Chunk length that splits `n` elements into a few tasks per thread, a multiple of `align`,
/// at least `PARALLEL_MIN_ELEMENTS / 4`. Returns `n` when the work should not be split.
pub fn chunk_len(n: usize, align: usize) -> usize {
    let threads = num_threads();
    if threads == 1 || n < PARALLEL_MIN_ELEMENTS {
        return n.max(1);
    }
    let per_task = n.div_ceil(threads * 4).max(PARALLEL_MIN_ELEMENTS / 4);
    per_task.div_ceil(align) * align
}
