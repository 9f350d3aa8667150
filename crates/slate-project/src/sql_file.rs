//! `.chalk.sql` resolver files: a YAML header in leading `--` comments, then the query.

use crate::diag::{Diagnostic, Span};
use crate::yaml::{self, Node};
use sqlparser::ast::{Expr, SelectItem, SetExpr, Statement};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::parser::Parser;
use std::path::Path;

pub(crate) struct SqlFile {
    pub header: Option<Node>,
    pub description: String,
    /// The query after the header.
    pub sql: String,
    /// Output columns with their positions; `None` when the projection cannot be known statically
    /// (`SELECT *`).
    pub columns: Option<Vec<(String, Span)>>,
}

/// Splits the header from the query and parses both. Problems are pushed to `diags`.
pub(crate) fn parse(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> SqlFile {
    let mut yaml_lines = Vec::new();
    let mut offsets = Vec::new();
    let mut description = Vec::new();
    let mut header_end = 0;
    let mut in_yaml_block = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("--") else {
            if trimmed.is_empty() {
                yaml_lines.push(String::new());
                offsets.push(0);
                header_end += 1;
                continue;
            }
            break;
        };
        let lead = line.len() - trimmed.len() + 2;
        let (content, prefix) = match rest.strip_prefix(' ') {
            Some(c) => (c, lead + 1),
            None => (rest, lead),
        };
        header_end += 1;
        let indented = content.starts_with(' ') || content.starts_with('\t');
        if content.trim().is_empty() {
            yaml_lines.push(String::new());
        } else if is_key_line(content) || (indented && in_yaml_block) {
            in_yaml_block = true;
            yaml_lines.push(content.to_string());
        } else {
            in_yaml_block = false;
            description.push(content.trim().to_string());
            yaml_lines.push(String::new());
        }
        offsets.push(prefix);
    }
    let sql: String = text.lines().skip(header_end).collect::<Vec<_>>().join("\n");
    let header = if yaml_lines.iter().all(|l| l.trim().is_empty()) {
        None
    } else {
        match yaml::parse(file, &yaml_lines.join("\n"), &offsets) {
            Ok(node) => node,
            Err(d) => {
                diags.push(d);
                None
            }
        }
    };
    let columns = output_columns(file, text, diags);
    SqlFile {
        header,
        description: description.join(" "),
        sql,
        columns,
    }
}

fn is_key_line(content: &str) -> bool {
    let Some((key, rest)) = content.split_once(':') else {
        return false;
    };
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && (rest.is_empty() || rest.starts_with(' '))
}

/// Replaces each `${feature.ref}` with a same-length positional placeholder (`$1`, `$2`, ...)
/// so the query parses and positions stay true.
pub fn bind_placeholders(sql: &str) -> (String, Vec<String>) {
    bind_placeholders_as(sql, |n| format!("${n}"))
}

/// [`bind_placeholders`] with the placeholder of the `n`th input (from 1) written by `mark`
/// (`?` for Snowflake); it is padded to the reference's length.
pub fn bind_placeholders_as(sql: &str, mark: impl Fn(usize) -> String) -> (String, Vec<String>) {
    let mut out = String::with_capacity(sql.len());
    let mut refs = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                refs.push(rest[start + 2..start + end].trim().to_string());
                let placeholder = mark(refs.len());
                let width = end + 1;
                out.push_str(&format!("{placeholder:<width$}"));
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    (out, refs)
}

fn output_columns(
    file: &Path,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(String, Span)>> {
    let (text, _) = bind_placeholders(text);
    let statements = match Parser::parse_sql(&SnowflakeDialect {}, &text) {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            let (line, col) = position_in_message(&msg).unwrap_or((1, 1));
            diags.push(
                Diagnostic::new(Span::new(file, line, col), format!("SQL does not parse: {msg}"))
                    .hint("resolver queries use the Snowflake dialect; string literals take single quotes"),
            );
            return None;
        }
    };
    let [Statement::Query(query)] = statements.as_slice() else {
        diags.push(Diagnostic::new(
            Span::file(file),
            "a SQL resolver must hold exactly one SELECT query",
        ));
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let mut cols = Vec::new();
    for item in &select.projection {
        let ident = match item {
            SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => i.clone(),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts.last()?.clone(),
            SelectItem::UnnamedExpr(_) => {
                diags.push(
                    Diagnostic::new(
                        Span::file(file),
                        format!("output column `{item}` has no name"),
                    )
                    .hint("name it after the feature it resolves: `<expression> AS feature_name`"),
                );
                continue;
            }
            _ => return None,
        };
        let span = Span::new(
            file,
            (ident.span.start.line as usize).max(1),
            (ident.span.start.column as usize).max(1),
        );
        cols.push((ident.value.clone(), span));
    }
    Some(cols)
}

fn position_in_message(msg: &str) -> Option<(usize, usize)> {
    let after = &msg[msg.find("Line: ")? + 6..];
    let line: usize = after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let after = &after[after.find("Column: ")? + 8..];
    let col: usize = after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "-- get transactions from snowflake\n-- source: sf\n-- resolves: Transaction\n-- incremental:\n--   mode: row\n--   lookback_period: 60m\nSELECT transaction_id as id, user_id FROM \"ML.TRANSACTIONS\" WHERE category <> 'pending'\n";

    #[test]
    fn splits_description_header_and_query() {
        let mut diags = Vec::new();
        let f = parse(Path::new("t.chalk.sql"), SEED, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(f.description, "get transactions from snowflake");
        let header = f.header.expect("header");
        assert_eq!(header.get("source").and_then(|n| n.as_str()), Some("sf"));
        let lookback = header
            .get("incremental")
            .and_then(|i| i.get("lookback_period"))
            .expect("lb");
        assert_eq!((lookback.span.line, lookback.span.col), (6, 23));
        let cols = f.columns.expect("columns");
        assert_eq!(cols[0].0, "id");
        assert_eq!((cols[0].1.line, cols[0].1.col), (7, 26));
        assert!(f.sql.starts_with("SELECT"));
    }

    #[test]
    fn placeholders_keep_positions() {
        let (sql, refs) = bind_placeholders("SELECT a FROM t WHERE id = ${User.id} AND x = 1");
        assert_eq!(refs, vec!["User.id".to_string()]);
        assert_eq!(
            sql.len(),
            "SELECT a FROM t WHERE id = ${User.id} AND x = 1".len()
        );
        assert!(sql.contains("$1"));
        let (q, _) = bind_placeholders_as("WHERE a = ${User.id} AND b = ${User.x}", |_| "?".into());
        assert_eq!(q, "WHERE a = ?          AND b = ?        ");
    }
}
