//! `PitAggregateExec`: point-in-time windowed aggregation as a DataFusion operator.
//!
//! Its input is one stream of rows per partition, every row of an entity in the same partition
//! and the rows of each partition clustered by entity key (a hash repartition on the key and
//! a sort on (key, time), which spills under memory pressure, give exactly that; see
//! [`pit_plan`]). Each row is an event (a related row whose value is aggregated), a query (a
//! row that asks for aggregates as of its time) or both (a backfill's root rows are both). The
//! operator buffers whole entities, up to about [`PitSpec::chunk_rows`] rows, hands them to
//! Slate's kernel (exact, one pass per aggregation over every window) and emits one output row
//! per query row: the query's carried columns, then one column per aggregation. Memory is
//! bounded by the chunk, not by the history: the buffer is reserved from the memory pool; a
//! refusal ends the chunk early, at the last whole entity. An entity the pool refuses while
//! other operators hold it is still taken, within an overdraft of an eighth of the budget over
//! all partitions (accounted in the pool); only an entity larger than that is an error, naming
//! the operator and the bytes it asked for.

use crate::encode::Dictionary;
use crate::exec::dedupe::NarrowDedupe;
use crate::frame::ts_column;
use crate::windows::WindowsError;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use slate_aggregate::kernel::{Prepared, QueryOrder};
use slate_aggregate::{Agg, Events, Query, Values};
use std::fmt;
use std::sync::Arc;

/// What a row of the operator's input is (the `role` column, `UInt8`).
pub const EVENT: u8 = 1;
/// A row that asks for aggregates as of its time.
pub const QUERY: u8 = 2;

/// One output column: an aggregation of a field (or of the rows) over a window.
#[derive(Debug, Clone)]
pub struct PitAggregation {
    /// The output column's name.
    pub name: String,
    pub agg: Agg,
    /// The aggregated input column (`None` for `count` and time since latest).
    pub field: Option<String>,
    /// `None`: no lower bound.
    pub window: Option<i64>,
    /// The output column's type (results are cast to it exactly, never lossily).
    pub output: DataType,
}

/// The columns the operator reads and what it computes.
#[derive(Debug, Clone)]
pub struct PitSpec {
    /// The entity key column (any type).
    pub key: String,
    /// The time column (a microsecond timestamp): an event's time, a query's now.
    pub time: String,
    /// The role column (`UInt8`, [`EVENT`] | [`QUERY`] bits).
    pub role: String,
    /// Columns of the query rows carried to the output, in order (a row number, say).
    pub carry: Vec<String>,
    pub aggregations: Vec<PitAggregation>,
    /// Whole entities are buffered until at least this many rows, then aggregated together.
    pub chunk_rows: usize,
}

#[derive(Debug)]
pub struct PitAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<PitSpec>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl PitAggregateExec {
    /// The operator over `input`, whose partitions must each hold whole entities, clustered by
    /// key (see [`pit_plan`]).
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: PitSpec) -> Result<Self> {
        let in_schema = input.schema();
        let mut fields = Vec::new();
        for c in &spec.carry {
            fields.push(in_schema.field_with_name(c)?.clone());
        }
        for name in [&spec.key, &spec.time, &spec.role] {
            in_schema.field_with_name(name)?;
        }
        for a in &spec.aggregations {
            if let Some(f) = &a.field {
                in_schema.field_with_name(f)?;
            }
            fields.push(Field::new(&a.name, a.output.clone(), true));
        }
        let schema = Arc::new(Schema::new(fields));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(PitAggregateExec {
            input,
            spec: Arc::new(spec),
            schema,
            properties: Arc::new(properties),
        })
    }
}

/// `input` hash-partitioned by `spec.key` into `partitions`, each partition sorted by
/// (key, time), then aggregated point in time.
pub fn pit_plan(
    input: Arc<dyn ExecutionPlan>,
    spec: PitSpec,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    pit_plan_ordered(input, spec, partitions, &[], None)
}

