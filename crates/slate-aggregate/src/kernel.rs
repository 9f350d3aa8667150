//! The fast path: events sorted once by (entity, ts); per entity, queries in time order slide a
//! `[lo, hi)` window forward, so each event enters and leaves once.

use crate::{Agg, Events, Output, Query};
use std::collections::HashMap;

/// Events sorted by entity and time, with each entity's range; reusable across aggregations.
#[derive(Debug)]
pub struct Prepared {
    ts: Vec<i64>,
    value: Vec<Option<f64>>,
    ranges: HashMap<i64, (usize, usize)>,
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
        Prepared {
            ts: order.iter().map(|&i| events.ts[i]).collect(),
            value: order.iter().map(|&i| events.value[i]).collect(),
            ranges,
        }
    }

    /// Aggregates for every query, in the order given.
    pub fn aggregate(&self, queries: &[Query], agg: Agg, window: Option<i64>) -> Output {
        let mut out = vec![None; queries.len()];
        let mut order: Vec<usize> = (0..queries.len()).collect();
        order.sort_unstable_by_key(|&i| (queries[i].entity, queries[i].now));
        let mut k = 0;
        while k < order.len() {
            let entity = queries[order[k]].entity;
            let mut end = k;
            while end < order.len() && queries[order[end]].entity == entity {
                end += 1;
            }
            let (s, e) = self.ranges.get(&entity).copied().unwrap_or((0, 0));
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
        let ts = &self.ts[s..e];
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
