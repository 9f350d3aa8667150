//! From a scheduled query to a graph of steps that compute its outputs.
//!
//! The planner walks what each output needs (DESIGN §3.1) down to resolvers and returns the
//! steps in dependency order: scans (the root class's resolver, and those of the classes that
//! lookups and aggregations read), then nodes that each add one or more columns to the frame of
//! root rows. A feature reached through has-one relations is evaluated per key column: the
//! root's own primary key for its own aggregations, a foreign key for a related class, and for
//! a longer path the looked-up foreign key of the class before.

use crate::EngineError;
use arrow::datatypes::DataType;
use slate_aggregate::Agg;
use slate_project::{
    AggFunc, Diagnostic, FeatureClass, FeatureKind, ModelResolver, Project, ScheduledQuery,
    SqlResolver,
};
use slate_types::{FeatureRef, ValueType};
use std::collections::HashMap;
use std::fmt::Write;

/// A class's rows read from its SQL resolver and persisted to the class's offline table.
#[derive(Debug, Clone)]
pub struct Scan {
    pub resolver: SqlResolver,
    pub class: FeatureClass,
    /// Whether the scan reads only new rows (its resolver is incremental and the query lists it).
    pub incremental: bool,
}

impl Scan {
    /// The class's offline table.
    pub fn table(&self) -> String {
        self.class.name.to_lowercase()
    }
}

/// One step of the graph; each adds columns to the frame of root rows.
#[derive(Debug, Clone)]
pub enum Node {
    /// A column of the root rows (`Transaction.amount`).
    Column { feature: FeatureRef, column: String },
    /// A scalar of a related class through has-one, by the key in frame column `key`: the row
    /// with the greatest feature time before now when the class has one, its only row otherwise.
    Lookup {
        feature: FeatureRef,
        column: String,
        key: String,
        table: String,
        class_key: String,
        class_time: Option<String>,
        field: String,
        ty: ValueType,
    },
    /// A windowed aggregation over a has-many relation of the entity whose key is in frame
    /// column `key`, as of each root row's now.
    Aggregate {
        feature: FeatureRef,
        column: String,
        key: String,
        table: String,
        table_key: String,
        table_time: String,
        field: Option<String>,
        agg: Agg,
        window: Option<i64>,
        ty: ValueType,
    },
    /// A SQL expression over frame columns (`"amount" * 2`); `now` is the column `__now`.
    Expression {
        feature: FeatureRef,
        column: String,
        sql: String,
        inputs: Vec<String>,
        uses_now: bool,
        ty: ValueType,
    },
    /// A Rust function registered through the library, over frame columns.
    Function {
        resolver: Box<slate_project::FunctionResolver>,
        inputs: Vec<String>,
        outputs: Vec<(String, ValueType)>,
    },
    /// An ONNX model over frame columns; writes its label (and score) columns.
    Model {
        resolver: Box<ModelResolver>,
        inputs: Vec<String>,
        label: String,
        label_ty: ValueType,
        score: Option<String>,
    },
}

impl Node {
    /// The frame columns this node reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Node::Column { column, .. } => vec![column],
            Node::Lookup { key, .. } => vec![key],
            Node::Aggregate {
                key,
                field,
                table_time,
                ..
            } => {
                // Over a backfill's own rows, the table's time and field are frame columns.
                let mut v = vec![key.as_str(), table_time.as_str()];
                v.extend(field.as_deref());
                v
            }
            Node::Expression { inputs, .. }
            | Node::Function { inputs, .. }
            | Node::Model { inputs, .. } => inputs.iter().map(|c| c.as_str()).collect(),
        }
    }

    /// The frame columns this node adds.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Node::Column { column, .. }
            | Node::Lookup { column, .. }
            | Node::Aggregate { column, .. }
            | Node::Expression { column, .. } => vec![column],
            Node::Function { outputs, .. } => outputs.iter().map(|o| o.0.as_str()).collect(),
            Node::Model { label, score, .. } => {
                let mut v = vec![label.as_str()];
                v.extend(score.as_deref());
                v
            }
        }
    }
}

/// One output of the query: the feature and its frame column.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    pub feature: FeatureRef,
    pub column: String,
}

#[derive(Debug, Clone)]
pub struct QueryPlan {
    pub query: ScheduledQuery,
    pub root: FeatureClass,
    /// The root class's feature time; without one, every root row's now is the run's tick.
    pub root_time: Option<String>,
    /// `scans[0]` reads the root rows.
    pub scans: Vec<Scan>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<OutputPlan>,
}

