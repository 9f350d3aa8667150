//! The fast path: events sorted once by (entity, ts); per entity, queries in time order slide a
//! `[lo, hi)` window forward, so each event enters and leaves once, and every aggregation keeps
//! a running state that a query reads in O(1): counts, an exact running sum, a monotonic deque
//! for `min`/`max`, the latest position for `latest`. Results do not depend on the order of
//! events with equal timestamps.

use crate::exact::ExactSum;
use crate::{Agg, AggError, Events, Output, Query, Values, float_key, key_float, output_is_int};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Where each entity's events lie in the sorted order.
#[derive(Debug)]
enum Ranges {
    /// Entities within a span not much larger than the event count (dictionary codes): entity
    /// `e`'s events are `starts[e - min]..starts[e - min + 1]`.
    Dense { min: i64, starts: Vec<usize> },
    /// Any other entities.
    Sparse(HashMap<i64, (usize, usize)>),
}

impl Ranges {
    fn get(&self, entity: i64) -> (usize, usize) {
        match self {
            Ranges::Dense { min, starts } => entity
                .checked_sub(*min)
                .and_then(|d| usize::try_from(d).ok())
                .filter(|&d| d + 1 < starts.len())
                .map_or((0, 0), |d| (starts[d], starts[d + 1])),
            Ranges::Sparse(m) => m.get(&entity).copied().unwrap_or((0, 0)),
        }
    }
}

/// The span `max - min + 1` of `keys` when it is small enough for a table indexed by key
/// (at most `limit`), with `min`.
fn dense_span(keys: impl Iterator<Item = i64>, limit: usize) -> Option<(i64, usize)> {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for k in keys {
        lo = lo.min(k);
        hi = hi.max(k);
    }
    if lo > hi {
        return Some((0, 0));
    }
    let span = (i128::from(hi) - i128::from(lo) + 1).try_into().ok()?;
    (span <= limit).then_some((lo, span))
}

