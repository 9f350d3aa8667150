//! From a scheduled query to the steps that compute its outputs.

use crate::EngineError;
use slate_aggregate::Agg;
use slate_project::{
    AggFunc, Diagnostic, FeatureClass, FeatureKind, ModelResolver, Project, ScheduledQuery,
    SqlResolver,
};
use slate_types::{FeatureRef, ValueType};
use std::fmt::Write;

/// How one model input is obtained for each root row.
#[derive(Debug, Clone)]
pub enum InputPlan {
    /// A column of the root rows (`Transaction.amount`).
    RootColumn { feature: FeatureRef, column: String },
    /// A windowed aggregation of the related entity, as of the root row's feature time
    /// (`Transaction.user.num_transactions["1d"]`).
    Aggregate {
        feature: FeatureRef,
        /// Root column holding the related entity's key (`user_id`).
        entity_column: String,
        /// Offline table of the aggregated rows and their columns.
        history_table: String,
        history_key: String,
        history_time: String,
        field: Option<String>,
        agg: Agg,
        window: Option<i64>,
        ty: ValueType,
    },
}

impl InputPlan {
    pub fn feature(&self) -> &FeatureRef {
        match self {
            InputPlan::RootColumn { feature, .. } | InputPlan::Aggregate { feature, .. } => feature,
        }
    }

    /// Column name in offline tables: `amount`, `user__num_transactions__1d`.
    pub fn column_name(&self) -> String {
        let f = self.feature();
        let mut parts: Vec<&str> = f.path.iter().map(String::as_str).collect();
        parts.push(&f.feature);
        if let Some(w) = &f.window {
            parts.push(w);
        }
        parts.join("__")
    }
}

#[derive(Debug, Clone)]
pub struct QueryPlan {
    pub query: ScheduledQuery,
    pub root: FeatureClass,
    pub root_time: String,
    pub ingest: SqlResolver,
    pub model: ModelResolver,
    pub inputs: Vec<InputPlan>,
}

