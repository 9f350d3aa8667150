//! A run whose nodes compute from its root rows (row-local nodes, aggregations over the root
//! class's own table by the rows' key, has-one lookups), as one streamed physical plan. A
//! backfill (its root scan reads every row):
//!
//! ```text
//! source stream ─ shape to the class ─ TapExec (each row's key, time and position to a narrow
//!     plan: hash by key, spilling sort by key, latest time, position: which rows lose to
//!     another of their key)
//!   ─ for each lookup group: the looked-up table's rows unioned in as events ─ PitLookupExec
//!     (hash by the key, spilling sort by key, time; the latest version before each row)
//!   ─ for each aggregate group: PitAggregateExec (hash by entity, spilling sort by entity,
//!     time, key; state for one entity at a time) ─ NodesExec (expressions, functions, models)
//!   ─ the first of these operators reads its sort's output through DedupeFilterExec, which
//!     drops the losers: one row per key, and no sort of whole rows for the deduplication
//!     (a plan without such an operator deduplicates with DedupeExec after a sort by key)
//!   ─ SortPreservingMergeExec (entity, time, key: the same order whatever the partitions)
//!   ─ sinks: the class's offline table, the query's offline record, the online store
//! ```
//!
//! A later run (its root scan reads from the watermark) stores its new rows at ingest and
//! streams them as queries only; each aggregate group unions in its entities' stored rows (a
//! keyed read of the offline table) as events, and no dedupe or class-table sink is needed.
//!
//! No step holds the run's rows: sorts spill under the run's memory budget, the sinks write
//! batches as they come (one Delta commit per table at the end, the online store's commit after
//! its last batch), and partitions run on every core. The offline rows are written in the
//! merge's order, so a rerun, or a run with other partitions or another budget, writes the
//! same rows in the same order; the online rows are sorted by key (spilling) before they are
//! inserted, so that the store's tree is walked in order.

use super::{
    Engine, Ingested, OutputColumns, OutputSummary, Progress, json_values, key_strings, published,
};
use crate::EngineError;
use crate::compute::{Frame, Since, history};
use crate::exec::dedupe::{NarrowDedupe, dedupe_plan, narrow_dedupe};
use crate::exec::nodes::{NodesExec, RowNodes};
use crate::exec::pit_aggregate::{EVENT, PitAggregation, PitSpec, QUERY, pit_plan_ordered};
use crate::exec::pit_lookup::{LookupSpec, PitLookup, lookup_plan};
use crate::exec::runtime::Execution;
use crate::exec::source::source_exec;
use crate::exec::{Busy, FirstError};
use crate::frame::{to_class_batch, to_class_batch_at, ts_column};
use crate::plan::{Node, QueryPlan};
use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use futures::StreamExt;
use slate_model::OnnxModel;
use slate_project::IncrementalTimestamp;
use slate_stores::OnlineStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each input row's position in the source's result (the first of equal rows wins).
const POS: &str = "__pos";
/// Each row's now, as a microsecond timestamp.
const NOW: &str = "__now";
/// Each row's role for the point-in-time operator: an event and a query.
const ROLE: &str = "__role";

/// What a streamed run produced, for its record.
pub(super) struct Streamed {
    pub ingested: Ingested,
    /// What the looked-up classes' scans read (in the plan's scan order after the root's).
    pub related: Vec<Ingested>,
    pub rows: usize,
    pub outputs: Vec<OutputSummary>,
}

/// The streamed plan of a first run or backfill of `plan` (with `daily`, of a later run) with
/// `partitions` partitions, as DataFusion's EXPLAIN shows a physical plan; `None` when `plan`
/// does not stream.
pub(super) fn explain(plan: &QueryPlan, partitions: usize, daily: bool) -> Option<String> {
    if !streamable(plan) {
        return None;
    }
    let scan = plan.root_scan();
    let time = plan.root_time.as_deref()?;
    let empty = to_class_batch(&scan.resolver.name, &scan.class, vec![], &[]).ok()?;
    let shaped = with_extras(empty, &scan.class.primary_key, time, 0, &scan.resolver.name).ok()?;
    let (schema, history) = match daily {
        false => (shaped.schema(), None),
        true => (
            nullable(&daily_columns(plan, shaped).ok()?.schema()),
            Some(HashMap::new()),
        ),
    };
    let source = source_exec(schema, futures::stream::empty().boxed()).ok()?;
    let input = PlanInput {
        rows: source,
        history,
        lookups: HashMap::new(),
    };
    let (physical, _) = physical_plan(
        plan,
        input,
        Arc::new(HashMap::new()),
        crate::compute::Functions::new(),
        partitions,
        1 << 16,
        &Clocks::default(),
        &FirstError::default(),
    )
    .ok()?;
    Some(
        datafusion::physical_plan::displayable(physical.as_ref())
            .indent(false)
            .to_string(),
    )
}

/// A daily run's shaped rows with only the columns its plan reads or writes (and the extras
/// it needs: [`NOW`], [`ROLE`]): what goes through its sorts.
fn daily_columns(plan: &QueryPlan, shaped: RecordBatch) -> Result<RecordBatch, EngineError> {
    let scan = plan.root_scan();
    let time = plan.root_time.as_deref().unwrap_or_default();
    // What nodes read, and root columns the record holds (a computed column, say a model's
    // label, comes later, not from the rows).
    let read: Vec<&str> = plan
        .nodes
        .iter()
        .flat_map(|n| match n {
            Node::Column { column, .. } => vec![column.as_str()],
            n => n.inputs(),
        })
        .chain([scan.class.primary_key.as_str(), time, NOW, ROLE])
        .collect();
    let kept: Vec<usize> = shaped
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| read.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    Ok(shaped.project(&kept)?)
}

/// Whether `plan` runs as a streamed plan: a feature time, every node row-local, a has-one
/// lookup or an aggregation over the root rows themselves, and every scan but the root's one
/// of a looked-up class (stored before the plan runs).
pub(super) fn streamable(plan: &QueryPlan) -> bool {
    let Some(time) = &plan.root_time else {
        return false;
    };
    let table = plan.root_table();
    let looked_up = |scan: &crate::plan::Scan| {
        plan.nodes
            .iter()
            .any(|n| matches!(n, Node::Lookup { table, .. } if *table == scan.table()))
    };
    plan.scans.iter().skip(1).all(looked_up)
        && plan.nodes.iter().all(|n| match n {
            Node::Aggregate {
                key,
                table: t,
                table_key,
                table_time,
                ..
            } => t == &table && key == table_key && table_time == time,
            Node::Lookup { .. } => true,
            n => RowNodes::is_row_local(n),
        })
}

/// Where each stage's working time is counted (stages overlap; each is summed over partitions).
#[derive(Default)]
struct Clocks {
    ingest: Busy,
    compute: Busy,
    predict: Busy,
    /// The sinks' work: building the batches; the online sort (waiting included) and inserts.
    write: Busy,
    online: Busy,
    online_sort: Busy,
}