/// Positions `0..key.len()` ordered by (key, time), and each key's range in that order. Keys
/// of a small span (dictionary codes) are placed by a counting sort, in linear time; each key's
/// run is then sorted by time unless it already is (rows usually arrive in time order).
fn sort_by_key_time(key: &[i64], time: &[i64]) -> (Vec<usize>, Ranges) {
    let n = key.len();
    let Some((min, span)) = dense_span(key.iter().copied(), 2 * n + 1024) else {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by_key(|&i| (key[i], time[i]));
        let mut ranges = HashMap::new();
        let mut start = 0;
        for k in 0..n {
            let e = key[order[k]];
            if k + 1 == n || key[order[k + 1]] != e {
                ranges.insert(e, (start, k + 1));
                start = k + 1;
            }
        }
        return (order, Ranges::Sparse(ranges));
    };
    // The offsets fit: `span` is at most 2n + 1024.
    let slot = |k: i64| (k - min) as usize;
    let mut starts = vec![0usize; span + 1];
    for &k in key {
        starts[slot(k) + 1] += 1;
    }
    for d in 1..starts.len() {
        starts[d] += starts[d - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0usize; n];
    for (i, &k) in key.iter().enumerate() {
        let s = &mut next[slot(k)];
        order[*s] = i;
        *s += 1;
    }
    for d in 0..span {
        let run = &mut order[starts[d]..starts[d + 1]];
        if run.windows(2).any(|w| time[w[0]] > time[w[1]]) {
            run.sort_unstable_by_key(|&i| time[i]);
        }
    }
    (order, Ranges::Dense { min, starts })
}

/// The sort shared by every field of one set of events: order, times and each entity's range.
#[derive(Debug)]
struct Sorted {
    order: Vec<usize>,
    ts: Vec<i64>,
    ranges: Ranges,
}

/// Events sorted by entity and time, with each entity's range; reusable across aggregations,
/// and across fields through [`Prepared::with_values`] without sorting again.
#[derive(Debug)]
pub struct Prepared {
    sorted: Arc<Sorted>,
    value: Values,
}

/// Queries in (entity, now) order, computed once for every aggregation over them: their
/// positions, and their entities and times in that order (read in sequence by every pass).
#[derive(Debug)]
pub struct QueryOrder {
    order: Vec<usize>,
    entity: Vec<i64>,
    now: Vec<i64>,
}

impl QueryOrder {
    pub fn new(queries: &[Query]) -> Self {
        let entity: Vec<i64> = queries.iter().map(|q| q.entity).collect();
        let now: Vec<i64> = queries.iter().map(|q| q.now).collect();
        let order = sort_by_key_time(&entity, &now).0;
        QueryOrder {
            entity: permute(&order, &entity),
            now: permute(&order, &now),
            order,
        }
    }
}

fn permute<T: Copy>(order: &[usize], v: &[T]) -> Vec<T> {
    order.iter().map(|&i| v[i]).collect()
}

fn permute_values(order: &[usize], v: &Values) -> Values {
    match v {
        // Absent values stay absent.
        Values::Int(v) if v.is_empty() => Values::absent(),
        // No values (counts, times since the latest): nothing to gather.
        Values::Int(v) if v.len() == order.len() && v.iter().all(Option::is_none) => {
            Values::Int(vec![None; order.len()])
        }
        Values::Int(v) => Values::Int(permute(order, v)),
        Values::Float(v) => Values::Float(permute(order, v)),
    }
}

impl Prepared {
    pub fn new(events: &Events) -> Self {
        let (order, ranges) = sort_by_key_time(&events.entity, &events.ts);
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
        let mut out = self.aggregate_windows(queries, order, agg, &[window])?;
        Ok(out.pop().unwrap_or_else(|| self.empty(agg)))
    }

    /// A result over no queries, of the kind `agg` gives over these values.
    fn empty(&self, agg: Agg) -> Output {
        if output_is_int(agg, matches!(self.value, Values::Int(_))) {
            Output::Int(vec![])
        } else {
            Output::Float(vec![])
        }
    }

    /// One aggregation over several windows in one pass: a result per window, in order.
    pub fn aggregate_windows(
        &self,
        queries: &[Query],
        order: &QueryOrder,
        agg: Agg,
        windows: &[Option<i64>],
    ) -> Result<Vec<Output>, AggError> {
        let n = queries.len();
        let ts = &self.sorted.ts;
        if n == 0 {
            return Ok(windows.iter().map(|_| self.empty(agg)).collect());
        }
        let reads_values = !matches!(agg, Agg::Count | Agg::TimeSinceLatest);
        if reads_values && self.value.len() != ts.len() {
            return Err(AggError::NoValues {
                agg,
                events: ts.len(),
            });
        }
        let run = Run {
            prepared: self,
            order,
            windows,
        };
        Ok(match (agg, &self.value) {
            (Agg::Count, _) => run
                .drive(windows.iter().map(|_| Count(vec![None; n])).collect())
                .into_iter()
                .map(|a| Output::Int(a.0))
                .collect(),
            (Agg::TimeSinceLatest, _) => run
                .drive(
                    windows
                        .iter()
                        .map(|_| TimeSince {
                            ts,
                            out: vec![None; n],
                        })
                        .collect(),
                )
                .into_iter()
                .map(|a| Output::Float(a.out))
                .collect(),
            (Agg::CountDistinct, values) => {
                let keys = match values {
                    Values::Int(v) => std::borrow::Cow::Borrowed(v),
                    Values::Float(v) => std::borrow::Cow::Owned(
                        v.iter().map(|x| x.map(|x| x.to_bits() as i64)).collect(),
                    ),
                };
                let dense = dense_span(keys.iter().flatten().copied(), DENSE_DISTINCT_LIMIT);
                let accs = windows
                    .iter()
                    .map(|_| Distinct {
                        vals: &keys,
                        seen: match dense {
                            Some((min, span)) => Seen::Dense {
                                min,
                                counts: vec![0; span],
                                distinct: 0,
                            },
                            None => Seen::Sparse(HashMap::new()),
                        },
                        out: vec![None; n],
                    })
                    .collect();
                run.drive(accs)
                    .into_iter()
                    .map(|a| Output::Int(a.out))
                    .collect()
            }
            (Agg::Sum | Agg::Mean, Values::Int(vals)) => {
                let mean = agg == Agg::Mean;
                let accs = windows
                    .iter()
                    .map(|_| IntSum {
                        vals,
                        mean,
                        sum: 0,
                        n: 0,
                        out_int: vec![None; if mean { 0 } else { n }],
                        out_float: vec![None; if mean { n } else { 0 }],
                        queries,
                        error: None,
                    })
                    .collect();
                let mut out = Vec::new();
                for a in run.drive(accs) {
                    if let Some(e) = a.error {
                        return Err(e);
                    }
                    out.push(if mean {
                        Output::Float(a.out_float)
                    } else {
                        Output::Int(a.out_int)
                    });
                }
                out
            }
            (Agg::Sum | Agg::Mean, Values::Float(vals)) => {
                let accs = windows
                    .iter()
                    .map(|_| FloatSum {
                        vals,
                        mean: agg == Agg::Mean,
                        sum: ExactSum::new(),
                        n: 0,
                        out: vec![None; n],
                    })
                    .collect();
                run.drive(accs)
                    .into_iter()
                    .map(|a| Output::Float(a.out))
                    .collect()
            }
            (Agg::Min | Agg::Max | Agg::Latest, values) => {
                let keys = match values {
                    Values::Int(v) => std::borrow::Cow::Borrowed(v),
                    Values::Float(v) => {
                        std::borrow::Cow::Owned(v.iter().map(|x| x.map(float_key)).collect())
                    }
                };
                let outs: Vec<Vec<Option<i64>>> = if agg == Agg::Latest {
                    let accs = windows
                        .iter()
                        .map(|_| Latest {
                            ts,
                            keys: &keys,
                            best: None,
                            out: vec![None; n],
                        })
                        .collect();
                    run.drive(accs).into_iter().map(|a| a.out).collect()
                } else {
                    let accs = windows
                        .iter()
                        .map(|_| Extreme {
                            keys: &keys,
                            max: agg == Agg::Max,
                            deque: VecDeque::new(),
                            out: vec![None; n],
                        })
                        .collect();
                    run.drive(accs).into_iter().map(|a| a.out).collect()
                };
                outs.into_iter()
                    .map(|out| match values {
                        Values::Int(_) => Output::Int(out),
                        Values::Float(_) => {
                            Output::Float(out.into_iter().map(|k| k.map(key_float)).collect())
                        }
                    })
                    .collect()
            }
        })
    }
}

/// The largest value span `count_distinct` counts in a table indexed by value (4M counters a
/// window); wider values are counted in a hash map.
const DENSE_DISTINCT_LIMIT: usize = 1 << 22;

/// One pass of several windows over the sorted events.
struct Run<'a> {
    prepared: &'a Prepared,
    order: &'a QueryOrder,
    windows: &'a [Option<i64>],
}

