//! Blocking work (filesystem calls, file transfers, starting a warm shell) moved off the
//! runtime's workers. The agent has one worker per sandbox vCPU, often one or two: a
//! `remove` of a large tree or a deep listing run there would stall every process's
//! output, keepalive and request until it ended.
//!
//! The work runs on [`THREADS`] threads of the agent's own, made at start before any user
//! code runs ([`start`]), not on tokio's blocking pool: tokio makes a thread when all of
//! its are busy and panics when it cannot, as under a root fork bomb at the sandbox's
//! task limit, which dropped the connection of the request that asked. Here a job waits
//! for a free thread instead.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::Error;

/// How many threads run blocking work. Most of it waits on the filesystem rather than
/// computing, so more than the sandbox's one or two vCPUs: a long job (removing
/// node_modules, a recursive listing) leaves three threads for quick ones (a stat, a
/// chunk of a transfer). Few, as the sandbox's task limit counts each.
const THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("start blocking thread {index} of {THREADS}")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Threads taking jobs from one queue, in order.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    fn start(threads: usize) -> Result<Pool, StartError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("silo-blocking-{index}"))
                .spawn(move || take_jobs(&queue))
                .map_err(|source| StartError::Thread { index, source })?;
        }
        Ok(Pool { jobs })
    }

    /// Queue `work`; a panic in it ends it, not its thread.
    fn spawn(&self, work: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        // In the caller's runtime, as on tokio's blocking threads: a job may register a
        // descriptor with its reactor (a watcher's inotify, a warm shell's pipes).
        let runtime = Handle::try_current().ok();
        let job = move || {
            let _entered = runtime.as_ref().map(Handle::enter);
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
                tracing::error!(panic = panic_message(&*panic), "blocking job panicked");
            }
        };
        self.jobs.send(Box::new(job)).map_err(|_| stopped())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.spawn(move || {
            let done = std::panic::catch_unwind(AssertUnwindSafe(work));
            // The caller may have gone (its client did): the result is dropped here.
            let _ = tx.send(done);
        })?;
        match rx.await.map_err(|_| stopped())? {
            Ok(result) => result,
            Err(panic) => Err(Error::io(
                "blocking task",
                std::io::Error::other(format!("panicked: {}", panic_message(&*panic))),
            )),
        }
    }
}

/// A pool thread's life: run jobs as they come.
fn take_jobs(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // One idle thread waits on the queue, the others for the lock; the lock is
        // released before the job runs.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            // The pool is gone: only when it failed to start.
            Err(mpsc::RecvError) => return,
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn stopped() -> Error {
    Error::io(
        "blocking task",
        std::io::Error::other("the blocking threads stopped"),
    )
}

static POOL: OnceLock<Result<Pool, StartError>> = OnceLock::new();

/// The agent's pool, made on first use: [`start`] in the agent, any job in unit tests.
fn pool() -> Result<&'static Pool, &'static StartError> {
    POOL.get_or_init(|| Pool::start(THREADS)).as_ref()
}

/// Make the threads, before anything can fill the sandbox's task limit.
pub fn start() -> Result<(), &'static StartError> {
    pool().map(drop)
}

fn not_started(e: &StartError) -> Error {
    Error::io("blocking task", std::io::Error::other(e.to_string()))
}

/// Run `work` on a blocking thread and wait for it. A panic in it is the request's
/// internal error.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    pool().map_err(not_started)?.run(work).await
}

/// Queue `work` on a blocking thread without waiting for it.
pub fn spawn(work: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    pool().map_err(not_started)?.spawn(work)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn jobs_run_in_the_runtime_and_a_panic_fails_only_its_own() {
        let pool = Pool::start(2).unwrap();
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7);
        let in_runtime = pool.run(|| Ok(Handle::try_current().is_ok())).await;
        assert!(in_runtime.unwrap());
        for _ in 0..3 {
            let failed = pool.run(|| -> Result<(), Error> { panic!("boom") }).await;
            match failed {
                Err(Error::Io { source, .. }) => assert!(source.to_string().contains("boom")),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pool.run(|| Ok("still here")).await.unwrap(), "still here");
    }

    #[tokio::test]
    async fn jobs_wait_for_a_free_thread() {
        let pool = Pool::start(2).unwrap();
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        for _ in 0..2 {
            let held = held.clone();
            pool.spawn(move || {
                let _ = held.lock().unwrap().recv();
            })
            .unwrap();
        }
        let queued = pool.run(|| Ok("ran"));
        tokio::pin!(queued);
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut queued).await;
        assert!(waited.is_err(), "ran while both threads were busy");
        release.send(()).unwrap();
        assert_eq!(queued.await.unwrap(), "ran");
    }
}
