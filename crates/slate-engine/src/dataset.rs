//! Training datasets (offline queries): a plan's features as of each row of a spine, computed by
//! the same nodes over the same offline tables as a scheduled run, so a model is trained on
//! exactly the values it is served (no training/serving skew). The dataset records the Delta
//! version of every table it read, so it can be rebuilt.

use crate::EngineError;
use crate::compute::{Frame, keyed_read, strict_cast};
use crate::frame::ts_column;
use crate::plan::{Node, QueryPlan};
use crate::run::Engine;
use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take};
use slate_model::OnnxModel;
use slate_project::FeatureKind;
use std::collections::HashMap;
use std::path::Path;

/// Which rows a dataset computes features for.
#[derive(Debug, Clone)]
pub enum Spine {
    /// Rows with the root class's primary key and feature time (by name), from a file.
    Rows(Vec<RecordBatch>),
    /// The root class's ingested rows with feature time in `[from, to)`.
    Range { from: Option<i64>, to: Option<i64> },
}

/// A built dataset: one row per spine row, and the offline table versions it read.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub batch: RecordBatch,
    pub versions: Vec<(String, u64)>,
}

fn bad(reason: String) -> EngineError {
    EngineError::BadValue {
        resolver: "spine".into(),
        reason,
    }
}