/// [`pit_plan`] with the rows of an entity and time further ordered by `then_by` (a unique
/// column makes the output order, and so what is written from it, the same in every run).
pub fn pit_plan_ordered(
    input: Arc<dyn ExecutionPlan>,
    spec: PitSpec,
    partitions: usize,
    then_by: &[String],
    dedupe: Option<&NarrowDedupe>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut sorted = partitioned_sorted(input, &spec.key, &spec.time, partitions, then_by)?;
    if let Some(d) = dedupe {
        sorted = d.filter(sorted)?;
    }
    Ok(Arc::new(PitAggregateExec::try_new(sorted, spec)?))
}

/// `input` hash-partitioned by `key` into `partitions`, each partition sorted by
/// (key, time, `then_by`) with DataFusion's sort (which spills under memory pressure).
pub(crate) fn partitioned_sorted(
    input: Arc<dyn ExecutionPlan>,
    key: &str,
    time: &str,
    partitions: usize,
    then_by: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let key = col(key, &schema)?;
    let time = col(time, &schema)?;
    let repartitioned = Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::Hash(vec![key.clone()], partitions.max(1)),
    )?);
    let mut order = vec![
        PhysicalSortExpr::new_default(key),
        PhysicalSortExpr::new_default(time),
    ];
    for c in then_by {
        order.push(PhysicalSortExpr::new_default(col(c, &schema)?));
    }
    let ordering = LexOrdering::new(order)
        .ok_or_else(|| DataFusionError::Internal("empty ordering".into()))?;
    Ok(Arc::new(
        SortExec::new(ordering, repartitioned).with_preserve_partitioning(true),
    ))
}

