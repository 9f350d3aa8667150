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
