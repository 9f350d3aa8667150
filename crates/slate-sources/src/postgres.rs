//! PostgreSQL as a source: the resolver's SQL runs in the database, its incremental bound is a
//! bound parameter, and rows arrive in the binary result format of the extended protocol, decoded
//! straight into Arrow builders as they stream in (never as a whole result of rows first).
//!
//! The session runs with `TimeZone=UTC`, so a `timestamp without time zone` column is read as
//! UTC, as the embedded source reads a timestamp without a zone. A query whose connection fails
//! (refused, dropped mid-result) is retried from the start, up to the configured attempts; a
//! query the database rejects is not.

use crate::pg_decode::Column;
use crate::{IncrementalBound, Source, SourceError, SourceFuture, body, env_var, quote_ident};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{StreamExt, pin_mut};
use slate_project::PostgresConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::{Client, Config, NoTls};

/// Rows per Arrow batch.
const BATCH_ROWS: usize = 65_536;

pub struct PostgresSource {
    name: String,
    config: Config,
    /// `user@host:port/database`, for messages (never the password).
    target: String,
    attempts: u32,
    client: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish()
    }
}

/// Why one attempt failed: the database's or the connection's error, or a value Slate cannot
/// take (never retried).
enum Failure {
    Pg(tokio_postgres::Error),
    Value(SourceError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

/// Whether another attempt can succeed: the connection failed, or the server said so.
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // A closed connection, a socket error, or a connect timeout; not a value that failed
        // to convert (that would fail again).
        None => {
            e.is_closed()
                || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().starts_with("timeout")
        }
        Some(db) => {
            let code = db.code();
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                ]
                .contains(code)
        }
    }
}

/// The message of a tokio-postgres error with its cause (its own text is often only "db error").
fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// The connection settings of `c` (secrets read from the environment now; `name` names the
/// object in messages) and the text naming the server in messages, `postgres user@host:port/db`
/// (never the password). The session runs with `TimeZone=UTC`.
pub fn client_config(name: &str, c: &PostgresConfig) -> Result<(Config, String), SourceError> {
    let mut config = match &c.url_env {
        Some(var) => {
            let url = env_var(name, "url_env", var)?;
            // The parse error names the problem, never the string (it may hold a password).
            url.parse::<Config>().map_err(|e| SourceError::Config {
                source_name: name.into(),
                reason: format!("the connection string in `{var}` is not valid: {e}"),
            })?
        }
        None => Config::new(),
    };
    match &c.host {
        Some(h) => {
            config.host(h);
        }
        None if config.get_hosts().is_empty() => {
            config.host("localhost");
        }
        None => {}
    }
    if let Some(p) = c.port {
        config.port(p);
    }
    if let Some(d) = &c.database {
        config.dbname(d);
    }
    match &c.user {
        Some(u) => {
            config.user(u);
        }
        None if config.get_user().is_none() => {
            let user = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        None => {}
    }
    if let Some(var) = &c.password_env {
        config.password(env_var(name, "password_env", var)?);
    }
    config
        .connect_timeout(Duration::from_secs(c.connect_timeout_secs))
        .application_name("slate")
        .options("-c TimeZone=UTC");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    let target = format!("postgres {user}@{host}:{port}/{db}");
    Ok((config, target))
}

impl PostgresSource {
    /// Builds the connection settings (reading secrets from the environment); connects on the
    /// first query.
    pub async fn open(name: &str, c: &PostgresConfig) -> Result<Self, SourceError> {
        let (config, target) = client_config(name, c)?;
        Ok(PostgresSource {
            name: name.into(),
            config,
            target,
            attempts: c.attempts.max(1),
            client: Mutex::new(None),
        })
    }

    /// The open connection, or a new one.
    async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection's errors reach the client's calls as a closed connection.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `op` with a connection, again from the start on a transient failure, up to the
    /// configured attempts. `offset` maps positions in the text `op` sends back to the
    /// resolver's SQL (`None`: the position is not in the resolver's SQL).
    async fn attempt<T, F, Fut>(
        &self,
        resolver: &str,
        offset: Option<(usize, usize)>,
        op: F,
    ) -> Result<T, SourceError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut last = String::new();
        for n in 1..=self.attempts {
            if n > 1 {
                tokio::time::sleep(Duration::from_millis(200 << (n - 2).min(5))).await;
            }
            let result = match self.client().await {
                Ok(client) => op(client).await,
                Err(e) => Err(Failure::Pg(e)),
            };
            let e = match result {
                Ok(v) => return Ok(v),
                Err(Failure::Value(e)) => return Err(e),
                Err(Failure::Pg(e)) => e,
            };
            if !transient(&e) {
                let position = e
                    .as_db_error()
                    .and_then(|db| db.position())
                    .and_then(|p| match p {
                        ErrorPosition::Original(p) => Some(*p as usize),
                        ErrorPosition::Internal { .. } => None,
                    })
                    .zip(offset)
                    .and_then(|(p, (skipped, lead))| (p > skipped).then(|| p - skipped + lead));
                return Err(SourceError::Sql {
                    resolver: resolver.into(),
                    source_name: self.name.clone(),
                    reason: describe_error(&e),
                    position,
                });
            }
            *self.client.lock().await = None;
            last = describe_error(&e);
        }
        Err(SourceError::Unavailable {
            resolver: resolver.into(),
            source_name: format!("{} ({})", self.name, self.target),
            attempts: self.attempts,
            reason: last,
        })
    }

    async fn run_query(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let (body, lead) = body(sql);
        let (text, params, skipped) = match bound {
            None => (body.to_string(), vec![], 0),
            Some(b) => {
                let prefix = "SELECT * FROM (";
                let text = format!(
                    "{prefix}{body}) AS slate_incremental WHERE {} >= {}",
                    quote_ident(&b.column),
                    timestamp_param(1)
                );
                (text, vec![b.micros], prefix.chars().count())
            }
        };
        self.attempt(resolver, Some((skipped, lead)), |client| {
            fetch(client, &self.name, resolver, &text, &params)
        })
        .await
    }

    async fn run_count_distinct(
        &self,
        resolver: &str,
        sql: &str,
        distinct: &[&str],
        column: &str,
        from: Option<i64>,
        to: i64,
    ) -> Result<usize, SourceError> {
        let text = crate::count_distinct_sql(
            sql,
            distinct,
            column,
            from.is_some(),
            quote_ident,
            timestamp_param,
        );
        let mut params = vec![to];
        params.extend(from);
        self.attempt(resolver, None, |client| {
            let (text, params) = (&text, &params);
            async move {
                let row = client.query_one(text.as_str(), &to_params(params)).await?;
                Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
            }
        })
        .await
    }

    async fn run_describe(
        &self,
        resolver: &str,
        sql: &str,
    ) -> Result<Vec<(String, DataType)>, SourceError> {
        let (body, lead) = body(sql);
        let body = body.to_string();
        let columns = self
            .attempt(resolver, Some((0, lead)), |client| {
                let body = &body;
                async move {
                    let stmt = client.prepare(body).await?;
                    Ok(stmt
                        .columns()
                        .iter()
                        .map(|c| (c.name().to_string(), c.type_().clone()))
                        .collect::<Vec<_>>())
                }
            })
            .await?;
        columns
            .into_iter()
            .map(|(name, ty)| {
                let t = Column::new(&ty, 0).map(|c| c.data_type()).ok_or_else(|| {
                    SourceError::UnsupportedType {
                        source_name: self.name.clone(),
                        resolver: resolver.into(),
                        column: name.clone(),
                        type_name: ty.name().to_string(),
                    }
                })?;
                Ok((name, t))
            })
            .collect()
    }
}

