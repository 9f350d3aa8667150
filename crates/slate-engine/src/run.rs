//! Running a planned query once: ingest, compute, predict, write, commit.

use crate::EngineError;
use crate::encode::Dictionary;
use crate::frame::{dedupe_sorted, f64_column, i64_column, to_class_batch, ts_column};
use crate::plan::{InputPlan, QueryPlan};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use slate_aggregate::kernel::{Prepared, QueryOrder};
use slate_aggregate::{Agg, Events, Query};
use slate_model::OnnxModel;
use slate_project::{IncrementalTimestamp, Project, SourceConfig};
use slate_sources::{EmbeddedSource, IncrementalBound};
use slate_stores::{Ledger, OfflineStore, OnlineStore, ReplaceRange, RunRecord};
use slate_types::{Clock, ValueType};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reports stage progress to whoever runs the engine (a progress bar, log lines, nothing).
pub trait Progress: Send + Sync {
    fn stage(&self, name: &str);
    fn done(&self, name: &str, detail: &str, took: Duration);
}

#[derive(Debug, Default)]
pub struct SilentProgress;

impl Progress for SilentProgress {
    fn stage(&self, _: &str) {}
    fn done(&self, _: &str, _: &str, _: Duration) {}
}

/// Where a project runs: its environment and optional overrides of data and state locations.
#[derive(Clone)]
pub struct EngineConfig {
    pub project: Project,
    pub env: String,
    /// Replaces the `path` of every embedded source.
    pub data_dir: Option<PathBuf>,
    /// Replaces the environment's `state_dir`.
    pub state_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub rows_ingested: usize,
    pub rows_scored: usize,
    /// One entry per feature the run computed as an output, in plan order.
    pub outputs: Vec<OutputSummary>,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    pub stages: Vec<(String, Duration)>,
}

/// What a run computed for one output feature.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSummary {
    /// The feature, as written in the project (`Transaction.is_fraud`).
    pub feature: String,
    pub rows: usize,
    pub nulls: usize,
    /// For a boolean output, the number of rows that are true.
    pub true_count: Option<usize>,
}

impl OutputSummary {
    fn of(feature: String, values: &dyn Array) -> Self {
        OutputSummary {
            feature,
            rows: values.len(),
            nulls: values.null_count(),
            true_count: values
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|b| b.true_count()),
        }
    }

    /// For a boolean output, the share of its rows that are true (0 when there are none).
    pub fn true_share(&self) -> Option<f64> {
        self.true_count.map(|t| {
            if self.rows == 0 {
                0.0
            } else {
                t as f64 / self.rows as f64
            }
        })
    }
}

pub struct Engine {
    cfg: EngineConfig,
    state_dir: PathBuf,
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        let env = cfg
            .project
            .environment(&cfg.env)
            .ok_or_else(|| EngineError::unknown_environment(&cfg.project, &cfg.env))?;
        let state_dir = match &cfg.state_dir {
            Some(d) => d.clone(),
            None => cfg.project.root.join(&env.state_dir).join(&cfg.env),
        };
        Ok(Engine { cfg, state_dir })
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    pub fn ledger(&self) -> Result<Ledger, EngineError> {
        Ok(Ledger::open(&self.state_dir.join("ledger.redb"))?)
    }

    pub fn online(&self) -> Result<OnlineStore, EngineError> {
        Ok(OnlineStore::open(&self.state_dir.join("online.redb"))?)
    }

    pub fn offline(&self) -> OfflineStore {
        OfflineStore::new(&self.state_dir.join("offline"))
    }

