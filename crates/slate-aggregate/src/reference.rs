//! The brute-force definition: for every query, scan every event. Quadratic, obviously right,
//! and the oracle for the kernel's tests.

use crate::{Agg, AggError, Events, Output, Query, Values, float_key, key_float, output_is_int};
use std::collections::BTreeSet;

pub fn aggregate(
    events: &Events,
    queries: &[Query],
    agg: Agg,
    window: Option<i64>,
) -> Result<Output, AggError> {
    let int_values = matches!(events.value, Values::Int(_));
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    for q in queries {
        match one(events, *q, agg, window)? {
            Value::Int(v) => ints.push(v),
            Value::Float(v) => floats.push(v),
        }
    }
    Ok(if output_is_int(agg, int_values) {
        Output::Int(ints)
    } else {
        Output::Float(floats)
    })
}

enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
}

fn one(e: &Events, q: Query, agg: Agg, window: Option<i64>) -> Result<Value, AggError> {
    let lo = window.map_or(i64::MIN, |w| q.now.saturating_sub(w));
    let rows: Vec<usize> = (0..e.ts.len())
        .filter(|&i| e.entity[i] == q.entity && e.ts[i] >= lo && e.ts[i] < q.now)
        .collect();
    // (time, value) of the rows with a value; floats as their total-order keys where ordered.
    let ints: Vec<(i64, i64)> = match &e.value {
        Values::Int(v) => rows
            .iter()
            .filter_map(|&i| v[i].map(|x| (e.ts[i], x)))
            .collect(),
        Values::Float(v) => rows
            .iter()
            .filter_map(|&i| v[i].map(|x| (e.ts[i], float_key(x))))
            .collect(),
    };
    let floats: Vec<f64> = match &e.value {
        Values::Int(v) => rows
            .iter()
            .filter_map(|&i| v[i].map(|x| x as f64))
            .collect(),
        Values::Float(v) => rows.iter().filter_map(|&i| v[i]).collect(),
    };
    let is_float = matches!(e.value, Values::Float(_));
    let ordered = |k: Option<i64>| {
        if is_float {
            Value::Float(k.map(key_float))
        } else {
            Value::Int(k)
        }
    };
    Ok(match agg {
        Agg::Count => Value::Int(Some(rows.len() as i64)),
        Agg::CountDistinct => Value::Int(Some(match &e.value {
            Values::Float(_) => floats
                .iter()
                .map(|v| v.to_bits())
                .collect::<BTreeSet<_>>()
                .len() as i64,
            Values::Int(_) => ints.iter().map(|p| p.1).collect::<BTreeSet<_>>().len() as i64,
        })),
        Agg::Sum | Agg::Mean if !is_float => {
            if ints.is_empty() {
                return Ok(if agg == Agg::Sum {
                    Value::Int(None)
                } else {
                    Value::Float(None)
                });
            }
            let s: i128 = ints.iter().map(|p| i128::from(p.1)).sum();
            if agg == Agg::Mean {
                Value::Float(Some(s as f64 / ints.len() as f64))
            } else {
                Value::Int(Some(i64::try_from(s).map_err(|_| {
                    AggError::SumOverflow {
                        entity: q.entity,
                        now: q.now,
                        sum: s,
                    }
                })?))
            }
        }
        Agg::Sum | Agg::Mean => Value::Float((!floats.is_empty()).then(|| {
            let s = crate::exact::sum(floats.iter().copied());
            if agg == Agg::Mean {
                s / floats.len() as f64
            } else {
                s
            }
        })),
        Agg::Min => ordered(ints.iter().map(|p| p.1).min()),
        Agg::Max => ordered(ints.iter().map(|p| p.1).max()),
        Agg::Latest => ordered(ints.iter().copied().max().map(|p| p.1)),
        Agg::TimeSinceLatest => Value::Float(
            rows.iter()
                .map(|&i| e.ts[i])
                .max()
                .map(|t| (q.now - t) as f64 / 1e6),
        ),
    })
}