impl QueryPlan {
    /// Offline table of the root class's ingested rows.
    pub fn root_table(&self) -> String {
        self.root.name.to_lowercase()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let q = &self.query;
        let _ = writeln!(
            s,
            "scheduled query {} (schedule: {})",
            q.name,
            q.schedule.as_deref().unwrap_or("on demand")
        );
        let inc = self.ingest.incremental.as_ref();
        let _ = writeln!(
            s,
            "  1. ingest   {} -> {} rows from source `{}`{}",
            self.ingest.name,
            self.root.name,
            self.ingest.source,
            inc.map(|i| format!(
                " (incremental {:?}, column {}, lookback {}s)",
                i.mode, i.column, i.lookback_secs
            )
            .to_lowercase())
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "              persisted to offline table `{}`",
            self.root_table()
        );
        let _ = writeln!(
            s,
            "  2. compute  as of each {}.{} (point in time):",
            self.root.name, self.root_time
        );
        for i in &self.inputs {
            match i {
                InputPlan::RootColumn { feature, .. } => {
                    let _ = writeln!(s, "              {feature}  (ingested column)");
                }
                InputPlan::Aggregate {
                    feature,
                    agg,
                    history_table,
                    ..
                } => {
                    let _ = writeln!(
                        s,
                        "              {feature}  ({agg:?} over offline `{history_table}`)"
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "  3. predict  {} ({}) -> {}{}",
            self.model.name,
            self.model
                .model_path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default(),
            self.model.output,
            self.model
                .score_output
                .as_ref()
                .map(|o| format!(", {o}"))
                .unwrap_or_default()
        );
        let mut stores = Vec::new();
        if q.store_online {
            stores.push("online (latest per key)");
        }
        if q.store_offline {
            stores.push(if self.model.name.is_empty() {
                "offline"
            } else {
                "offline (predictions with inputs and model hash)"
            });
        }
        let _ = writeln!(
            s,
            "  4. write    {}",
            if stores.is_empty() {
                "nothing (no store_online/store_offline)".to_string()
            } else {
                stores.join(", ")
            }
        );
        let _ = writeln!(s, "  5. commit   run record and watermark");
        s
    }
}

fn agg_of(f: AggFunc) -> Agg {
    match f {
        AggFunc::Count => Agg::Count,
        AggFunc::CountDistinct => Agg::CountDistinct,
        AggFunc::Sum => Agg::Sum,
        AggFunc::Mean => Agg::Mean,
        AggFunc::Min => Agg::Min,
        AggFunc::Max => Agg::Max,
        AggFunc::Latest => Agg::Latest,
        AggFunc::TimeSinceLatest => Agg::TimeSinceLatest,
    }
}

pub fn plan_query(project: &Project, name: &str) -> Result<QueryPlan, EngineError> {
    let query = project
        .query(name)
        .ok_or_else(|| EngineError::unknown_query(project, name))?;
    let fail = |reason: String| EngineError::Plan {
        query: name.into(),
        reason,
    };
    let output = query
        .output
        .first()
        .ok_or_else(|| fail("the query has no output".into()))?;
    let model = project
        .model_resolver_for(output)
        .ok_or_else(|| fail(format!("no resolver computes {output}")))?
        .clone();
    let ingest = match query.incremental_resolvers.as_slice() {
        [one] => project
            .sql_resolver(one)
            .ok_or_else(|| fail(format!("unknown resolver {one}")))?
            .clone(),
        [] => {
            return Err(fail(
                "scheduled queries need one incremental resolver for their root rows".into(),
            ));
        }
        _ => {
            return Err(fail(
                "more than one incremental resolver per query is not supported yet".into(),
            ));
        }
    };
    let root = project
        .class(&ingest.resolves)
        .ok_or_else(|| fail(format!("unknown class {}", ingest.resolves)))?
        .clone();
    if !root.name.eq_ignore_ascii_case(&model.output.class) {
        return Err(fail(format!(
            "{} resolves {} but the model writes {}",
            ingest.name, root.name, model.output
        )));
    }
    // Root rows are keyed by an int in the online store and the run's outputs; a string key
    // is refused here rather than read as null.
    if !matches!(
        root.feature(&root.primary_key).map(|f| &f.kind),
        Some(FeatureKind::Scalar {
            ty: ValueType::Int,
            ..
        })
    ) {
        return Err(fail(format!(
            "the primary key {}.{} of the query's root rows is not an int; other key types are supported for related classes only, not yet for root rows",
            root.name, root.primary_key
        )));
    }
    let root_time = root.feature_time.clone().ok_or_else(|| {
        fail(format!(
            "class {} has no feature time; mark one feature `feature_time: true`",
            root.name
        ))
    })?;
    let mut inputs = Vec::new();
    for r in model.model_inputs() {
        inputs.push(input_plan(project, &root, r).map_err(fail)?);
    }
    Ok(QueryPlan {
        query: query.clone(),
        root,
        root_time,
        ingest,
        model,
        inputs,
    })
}

fn input_plan(project: &Project, root: &FeatureClass, r: &FeatureRef) -> Result<InputPlan, String> {
    let scalar = |c: &FeatureClass, f: &str| {
        matches!(
            c.feature(f).map(|x| &x.kind),
            Some(FeatureKind::Scalar { .. })
        )
    };
    match r.path.as_slice() {
        [] if scalar(root, &r.feature) => Ok(InputPlan::RootColumn {
            feature: r.clone(),
            column: r.feature.clone(),
        }),
        [rel] => {
            let Some(FeatureKind::HasOne {
                target,
                foreign_key,
            }) = root.feature(rel).map(|f| f.kind.clone())
            else {
                return Err(format!(
                    "{r}: `{rel}` is not a has-one relation of {}",
                    root.name
                ));
            };
            let target = project
                .class(&target)
                .ok_or_else(|| format!("unknown class {target}"))?;
            let Some(FeatureKind::Aggregate { ty, agg, windows }) =
                target.feature(&r.feature).map(|f| f.kind.clone())
            else {
                return Err(format!(
                    "{r}: only windowed aggregations are computed through a relation so far"
                ));
            };
            let Some(FeatureKind::HasMany {
                target: hist,
                foreign_key: hist_key,
            }) = target.feature(&agg.relation).map(|f| f.kind.clone())
            else {
                return Err(format!(
                    "{r}: `{}` is not a has-many relation",
                    agg.relation
                ));
            };
            if !hist.eq_ignore_ascii_case(&root.name) {
                return Err(format!(
                    "{r}: history of class {hist} is not ingested by this query"
                ));
            }
            let label = r.window.clone().unwrap_or_else(|| "all".into());
            let window = windows
                .iter()
                .find(|w| w.label() == label)
                .ok_or_else(|| format!("{r}: unknown window"))?
                .micros();
            Ok(InputPlan::Aggregate {
                feature: r.clone(),
                entity_column: foreign_key,
                history_table: hist.to_lowercase(),
                history_key: hist_key,
                history_time: root.feature_time.clone().unwrap_or_default(),
                field: agg.field.clone(),
                agg: agg_of(agg.func),
                window,
                ty,
            })
        }
        _ => Err(format!("{r}: this kind of input is not supported yet")),
    }
}

/// Loads every model resolver's ONNX file and checks its inputs against the resolver, as
/// diagnostics positioned in the resolver file.
pub fn validate_models(project: &Project) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for m in &project.model_resolvers {
        match slate_model::OnnxModel::load(&m.model_path) {
            Err(e) => out.push(
                Diagnostic::new(m.model_span.clone(), e.to_string())
                    .hint("the file must be an ONNX model; see examples/fraud/training/train.py"),
            ),
            Ok(model) => {
                if let Some(n) = model.n_features() {
                    let given = m.model_inputs().len();
                    if n != given {
                        out.push(Diagnostic::new(m.input_spans.first().cloned().unwrap_or(m.model_span.clone()),
                            format!("model `{}` takes {n} input features but resolver `{}` lists {given} (after the row key {})", m.model_path.file_name().and_then(|f| f.to_str()).unwrap_or_default(), m.name, m.inputs[0]))
                            .hint("list exactly the features the model was trained on, in training order"));
                    }
                }
            }
        }
    }
    out
}