/// Column name of a feature in the frame and the offline tables: `amount`,
/// `user__num_transactions__1d`.
pub fn column_name(f: &FeatureRef) -> String {
    let mut parts: Vec<&str> = f.path.iter().map(String::as_str).collect();
    parts.push(&f.feature);
    if let Some(w) = &f.window {
        parts.push(w);
    }
    parts.join("__")
}

impl QueryPlan {
    /// The scan of the root rows.
    pub fn root_scan(&self) -> &Scan {
        &self.scans[0]
    }

    /// Offline table of the root class's ingested rows.
    pub fn root_table(&self) -> String {
        self.root_scan().table()
    }

    /// The function resolvers the plan calls, in order.
    pub fn functions(&self) -> impl Iterator<Item = &slate_project::FunctionResolver> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Function { resolver, .. } => Some(resolver.as_ref()),
            _ => None,
        })
    }

    /// The model nodes, in order.
    /// The value type of a frame column, from the node that writes it.
    pub fn column_type(&self, column: &str) -> Option<ValueType> {
        self.nodes.iter().find_map(|n| match n {
            Node::Column { column: c, feature } if c == column => {
                match self.root.feature(&feature.feature).map(|f| &f.kind) {
                    Some(FeatureKind::Scalar { ty, .. }) => Some(*ty),
                    _ => None,
                }
            }
            Node::Lookup { column: c, ty, .. }
            | Node::Aggregate { column: c, ty, .. }
            | Node::Expression { column: c, ty, .. }
                if c == column =>
            {
                Some(*ty)
            }
            Node::Function { outputs, .. } => {
                outputs.iter().find(|(c, _)| c == column).map(|(_, t)| *t)
            }
            Node::Model {
                label,
                label_ty,
                score,
                ..
            } => {
                if label == column {
                    Some(*label_ty)
                } else if score.as_deref() == Some(column) {
                    Some(ValueType::Float)
                } else {
                    None
                }
            }
            _ => None,
        })
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelResolver> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Model { resolver, .. } => Some(resolver.as_ref()),
            _ => None,
        })
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
        for (i, scan) in self.scans.iter().enumerate() {
            let r = &scan.resolver;
            let mode = match (&r.incremental, scan.incremental) {
                (Some(i), true) => format!(
                    " (incremental {:?}, column {}, lookback {}s)",
                    i.mode, i.column, i.lookback_secs
                )
                .to_lowercase(),
                _ => " (every row, each run)".into(),
            };
            let _ = writeln!(
                s,
                "  {} {} -> {} rows from source `{}`{mode}",
                if i == 0 { "1. ingest  " } else { "   ingest  " },
                r.name,
                scan.class.name,
                r.source
            );
            let _ = writeln!(
                s,
                "              persisted to offline table `{}`{}",
                scan.table(),
                if i == 0 { " (the root rows)" } else { "" }
            );
        }
        let now = match &self.root_time {
            Some(t) => format!("as of each {}.{t} (point in time)", self.root.name),
            None => format!(
                "as of the run's tick ({} has no feature time)",
                self.root.name
            ),
        };
        let _ = writeln!(s, "  2. compute  {now}:");
        for n in &self.nodes {
            let _ = match n {
                Node::Column { feature, .. } => {
                    writeln!(s, "              {feature}  (ingested column)")
                }
                Node::Lookup {
                    feature,
                    table,
                    class_time,
                    ..
                } => writeln!(
                    s,
                    "              {feature}  (lookup in offline `{table}`{})",
                    if class_time.is_some() {
                        ", point in time"
                    } else {
                        ", latest"
                    }
                ),
                Node::Aggregate {
                    feature,
                    agg,
                    table,
                    table_key,
                    field,
                    ..
                } => writeln!(
                    s,
                    "              {feature}  ({}{} over offline `{table}` by {table_key})",
                    agg_name(*agg),
                    field
                        .as_ref()
                        .filter(|_| !matches!(agg, Agg::Count))
                        .map(|f| format!(" of {f}"))
                        .unwrap_or_default()
                ),
                Node::Expression { feature, sql, .. } => {
                    writeln!(s, "              {feature}  (expression {sql})")
                }
                Node::Function { resolver, .. } => {
                    let outs: Vec<String> =
                        resolver.outputs.iter().map(|o| o.to_string()).collect();
                    writeln!(
                        s,
                        "              {}  (function {})",
                        outs.join(", "),
                        resolver.name
                    )
                }
                Node::Model { resolver, .. } => writeln!(
                    s,
                    "              {}{}  (model {}, {})",
                    resolver.output,
                    resolver
                        .score_output
                        .as_ref()
                        .map(|o| format!(", {o}"))
                        .unwrap_or_default(),
                    resolver.name,
                    resolver
                        .model_path
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default(),
                ),
            };
        }
        self.describe_backfill_plan(&mut s);
        let outs: Vec<String> = self.outputs.iter().map(|o| o.feature.to_string()).collect();
        let _ = writeln!(s, "  3. output   {}", outs.join(", "));
        let mut stores = Vec::new();
        if q.store_online {
            stores.push("online (latest per key)");
        }
        if q.store_offline {
            stores.push("offline (every computed feature, per row and run)");
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
        let _ = writeln!(s, "  5. commit   run record and watermarks");
        s
    }
}

