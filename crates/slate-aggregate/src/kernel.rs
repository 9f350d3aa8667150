//! The fast path: events sorted once by (entity, ts); per entity, queries in time order slide a
//! `[lo, hi)` window forward, so each event enters and leaves once, and every aggregation keeps
//! a running state that a query reads in O(1): counts, an exact running sum, a monotonic deque
//! for `min`/`max`, the latest position for `latest`. Results do not depend on the order of
//! events with equal timestamps.

use crate::exact::ExactSum;
use crate::{Agg, AggError, Events, Output, Query, Values, float_key, key_float};
use std::collections::{HashMap, VecDeque};
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
    value: Values,
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

fn permute<T: Copy>(order: &[usize], v: &[T]) -> Vec<T> {
    order.iter().map(|&i| v[i]).collect()
}

fn permute_values(order: &[usize], v: &Values) -> Values {
    match v {
        Values::Int(v) => Values::Int(permute(order, v)),
        Values::Float(v) => Values::Float(permute(order, v)),
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
        let ts = permute(&order, &events.ts);
        let value = permute_values(&order, &events.value);
        Prepared {
            sorted: Arc::new(Sorted { order, ts, ranges }),
            value,
        }
    }

    /// The same events with other values (another field), in the original event order.
    pub fn with_values(&self, values: &Values) -> Prepared {
        Prepared {
            sorted: self.sorted.clone(),
            value: permute_values(&self.sorted.order, values),
        }
    }

    /// Aggregates for every query, in the order given.
    pub fn aggregate(
        &self,
        queries: &[Query],
        agg: Agg,
        window: Option<i64>,
    ) -> Result<Output, AggError> {
        self.aggregate_ordered(queries, &QueryOrder::new(queries), agg, window)
    }

    /// As [`Prepared::aggregate`], with the queries' order computed beforehand.
    pub fn aggregate_ordered(
        &self,
        queries: &[Query],
        order: &QueryOrder,
        agg: Agg,
        window: Option<i64>,
    ) -> Result<Output, AggError> {
        let n = queries.len();
        let ts = &self.sorted.ts;
        let drive = |acc: &mut dyn Acc| self.drive(queries, order, window, acc);
        Ok(match (agg, &self.value) {
            (Agg::Count, _) => {
                let mut a = Count(vec![None; n]);
                drive(&mut a);
                Output::Int(a.0)
            }
            (Agg::TimeSinceLatest, _) => {
                let mut a = TimeSince {
                    ts,
                    out: vec![None; n],
                };
                drive(&mut a);
                Output::Float(a.out)
            }
            (Agg::CountDistinct, values) => {
                let keys = match values {
                    Values::Int(v) => std::borrow::Cow::Borrowed(v),
                    Values::Float(v) => std::borrow::Cow::Owned(
                        v.iter().map(|x| x.map(|x| x.to_bits() as i64)).collect(),
                    ),
                };
                let mut a = Distinct {
                    vals: &keys,
                    seen: HashMap::new(),
                    out: vec![None; n],
                };
                drive(&mut a);
                Output::Int(a.out)
            }
            (Agg::Sum | Agg::Mean, Values::Int(vals)) => {
                let mut a = IntSum {
                    vals,
                    mean: agg == Agg::Mean,
                    sum: 0,
                    n: 0,
                    out_int: vec![None; if agg == Agg::Mean { 0 } else { n }],
                    out_float: vec![None; if agg == Agg::Mean { n } else { 0 }],
                    queries,
                    error: None,
                };
                drive(&mut a);
                if let Some(e) = a.error {
                    return Err(e);
                }
                if agg == Agg::Mean {
                    Output::Float(a.out_float)
                } else {
                    Output::Int(a.out_int)
                }
            }
            (Agg::Sum | Agg::Mean, Values::Float(vals)) => {
                let mut a = FloatSum {
                    vals,
                    mean: agg == Agg::Mean,
                    sum: ExactSum::new(),
                    n: 0,
                    out: vec![None; n],
                };
                drive(&mut a);
                Output::Float(a.out)
            }
            (Agg::Min | Agg::Max | Agg::Latest, values) => {
                let keys = match values {
                    Values::Int(v) => std::borrow::Cow::Borrowed(v),
                    Values::Float(v) => {
                        std::borrow::Cow::Owned(v.iter().map(|x| x.map(float_key)).collect())
                    }
                };
                let out = if agg == Agg::Latest {
                    let mut a = Latest {
                        ts,
                        keys: &keys,
                        best: None,
                        out: vec![None; n],
                    };
                    drive(&mut a);
                    a.out
                } else {
                    let mut a = Extreme {
                        keys: &keys,
                        max: agg == Agg::Max,
                        deque: VecDeque::new(),
                        out: vec![None; n],
                    };
                    drive(&mut a);
                    a.out
                };
                match values {
                    Values::Int(_) => Output::Int(out),
                    Values::Float(_) => {
                        Output::Float(out.into_iter().map(|k| k.map(key_float)).collect())
                    }
                }
            }
        })
    }

    /// Slides each entity's window over its queries in time order, feeding `acc` the events
    /// that enter and leave, then asking it for the query's value.
    fn drive(&self, queries: &[Query], order: &QueryOrder, window: Option<i64>, acc: &mut dyn Acc) {
        let order = &order.0;
        let ts = &self.sorted.ts;
        let mut k = 0;
        while k < order.len() {
            let entity = queries[order[k]].entity;
            let (s, e) = self.sorted.ranges.get(&entity).copied().unwrap_or((0, 0));
            acc.reset();
            let (mut lo, mut hi) = (s, s);
            while k < order.len() && queries[order[k]].entity == entity {
                let qi = order[k];
                let now = queries[qi].now;
                let lower = window.map_or(i64::MIN, |w| now.saturating_sub(w));
                while hi < e && ts[hi] < now {
                    acc.add(hi);
                    hi += 1;
                }
                while lo < hi && ts[lo] < lower {
                    acc.remove(lo);
                    lo += 1;
                }
                acc.emit(qi, lo, hi, now);
                k += 1;
            }
        }
    }
}

