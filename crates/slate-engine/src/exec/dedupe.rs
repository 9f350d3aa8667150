//! `DedupeExec`: one row per key from input partitions ordered by key (then by preference: the
//! latest time first, then the first read), as a hash repartition on the key and a spilling
//! sort give it ([`dedupe_plan`]). It keeps the first row of each run of equal keys and holds
//! only the previous row's key between batches.

use super::{Busy, busy_stream};
use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

#[derive(Debug)]
pub struct DedupeExec {
    input: Arc<dyn ExecutionPlan>,
    /// The columns whose values make a row's identity.
    key: Vec<String>,
    properties: Arc<PlanProperties>,
    /// Where the time of the sort before it and its own is counted.
    busy: Busy,
}

impl DedupeExec {
    /// Over `input`, whose partitions hold every row of a key and cluster them, the preferred
    /// first.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, key: Vec<String>, busy: Busy) -> Result<Self> {
        let schema = input.schema();
        for k in &key {
            schema.field_with_name(k)?;
        }
        let properties = input.properties().as_ref().clone();
        Ok(DedupeExec {
            input,
            key,
            properties: Arc::new(properties),
            busy,
        })
    }
}

/// `input` hash-partitioned by `key` into `partitions`, each partition sorted by `key` then
/// `prefer` (`(column, descending)`), then one row kept per key.
pub fn dedupe_plan(
    input: Arc<dyn ExecutionPlan>,
    key: &[String],
    prefer: &[(String, bool)],
    partitions: usize,
    busy: Busy,
) -> Result<Arc<dyn ExecutionPlan>> {
    let sorted = dedupe_sorted(input, key, prefer, partitions)?;
    Ok(Arc::new(DedupeExec::try_new(sorted, key.to_vec(), busy)?))
}

/// Which rows of a stream ordered by `key` are the first of their key, batch after batch (the
/// previous batch's last key is kept).
struct KeyRuns {
    key_idx: Vec<usize>,
    converter: RowConverter,
    previous: Option<OwnedRow>,
}

impl KeyRuns {
    fn new(schema: &SchemaRef, key: &[String]) -> Result<Self> {
        let key_idx = key
            .iter()
            .map(|k| schema.index_of(k))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let converter = RowConverter::new(
            key_idx
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        Ok(KeyRuns {
            key_idx,
            converter,
            previous: None,
        })
    }

    /// Per row of `batch` (not empty): whether it starts a run of its key.
    fn firsts(&mut self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let cols: Vec<_> = self
            .key_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
        let firsts = (0..rows.num_rows())
            .map(|i| match i {
                0 => self
                    .previous
                    .as_ref()
                    .is_none_or(|p| p.row() != rows.row(0)),
                _ => rows.row(i) != rows.row(i - 1),
            })
            .collect();
        self.previous = Some(rows.row(rows.num_rows() - 1).owned());
        Ok(firsts)
    }
}

impl DisplayAs for DedupeExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DedupeExec: key=[{}]", self.key.join(", "))
    }
}

