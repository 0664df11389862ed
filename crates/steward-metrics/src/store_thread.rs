//! The metrics store's own thread: scrapes are ingested, flushes planned and
//! recorded, and truncations run there, one at a time, rather than on the
//! async runtime's blocking pool.
//!
//! Why a thread of its own: glibc's allocator gives threads arenas of their
//! own, and the blocking pool's threads come and go. Spread over them, the
//! store's long-lived series and each scrape's short-lived buffers left a
//! dozen arenas each holding freed memory it could not give back: 1.5 KB
//! resident per series where the same work on one arena takes 1.0
//! (`benches/tsdb.sh`, 10 × 10,000 series). The slow part of a flush —
//! writing to `series.db` — stays on the blocking pool, so a flush never
//! holds up a scrape.

use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

fn sender() -> &'static mpsc::Sender<Job> {
    static SENDER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("metrics-store".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("a thread for the metrics store");
        tx
    })
}

/// Runs `f` on the store's thread and waits for it without blocking the
/// runtime; a panic in `f` is resumed here, as `spawn_blocking`'s is.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    if sender().send(job).is_err() {
        unreachable!("the metrics store's thread runs as long as the process");
    }
    match rx.await {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => unreachable!("every job answers (a panic is caught and sent)"),
    }
}
