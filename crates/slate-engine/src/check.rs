//! What `slate apply` checks against the services of an environment: that each source, the
//! online store and the metadata store answer, and that each SQL resolver's tables and columns exist in its source and
//! give columns its class can read. Every problem is a diagnostic located in slate.yaml or in
//! the resolver's file.

use arrow::compute::can_cast_types;
use slate_project::{
    Diagnostic, MetadataConfig, OnlineConfig, Project, SourceConfig, Span, SqlResolver,
};
use slate_sources::SourceError;
use std::path::Path;

/// Problems of `env`'s sources and of the SQL resolvers that run there. Sources whose data
/// directory is missing are left out (that is reported from the project alone).
pub async fn source_diagnostics(
    project: &Project,
    env: &str,
    data_dir: Option<&Path>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Some(environment) = project.environment(env) else {
        return out;
    };
    if let OnlineConfig::Redis(c) = &environment.online {
        let opened = crate::backends::redis_settings(c, &project.name, env)
            .and_then(|s| Ok(slate_stores::RedisOnlineStore::open(s)?));
        if let Err(e) = opened {
            out.push(
                Diagnostic::new(c.span.clone(), e.to_string())
                    .hint("check that Redis is up and reachable, and `online:` of this environment in slate.yaml"),
            );
        }
    }
    if let MetadataConfig::Postgres { connection, .. } = &environment.metadata {
        // Connects and asks nothing: `apply` writes nothing, not even the ledger's tables.
        let answered = match slate_sources::postgres_client_config("metadata", connection) {
            Err(e) => Err(e.to_string()),
            Ok((config, target)) => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map(drop)
                        .map_err(|e| format!("{target}: {e}"))
                }
                Err(e) => Err(format!(
                    "cannot connect to {target}: {}",
                    std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |c| format!("{e}: {c}"))
                )),
            },
        };
        if let Err(e) = answered {
            out.push(
                Diagnostic::new(connection.span.clone(), format!("metadata store: {e}"))
                    .hint("check that PostgreSQL is up and reachable, and `metadata:` of this environment in slate.yaml"),
            );
        }
    }
    for (name, config) in &environment.sources {
        let resolvers: Vec<&SqlResolver> = project
            .sql_resolvers
            .iter()
            .filter(|r| &r.source == name)
            .filter(|r| r.environments.is_empty() || r.environments.iter().any(|e| e == env))
            .collect();
        let source = match slate_sources::open(name, config, &project.root, data_dir).await {
            Ok(s) => s,
            Err(SourceError::MissingDataDir { .. }) => continue,
            Err(e) => {
                out.push(located(config.span().clone(), &e));
                continue;
            }
        };
        for r in resolvers {
            // `${feature}` inputs as positional parameters, in text of the same length, so that
            // positions still point into the file.
            let (sql, _) = match config {
                // Snowflake binds `?`; `$1` would name a staged file's column there.
                SourceConfig::Snowflake(_) => {
                    slate_project::bind_placeholders_as(&r.sql, |_| "?".into())
                }
                _ => slate_project::bind_placeholders(&r.sql),
            };
            match source.describe(&r.name, &sql).await {
                Ok(columns) => out.extend(column_problems(project, r, &columns)),
                // Problems of the query itself: located in the resolver's SQL.
                Err(e @ (SourceError::Sql { .. } | SourceError::UnsupportedType { .. })) => {
                    let position = match &e {
                        SourceError::Sql { position, .. } => *position,
                        _ => None,
                    };
                    out.push(located(sql_span(project, r, position), &e));
                }
                Err(e) => {
                    // The source stopped answering: one problem for it, not one per resolver.
                    out.push(located(config.span().clone(), &e));
                    break;
                }
            }
        }
    }
    out
}

/// `e` as a diagnostic at `span`, with its hint.
fn located(span: Span, e: &SourceError) -> Diagnostic {
    let d = Diagnostic::new(span, e.to_string());
    match e.hint() {
        Some(h) => d.hint(h),
        None => d,
    }
}

/// Columns that are not features of the resolver's class, or that its features cannot read.
fn column_problems(
    project: &Project,
    r: &SqlResolver,
    columns: &[(String, arrow::datatypes::DataType)],
) -> Vec<Diagnostic> {
    let Some(class) = project
        .classes
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(&r.resolves))
    else {
        return Vec::new();
    };
    let features: Vec<_> = class.scalar_features().collect();
    let mut out = Vec::new();
    let span = sql_span(project, r, None);
    for (name, ty) in columns {
        let span = span.clone();
        match features.iter().find(|(f, _)| f.eq_ignore_ascii_case(name)) {
            None => out.push(
                Diagnostic::new(
                    span,
                    format!(
                        "resolver `{}` returns a column `{name}`, which is not a feature of `{}`",
                        r.name, class.name
                    ),
                )
                .hint(format!(
                    "rename it with `AS` to one of: {}",
                    features
                        .iter()
                        .map(|(f, _)| *f)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ),
            Some((f, t)) if !can_cast_types(ty, &t.arrow()) => out.push(
                Diagnostic::new(
                    span,
                    format!(
                        "column `{name}` of resolver `{}` has type {ty} in the source, which feature `{}.{f}` ({}) cannot read",
                        r.name,
                        class.name,
                        t.name()
                    ),
                )
                .hint("cast it in the resolver's SQL"),
            ),
            Some(_) => {}
        }
    }
    out
}

/// Where character `position` (1-based) of the resolver's SQL is in its file; the start of the
/// SQL when the position is unknown.
fn sql_span(project: &Project, r: &SqlResolver, position: Option<usize>) -> Span {
    let Ok(text) = std::fs::read_to_string(project.root.join(&r.file)) else {
        return Span::file(&r.file);
    };
    let Some(base) = text.find(r.sql.as_str()) else {
        return Span::file(&r.file);
    };
    let sql = &text[base..];
    let skip = match position {
        Some(p) => p.saturating_sub(1),
        None => sql.chars().count() - sql.trim_start().chars().count(),
    };
    let offset = base + sql.char_indices().nth(skip).map_or(sql.len(), |(i, _)| i);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Span::new(&r.file, line, col)
}