fn to_params(params: &[i64]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// The timestamp of parameter `$i`, bound as microseconds since the epoch (exact, unlike a
/// conversion through seconds as a float).
fn timestamp_param(i: usize) -> String {
    format!("(TIMESTAMPTZ 'epoch' + ${i}::bigint * INTERVAL '1 microsecond')")
}

/// One attempt at a query: prepare, check that every column can be read, stream the rows into
/// Arrow batches.
async fn fetch(
    client: Arc<Client>,
    source: &str,
    resolver: &str,
    text: &str,
    params: &[i64],
) -> Result<Vec<RecordBatch>, Failure> {
    let stmt = client.prepare(text).await?;
    let mut columns = Vec::with_capacity(stmt.columns().len());
    for c in stmt.columns() {
        let column = Column::new(c.type_(), BATCH_ROWS).ok_or_else(|| {
            Failure::Value(SourceError::UnsupportedType {
                source_name: source.into(),
                resolver: resolver.into(),
                column: c.name().into(),
                type_name: c.type_().name().into(),
            })
        })?;
        columns.push(column);
    }
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    let bad = |column: &str, reason: String| {
        Failure::Value(SourceError::Query {
            resolver: resolver.into(),
            source_name: source.into(),
            reason: format!("column `{column}`: {reason}"),
        })
    };
    let assemble = |reason: String| {
        Failure::Value(SourceError::Query {
            resolver: resolver.into(),
            source_name: source.into(),
            reason: format!("cannot assemble an Arrow batch: {reason}"),
        })
    };
    let rows = client.query_raw(&stmt, params.iter()).await?;
    pin_mut!(rows);
    let mut batches = Vec::new();
    let mut n = 0;
    while let Some(row) = rows.next().await {
        let row = row?;
        for (i, c) in columns.iter_mut().enumerate() {
            let raw: crate::pg_decode::Raw = row.try_get(i)?;
            c.push(raw.0).map_err(|reason| bad(names[i], reason))?;
        }
        n += 1;
        if n == BATCH_ROWS {
            batches.push(finish(&names, &mut columns).map_err(assemble)?);
            n = 0;
        }
    }
    if n > 0 || batches.is_empty() {
        batches.push(finish(&names, &mut columns).map_err(assemble)?);
    }
    Ok(batches)
}

fn finish(names: &[&str], columns: &mut [Column]) -> Result<RecordBatch, String> {
    use datafusion::arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = names
        .iter()
        .zip(columns.iter())
        .map(|(n, c)| Field::new(*n, c.data_type(), true))
        .collect();
    let arrays = columns.iter_mut().map(Column::finish).collect();
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| e.to_string())
}

impl Source for PostgresSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn query<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        bound: Option<&'a IncrementalBound>,
    ) -> SourceFuture<'a, Vec<RecordBatch>> {
        Box::pin(self.run_query(resolver, sql, bound))
    }

    fn count_distinct_between<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
        distinct: &'a [&'a str],
        column: &'a str,
        from: Option<i64>,
        to: i64,
    ) -> SourceFuture<'a, usize> {
        Box::pin(self.run_count_distinct(resolver, sql, distinct, column, from, to))
    }

    fn describe<'a>(
        &'a self,
        resolver: &'a str,
        sql: &'a str,
    ) -> SourceFuture<'a, Vec<(String, DataType)>> {
        Box::pin(self.run_describe(resolver, sql))
    }
}
