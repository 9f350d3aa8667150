//! The fast path: events sorted once by (entity, ts); per entity, queries in time order slide a
//! `[lo, hi)` window forward, so each event enters and leaves once.

use crate::{Agg, Events, Output, Query};
use std::collections::HashMap;
use std::sync::Arc;

/// The sort shared by every field of one set of events: order, times and each entity's range.
#[derive(Debug)]
struct Sorted {
    order: Vec<usize>,
    ts: Vec<i64>,
    ranges: HashMap<i64, (usize, usize)>,
}

/// Events sorted by entity and time, with each entity's range; reusable across aggregations,
/// and across fields through [`Prepared::with_values`] without sorting again.
#[derive(Debug)]
pub struct Prepared {
    sorted: Arc<Sorted>,
    value: Vec<Option<f64>>,
}

/// Queries in (entity, now) order, computed once for every aggregation over them.
#[derive(Debug)]
pub struct QueryOrder(Vec<usize>);

impl QueryOrder {
    pub fn new(queries: &[Query]) -> Self {
        let mut order: Vec<usize> = (0..queries.len()).collect();
        order.sort_unstable_by_key(|&i| (queries[i].entity, queries[i].now));
        QueryOrder(order)
    }
}

impl Prepared {
    pub fn new(events: &Events) -> Self {
        let mut order: Vec<usize> = (0..events.ts.len()).collect();
        order.sort_unstable_by_key(|&i| (events.entity[i], events.ts[i]));
        let mut ranges = HashMap::new();
        let mut start = 0;
        for k in 0..order.len() {
            let e = events.entity[order[k]];
            if k + 1 == order.len() || events.entity[order[k + 1]] != e {
                ranges.insert(e, (start, k + 1));
                start = k + 1;
            }
        }
        let ts = order.iter().map(|&i| events.ts[i]).collect();
        let value = order.iter().map(|&i| events.value[i]).collect();
        Prepared {
            sorted: Arc::new(Sorted { order, ts, ranges }),
            value,
        }
    }

    /// The same events with other values (another field), in the original event order.
    pub fn with_values(&self, values: &[Option<f64>]) -> Prepared {
        let value = self.sorted.order.iter().map(|&i| values[i]).collect();
        Prepared {
            sorted: self.sorted.clone(),
            value,
        }
    }

    /// Aggregates for every query, in the order given.
    pub fn aggregate(&self, queries: &[Query], agg: Agg, window: Option<i64>) -> Output {
        self.aggregate_ordered(queries, &QueryOrder::new(queries), agg, window)
    }

    /// As [`Prepared::aggregate`], with the queries' order computed beforehand.
    pub fn aggregate_ordered(
        &self,
        queries: &[Query],
        order: &QueryOrder,
        agg: Agg,
        window: Option<i64>,
    ) -> Output {
        let order = &order.0;
        let mut out = vec![None; queries.len()];
        let mut k = 0;
        while k < order.len() {
            let entity = queries[order[k]].entity;
            let mut end = k;
            while end < order.len() && queries[order[end]].entity == entity {
                end += 1;
            }
            let (s, e) = self.sorted.ranges.get(&entity).copied().unwrap_or((0, 0));
            self.entity_pass(s, e, &order[k..end], queries, agg, window, &mut out);
            k = end;
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn entity_pass(
        &self,
        s: usize,
        e: usize,
        idx: &[usize],
        queries: &[Query],
        agg: Agg,
        window: Option<i64>,
        out: &mut Output,
    ) {
        let ts = &self.sorted.ts[s..e];
        let val = &self.value[s..e];
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut distinct: HashMap<u64, u32> = HashMap::new();
        for &qi in idx {
            let now = queries[qi].now;
            let lower = window.map_or(i64::MIN, |w| now.saturating_sub(w));
            while hi < ts.len() && ts[hi] < now {
                if agg == Agg::CountDistinct
                    && let Some(v) = val[hi]
                {
                    *distinct.entry(v.to_bits()).or_default() += 1;
                }
                hi += 1;
            }
            while lo < hi && ts[lo] < lower {
                if agg == Agg::CountDistinct
                    && let Some(v) = val[lo]
                    && let Some(c) = distinct.get_mut(&v.to_bits())
                {
                    *c -= 1;
                    if *c == 0 {
                        distinct.remove(&v.to_bits());
                    }
                }
                lo += 1;
            }
            out[qi] = window_value(&ts[lo..hi], &val[lo..hi], now, agg, distinct.len());
        }
    }
}

fn window_value(
    ts: &[i64],
    val: &[Option<f64>],
    now: i64,
    agg: Agg,
    distinct: usize,
) -> Option<f64> {
    let mut vals = val.iter().filter_map(|v| *v);
    match agg {
        Agg::Count => Some(ts.len() as f64),
        Agg::CountDistinct => Some(distinct as f64),
        Agg::Sum => vals.next().map(|first| vals.fold(first, |a, b| a + b)),
        Agg::Mean => {
            let (n, s) = val
                .iter()
                .filter_map(|v| *v)
                .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
            (n > 0).then(|| s / n as f64)
        }
        Agg::Min => vals.reduce(f64::min),
        Agg::Max => vals.reduce(f64::max),
        Agg::Latest => {
            let last = (0..ts.len()).rev().find(|&i| val[i].is_some())?;
            let t = ts[last];
            (0..=last)
                .rev()
                .take_while(|&i| ts[i] == t)
                .filter_map(|i| val[i])
                .reduce(f64::max)
        }
        Agg::TimeSinceLatest => ts.last().map(|t| (now - t) as f64 / 1e6),
    }
}

/// One-shot convenience over [`Prepared`].
pub fn aggregate(events: &Events, queries: &[Query], agg: Agg, window: Option<i64>) -> Output {
    Prepared::new(events).aggregate(queries, agg, window)
}