/// A running aggregate over a window of sorted event positions.
trait Acc {
    fn reset(&mut self) {}
    fn add(&mut self, _i: usize) {}
    fn remove(&mut self, _i: usize) {}
    fn emit(&mut self, qi: usize, lo: usize, hi: usize, now: i64);
}

struct Count(Vec<Option<i64>>);

impl Acc for Count {
    fn emit(&mut self, qi: usize, lo: usize, hi: usize, _: i64) {
        self.0[qi] = Some((hi - lo) as i64);
    }
}

struct TimeSince<'a> {
    ts: &'a [i64],
    out: Vec<Option<f64>>,
}

impl Acc for TimeSince<'_> {
    fn emit(&mut self, qi: usize, lo: usize, hi: usize, now: i64) {
        self.out[qi] = (hi > lo).then(|| (now - self.ts[hi - 1]) as f64 / 1e6);
    }
}

struct Distinct<'a> {
    vals: &'a [Option<i64>],
    seen: HashMap<i64, u32>,
    out: Vec<Option<i64>>,
}

impl Acc for Distinct<'_> {
    fn reset(&mut self) {
        self.seen.clear();
    }
    fn add(&mut self, i: usize) {
        if let Some(v) = self.vals[i] {
            *self.seen.entry(v).or_default() += 1;
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(v) = self.vals[i]
            && let Some(c) = self.seen.get_mut(&v)
        {
            *c -= 1;
            if *c == 0 {
                self.seen.remove(&v);
            }
        }
    }
    fn emit(&mut self, qi: usize, _: usize, _: usize, _: i64) {
        self.out[qi] = Some(self.seen.len() as i64);
    }
}

struct IntSum<'a> {
    vals: &'a [Option<i64>],
    mean: bool,
    sum: i128,
    n: u64,
    out_int: Vec<Option<i64>>,
    out_float: Vec<Option<f64>>,
    queries: &'a [Query],
    error: Option<AggError>,
}