impl ExecutionPlan for DedupeExec {
    fn name(&self) -> &'static str {
        "DedupeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
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
                "DedupeExec takes one input".into(),
            ));
        }
        Ok(Arc::new(DedupeExec::try_new(
            children.swap_remove(0),
            self.key.clone(),
            self.busy.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let mut runs = KeyRuns::new(&self.input.schema(), &self.key)?;
        let input = busy_stream(input, self.busy.clone());
        let stream = input.map(move |batch| {
            let batch = batch?;
            if batch.num_rows() == 0 {
                return Ok(batch);
            }
            let keep = BooleanArray::from(runs.firsts(&batch)?);
            Ok(filter_record_batch(&batch, &keep)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
    }
}

/// A backfill's deduplication without a sort of whole rows: a tap ([`TapExec`]) copies each
/// row's key, preference columns and position to a narrow plan (hash by key, a spilling sort by
/// key then preference), which finds the rows that lose to an earlier one of their key; the
/// whole rows go on to the next sort of the plan, after which [`DedupeFilterExec`] drops the
/// losers (their positions). Only the narrow columns are sorted twice.
pub struct NarrowDedupe {
    /// The narrow rows' plan: partitioned by key, each partition sorted by key, preference.
    narrow: Arc<dyn ExecutionPlan>,
    key: Vec<String>,
    position: String,
    busy: Busy,
}

/// The rows of `input` (one partition, with a `position` column numbering them) as they pass
/// through a tap, and the deduplication of their keys; keep the first row of each key after
/// ordering by `prefer` (`(column, descending)`).
pub fn narrow_dedupe(
    input: Arc<dyn ExecutionPlan>,
    key: &[String],
    prefer: &[(String, bool)],
    position: &str,
    partitions: usize,
    busy: Busy,
) -> Result<(Arc<dyn ExecutionPlan>, NarrowDedupe)> {
    let schema = input.schema();
    let mut columns: Vec<String> = key.to_vec();
    for (c, _) in prefer {
        if !columns.contains(c) {
            columns.push(c.clone());
        }
    }
    if !columns.iter().any(|c| c == position) {
        return Err(DataFusionError::Internal(format!(
            "the preference of a narrow deduplication ends with its position `{position}`"
        )));
    }
    let indices = columns
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let narrow_schema = Arc::new(schema.project(&indices)?);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(4);
    let rows =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed();
    let narrow_source = super::source::source_exec(narrow_schema, rows)?;
    let narrow = dedupe_sorted(narrow_source, key, prefer, partitions)?;
    let tap = Arc::new(TapExec {
        properties: input.properties().clone(),
        input,
        indices,
        sender: Arc::new(std::sync::Mutex::new(Some(tx))),
    });
    Ok((
        tap,
        NarrowDedupe {
            narrow,
            key: key.to_vec(),
            position: position.into(),
            busy,
        },
    ))
}

impl NarrowDedupe {
    /// `sorted` (any partitioning, every row of the tap's input among its partitions) without
    /// the losers, once the narrow plan has found them.
    pub fn filter(&self, sorted: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        sorted.schema().index_of(&self.position)?;
        Ok(Arc::new(DedupeFilterExec {
            properties: sorted.properties().clone(),
            input: sorted,
            narrow: self.narrow.clone(),
            key: self.key.clone(),
            position: self.position.clone(),
            busy: self.busy.clone(),
            state: Arc::new(FilterState::default()),
        }))
    }
}

/// `input` hash-partitioned by `key`, each partition sorted by `key` then `prefer`.
fn dedupe_sorted(
    input: Arc<dyn ExecutionPlan>,
    key: &[String],
    prefer: &[(String, bool)],
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let keys = key
        .iter()
        .map(|k| col(k, &schema))
        .collect::<Result<Vec<_>>>()?;
    let repartitioned = Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::Hash(keys.clone(), partitions.max(1)),
    )?);
    let mut order: Vec<PhysicalSortExpr> = keys
        .into_iter()
        .map(PhysicalSortExpr::new_default)
        .collect();
    for (c, descending) in prefer {
        let mut e = PhysicalSortExpr::new_default(col(c, &schema)?);
        if *descending {
            e = e.desc();
        }
        order.push(e);
    }
    let ordering =
        LexOrdering::new(order).ok_or_else(|| DataFusionError::Internal("no key".into()))?;
    Ok(Arc::new(
        SortExec::new(ordering, repartitioned).with_preserve_partitioning(true),
    ))
}

/// Passes its input's batches on and sends their narrow columns to a [`NarrowDedupe`]'s plan.
#[derive(Debug)]
pub struct TapExec {
    input: Arc<dyn ExecutionPlan>,
    indices: Vec<usize>,
    sender: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Result<RecordBatch>>>>>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for TapExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let schema = self.input.schema();
        let names: Vec<&str> = self
            .indices
            .iter()
            .map(|&i| schema.field(i).name().as_str())
            .collect();
        write!(f, "TapExec: to the deduplication=[{}]", names.join(", "))
    }
}

impl ExecutionPlan for TapExec {
    fn name(&self) -> &'static str {
        "TapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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
            return Err(DataFusionError::Internal("TapExec takes one input".into()));
        }
        Ok(Arc::new(TapExec {
            input: children.swap_remove(0),
            indices: self.indices.clone(),
            sender: self.sender.clone(),
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let sender = self
            .sender
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| {
                DataFusionError::Internal("a deduplication's tap executed twice".into())
            })?;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let indices = self.indices.clone();
        // The sender is dropped with the input's end, which ends the narrow rows.
        let stream =
            futures::stream::unfold((input, Some(sender)), move |(mut input, mut sender)| {
                let indices = indices.clone();
                async move {
                    let next = input.next().await;
                    match (&next, &sender) {
                        (Some(Ok(b)), Some(tx)) => {
                            let narrow = b.project(&indices).map_err(DataFusionError::from);
                            // A narrow plan that ended early (failed) reports its own error.
                            if tx.send(narrow).await.is_err() {
                                sender = None;
                            }
                        }
                        (Some(Err(e)), Some(tx)) => {
                            let _ = tx
                                .send(Err(DataFusionError::Execution(format!(
                                    "the deduplicated rows: {e}"
                                ))))
                                .await;
                            sender = None;
                        }
                        _ => sender = None,
                    }
                    next.map(|n| (n, (input, sender)))
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The positions of the rows that lose to another row of their key, and the memory they
/// hold, reserved from the run's pool for as long as they are kept.
struct Losers {
    set: LoserSet,
    _memory: datafusion::execution::memory_pool::MemoryReservation,
}

enum LoserSet {
    /// Ascending.
    Sorted(Vec<u64>),
    /// One bit per position.
    Bits(Vec<u64>),
}

impl Losers {
    fn contains(&self, position: u64) -> bool {
        match &self.set {
            LoserSet::Sorted(v) => v.binary_search(&position).is_ok(),
            LoserSet::Bits(b) => b
                .get((position / 64) as usize)
                .is_some_and(|w| w & (1 << (position % 64)) != 0),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(&self.set, LoserSet::Sorted(v) if v.is_empty())
    }
}

#[derive(Default)]
struct FilterState {
    /// The narrow plan's run (started by the first partition executed).
    task: std::sync::Mutex<Option<datafusion::common::runtime::SpawnedTask<()>>>,
    /// Its result, once it has one.
    result: std::sync::OnceLock<tokio::sync::watch::Receiver<Option<LosersResult>>>,
}

type LosersResult = std::result::Result<Arc<Losers>, String>;

impl fmt::Debug for FilterState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("FilterState").finish_non_exhaustive()
    }
}

/// Its input without the rows a [`NarrowDedupe`]'s plan found to lose to another of their key
/// (rows with no position, which came from elsewhere, stay). Each partition waits for that plan,
/// which has every row once its input has ended: the sort before this operator's input has read
/// them all before its first row.
#[derive(Debug)]
pub struct DedupeFilterExec {
    input: Arc<dyn ExecutionPlan>,
    narrow: Arc<dyn ExecutionPlan>,
    key: Vec<String>,
    position: String,
    busy: Busy,
    state: Arc<FilterState>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for DedupeFilterExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DedupeFilterExec: key=[{}], drops the rows the second input finds second or later",
            self.key.join(", ")
        )
    }
}

/// Runs every partition of `narrow` (sorted by key, then preference) and collects the
/// positions of the rows after the first of each key, reserving their memory from the pool.
async fn find_losers(
    narrow: Arc<dyn ExecutionPlan>,
    key: Vec<String>,
    position: String,
    busy: Busy,
    context: Arc<TaskContext>,
) -> Result<Losers> {
    use arrow::array::{Array, UInt64Array};
    use datafusion::execution::memory_pool::MemoryConsumer;
    let schema = narrow.schema();
    let pos_idx = schema.index_of(&position)?;
    let partitions = narrow.properties().partitioning.partition_count();
    let mut runs = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let stream = busy_stream(narrow.execute(p, context.clone())?, busy.clone());
        let mut key_runs = KeyRuns::new(&schema, &key)?;
        let reservation =
            MemoryConsumer::new(format!("DedupeLosers[{p}]")).register(context.memory_pool());
        runs.push(async move {
            let mut stream = stream;
            let mut losers: Vec<u64> = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let firsts = key_runs.firsts(&batch)?;
                let positions = batch
                    .column(pos_idx)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| DataFusionError::Internal("positions".into()))?;
                let before = losers.capacity();
                for (i, first) in firsts.into_iter().enumerate() {
                    if !first && positions.is_valid(i) {
                        losers.push(positions.value(i));
                    }
                }
                if losers.capacity() > before {
                    reservation
                        .try_grow((losers.capacity() - before) * 8)
                        .map_err(|e| {
                            DataFusionError::ResourcesExhausted(format!(
                                "the deduplication holds the positions of {} rows that \
                                 repeat a key, more than the memory budget allows: {e}",
                                losers.len()
                            ))
                        })?;
                }
            }
            Ok::<_, DataFusionError>((losers, reservation))
        });
    }
    let parts = futures::future::try_join_all(runs).await?;
    let mut all: Vec<u64> = Vec::new();
    let memory = MemoryConsumer::new("DedupeLosers").register(context.memory_pool());
    for (losers, reservation) in parts {
        all.extend(losers);
        memory.grow(reservation.size());
    }
    all.sort_unstable();
    // A bitmap when it is smaller (many losers among the positions).
    let words = all.last().map_or(0, |m| (*m / 64 + 1) as usize);
    let set = if words < all.len() {
        let mut bits = vec![0u64; words];
        for p in all {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        LoserSet::Bits(bits)
    } else {
        all.shrink_to_fit();
        LoserSet::Sorted(all)
    };
    let bytes = match &set {
        LoserSet::Sorted(v) => v.capacity() * 8,
        LoserSet::Bits(b) => b.capacity() * 8,
    };
    memory.shrink(memory.size().saturating_sub(bytes));
    Ok(Losers {
        set,
        _memory: memory,
    })
}

impl ExecutionPlan for DedupeFilterExec {
    fn name(&self) -> &'static str {
        "DedupeFilterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input, &self.narrow]
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
        if children.len() != 2 {
            return Err(DataFusionError::Internal(
                "DedupeFilterExec takes two inputs".into(),
            ));
        }
        let (Some(narrow), Some(input)) = (children.pop(), children.pop()) else {
            return Err(DataFusionError::Internal(
                "DedupeFilterExec takes two inputs".into(),
            ));
        };
        Ok(Arc::new(DedupeFilterExec {
            properties: input.properties().clone(),
            input,
            narrow,
            key: self.key.clone(),
            position: self.position.clone(),
            busy: self.busy.clone(),
            state: Arc::new(FilterState::default()),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        use arrow::array::{Array, UInt64Array};
        // The first partition executed starts the narrow plan, whose rows come from the tap.
        let mut result = self.state.result.get().cloned();
        if result.is_none() {
            let mut task = self
                .state
                .task
                .lock()
                .map_err(|_| DataFusionError::Internal("a deduplication's state".into()))?;
            if task.is_none() {
                let (tx, rx) = tokio::sync::watch::channel(None);
                let (narrow, key, position, busy, ctx) = (
                    self.narrow.clone(),
                    self.key.clone(),
                    self.position.clone(),
                    self.busy.clone(),
                    context.clone(),
                );
                *task = Some(datafusion::common::runtime::SpawnedTask::spawn(
                    async move {
                        let found = find_losers(narrow, key, position, busy, ctx)
                            .await
                            .map(Arc::new)
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Some(found));
                    },
                ));
                let _ = self.state.result.set(rx);
            }
            result = self.state.result.get().cloned();
        }
        let result =
            result.ok_or_else(|| DataFusionError::Internal("a deduplication's result".into()))?;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let pos_idx = schema.index_of(&self.position)?;
        let stream = futures::stream::unfold(
            (input, None::<Arc<Losers>>, result),
            move |(mut input, mut losers, mut result)| async move {
                let batch = match input.next().await? {
                    Ok(b) => b,
                    Err(e) => return Some((Err(e), (input, losers, result))),
                };
                let l = match &losers {
                    Some(l) => l.clone(),
                    None => {
                        let found = match result.wait_for(|r| r.is_some()).await {
                            Ok(r) => r.clone().unwrap_or_else(|| Err("no result".into())),
                            Err(_) => Err("the deduplication ended without a result".into()),
                        };
                        match found {
                            Ok(l) => {
                                losers = Some(l.clone());
                                l
                            }
                            Err(e) => {
                                return Some((
                                    Err(DataFusionError::Execution(e)),
                                    (input, losers, result),
                                ));
                            }
                        }
                    }
                };
                if l.is_empty() {
                    return Some((Ok(batch), (input, losers, result)));
                }
                let positions = batch
                    .column(pos_idx)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map(|p| {
                        (0..p.len())
                            .map(|i| Some(p.is_null(i) || !l.contains(p.value(i))))
                            .collect::<BooleanArray>()
                    });
                let out = match positions {
                    Some(keep) => filter_record_batch(&batch, &keep).map_err(Into::into),
                    None => Err(DataFusionError::Internal("positions".into())),
                };
                Some((out, (input, losers, result)))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::source::source_exec;
    use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// `plan`'s output under a memory pool of `limit` bytes (none: no limit), its sorts
    /// keeping `merge` bytes to merge, and whether any of its operators spilled.
    async fn collect_under(
        plan: Arc<dyn ExecutionPlan>,
        limit: Option<usize>,
        merge: usize,
    ) -> (Vec<RecordBatch>, bool) {
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(l) = limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(l)));
        }
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new()
                .with_batch_size(512)
                .with_sort_spill_reservation_bytes(merge)
                .with_sort_in_place_threshold_bytes(merge / 4),
            runtime.build_arc().unwrap(),
        );
        let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
            .await
            .unwrap();
        fn spills(p: &Arc<dyn ExecutionPlan>) -> usize {
            p.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
                + p.children().into_iter().map(spills).sum::<usize>()
        }
        (out, spills(&plan) > 0)
    }

    /// Seeded random (key, time, position) rows in batches: many duplicate keys and times.
    /// Kept per key: the latest time, the first position among those; checked against a
    /// brute force, with 1, 3 and 7 partitions and with a memory limit that makes sorts spill.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_latest_then_first_row_of_each_key_like_a_brute_force() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 300_000;
        let keys: Vec<i64> = (0..n).map(|_| rng.random_range(0..15_000)).collect();
        let times: Vec<i64> = (0..n).map(|_| rng.random_range(0..50)).collect();
        let mut best: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (p, (&k, &t)) in keys.iter().zip(&times).enumerate() {
            let e = best.entry(k).or_insert((t, p as i64));
            if t > e.0 {
                *e = (t, p as i64);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("pos", DataType::Int64, false),
        ]));
        for (partitions, limit) in [(1, None), (3, None), (7, None), (2, Some(4 << 20))] {
            let batches: Vec<Result<RecordBatch>> = (0..n)
                .step_by(1_000)
                .map(|s| {
                    Ok(RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from(keys[s..s + 1_000].to_vec())),
                            Arc::new(Int64Array::from(times[s..s + 1_000].to_vec())),
                            Arc::new(Int64Array::from_iter_values(s as i64..s as i64 + 1_000)),
                        ],
                    )?)
                })
                .collect();
            let source =
                source_exec(schema.clone(), futures::stream::iter(batches).boxed()).unwrap();
            let plan = dedupe_plan(
                source,
                &["k".into()],
                &[("t".into(), true), ("pos".into(), false)],
                partitions,
                Busy::default(),
            )
            .unwrap();
            let (out, spilled) = collect_under(plan, limit, 32 << 10).await;
            assert_eq!(spilled, limit.is_some(), "spilled under {limit:?}");
            let mut got = BTreeMap::new();
            for b in &out {
                let (k, t, p) = (
                    b.column(0).as_primitive::<Int64Type>(),
                    b.column(1).as_primitive::<Int64Type>(),
                    b.column(2).as_primitive::<Int64Type>(),
                );
                for i in 0..b.num_rows() {
                    assert!(
                        got.insert(k.value(i), (t.value(i), p.value(i))).is_none(),
                        "key {} twice with {partitions} partitions",
                        k.value(i)
                    );
                }
                assert_eq!(b.column(0).null_count(), 0);
            }
            assert_eq!(got, best, "{partitions} partitions, limit {limit:?}");
        }
    }

    /// The narrow deduplication: seeded random rows (many duplicate keys and times) through
    /// the tap, a sort by another column (as a point-in-time operator's), and the filter; the
    /// rows kept are exactly a brute force's (per key, the latest time, then the first
    /// position), whole, with 1, 2 and 5 partitions and under a budget that makes the sorts
    /// spill. Rows without a position (from elsewhere) pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_narrow_deduplication_keeps_what_a_brute_force_keeps() {
        use arrow::array::UInt64Array;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("e", DataType::Int64, false),
            Field::new("pos", DataType::UInt64, true),
        ]));
        // Keys from 20,000 values (most rows lose) or from 10^9 (a few do).
        for (partitions, limit, range) in [
            (1, None, 20_000),
            (2, None, 20_000),
            (5, None, 1_000_000_000),
            (2, Some(6 << 20), 20_000),
            (2, Some(6 << 20), 1_000_000_000),
        ] {
            let mut rng = StdRng::seed_from_u64(11);
            let n = 200_000usize;
            let keys: Vec<i64> = (0..n).map(|_| rng.random_range(0..range)).collect();
            let times: Vec<i64> = (0..n).map(|_| rng.random_range(0..40)).collect();
            let entities: Vec<i64> = (0..n).map(|_| rng.random_range(0..500)).collect();
            let mut best: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
            for (p, (&k, &t)) in keys.iter().zip(&times).enumerate() {
                let e = best.entry(k).or_insert((t, p as u64));
                if t > e.0 {
                    *e = (t, p as u64);
                }
            }
            let mut batches: Vec<Result<RecordBatch>> = (0..n)
                .step_by(1_000)
                .map(|s| {
                    Ok(RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(Int64Array::from(keys[s..s + 1_000].to_vec())),
                            Arc::new(Int64Array::from(times[s..s + 1_000].to_vec())),
                            Arc::new(Int64Array::from(entities[s..s + 1_000].to_vec())),
                            Arc::new(UInt64Array::from_iter_values(s as u64..s as u64 + 1_000)),
                        ],
                    )?)
                })
                .collect();
            // Rows from elsewhere: no position, a key that repeats.
            batches.push(
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(vec![1, 1, 2])),
                        Arc::new(Int64Array::from(vec![0, 0, 0])),
                        Arc::new(Int64Array::from(vec![3, 3, 4])),
                        Arc::new(UInt64Array::from(vec![None, None, None])),
                    ],
                )
                .map_err(DataFusionError::from),
            );
            let source =
                source_exec(schema.clone(), futures::stream::iter(batches).boxed()).unwrap();
            let (tap, dedupe) = narrow_dedupe(
                source,
                &["k".into()],
                &[("t".into(), true), ("pos".into(), false)],
                "pos",
                partitions,
                Busy::default(),
            )
            .unwrap();
            let sorted = crate::exec::pit_aggregate::partitioned_sorted(
                tap,
                "e",
                "t",
                partitions,
                &["pos".into()],
            )
            .unwrap();
            let plan = dedupe.filter(sorted).unwrap();
            let (out, spilled) = collect_under(plan, limit, 64 << 10).await;
            assert_eq!(spilled, limit.is_some(), "spilled under {limit:?}");
            let mut got = BTreeMap::new();
            let mut elsewhere = 0;
            for b in &out {
                let (k, t, e, p) = (
                    b.column(0).as_primitive::<Int64Type>(),
                    b.column(1).as_primitive::<Int64Type>(),
                    b.column(2).as_primitive::<Int64Type>(),
                    b.column(3).as_primitive::<arrow::datatypes::UInt64Type>(),
                );
                for i in 0..b.num_rows() {
                    if p.is_null(i) {
                        elsewhere += 1;
                        continue;
                    }
                    let pos = p.value(i) as usize;
                    assert_eq!(
                        (k.value(i), t.value(i), e.value(i)),
                        (keys[pos], times[pos], entities[pos]),
                        "row {pos} whole"
                    );
                    assert!(
                        got.insert(k.value(i), (t.value(i), p.value(i))).is_none(),
                        "key {} twice with {partitions} partitions",
                        k.value(i)
                    );
                }
            }
            assert_eq!(elsewhere, 3, "rows without a position pass");
            assert_eq!(got, best, "{partitions} partitions, limit {limit:?}");
        }
    }
}