impl Clocks {
    fn new() -> Self {
        Clocks {
            ingest: Busy::new(),
            compute: Busy::new(),
            predict: Busy::new(),
            write: Busy::new(),
            online: Busy::new(),
            online_sort: Busy::new(),
        }
    }
}

/// What a streamed plan reads.
struct PlanInput {
    /// A backfill's every root row (the shaped rows, with [`POS`], [`NOW`] and [`ROLE`]),
    /// each an event and a query, deduplicated by primary key in the plan; or a daily run's
    /// new root rows, deduplicated at ingest and already stored, as queries.
    rows: Arc<dyn ExecutionPlan>,
    /// A daily run's: per aggregation key, the stored history of its entities (the new rows
    /// included), as events: the key, the time and the aggregated fields of each row.
    history: Option<HashMap<String, slate_stores::KeyedRows>>,
    /// Per lookup group (see [`lookup_group`]): the looked-up table's rows (key, time and
    /// looked-up fields), of every key for a backfill, of the rows' keys for a daily run.
    lookups: HashMap<String, slate_stores::KeyedRows>,
}

/// The lookups of one key column into one table share one read and one operator.
fn lookup_group(key: &str, table: &str) -> String {
    format!("{key}\u{0}{table}")
}

/// The column a lookup's value travels in through its operator's input.
fn lookup_field(column: &str) -> String {
    format!("__lookup.{column}")
}

/// The streamed plan of `plan` over `input`, and the columns its output is ordered by.
#[allow(clippy::too_many_arguments)]
fn physical_plan(
    plan: &QueryPlan,
    input: PlanInput,
    models: Arc<HashMap<String, OnnxModel>>,
    functions: crate::compute::Functions,
    partitions: usize,
    batch_rows: usize,
    clocks: &Clocks,
    errors: &FirstError,
) -> Result<(Arc<dyn ExecutionPlan>, Vec<String>), EngineError> {
    let failed = |e: DataFusionError| EngineError::Plan {
        query: plan.query.name.clone(),
        reason: e.to_string(),
    };
    let pk = plan.root.primary_key.clone();
    let time = plan
        .root_time
        .clone()
        .ok_or_else(|| EngineError::Internal("a streamed plan without a feature time".into()))?;
    let PlanInput {
        rows,
        mut history,
        mut lookups,
    } = input;
    // A backfill's rows are deduplicated by primary key: before the first point-in-time
    // operator's sort (which sorts every row anyway), from a narrow copy of each row's key,
    // time and position; or, with no such operator, by a sort of the whole rows.
    let staged = plan
        .nodes
        .iter()
        .any(|n| matches!(n, Node::Aggregate { .. } | Node::Lookup { .. }));
    let mut dedupe: Option<NarrowDedupe> = None;
    let mut current = match history {
        None if staged => {
            let (tap, narrow) = narrow_dedupe(
                rows,
                std::slice::from_ref(&pk),
                &[(time.clone(), true), (POS.into(), false)],
                POS,
                partitions,
                clocks.ingest.clone(),
            )
            .map_err(failed)?;
            dedupe = Some(narrow);
            tap
        }
        None => dedupe_plan(
            rows,
            std::slice::from_ref(&pk),
            &[(time.clone(), true), (POS.into(), false)],
            partitions,
            clocks.ingest.clone(),
        )
        .map_err(failed)?,
        Some(_) => rows,
    };
    let mut stage = 0usize;
    let mut order = vec![pk.clone()];
    let mut pending: Vec<Node> = Vec::new();
    // Where the time of polling a NodesExec's input goes: the point-in-time operator's, or
    // nowhere when the input is the deduplication (which counts its own).
    let mut input_busy = Busy::default();
    let row_nodes = |nodes: Vec<Node>| {
        Arc::new(RowNodes {
            nodes,
            models: models.clone(),
            functions: functions.clone(),
            now: NOW.into(),
            compute: clocks.compute.clone(),
            predict: clocks.predict.clone(),
            errors: errors.clone(),
        })
    };
    let mut done = vec![false; plan.nodes.len()];
    for i in 0..plan.nodes.len() {
        if done[i] {
            continue;
        }
        let key = match &plan.nodes[i] {
            Node::Aggregate { key, .. } | Node::Lookup { key, .. } => key,
            n => {
                // A root column is already there.
                if !matches!(n, Node::Column { .. }) {
                    pending.push(n.clone());
                }
                done[i] = true;
                continue;
            }
        };
        // A point-in-time operator right after another gets a pass-through that times it.
        if !pending.is_empty() || input_busy.is_counted() {
            current = Arc::new(NodesExec::try_new(
                current,
                row_nodes(std::mem::take(&mut pending)),
                std::mem::take(&mut input_busy),
            )?);
        }
        if let Node::Lookup { table, .. } = &plan.nodes[i] {
            // Every lookup of this key into this table, over one sort.
            let mut group = Vec::new();
            for (j, node) in plan.nodes.iter().enumerate().skip(i) {
                if let Node::Lookup {
                    key: k, table: t, ..
                } = node
                    && k == key
                    && t == table
                    && !done[j]
                {
                    group.push(node);
                    done[j] = true;
                }
            }
            stage += 1;
            current = lookup_stage(
                current,
                &group,
                lookups.remove(&lookup_group(key, table)),
                &format!("__role.{stage}"),
                &pk,
                partitions,
                batch_rows,
                errors,
                dedupe.take().as_ref(),
            )
            .map_err(failed)?;
            order = vec![key.clone(), NOW.into(), pk.clone()];
            input_busy = clocks.compute.clone();
            continue;
        }
        // Every aggregation of the same entity, over one sort.
        let mut aggregations = Vec::new();
        for (j, node) in plan.nodes.iter().enumerate().skip(i) {
            if let Node::Aggregate {
                key: k,
                column,
                field,
                agg,
                window,
                ty,
                ..
            } = node
                && k == key
                && !done[j]
            {
                aggregations.push(PitAggregation {
                    name: column.clone(),
                    agg: *agg,
                    field: field.clone(),
                    window: *window,
                    output: ty.arrow(),
                });
                done[j] = true;
            }
        }
        // A daily run's queries meet their entities' stored rows, as events.
        if let Some(history) = &mut history {
            let mut map = vec![
                (key.clone(), EventColumn::Column(key.clone())),
                (time.clone(), EventColumn::Column(time.clone())),
                (NOW.to_string(), EventColumn::Column(time.clone())),
                (ROLE.to_string(), EventColumn::Role(EVENT)),
            ];
            for n in &plan.nodes {
                if let Node::Aggregate {
                    key: k,
                    field: Some(f),
                    ..
                } = n
                    && k == key
                {
                    map.push((f.clone(), EventColumn::Column(f.clone())));
                }
            }
            current = with_events(current, history.remove(key), map, batch_rows, errors)
                .map_err(failed)?;
        }
        let carry = current
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let spec = PitSpec {
            key: key.clone(),
            time: NOW.into(),
            role: ROLE.into(),
            carry,
            aggregations,
            // Output batches of about the plan's batch size: what follows (the merge, the
            // sinks) holds a few batches, and a small budget makes them small.
            chunk_rows: batch_rows,
        };
        current = pit_plan_ordered(
            current,
            spec,
            partitions,
            std::slice::from_ref(&pk),
            dedupe.take().as_ref(),
        )
        .map_err(failed)?;
        order = vec![key.clone(), NOW.into(), pk.clone()];
        // The operator's time is counted where the next operator polls it.
        input_busy = clocks.compute.clone();
    }
    if !pending.is_empty() || input_busy.is_counted() {
        current = Arc::new(NodesExec::try_new(current, row_nodes(pending), input_busy)?);
    }
    // The partitions merged in one order whatever their number: entity, time, key after a
    // point-in-time operator, else key.
    let schema = current.schema();
    let ordering = order
        .iter()
        .map(|c| col(c, &schema).map(PhysicalSortExpr::new_default))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let ordering = LexOrdering::new(ordering)
        .ok_or_else(|| EngineError::Internal("a merge without an order".into()))?;
    Ok((
        Arc::new(SortPreservingMergeExec::new(ordering, current)),
        order,
    ))
}