impl QueryPlan {
    /// The physical plan a first run or a backfill runs when it streams (see `run/stream.rs`),
    /// as DataFusion's EXPLAIN shows it, with 2 partitions (a run makes one per core).
    fn describe_backfill_plan(&self, s: &mut String) {
        let Some(explained) = crate::run::explain_streamed(self, 2) else {
            return;
        };
        let _ = writeln!(
            s,
            "              a first run or backfill (every row read) runs as one streamed plan (shown with 2 partitions; one per core):"
        );
        for line in explained.lines() {
            let _ = writeln!(s, "                {line}");
        }
        let mut sinks = vec![format!(
            "the rows to offline `{}` (regrouped by day on disk)",
            self.root_table()
        )];
        if self.query.store_offline {
            sinks.push(format!(
                "the record to offline `{}` (regrouped by day on disk)",
                self.query.name
            ));
        }
        if self.query.store_online {
            sinks.push("the outputs to the online store, sorted by key (spilling)".into());
        }
        let _ = writeln!(
            s,
            "                each batch written as it comes: {}",
            sinks.join("; ")
        );
        // A run that reads from a watermark streams its new rows against their entities'
        // stored history.
        let incremental = self.scans[0].incremental && self.scans[0].resolver.incremental.is_some();
        let Some(daily) = crate::run::explain_daily(self, 2).filter(|_| incremental) else {
            return;
        };
        let _ = writeln!(
            s,
            "              a later run (rows after the watermark, stored first) runs as one streamed plan: its rows as queries, their entities' stored rows as events:"
        );
        for line in daily.lines() {
            let _ = writeln!(s, "                {line}");
        }
        let mut sinks = Vec::new();
        if self.query.store_offline {
            sinks.push(format!(
                "the record to offline `{}` (its rows from the run's bound replaced)",
                self.query.name
            ));
        }
        if self.query.store_online {
            sinks.push("the outputs to the online store, sorted by key (spilling)".into());
        }
        if !sinks.is_empty() {
            let _ = writeln!(
                s,
                "                each batch written as it comes: {}",
                sinks.join("; ")
            );
        }
    }
}

