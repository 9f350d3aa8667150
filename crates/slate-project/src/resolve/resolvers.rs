//! Resolvers: SQL files with their headers, and declarative model resolvers.

use super::*;

impl Resolver {
    pub fn sql_resolver(&mut self, name: &str, file: &Path, parsed: SqlFile) {
        let before = self.diags.len();
        self.sql_resolver_inner(name, file, parsed);
        if self.diags.len() > before || self.diags.iter().any(|d| d.span.file == file) {
            self.failed.push(name.to_string());
        }
    }

    pub(super) fn sql_resolver_inner(&mut self, name: &str, file: &Path, parsed: SqlFile) {
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
        // Chalk writes `timeout: 30s` (a duration) or a number of seconds.
        let timeout_secs = header.get("timeout").and_then(|n| {
            let text = n.as_str().unwrap_or_default();
            let secs = text
                .parse::<i64>()
                .ok()
                .or_else(|| parse_duration_secs(text).ok());
            match secs {
                Some(s) if s > 0 => Some(s),
                _ => {
                    self.err(
                        &n.span,
                        format!("bad timeout `{text}`"),
                        "a positive duration, e.g. `timeout: 5m`",
                    );
                    None
                }
            }
        });
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
            let span = header.span_of("incremental");
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
            timeout_secs,
            sql: parsed.sql,
            columns,
        });
    }

    pub(super) fn incremental(&mut self, node: &Node, class: &FeatureClass) -> Option<Incremental> {
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
                let span = node.span_of("mode");
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
                let span = node.span_of("incremental_timestamp");
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

    /// Resolves a reference from a project file; on failure pushes a diagnostic at `span`.
    /// Resolves a reference from a project file; on failure pushes a diagnostic at `span`.
    pub(super) fn feature_ref(
        &mut self,
        text: &str,
        span: &Span,
    ) -> Option<(FeatureRef, FeatureKind)> {
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
            if windows.is_empty() {
                // The feature's own definition failed and was reported there.
                return None;
            }
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

    pub(super) fn resolve_model(&mut self, file: &Path, node: &Node) -> Option<ModelResolver> {
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
        let name = resolver_name(file, node);
        let kind = node.get("kind").and_then(Node::as_str).unwrap_or("onnx");
        if kind != "onnx" {
            let span = node.span_of("kind");
            self.err(
                &span,
                format!("unknown resolver kind `{kind}`"),
                "resolver files are `kind: onnx` (a model) or `kind: function` (a Rust function registered through the library)",
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

    pub(super) fn resolve_function(
        &mut self,
        file: &Path,
        node: &Node,
    ) -> Option<FunctionResolver> {
        self.expect_map(node, "a function resolver")?;
        self.unknown_keys(
            node,
            "a function resolver",
            &["name", "kind", "inputs", "outputs", "tags", "description"],
        );
        let name = resolver_name(file, node);
        let list = |this: &mut Self, key: &str| -> Option<Vec<(FeatureRef, FeatureKind, Span)>> {
            let items = match node.get(key).map(|n| &n.kind) {
                Some(NodeKind::Seq(items)) if !items.is_empty() => items.clone(),
                _ => {
                    this.err(
                        &node.span,
                        format!("function resolver `{name}` needs a list of `{key}`"),
                        "list features such as `Order.amount`",
                    );
                    return None;
                }
            };
            let mut out = Vec::new();
            let mut ok = true;
            for item in &items {
                match this.feature_ref(item.as_str().unwrap_or_default(), &item.span) {
                    Some((r, kind)) => out.push((r, kind, item.span.clone())),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        };
        let inputs = list(self, "inputs");
        let outputs = list(self, "outputs")?;
        let class = &outputs[0].0.class;
        for (r, kind, span) in &outputs {
            if !matches!(kind, FeatureKind::Scalar { .. })
                || !r.path.is_empty()
                || !r.class.eq_ignore_ascii_case(class)
            {
                self.err(
                    span,
                    format!("`{r}` cannot be an output of function `{name}`"),
                    "outputs are scalar features of one class, the rows the function is given",
                );
                return None;
            }
        }
        let inputs = inputs?;
        Some(FunctionResolver {
            name,
            file: file.to_path_buf(),
            span: node.span.clone(),
            inputs: inputs.into_iter().map(|i| i.0).collect(),
            outputs: outputs.into_iter().map(|o| o.0).collect(),
            tags: node.get("tags").and_then(str_list).unwrap_or_default(),
        })
    }
}

/// A resolver file's `name`, or its file name without the extension.
fn resolver_name(file: &Path, node: &Node) -> String {
    node.get("name")
        .and_then(Node::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            file.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string()
        })
}
