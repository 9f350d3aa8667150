//! `DedupeExec`: one row per key from input partitions ordered by key (then by preference: the
//! latest time first, then the first read), as a hash repartition on the key and a spilling
//! sort give it ([`dedupe_plan`]). It keeps the first row of each run of equal keys and holds
//! only the previous row's key between batches.

use super::{Busy, busy_stream};
use arrow::array::BooleanArray;
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
    let sorted = Arc::new(SortExec::new(ordering, repartitioned).with_preserve_partitioning(true));
    Ok(Arc::new(DedupeExec::try_new(sorted, key.to_vec(), busy)?))
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
        let schema = self.input.schema();
        let key_idx = self
            .key
            .iter()
            .map(|k| schema.index_of(k))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let converter = RowConverter::new(
            key_idx
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let mut previous: Option<OwnedRow> = None;
        let input = busy_stream(input, self.busy.clone());
        let stream = input.map(move |batch| {
            let batch = batch?;
            if batch.num_rows() == 0 {
                return Ok(batch);
            }
            let cols: Vec<_> = key_idx.iter().map(|&i| batch.column(i).clone()).collect();
            let rows = converter.convert_columns(&cols)?;
            let keep: BooleanArray = (0..rows.num_rows())
                .map(|i| {
                    let first = match i {
                        0 => previous.as_ref().is_none_or(|p| p.row() != rows.row(0)),
                        _ => rows.row(i) != rows.row(i - 1),
                    };
                    Some(first)
                })
                .collect();
            previous = Some(rows.row(rows.num_rows() - 1).owned());
            Ok(filter_record_batch(&batch, &keep)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
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
            let mut runtime = RuntimeEnvBuilder::new();
            if let Some(l) = limit {
                runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(l)));
            }
            let ctx = SessionContext::new_with_config_rt(
                SessionConfig::new()
                    .with_batch_size(512)
                    .with_sort_spill_reservation_bytes(32 << 10)
                    .with_sort_in_place_threshold_bytes(8 << 10),
                runtime.build_arc().unwrap(),
            );
            let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
                .await
                .unwrap();
            fn spills(p: &Arc<dyn ExecutionPlan>) -> usize {
                p.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
                    + p.children().into_iter().map(spills).sum::<usize>()
            }
            assert_eq!(
                spills(&plan) > 0,
                limit.is_some(),
                "spilled under {limit:?}"
            );
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
}