impl Run<'_> {
    /// Slides each entity's windows over its queries in time order: every event enters once
    /// (shared by the windows, whose upper bound is the same `now`) and leaves each window
    /// once; each window's accumulator then gives the query's value.
    fn drive<A: Acc>(&self, mut accs: Vec<A>) -> Vec<A> {
        let windows = self.windows;
        let (order, entities, nows) = (&self.order.order, &self.order.entity, &self.order.now);
        let sorted = &self.prepared.sorted;
        let ts = &sorted.ts;
        let mut lo = vec![0usize; windows.len()];
        let mut k = 0;
        while k < order.len() {
            let entity = entities[k];
            let (s, e) = sorted.ranges.get(entity);
            for a in accs.iter_mut() {
                a.reset();
            }
            lo.fill(s);
            let mut hi = s;
            while k < order.len() && entities[k] == entity {
                let (qi, now) = (order[k], nows[k]);
                while hi < e && ts[hi] < now {
                    for a in accs.iter_mut() {
                        a.add(hi);
                    }
                    hi += 1;
                }
                for ((a, lo), w) in accs.iter_mut().zip(lo.iter_mut()).zip(windows) {
                    let lower = w.map_or(i64::MIN, |w| now.saturating_sub(w));
                    while *lo < hi && ts[*lo] < lower {
                        a.remove(*lo);
                        *lo += 1;
                    }
                    a.emit(qi, *lo, hi, now);
                }
                k += 1;
            }
            for (a, lo) in accs.iter_mut().zip(&lo) {
                a.finish(*lo, hi);
            }
        }
        accs
    }
}

/// A running aggregate over a window of sorted event positions.
trait Acc {
    /// Before an entity's first query.
    fn reset(&mut self) {}
    /// After an entity's last query, with the events `lo..hi` still in the window.
    fn finish(&mut self, _lo: usize, _hi: usize) {}
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

/// Occurrences of each value in the window.
enum Seen {
    /// Values within a small span (dictionary codes): a counter per value, and how many are
    /// non-zero.
    Dense {
        min: i64,
        counts: Vec<u32>,
        distinct: usize,
    },
    Sparse(HashMap<i64, u32>),
}

struct Distinct<'a> {
    vals: &'a [Option<i64>],
    seen: Seen,
    out: Vec<Option<i64>>,
}

impl Acc for Distinct<'_> {
    fn reset(&mut self) {
        if let Seen::Sparse(m) = &mut self.seen {
            m.clear();
        }
    }
    fn finish(&mut self, lo: usize, hi: usize) {
        // The dense counters are cleared through the events still in the window, not by
        // sweeping every value.
        if let Seen::Dense {
            min,
            counts,
            distinct,
        } = &mut self.seen
        {
            for v in self.vals[lo..hi].iter().flatten() {
                counts[(v - *min) as usize] = 0;
            }
            *distinct = 0;
        }
    }
    fn add(&mut self, i: usize) {
        let Some(v) = self.vals[i] else { return };
        match &mut self.seen {
            Seen::Dense {
                min,
                counts,
                distinct,
            } => {
                let c = &mut counts[(v - *min) as usize];
                *distinct += usize::from(*c == 0);
                *c += 1;
            }
            Seen::Sparse(m) => *m.entry(v).or_default() += 1,
        }
    }
    fn remove(&mut self, i: usize) {
        let Some(v) = self.vals[i] else { return };
        match &mut self.seen {
            Seen::Dense {
                min,
                counts,
                distinct,
            } => {
                let c = &mut counts[(v - *min) as usize];
                *c -= 1;
                *distinct -= usize::from(*c == 0);
            }
            Seen::Sparse(m) => {
                if let Some(c) = m.get_mut(&v) {
                    *c -= 1;
                    if *c == 0 {
                        m.remove(&v);
                    }
                }
            }
        }
    }
    fn emit(&mut self, qi: usize, _: usize, _: usize, _: i64) {
        let n = match &self.seen {
            Seen::Dense { distinct, .. } => *distinct,
            Seen::Sparse(m) => m.len(),
        };
        self.out[qi] = Some(n as i64);
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