impl DisplayAs for PitAggregateExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggs: Vec<String> = self
            .spec
            .aggregations
            .iter()
            .map(|a| {
                let window = a
                    .window
                    .map_or("all".to_string(), |w| format!("{}s", w / 1_000_000));
                match &a.field {
                    Some(f) => format!("{}={:?}({f}, {window})", a.name, a.agg),
                    None => format!("{}={:?}({window})", a.name, a.agg),
                }
            })
            .collect();
        write!(
            f,
            "PitAggregateExec: key={}, time={}, aggr=[{}]",
            self.spec.key,
            self.spec.time,
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for PitAggregateExec {
    fn name(&self) -> &'static str {
        "PitAggregateExec"
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
                "PitAggregateExec takes one input".into(),
            ));
        }
        Ok(Arc::new(PitAggregateExec::try_new(
            children.swap_remove(0),
            (*self.spec).clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        // Registered as a consumer that gives way, like the sorts before it: a fair-share pool
        // then keeps a share for each partition's chunk rather than letting the sorts take
        // everything. It gives way by failing, not spilling: its chunk is whole entities.
        let pool = context.memory_pool();
        // What one partition may overdraw for an entity the pool refuses while other operators
        // (a sort merging what it spilled) hold it: an eighth of the budget over all partitions.
        let overdraft = match pool.memory_limit() {
            MemoryLimit::Finite(limit) => {
                let partitions = self.input.output_partitioning().partition_count().max(1);
                limit / (8 * partitions)
            }
            MemoryLimit::Infinite | MemoryLimit::Unknown => 0,
        };
        let reservation = MemoryConsumer::new(format!("PitAggregateExec[{partition}]"))
            .with_can_spill(true)
            .register(pool);
        let state = Chunker {
            overdraft,
            input,
            spec: self.spec.clone(),
            schema: self.schema.clone(),
            buffered: Vec::new(),
            rows: 0,
            reservation,
            done: false,
            ready: Default::default(),
        };
        let stream = futures::stream::try_unfold(state, |mut s| async move {
            match s.next_output().await? {
                Some(b) => Ok(Some((b, s))),
                None => Ok(None),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// One partition's state: the input rows buffered since the last chunk.
struct Chunker {
    input: SendableRecordBatchStream,
    spec: Arc<PitSpec>,
    schema: SchemaRef,
    buffered: Vec<RecordBatch>,
    rows: usize,
    reservation: MemoryReservation,
    /// Bytes the reservation may grow past a refusal to hold one entity (see `execute`).
    overdraft: usize,
    done: bool,
    /// Output rows computed and not yet returned, in batches of about the chunk's size.
    ready: std::collections::VecDeque<RecordBatch>,
}

impl Chunker {
    /// The next output batch, or `None` at the end of the input.
    async fn next_output(&mut self) -> Result<Option<RecordBatch>> {
        if let Some(b) = self.ready.pop_front() {
            return Ok(Some(b));
        }
        match self.next_chunk().await? {
            None => Ok(None),
            // A chunk of large entities (a looked-up store with many orders, say) leaves in
            // pieces of about the chunk's size, each owning its rows, so that what follows
            // (a repartition and a sort) takes batches of the size it expects.
            Some(out) if out.num_rows() > 2 * self.spec.chunk_rows.max(1) => {
                let size = self.spec.chunk_rows.max(1);
                for start in (0..out.num_rows()).step_by(size) {
                    let piece = out.slice(start, size.min(out.num_rows() - start));
                    self.ready.push_back(compact(&piece)?);
                }
                Ok(self.ready.pop_front())
            }
            Some(out) => Ok(Some(out)),
        }
    }

    /// The output of the next chunk of whole entities, or `None` at the end of the input.
    async fn next_chunk(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.done {
                if self.rows == 0 {
                    return Ok(None);
                }
                let chunk = self.take_all()?;
                self.reservation.free();
                return aggregate_chunk(&self.spec, &self.schema, &chunk).map(Some);
            }
            match self.input.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let bytes = batch.get_array_memory_size();
                    // Refused memory makes the chunk end early (at the last whole entity); only
                    // an entity whose rows alone do not fit is an error.
                    let refused = self.reservation.try_grow(bytes).err();
                    self.rows += batch.num_rows();
                    self.buffered.push(batch);
                    if refused.is_some() || self.rows >= self.spec.chunk_rows {
                        match (self.emit_whole_entities()?, refused) {
                            (Some(out), _) => return Ok(Some(out)),
                            // One entity, within the overdraft: held and accounted for, so
                            // that the operator moves on while the pool is held elsewhere.
                            (None, Some(_))
                                if self.reservation.size() + bytes <= self.overdraft =>
                            {
                                self.reservation.grow(bytes);
                            }
                            (None, Some(e)) => {
                                return Err(DataFusionError::ResourcesExhausted(format!(
                                    "PitAggregateExec could not reserve {bytes} bytes for the rows of one entity ({} rows held): {e}; raise the memory limit",
                                    self.rows
                                )));
                            }
                            (None, None) => {}
                        }
                    }
                }
                None => self.done = true,
            }
        }
    }

    fn take_all(&mut self) -> Result<RecordBatch> {
        let all = concat_batches(&self.input.schema(), &self.buffered)?;
        self.buffered.clear();
        self.rows = 0;
        Ok(all)
    }

    /// Aggregates the buffered entities but the last (which may continue in the next batch);
    /// `None` when everything buffered is one entity.
    fn emit_whole_entities(&mut self) -> Result<Option<RecordBatch>> {
        let all = self.take_all()?;
        let key = all.column_by_name(&self.spec.key).ok_or_else(|| {
            DataFusionError::Internal(format!("input lacks key {}", self.spec.key))
        })?;
        let ranges = arrow::compute::partition(std::slice::from_ref(key))?.ranges();
        // Rows without a key match nothing: a run of them can end a chunk anywhere.
        let split = match ranges.last() {
            Some(r) if key.is_null(r.start) => all.num_rows(),
            Some(r) => r.start,
            None => 0,
        };
        let rest = all.slice(split, all.num_rows() - split);
        if split == 0 {
            self.rows = rest.num_rows();
            self.buffered.push(rest);
            return Ok(None);
        }
        let out = aggregate_chunk(&self.spec, &self.schema, &all.slice(0, split))?;
        // The last entity's rows are kept, compacted, and the reservation follows them.
        let rest = compact(&rest)?;
        self.reservation.resize(rest.get_array_memory_size());
        self.rows = rest.num_rows();
        self.buffered.push(rest);
        Ok(Some(out))
    }
}

/// A copy of `b` that owns only its rows (a slice keeps its parent's buffers alive).
fn compact(b: &RecordBatch) -> Result<RecordBatch> {
    let all = UInt32Array::from_iter_values(0..b.num_rows() as u32);
    Ok(arrow::compute::take_record_batch(b, &all)?)
}

fn engine_err(e: crate::EngineError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The aggregates of every query row of `chunk`, whose entities are complete.
fn aggregate_chunk(spec: &PitSpec, schema: &SchemaRef, chunk: &RecordBatch) -> Result<RecordBatch> {
    let column = |name: &str| {
        chunk
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("input lacks column {name}")))
    };
    let role = column(&spec.role)?;
    let role = role.as_primitive::<UInt8Type>();
    let times = ts_column(chunk, &spec.time).map_err(engine_err)?;
    let key = column(&spec.key)?;
    let mut dict = Dictionary::new(key.data_type()).map_err(engine_err)?;
    let codes = dict.encode(&key).map_err(engine_err)?;
    let is = |i: usize, bit: u8| role.is_valid(i) && role.value(i) & bit != 0;
    // Events need a key and a time; a query with no key matches no events.
    let events: Vec<usize> = (0..chunk.num_rows())
        .filter(|&i| is(i, EVENT) && codes[i].is_some() && times[i].is_some())
        .collect();
    let queries: Vec<usize> = (0..chunk.num_rows()).filter(|&i| is(i, QUERY)).collect();
    let qs: Vec<Query> = queries
        .iter()
        .map(|&i| Query {
            entity: codes[i].map_or(-1, i64::from),
            now: times[i].unwrap_or(i64::MIN),
        })
        .collect();
    let order = QueryOrder::new(&qs);
    let event_idx = UInt32Array::from_iter_values(events.iter().map(|&i| i as u32));
    let base = Prepared::new(&Events {
        entity: events
            .iter()
            .map(|&i| codes[i].map_or(-1, i64::from))
            .collect(),
        ts: events
            .iter()
            .map(|&i| times[i].unwrap_or_default())
            .collect(),
        value: Values::absent(),
    });
    let values = |f: &str| -> std::result::Result<Option<ArrayRef>, crate::EngineError> {
        let c = chunk
            .column_by_name(f)
            .ok_or_else(|| crate::EngineError::Internal(format!("input lacks column {f}")))?;
        Ok(Some(take(c, &event_idx, None)?))
    };
    // Partitions run on their own threads: one here.
    let outputs = crate::windows::aggregate(&base, &values, &qs, &order, &spec.aggregations, 1)
        .map_err(|e| match e {
            WindowsError::Kernel(reason) => DataFusionError::Execution(reason),
            WindowsError::Engine(e) => engine_err(e),
        })?;
    let query_idx = UInt32Array::from_iter_values(queries.iter().map(|&i| i as u32));
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in &spec.carry {
        columns.push(take(&column(c)?, &query_idx, None)?);
    }
    columns.extend(outputs);
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray, UInt8Array};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use slate_aggregate::reference;
    use std::collections::HashMap;

    const HOUR: i64 = 3_600_000_000;

    /// Seeded random rows: keys with skew, equal times, rows that are events, queries or both,
    /// values with nulls; in the order given (not sorted).
    struct Rows {
        key: Vec<Option<i64>>,
        ts: Vec<i64>,
        role: Vec<u8>,
        value: Vec<Option<i64>>,
    }

    fn rows(seed: u64, n: usize, entities: i64) -> Rows {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut r = Rows {
            key: vec![],
            ts: vec![],
            role: vec![],
            value: vec![],
        };
        for _ in 0..n {
            let k = if rng.random_bool(0.02) {
                None
            } else {
                // Skewed: a few entities hold many rows.
                let x: f64 = rng.random();
                Some((x * x * entities as f64) as i64)
            };
            r.key.push(k);
            r.ts.push(rng.random_range(0..24 * 40) * HOUR / 4);
            r.role
                .push([EVENT, QUERY, EVENT | QUERY][rng.random_range(0..3)]);
            r.value
                .push((!rng.random_bool(0.1)).then(|| rng.random_range(-5..20)));
        }
        r
    }

    fn aggregations() -> Vec<PitAggregation> {
        let mut v = Vec::new();
        for (agg, field, output) in [
            (Agg::Count, None, DataType::Int64),
            (Agg::CountDistinct, Some("value"), DataType::Int64),
            (Agg::Sum, Some("value"), DataType::Int64),
            (Agg::Mean, Some("value"), DataType::Float64),
            (Agg::Min, Some("value"), DataType::Int64),
            (Agg::Max, Some("value"), DataType::Int64),
            (Agg::Latest, Some("value"), DataType::Int64),
            (Agg::TimeSinceLatest, None, DataType::Float64),
        ] {
            for window in [Some(6 * HOUR), Some(24 * 5 * HOUR), None] {
                v.push(PitAggregation {
                    name: format!("{agg:?}_{}", window.map_or(0, |w| w / HOUR)),
                    agg,
                    field: field.map(String::from),
                    window,
                    output: output.clone(),
                });
            }
        }
        v
    }

    fn spec(chunk_rows: usize) -> PitSpec {
        PitSpec {
            key: "key".into(),
            time: "ts".into(),
            role: "role".into(),
            carry: vec!["row".into()],
            aggregations: aggregations(),
            chunk_rows,
        }
    }

    /// The rows as batches of `batch` rows, with their string form of the key when `strings`.
    fn batches(r: &Rows, batch: usize, strings: bool) -> (SchemaRef, Vec<RecordBatch>) {
        let key_type = if strings {
            DataType::Utf8
        } else {
            DataType::Int64
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("row", DataType::Int64, false),
            Field::new("key", key_type, true),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("role", DataType::UInt8, false),
            Field::new("value", DataType::Int64, true),
        ]));
        let mut out = Vec::new();
        for start in (0..r.key.len()).step_by(batch) {
            let end = (start + batch).min(r.key.len());
            let key: ArrayRef = if strings {
                Arc::new(StringArray::from_iter(
                    r.key[start..end]
                        .iter()
                        .map(|k| k.map(|k| format!("user-{k}"))),
                ))
            } else {
                Arc::new(Int64Array::from(r.key[start..end].to_vec()))
            };
            out.push(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(start as i64..end as i64)),
                        key,
                        Arc::new(
                            TimestampMicrosecondArray::from(r.ts[start..end].to_vec())
                                .with_timezone("UTC"),
                        ),
                        Arc::new(UInt8Array::from(r.role[start..end].to_vec())),
                        Arc::new(Int64Array::from(r.value[start..end].to_vec())),
                    ],
                )
                .expect("batch"),
            );
        }
        (schema, out)
    }

    /// Runs the plan; returns its output sorted by row, and the sort's spill count.
    async fn run(
        ctx: &SessionContext,
        r: &Rows,
        strings: bool,
        partitions: usize,
        chunk_rows: usize,
    ) -> (RecordBatch, usize) {
        let (schema, batches) = batches(r, 1000, strings);
        let source = MemorySourceConfig::try_new_exec(&[batches], schema, None).expect("source");
        let plan = pit_plan(source, spec(chunk_rows), partitions).expect("plan");
        let out = collect(plan.clone(), ctx.task_ctx()).await.expect("run");
        let spills = plan.children()[0]
            .metrics()
            .and_then(|m| m.spill_count())
            .unwrap_or(0);
        let all = concat_batches(&plan.schema(), &out).expect("concat");
        let order = arrow::compute::sort_to_indices(all.column(0), None, None).expect("sort");
        (
            arrow::compute::take_record_batch(&all, &order).expect("take"),
            spills,
        )
    }

    /// Every aggregation of every query row against the brute-force reference (run one entity
    /// at a time: the reference scans every event for every query).
    fn check(r: &Rows, out: &RecordBatch) {
        let queries: Vec<usize> = (0..r.key.len())
            .filter(|&i| r.role[i] & QUERY != 0)
            .collect();
        assert_eq!(
            out.num_rows(),
            queries.len(),
            "one output row per query row"
        );
        let rows = out.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        assert!(
            queries
                .iter()
                .zip(rows.values())
                .all(|(&q, &r)| q as i64 == r)
        );
        let mut by_entity: HashMap<i64, (Vec<usize>, Vec<usize>)> = HashMap::new();
        for i in 0..r.key.len() {
            if r.role[i] & EVENT != 0
                && let Some(k) = r.key[i]
            {
                by_entity.entry(k).or_default().0.push(i);
            }
        }
        for (pos, &i) in queries.iter().enumerate() {
            by_entity
                .entry(r.key[i].unwrap_or(-1))
                .or_default()
                .1
                .push(pos);
        }
        for (entity, (ev, qs)) in &by_entity {
            let events = Events {
                entity: vec![*entity; ev.len()],
                ts: ev.iter().map(|&i| r.ts[i]).collect(),
                value: Values::Int(ev.iter().map(|&i| r.value[i]).collect()),
            };
            let asked: Vec<Query> = qs
                .iter()
                .map(|&p| Query {
                    entity: *entity,
                    now: r.ts[queries[p]],
                })
                .collect();
            for (j, a) in aggregations().iter().enumerate() {
                let want = reference::aggregate(&events, &asked, a.agg, a.window)
                    .expect("reference")
                    .to_f64();
                let got =
                    arrow::compute::cast(out.column(1 + j), &DataType::Float64).expect("cast");
                let got = got.as_primitive::<arrow::datatypes::Float64Type>();
                for (w, &p) in want.iter().zip(qs) {
                    let g = got.is_valid(p).then(|| got.value(p));
                    let same = match (g, w) {
                        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                        (None, None) => true,
                        _ => false,
                    };
                    assert!(
                        same,
                        "{} of row {}: got {g:?}, want {w:?}",
                        a.name, queries[p]
                    );
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matches_the_reference_with_any_partitions_and_chunks() {
        let ctx = SessionContext::new();
        for seed in 0..3 {
            let r = rows(seed, 5_000, 300);
            for (partitions, chunk_rows, strings) in [
                (1, 1 << 20, false),
                (3, 64, true),
                (16, 1, false),
                (2, 500, true),
            ] {
                let (out, _) = run(&ctx, &r, strings, partitions, chunk_rows).await;
                check(&r, &out);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sort_spills_under_a_small_memory_limit_and_results_stay_exact() {
        // About 6 MB of rows through an 8 MiB pool shared by the two partitions' sorts and the
        // repartition's buffers: each sort spills sorted runs to disk and merges them back.
        // Each sort keeps 256 KiB aside for its merge, a small share of the pool as in a run
        // (`Execution::session` keeps an eighth of the budget for all merges together): with
        // 1 MiB of a 4 MiB pool each, a partition whose sort started late could find its merge
        // reservation taken by the other partition's rows and the repartition's buffers.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(8 << 20)))
            .build_arc()
            .expect("runtime");
        let config = SessionConfig::new()
            .with_sort_spill_reservation_bytes(256 << 10)
            .with_batch_size(1024);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let r = rows(7, 150_000, 15_000);
        let (out, spills) = run(&ctx, &r, false, 2, 4096).await;
        assert!(spills > 0, "an 8 MiB pool makes the sort spill");
        check(&r, &out);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_too_small_for_one_entity_is_an_error_naming_the_operator() {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(256 << 10)))
            .build_arc()
            .expect("runtime");
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        // One entity with every row, already in order: its rows must be held at once.
        let mut r = rows(3, 100_000, 1);
        r.key.iter_mut().for_each(|k| *k = Some(1));
        r.ts.sort_unstable();
        let (schema, batches) = batches(&r, 1000, false);
        let source = MemorySourceConfig::try_new_exec(&[batches], schema, None).expect("source");
        let plan = Arc::new(PitAggregateExec::try_new(source, spec(1 << 20)).expect("plan"));
        let err = collect(plan, ctx.task_ctx())
            .await
            .expect_err("too little memory");
        let text = err.to_string();
        assert!(
            text.contains("PitAggregateExec could not reserve")
                && text.contains("bytes for the rows of one entity"),
            "the error names the operator and the memory it asked for: {text}"
        );
    }
}
