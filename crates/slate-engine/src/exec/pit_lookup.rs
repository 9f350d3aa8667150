//! `PitLookupExec`: has-one lookups, point in time, as a DataFusion operator.
//!
//! Its input holds query rows (the rows that look up) and event rows (versions of the
//! looked-up class, its key in the same key column), every row of a key in the same partition
//! and each partition ordered by (key, time) (see [`lookup_plan`]). Each query takes each
//! looked-up field from its key's latest version strictly before its time (the value taken even
//! when it is null; none, null), as the frame path's lookup does. The operator streams: it
//! keeps the current key's latest version and the one before it (for queries at the time of
//! the latest), so its memory is a batch and two rows whatever a key's number of rows (a store
//! looked up by millions of orders).

use crate::exec::dedupe::NarrowDedupe;
use crate::exec::pit_aggregate::{EVENT, QUERY, partitioned_sorted};
use crate::frame::ts_column;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{concat, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

/// One output column: the value of `field` in the latest version strictly before the query.
#[derive(Debug, Clone)]
pub struct PitLookup {
    /// The output column's name.
    pub name: String,
    /// The events' column holding the looked-up value.
    pub field: String,
    /// The output column's type (values are cast to it exactly, never lossily).
    pub output: DataType,
}

/// The columns the operator reads and what it looks up.
#[derive(Debug, Clone)]
pub struct LookupSpec {
    /// The key column (any type).
    pub key: String,
    /// The time column (a microsecond timestamp): a version's time, a query's now.
    pub time: String,
    /// The role column (`UInt8`, [`EVENT`] | [`QUERY`] bits).
    pub role: String,
    /// Columns of the query rows carried to the output, in order.
    pub carry: Vec<String>,
    pub lookups: Vec<PitLookup>,
}

#[derive(Debug)]
pub struct PitLookupExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<LookupSpec>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl PitLookupExec {
    /// The operator over `input`, whose partitions must each hold whole keys, ordered by
    /// (key, time) (see [`lookup_plan`]).
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: LookupSpec) -> Result<Self> {
        let in_schema = input.schema();
        let mut fields = Vec::new();
        for c in &spec.carry {
            fields.push(in_schema.field_with_name(c)?.clone());
        }
        for name in [&spec.key, &spec.time, &spec.role] {
            in_schema.field_with_name(name)?;
        }
        for l in &spec.lookups {
            in_schema.field_with_name(&l.field)?;
            fields.push(Field::new(&l.name, l.output.clone(), true));
        }
        let schema = Arc::new(Schema::new(fields));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(PitLookupExec {
            input,
            spec: Arc::new(spec),
            schema,
            properties: Arc::new(properties),
        })
    }
}

/// `input` hash-partitioned by `spec.key` into `partitions`, each partition sorted by
/// (key, time, `then_by`), then looked up point in time.
pub fn lookup_plan(
    input: Arc<dyn ExecutionPlan>,
    spec: LookupSpec,
    partitions: usize,
    then_by: &[String],
    dedupe: Option<&NarrowDedupe>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut sorted = partitioned_sorted(input, &spec.key, &spec.time, partitions, then_by)?;
    if let Some(d) = dedupe {
        sorted = d.filter(sorted)?;
    }
    Ok(Arc::new(PitLookupExec::try_new(sorted, spec)?))
}

impl DisplayAs for PitLookupExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let lookups: Vec<String> = self
            .spec
            .lookups
            .iter()
            .map(|l| format!("{}=latest_before({})", l.name, l.field))
            .collect();
        write!(
            f,
            "PitLookupExec: key={}, time={}, lookup=[{}]",
            self.spec.key,
            self.spec.time,
            lookups.join(", ")
        )
    }
}

