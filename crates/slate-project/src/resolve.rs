//! Turns raw YAML trees and SQL files into a validated [`Project`], collecting every problem.

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::model::*;
use crate::sql_file::SqlFile;
use crate::yaml::{Node, NodeKind};
use slate_types::{FeatureRef, ValueType, Window, parse_duration_secs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SQL_HEADER_KEYS: &[&str] = &[
    "name",
    "source",
    "resolves",
    "tag",
    "tags",
    "incremental",
    "environment",
    "count",
    "cron",
    "timeout",
    "owner",
    "unique_on",
    "partitioned_by",
];

/// An aggregate feature whose expression is read once every class is known.
struct PendingAggregate {
    class: usize,
    feature: String,
    expr: Node,
    windows: Option<Node>,
    ty: Option<Node>,
}

pub(crate) struct Resolver {
    root: PathBuf,
    pub diags: Vec<Diagnostic>,
    name: String,
    environments: BTreeMap<String, Environment>,
    classes: Vec<FeatureClass>,
    pending_aggs: Vec<PendingAggregate>,
    sql_resolvers: Vec<SqlResolver>,
    model_nodes: Vec<(PathBuf, Node)>,
    query_nodes: Option<Node>,
    /// Resolvers whose own files have problems: references to them are not reported again.
    failed: Vec<String>,
    model_nodes_total: usize,
}

fn str_list(node: &Node) -> Option<Vec<String>> {
    match &node.kind {
        NodeKind::Scalar(s) => Some(vec![s.clone()]),
        NodeKind::Seq(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        NodeKind::Null => Some(vec![]),
        NodeKind::Map(_) => None,
    }
}

fn as_bool(node: &Node) -> Option<bool> {
    match node.as_str()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

impl Resolver {
    pub fn new(root: &Path) -> Self {
        Resolver {
            root: root.to_path_buf(),
            diags: Vec::new(),
            name: String::new(),
            environments: BTreeMap::new(),
            classes: Vec::new(),
            pending_aggs: Vec::new(),
            sql_resolvers: Vec::new(),
            model_nodes: Vec::new(),
            query_nodes: None,
            failed: Vec::new(),
            model_nodes_total: 0,
        }
    }

    fn err(&mut self, span: &Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::new(span.clone(), msg).hint(hint));
    }

    fn expect_map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        let entries = node.entries();
        if entries.is_none() {
            self.err(
                &node.span,
                format!("{what} must be a mapping, found {}", node.describe()),
                "write `key: value` lines",
            );
        }
        entries
    }

    fn unknown_keys(&mut self, node: &Node, what: &str, known: &[&str]) {
        for (k, _) in node.entries().unwrap_or_default() {
            let key = k.as_str().unwrap_or_default();
            if !known.contains(&key) {
                self.err(
                    &k.span,
                    format!("unknown key `{key}` in {what}"),
                    format!("expected one of: {}", known.join(", ")),
                );
            }
        }
    }

    pub fn project_file(&mut self, node: &Node) {
        let Some(entries) = self.expect_map(node, "slate.yaml") else {
            return;
        };
        self.unknown_keys(node, "slate.yaml", &["name", "environments"]);
        self.name = node
            .get("name")
            .and_then(Node::as_str)
            .unwrap_or("slate")
            .to_string();
        let Some(envs) = node.get("environments") else {
            self.err(
                &entries
                    .first()
                    .map(|e| e.0.span.clone())
                    .unwrap_or(node.span.clone()),
                "slate.yaml has no `environments`",
                "add `environments: {default: {sources: ...}}`",
            );
            return;
        };
        let Some(envs) = self.expect_map(envs, "environments") else {
            return;
        };
        for (k, v) in envs {
            let name = k.as_str().unwrap_or_default().to_string();
            if let Some(env) = self.environment(&name, v) {
                self.environments.insert(name, env);
            }
        }
        if !self.environments.contains_key("default") && self.diags.is_empty() {
            self.err(
                &node.span,
                "no `default` environment",
                "every project needs an environment named `default`",
            );
        }
    }

    fn environment(&mut self, name: &str, node: &Node) -> Option<Environment> {
        self.expect_map(node, "an environment")?;
        self.unknown_keys(node, "an environment", &["state_dir", "sources"]);
        let state_dir = node
            .get("state_dir")
            .and_then(Node::as_str)
            .unwrap_or(".slate");
        let mut sources = BTreeMap::new();
        if let Some(srcs) = node
            .get("sources")
            .and_then(|s| self.expect_map(s, "sources"))
        {
            for (k, v) in srcs {
                let sname = k.as_str().unwrap_or_default().to_string();
                self.unknown_keys(v, "a source", &["kind", "path", "dialect"]);
                let kind = v.get("kind").and_then(Node::as_str).unwrap_or("embedded");
                if kind != "embedded" {
                    self.err(
                        &v.span,
                        format!("source kind `{kind}` is not available"),
                        "use `kind: embedded` (local Parquet and CSV files)",
                    );
                    continue;
                }
                let path = v.get("path").and_then(Node::as_str).unwrap_or("data");
                let dialect = v
                    .get("dialect")
                    .and_then(Node::as_str)
                    .unwrap_or("snowflake")
                    .to_string();
                let span = v
                    .get("path")
                    .map(|p| p.span.clone())
                    .unwrap_or(v.span.clone());
                sources.insert(
                    sname,
                    SourceConfig::Embedded {
                        path: PathBuf::from(path),
                        dialect,
                        span,
                    },
                );
            }
        }
        Some(Environment {
            name: name.to_string(),
            sources,
            state_dir: PathBuf::from(state_dir),
        })
    }

    pub fn models_file(&mut self, node: &Node) {
        let Some(classes) = self.expect_map(node, "src/models.yaml") else {
            return;
        };
        for (k, v) in classes {
            let cname = k.as_str().unwrap_or_default().to_string();
            let Some(feats) = self.expect_map(v, &format!("class `{cname}`")) else {
                continue;
            };
            let idx = self.classes.len();
            let mut class = FeatureClass {
                name: cname.clone(),
                features: Vec::new(),
                primary_key: String::new(),
                feature_time: None,
            };
            for (fk, fv) in feats {
                let fname = fk.as_str().unwrap_or_default().to_string();
                if let Some(kind) = self.feature(idx, &cname, &fname, fv, &mut class) {
                    class.features.push(Feature {
                        name: fname,
                        kind,
                        span: fk.span.clone(),
                    });
                }
            }
            if class.primary_key.is_empty() {
                if class.feature("id").is_some() {
                    class.primary_key = "id".into();
                } else {
                    self.err(
                        &k.span,
                        format!("class `{cname}` has no primary key"),
                        "mark one feature `primary_key: true`, or name it `id`",
                    );
                }
            }
            self.classes.push(class);
        }
    }

    fn feature(
        &mut self,
        idx: usize,
        cname: &str,
        fname: &str,
        node: &Node,
        class: &mut FeatureClass,
    ) -> Option<FeatureKind> {
        let ty_of = |this: &mut Self, n: &Node| -> Option<ValueType> {
            let t = n.as_str().unwrap_or_default();
            let ty = ValueType::parse(t);
            if ty.is_none() {
                this.err(
                    &n.span,
                    format!("unknown type `{t}` for feature `{cname}.{fname}`"),
                    format!("types are {}", ValueType::NAMES),
                );
            }
            ty
        };
        if node.as_str().is_some() {
            return Some(FeatureKind::Scalar {
                ty: ty_of(self, node)?,
                default: None,
            });
        }
        self.expect_map(node, &format!("feature `{cname}.{fname}`"))?;
        self.unknown_keys(
            node,
            &format!("feature `{cname}.{fname}`"),
            &[
                "type",
                "primary_key",
                "feature_time",
                "has_one",
                "has_many",
                "foreign_key",
                "expr",
                "windows",
                "default",
                "description",
            ],
        );
        for (flag, field) in [("primary_key", 0), ("feature_time", 1)] {
            if node.get(flag).and_then(as_bool) == Some(true) {
                if field == 0 {
                    class.primary_key = fname.into()
                } else {
                    class.feature_time = Some(fname.into())
                }
            }
        }
        for rel in ["has_one", "has_many"] {
            if let Some(target) = node.get(rel) {
                let Some(fk) = node.get("foreign_key").and_then(Node::as_str) else {
                    self.err(
                        &target.span,
                        format!("relation `{cname}.{fname}` needs a `foreign_key`"),
                        if rel == "has_one" {
                            "name the feature of this class that holds the related id"
                        } else {
                            "name the feature of the related class that holds this class's id"
                        },
                    );
                    return None;
                };
                let target = target.as_str().unwrap_or_default().to_string();
                let foreign_key = fk.to_string();
                return Some(if rel == "has_one" {
                    FeatureKind::HasOne {
                        target,
                        foreign_key,
                    }
                } else {
                    FeatureKind::HasMany {
                        target,
                        foreign_key,
                    }
                });
            }
        }
        if let Some(expr) = node.get("expr") {
            self.pending_aggs.push(PendingAggregate {
                class: idx,
                feature: fname.to_string(),
                expr: expr.clone(),
                windows: node.get("windows").cloned(),
                ty: node.get("type").cloned(),
            });
            // Placeholder; replaced once every class is known.
            return Some(FeatureKind::Aggregate {
                ty: ValueType::Int,
                agg: Aggregation {
                    func: AggFunc::Count,
                    relation: String::new(),
                    field: None,
                },
                windows: vec![],
            });
        }
        let Some(t) = node.get("type") else {
            self.err(
                &node.span,
                format!("feature `{cname}.{fname}` has no `type`"),
                format!("add `type:` ({})", ValueType::NAMES),
            );
            return None;
        };
        let ty = ty_of(self, t)?;
        let default = match node.get("default") {
            None => None,
            Some(d) => match d.as_str().and_then(|s| s.parse::<f64>().ok()) {
                Some(v) => Some(v),
                None => {
                    self.err(
                        &d.span,
                        format!("default of `{cname}.{fname}` is not a number"),
                        "defaults feed models and must be numeric",
                    );
                    None
                }
            },
        };
        Some(FeatureKind::Scalar { ty, default })
    }

    fn resolve_aggregates(&mut self) {
        let pending = std::mem::take(&mut self.pending_aggs);
        for PendingAggregate {
            class: idx,
            feature: fname,
            expr,
            windows,
            ty: ty_node,
        } in pending
        {
            let cname = self.classes[idx].name.clone();
            let Some((agg, ty)) = self.aggregation(idx, &expr) else {
                continue;
            };
            if let Some(t) = &ty_node
                && ValueType::parse(t.as_str().unwrap_or_default()) != Some(ty)
            {
                self.err(
                    &t.span,
                    format!(
                        "`{cname}.{fname}` is declared `{}` but {} gives `{}`",
                        t.as_str().unwrap_or_default(),
                        agg.func.name(),
                        ty.name()
                    ),
                    format!("write `type: {}` or drop the type", ty.name()),
                );
            }
            let mut ws = Vec::new();
            match &windows {
                None => ws.push(Window::All),
                Some(n) => {
                    for item in match &n.kind {
                        NodeKind::Seq(items) => items.clone(),
                        _ => vec![n.clone()],
                    } {
                        match Window::parse(item.as_str().unwrap_or_default()) {
                            Ok(w) => ws.push(w),
                            Err(e) => self.err(
                                &item.span,
                                format!("bad window for `{cname}.{fname}`: {e}"),
                                "windows look like `1d`, `10d`, `30d`, `12h` or `all`",
                            ),
                        }
                    }
                }
            }
            if let Some(f) = self.classes[idx]
                .features
                .iter_mut()
                .find(|f| f.name == fname)
            {
                f.kind = FeatureKind::Aggregate {
                    ty,
                    agg,
                    windows: ws,
                };
            }
        }
    }

    fn aggregation(&mut self, idx: usize, expr: &Node) -> Option<(Aggregation, ValueType)> {
        let text = expr.as_str().unwrap_or_default().trim().to_string();
        let bad = |this: &mut Self, why: &str| {
            this.err(&expr.span, format!("cannot read expression `{text}`: {why}"),
                "write `count(rel)`, `count_distinct(rel.f)`, `sum|mean|min|max|latest(rel.f)` or `now - latest(rel.ts)`");
            None
        };
        let (since, call) = match text.strip_prefix("now") {
            Some(rest) => match rest.trim_start().strip_prefix('-') {
                Some(call) => (true, call.trim().to_string()),
                None => return bad(self, "expected `now - latest(...)`"),
            },
            None => (false, text.clone()),
        };
        let Some((func, arg)) = call.strip_suffix(')').and_then(|c| c.split_once('(')) else {
            return bad(self, "expected a function call");
        };
        let func = match (since, func.trim()) {
            (true, "latest") => AggFunc::TimeSinceLatest,
            (true, _) => return bad(self, "only `latest(...)` can be subtracted from `now`"),
            (false, "count") => AggFunc::Count,
            (false, "count_distinct") => AggFunc::CountDistinct,
            (false, "sum") => AggFunc::Sum,
            (false, "mean") => AggFunc::Mean,
            (false, "min") => AggFunc::Min,
            (false, "max") => AggFunc::Max,
            (false, "latest") => AggFunc::Latest,
            (false, other) => return bad(self, &format!("unknown function `{other}`")),
        };
        let (relation, field) = match arg.trim().split_once('.') {
            Some((r, f)) => (r.to_string(), Some(f.to_string())),
            None => (arg.trim().to_string(), None),
        };
        let class = &self.classes[idx];
        let target = match class.feature(&relation).map(|f| &f.kind) {
            Some(FeatureKind::HasMany { target, .. }) => target.clone(),
            _ => {
                let cname = class.name.clone();
                return bad(
                    self,
                    &format!("`{relation}` is not a has-many relation of `{cname}`"),
                );
            }
        };
        let field_ty = match (
            &field,
            self.classes
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&target)),
        ) {
            (_, None) => return None, // reported with the relation
            (None, _) if func == AggFunc::Count => None,
            (None, _) => return bad(self, "this function needs a field: `rel.field`"),
            (Some(f), Some(t)) => match t.feature(f).map(|x| &x.kind) {
                Some(FeatureKind::Scalar { ty, .. }) => Some(*ty),
                _ => return bad(self, &format!("`{target}` has no scalar feature `{f}`")),
            },
        };
        let ty = match func {
            AggFunc::Count | AggFunc::CountDistinct => ValueType::Int,
            AggFunc::Sum | AggFunc::Mean | AggFunc::TimeSinceLatest => ValueType::Float,
            AggFunc::Min | AggFunc::Max | AggFunc::Latest => field_ty.unwrap_or(ValueType::Int),
        };
        if func == AggFunc::TimeSinceLatest && field_ty != Some(ValueType::Datetime) {
            return bad(self, "`now - latest(...)` needs a datetime field");
        }
        Some((
            Aggregation {
                func,
                relation,
                field,
            },
            ty,
        ))
    }

    fn check_relations(&mut self) {
        let mut problems = Vec::new();
        for c in &self.classes {
            for f in &c.features {
                let (target, fk, many) = match &f.kind {
                    FeatureKind::HasOne {
                        target,
                        foreign_key,
                    } => (target, foreign_key, false),
                    FeatureKind::HasMany {
                        target,
                        foreign_key,
                    } => (target, foreign_key, true),
                    _ => continue,
                };
                let Some(t) = self
                    .classes
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(target))
                else {
                    problems.push((
                        f.span.clone(),
                        format!(
                            "relation `{}.{}` points to unknown class `{target}`",
                            c.name, f.name
                        ),
                    ));
                    continue;
                };
                let holder = if many { t } else { c };
                if !matches!(
                    holder.feature(fk).map(|x| &x.kind),
                    Some(FeatureKind::Scalar { .. })
                ) {
                    problems.push((
                        f.span.clone(),
                        format!(
                            "relation `{}.{}`: `{}` has no scalar feature `{fk}`",
                            c.name, f.name, holder.name
                        ),
                    ));
                }
            }
        }
        let classes: Vec<String> = self.classes.iter().map(|c| c.name.clone()).collect();
        for (span, msg) in problems {
            self.err(&span, msg, format!("classes are: {}", classes.join(", ")));
        }
    }

    pub fn sql_resolver(&mut self, name: &str, file: &Path, parsed: SqlFile) {
        let before = self.diags.len();
        self.sql_resolver_inner(name, file, parsed);
        if self.diags.len() > before || self.diags.iter().any(|d| d.span.file == file) {
            self.failed.push(name.to_string());
        }
    }

    fn sql_resolver_inner(&mut self, name: &str, file: &Path, parsed: SqlFile) {
        let Some(header) = parsed.header else {
            if !self.diags.iter().any(|d| d.span.file == file) {
                self.err(
                    &Span::file(file),
                    "SQL resolver has no header",
                    "start the file with `-- source: NAME` and `-- resolves: Class` comment lines",
                );
            }
            return;
        };
        if self.expect_map(&header, "the SQL header").is_none() {
            return;
        }
        self.unknown_keys(&header, "the SQL header", SQL_HEADER_KEYS);
        let get = |k: &str| header.get(k).and_then(Node::as_str).map(str::to_string);
        let Some(source) = get("source") else {
            return self.err(
                &header.span,
                "SQL resolver has no `source`",
                "add `-- source: NAME`, naming a source of slate.yaml",
            );
        };
        let Some(resolves) = header.get("resolves") else {
            return self.err(
                &header.span,
                "SQL resolver has no `resolves`",
                "add `-- resolves: Class`",
            );
        };
        let rname = resolves.as_str().unwrap_or_default().to_string();
        let Some(class) = self
            .classes
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&rname))
            .cloned()
        else {
            let names: Vec<_> = self.classes.iter().map(|c| c.name.as_str()).collect();
            return self.err(
                &resolves.span,
                format!("`resolves: {rname}` names no feature class"),
                format!("classes in src/models.yaml: {}", names.join(", ")),
            );
        };
        let tags = header
            .get("tags")
            .or(header.get("tag"))
            .and_then(str_list)
            .unwrap_or_default();
        let environments = header
            .get("environment")
            .and_then(str_list)
            .unwrap_or_default();
        let incremental = header
            .get("incremental")
            .and_then(|n| self.incremental(n, &class));
        let mut columns = Vec::new();
        for (col, span) in parsed.columns.unwrap_or_default() {
            if class
                .scalar_features()
                .any(|(f, _)| f.eq_ignore_ascii_case(&col))
            {
                columns.push(col.to_lowercase());
            } else {
                let names: Vec<_> = class.scalar_features().map(|(f, _)| f).collect();
                self.err(
                    &span,
                    format!("output column `{col}` is not a feature of `{}`", class.name),
                    format!("rename it with `AS`, to one of: {}", names.join(", ")),
                );
            }
        }
        if let Some(inc) = &incremental
            && !columns.is_empty()
            && !columns.contains(&inc.column)
        {
            let span = header
                .get("incremental")
                .map(|n| n.span.clone())
                .unwrap_or(header.span.clone());
            self.err(
                &span,
                format!(
                    "incremental_column `{}` is not among the query's output columns",
                    inc.column
                ),
                "select the column the watermark follows",
            );
        }
        self.sql_resolvers.push(SqlResolver {
            name: get("name").unwrap_or_else(|| name.to_string()),
            file: file.to_path_buf(),
            description: parsed.description,
            source,
            resolves: class.name.clone(),
            tags,
            environments,
            incremental,
            sql: parsed.sql,
            columns,
        });
    }

    fn incremental(&mut self, node: &Node, class: &FeatureClass) -> Option<Incremental> {
        self.expect_map(node, "incremental")?;
        self.unknown_keys(
            node,
            "incremental",
            &[
                "mode",
                "lookback_period",
                "incremental_column",
                "incremental_timestamp",
            ],
        );
        let mode = match node.get("mode").and_then(Node::as_str).unwrap_or("row") {
            "row" => IncrementalMode::Row,
            "group" => IncrementalMode::Group,
            "parameter" => IncrementalMode::Parameter,
            other => {
                let span = node
                    .get("mode")
                    .map(|n| n.span.clone())
                    .unwrap_or(node.span.clone());
                self.err(
                    &span,
                    format!("unknown incremental mode `{other}`"),
                    "use `row`, `group` or `parameter`",
                );
                return None;
            }
        };
        let lookback_secs = match node.get("lookback_period") {
            None => 0,
            Some(n) => match parse_duration_secs(n.as_str().unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => {
                    self.err(
                        &n.span,
                        format!("bad lookback_period: {e}"),
                        "e.g. `lookback_period: 60m`",
                    );
                    return None;
                }
            },
        };
        let column = match node.get("incremental_column").and_then(Node::as_str) {
            Some(c) => c.to_lowercase(),
            None => match (&class.feature_time, mode) {
                (Some(ft), _) => ft.clone(),
                (None, IncrementalMode::Parameter) => String::new(),
                (None, _) => {
                    self.err(
                        &node.span,
                        "incremental resolver needs `incremental_column`",
                        format!("class `{}` has no feature time to default to", class.name),
                    );
                    return None;
                }
            },
        };
        let timestamp = match node
            .get("incremental_timestamp")
            .and_then(Node::as_str)
            .unwrap_or("feature_time")
        {
            "feature_time" => IncrementalTimestamp::FeatureTime,
            "resolver_execution_time" => IncrementalTimestamp::ResolverExecutionTime,
            other => {
                let span = node
                    .get("incremental_timestamp")
                    .map(|n| n.span.clone())
                    .unwrap_or(node.span.clone());
                self.err(
                    &span,
                    format!("unknown incremental_timestamp `{other}`"),
                    "use `feature_time` or `resolver_execution_time`",
                );
                return None;
            }
        };
        Some(Incremental {
            mode,
            lookback_secs,
            column,
            timestamp,
        })
    }

    pub fn model_resolver(&mut self, file: &Path, node: &Node) {
        self.model_nodes.push((file.to_path_buf(), node.clone()));
    }

    pub fn queries_file(&mut self, node: &Node) {
        self.query_nodes = Some(node.clone());
    }

    /// Resolves a reference from a project file; on failure pushes a diagnostic at `span`.
    fn feature_ref(&mut self, text: &str, span: &Span) -> Option<(FeatureRef, FeatureKind)> {
        let r = match FeatureRef::parse(text) {
            Ok(r) => r,
            Err(e) => {
                self.err(
                    span,
                    e.to_string(),
                    "e.g. `Transaction.user.num_transactions[\"1d\"]`",
                );
                return None;
            }
        };
        let Some(mut class) = self
            .classes
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&r.class))
        else {
            let names: Vec<_> = self.classes.iter().map(|c| c.name.as_str()).collect();
            self.err(
                span,
                format!("unknown feature `{text}`: no class `{}`", r.class),
                format!("classes: {}", names.join(", ")),
            );
            return None;
        };
        for step in &r.path {
            match class.feature(step).map(|f| &f.kind) {
                Some(FeatureKind::HasOne { target, .. }) => match self
                    .classes
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(target))
                {
                    Some(c) => class = c,
                    None => return None,
                },
                _ => {
                    let cname = class.name.clone();
                    self.err(
                        span,
                        format!(
                            "unknown feature `{text}`: `{cname}.{step}` is not a has-one relation"
                        ),
                        "only has-one relations can be followed in a reference",
                    );
                    return None;
                }
            }
        }
        let Some(feature) = class.feature(&r.feature) else {
            let names: Vec<_> = class.features.iter().map(|f| f.name.as_str()).collect();
            let cname = class.name.clone();
            self.err(
                span,
                format!(
                    "unknown feature `{text}`: `{cname}` has no feature `{}`",
                    r.feature
                ),
                format!("features of `{cname}`: {}", names.join(", ")),
            );
            return None;
        };
        let kind = feature.kind.clone();
        if let FeatureKind::Aggregate { windows, .. } = &kind {
            let labels: Vec<_> = windows.iter().map(Window::label).collect();
            let ok = match &r.window {
                Some(w) => labels.contains(&w.as_str()),
                None => labels == ["all"],
            };
            if !ok {
                self.err(
                    span,
                    format!(
                        "`{text}` needs one of the windows {}",
                        labels
                            .iter()
                            .map(|l| format!("[\"{l}\"]"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "windows are declared under `windows:` in src/models.yaml",
                );
                return None;
            }
        } else if r.window.is_some() {
            self.err(
                span,
                format!("`{text}`: feature `{}` has no windows", r.feature),
                "drop the `[\"...\"]`",
            );
            return None;
        }
        Some((r, kind))
    }

    fn resolve_model(&mut self, file: &Path, node: &Node) -> Option<ModelResolver> {
        self.expect_map(node, "a model resolver")?;
        self.unknown_keys(
            node,
            "a model resolver",
            &[
                "name",
                "kind",
                "model",
                "inputs",
                "output",
                "score_output",
                "tags",
                "description",
            ],
        );
        let name = node
            .get("name")
            .and_then(Node::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                file.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string()
            });
        let kind = node.get("kind").and_then(Node::as_str).unwrap_or("onnx");
        if kind != "onnx" {
            let span = node
                .get("kind")
                .map(|n| n.span.clone())
                .unwrap_or(node.span.clone());
            self.err(
                &span,
                format!("unknown resolver kind `{kind}`"),
                "declarative resolvers are `kind: onnx`; Rust resolvers are registered in code",
            );
        }
        let Some(model) = node.get("model") else {
            self.err(
                &node.span,
                format!("model resolver `{name}` has no `model`"),
                "add `model: models/NAME.onnx` (relative to the project)",
            );
            return None;
        };
        let model_path = self.root.join(model.as_str().unwrap_or_default());
        if !model_path.is_file() {
            self.err(
                &model.span,
                format!(
                    "model file `{}` does not exist",
                    model.as_str().unwrap_or_default()
                ),
                "paths are relative to the project directory (where slate.yaml is)",
            );
        }
        let mut inputs = Vec::new();
        let mut input_spans = Vec::new();
        let mut defaults = Vec::new();
        let items = match node.get("inputs").map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) => items.clone(),
            _ => {
                self.err(
                    &node.span,
                    format!("model resolver `{name}` needs a list of `inputs`"),
                    "list the row key first, then the model's features in order",
                );
                return None;
            }
        };
        let mut ok = true;
        for item in &items {
            match self.feature_ref(item.as_str().unwrap_or_default(), &item.span) {
                Some((r, kind)) => {
                    if !inputs.is_empty() {
                        defaults.push(match kind {
                            FeatureKind::Scalar { default, .. } => default,
                            _ => None,
                        });
                    }
                    inputs.push(r);
                    input_spans.push(item.span.clone());
                }
                None => ok = false,
            }
        }
        if let (Some(first), Some(span)) = (inputs.first(), input_spans.first()) {
            let pk = self
                .classes
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&first.class))
                .map(|c| c.primary_key.clone());
            if !first.path.is_empty() || pk.as_deref() != Some(first.feature.as_str()) {
                self.err(
                    span,
                    format!(
                        "the first input `{first}` must be the primary key of `{}`",
                        first.class
                    ),
                    "the key identifies rows and is not passed to the model",
                );
                ok = false;
            }
        }
        let out = |this: &mut Self, key: &str| -> Option<FeatureRef> {
            let n = node.get(key)?;
            let (r, kind) = this.feature_ref(n.as_str().unwrap_or_default(), &n.span)?;
            if !matches!(kind, FeatureKind::Scalar { .. }) || !r.path.is_empty() {
                this.err(
                    &n.span,
                    format!("`{r}` cannot be a model output"),
                    "outputs are scalar features of the row's own class",
                );
                return None;
            }
            Some(r)
        };
        let Some(output) = out(self, "output") else {
            if node.get("output").is_none() {
                self.err(
                    &node.span,
                    format!("model resolver `{name}` has no `output`"),
                    "add `output: Class.feature`",
                );
            }
            return None;
        };
        let score_output = out(self, "score_output");
        let tags = node.get("tags").and_then(str_list).unwrap_or_default();
        ok.then_some(ModelResolver {
            name,
            file: file.to_path_buf(),
            model_path,
            model_span: model.span.clone(),
            inputs,
            input_spans,
            defaults,
            output,
            score_output,
            tags,
        })
    }

    fn resolve_queries(&mut self, node: &Node, models: &[ModelResolver]) -> Vec<ScheduledQuery> {
        let items = match &node.kind {
            NodeKind::Seq(items) => items.clone(),
            _ => {
                self.err(
                    &node.span,
                    "src/queries.yaml must be a list of scheduled queries",
                    "start each query with `- name: ...`",
                );
                return vec![];
            }
        };
        let mut out = Vec::new();
        for q in &items {
            if self.expect_map(q, "a scheduled query").is_none() {
                continue;
            }
            self.unknown_keys(
                q,
                "a scheduled query",
                &[
                    "name",
                    "schedule",
                    "output",
                    "store_online",
                    "store_offline",
                    "tags",
                    "incremental_resolvers",
                    "lower_bound",
                    "description",
                ],
            );
            let Some(name) = q.get("name").and_then(Node::as_str).map(str::to_string) else {
                self.err(&q.span, "scheduled query has no `name`", "add `name: ...`");
                continue;
            };
            let schedule = q.get("schedule").and_then(|s| {
                let text = s.as_str().unwrap_or_default();
                match text.parse::<croner::Cron>() {
                    Ok(_) => Some(text.to_string()),
                    Err(e) => {
                        self.err(&s.span, format!("bad cron schedule `{text}`: {e}"), "five fields: minute hour day-of-month month day-of-week, e.g. `0 0 * * *`");
                        None
                    }
                }
            });
            let mut output = Vec::new();
            for o in q
                .get("output")
                .map(|n| match &n.kind {
                    NodeKind::Seq(i) => i.clone(),
                    _ => vec![n.clone()],
                })
                .unwrap_or_default()
            {
                if let Some((r, _)) = self.feature_ref(o.as_str().unwrap_or_default(), &o.span) {
                    let produced = models.iter().any(|m| {
                        same_feature(&m.output, &r)
                            || m.score_output.as_ref().is_some_and(|s| same_feature(s, &r))
                    });
                    if !produced && models.len() == self.model_nodes_total {
                        self.err(
                            &o.span,
                            format!("no resolver computes `{r}`"),
                            "scheduled query outputs must be produced by a model resolver",
                        );
                    }
                    output.push(r);
                }
            }
            let incremental_resolvers = q
                .get("incremental_resolvers")
                .and_then(str_list)
                .unwrap_or_default();
            for r in &incremental_resolvers {
                match self.sql_resolvers.iter().find(|s| &s.name == r) {
                    Some(s) if s.incremental.is_some() => {}
                    _ if self.failed.contains(r) => {}
                    found => {
                        let span = q
                            .get("incremental_resolvers")
                            .map(|n| n.span.clone())
                            .unwrap_or(q.span.clone());
                        let why = if found.is_some() {
                            "has no `incremental:` header"
                        } else {
                            "is not a SQL resolver of this project"
                        };
                        self.err(
                            &span,
                            format!("incremental resolver `{r}` {why}"),
                            "name a `.chalk.sql` resolver with an `incremental:` header",
                        );
                    }
                }
            }
            let lower_bound_micros = q.get("lower_bound").and_then(|n| {
                let t = n.as_str().unwrap_or_default();
                match parse_rfc3339_micros(t) {
                    Some(v) => Some(v),
                    None => {
                        self.err(
                            &n.span,
                            format!("bad lower_bound `{t}`"),
                            "write an RFC 3339 time, e.g. `2026-01-01T00:00:00Z`",
                        );
                        None
                    }
                }
            });
            out.push(ScheduledQuery {
                name,
                span: q.span.clone(),
                schedule,
                output,
                store_online: q.get("store_online").and_then(as_bool).unwrap_or(false),
                store_offline: q.get("store_offline").and_then(as_bool).unwrap_or(false),
                tags: q.get("tags").and_then(str_list).unwrap_or_default(),
                incremental_resolvers,
                lower_bound_micros,
            });
        }
        out
    }

    fn check_sources(&mut self) {
        let names: Vec<String> = self
            .environments
            .values()
            .flat_map(|e| e.sources.keys().cloned())
            .collect();
        let bad: Vec<_> = self
            .sql_resolvers
            .iter()
            .filter(|r| !names.contains(&r.source))
            .map(|r| (r.file.clone(), r.source.clone()))
            .collect();
        for (file, source) in bad {
            self.err(
                &Span::file(file),
                format!("source `{source}` is not configured in slate.yaml"),
                format!("configured sources: {}", names.join(", ")),
            );
        }
    }

    pub fn finish(mut self) -> Result<Project, Diagnostics> {
        self.resolve_aggregates();
        self.check_relations();
        self.check_sources();
        let mut models = Vec::new();
        self.model_nodes_total = self.model_nodes.len();
        for (file, node) in std::mem::take(&mut self.model_nodes) {
            if let Some(m) = self.resolve_model(&file, &node) {
                models.push(m);
            }
        }
        let queries = match self.query_nodes.take() {
            Some(n) => self.resolve_queries(&n, &models),
            None => vec![],
        };
        if !self.diags.is_empty() {
            let mut d = Diagnostics(self.diags);
            d.sort();
            return Err(d);
        }
        Ok(Project {
            root: self.root,
            name: self.name,
            environments: self.environments,
            classes: self.classes,
            sql_resolvers: self.sql_resolvers,
            model_resolvers: models,
            queries,
        })
    }
}

/// `2026-01-01T00:00:00Z` (or a date alone) to microseconds since the epoch, UTC.
pub fn parse_rfc3339_micros(t: &str) -> Option<i64> {
    let (date, time) = t.trim().split_once('T').unwrap_or((t.trim(), "00:00:00Z"));
    let time = time.strip_suffix('Z').unwrap_or(time);
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let tm: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, da], [h, mi, s]) = (d.as_slice(), tm.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(mo) || !(1..=31).contains(da) || *h > 23 || *mi > 59 || *s > 60 {
        return None;
    }
    let (y, m) = if *mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (*y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + mi * 60 + s) * 1_000_000)
}
