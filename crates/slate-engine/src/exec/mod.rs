//! The run's physical operators, each a DataFusion `ExecutionPlan` with its own tests.

pub(crate) mod dedupe;
pub(crate) mod nodes;
pub mod pit_aggregate;
pub mod pit_lookup;
pub(crate) mod runtime;
pub(crate) mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time an operator spends working (not waiting), summed over its partitions: what a stage of
/// a streamed run reports, since its stages overlap in time. `Busy::default()` counts nowhere.
#[derive(Debug, Default, Clone)]
pub struct Busy(Option<Arc<AtomicU64>>);

impl Busy {
    /// A clock that counts.
    pub fn new() -> Self {
        Busy(Some(Arc::new(AtomicU64::new(0))))
    }

    /// Whether this clock counts (one that does not is where uncounted time goes).
    pub fn is_counted(&self) -> bool {
        self.0.is_some()
    }

    pub fn add(&self, d: Duration) {
        if let Some(n) = &self.0 {
            n.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)))
    }

    /// Runs `f`, counting its time.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.add(t.elapsed());
        r
    }
}

/// `stream`'s items, the time of each of its polls counted in `busy`.
pub fn busy_polls<S: futures::Stream + Unpin>(
    mut stream: S,
    busy: Busy,
) -> impl futures::Stream<Item = S::Item> {
    use futures::StreamExt;
    futures::stream::poll_fn(move |cx| {
        let t = Instant::now();
        let r = stream.poll_next_unpin(cx);
        busy.add(t.elapsed());
        r
    })
}

/// `stream` with the time of each of its polls counted in `busy` (a poll that waits for another
/// task returns at once, so waiting is not counted).
pub fn busy_stream(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    busy: Busy,
) -> datafusion::execution::SendableRecordBatchStream {
    use futures::StreamExt;
    let schema = stream.schema();
    let polled = futures::stream::poll_fn(move |cx| {
        let t = Instant::now();
        let r = stream.poll_next_unpin(cx);
        busy.add(t.elapsed());
        r
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, polled))
}

/// The first Slate error raised inside a plan's operators, kept whole (DataFusion carries
/// errors as text across its tasks): what a failed run reports.
#[derive(Debug, Default, Clone)]
pub(crate) struct FirstError(Arc<std::sync::Mutex<Option<crate::EngineError>>>);

impl FirstError {
    /// Keeps `e` (when no error was kept before) and returns it as DataFusion's error.
    pub fn keep(&self, e: crate::EngineError) -> datafusion::error::DataFusionError {
        let message = e.to_string();
        if let Ok(mut slot) = self.0.lock()
            && slot.is_none()
        {
            *slot = Some(e);
        }
        datafusion::error::DataFusionError::Execution(message)
    }

    pub fn take(&self) -> Option<crate::EngineError> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}
