//! A set of windowed aggregations over one set of prepared events: each field's values are
//! prepared once, every window of one aggregation of a field is computed in one pass, and the
//! passes, independent of each other, are spread over threads. The run's history path and the
//! point-in-time operator both compute their aggregations here.

use crate::EngineError;
use crate::compute::{Decode, Use, decode, kernel_values, strict_cast, use_of};
use crate::exec::pit_aggregate::PitAggregation;
use arrow::array::ArrayRef;
use slate_aggregate::kernel::{Prepared, QueryOrder};
use slate_aggregate::{Agg, Query, Values};
use std::collections::HashMap;

#[derive(Debug)]
pub(crate) enum WindowsError {
    /// The kernel refused a result (a sum past 64 bits): the features involved and why.
    Kernel(String),
    Engine(EngineError),
}

impl From<EngineError> for WindowsError {
    fn from(e: EngineError) -> Self {
        WindowsError::Engine(e)
    }
}

impl From<arrow::error::ArrowError> for WindowsError {
    fn from(e: arrow::error::ArrowError) -> Self {
        WindowsError::Engine(e.into())
    }
}

/// A field's values as one kernel input: the field (none for row counts) and how it is used.
type Slot = (Option<String>, Use);

/// The result column of each wanted aggregation, in order, one value per query. `values` gives
/// a field's values, one per event of `base` in the events' original order (`None`: there are
/// no events to read values from). With `threads` above one, the passes run on that many
/// threads.
pub(crate) fn aggregate(
    base: &Prepared,
    values: &dyn Fn(&str) -> Result<Option<ArrayRef>, EngineError>,
    queries: &[Query],
    order: &QueryOrder,
    wanted: &[PitAggregation],
    threads: usize,
) -> Result<Vec<ArrayRef>, WindowsError> {
    let mut prepared: HashMap<Slot, (Prepared, Decode)> = HashMap::new();
    // One pass per (field, aggregation): the positions of its windows in `wanted`.
    let mut jobs: Vec<(Slot, Agg, Vec<usize>)> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let how = use_of(w.agg);
        let slot = (w.field.clone().filter(|_| how != Use::None), how);
        if !prepared.contains_key(&slot) {
            let column = match &slot.0 {
                Some(f) => values(f)?,
                None => None,
            };
            let entry = match column {
                Some(c) => {
                    let (v, decoder) = kernel_values(&c, how)?;
                    (base.with_values(&v), decoder)
                }
                None => (base.with_values(&Values::absent()), Decode::Plain),
            };
            prepared.insert(slot.clone(), entry);
        }
        match jobs.iter_mut().find(|j| j.0 == slot && j.1 == w.agg) {
            Some(j) => j.2.push(i),
            None => jobs.push((slot, w.agg, vec![i])),
        }
    }
    // The heaviest passes first, so that every thread stays busy to the end.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2.len()));
    let one = |j: usize| -> Result<Vec<(usize, ArrayRef)>, WindowsError> {
        let (slot, agg, members) = &jobs[j];
        let (p, decoder) = prepared
            .get(slot)
            .ok_or_else(|| EngineError::Internal("aggregation input not prepared".into()))?;
        let windows: Vec<Option<i64>> = members.iter().map(|&i| wanted[i].window).collect();
        let results = p
            .aggregate_windows(queries, order, *agg, &windows)
            .map_err(|e| {
                let names: Vec<&str> = members.iter().map(|&i| wanted[i].name.as_str()).collect();
                WindowsError::Kernel(format!("{}: {e}", names.join(", ")))
            })?;
        let mut out = Vec::new();
        for (result, &i) in results.into_iter().zip(members) {
            let array = decode(result, decoder)?;
            out.push((i, strict_cast(&array, &wanted[i].output)?));
        }
        Ok(out)
    };
    let threads = threads.min(jobs.len());
    let done: Vec<Result<Vec<(usize, ArrayRef)>, WindowsError>> = if threads <= 1 {
        (0..jobs.len()).map(one).collect()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if j >= jobs.len() {
                                return mine;
                            }
                            mine.push(one(j));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![Err(WindowsError::Engine(EngineError::Internal(
                            "an aggregation thread panicked".into(),
                        )))]
                    })
                })
                .collect()
        })
    };
    let mut arrays: Vec<Option<ArrayRef>> = vec![None; wanted.len()];
    for r in done {
        for (i, a) in r? {
            arrays[i] = Some(a);
        }
    }
    arrays
        .into_iter()
        .map(|a| {
            a.ok_or_else(|| {
                WindowsError::Engine(EngineError::Internal(
                    "an aggregation was not computed".into(),
                ))
            })
        })
        .collect()
}