/// The shaped root rows: the class's columns, then [`POS`], [`NOW`] and [`ROLE`].
fn with_extras(
    batch: RecordBatch,
    pk: &str,
    time: &str,
    first_row: usize,
    resolver: &str,
) -> Result<RecordBatch, EngineError> {
    let n = batch.num_rows();
    let key = batch
        .column_by_name(pk)
        .ok_or_else(|| EngineError::Internal(format!("missing column {pk}")))?;
    let times = ts_column(&batch, time)?;
    for (i, t) in times.iter().enumerate() {
        if key.is_null(i) || t.is_none() {
            let c = if key.is_null(i) { pk } else { time };
            return Err(EngineError::BadValue {
                resolver: resolver.into(),
                reason: format!(
                    "row {} has a null `{c}`; keys and feature times must be set",
                    first_row + i + 1
                ),
            });
        }
    }
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(POS, DataType::UInt64, false));
    fields.push(Field::new(NOW, ts_type(), false));
    fields.push(Field::new(ROLE, DataType::UInt8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(UInt64Array::from_iter_values(
        first_row as u64..(first_row + n) as u64,
    )));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(times.into_iter().map(|t| t.unwrap_or(0)))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(UInt8Array::from_value(EVENT | QUERY, n)));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A batch (or an error) as slices of at most `rows` rows.
fn sliced<E>(batch: Result<RecordBatch, E>, rows: usize) -> Vec<Result<RecordBatch, E>> {
    match batch {
        Ok(b) => (0..b.num_rows())
            .step_by(rows.max(1))
            .map(|s| Ok(b.slice(s, rows.min(b.num_rows() - s))))
            .collect(),
        Err(e) => vec![Err(e)],
    }
}

/// About the bytes of a row of the plan's output, for rows of `schema`: the computed columns
/// make it about twice the input's.
fn row_bytes(schema: &Schema) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(24))
        .sum::<usize>()
        * 2
}

