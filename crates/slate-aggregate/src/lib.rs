//! Point-in-time windowed aggregation. For each query row (an entity and its `now`), aggregate
//! the entity's related events with `now - w <= ts < now` (DESIGN §2): the row's own timestamp
//! and anything later are excluded, so results never depend on when a run happens.
//!
//! [`kernel`] is the fast path (sort once, slide two pointers per entity); [`reference`] is the
//! brute-force definition that tests compare it against.

pub mod kernel;
pub mod reference;

/// The aggregation functions a windowed feature can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Related events, one per row: the entity they belong to, their time (microseconds) and the
/// aggregated value (ignored by `Count` and `TimeSinceLatest`). Null values are skipped by the
/// value aggregations, as SQL does.
#[derive(Debug, Clone, Default)]
pub struct Events {
    pub entity: Vec<i64>,
    pub ts: Vec<i64>,
    pub value: Vec<Option<f64>>,
}

/// One point-in-time question: aggregate `entity`'s events as of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub entity: i64,
    pub now: i64,
}

/// A result: counts are never null (0 over no events); the other aggregations are null over no
/// (non-null) events.
pub type Output = Vec<Option<f64>>;
