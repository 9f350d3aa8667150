//! Feature classes: scalar features, relations and aggregations (`src/models.yaml`).

use super::*;

impl Resolver {
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

    pub(super) fn feature(
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

    pub(super) fn resolve_aggregates(&mut self) {
        let pending = std::mem::take(&mut self.pending_aggs);
        let mut expressions = Vec::new();
        for p in pending {
            if !self.is_aggregation(p.class, p.expr.as_str().unwrap_or_default()) {
                expressions.push(p);
                continue;
            }
            let PendingAggregate {
                class: idx,
                feature: fname,
                expr,
                windows,
                ty: ty_node,
            } = p;
            let cname = self.classes[idx].name.clone();
            let Some((agg, ty)) = self.aggregation(idx, &expr) else {
                continue;
            };
            let declared = ty_node
                .as_ref()
                .and_then(|t| ValueType::parse(t.as_str().unwrap_or_default()));
            // An int sum may be declared float: the value widens, nothing is lost that the
            // declaration did not ask to lose.
            let widened = agg.func == AggFunc::Sum
                && ty == ValueType::Int
                && declared == Some(ValueType::Float);
            let ty = if widened { ValueType::Float } else { ty };
            if let Some(t) = &ty_node
                && declared != Some(ty)
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
        // Expressions last: they may name aggregations declared anywhere.
        for p in expressions {
            if let Some(kind) = self.expression(&p)
                && let Some(f) = self.classes[p.class]
                    .features
                    .iter_mut()
                    .find(|f| f.name == p.feature)
            {
                f.kind = kind;
            }
        }
    }

    /// Whether `text` is an aggregation (`count(rel)`, `fn(rel.f)`, `now - latest(rel.ts)` over
    /// a has-many relation of the class) rather than a row expression.
    fn is_aggregation(&self, idx: usize, text: &str) -> bool {
        let t = text.trim();
        let call = match t.strip_prefix("now") {
            Some(rest) => match rest.trim_start().strip_prefix('-') {
                Some(c) => c.trim(),
                None => return false,
            },
            None => t,
        };
        let Some((func, arg)) = call.strip_suffix(')').and_then(|c| c.split_once('(')) else {
            // Not a call: a malformed aggregation if it names a function, else an expression.
            return false;
        };
        let known = [
            "count",
            "count_distinct",
            "sum",
            "mean",
            "min",
            "max",
            "latest",
        ];
        let relation = arg.trim().split('.').next().unwrap_or_default();
        known.contains(&func.trim())
            && !arg.contains('(')
            && matches!(
                self.classes[idx].feature(relation).map(|f| &f.kind),
                Some(FeatureKind::HasMany { .. })
            )
    }

    /// A row expression: its names resolved to features of the class (through has-one
    /// relations) or `now`, its SQL checked to parse, its declared type required.
    fn expression(&mut self, p: &PendingAggregate) -> Option<FeatureKind> {
        let text = p.expr.as_str().unwrap_or_default().to_string();
        let cname = self.classes[p.class].name.clone();
        let span = &p.expr.span;
        let Some(ty_node) = &p.ty else {
            self.err(
                span,
                format!("expression feature `{cname}.{}` has no `type`", p.feature),
                format!(
                    "add `type:` ({}); the expression's value is cast to it",
                    ValueType::NAMES
                ),
            );
            return None;
        };
        let ty = ValueType::parse(ty_node.as_str().unwrap_or_default());
        let Some(ty) = ty else {
            self.err(
                &ty_node.span,
                format!("unknown type `{}`", ty_node.as_str().unwrap_or_default()),
                format!("types are {}", ValueType::NAMES),
            );
            return None;
        };
        if let Some(w) = &p.windows {
            self.err(
                &w.span,
                format!(
                    "`{cname}.{}` is an expression; windows belong to aggregations",
                    p.feature
                ),
                "an aggregation is `fn(relation.field)` over a has-many relation",
            );
            return None;
        }
        let dialect = sqlparser::dialect::GenericDialect {};
        if let Err(e) = sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
        {
            self.err(span, format!("cannot read expression `{text}`: {e}"),
                "write SQL over the class's features: `amount * 2`, `coalesce(user.age, 0)`, `now - created_at`");
            return None;
        }
        let mut refs = Vec::new();
        for (start, end) in expression_names(&text) {
            let name = &text[start..end];
            if name.eq_ignore_ascii_case("now") {
                refs.push(ExprRef {
                    start,
                    end,
                    feature: None,
                });
                continue;
            }
            match self.expression_name(p.class, name) {
                Ok(r) => refs.push(ExprRef {
                    start,
                    end,
                    feature: Some(r),
                }),
                Err(why) => {
                    self.err(
                        span,
                        format!("expression of `{cname}.{}` names `{name}`: {why}", p.feature),
                        "name features of this class, `relation.feature` through has-one relations, `feature__window` for a windowed aggregation, or `now`",
                    );
                    return None;
                }
            }
        }
        Some(FeatureKind::Expression {
            ty,
            sql: text,
            refs,
        })
    }

    /// Resolves `user.age` or `num_transactions__1d` from class `idx`.
    fn expression_name(&self, idx: usize, name: &str) -> Result<FeatureRef, String> {
        let parts: Vec<&str> = name.split('.').collect();
        let (path, last) = parts.split_at(parts.len() - 1);
        let mut class = &self.classes[idx];
        for step in path {
            match class.feature(step).map(|f| &f.kind) {
                Some(FeatureKind::HasOne { target, .. }) => {
                    class = self
                        .classes
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(target))
                        .ok_or_else(|| format!("`{target}` is not a class"))?;
                }
                _ => return Err(format!("`{}.{step}` is not a has-one relation", class.name)),
            }
        }
        let last = last[0];
        let (feature, window) = match class.feature(last) {
            Some(_) => (last.to_string(), None),
            None => match last.rsplit_once("__") {
                Some((f, w)) if class.feature(f).is_some() => (f.to_string(), Some(w.to_string())),
                _ => return Err(format!("`{}` has no feature `{last}`", class.name)),
            },
        };
        match class.feature(&feature).map(|f| &f.kind) {
            Some(FeatureKind::HasOne { .. } | FeatureKind::HasMany { .. }) => {
                return Err("a relation is not a value".into());
            }
            // Another expression, not resolved yet: it has no windows.
            Some(FeatureKind::Aggregate { agg, .. })
                if agg.relation.is_empty() && window.is_some() =>
            {
                return Err(format!("`{feature}` has no windows"));
            }
            Some(FeatureKind::Aggregate { agg, .. }) if agg.relation.is_empty() => {}
            Some(FeatureKind::Aggregate { windows, .. }) => {
                let labels: Vec<&str> = windows.iter().map(Window::label).collect();
                let ok = match &window {
                    Some(w) => labels.contains(&w.as_str()),
                    None => labels == ["all"],
                };
                if !ok {
                    return Err(format!(
                        "name one of its windows: {}",
                        labels
                            .iter()
                            .map(|l| format!("{feature}__{l}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            _ if window.is_some() => return Err(format!("`{feature}` has no windows")),
            _ => {}
        }
        Ok(FeatureRef {
            class: self.classes[idx].name.clone(),
            path: path.iter().map(|s| s.to_string()).collect(),
            feature,
            window,
        })
    }

    pub(super) fn aggregation(
        &mut self,
        idx: usize,
        expr: &Node,
    ) -> Option<(Aggregation, ValueType)> {
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
            AggFunc::Mean | AggFunc::TimeSinceLatest => ValueType::Float,
            AggFunc::Sum | AggFunc::Min | AggFunc::Max | AggFunc::Latest => {
                field_ty.unwrap_or(ValueType::Int)
            }
        };
        if func == AggFunc::TimeSinceLatest && field_ty != Some(ValueType::Datetime) {
            return bad(self, "`now - latest(...)` needs a datetime field");
        }
        // Sums and means are of numbers; `count`, `count_distinct`, `min`, `max` and `latest`
        // work over every type, and the last three keep it.
        if let Some(t) = field_ty
            && !matches!(t, ValueType::Int | ValueType::Float)
            && matches!(func, AggFunc::Sum | AggFunc::Mean)
        {
            let f = field.as_deref().unwrap_or_default();
            self.err(
                &expr.span,
                format!(
                    "`{}({relation}.{f})` needs a numeric field, but `{target}.{f}` is {}",
                    func.name(),
                    t.name()
                ),
                "sum and mean take int or float fields; count_distinct, min, max and latest take any type",
            );
            return None;
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

    pub(super) fn check_relations(&mut self) {
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
}

/// Byte ranges of the names an expression reads: identifiers and dotted paths outside string
/// literals that are not SQL keywords, function names or type names after `AS`.
fn expression_names(text: &str) -> Vec<(usize, usize)> {
    const KEYWORDS: [&str; 22] = [
        "and", "or", "not", "null", "true", "false", "case", "when", "then", "else", "end", "is",
        "in", "cast", "as", "interval", "between", "like", "ilike", "distinct", "try_cast",
        "escape",
    ];
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut after_as = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            // Skip a literal (or quoted identifier, left to SQL).
            let q = c;
            i += 1;
            while i < b.len() && b[i] != q {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            let word = &text[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == b'(';
            let keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
            if !call && !keyword && !after_as {
                out.push((start, i));
            }
            after_as = word.eq_ignore_ascii_case("as");
            continue;
        }
        if c.is_ascii_digit() {
            // A number, with any exponent or suffix letters it carries.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !c.is_ascii_whitespace() {
            after_as = false;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::expression_names;

    #[test]
    fn names_skip_keywords_calls_literals_and_types() {
        let t = "coalesce(user.age, 0) * 2.5e3 + CAST(amount AS DOUBLE) - 'x y' + now";
        let names: Vec<&str> = expression_names(t)
            .into_iter()
            .map(|(a, b)| &t[a..b])
            .collect();
        assert_eq!(names, ["user.age", "amount", "now"]);
    }
}