impl ExecutionPlan for PitLookupExec {
    fn name(&self) -> &'static str {
        "PitLookupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "PitLookupExec takes one input".into(),
            ));
        }
        Ok(Arc::new(PitLookupExec::try_new(
            children.swap_remove(0),
            (*self.spec).clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let mut state = State {
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            key: None,
            latest_time: None,
            carried: None,
        };
        let stream = input
            .map(move |b| b.and_then(|b| state.push(&b)))
            .filter(|b| futures::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// One partition's state between batches: the current key and its versions.
struct State {
    spec: Arc<LookupSpec>,
    schema: SchemaRef,
    /// The key of the last rows seen (`None`: none, or a null key).
    key: Option<ScalarValue>,
    /// The time of the key's latest version.
    latest_time: Option<i64>,
    /// Per lookup, the key's version before the latest (row 0) and its latest (row 1), each
    /// null when there is none; `None` when the key has no version yet.
    carried: Option<Vec<ArrayRef>>,
}

/// Where a version lies in a batch's sources: the carried rows first, then the batch's rows.
const PREV: u32 = 0;
const LATEST: u32 = 1;
const FIRST_ROW: u32 = 2;

impl State {
    /// The output rows of `batch`'s queries.
    fn push(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let spec = self.spec.clone();
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| DataFusionError::Internal(format!("input lacks column {name}")))
        };
        let key = column(&spec.key)?;
        let role = column(&spec.role)?;
        let role = role.as_primitive::<UInt8Type>();
        let times =
            ts_column(batch, &spec.time).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let is = |i: usize, bit: u8| role.is_valid(i) && role.value(i) & bit != 0;
        // Pointers into each lookup's sources (see `PREV`), carried rows first.
        let (mut prev, mut latest) = match self.carried {
            Some(_) => (Some(PREV), Some(LATEST)),
            None => (None, None),
        };
        let mut latest_time = self.latest_time;
        let mut queries: Vec<u32> = Vec::new();
        let mut picks: Vec<Option<u32>> = Vec::new();
        let ranges = arrow::compute::partition(std::slice::from_ref(&key))?.ranges();
        for r in &ranges {
            let k = match key.is_null(r.start) {
                true => None,
                false => Some(ScalarValue::try_from_array(&key, r.start)?),
            };
            if k != self.key || k.is_none() {
                // A new key: no version yet (a null key matches none).
                (prev, latest, latest_time) = (None, None, None);
                self.key = k.clone();
            }
            for i in r.clone() {
                let row = FIRST_ROW + i as u32;
                if k.is_some()
                    && is(i, EVENT)
                    && let Some(t) = times[i]
                {
                    match latest_time {
                        Some(l) if t == l => latest = Some(row),
                        Some(l) if t < l => {}
                        _ => {
                            prev = latest;
                            latest = Some(row);
                            latest_time = Some(t);
                        }
                    }
                }
                if is(i, QUERY) {
                    queries.push(i as u32);
                    picks.push(match (k.is_some(), times[i], latest_time) {
                        (true, Some(now), Some(l)) if l < now => latest,
                        (true, Some(now), Some(l)) if l == now => prev,
                        _ => None,
                    });
                }
            }
        }
        // Each lookup's values: the carried rows, then the batch's.
        let n = batch.num_rows();
        let mut sources = Vec::with_capacity(spec.lookups.len());
        for (j, l) in spec.lookups.iter().enumerate() {
            let values = column(&l.field)?;
            let carried = match &self.carried {
                Some(c) => c[j].clone(),
                None => new_null_array(values.data_type(), 2),
            };
            sources.push(concat(&[carried.as_ref(), values.as_ref()])?);
        }
        // What the next batch needs: the last key's versions.
        self.latest_time = latest_time;
        self.carried = match latest {
            None => None,
            Some(latest) => {
                let rows = UInt32Array::from(vec![prev, Some(latest)]);
                Some(
                    sources
                        .iter()
                        .map(|s| take(s.as_ref(), &rows, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                )
            }
        };
        if queries.is_empty() || n == 0 {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let query_idx = UInt32Array::from(queries);
        let picks = UInt32Array::from(picks);
        let mut columns: Vec<ArrayRef> = Vec::new();
        for c in &spec.carry {
            columns.push(take(column(c)?.as_ref(), &query_idx, None)?);
        }
        for (l, source) in spec.lookups.iter().zip(&sources) {
            let picked = take(source.as_ref(), &picks, None)?;
            columns.push(
                crate::compute::strict_cast(&picked, &l.output)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            );
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray, UInt8Array};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Seeded random versions (events, unique per key and time) and queries, with null keys,
    /// null values, queries at a version's time and keys of many rows; each a row number.
    fn rows(seed: u64, n: usize) -> RecordBatch {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let (mut pos, mut key, mut ts, mut role, mut value) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let k = (!rng.random_bool(0.03)).then(|| {
                let x: f64 = rng.random();
                (x * x * 40.0) as i64
            });
            let t = rng.random_range(0..200i64);
            let r = match rng.random_bool(0.3) {
                // One version per key and time.
                true if seen.insert((k, t)) => EVENT,
                _ => QUERY,
            };
            pos.push(i as i64);
            key.push(k);
            ts.push(t);
            role.push(r);
            value.push((r == EVENT && !rng.random_bool(0.1)).then(|| rng.random_range(0..1000)));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("pos", DataType::Int64, false),
            Field::new("key", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("role", DataType::UInt8, false),
            Field::new("value", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(pos)),
                Arc::new(Int64Array::from(key)),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                Arc::new(UInt8Array::from(role)),
                Arc::new(Int64Array::from(value)),
            ],
        )
        .expect("batch")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matches_the_reference_with_any_partitions_and_batches() {
        let all = rows(17, 5_000);
        let key = all.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let ts = all
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let role = all.column(3).as_primitive::<UInt8Type>();
        let value = all.column(4).as_primitive::<arrow::datatypes::Int64Type>();
        // Brute force: per query, the version of its key with the greatest time below its own.
        let mut expected = std::collections::BTreeMap::new();
        for q in (0..all.num_rows()).filter(|&q| role.value(q) == QUERY) {
            let best = (0..all.num_rows())
                .filter(|&e| role.value(e) == EVENT && key.is_valid(q) && key.is_valid(e))
                .filter(|&e| key.value(e) == key.value(q) && ts.value(e) < ts.value(q))
                .max_by_key(|&e| ts.value(e));
            expected.insert(
                q as i64,
                best.and_then(|e| value.is_valid(e).then(|| value.value(e))),
            );
        }
        for (partitions, batch) in [(1, 5_000), (3, 7), (2, 64)] {
            let batches: Vec<RecordBatch> = (0..all.num_rows())
                .step_by(batch)
                .map(|s| all.slice(s, batch.min(all.num_rows() - s)))
                .collect();
            let source =
                MemorySourceConfig::try_new_exec(&[batches], all.schema(), None).expect("source");
            let spec = LookupSpec {
                key: "key".into(),
                time: "ts".into(),
                role: "role".into(),
                carry: vec!["pos".into()],
                lookups: vec![PitLookup {
                    name: "found".into(),
                    field: "value".into(),
                    output: DataType::Float64,
                }],
            };
            let plan =
                lookup_plan(source, spec, partitions, &["pos".to_string()], None).expect("plan");
            let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch));
            let out = collect(plan, ctx.task_ctx()).await.expect("run");
            let mut got = std::collections::BTreeMap::new();
            for b in &out {
                let pos = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
                let found = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
                for i in 0..b.num_rows() {
                    let v = found.is_valid(i).then(|| found.value(i) as i64);
                    assert!(
                        got.insert(pos.value(i), v).is_none(),
                        "one output per query"
                    );
                }
            }
            assert_eq!(got, expected, "{partitions} partitions, batches of {batch}");
        }
    }
}
