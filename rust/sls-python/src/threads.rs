//! Thread pools for batch work, with a thread-count knob and fork safety.
//!
//! rayon's global pool cannot survive `fork()`: the child has the pool's bookkeeping but
//! none of its threads, and the first parallel call would hang. So pools are ours, cached
//! per thread count and tagged with the process id; a child process that inherited them
//! leaks the dead parent's pools (dropping would signal threads that do not exist) and
//! builds its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use sls_kernel::Execution;

use crate::errors::{invalid, Error, Result};

/// Batches smaller than this run on the calling thread without releasing the GIL: for a
/// few items, waking a pool costs more than the work (blake3-py's GIL_MINSIZE idea).
pub const PARALLEL_MIN_ITEMS: usize = 2048;

struct Pools {
    pid: u32,
    by_size: HashMap<usize, Arc<ThreadPool>>,
}

static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();

/// Threads used when a call gives none: `SLS_CORE_THREADS` if set, else every core.
/// Read once per process: finding the core count reads cgroup files (~30 µs).
#[pyfunction]
pub fn default_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(read_default_threads)
}

fn read_default_threads() -> usize {
    std::env::var("SLS_CORE_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Validates a `threads` argument (None → default).
pub fn thread_count(threads: Option<usize>) -> Result<usize> {
    match threads {
        None => Ok(default_threads()),
        Some(0) => Err(invalid("threads", "must be at least 1")),
        Some(n) if n > 1024 => Err(invalid("threads", "must be at most 1024")),
        Some(n) => Ok(n),
    }
}

fn pool(threads: usize) -> Result<Arc<ThreadPool>> {
    let lock = POOLS.get_or_init(|| {
        Mutex::new(Pools {
            pid: std::process::id(),
            by_size: HashMap::new(),
        })
    });
    let mut pools = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    if pools.pid != pid {
        // Forked child: the parent's worker threads do not exist here.
        std::mem::forget(std::mem::take(&mut pools.by_size));
        pools.pid = pid;
    }
    if let Some(pool) = pools.by_size.get(&threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("sls-core-{threads}-{i}"))
        .build()
        .map_err(|e| invalid("threads", format!("cannot start a pool: {e}")))?;
    let pool = Arc::new(pool);
    pools.by_size.insert(threads, Arc::clone(&pool));
    Ok(pool)
}

/// Runs `work` for a batch of `items`: on the calling thread with the GIL held for small
/// batches, on the calling thread with the GIL released for one thread, and on a pool of
/// `threads` with the GIL released otherwise. A bad `threads` and the work's own error
/// (the kernel's, for a column that breaks a rule) come back alike.
pub fn run_batch<T, E, F>(
    py: Python<'_>,
    items: usize,
    threads: Option<usize>,
    work: F,
) -> Result<T>
where
    F: FnOnce(Execution) -> Result<T, E> + Send,
    T: Send,
    E: Into<Error> + Send,
{
    let threads = thread_count(threads)?;
    let done = if items < PARALLEL_MIN_ITEMS {
        work(Execution::Sequential)
    } else if threads == 1 {
        py.detach(|| work(Execution::Sequential))
    } else {
        let pool = pool(threads)?;
        py.detach(|| pool.install(|| work(Execution::Parallel)))
    };
    done.map_err(Into::into)
}
