//! The brute-force definition: for every query, scan every event. Quadratic, obviously right,
//! and the oracle for the kernel's tests.

use crate::{Agg, Events, Output, Query};
use std::collections::BTreeSet;

pub fn aggregate(events: &Events, queries: &[Query], agg: Agg, window: Option<i64>) -> Output {
    queries
        .iter()
        .map(|q| one(events, *q, agg, window))
        .collect()
}

fn one(e: &Events, q: Query, agg: Agg, window: Option<i64>) -> Option<f64> {
    let lo = window.map_or(i64::MIN, |w| q.now.saturating_sub(w));
    let rows: Vec<usize> = (0..e.ts.len())
        .filter(|&i| e.entity[i] == q.entity && e.ts[i] >= lo && e.ts[i] < q.now)
        .collect();
    let vals: Vec<f64> = rows.iter().filter_map(|&i| e.value[i]).collect();
    match agg {
        Agg::Count => Some(rows.len() as f64),
        Agg::CountDistinct => Some(
            vals.iter()
                .map(|v| v.to_bits())
                .collect::<BTreeSet<_>>()
                .len() as f64,
        ),
        Agg::Sum => (!vals.is_empty()).then(|| vals.iter().sum()),
        Agg::Mean => (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64),
        Agg::Min => vals.iter().copied().reduce(f64::min),
        Agg::Max => vals.iter().copied().reduce(f64::max),
        Agg::Latest => {
            let t = rows
                .iter()
                .filter(|&&i| e.value[i].is_some())
                .map(|&i| e.ts[i])
                .max()?;
            rows.iter()
                .filter(|&&i| e.ts[i] == t)
                .filter_map(|&i| e.value[i])
                .reduce(f64::max)
        }
        Agg::TimeSinceLatest => rows
            .iter()
            .map(|&i| e.ts[i])
            .max()
            .map(|t| (q.now - t) as f64 / 1e6),
    }
}
