//! Progress of a running order: a byte counter per phase, sampled every 500 ms and handed
//! to the session, which relays it to the coordinator (and drops it while disconnected).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often a phase's progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// One progress sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressUpdate {
    pub phase: &'static str,
    pub bytes: u64,
    /// Average rate since the phase started.
    pub bytes_per_sec: f64,
}

/// Where an executor's progress goes.
#[derive(Clone)]
pub struct ProgressReporter {
    sink: Arc<dyn Fn(ProgressUpdate) + Send + Sync>,
}

impl ProgressReporter {
    /// Creates a reporter that hands every sample to `sink`.
    pub fn new(sink: impl Fn(ProgressUpdate) + Send + Sync + 'static) -> Self {
        Self {
            sink: Arc::new(sink),
        }
    }

    /// Runs `work` (which counts its bytes into the counter it is given) while reporting the
    /// counter every 500 ms and once more when it ends.
    pub async fn track<F, Fut>(&self, phase: &'static str, work: F) -> Fut::Output
    where
        F: FnOnce(Arc<AtomicU64>) -> Fut,
        Fut: Future,
    {
        let counter = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let report = || {
            let bytes = counter.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            (self.sink)(ProgressUpdate {
                phase,
                bytes,
                bytes_per_sec: if secs > 0.0 { bytes as f64 / secs } else { 0.0 },
            });
        };
        let work = work(counter.clone());
        tokio::pin!(work);
        let mut ticker = tokio::time::interval(REPORT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                output = &mut work => {
                    report();
                    return output;
                }
                _ = ticker.tick() => report(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_periodically_and_at_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = ProgressReporter::new({
            let seen = seen.clone();
            move |u: ProgressUpdate| seen.lock().expect("lock").push(u)
        });
        let out = reporter
            .track("dump", |counter| async move {
                for _ in 0..4 {
                    counter.fetch_add(100, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                7
            })
            .await;
        assert_eq!(out, 7);
        let seen = seen.lock().expect("lock");
        // Ticks at 0, 500, 1000 ms, then the final report at 1200 ms.
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen.iter().all(|u| u.phase == "dump"));
        let last = seen.last().expect("final report");
        assert_eq!(last.bytes, 400);
        assert!((last.bytes_per_sec - 400.0 / 1.2).abs() < 1.0, "{last:?}");
    }
}