    fn lock(&self) -> Result<std::fs::File, EngineError> {
        let io = |e: std::io::Error| {
            EngineError::Store(slate_stores::StoreError::Io {
                what: "run lock",
                reason: e.to_string(),
            })
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.state_dir.join("run.lock"))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(EngineError::Busy {
                state_dir: self.state_dir.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// The directory an embedded source reads, after overrides.
    pub fn source_dir(&self, source: &str) -> Result<(PathBuf, String), EngineError> {
        let env = self
            .cfg
            .project
            .environment(&self.cfg.env)
            .ok_or_else(|| EngineError::Internal("environment vanished".into()))?;
        let Some(SourceConfig::Embedded { path, dialect, .. }) = env.sources.get(source) else {
            return Err(EngineError::Plan {
                query: String::new(),
                reason: format!(
                    "source `{source}` is not configured in environment `{}`",
                    self.cfg.env
                ),
            });
        };
        let dir = self
            .cfg
            .data_dir
            .clone()
            .unwrap_or_else(|| self.cfg.project.root.join(path));
        Ok((dir, dialect.clone()))
    }

    /// One run of `plan` now.
    pub async fn run(
        &self,
        plan: &QueryPlan,
        progress: &dyn Progress,
    ) -> Result<RunSummary, EngineError> {
        let started = self.cfg.clock.now_micros();
        // An on-demand run's tick is its start time; a scheduled run's would be its cron tick.
        let tick = started;
        let run_id = format!("{}@{}", plan.query.name, slate_types::format_rfc3339(tick));
        let mut stages = Vec::new();
        let mut timed = |name: &str, detail: String, t: Instant| {
            let took = t.elapsed();
            progress.done(name, &detail, took);
            stages.push((name.to_string(), took));
        };

        // The model is loaded before anything is written, so a bad model file leaves no trace.
        let model = OnnxModel::load(&plan.model.model_path)?;

        // 1. Ingest.
        progress.stage("ingest");
        let t = Instant::now();
        let r = &plan.ingest;
        let inc = r.incremental.as_ref();
        // The ledger is created at the first commit, so a run that fails early leaves no state.
        let before = match self.state_dir.join("ledger.redb").exists() {
            true => self.ledger()?.watermark(&plan.query.name, &r.name)?,
            false => None,
        };
        let bound = match (inc, before) {
            (Some(i), Some(w)) => Some(IncrementalBound {
                column: i.column.clone(),
                micros: w - i.lookback_secs * 1_000_000,
            }),
            (Some(i), None) => plan.query.lower_bound_micros.map(|m| IncrementalBound {
                column: i.column.clone(),
                micros: m,
            }),
            (None, _) => None,
        };
        let (dir, dialect) = self.source_dir(&r.source)?;
        let source = EmbeddedSource::open(&r.source, &dir, &dialect).await?;
        let batches = source.query(&r.name, &r.sql, bound.as_ref()).await?;
        let required = [plan.root.primary_key.as_str(), plan.root_time.as_str()];
        let rows = to_class_batch(&r.name, &plan.root, &batches, &required)?;
        let rows = dedupe_sorted(&rows, &plan.root.primary_key, &plan.root_time, &r.name)?;
        // One run at a time writes a state directory. The OS releases the lock when the process
        // dies, so a killed run never blocks the rerun.
        let _lock = self.lock()?;
        let offline = self.offline();
        let replace = bound.as_ref().map(|b| ReplaceRange {
            column: b.column.clone(),
            from_micros: b.micros,
        });
        offline
            .write(&plan.root_table(), vec![rows.clone()], replace.as_ref())
            .await?;
        let after = match inc {
            Some(i) if i.timestamp == IncrementalTimestamp::ResolverExecutionTime => Some(started),
            Some(i) => {
                let max = ts_column(&rows, &i.column)?.into_iter().flatten().max();
                max.max(before)
            }
            None => None,
        };
        timed(
            "ingest",
            format!("{} rows from {}", rows.num_rows(), r.name),
            t,
        );

        // 2. Compute point-in-time features.
        progress.stage("compute");
        let t = Instant::now();
        let features = self.compute(plan, &rows).await?;
        timed(
            "compute",
            format!("{} features for {} rows", features.len(), rows.num_rows()),
            t,
        );

        // 3. Predict.
        progress.stage("predict");
        let t = Instant::now();
        let prediction = model.predict(&features, &plan.model.defaults)?;
        timed(
            "predict",
            format!("{} rows scored", prediction.labels.len()),
            t,
        );

        // 4. Write.
        progress.stage("write");
        let t = Instant::now();
        let ids = i64_column(&rows, &plan.root.primary_key)?;
        let times = ts_column(&rows, &plan.root_time)?;
        let label_ty = match plan
            .root
            .feature(&plan.model.output.feature)
            .map(|f| &f.kind)
        {
            Some(slate_project::FeatureKind::Scalar { ty, .. }) => *ty,
            _ => ValueType::Int,
        };
        let label_array: ArrayRef = match label_ty {
            ValueType::Bool => Arc::new(BooleanArray::from_iter(
                prediction.labels.iter().map(|l| Some(*l != 0)),
            )),
            _ => Arc::new(Int64Array::from(prediction.labels.clone())),
        };
        let mut outputs = vec![OutputSummary::of(
            plan.model.output.to_string(),
            label_array.as_ref(),
        )];
        let scores =
            Float64Array::from_iter_values(prediction.positive_scores().into_iter().map(f64::from));
        if let Some(o) = &plan.model.score_output {
            outputs.push(OutputSummary::of(o.to_string(), &scores));
        }
        if plan.query.store_online {
            let online = self.online()?;
            let keyed = |json: &dyn Fn(usize) -> String| -> Vec<(i64, i64, String)> {
                (0..ids.len())
                    .map(|i| {
                        (
                            ids[i].unwrap_or_default(),
                            times[i].unwrap_or_default(),
                            json(i),
                        )
                    })
                    .collect()
            };
            let label_json = |i: usize| {
                if label_ty == ValueType::Bool {
                    (prediction.labels[i] != 0).to_string()
                } else {
                    prediction.labels[i].to_string()
                }
            };
            online.put(&plan.model.output.column_name(), keyed(&label_json))?;
            if let Some(s) = &plan.model.score_output {
                online.put(&s.column_name(), keyed(&|i| format!("{}", scores.value(i))))?;
            }
        }
        if plan.query.store_offline {
            let mut fields = vec![
                Field::new("run_id", DataType::Utf8, false),
                Field::new(&plan.root.primary_key, DataType::Int64, false),
                Field::new("feature_time", ts_type(), false),
            ];
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    run_id.as_str(),
                    ids.len(),
                ))),
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(TimestampMicrosecondArray::from(times.clone()).with_timezone("UTC")),
            ];
            for (p, c) in plan.inputs.iter().zip(&features) {
                fields.push(Field::new(p.column_name(), c.data_type().clone(), true));
                cols.push(c.clone());
            }
            fields.push(Field::new("model_sha256", DataType::Utf8, false));
            cols.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n(model.sha256(), ids.len()),
            )));
            fields.push(Field::new(
                &plan.model.output.feature,
                label_array.data_type().clone(),
                false,
            ));
            cols.push(label_array.clone());
            if let Some(s) = &plan.model.score_output {
                fields.push(Field::new(&s.feature, DataType::Float64, false));
                cols.push(Arc::new(scores.clone()));
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
            let replace = bound.as_ref().map(|b| ReplaceRange {
                column: "feature_time".into(),
                from_micros: b.micros,
            });
            offline
                .write(&plan.model.name, vec![batch], replace.as_ref())
                .await?;
        }
        timed("write", format!("{} predictions", ids.len()), t);

        // 5. Commit: the run record and the watermark move together, last.
        let t = Instant::now();
        let record = RunRecord {
            run_id: run_id.clone(),
            query: plan.query.name.clone(),
            tick_micros: tick,
            rows_ingested: rows.num_rows(),
            rows_scored: prediction.labels.len(),
            watermark_before: before,
            watermark_after: after,
        };
        let marks: Vec<(String, i64)> = after.map(|a| (r.name.clone(), a)).into_iter().collect();
        self.ledger()?.commit_run(&record, &marks)?;
        timed(
            "commit",
            format!(
                "watermark {}",
                after.map_or("unset".into(), slate_types::format_rfc3339)
            ),
            t,
        );

        Ok(RunSummary {
            run_id,
            rows_ingested: record.rows_ingested,
            rows_scored: record.rows_scored,
            outputs,
            watermark_before: before,
            watermark_after: after,
            stages,
        })
    }

    /// Model inputs for `rows`, one array per input, as of each row's feature time.
    pub async fn compute(
        &self,
        plan: &QueryPlan,
        rows: &RecordBatch,
    ) -> Result<Vec<ArrayRef>, EngineError> {
        let now = ts_column(rows, &plan.root_time)?;
        if rows.num_rows() == 0 {
            return Ok(plan
                .inputs
                .iter()
                .map(|i| match i {
                    InputPlan::Aggregate {
                        agg: Agg::Count | Agg::CountDistinct,
                        ..
                    } => arrow::array::new_empty_array(&DataType::Int64),
                    InputPlan::Aggregate { .. } => {
                        arrow::array::new_empty_array(&DataType::Float64)
                    }
                    InputPlan::RootColumn { column, .. } => rows
                        .column_by_name(column)
                        .cloned()
                        .unwrap_or_else(|| arrow::array::new_empty_array(&DataType::Float64)),
                })
                .collect());
        }
        // History is read once per query, with every field any aggregation needs, prepared once
        // per (field, whether it is counted distinct).
        let mut prepared: HashMap<(Option<String>, bool), Prepared> = HashMap::new();
        let mut queries: Option<(String, Vec<Query>, QueryOrder, Dictionary)> = None;
        let mut out = Vec::with_capacity(plan.inputs.len());
        for input in &plan.inputs {
            match input {
                InputPlan::RootColumn { column, .. } => {
                    out.push(rows.column_by_name(column).cloned().ok_or_else(|| {
                        EngineError::Internal(format!("missing column {column}"))
                    })?);
                }
                InputPlan::Aggregate {
                    entity_column,
                    field,
                    agg,
                    window,
                    ..
                } => {
                    if queries.as_ref().map(|q| &q.0) != Some(entity_column) {
                        // Entity keys of any type become exact codes shared with the history.
                        let keys = rows.column_by_name(entity_column).ok_or_else(|| {
                            EngineError::Internal(format!("missing column {entity_column}"))
                        })?;
                        let mut dict = Dictionary::keeping_values(keys.data_type())?;
                        let qs: Vec<Query> = dict
                            .encode(keys)?
                            .into_iter()
                            .zip(&now)
                            .map(|(e, n)| Query {
                                entity: e.map_or(i64::MIN, i64::from),
                                now: n.unwrap_or(i64::MIN),
                            })
                            .collect();
                        let order = QueryOrder::new(&qs);
                        queries = Some((entity_column.clone(), qs, order, dict));
                    }
                    let Some((_, qs, order, dict)) = &queries else {
                        unreachable!("queries were just built")
                    };
                    if prepared.is_empty() {
                        prepared = self.history(plan, qs, dict).await?;
                    }
                    let distinct = *agg == Agg::CountDistinct;
                    let p = prepared.get(&(field.clone(), distinct)).ok_or_else(|| {
                        EngineError::Internal(format!("history lacks field {field:?}"))
                    })?;
                    let values = p.aggregate_ordered(qs, order, *agg, *window);
                    let array: ArrayRef = match agg {
                        Agg::Count | Agg::CountDistinct => Arc::new(Int64Array::from_iter(
                            values.iter().map(|v| v.map(|x| x as i64)),
                        )),
                        _ => Arc::new(Float64Array::from(values)),
                    };
                    out.push(array);
                }
            }
        }
        Ok(out)
    }

    /// Reads the related rows of the entities `queries` touch (their keys are `keys`' values),
    /// back to the widest window, and prepares them once per aggregated field: as numbers for
    /// the value aggregations, as exact dictionary codes for distinct counts.
    async fn history(
        &self,
        plan: &QueryPlan,
        queries: &[Query],
        keys: &Dictionary,
    ) -> Result<HashMap<(Option<String>, bool), Prepared>, EngineError> {
        let aggs: Vec<_> = plan
            .inputs
            .iter()
            .filter_map(|i| match i {
                InputPlan::Aggregate {
                    history_table,
                    history_key,
                    history_time,
                    field,
                    window,
                    agg,
                    ..
                } => Some((
                    history_table,
                    history_key,
                    history_time,
                    field,
                    window,
                    *agg == Agg::CountDistinct,
                )),
                InputPlan::RootColumn { .. } => None,
            })
            .collect();
        let Some((table, key, time, _, _, _)) = aggs.first().copied() else {
            return Ok(HashMap::new());
        };
        if aggs
            .iter()
            .any(|a| a.0 != table || a.1 != key || a.2 != time)
        {
            return Err(EngineError::Plan {
                query: plan.query.name.clone(),
                reason: "aggregations over more than one relation are not supported yet".into(),
            });
        }
        let widest = aggs.iter().try_fold(0i64, |acc, a| a.4.map(|w| acc.max(w)));
        let from = widest.and_then(|w| queries.iter().map(|q| q.now).min().map(|m| m - w));
        let fields: BTreeSet<&String> = aggs.iter().filter_map(|a| a.3.as_ref()).collect();
        let mut columns: Vec<&str> = vec![key, time];
        columns.extend(
            fields
                .iter()
                .map(|f| f.as_str())
                .filter(|f| f != key && f != time),
        );
        let batches = self
            .offline()
            .read_for_keys(table, &columns, key, keys.values()?, time, from)
            .await?;
        let mut entity = Vec::new();
        let mut ts = Vec::new();
        for b in &batches {
            let col = b
                .column_by_name(key)
                .ok_or_else(|| EngineError::Internal(format!("missing column {key}")))?;
            entity.extend(
                keys.lookup(col)?
                    .into_iter()
                    .map(|c| c.map_or(i64::MIN, i64::from)),
            );
            ts.extend(
                ts_column(b, time)?
                    .into_iter()
                    .map(|v| v.unwrap_or(i64::MIN)),
            );
        }
        let mut out = HashMap::new();
        let rows = ts.len();
        let base = Prepared::new(&Events {
            value: vec![None; rows],
            entity,
            ts,
        });
        let wanted: BTreeSet<(Option<String>, bool)> =
            aggs.iter().map(|a| (a.3.clone(), a.5)).collect();
        for (field, distinct) in wanted {
            let mut value = Vec::with_capacity(rows);
            match &field {
                None => value.resize(rows, None),
                Some(f) if distinct => {
                    let mut dict: Option<Dictionary> = None;
                    for b in &batches {
                        let col = b
                            .column_by_name(f)
                            .ok_or_else(|| EngineError::Internal(format!("missing column {f}")))?;
                        if dict.is_none() {
                            dict = Some(Dictionary::new(col.data_type())?);
                        }
                        if let Some(d) = &mut dict {
                            value.extend(d.encode(col)?.into_iter().map(|c| c.map(f64::from)));
                        }
                    }
                }
                Some(f) if f == time => {
                    for b in &batches {
                        value.extend(ts_column(b, f)?.into_iter().map(|v| v.map(|x| x as f64)));
                    }
                }
                Some(f) => {
                    for b in &batches {
                        value.extend(f64_column(b, f)?);
                    }
                }
            }
            out.insert((field, distinct), base.with_values(&value));
        }
        Ok(out)
    }
}
