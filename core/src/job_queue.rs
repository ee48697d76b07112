//! Running a shared state's logic one job at a time, without a lock held
//! across I/O: the course's `JobQueue`.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::connection::panic_message;
use crate::rt;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A task that owns a state (a chat room, a game zone) and runs the jobs
/// pushed to it one at a time, in order.
///
/// Sessions push jobs from their callbacks; a job may broadcast, look up
/// sessions or change the state, and none of it ever runs at the same time
/// as another job of the same queue. The queue is bounded: `push` fails
/// instead of growing memory without end. A job that panics is logged and
/// dropped; the queue goes on. The task ends when every `JobQueue` clone is
/// dropped.
///
/// ```
/// use session_core::JobQueue;
///
/// # async_std::task::block_on(async {
/// let counter = JobQueue::spawn(0u64, 1024);
/// counter.push(|n| *n += 1).unwrap();
/// let (tx, rx) = std::sync::mpsc::channel();
/// counter.push(move |n| tx.send(*n).unwrap()).unwrap();
/// # let value = async_std::task::spawn_blocking(move || rx.recv().unwrap()).await;
/// # assert_eq!(value, 1);
/// # });
/// ```
pub struct JobQueue<T> {
    jobs: rt::Sender<Job<T>>,
}

impl<T> Clone for JobQueue<T> {
    fn clone(&self) -> Self {
        JobQueue {
            jobs: self.jobs.clone(),
        }
    }
}

impl<T> fmt::Debug for JobQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("queued", &self.jobs.len())
            .finish()
    }
}

/// Why [`JobQueue::push`] did not queue a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity of jobs already.
    Full,
    /// The queue's task has ended.
    Closed,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushError::Full => "job queue is full",
            PushError::Closed => "job queue is closed",
        })
    }
}

impl std::error::Error for PushError {}

impl<T: Send + 'static> JobQueue<T> {
    /// Starts the task that owns `state`; at most `capacity` jobs wait at once.
    pub fn spawn(mut state: T, capacity: usize) -> JobQueue<T> {
        let (jobs, queue) = rt::bounded::<Job<T>>(capacity.max(1));
        rt::spawn(async move {
            while let Ok(job) = queue.recv().await {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(&mut state))) {
                    log::error!("job panicked: {}", panic_message(payload.as_ref()));
                }
            }
        });
        JobQueue { jobs }
    }

    /// Queues `job`; returns at once.
    pub fn push(&self, job: impl FnOnce(&mut T) + Send + 'static) -> Result<(), PushError> {
        self.jobs.try_send(Box::new(job)).map_err(|e| {
            if e.is_full() {
                PushError::Full
            } else {
                PushError::Closed
            }
        })
    }

    /// Queues `job`, waiting for room if the queue is full.
    pub async fn push_wait(
        &self,
        job: impl FnOnce(&mut T) + Send + 'static,
    ) -> Result<(), PushError> {
        self.jobs
            .send(Box::new(job))
            .await
            .map_err(|_| PushError::Closed)
    }
}
