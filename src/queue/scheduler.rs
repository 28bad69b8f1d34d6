//! The retry scheduler: jobs waiting for their next attempt time.
//!
//! One task owns the waiting jobs (a min-heap of due times plus a map by job id); others talk
//! to it through a bounded channel. When a job's time comes it goes back to the router. Flush
//! releases everything at once; listing and purging visit the waiting jobs in place.
//! Hand-written rather than tokio-util's DelayQueue, which cannot list or release its entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::message::Job;

pub(super) type Visitor = Box<dyn FnOnce(&mut dyn Iterator<Item = &Job>) + Send>;
pub(super) type Predicate = Box<dyn Fn(&Job) -> bool + Send>;

pub(super) enum Cmd {
    Schedule(Job, Duration),
    /// Release every waiting job now (`gannet queue flush`); replies with how many.
    Flush(oneshot::Sender<usize>),
    /// Visit waiting jobs (listing); the callback runs on the scheduler task.
    Visit(Visitor),
    /// Remove the jobs matching the predicate and hand them back (purge, resume).
    Take(Predicate, oneshot::Sender<Vec<Job>>),
}

/// Run until the channel closes. `due` receives each job whose time has come.
pub(super) async fn run(mut rx: mpsc::Receiver<Cmd>, due: impl Fn(Job)) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    loop {
        let next = heap.peek().map(|Reverse((t, _))| *t);
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Schedule(job, after)) => {
                    heap.push(Reverse((Instant::now() + after, job.id)));
                    jobs.insert(job.id, job);
                }
                Some(Cmd::Flush(reply)) => {
                    heap.clear();
                    let n = jobs.len();
                    for (_, j) in jobs.drain() {
                        due(j);
                    }
                    let _ = reply.send(n);
                }
                Some(Cmd::Visit(f)) => f(&mut jobs.values()),
                Some(Cmd::Take(pred, reply)) => {
                    let ids: Vec<u64> = jobs.iter().filter(|(_, j)| pred(j)).map(|(id, _)| *id).collect();
                    let taken = ids.iter().filter_map(|id| jobs.remove(id)).collect();
                    // Heap entries of taken jobs are skipped when they come due.
                    let _ = reply.send(taken);
                }
                None => break,
            },
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                while let Some(Reverse((t, id))) = heap.peek().copied() {
                    if t > now {
                        break;
                    }
                    heap.pop();
                    if let Some(j) = jobs.remove(&id) {
                        due(j);
                    }
                }
            }
        }
    }
}
