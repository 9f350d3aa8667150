//! YAML trees that remember where each node came from, built on saphyr's marked loader.

use crate::diag::{Diagnostic, Span};
use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Null,
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys keep their own positions.
    Map(Vec<(Node, Node)>),
}

/// Parses `text` (the contents of `file`). `offsets[i]` is added to the column of nodes on line
/// `i + 1`, for YAML embedded in SQL comments.
pub(crate) fn parse(
    file: &Path,
    text: &str,
    offsets: &[usize],
) -> Result<Option<Node>, Diagnostic> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| {
        let m = e.marker();
        let line = m.line().max(1);
        let col = m.col() + 1 + offsets.get(line - 1).copied().unwrap_or(0);
        Diagnostic::new(
            Span::new(file, line, col),
            format!("malformed YAML: {}", e.info()),
        )
        .hint("check indentation and that every `key: value` pair has a space after the colon")
    })?;
    Ok(docs.into_iter().next().map(|d| convert(file, &d, offsets)))
}

fn convert(file: &Path, n: &MarkedYamlOwned, offsets: &[usize]) -> Node {
    let line = n.span.start.line().max(1);
    let col = n.span.start.col() + 1 + offsets.get(line - 1).copied().unwrap_or(0);
    let span = Span::new(PathBuf::from(file), line, col);
    let kind = match &n.data {
        YamlDataOwned::Value(v) => match v {
            ScalarOwned::Null => NodeKind::Null,
            ScalarOwned::Boolean(b) => NodeKind::Scalar(b.to_string()),
            ScalarOwned::Integer(i) => NodeKind::Scalar(i.to_string()),
            ScalarOwned::FloatingPoint(f) => NodeKind::Scalar(f.to_string()),
            ScalarOwned::String(s) => NodeKind::Scalar(s.clone()),
        },
        YamlDataOwned::Representation(s, _, _) => NodeKind::Scalar(s.clone()),
        YamlDataOwned::Sequence(items) => {
            NodeKind::Seq(items.iter().map(|i| convert(file, i, offsets)).collect())
        }
        YamlDataOwned::Mapping(m) => NodeKind::Map(
            m.iter()
                .map(|(k, v)| (convert(file, k, offsets), convert(file, v, offsets)))
                .collect(),
        ),
        YamlDataOwned::Tagged(_, inner) => convert(file, inner, offsets).kind,
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => NodeKind::Null,
    };
    Node { span, kind }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Where `key`'s value is, or this node when the key is absent.
    pub fn span_of(&self, key: &str) -> Span {
        self.get(key)
            .map_or_else(|| self.span.clone(), |n| n.span.clone())
    }

    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "nothing",
            NodeKind::Scalar(_) => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}
