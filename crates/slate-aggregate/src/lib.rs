//! Point-in-time windowed aggregation. For each query row (an entity and its `now`), aggregate
//! the entity's related events with `now - w <= ts < now` (DESIGN §2): the row's own timestamp
//! and anything later are excluded, so results never depend on when a run happens.
//!
//! [`kernel`] is the fast path (sort once, slide two pointers per entity, every aggregation in
//! amortized O(1) per row); [`reference`] is the brute-force definition that tests compare it
//! against.
//!
//! Values are integers or floats. Integers also carry every ordered type a caller can map to
//! order-preserving codes (datetimes as microseconds, booleans as 0/1, strings as ranks of a
//! sorted dictionary), so that `min`, `max` and `latest` keep the value's own type.

pub mod exact;
pub mod kernel;
pub mod reference;

/// The aggregation functions a windowed feature can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    CountDistinct,
    Sum,
    Mean,
    Min,
    Max,
    /// The value at the greatest timestamp before now; among equal timestamps, the greatest value.
    Latest,
    /// `now - max(ts)` in seconds, over events before now.
    TimeSinceLatest,
}

/// The aggregated values of the events, one per event; nulls are skipped by the value
/// aggregations, as SQL does.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Exact integers (or order-preserving codes of another type).
    Int(Vec<Option<i64>>),
    /// Floats. `min`, `max` and `latest` order them totally: `-0.0 < 0.0`, NaN above everything.
    Float(Vec<Option<f64>>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No values at all, whatever the number of events: for the aggregations that read none
    /// (`count`, time since latest), without a value per event. Any other aggregation over
    /// events with absent values is refused ([`AggError::NoValues`]).
    pub fn absent() -> Self {
        Values::Int(Vec::new())
    }
}

/// Related events, one per row: the entity they belong to, their time (microseconds) and the
/// aggregated value (ignored by `Count` and `TimeSinceLatest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Events {
    pub entity: Vec<i64>,
    pub ts: Vec<i64>,
    pub value: Values,
}

/// One point-in-time question: aggregate `entity`'s events as of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub entity: i64,
    pub now: i64,
}

/// A result column, one value per query. Counts are ints and never null (0 over no events);
/// `sum`, `min`, `max` and `latest` keep the values' kind; `mean` and time since latest (in
/// seconds) are floats; all but counts are null over no (non-null) events.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
}

impl Output {
    pub fn len(&self) -> usize {
        match self {
            Output::Int(v) => v.len(),
            Output::Float(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The result as floats, whatever its kind.
    pub fn to_f64(&self) -> Vec<Option<f64>> {
        match self {
            Output::Int(v) => v.iter().map(|x| x.map(|x| x as f64)).collect(),
            Output::Float(v) => v.clone(),
        }
    }
}

/// The kind of result `agg` gives over values of the given kind (`int_values`).
pub fn output_is_int(agg: Agg, int_values: bool) -> bool {
    match agg {
        Agg::Count | Agg::CountDistinct => true,
        Agg::Mean | Agg::TimeSinceLatest => false,
        Agg::Sum | Agg::Min | Agg::Max | Agg::Latest => int_values,
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggError {
    #[error(
        "the sum of entity code {entity}'s values before {now} does not fit a 64-bit int ({sum})"
    )]
    SumOverflow { entity: i64, now: i64, sum: i128 },
    #[error("{agg:?} reads values, and {events} events came without them")]
    NoValues { agg: Agg, events: usize },
}

/// A float's position in the total order used by `min`, `max` and `latest`, as an int that
/// compares the same way; every NaN maps to the greatest key.
pub fn float_key(v: f64) -> i64 {
    if v.is_nan() {
        return i64::MAX;
    }
    let bits = v.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

/// The float of a [`float_key`] (NaN for the greatest key).
pub fn key_float(k: i64) -> f64 {
    if k == i64::MAX {
        return f64::NAN;
    }
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_order_like_total_order_and_round_trip() {
        let vals = [
            f64::NEG_INFINITY,
            -1e300,
            -1.5,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(float_key(w[0]) < float_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for v in vals {
            assert_eq!(key_float(float_key(v)).to_bits(), v.to_bits());
        }
        assert!(float_key(f64::NAN) > float_key(f64::INFINITY));
        assert!(float_key(-f64::NAN) > float_key(f64::INFINITY));
        assert!(key_float(float_key(f64::NAN)).is_nan());
    }
}