/// `schema` with every field nullable: the schema of rows that lack some columns.
fn nullable(schema: &Schema) -> Arc<Schema> {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// `rows` (shaped by [`with_extras`]) as queries only, in `schema` (theirs, made nullable).
fn as_queries(rows: RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch, EngineError> {
    let mut columns = rows.columns().to_vec();
    let role = rows.schema().index_of(ROLE)?;
    columns[role] = Arc::new(UInt8Array::from_value(QUERY, rows.num_rows()));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Where a column of events comes from (see [`as_events`]).
#[derive(Clone)]
enum EventColumn {
    /// A column of the stored rows.
    Column(String),
    /// A role, the same for every row.
    Role(u8),
    /// The earliest time: a version of a class without a feature time precedes every query.
    Earliest,
}

/// Stored rows (a history or a looked-up table) as events in `schema`: each column of `map`
/// from where it says, every other column null.
fn as_events(
    rows: &RecordBatch,
    schema: &Arc<Schema>,
    map: &[(String, EventColumn)],
) -> Result<RecordBatch, EngineError> {
    let n = rows.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef, EngineError> {
            let from = map.iter().find(|(c, _)| c == f.name()).map(|(_, e)| e);
            let a: ArrayRef = match from {
                None => return Ok(arrow::array::new_null_array(f.data_type(), n)),
                Some(EventColumn::Role(r)) => Arc::new(UInt8Array::from_value(*r, n)),
                Some(EventColumn::Earliest) => Arc::new(
                    TimestampMicrosecondArray::from_value(i64::MIN, n).with_timezone("UTC"),
                ),
                Some(EventColumn::Column(c)) => rows
                    .column_by_name(c)
                    .ok_or_else(|| EngineError::Internal(format!("stored rows lack {c}")))?
                    .clone(),
            };
            crate::compute::strict_cast(&a, f.data_type())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `queries` unioned with stored `rows` as events, in `queries`' columns made nullable (each
/// column of `map` from where it says, the others null; see [`as_events`]), in batches of the
/// plan's size like its other rows (a small budget makes them small).
fn with_events(
    queries: Arc<dyn ExecutionPlan>,
    rows: Option<slate_stores::KeyedRows>,
    map: Vec<(String, EventColumn)>,
    batch_rows: usize,
    errors: &FirstError,
) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
    let target = nullable(&queries.schema());
    let (schema, errors) = (target.clone(), errors.clone());
    let events = rows
        .unwrap_or_else(|| futures::stream::empty().boxed())
        .map(move |b| {
            b.map_err(|e| errors.keep(e.into()))
                .and_then(|b| as_events(&b, &target, &map).map_err(|e| errors.keep(e)))
        })
        .flat_map(move |b| futures::stream::iter(sliced(b, batch_rows)))
        .boxed();
    datafusion::physical_plan::union::UnionExec::try_new(vec![
        queries,
        source_exec(schema, events)?,
    ])
}

/// The point-in-time operator of has-one lookups `group` (one key column, one table): the
/// rows of `current` as queries (in the stage's own `role` column, so that a backfill's rows
/// are not versions of the looked-up class), the looked-up table's rows as events; each
/// query takes each looked-up field from its key's latest version strictly before its now.
#[allow(clippy::too_many_arguments)]
fn lookup_stage(
    current: Arc<dyn ExecutionPlan>,
    group: &[&Node],
    rows: Option<slate_stores::KeyedRows>,
    role: &str,
    pk: &str,
    partitions: usize,
    batch_rows: usize,
    errors: &FirstError,
    dedupe: Option<&NarrowDedupe>,
) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
    use datafusion::physical_expr::expressions::Literal;
    use datafusion::physical_plan::projection::ProjectionExec;
    let Some(Node::Lookup {
        key,
        class_key,
        class_time,
        ..
    }) = group.first()
    else {
        return Err(DataFusionError::Internal("an empty lookup group".into()));
    };
    // The queries: every column, then a null value column per lookup and the stage's role.
    let schema = current.schema();
    let mut exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = Vec::new();
    for f in schema.fields() {
        exprs.push((col(f.name(), &schema)?, f.name().clone()));
    }
    let mut map = vec![
        (key.clone(), EventColumn::Column(class_key.clone())),
        (
            NOW.to_string(),
            match class_time {
                Some(t) => EventColumn::Column(t.clone()),
                None => EventColumn::Earliest,
            },
        ),
        (role.to_string(), EventColumn::Role(EVENT)),
    ];
    let mut lookups = Vec::new();
    for n in group {
        if let Node::Lookup {
            column, field, ty, ..
        } = n
        {
            let ty = ty.arrow();
            let travel = lookup_field(column);
            exprs.push((
                Arc::new(Literal::new(datafusion::common::ScalarValue::try_from(
                    &ty,
                )?)),
                travel.clone(),
            ));
            map.push((travel.clone(), EventColumn::Column(field.clone())));
            lookups.push(PitLookup {
                name: column.clone(),
                field: travel,
                output: ty,
            });
        }
    }
    exprs.push((
        Arc::new(Literal::new(datafusion::common::ScalarValue::UInt8(Some(
            QUERY,
        )))),
        role.to_string(),
    ));
    let queries: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, current)?);
    let current = with_events(queries, rows, map, batch_rows, errors)?;
    let carry = current
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let spec = LookupSpec {
        key: key.clone(),
        time: NOW.into(),
        role: role.into(),
        carry,
        lookups,
    };
    lookup_plan(current, spec, partitions, &[pk.to_string()], dedupe)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Per published output: rows, nulls and, for booleans, trues.
struct Tally {
    rows: usize,
    nulls: usize,
    trues: Option<usize>,
}

impl Engine {
    /// The rows of the tables `plan` looks up, per lookup group (see [`lookup_group`]): of the
    /// keys in `rows` (a daily run's new rows), or of every key.
    async fn lookup_reads(
        &self,
        plan: &QueryPlan,
        rows: Option<&RecordBatch>,
    ) -> Result<HashMap<String, slate_stores::KeyedRows>, EngineError> {
        let offline = self.offline();
        let mut out = HashMap::new();
        for n in &plan.nodes {
            let Node::Lookup {
                key,
                table,
                class_key,
                class_time,
                ..
            } = n
            else {
                continue;
            };
            let id = lookup_group(key, table);
            if out.contains_key(&id) {
                continue;
            }
            let mut columns: Vec<&str> = vec![class_key];
            columns.extend(class_time.as_deref());
            for m in &plan.nodes {
                if let Node::Lookup {
                    key: k,
                    table: t,
                    field,
                    ..
                } = m
                    && k == key
                    && t == table
                    && !columns.contains(&field.as_str())
                {
                    columns.push(field);
                }
            }
            let read = match rows {
                None => offline.stream_all(table, &columns).await?,
                Some(rows) if rows.num_rows() == 0 => futures::stream::empty().boxed(),
                Some(rows) => {
                    let keys = rows.column_by_name(key).ok_or_else(|| {
                        EngineError::Internal(format!("the rows lack their key {key}"))
                    })?;
                    let mut dict = crate::encode::Dictionary::keeping_values(keys.data_type())?;
                    dict.encode(keys)?;
                    let time = class_time.as_deref().unwrap_or(class_key);
                    offline
                        .stream_for_keys(table, &columns, class_key, dict.values()?, time, None)
                        .await?
                }
            };
            out.insert(id, read);
        }
        Ok(out)
    }

    /// A daily run's plan input: its new `rows` (stored at ingest) as queries, in batches of the
    /// plan's size, and per aggregation key the stored history of their entities (every row
    /// the widest window needs, read as the plan consumes it); with their schema and the batch
    /// size.
    async fn daily_input(
        &self,
        plan: &QueryPlan,
        rows: RecordBatch,
        exec: &Execution,
    ) -> Result<
        (
            arrow::datatypes::SchemaRef,
            crate::exec::source::Batches,
            usize,
            HashMap<String, slate_stores::KeyedRows>,
            HashMap<String, slate_stores::KeyedRows>,
        ),
        EngineError,
    > {
        let scan = plan.root_scan();
        let time = plan.root_time.as_deref().ok_or_else(|| {
            EngineError::Internal("a streamed plan without a feature time".into())
        })?;
        // The rows were deduplicated (reordered) at ingest: a row without a feature time is
        // named by its key, not by a position.
        let pk = &scan.class.primary_key;
        if let (Some(key), Ok(times)) = (rows.column_by_name(pk), ts_column(&rows, time))
            && let Some(i) = times.iter().position(|t| t.is_none())
            && key.is_valid(i)
        {
            let value = arrow::util::display::array_value_to_string(key, i)?;
            return Err(EngineError::BadValue {
                resolver: scan.resolver.name.clone(),
                reason: format!(
                    "the row with `{pk}` {value} has a null `{time}`; keys and feature times must be set"
                ),
            });
        }
        let shaped = with_extras(rows, pk, time, 0, &scan.resolver.name)?;
        let shaped = daily_columns(plan, shaped)?;
        let schema = nullable(&shaped.schema());
        let shaped = as_queries(shaped, &schema)?;
        let batch_rows = exec.batch_rows(row_bytes(&schema));
        let now: Vec<i64> = ts_column(&shaped, NOW)?.into_iter().flatten().collect();
        let offline = self.offline();
        let mut events: HashMap<String, slate_stores::KeyedRows> = HashMap::new();
        for n in &plan.nodes {
            let Node::Aggregate {
                key,
                table,
                table_key,
                table_time,
                ..
            } = n
            else {
                continue;
            };
            if events.contains_key(key) {
                continue;
            }
            if shaped.num_rows() == 0 {
                events.insert(key.clone(), futures::stream::empty().boxed());
                continue;
            }
            let group: Vec<&Node> = plan
                .nodes
                .iter()
                .filter(|m| matches!(m, Node::Aggregate { key: k, .. } if k == key))
                .collect();
            let (fields, since) = history(&group, now.iter().min(), now.iter().max());
            let mut columns = vec![table_key.as_str(), table_time.as_str()];
            columns.extend(fields.iter().copied());
            // The touched entities, each once.
            let keys = shaped
                .column_by_name(key)
                .ok_or_else(|| EngineError::Internal(format!("the rows lack their key {key}")))?;
            let mut dict = crate::encode::Dictionary::keeping_values(keys.data_type())?;
            dict.encode(keys)?;
            let keys = dict.values()?;
            let read = match since {
                // The entity state's rows and those since its cutoff (the state moves on once
                // the plan has read them).
                Since::Latest { from, .. } => {
                    offline
                        .stream_latest_for_keys(table, &columns, table_key, keys, table_time, from)
                        .await?
                }
                Since::From(from) => {
                    offline
                        .stream_for_keys(table, &columns, table_key, keys, table_time, Some(from))
                        .await?
                }
                Since::All => {
                    offline
                        .stream_for_keys(table, &columns, table_key, keys, table_time, None)
                        .await?
                }
            };
            events.insert(key.clone(), read);
        }
        let lookups = self.lookup_reads(plan, Some(&shaped)).await?;
        Ok((
            schema,
            futures::stream::iter(sliced(Ok(shaped), batch_rows)).boxed(),
            batch_rows,
            events,
            lookups,
        ))
    }

    /// Runs `plan` (see [`streamable`]) as one streamed plan; returns what its record needs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_streamed(
        &self,
        plan: &QueryPlan,
        run_id: &str,
        started: i64,
        before: Option<i64>,
        models: &HashMap<String, OnnxModel>,
        early_online: Option<Arc<dyn OnlineStore>>,
        exec: &Execution,
        progress: &dyn Progress,
        took: &mut (dyn FnMut(&str, String, Duration) + Send),
        daily: Option<(RecordBatch, Ingested)>,
        related: Vec<(Option<RecordBatch>, Ingested)>,
        related_read: Duration,
    ) -> Result<Streamed, EngineError> {
        let t = Instant::now();
        let (new_rows, ingested) = match daily {
            Some((rows, i)) => (Some(rows), Some(i)),
            None => (None, None),
        };
        if new_rows.is_none() {
            progress.stage("ingest");
        }
        let scan = plan.root_scan();
        let r = &scan.resolver;
        let class = &scan.class;
        let pk = class.primary_key.clone();
        let time = plan.root_time.clone().ok_or_else(|| {
            EngineError::Internal("a streamed plan without a feature time".into())
        })?;
        let required = [pk.as_str(), time.as_str()];
        let clocks = Clocks::new();
        let errors = FirstError::default();
        // The rows the plan reads (sliced to its batch size), their schema, and for a daily
        // run the stored history of their entities.
        let mut related_stored = Duration::ZERO;
        let (schema, batches, batch_rows, latest_read, events, lookups) = match new_rows {
            None => {
                let source = self.source(&r.source).await?;
                let deadline = r
                    .timeout_secs
                    .map(|s| tokio::time::Instant::now() + Duration::from_secs(s as u64));
                let timeout = || slate_sources::SourceError::Timeout {
                    resolver: r.name.clone(),
                    source_name: r.source.clone(),
                    seconds: r.timeout_secs.unwrap_or_default(),
                };
                let opened = source.query_stream(&r.name, &r.sql, None);
                let raw = match deadline {
                    None => opened.await?,
                    Some(d) => tokio::time::timeout_at(d, opened)
                        .await
                        .map_err(|_| timeout())??,
                };
                // The source's own work (a read of local files) counts as ingest time.
                let mut raw = crate::exec::busy_polls(raw, clocks.ingest.clone()).boxed();
                // The first batch gives the shaped schema; no batch, the class's columns.
                let first = match deadline {
                    None => raw.next().await,
                    Some(d) => tokio::time::timeout_at(d, raw.next())
                        .await
                        .map_err(|_| timeout())?,
                }
                .transpose()?;
                let (first, schema) = match first {
                    Some(b) => {
                        let shaped = clocks.ingest.time(|| {
                            to_class_batch_at(&r.name, class, vec![b], &required, 0)
                                .and_then(|b| with_extras(b, &pk, &time, 0, &r.name))
                        })?;
                        let schema = shaped.schema();
                        (Some(shaped), schema)
                    }
                    None => {
                        let empty = to_class_batch(&r.name, class, vec![], &required)?;
                        (None, with_extras(empty, &pk, &time, 0, &r.name)?.schema())
                    }
                };
                let rest = {
                    let (resolver, class, pk, time) =
                        (r.name.clone(), class.clone(), pk.clone(), time.clone());
                    let (schema, errors, busy) =
                        (schema.clone(), errors.clone(), clocks.ingest.clone());
                    let offset = first.as_ref().map_or(0, |b| b.num_rows());
                    let (source_name, seconds) =
                        (r.source.clone(), r.timeout_secs.unwrap_or_default());
                    futures::stream::unfold(Some((raw, offset)), move |state| {
                        let (resolver, class, pk, time) =
                            (resolver.clone(), class.clone(), pk.clone(), time.clone());
                        let (schema, errors, busy) = (schema.clone(), errors.clone(), busy.clone());
                        let timeout = slate_sources::SourceError::Timeout {
                            resolver: resolver.clone(),
                            source_name: source_name.clone(),
                            seconds,
                        };
                        async move {
                            let (mut raw, start) = state?;
                            let next = match deadline {
                                None => raw.next().await,
                                Some(d) => match tokio::time::timeout_at(d, raw.next()).await {
                                    Ok(n) => n,
                                    Err(_) => Some(Err(timeout)),
                                },
                            };
                            let b = match next? {
                                Ok(b) => b,
                                Err(e) => return Some((Err(errors.keep(e.into())), None)),
                            };
                            let shaped = busy.time(|| {
                                to_class_batch_at(&resolver, &class, vec![b], &[&pk, &time], start)
                                    .and_then(|b| with_extras(b, &pk, &time, start, &resolver))
                            });
                            match shaped {
                                Ok(b) if b.schema() == schema => {
                                    let end = start + b.num_rows();
                                    Some((Ok(b), Some((raw, end))))
                                }
                                Ok(_) => Some((
                                    Err(errors.keep(EngineError::BadValue {
                                        resolver: resolver.clone(),
                                        reason: "the result's batches have different columns"
                                            .into(),
                                    })),
                                    None,
                                )),
                                Err(e) => Some((Err(errors.keep(e)), None)),
                            }
                        }
                    })
                };
                // Rows per batch: the operators' batch size, which a small budget makes small (a sort
                // must hold several batches within its share); the source's batches are sliced to it.
                // The plan's output rows carry the computed columns too: about twice the input's bytes.
                let batch_rows = exec.batch_rows(row_bytes(&schema));
                // The greatest feature time read: final once the plan's first row comes out (the
                // deduplication sorts every row first), where the entity state's cutoff is needed.
                let latest_read = Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
                let seen = latest_read.clone();
                let batches = futures::stream::iter(first.map(Ok))
                    .chain(rest)
                    .inspect(move |b| {
                        if let Ok(b) = b
                            && let Some(now) = b.column_by_name(NOW).and_then(|c| {
                                c.as_any().downcast_ref::<TimestampMicrosecondArray>()
                            })
                            && let Some(m) = arrow::compute::max(now)
                        {
                            seen.fetch_max(m, std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                    .flat_map(move |b| futures::stream::iter(sliced(b, batch_rows)))
                    .boxed();
                // The root source answered: the looked-up classes' rows are stored, then read
                // by key by the plan.
                let w = Instant::now();
                let offline = self.offline();
                for (scan, (rows, i)) in plan.scans[1..].iter().zip(&related) {
                    if let Some(rows) = rows {
                        super::store_scan(&offline, scan, i, rows).await?;
                    }
                }
                related_stored = w.elapsed();
                let lookups = self.lookup_reads(plan, None).await?;
                (
                    schema,
                    batches,
                    batch_rows,
                    Some(latest_read),
                    None,
                    lookups,
                )
            }
            Some(rows) => {
                let (schema, batches, batch_rows, events, lookups) =
                    self.daily_input(plan, rows, exec).await?;
                (schema, batches, batch_rows, None, Some(events), lookups)
            }
        };
        // The class's columns come first, then the extras.
        let class_columns = schema
            .fields()
            .iter()
            .filter(|f| ![POS, NOW, ROLE].contains(&f.name().as_str()))
            .count();
        let source = source_exec(schema.clone(), batches)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let input = PlanInput {
            rows: source,
            history: events,
            lookups,
        };

        let models_arc = Arc::new(models.clone());
        let (physical, order) = physical_plan(
            plan,
            input,
            models_arc,
            self.functions.clone(),
            exec.partitions,
            batch_rows,
            &clocks,
            &errors,
        )?;
        let failed = |e: DataFusionError, errors: &FirstError| match errors.take() {
            Some(e) => e,
            None => EngineError::Plan {
                query: plan.query.name.clone(),
                reason: match e.find_root() {
                    DataFusionError::Execution(m) => m.clone(),
                    root => root.to_string(),
                },
            },
        };
        let ctx = exec.session(batch_rows).map_err(|e| failed(e, &errors))?;
        let mut output =
            datafusion::physical_plan::execute_stream(physical.clone(), ctx.task_ctx())
                .map_err(|e| failed(e, &errors))?;

        // The sinks: the class's table and the query's record (Delta writes in their own tasks,
        // fed by channels), and the online store (a thread: its writers block).
        let offline = self.offline();
        type Sent = Result<RecordBatch, arrow::error::ArrowError>;
        let channel = || tokio::sync::mpsc::channel::<Sent>(2);
        let receive = |mut rx: tokio::sync::mpsc::Receiver<Sent>| {
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        };
        // A daily run's rows were stored at ingest: only a backfill writes the class's table.
        let (scan_tx, scan_write) = match ingested {
            Some(_) => (None, None),
            None => {
                let (tx, rx) = channel();
                let (offline, table, time) =
                    (offline.clone(), scan.table(), class.feature_time.clone());
                // Regrouped by day on disk: the rows come ordered by entity, and a writer holds
                // a Parquet file open per day it has seen.
                let rows = slate_stores::WriteRows::from_stream(receive(rx));
                let rows = match time.as_deref() {
                    Some(t) => rows.by_day(t, exec.spill_dir.join("write-table")),
                    None => rows,
                };
                let task = tokio::spawn(async move {
                    offline
                        .write_rows(&table, rows, None, time.as_deref())
                        .await
                });
                (Some(tx), Some(task))
            }
        };
        // A daily run's record replaces its rows from the root scan's bound on.
        let record_replace =
            ingested
                .as_ref()
                .and_then(|i| i.bound.as_ref())
                .map(|b| slate_stores::ReplaceRange {
                    column: "feature_time".into(),
                    from_micros: b.micros,
                });
        // The record's files on disk hold its varying columns; the repeated ones (run id, model
        // hashes) are added as the write takes the rows back, from the first batch's.
        let repeats: Arc<std::sync::OnceLock<super::Repeats>> = Arc::default();
        let (record_tx, record_write) = match plan.query.store_offline {
            true => {
                let (tx, rx) = channel();
                let (offline, table) = (offline.clone(), plan.query.name.clone());
                let filler = repeats.clone();
                // A backfill's many days are regrouped on disk (see the class's table).
                let rows = slate_stores::WriteRows::from_stream(receive(rx));
                let rows = match record_replace {
                    Some(_) => rows,
                    None => rows.by_day("feature_time", exec.spill_dir.join("write-record")),
                };
                let replace = record_replace.clone();
                let rows = rows.map(move |b| match filler.get() {
                    Some(r) => r.fill(&b),
                    None => Err(arrow::error::ArrowError::SchemaError(
                        "record rows before their first batch".into(),
                    )),
                });
                let task = tokio::spawn(async move {
                    offline
                        .write_rows(&table, rows, replace.as_ref(), Some("feature_time"))
                        .await
                });
                (Some(tx), Some(task))
            }
            false => (None, None),
        };
        let published = published(plan);
        let names: Vec<String> = published.iter().map(|(f, _)| f.column_name()).collect();
        // The online rows (key, feature time, each value as JSON) are sorted by key and time
        // (spilling, under the same budget) and then inserted in that order by a thread, so
        // that the store's tree is walked in order; the offline tables take the plan's order.
        let (online_tx, online_sort, online_thread) = match plan.query.store_online {
            true => {
                let online = match early_online {
                    Some(o) => o,
                    None => self.online()?,
                };
                let mut writer = online.writer()?;
                let mut fields = vec![
                    Field::new("__key", DataType::Utf8, false),
                    Field::new("__time", DataType::Int64, false),
                ];
                fields.extend(names.iter().map(|n| Field::new(n, DataType::Utf8, true)));
                let online_schema = Arc::new(Schema::new(fields));
                let (tx, rx) = channel();
                let rows = receive(rx)
                    .map(|b| b.map_err(DataFusionError::from))
                    .boxed();
                let source =
                    source_exec(online_schema.clone(), rows).map_err(|e| failed(e, &errors))?;
                // The rows are one per primary key (deduplicated); an integer or text key's
                // text is as unique, so the key alone orders them, and a sort on one text
                // column compares the strings themselves (two columns would be converted to
                // Arrow's row format first). Other keys' texts may coincide: time breaks ties.
                let unique_text = {
                    let ty = schema.field_with_name(&pk)?.data_type();
                    ty.is_integer()
                        || matches!(
                            ty,
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        )
                };
                let mut order = vec![PhysicalSortExpr::new_default(
                    col("__key", &online_schema).map_err(|e| failed(e, &errors))?,
                )];
                if !unique_text {
                    order.push(PhysicalSortExpr::new_default(
                        col("__time", &online_schema).map_err(|e| failed(e, &errors))?,
                    ));
                }
                let order = LexOrdering::new(order)
                    .ok_or_else(|| EngineError::Internal("an empty order".into()))?;
                let sort: Arc<dyn ExecutionPlan> = Arc::new(SortExec::new(order, source));
                let sorted =
                    datafusion::physical_plan::execute_stream(sort.clone(), ctx.task_ctx())
                        .map_err(|e| failed(e, &errors))?;
                // The sort works where it is polled: here, in its own task. Its time is what
                // its polls take, not the waits for rows between them.
                let mut sorted = crate::exec::busy_polls(sorted, clocks.online_sort.clone());
                let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, ()>>(2);
                let forward = tokio::spawn(async move {
                    loop {
                        let next = sorted.next().await;
                        match next {
                            None => return Ok(()),
                            Some(Ok(b)) => {
                                if fwd_tx.send(Ok(b)).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Some(Err(e)) => {
                                let _ = fwd_tx.send(Err(())).await;
                                return Err(e);
                            }
                        }
                    }
                });
                let (names, busy) = (names.clone(), clocks.online.clone());
                let thread = std::thread::spawn(move || -> Result<bool, EngineError> {
                    while let Some(item) = fwd_rx.blocking_recv() {
                        let Ok(b) = item else {
                            return Ok(false);
                        };
                        busy.time(|| -> Result<(), EngineError> {
                            let strings = |i: usize| {
                                b.column(i)
                                    .as_any()
                                    .downcast_ref::<StringArray>()
                                    .ok_or_else(|| EngineError::Internal("online rows".into()))
                            };
                            let keys = strings(0)?;
                            let times: Vec<i64> = b
                                .column(1)
                                .as_any()
                                .downcast_ref::<arrow::array::Int64Array>()
                                .ok_or_else(|| EngineError::Internal("online times".into()))?
                                .values()
                                .to_vec();
                            let json = (0..names.len())
                                .map(|j| strings(2 + j))
                                .collect::<Result<Vec<_>, _>>()?;
                            let rows = slate_stores::OnlineRows {
                                keys,
                                times: &times,
                                values: names.iter().map(|n| n.as_str()).zip(json).collect(),
                            };
                            let in_order: Vec<u32> = (0..b.num_rows() as u32).collect();
                            writer.put_ordered(&rows, &in_order)?;
                            Ok(())
                        })?;
                    }
                    // The sorted rows ended: all of them (a failure arrives as an error first).
                    busy.time(|| writer.commit())?;
                    Ok(true)
                });
                (
                    Some((tx, online_schema)),
                    Some((sort, forward)),
                    Some(thread),
                )
            }
            false => (None, None, None),
        };

        // Drives the plan: each output batch goes to every sink.
        let inc = r.incremental.as_ref().filter(|_| scan.incremental);
        let mut rows = 0usize;
        let mut first_now: Option<i64> = None;
        let mut last_now: Option<i64> = None;
        let mut max_inc: Option<i64> = None;
        let out_schema = physical.schema();
        let mut tallies: Vec<Tally> = published
            .iter()
            .map(|(_, c)| Tally {
                rows: 0,
                nulls: 0,
                trues: out_schema
                    .field_with_name(c)
                    .ok()
                    .filter(|f| f.data_type() == &DataType::Boolean)
                    .map(|_| 0),
            })
            .collect();
        // The entity state of the key the output is ordered by, built from the rows written.
        let ordered_key = order.first().filter(|k| {
            plan.nodes
                .iter()
                .any(|n| matches!(n, Node::Aggregate { key, .. } if key == *k))
        });
        let group_of = |key: &str| -> Vec<&Node> {
            plan.nodes
                .iter()
                .filter(|m| matches!(m, Node::Aggregate { key: k, .. } if k == key))
                .collect()
        };
        let mut state: Option<slate_stores::LatestStateBuilder> = None;
        let mut result: Result<(), EngineError> = Ok(());
        while let Some(batch) = output.next().await {
            // Stages overlap; progress names the one the run waits on: rows are read until the
            // first computed row arrives, computed until the last, then written.
            if rows == 0 {
                progress.stage("compute");
            }
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    result = Err(failed(e, &errors));
                    break;
                }
            };
            let step = clocks
                .write
                .time(|| -> Result<Vec<(usize, Sent)>, EngineError> {
                    let n = batch.num_rows();
                    rows += n;
                    let now: Vec<i64> = ts_column(&batch, NOW)?
                        .into_iter()
                        .map(|v| v.unwrap_or_default())
                        .collect();
                    if let (Some(&lo), Some(&hi)) = (now.iter().min(), now.iter().max()) {
                        first_now = Some(first_now.map_or(lo, |f| f.min(lo)));
                        last_now = Some(last_now.map_or(hi, |l| l.max(hi)));
                    }
                    if let Some(i) = inc
                        && i.timestamp != IncrementalTimestamp::ResolverExecutionTime
                    {
                        let m = ts_column(&batch, &i.column)?.into_iter().flatten().max();
                        max_inc = max_inc.max(m);
                    }
                    let table_rows = batch.project(&(0..class_columns).collect::<Vec<_>>())?;
                    // At the plan's first rows, when the cutoff is known (see `latest_read`).
                    if rows == n
                        && let Some(key) = ordered_key
                        && let Some(latest_read) = &latest_read
                        && let (_, Since::Latest { advance_to, .. }) = history(
                            &group_of(key),
                            Some(&0),
                            Some(&latest_read.load(std::sync::atomic::Ordering::Relaxed)),
                        )
                    {
                        state = Some(offline.latest_state_builder(
                            &scan.table(),
                            key,
                            &time,
                            advance_to,
                        ));
                    }
                    if let Some(s) = &mut state {
                        s.push(&table_rows)?;
                    }
                    let mut sends = vec![];
                    if scan_tx.is_some() {
                        sends.push((0, Ok(table_rows)));
                    }
                    let frame = Frame::new(&batch, now.clone());
                    for (t, (_, c)) in tallies.iter_mut().zip(&published) {
                        let a = frame.column(c)?;
                        t.rows += a.len();
                        t.nulls += a.null_count();
                        if let (Some(trues), Some(b)) = (
                            t.trues.as_mut(),
                            a.as_any().downcast_ref::<arrow::array::BooleanArray>(),
                        ) {
                            *trues += b.true_count();
                        }
                    }
                    if record_tx.is_some() {
                        let record = OutputColumns::new(plan, &frame, Some(run_id), models)?;
                        repeats.get_or_init(|| record.repeats());
                        sends.push((1, record.varying(0..n)));
                    }
                    if let Some((_, schema)) = &online_tx {
                        let mut columns: Vec<ArrayRef> = vec![
                            Arc::new(key_strings(frame.column(&pk)?)?),
                            Arc::new(arrow::array::Int64Array::from(now)),
                        ];
                        for (_, c) in &published {
                            columns.push(Arc::new(json_values(frame.column(c)?)?));
                        }
                        sends.push((2, RecordBatch::try_new(schema.clone(), columns)));
                    }
                    Ok(sends)
                });
            let sends = match step {
                Ok(s) => s,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            for (to, b) in sends {
                let tx = match to {
                    0 => scan_tx.as_ref(),
                    1 => record_tx.as_ref(),
                    _ => online_tx.as_ref().map(|(tx, _)| tx),
                };
                if let Some(tx) = tx
                    && tx.send(b).await.is_err()
                {
                    // The write ended (failed): its error is reported below.
                    result = Err(EngineError::Internal("a write ended early".into()));
                }
            }
            if result.is_err() {
                break;
            }
        }
        let streamed_at = t.elapsed();
        exec.record_spills(&physical);
        let mut online_sort = online_sort;
        drop(output);
        progress.stage("write");
        // A failed plan ends every sink without a commit.
        if result.is_err() {
            let abort = || {
                Err(arrow::error::ArrowError::ComputeError(
                    "the run failed".into(),
                ))
            };
            if let Some(tx) = &scan_tx {
                let _ = tx.send(abort()).await;
            }
            if let Some(tx) = &record_tx {
                let _ = tx.send(abort()).await;
            }
            if let Some((tx, _)) = &online_tx {
                let _ = tx.send(abort()).await;
            }
        }
        drop(scan_tx);
        drop(record_tx);
        drop(online_tx);
        // The online thread ends when the sorted rows do; joined off the runtime's threads.
        let online = match online_thread {
            Some(h) => tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| EngineError::Internal(format!("the online writer: {e}")))?
                .map_err(|_| EngineError::Internal("the online writer panicked".into()))?,
            None => Ok(true),
        };
        let mut sorted = Ok(());
        if let Some((sort, forward)) = online_sort.take() {
            exec.record_spills(&sort);
            sorted = match forward.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(failed(e, &errors)),
                Err(e) => Err(EngineError::Internal(format!("the online sort: {e}"))),
            };
        }
        let w = Instant::now();
        let joined = |r: Result<Result<(), slate_stores::StoreError>, tokio::task::JoinError>| {
            r.map_err(|e| EngineError::Internal(format!("an offline write task: {e}")))?
                .map_err(EngineError::from)
        };
        let scan_written = match scan_write {
            Some(t) => joined(t.await),
            None => Ok(()),
        };
        let record_written = match record_write {
            Some(t) => joined(t.await),
            None => Ok(()),
        };
        clocks.write.add(w.elapsed());
        // The plan's own error first: a sink that failed because the plan did says less.
        result?;
        sorted?;
        if !online? {
            return Err(EngineError::Internal(
                "the online write ended without its rows".into(),
            ));
        }
        scan_written?;
        record_written?;

        // The table's entity state moves on, as a read of the history would have moved it.
        // The state of the key a backfill's rows came ordered by was built from them (unless
        // the cutoff moved, which the deduplication's full sort rules out); others, and a daily
        // run's, read the table.
        let mut seen: Vec<&str> = Vec::new();
        for n in &plan.nodes {
            if let Node::Aggregate { key, .. } = n
                && !seen.contains(&key.as_str())
            {
                seen.push(key);
                let group = group_of(key);
                if let (_, Since::Latest { advance_to, .. }) =
                    history(&group, first_now.as_ref(), last_now.as_ref())
                {
                    let built = match Some(key) == ordered_key {
                        true => state.take().filter(|s| {
                            s.cutoff()
                                == i64::from(slate_stores::day_of(advance_to)) * 86_400_000_000
                        }),
                        false => None,
                    };
                    match built {
                        Some(s) => clocks.write.time(|| s.finish())?,
                        None => {
                            offline
                                .advance_latest_state(&scan.table(), key, &time, advance_to)
                                .await?
                        }
                    }
                }
            }
        }

        let spilled = match exec.spilled_text() {
            Some(t) => format!(", {t}"),
            None => String::new(),
        };
        let wall = t.elapsed();
        if ingested.is_none() {
            // A backfill's looked-up classes were read and stored before its rows streamed.
            let (related, related_time) = match related.is_empty() {
                true => (String::new(), Duration::ZERO),
                false => {
                    let all: Vec<&Ingested> = related.iter().map(|(_, i)| i).collect();
                    let detail =
                        super::ingest_detail(&plan.scans[1..], &all, related_read, related_stored);
                    (format!(", {detail}"), related_read + related_stored)
                }
            };
            took(
                "ingest",
                format!("{rows} rows from {} (streamed{spilled}){related}", r.name),
                clocks.ingest.get() + related_time,
            );
        }
        let n_models = plan.models().count();
        let n_features = plan
            .nodes
            .iter()
            .filter(|n| !matches!(n, Node::Model { .. }))
            .count();
        // (A backfill reports what it spilled with its ingest.)
        let spilled = match ingested {
            Some(_) => spilled,
            None => String::new(),
        };
        took(
            "compute",
            format!("{n_features} features for {rows} rows{spilled}"),
            clocks.compute.get(),
        );
        if n_models > 0 {
            took(
                "predict",
                format!(
                    "{rows} rows scored by {n_models} model{}",
                    if n_models == 1 { "" } else { "s" }
                ),
                clocks.predict.get(),
            );
        }
        let (sort, online) = (
            clocks.online_sort.get().as_secs_f64(),
            clocks.online.get().as_secs_f64(),
        );
        took(
            "write",
            format!(
                "{rows} rows (plan ended at {:.2}s; online: sort {sort:.2}s, insert {online:.2}s; stages overlap: {:.2}s from the first read to the last write, {} partitions)",
                streamed_at.as_secs_f64(),
                wall.as_secs_f64(),
                exec.partitions
            ),
            clocks.write.get() + clocks.online_sort.get() + clocks.online.get(),
        );
        let after = match inc {
            Some(i) if i.timestamp == IncrementalTimestamp::ResolverExecutionTime => Some(started),
            Some(_) => max_inc.max(before),
            None => None,
        };
        let outputs = published
            .iter()
            .zip(tallies)
            .map(|((f, _), t)| OutputSummary {
                feature: f.to_string(),
                rows: t.rows,
                nulls: t.nulls,
                true_count: t.trues,
            })
            .collect();
        if let Some(i) = &ingested
            && i.count != rows
        {
            return Err(EngineError::Internal(format!(
                "{} rows ingested, {rows} computed",
                i.count
            )));
        }
        Ok(Streamed {
            related: related.into_iter().map(|(_, i)| i).collect(),
            ingested: ingested.unwrap_or(Ingested {
                count: rows,
                bound: None,
                before,
                after,
                late: None,
            }),
            rows,
            outputs,
        })
    }
}