impl Engine {
    /// Computes every feature of `plan` for the rows of `spine`, as of each row's feature time
    /// (or `at` for all rows). Holds the state directory's lock, so no run writes meanwhile.
    pub async fn dataset(
        &self,
        plan: &QueryPlan,
        spine: Spine,
        at: Option<i64>,
    ) -> Result<Dataset, EngineError> {
        let _lock = self.lock(false).await?;
        self.check_functions(plan)?;
        let mut models: HashMap<String, OnnxModel> = HashMap::new();
        for m in plan.models() {
            models.insert(m.name.clone(), OnnxModel::load(&m.model_path)?);
        }
        let offline = self.offline();
        let mut versions = Vec::new();
        for s in &plan.scans {
            let t = s.table();
            if versions.iter().any(|(n, _)| n == &t) {
                continue;
            }
            if let Some(v) = offline.version(&t).await? {
                versions.push((t, v));
            }
        }
        let root = &plan.root;
        let pk = &root.primary_key;
        let root_table = plan.root_table();
        let spine = match spine {
            Spine::Rows(batches) => match batches.first() {
                Some(b) => concat_batches(&b.schema(), &batches)?,
                None => return Err(bad("the spine has no rows".into())),
            },
            Spine::Range { from, to } => {
                let time = plan.root_time.as_deref().ok_or_else(|| {
                    bad(format!(
                        "{} has no feature time, so its rows have no time range; give a spine file",
                        root.name
                    ))
                })?;
                let batches = offline.read_all(&root_table).await?;
                let Some(first) = batches.first() else {
                    return Err(bad(format!(
                        "the offline table `{root_table}` is empty: run a scheduled query first"
                    )));
                };
                let all = concat_batches(&first.schema(), &batches)?;
                let t = ts_column(&all, time)?;
                let keep = BooleanArray::from_iter(t.iter().map(|v| {
                    Some(v.is_some_and(|v| from.is_none_or(|f| v >= f) && to.is_none_or(|e| v < e)))
                }));
                filter_record_batch(&all, &keep)?
            }
        };
        // Spine columns are matched to the root class's features by name, case-insensitively,
        // and cast to their declared types.
        let mut columns: HashMap<String, ArrayRef> = HashMap::new();
        for (f, c) in spine.schema().fields().iter().zip(spine.columns()) {
            match root
                .scalar_features()
                .find(|(n, _)| n.eq_ignore_ascii_case(f.name()))
            {
                Some((name, ty)) => {
                    let cast = strict_cast(c, &ty.arrow()).map_err(|e| {
                        bad(format!(
                            "column `{}` is not a valid {}: {e}",
                            f.name(),
                            ty.name()
                        ))
                    })?;
                    columns.insert(name.to_string(), cast);
                }
                None => {
                    columns.insert(f.name().clone(), c.clone());
                }
            }
        }
        let n = spine.num_rows();
        let Some(keys) = columns.get(pk.as_str()) else {
            return Err(bad(format!(
                "the spine has no `{pk}` column (the primary key of {})",
                root.name
            )));
        };
        if keys.null_count() > 0 {
            return Err(bad(format!("the spine has rows with a null `{pk}`")));
        }
        let now: Vec<i64> = match (at, &plan.root_time) {
            (Some(t), _) => vec![t; n],
            (None, Some(time)) => {
                let Some(t) = columns.get(time.as_str()) else {
                    return Err(bad(format!(
                        "the spine has no `{time}` column (the feature time of {}); add it or give a time for every row",
                        root.name
                    )));
                };
                let b = RecordBatch::try_from_iter([(time.as_str(), t.clone())])?;
                ts_column(&b, time)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.ok_or_else(|| {
                            bad(format!("row {} of the spine has a null `{time}`", i + 1))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            (None, None) => {
                return Err(bad(format!(
                    "{} has no feature time: give the time the features are computed as of",
                    root.name
                )));
            }
        };
        // Root columns the plan uses that the spine lacks come from the root class's offline
        // table: each key's row (its latest version when the class has a feature time).
        let missing: Vec<&str> = plan
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Column { column, .. } if !columns.contains_key(column.as_str()) => {
                    Some(column.as_str())
                }
                _ => None,
            })
            .collect();
        let mut frame = Frame {
            columns,
            now,
            rows: n,
            whole_table: None,
        };
        if !missing.is_empty() {
            let mut read: Vec<&str> = vec![pk.as_str()];
            read.extend(plan.root_time.as_deref());
            read.extend(missing.iter().copied());
            read.dedup();
            let (codes, batch, table_codes) =
                keyed_read(&offline, &frame, pk, &root_table, pk, &read, None).await?;
            let times = match (&batch, &plan.root_time) {
                (Some(b), Some(t)) => ts_column(b, t)?,
                (Some(b), None) => vec![Some(0); b.num_rows()],
                (None, _) => vec![],
            };
            let mut best: HashMap<u32, (i64, u32)> = HashMap::new();
            for (i, c) in table_codes.iter().enumerate() {
                if let Some(c) = c {
                    let t = times[i].unwrap_or(i64::MIN);
                    let e = best.entry(*c).or_insert((t, i as u32));
                    if t > e.0 {
                        *e = (t, i as u32);
                    }
                }
            }
            let pick: UInt32Array = codes
                .iter()
                .map(|c| c.and_then(|c| best.get(&c).map(|b| b.1)))
                .collect();
            for m in missing {
                let ty = match root.feature(m).map(|f| &f.kind) {
                    Some(FeatureKind::Scalar { ty, .. }) => ty.arrow(),
                    _ => return Err(EngineError::Internal(format!("{m} is not a column"))),
                };
                let a = match &batch {
                    Some(b) => {
                        let col = b.column_by_name(m).ok_or_else(|| {
                            EngineError::Internal(format!("{root_table} read lacks {m}"))
                        })?;
                        strict_cast(&take(col, &pick, None)?, &ty)?
                    }
                    None => arrow::array::new_null_array(&ty, n),
                };
                frame.columns.insert(m.to_string(), a);
            }
        }
        self.compute_nodes(
            &offline,
            plan,
            &mut frame,
            &models,
            // Datasets do not take the run lock: each spills apart from runs and other datasets.
            &self.execution(&format!("dataset-{}", std::process::id())),
        )
        .await?;
        let batch = self.output_batch(plan, &frame, None, &models)?;
        Ok(Dataset { batch, versions })
    }
}

/// Writes a dataset as one Parquet file; the table versions it read are in the file's
/// key-value metadata under `slate.data_versions` (JSON, table to Delta version).
pub fn write_parquet(path: &Path, dataset: &Dataset) -> Result<(), EngineError> {
    let io = |e: &dyn std::fmt::Display| {
        EngineError::Store(slate_stores::StoreError::Io {
            what: "dataset write",
            reason: format!("{}: {e}", path.display()),
        })
    };
    let versions: serde_json::Map<String, serde_json::Value> = dataset
        .versions
        .iter()
        .map(|(t, v)| (t.clone(), serde_json::Value::from(*v)))
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "slate.data_versions".to_string(),
            serde_json::Value::Object(versions).to_string(),
        )]))
        .build();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
    }
    // Written beside the target and renamed, so a failed write leaves no partial file.
    let tmp = path.with_extension("parquet.partial");
    let file = std::fs::File::create(&tmp).map_err(|e| io(&e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, dataset.batch.schema(), Some(props))
        .map_err(|e| io(&e))?;
    w.write(&dataset.batch).map_err(|e| io(&e))?;
    w.close().map_err(|e| io(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(&e))?;
    Ok(())
}
