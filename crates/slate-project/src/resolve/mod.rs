//! Turns raw YAML trees and SQL files into a validated [`Project`], collecting every problem.

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::model::*;
use crate::sql_file::SqlFile;
use crate::yaml::{Node, NodeKind};
use slate_types::{FeatureRef, ValueType, Window, parse_duration_secs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod classes;
mod project;
mod resolvers;

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
    serve: ServeConfig,
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
            serve: ServeConfig::default(),
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
        self.unknown_keys_but(node, what, known, &[]);
    }

    /// [`Self::unknown_keys`], leaving out `reported`: keys that have a diagnostic of their own.
    fn unknown_keys_but(&mut self, node: &Node, what: &str, known: &[&str], reported: &[&str]) {
        for (k, _) in node.entries().unwrap_or_default() {
            let key = k.as_str().unwrap_or_default();
            if !known.contains(&key) && !reported.contains(&key) {
                self.err(
                    &k.span,
                    format!("unknown key `{key}` in {what}"),
                    format!("expected one of: {}", known.join(", ")),
                );
            }
        }
    }

    pub fn model_resolver(&mut self, file: &Path, node: &Node) {
        self.model_nodes.push((file.to_path_buf(), node.clone()));
    }

    pub fn queries_file(&mut self, node: &Node) {
        self.query_nodes = Some(node.clone());
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
        let mut functions = Vec::new();
        for (file, node) in std::mem::take(&mut self.model_nodes) {
            if node.get("kind").and_then(Node::as_str) == Some("function") {
                if let Some(f) = self.resolve_function(&file, &node) {
                    functions.push(f);
                }
            } else if let Some(m) = self.resolve_model(&file, &node) {
                models.push(m);
            }
        }
        let queries = match self.query_nodes.take() {
            Some(n) => self.resolve_queries(&n),
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
            serve: self.serve,
            environments: self.environments,
            classes: self.classes,
            sql_resolvers: self.sql_resolvers,
            model_resolvers: models,
            function_resolvers: functions,
            queries,
        })
    }
}