impl Acc for IntSum<'_> {
    fn reset(&mut self) {
        self.sum = 0;
        self.n = 0;
    }
    fn add(&mut self, i: usize) {
        if let Some(v) = self.vals[i] {
            self.sum += i128::from(v);
            self.n += 1;
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(v) = self.vals[i] {
            self.sum -= i128::from(v);
            self.n -= 1;
        }
    }
    fn emit(&mut self, qi: usize, _: usize, _: usize, now: i64) {
        if self.n == 0 {
            return;
        }
        if self.mean {
            self.out_float[qi] = Some(self.sum as f64 / self.n as f64);
        } else {
            match i64::try_from(self.sum) {
                Ok(s) => self.out_int[qi] = Some(s),
                Err(_) => {
                    self.error.get_or_insert(AggError::SumOverflow {
                        entity: self.queries[qi].entity,
                        now,
                        sum: self.sum,
                    });
                }
            }
        }
    }
}

struct FloatSum<'a> {
    vals: &'a [Option<f64>],
    mean: bool,
    sum: ExactSum,
    n: u64,
    out: Vec<Option<f64>>,
}

impl Acc for FloatSum<'_> {
    fn reset(&mut self) {
        self.sum.clear();
        self.n = 0;
    }
    fn add(&mut self, i: usize) {
        if let Some(v) = self.vals[i] {
            self.sum.add(v);
            self.n += 1;
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(v) = self.vals[i] {
            self.sum.remove(v);
            self.n -= 1;
        }
    }
    fn emit(&mut self, qi: usize, _: usize, _: usize, _: i64) {
        if self.n > 0 {
            let s = self.sum.value();
            self.out[qi] = Some(if self.mean { s / self.n as f64 } else { s });
        }
    }
}

/// `min` or `max` through a monotonic deque of positions: its front is the window's extreme.
struct Extreme<'a> {
    keys: &'a [Option<i64>],
    max: bool,
    deque: VecDeque<usize>,
    out: Vec<Option<i64>>,
}

impl Acc for Extreme<'_> {
    fn reset(&mut self) {
        self.deque.clear();
    }
    fn add(&mut self, i: usize) {
        let Some(v) = self.keys[i] else { return };
        while let Some(&b) = self.deque.back() {
            let bv = self.keys[b].unwrap_or_default();
            let dominated = if self.max { bv <= v } else { bv >= v };
            if !dominated {
                break;
            }
            self.deque.pop_back();
        }
        self.deque.push_back(i);
    }
    fn remove(&mut self, i: usize) {
        if self.deque.front() == Some(&i) {
            self.deque.pop_front();
        }
    }
    fn emit(&mut self, qi: usize, _: usize, _: usize, _: i64) {
        self.out[qi] = self.deque.front().and_then(|&f| self.keys[f]);
    }
}

/// `latest`: the last non-null position seen, the greatest value among equal timestamps. Equal
/// timestamps enter and leave a window together, so the position is in the window exactly when
/// it is not below `lo`.
struct Latest<'a> {
    ts: &'a [i64],
    keys: &'a [Option<i64>],
    best: Option<usize>,
    out: Vec<Option<i64>>,
}

impl Acc for Latest<'_> {
    fn reset(&mut self) {
        self.best = None;
    }
    fn add(&mut self, i: usize) {
        let Some(v) = self.keys[i] else { return };
        match self.best {
            Some(b) if self.ts[b] == self.ts[i] && self.keys[b] >= Some(v) => {}
            _ => self.best = Some(i),
        }
    }
    fn emit(&mut self, qi: usize, lo: usize, _: usize, _: i64) {
        self.out[qi] = self.best.filter(|&b| b >= lo).and_then(|b| self.keys[b]);
    }
}

/// One-shot convenience over [`Prepared`].
pub fn aggregate(
    events: &Events,
    queries: &[Query],
    agg: Agg,
    window: Option<i64>,
) -> Result<Output, AggError> {
    Prepared::new(events).aggregate(queries, agg, window)
}