fn agg_name(a: Agg) -> &'static str {
    match a {
        Agg::Count => "count",
        Agg::CountDistinct => "count_distinct",
        Agg::Sum => "sum",
        Agg::Mean => "mean",
        Agg::Min => "min",
        Agg::Max => "max",
        Agg::Latest => "latest",
        Agg::TimeSinceLatest => "time since latest",
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

/// The resolver that provides a class's rows for `query`: one listed in its incremental
/// resolvers, else the only one, else the only one carrying all the query's tags.
pub fn resolver_for<'p>(
    project: &'p Project,
    query: &ScheduledQuery,
    class: &str,
) -> Result<&'p SqlResolver, String> {
    let of_class: Vec<&SqlResolver> = project
        .sql_resolvers
        .iter()
        .filter(|r| r.resolves.eq_ignore_ascii_case(class))
        .collect();
    let required = &query.required_resolver_tags;
    let all: Vec<&SqlResolver> = of_class
        .iter()
        .copied()
        .filter(|r| required.iter().all(|t| r.tags.contains(t)))
        .collect();
    if all.is_empty() && !of_class.is_empty() {
        return Err(format!(
            "no SQL resolver of {class} carries the query's required_resolver_tags [{}] (not: {})",
            required.join(", "),
            of_class
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(r) = all
        .iter()
        .find(|r| query.incremental_resolvers.contains(&r.name))
    {
        return Ok(r);
    }
    let tagged: Vec<&&SqlResolver> = all
        .iter()
        .filter(|r| query.tags.iter().all(|t| r.tags.contains(t)))
        .collect();
    match (all.as_slice(), tagged.as_slice()) {
        ([], _) => Err(format!("no SQL resolver provides {class} rows")),
        ([one], _) => Ok(one),
        (_, [one]) => Ok(one),
        _ => Err(format!(
            "{} SQL resolvers provide {class} rows ({}) and the query's tags [{}] do not choose one; tag one of them or list it in `incremental_resolvers`",
            all.len(),
            all.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            query.tags.join(", ")
        )),
    }
}

struct Planner<'p> {
    project: &'p Project,
    query: &'p ScheduledQuery,
    root: &'p FeatureClass,
    scans: Vec<Scan>,
    nodes: Vec<Node>,
    /// Features being planned, to report cycles.
    visiting: Vec<String>,
    /// Each frame column's type, for checking expressions.
    types: HashMap<String, DataType>,
}

impl<'p> Planner<'p> {
    fn push(&mut self, node: Node) {
        let root = self.root;
        match &node {
            Node::Column { column, .. } => {
                if let Some((_, ty)) = root.scalar_features().find(|(n, _)| n == column) {
                    self.types.insert(column.clone(), ty.arrow());
                }
            }
            Node::Lookup { column, ty, .. }
            | Node::Aggregate { column, ty, .. }
            | Node::Expression { column, ty, .. } => {
                self.types.insert(column.clone(), ty.arrow());
            }
            Node::Function { outputs, .. } => {
                for (c, ty) in outputs {
                    self.types.insert(c.clone(), ty.arrow());
                }
            }
            Node::Model {
                label,
                label_ty,
                score,
                ..
            } => {
                self.types.insert(label.clone(), label_ty.arrow());
                if let Some(s) = score {
                    self.types.insert(s.clone(), DataType::Float64);
                }
            }
        }
        self.nodes.push(node);
    }

    /// Plans an expression feature of the class reached by `prefix` from the root.
    fn expression(
        &mut self,
        r: &FeatureRef,
        column: String,
        prefix: &[String],
        ty: ValueType,
        sql: &str,
        refs: &[slate_project::ExprRef],
    ) -> Result<String, String> {
        let mut out = String::new();
        let mut inputs = Vec::new();
        let mut uses_now = false;
        let mut at = 0;
        for e in refs {
            out.push_str(&sql[at..e.start]);
            match &e.feature {
                None => {
                    uses_now = true;
                    out.push_str("\"__now\"");
                }
                Some(f) => {
                    let mut path = prefix.to_vec();
                    path.extend(f.path.iter().cloned());
                    let full = FeatureRef {
                        class: self.root.name.clone(),
                        path,
                        feature: f.feature.clone(),
                        window: f.window.clone(),
                    };
                    let c = self.feature(&full)?;
                    out.push_str(&format!("\"{c}\""));
                    if !inputs.contains(&c) {
                        inputs.push(c);
                    }
                }
            }
            at = e.end;
        }
        out.push_str(&sql[at..]);
        let mut fields: Vec<(String, DataType)> = inputs
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    self.types.get(c).cloned().unwrap_or(DataType::Float64),
                )
            })
            .collect();
        if uses_now {
            fields.push(("__now".into(), ValueType::Datetime.arrow()));
        }
        crate::compute::check_expression(&out, &fields, ty)
            .map_err(|e| format!("{r}: expression `{sql}`: {e}"))?;
        self.push(Node::Expression {
            feature: r.clone(),
            column: column.clone(),
            sql: out,
            inputs,
            uses_now,
            ty,
        });
        Ok(column)
    }

    fn class(&self, name: &str) -> Result<&'p FeatureClass, String> {
        self.project
            .class(name)
            .ok_or_else(|| format!("unknown class {name}"))
    }

    fn has(&self, column: &str) -> bool {
        self.nodes.iter().any(|n| n.columns().contains(&column))
    }

    /// Makes sure `class`'s rows are scanned in this run; returns its offline table.
    fn scan(&mut self, class: &FeatureClass) -> Result<String, String> {
        if let Some(s) = self
            .scans
            .iter()
            .find(|s| s.class.name.eq_ignore_ascii_case(&class.name))
        {
            return Ok(s.table());
        }
        let resolver = resolver_for(self.project, self.query, &class.name)?.clone();
        let incremental = resolver.incremental.is_some()
            && self.query.incremental_resolvers.contains(&resolver.name);
        let scan = Scan {
            resolver,
            class: class.clone(),
            incremental,
        };
        let table = scan.table();
        self.scans.push(scan);
        Ok(table)
    }

    /// Plans `r` (rooted at the root class) and returns its frame column.
    fn feature(&mut self, r: &FeatureRef) -> Result<String, String> {
        let column = column_name(r);
        if self.has(&column) {
            return Ok(column);
        }
        let id = r.to_string();
        if self.visiting.contains(&id) {
            return Err(self.cycle(id));
        }
        self.visiting.push(id);
        let out = self.feature_inner(r, column);
        self.visiting.pop();
        out
    }

    fn feature_inner(&mut self, r: &FeatureRef, column: String) -> Result<String, String> {
        if r.path.is_empty() {
            return self.root_feature(r, column);
        }
        // Follow the path: the key of each class along it is a frame column.
        let mut class = self.root;
        let mut key = String::new();
        let mut prefix: Vec<String> = Vec::new();
        for step in &r.path {
            let Some(FeatureKind::HasOne {
                target,
                foreign_key,
            }) = class.feature(step).map(|f| f.kind.clone())
            else {
                return Err(format!(
                    "{r}: `{}.{step}` is not a has-one relation",
                    class.name
                ));
            };
            let fk = FeatureRef {
                class: self.root.name.clone(),
                path: prefix.clone(),
                feature: foreign_key,
                window: None,
            };
            key = self.feature(&fk)?;
            prefix.push(step.clone());
            class = self.class(&target)?;
        }
        let target = class;
        let feature = target
            .feature(&r.feature)
            .ok_or_else(|| format!("{r}: `{}` has no feature `{}`", target.name, r.feature))?;
        match feature.kind.clone() {
            FeatureKind::Scalar { ty, .. } => {
                if self.project.model_resolvers.iter().any(|m| {
                    m.output.class.eq_ignore_ascii_case(&target.name)
                        && m.output.feature == r.feature
                }) {
                    return Err(format!(
                        "{r}: `{}.{}` is computed by a model, and models run over the root rows only so far",
                        target.name, r.feature
                    ));
                }
                let table = self.scan(target)?;
                if !self.scans.iter().any(|s| {
                    s.class.name == target.name
                        && (s.resolver.columns.is_empty()
                            || s.resolver
                                .columns
                                .iter()
                                .any(|c| c.eq_ignore_ascii_case(&r.feature)))
                }) {
                    return Err(format!(
                        "{r}: no resolver of {} returns `{}`",
                        target.name, r.feature
                    ));
                }
                self.push(Node::Lookup {
                    feature: r.clone(),
                    column: column.clone(),
                    key,
                    table,
                    class_key: target.primary_key.clone(),
                    class_time: target.feature_time.clone(),
                    field: r.feature.clone(),
                    ty,
                });
                Ok(column)
            }
            FeatureKind::Aggregate { ty, agg, windows } => {
                self.aggregate(r, column, key, target, ty, agg, &windows)
            }
            FeatureKind::Expression { ty, sql, refs } => {
                self.expression(r, column, &r.path, ty, &sql, &refs)
            }
            _ => Err(format!(
                "{r}: a relation is not a value; name one of its features"
            )),
        }
    }

    fn root_feature(&mut self, r: &FeatureRef, column: String) -> Result<String, String> {
        let root = self.root;
        let feature = root
            .feature(&r.feature)
            .ok_or_else(|| format!("{r}: `{}` has no feature `{}`", root.name, r.feature))?;
        match feature.kind.clone() {
            FeatureKind::Scalar { .. } => {
                let columns = &self.scans[0].resolver.columns;
                let from_rows = columns.iter().any(|c| c.eq_ignore_ascii_case(&r.feature));
                let model = self.project.model_resolvers.iter().find(|m| {
                    slate_project::same_feature(&m.output, r)
                        || m.score_output
                            .as_ref()
                            .is_some_and(|s| slate_project::same_feature(s, r))
                });
                // A projection Slate cannot read statically (`SELECT *`) may return anything.
                let maybe = columns.is_empty();
                let function = self.project.function_resolver_for(r);
                if !from_rows && let Some(f) = function {
                    self.function(f)?;
                    return Ok(column);
                }
                match (from_rows || (maybe && model.is_none()), model) {
                    (true, _) => {
                        self.push(Node::Column {
                            feature: r.clone(),
                            column: column.clone(),
                        });
                        Ok(column)
                    }
                    (false, Some(m)) => {
                        self.model(m)?;
                        Ok(column)
                    }
                    (false, None) => Err(format!(
                        "no resolver computes {r}: `{}` does not return it and no model or function writes it",
                        self.scans[0].resolver.name
                    )),
                }
            }
            FeatureKind::Aggregate { ty, agg, windows } => {
                let key = self.feature(&FeatureRef {
                    class: root.name.clone(),
                    path: vec![],
                    feature: root.primary_key.clone(),
                    window: None,
                })?;
                self.aggregate(r, column, key, root, ty, agg, &windows)
            }
            FeatureKind::Expression { ty, sql, refs } => {
                self.expression(r, column, &[], ty, &sql, &refs)
            }
            _ => Err(format!(
                "{r}: a relation is not a value; name one of its features"
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn aggregate(
        &mut self,
        r: &FeatureRef,
        column: String,
        key: String,
        class: &FeatureClass,
        ty: ValueType,
        agg: slate_project::Aggregation,
        windows: &[slate_types::Window],
    ) -> Result<String, String> {
        let Some(FeatureKind::HasMany {
            target,
            foreign_key,
        }) = class.feature(&agg.relation).map(|f| f.kind.clone())
        else {
            return Err(format!(
                "{r}: `{}` is not a has-many relation",
                agg.relation
            ));
        };
        let hist = self.class(&target)?;
        let table_time = hist.feature_time.clone().ok_or_else(|| {
            format!(
                "{r}: class {} has no feature time, so its rows cannot be windowed; mark one feature `feature_time: true`",
                hist.name
            )
        })?;
        let table = self.scan(hist)?;
        let label = r.window.clone().unwrap_or_else(|| "all".into());
        let window = windows
            .iter()
            .find(|w| w.label() == label)
            .ok_or_else(|| format!("{r}: unknown window"))?
            .micros();
        self.push(Node::Aggregate {
            feature: r.clone(),
            column: column.clone(),
            key,
            table,
            table_key: foreign_key,
            table_time,
            field: agg.field.clone(),
            agg: agg_of(agg.func),
            window,
            ty,
        });
        Ok(column)
    }

    /// Plans the inputs of a model or function resolver: checks the query's required tags and
    /// reports a cycle through the resolver.
    fn resolver_inputs(
        &mut self,
        kind: &str,
        name: &str,
        tags: &[String],
        inputs: &[FeatureRef],
    ) -> Result<Vec<String>, String> {
        if let Some(t) = self
            .query
            .required_resolver_tags
            .iter()
            .find(|t| !tags.contains(t))
        {
            return Err(format!(
                "{kind} `{name}` lacks the query's required resolver tag `{t}`"
            ));
        }
        let id = format!("{kind} {name}");
        if self.visiting.contains(&id) {
            return Err(self.cycle(id));
        }
        self.visiting.push(id);
        let mut columns = Vec::new();
        for i in inputs {
            columns.push(self.feature(i)?);
        }
        self.visiting.pop();
        Ok(columns)
    }

    /// The message for a cycle closed by `id`.
    fn cycle(&self, id: String) -> String {
        let mut cycle = self.visiting.clone();
        cycle.push(id);
        format!(
            "features depend on each other in a cycle: {}",
            cycle.join(" -> ")
        )
    }

    fn function(&mut self, f: &slate_project::FunctionResolver) -> Result<(), String> {
        if let Some(o) = f.outputs.first()
            && !o.class.eq_ignore_ascii_case(&self.root.name)
        {
            return Err(format!(
                "function `{}` writes {o}, not a feature of the root class {}",
                f.name, self.root.name
            ));
        }
        let inputs = self.resolver_inputs("function", &f.name, &f.tags, &f.inputs)?;
        let mut outputs = Vec::new();
        for o in &f.outputs {
            let ty = match self.root.feature(&o.feature).map(|x| &x.kind) {
                Some(FeatureKind::Scalar { ty, .. }) => *ty,
                _ => {
                    return Err(format!(
                        "function `{}`: {o} is not a scalar feature",
                        f.name
                    ));
                }
            };
            outputs.push((column_name(o), ty));
        }
        self.push(Node::Function {
            resolver: Box::new(f.clone()),
            inputs,
            outputs,
        });
        Ok(())
    }

    fn model(&mut self, m: &ModelResolver) -> Result<(), String> {
        if !m.output.class.eq_ignore_ascii_case(&self.root.name) {
            return Err(format!(
                "model `{}` writes {}, not a feature of the root class {}",
                m.name, m.output, self.root.name
            ));
        }
        let inputs = self.resolver_inputs("model", &m.name, &m.tags, m.model_inputs())?;
        let label_ty = match self.root.feature(&m.output.feature).map(|f| &f.kind) {
            Some(FeatureKind::Scalar { ty, .. }) => *ty,
            _ => ValueType::Int,
        };
        self.push(Node::Model {
            resolver: Box::new(m.clone()),
            inputs,
            label: column_name(&m.output),
            label_ty,
            score: m.score_output.as_ref().map(column_name),
        });
        Ok(())
    }
}

pub fn plan_query(project: &Project, name: &str) -> Result<QueryPlan, EngineError> {
    let query = project
        .query(name)
        .ok_or_else(|| EngineError::unknown_query(project, name))?;
    plan(project, query).map_err(|(_, reason)| EngineError::Plan {
        query: name.into(),
        reason,
    })
}

/// Every scheduled query's planning problem, located at the output it concerns (or the query).
pub fn plan_diagnostics(project: &Project) -> Vec<Diagnostic> {
    project
        .queries
        .iter()
        .filter_map(|q| {
            let (output, reason) = plan(project, q).err()?;
            let span = output
                .and_then(|i| q.output_spans.get(i))
                .unwrap_or(&q.span)
                .clone();
            Some(
                Diagnostic::new(span, format!("scheduled query `{}`: {reason}", q.name)).hint(
                    "every output must be reachable from one resolver per class through relations, aggregations and models",
                ),
            )
        })
        .collect()
}

/// Plans `query`; a failure names the index of the output being planned, if any.
fn plan(project: &Project, query: &ScheduledQuery) -> Result<QueryPlan, (Option<usize>, String)> {
    let first = query
        .output
        .first()
        .ok_or_else(|| (None, "the query has no output".to_string()))?;
    let root = project
        .class(&first.class)
        .ok_or_else(|| (Some(0), format!("unknown class {}", first.class)))?;
    if let Some(i) = query
        .output
        .iter()
        .position(|o| !o.class.eq_ignore_ascii_case(&root.name))
    {
        return Err((
            Some(i),
            format!(
                "outputs {first} and {} belong to different classes; one query computes features of one class",
                query.output[i]
            ),
        ));
    }
    for r in &query.incremental_resolvers {
        if project.sql_resolver(r).is_none() {
            return Err((None, format!("unknown resolver {r}")));
        }
    }
    let mut planner = Planner {
        project,
        query,
        root,
        scans: vec![],
        nodes: vec![],
        visiting: vec![],
        types: HashMap::new(),
    };
    planner.scan(root).map_err(|e| (Some(0), e))?;
    let mut outputs = Vec::new();
    for (i, o) in query.output.iter().enumerate() {
        let column = planner.feature(o).map_err(|e| (Some(i), e))?;
        outputs.push(OutputPlan {
            feature: o.clone(),
            column,
        });
    }
    for r in &query.incremental_resolvers {
        if !planner.scans.iter().any(|s| &s.resolver.name == r) {
            return Err((
                None,
                format!(
                    "incremental resolver {r} provides rows that none of the query's outputs needs"
                ),
            ));
        }
    }
    Ok(QueryPlan {
        query: query.clone(),
        root: root.clone(),
        root_time: root.feature_time.clone(),
        scans: planner.scans,
        nodes: planner.nodes,
        outputs,
    })
}

/// Loads every model resolver's ONNX file and checks it against the resolver, as diagnostics
/// positioned in the resolver file: the features fill the model's inputs in order (each input
/// takes as many as its width), strings only where the model takes strings and numbers only
/// where it takes numbers; a regressor writes a float feature and has no `score_output`.
pub fn validate_models(project: &Project) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // The type of each model input feature, from the plans of the queries that run the model.
    let mut types: HashMap<String, Vec<(FeatureRef, ValueType)>> = HashMap::new();
    for q in &project.queries {
        let Ok(plan) = plan(project, q) else {
            continue;
        };
        for n in &plan.nodes {
            if let Node::Model {
                resolver, inputs, ..
            } = n
            {
                let typed = resolver
                    .model_inputs()
                    .iter()
                    .zip(inputs)
                    .filter_map(|(f, c)| Some((f.clone(), plan.column_type(c)?)))
                    .collect();
                types.entry(resolver.name.clone()).or_insert(typed);
            }
        }
    }
    for m in &project.model_resolvers {
        let file = m
            .model_path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_string();
        let model = match slate_model::OnnxModel::load(&m.model_path) {
            Err(e) => {
                let hint = match &e {
                    slate_model::ModelError::Unsupported { .. } => {
                        "Slate runs the standard ONNX operators and the ai.onnx.ml operators that the scikit-learn, XGBoost and LightGBM converters emit (README: Models)"
                    }
                    slate_model::ModelError::Load { reason, .. } if reason.contains("ZipMap") => {
                        "re-export the model with the option above"
                    }
                    _ => "the file must be an ONNX model; see examples/fraud/training/train.py",
                };
                out.push(Diagnostic::new(m.model_span.clone(), e.to_string()).hint(hint));
                continue;
            }
            Ok(model) => model,
        };
        let given = m.model_inputs().len();
        let signature = model.signature();
        if let Some(n) = model.n_features()
            && n != given
        {
            let layout = signature
                .inputs
                .iter()
                .map(|i| format!("`{}` {}", i.name, i.describe()))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(
                Diagnostic::new(
                    m.input_spans.first().cloned().unwrap_or(m.model_span.clone()),
                    format!(
                        "model `{file}` takes {n} input features ({layout}) but resolver `{}` lists {given} (after the row key {})",
                        m.name, m.inputs[0]
                    ),
                )
                .hint("list exactly the features the model was trained on, in training order; they fill the model's inputs in order"),
            );
            continue;
        }
        // Which model input each listed feature feeds.
        let mut feeds = Vec::with_capacity(given);
        for spec in &signature.inputs {
            for _ in 0..spec.width().unwrap_or(given.saturating_sub(feeds.len())) {
                feeds.push(spec);
            }
        }
        if let Some(typed) = types.get(&m.name) {
            for (k, ((feature, ty), spec)) in typed.iter().zip(&feeds).enumerate() {
                let text = *ty == ValueType::Str;
                let wanted = spec.elem == slate_model::Elem::String;
                if text == wanted {
                    continue;
                }
                let span = m
                    .input_spans
                    .get(k + 1)
                    .cloned()
                    .unwrap_or(m.model_span.clone());
                out.push(
                    Diagnostic::new(
                        span,
                        format!(
                            "{feature} is a {}, but it feeds input `{}` of model `{file}`, which takes {}",
                            ty.name(),
                            spec.name,
                            spec.describe()
                        ),
                    )
                    .hint(match wanted {
                        true => "a string input takes `str` features (a category, a merchant name)",
                        false => "a numeric input takes int, float or bool features",
                    }),
                );
            }
        }
        if let slate_model::ModelKind::Regressor { .. } = model.kind() {
            let label_ty = project
                .class(&m.output.class)
                .and_then(|c| c.feature(&m.output.feature))
                .and_then(|f| match &f.kind {
                    FeatureKind::Scalar { ty, .. } => Some(*ty),
                    _ => None,
                });
            if label_ty.is_some_and(|t| t != ValueType::Float) {
                out.push(
                    Diagnostic::new(
                        m.model_span.clone(),
                        format!(
                            "model `{file}` is a regressor (one number per row), but its output {} is not a float feature",
                            m.output
                        ),
                    )
                    .hint("declare the output feature as `float`"),
                );
            }
            if let Some(score) = &m.score_output {
                out.push(
                    Diagnostic::new(
                        m.model_span.clone(),
                        format!(
                            "model `{file}` is a regressor: it has no class probability for `score_output` ({score})"
                        ),
                    )
                    .hint("remove `score_output`; the regressor's value goes to `output`"),
                );
            }
            if let Some(t) = signature
                .outputs
                .iter()
                .find_map(|o| o.width())
                .filter(|w| *w > 1)
            {
                out.push(Diagnostic::new(
                    m.model_span.clone(),
                    format!(
                        "model `{file}` predicts {t} targets per row; Slate writes one output feature per model"
                    ),
                ));
            }
        }
    }
    out
}
