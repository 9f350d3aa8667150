//! Snowflake as a source, through the protocol Snowflake's own connectors speak over HTTPS:
//!
//! - **login** (`POST /session/v1/login-request`) with a password or a key pair (a JWT signed
//!   with the user's RSA key, `SNOWFLAKE_JWT`), both read from environment variables; the
//!   session runs with `TIMEZONE=UTC` and results in Arrow;
//! - **query** (`POST /queries/v1/query-request`): the resolver's SQL with the incremental
//!   bound as a positional binding (`?`, a `TIMESTAMP_NTZ` in nanoseconds); a query still
//!   running when the server answers is followed through its result URL until it ends;
//! - **results**: the first part inline (`rowsetBase64`, an Arrow IPC stream), the rest in
//!   chunks fetched from their URLs (with the headers or key the server gives, gunzipped when
//!   compressed), a few at a time and in order; Snowflake's Arrow encoding (scaled integers,
//!   timestamps as `epoch`/`fraction` structs) is decoded into plain Arrow;
//! - **cancellation**: a query abandoned before its end (a resolver's `timeout`) is aborted
//!   (`POST /queries/v1/abort-request`).
//!
//! Column names come back as Snowflake stores them (unquoted names in upper case); they are
//! read in lower case, as the project names features, and wrapping queries quote the
//! upper-case name. A request whose connection fails, or that the server answers with a 5xx or
//! 429, is tried again with the same request id (Snowflake runs it once), up to `attempts`.

use crate::{IncrementalBound, Source, SourceError, SourceFuture, body, env_var};
use base64::Engine as _;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use slate_project::SnowflakeConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Chunks of a result fetched at once.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Session expired or invalid: log in again.
const SESSION_GONE: [&str; 3] = ["390112", "390114", "390104"];
/// The query is still running: follow its result URL.
const IN_PROGRESS: [&str; 2] = ["333333", "333334"];

pub struct SnowflakeSource {
    name: String,
    config: SnowflakeConfig,
    /// `scheme://host:port`
    base: String,
    /// `snowflake user@account (host:port)`, for messages (never a secret).
    target: String,
    http: reqwest::Client,
    token: Mutex<Option<Arc<String>>>,
    sequence: AtomicU64,
}

impl std::fmt::Debug for SnowflakeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowflakeSource")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish()
    }
}

/// Why one attempt failed.
enum Failure {
    /// The connection or the server failed: another attempt may succeed.
    Transient(String),
    /// The session expired: log in again, then retry.
    Session(String),
    /// Anything else, never retried.
    Final(SourceError),
}

/// A column of a result as the server describes it (`rowtype`).
#[derive(Debug, Clone)]
struct RowType {
    name: String,
    kind: String,
    scale: i64,
}

/// What a query returned: its columns and the Arrow IPC streams of its rows, in order.
struct Answer {
    rowtype: Vec<RowType>,
    /// The first rows when the result is in the JSON format (statements other than queries,
    /// or a server that does not send Arrow); its chunks are then JSON too.
    json: Option<Vec<Value>>,
    inline: Option<Vec<u8>>,
    chunks: Vec<String>,
    headers: Vec<(String, String)>,
}

impl SnowflakeSource {
    /// Builds the client from the source's settings (a relative `private_key_file` is in
    /// `root`); logs in at the first query.
    pub fn open(
        name: &str,
        c: &SnowflakeConfig,
        root: &std::path::Path,
    ) -> Result<Self, SourceError> {
        let mut c = c.clone();
        c.private_key_file = c.private_key_file.map(|f| root.join(f));
        let c = &c;
        let host = c
            .host
            .clone()
            .unwrap_or_else(|| format!("{}.snowflakecomputing.com", c.account));
        let port = c.port.unwrap_or(if c.scheme == "http" { 80 } else { 443 });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(c.connect_timeout_secs))
            .read_timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| SourceError::Config {
                source_name: name.into(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(SnowflakeSource {
            name: name.into(),
            base: format!("{}://{host}:{port}", c.scheme),
            target: format!("snowflake {}@{} ({host}:{port})", c.user, c.account),
            config: c.clone(),
            http,
            token: Mutex::new(None),
            sequence: AtomicU64::new(1),
        })
    }

    /// The login request's credentials: a JWT when a private key is configured, else the
    /// password.
    fn credentials(&self) -> Result<Value, SourceError> {
        let c = &self.config;
        let key = match (&c.private_key_env, &c.private_key_file) {
            (Some(var), _) => Some((
                env_var(&self.name, "private_key_env", var)?,
                format!("`{var}`"),
            )),
            (None, Some(path)) => Some((
                std::fs::read_to_string(path).map_err(|e| SourceError::Config {
                    source_name: self.name.clone(),
                    reason: format!("cannot read the private key file {}: {e}", path.display()),
                })?,
                path.display().to_string(),
            )),
            (None, None) => None,
        };
        if let Some((pem, from)) = key {
            let jwt =
                key_pair_jwt(&c.account, &c.user, &pem, unix_seconds()).map_err(|reason| {
                    SourceError::Config {
                        source_name: self.name.clone(),
                        reason: format!("the private key in {from}: {reason}"),
                    }
                })?;
            return Ok(json!({"AUTHENTICATOR": "SNOWFLAKE_JWT", "TOKEN": jwt}));
        }
        match &c.password_env {
            Some(var) => Ok(json!({"PASSWORD": env_var(&self.name, "password_env", var)?})),
            None => Err(SourceError::Config {
                source_name: self.name.clone(),
                reason: "none of `password_env`, `private_key_env`, `private_key_file` is set"
                    .into(),
            }),
        }
    }

    /// A new session's token.
    async fn login(&self) -> Result<String, Failure> {
        let c = &self.config;
        let mut data = json!({
            "CLIENT_APP_ID": "Slate",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "ACCOUNT_NAME": account_name(&c.account),
            "LOGIN_NAME": c.user,
            "SESSION_PARAMETERS": {
                "TIMEZONE": "UTC",
                "QUERY_RESULT_FORMAT": "ARROW",
                "CLIENT_RESULT_CHUNK_SIZE": 160,
            },
        });
        if let (Some(d), Value::Object(creds)) = (
            data.as_object_mut(),
            self.credentials().map_err(Failure::Final)?,
        ) {
            d.extend(creds);
        }
        let mut url = reqwest::Url::parse(&format!("{}/session/v1/login-request", self.base))
            .map_err(|e| Failure::Final(self.config_error(format!("bad host or port: {e}"))))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("request_id", &uuid::Uuid::new_v4().to_string());
            for (k, v) in [
                ("databaseName", &c.database),
                ("schemaName", &c.schema),
                ("warehouse", &c.warehouse),
                ("roleName", &c.role),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
        }
        let reply = self
            .send(self.http.post(url).json_body(&json!({ "data": data })))
            .await?;
        if reply["success"].as_bool() == Some(true) {
            return reply["data"]["token"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Failure::Transient("the login answer holds no token".into()));
        }
        Err(Failure::Final(SourceError::Connect {
            source_name: self.name.clone(),
            target: self.target.clone(),
            reason: format!(
                "login refused: {} (code {})",
                reply["message"].as_str().unwrap_or("no message"),
                reply["code"].as_str().unwrap_or("none")
            ),
        }))
    }

    fn config_error(&self, reason: String) -> SourceError {
        SourceError::Config {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// Sends a request and reads its JSON answer; a failed connection or a 5xx/429 is
    /// transient, a 4xx other than 429 is the session's end (401, 403) or final.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = req
            .header("Accept", "application/snowflake")
            .header("User-Agent", concat!("Slate/", env!("CARGO_PKG_VERSION")))
            .send()
            .await
            .map_err(|e| Failure::Transient(describe(e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transient(describe(e)))?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_server_error() || status.as_u16() == 429 {
            let message = value
                .as_ref()
                .and_then(|v| v["message"].as_str())
                .map_or_else(
                    || format!("HTTP {status}"),
                    |m| format!("HTTP {status}: {m}"),
                );
            return Err(Failure::Transient(message));
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(Failure::Session(format!("HTTP {status}")));
        }
        value.ok_or_else(|| Failure::Transient(format!("HTTP {status}: the answer is not JSON")))
    }

    /// The session's token, logging in when there is none.
    async fn token(&self) -> Result<Arc<String>, Failure> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = Arc::new(self.login().await?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// Runs `op` again from the start after a transient failure (or a new login after an
    /// expired session), up to the configured attempts.
    async fn attempt<T, F, Fut>(&self, resolver: &str, op: F) -> Result<T, SourceError>
    where
        F: Fn(Arc<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let attempts = self.config.attempts.max(1);
        let mut last = String::new();
        for n in 1..=attempts {
            if n > 1 {
                tokio::time::sleep(Duration::from_millis(200 << (n - 2).min(5))).await;
            }
            let result = match self.token().await {
                Ok(token) => op(token).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Session(reason)) => {
                    *self.token.lock().await = None;
                    last = format!("the session ended: {reason}");
                }
                Err(Failure::Transient(reason)) => last = reason,
            }
        }
        Err(SourceError::Unavailable {
            resolver: resolver.into(),
            source_name: format!("{} ({})", self.name, self.target),
            attempts,
            reason: last,
        })
    }

    /// Submits a statement and follows it to its end.
    async fn submit(
        &self,
        token: &str,
        request_id: &str,
        resolver: &str,
        statement: Statement<'_>,
    ) -> Result<Answer, Failure> {
        let Statement {
            sql,
            bindings,
            describe_only,
            sent,
        } = statement;
        let mut body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": self.sequence.fetch_add(1, Ordering::Relaxed),
            "querySubmissionTime": unix_seconds() * 1000,
        });
        if !bindings.is_empty() {
            body["bindings"] = bindings
                .iter()
                .enumerate()
                .map(|(i, (t, v))| ((i + 1).to_string(), json!({"type": t, "value": v})))
                .collect::<serde_json::Map<String, Value>>()
                .into();
        }
        if describe_only {
            body["describeOnly"] = Value::Bool(true);
        }
        let auth = format!("Snowflake Token=\"{token}\"");
        let url = format!(
            "{}/queries/v1/query-request?requestId={request_id}",
            self.base
        );
        let mut reply = self
            .send(
                self.http
                    .post(url)
                    .header("Authorization", &auth)
                    .json_body(&body),
            )
            .await?;
        // A query still running: its result URL answers when it has ended.
        let mut wait = Duration::from_millis(100);
        while let Some(code) = reply["code"].as_str().filter(|c| IN_PROGRESS.contains(c)) {
            let Some(path) = reply["data"]["getResultUrl"].as_str() else {
                return Err(Failure::Transient(format!(
                    "query in progress (code {code}) without a result URL"
                )));
            };
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            reply = self
                .send(
                    self.http
                        .get(format!("{}{path}", self.base))
                        .header("Authorization", &auth),
                )
                .await?;
        }
        if reply["success"].as_bool() != Some(true) {
            let code = reply["code"].as_str().unwrap_or_default().to_string();
            let message = reply["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            if SESSION_GONE.contains(&code.as_str()) {
                return Err(Failure::Session(message));
            }
            let state = reply["data"]["sqlState"].as_str().unwrap_or_default();
            return Err(Failure::Final(SourceError::Sql {
                resolver: resolver.into(),
                source_name: self.name.clone(),
                position: sent.position(sql, &message),
                reason: match state {
                    "" => format!("{message} (code {code})"),
                    s => format!("{message} (code {code}, SQL state {s})"),
                },
            }));
        }
        let data = &reply["data"];
        let rowtype = data["rowtype"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| RowType {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        kind: c["type"].as_str().unwrap_or_default().to_lowercase(),
                        scale: c["scale"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let json_rows = match data["queryResultFormat"].as_str().unwrap_or("arrow") {
            f if f.eq_ignore_ascii_case("json") => {
                Some(data["rowset"].as_array().cloned().unwrap_or_default())
            }
            _ => None,
        };
        let inline = match data["rowsetBase64"].as_str() {
            Some(b) if !b.is_empty() => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| Failure::Transient(format!("a bad inline result: {e}")))?,
            ),
            _ => None,
        };
        let chunks = data["chunks"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["url"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut headers: Vec<(String, String)> = data["chunkHeaders"]
            .as_object()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        if headers.is_empty()
            && let Some(key) = data["qrmk"].as_str()
        {
            headers.push((
                "x-amz-server-side-encryption-customer-algorithm".into(),
                "AES256".into(),
            ));
            headers.push((
                "x-amz-server-side-encryption-customer-key".into(),
                key.into(),
            ));
        }
        Ok(Answer {
            rowtype,
            json: json_rows,
            inline,
            chunks,
            headers,
        })
    }

    /// One chunk of a result: its bytes, gunzipped when compressed.
    async fn chunk(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Transient(describe(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Failure::Transient(format!("result chunk: HTTP {status}")));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transient(describe(e)))?;
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                .map_err(|e| Failure::Transient(format!("result chunk: {e}")))?;
            return Ok(out);
        }
        Ok(bytes.to_vec())
    }

    /// Runs `sql` and returns its rows as plain Arrow, with lower-case column names.
    async fn rows(
        &self,
        resolver: &str,
        sql: &str,
        bindings: &[(&str, String)],
        sent: Sent,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        // Abandoned before its end (a resolver's timeout drops this future), the query is
        // aborted on the server.
        let guard = AbortOnDrop {
            http: self.http.clone(),
            base: self.base.clone(),
            token: std::sync::Mutex::new(None),
            request_id: request_id.clone(),
            sql: sql.to_string(),
        };
        let batches = self
            .attempt(resolver, |token| {
                guard.set_token(Some(token.clone()));
                let request_id = &request_id;
                async move {
                    let answer = self
                        .submit(
                            &token,
                            request_id,
                            resolver,
                            Statement {
                                sql,
                                bindings,
                                describe_only: false,
                                sent,
                            },
                        )
                        .await?;
                    let schema = output_schema(&self.name, resolver, &answer.rowtype)
                        .map_err(Failure::Final)?;
                    let bad = |reason: String| {
                        Failure::Final(SourceError::Query {
                            resolver: resolver.into(),
                            source_name: self.name.clone(),
                            reason,
                        })
                    };
                    let mut parts: Vec<Vec<u8>> = answer.inline.into_iter().collect();
                    let headers = &answer.headers;
                    let fetched: Vec<Vec<u8>> = futures::stream::iter(answer.chunks.clone())
                        .map(|url| async move { self.chunk(&url, headers).await })
                        .buffered(CHUNKS_IN_FLIGHT)
                        .try_collect()
                        .await?;
                    parts.extend(fetched);
                    let mut out = Vec::new();
                    // A JSON result: its first rows inline, then chunks of rows.
                    if let Some(rows) = &answer.json {
                        out.push(decode_json(rows, &answer.rowtype, &schema).map_err(bad)?);
                        for part in &parts {
                            let rows = json_chunk_rows(part).map_err(Failure::Transient)?;
                            out.push(decode_json(&rows, &answer.rowtype, &schema).map_err(bad)?);
                        }
                        return Ok(out);
                    }
                    for part in parts {
                        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
                            std::io::Cursor::new(part),
                            None,
                        )
                        .map_err(|e| Failure::Transient(format!("a bad Arrow result: {e}")))?;
                        for batch in reader {
                            let batch = batch.map_err(|e| {
                                Failure::Transient(format!("a bad Arrow result: {e}"))
                            })?;
                            out.push(decode_batch(&batch, &answer.rowtype, &schema).map_err(bad)?);
                        }
                    }
                    if out.is_empty() {
                        out.push(RecordBatch::new_empty(schema));
                    }
                    Ok(out)
                }
            })
            .await;
        guard.set_token(None);
        batches
    }
}

/// Sends an abort for a query dropped before its end (no-op once the query has ended).
struct AbortOnDrop {
    http: reqwest::Client,
    base: String,
    /// The session the query runs in; `None` once it has ended.
    token: std::sync::Mutex<Option<Arc<String>>>,
    request_id: String,
    sql: String,
}

impl AbortOnDrop {
    fn set_token(&self, token: Option<Arc<String>>) {
        if let Ok(mut t) = self.token.lock() {
            *t = token;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self
            .http
            .post(format!("{}/queries/v1/abort-request", self.base))
            .header("Authorization", format!("Snowflake Token=\"{token}\""))
            .header("Accept", "application/snowflake")
            .json_body(&json!({"sqlText": self.sql, "requestId": self.request_id}));
        handle.spawn(async move {
            let _ = req.send().await;
        });
    }
}

/// A request body as JSON (`reqwest`'s `json` feature is not needed for one call).
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
}

/// A request's error with its causes, without its URL (it holds a request id).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A statement to submit: its SQL, its bindings (each a `(type, value)`), whether only its
/// result's columns are wanted, and how its text relates to the resolver's SQL.
#[derive(Clone, Copy)]
struct Statement<'a> {
    sql: &'a str,
    bindings: &'a [(&'a str, String)],
    describe_only: bool,
    sent: Sent,
}

/// How the text sent relates to the resolver's SQL: characters of a wrapper before it, and
/// blanks dropped before it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    skipped: usize,
    lead: usize,
    /// Whether positions in the sent text fall in the resolver's SQL at all.
    maps: bool,
}

impl Sent {
    /// The 1-based position in the resolver's SQL of Snowflake's `line L at position P` (P
    /// counted from 0) in a message about `text`, the SQL sent.
    fn position(&self, text: &str, message: &str) -> Option<usize> {
        if !self.maps {
            return None;
        }
        let at = message.find("line ")?;
        let rest = &message[at + 5..];
        let (line, rest) = rest.split_once(" at position ")?;
        let line: usize = line.trim().parse().ok()?;
        let col: usize = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let start: usize = text
            .split('\n')
            .take(line.checked_sub(1)?)
            .map(|l| l.chars().count() + 1)
            .sum();
        let p = start + col + 1;
        (p > self.skipped).then(|| p - self.skipped + self.lead)
    }
}

/// The Arrow schema of a result: one column per `rowtype` entry, named in lower case.
fn output_schema(
    source: &str,
    resolver: &str,
    rowtype: &[RowType],
) -> Result<Arc<Schema>, SourceError> {
    let fields = rowtype
        .iter()
        .map(|c| {
            arrow_type(c)
                .map(|t| Field::new(c.name.to_lowercase(), t, true))
                .ok_or_else(|| SourceError::UnsupportedType {
                    source_name: source.into(),
                    resolver: resolver.into(),
                    column: c.name.to_lowercase(),
                    type_name: c.kind.to_uppercase(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// The Arrow type Slate reads a Snowflake type as.
fn arrow_type(c: &RowType) -> Option<DataType> {
    Some(match c.kind.as_str() {
        "fixed" if c.scale == 0 => DataType::Int64,
        "fixed" | "real" => DataType::Float64,
        "text" | "variant" | "object" | "array" => DataType::Utf8,
        "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp_ntz" | "timestamp_ltz" | "timestamp_tz" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        _ => return None,
    })
}

/// A batch in Snowflake's Arrow encoding as plain Arrow of `schema`.
fn decode_batch(
    batch: &RecordBatch,
    rowtype: &[RowType],
    schema: &Arc<Schema>,
) -> Result<RecordBatch, String> {
    if batch.num_columns() != rowtype.len() {
        return Err(format!(
            "the result has {} columns where {} were described",
            batch.num_columns(),
            rowtype.len()
        ));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(rowtype)
        .map(|(a, c)| decode_column(a, c).map_err(|e| format!("column {}: {e}", c.name)))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// Rows in Snowflake's JSON format (every value a string, or null) as plain Arrow of `schema`.
fn decode_json(
    rows: &[Value],
    rowtype: &[RowType],
    schema: &Arc<Schema>,
) -> Result<RecordBatch, String> {
    let cell = |r: usize, c: usize| -> Result<Option<&str>, String> {
        match rows[r].get(c) {
            None => Err(format!(
                "row {r} has fewer values than the {} columns described",
                rowtype.len()
            )),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(format!("row {r}: a value {other} where text was expected")),
        }
    };
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(rowtype.len());
    for (c, t) in rowtype.iter().enumerate() {
        let texts = (0..n).map(|r| cell(r, c)).collect::<Result<Vec<_>, _>>()?;
        let bad = |v: &str| {
            format!(
                "column {}: `{v}` is not a {}",
                t.name,
                t.kind.to_uppercase()
            )
        };
        let array: ArrayRef = match schema.field(c).data_type() {
            DataType::Int64 => Arc::new(
                texts
                    .iter()
                    .map(|v| v.map(|v| v.parse::<i64>().map_err(|_| bad(v))).transpose())
                    .collect::<Result<Int64Array, _>>()?,
            ),
            DataType::Float64 => Arc::new(
                texts
                    .iter()
                    .map(|v| v.map(|v| v.parse::<f64>().map_err(|_| bad(v))).transpose())
                    .collect::<Result<Float64Array, _>>()?,
            ),
            DataType::Boolean => Arc::new(
                texts
                    .iter()
                    .map(|v| {
                        v.map(|v| match v.to_ascii_lowercase().as_str() {
                            "1" | "true" => Ok(true),
                            "0" | "false" => Ok(false),
                            _ => Err(bad(v)),
                        })
                        .transpose()
                    })
                    .collect::<Result<BooleanArray, _>>()?,
            ),
            DataType::Date32 => Arc::new(
                texts
                    .iter()
                    .map(|v| v.map(|v| v.parse::<i32>().map_err(|_| bad(v))).transpose())
                    .collect::<Result<Date32Array, _>>()?,
            ),
            DataType::Timestamp(_, _) => Arc::new(
                texts
                    .iter()
                    .map(|v| v.map(|v| json_micros(v).ok_or_else(|| bad(v))).transpose())
                    .collect::<Result<TimestampMicrosecondArray, _>>()?
                    .with_timezone("UTC"),
            ),
            _ => Arc::new(texts.into_iter().collect::<StringArray>()),
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// The rows of a chunk of a JSON result: arrays of values separated by commas, without the
/// enclosing brackets.
fn json_chunk_rows(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut text = Vec::with_capacity(bytes.len() + 2);
    text.push(b'[');
    text.extend_from_slice(bytes);
    text.push(b']');
    serde_json::from_slice(&text).map_err(|e| format!("a bad JSON result chunk: {e}"))
}

/// A timestamp of the JSON format, `seconds.fraction` since the epoch (then, for
/// `TIMESTAMP_TZ`, a space and the offset), as microseconds cut toward the past.
fn json_micros(v: &str) -> Option<i64> {
    let v = v.split(' ').next()?;
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    // `-1.5` is 1.5 seconds before the epoch.
    let total = if negative {
        i128::from(secs) * 1_000_000_000 - i128::from(nanos)
    } else {
        i128::from(secs) * 1_000_000_000 + i128::from(nanos)
    };
    i64::try_from(total.div_euclid(1_000)).ok()
}

fn decode_column(a: &ArrayRef, c: &RowType) -> Result<ArrayRef, String> {
    let plain = |t: &DataType| cast(a, t).map_err(|e| e.to_string());
    Ok(match c.kind.as_str() {
        "fixed" => fixed(a, c.scale)?,
        "real" => plain(&DataType::Float64)?,
        "text" | "variant" | "object" | "array" => plain(&DataType::Utf8)?,
        "boolean" => Arc::new(a.as_boolean_opt().cloned().map_or_else(
            || plain(&DataType::Boolean).map(|b| b.as_boolean().clone()),
            Ok,
        )?) as ArrayRef,
        "date" => match a.data_type() {
            DataType::Date32 => a.clone(),
            DataType::Int32 => plain(&DataType::Date32)?,
            t => return Err(format!("a DATE encoded as {t}")),
        },
        "timestamp_ntz" | "timestamp_ltz" | "timestamp_tz" => timestamps(a, c.scale)?,
        other => return Err(format!("type {other} cannot be read")),
    })
}

/// A `NUMBER(p, s)`: integers when `s` is 0 (64 bits), the nearest double otherwise
/// (correctly rounded from the exact decimal).
fn fixed(a: &ArrayRef, scale: i64) -> Result<ArrayRef, String> {
    let decimal = match a.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => None,
        DataType::Decimal128(_, _) => Some(a.as_primitive::<Decimal128Type>()),
        DataType::Float64 if scale > 0 => return Ok(a.clone()),
        t => return Err(format!("a NUMBER encoded as {t}")),
    };
    match (decimal, scale) {
        // Integers of any width as 64-bit integers (a widening cast: exact).
        (None, 0) => cast(a, &DataType::Int64).map_err(|e| e.to_string()),
        (Some(d), 0) => Ok(Arc::new(
            d.iter()
                .map(|v| {
                    v.map(|x| i64::try_from(x).map_err(|_| format!("{x} does not fit in 64 bits")))
                        .transpose()
                })
                .collect::<Result<Int64Array, _>>()?,
        )),
        // Scaled integers: the nearest double to the exact decimal `x × 10^-scale`.
        _ => {
            let raw: Vec<Option<i128>> = match decimal {
                Some(d) => d.iter().collect(),
                None => cast(a, &DataType::Int64)
                    .map_err(|e| e.to_string())?
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.map(i128::from))
                    .collect(),
            };
            Ok(Arc::new(
                raw.into_iter()
                    .map(|v| {
                        v.map(|x| {
                            format!("{x}e-{scale}")
                                .parse::<f64>()
                                .map_err(|e| e.to_string())
                        })
                        .transpose()
                    })
                    .collect::<Result<Float64Array, _>>()?,
            ))
        }
    }
}

/// Timestamps as microseconds since the epoch, UTC: from a struct of `epoch` seconds and
/// `fraction` nanoseconds, or an integer in units of 10^-scale seconds (alone, or as the first
/// field of a struct with a `timezone`). Finer than a microsecond is cut toward the past.
fn timestamps(a: &ArrayRef, scale: i64) -> Result<ArrayRef, String> {
    let range = |v: i64| format!("timestamp {v} (scale {scale}) is out of range");
    let scaled = |v: i64| -> Result<i64, String> {
        if scale <= 6 {
            v.checked_mul(10_i64.pow((6 - scale) as u32))
                .ok_or_else(|| range(v))
        } else {
            Ok(v.div_euclid(10_i64.pow((scale - 6) as u32)))
        }
    };
    let out: TimestampMicrosecondArray = match a.data_type() {
        DataType::Int64 => a
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(scaled).transpose())
            .collect::<Result<_, _>>()?,
        DataType::Struct(_) => {
            let s: &StructArray = a.as_struct();
            let epoch = s
                .column_by_name("epoch")
                .ok_or("a timestamp struct without `epoch`")?
                .as_primitive_opt::<Int64Type>()
                .ok_or("a timestamp `epoch` that is not a 64-bit integer")?;
            let fraction = s.column_by_name("fraction");
            match fraction {
                Some(f) => {
                    let f = cast(f, &DataType::Int64).map_err(|e| e.to_string())?;
                    let f = f.as_primitive::<Int64Type>();
                    (0..s.len())
                        .map(|i| {
                            (s.is_valid(i) && epoch.is_valid(i) && f.is_valid(i))
                                .then(|| {
                                    epoch
                                        .value(i)
                                        .checked_mul(1_000_000)
                                        .and_then(|m| m.checked_add(f.value(i).div_euclid(1_000)))
                                        .ok_or_else(|| range(epoch.value(i)))
                                })
                                .transpose()
                        })
                        .collect::<Result<_, _>>()?
                }
                None => (0..s.len())
                    .map(|i| {
                        (s.is_valid(i) && epoch.is_valid(i))
                            .then(|| scaled(epoch.value(i)))
                            .transpose()
                    })
                    .collect::<Result<_, _>>()?,
            }
        }
        DataType::Timestamp(_, _) => {
            return cast(
                a,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
            .map_err(|e| e.to_string());
        }
        t => return Err(format!("a timestamp encoded as {t}")),
    };
    Ok(Arc::new(out.with_timezone("UTC")))
}

/// The account as login and key-pair tokens name it: upper case, without a locator's region
/// (`xy12345.eu-west-1` is `XY12345`).
fn account_name(account: &str) -> String {
    account.split('.').next().unwrap_or_default().to_uppercase()
}

/// The JWT of key-pair authentication: `iss` is `ACCOUNT.USER.SHA256:<fingerprint of the public
/// key>`, `sub` is `ACCOUNT.USER`, valid for an hour from `now`, signed RS256 with the PEM
/// private key (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`; not encrypted).
pub fn key_pair_jwt(account: &str, user: &str, pem: &str, now: i64) -> Result<String, String> {
    let (label, der) = pem_der(pem)?;
    let key = match label.as_str() {
        "PRIVATE KEY" => ring::signature::RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => ring::signature::RsaKeyPair::from_der(&der),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "an encrypted key: decrypt it first (`openssl pkcs8 -topk8 -nocrypt`)".into(),
            );
        }
        other => return Err(format!("a PEM `{other}`, not an RSA private key")),
    }
    .map_err(|e| format!("not a usable RSA private key ({e})"))?;
    let account = account_name(account);
    let user = user.to_uppercase();
    let fingerprint = public_key_fingerprint(key.public().as_ref());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64.encode(
        json!({
            "iss": format!("{account}.{user}.SHA256:{fingerprint}"),
            "sub": format!("{account}.{user}"),
            "iat": now,
            "exp": now + 3600,
        })
        .to_string(),
    );
    let signing_input = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|e| format!("signing failed ({e})"))?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}

/// `SHA256:` fingerprint Snowflake registers for a public key: the SHA-256 of its
/// SubjectPublicKeyInfo DER, in base64. `pkcs1` is the RSAPublicKey DER.
pub fn public_key_fingerprint(pkcs1: &[u8]) -> String {
    // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0 unused bits, pkcs1 } }
    let algorithm: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut body = algorithm.to_vec();
    body.extend(der_item(0x03, &bits));
    let spki = der_item(0x30, &body);
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn der_item(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The label and bytes of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Result<(String, Vec<u8>), String> {
    let start = pem
        .find("-----BEGIN ")
        .ok_or("no `-----BEGIN ...-----` line: not a PEM key")?;
    let rest = &pem[start + 11..];
    let (label, rest) = rest.split_once("-----").ok_or("a bad PEM header")?;
    let end = rest
        .find("-----END ")
        .ok_or("no `-----END ...-----` line: not a PEM key")?;
    let text: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("the PEM body is not base64 ({e})"))?;
    Ok((label.to_string(), der))
}

/// An identifier of a resolver's output column in a wrapping query: the name in upper case
/// (what an unquoted alias becomes in Snowflake), quoted so that a reserved word stays a column.
fn quote_upper(name: &str) -> String {
    format!("\"{}\"", name.to_uppercase().replace('"', "\"\""))
}

/// A `TIMESTAMP_NTZ` binding: nanoseconds since the epoch (UTC in this session).
fn ts_binding(micros: i64) -> (&'static str, String) {
    ("TIMESTAMP_NTZ", (i128::from(micros) * 1000).to_string())
}

impl SnowflakeSource {
    async fn run_query(
        &self,
        resolver: &str,
        sql: &str,
        bound: Option<&IncrementalBound>,
    ) -> Result<Vec<RecordBatch>, SourceError> {
        let (body, lead) = body(sql);
        match bound {
            None => {
                self.rows(
                    resolver,
                    body,
                    &[],
                    Sent {
                        skipped: 0,
                        lead,
                        maps: true,
                    },
                )
                .await
            }
            Some(b) => {
                let prefix = "SELECT * FROM (";
                let text = format!(
                    "{prefix}{body}) AS slate_incremental WHERE {} >= ?",
                    quote_upper(&b.column)
                );
                self.rows(
                    resolver,
                    &text,
                    &[ts_binding(b.micros)],
                    Sent {
                        skipped: prefix.chars().count(),
                        lead,
                        maps: true,
                    },
                )
                .await
            }
        }
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
        let text =
            crate::count_distinct_sql(sql, distinct, column, from.is_some(), quote_upper, |_| {
                "?".to_string()
            });
        let mut bindings = vec![ts_binding(to)];
        bindings.extend(from.map(ts_binding));
        let batches = self
            .rows(
                resolver,
                &text,
                &bindings,
                Sent {
                    skipped: 0,
                    lead: 0,
                    maps: false,
                },
            )
            .await?;
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                b.column(0)
                    .as_primitive_opt::<Int64Type>()
                    .and_then(|a| usize::try_from(a.value(0)).ok())
            })
            .ok_or_else(|| SourceError::Query {
                resolver: resolver.into(),
                source_name: self.name.clone(),
                reason: "the count of late rows came back without a count".into(),
            })
    }

    async fn run_describe(
        &self,
        resolver: &str,
        sql: &str,
    ) -> Result<Vec<(String, DataType)>, SourceError> {
        let (body, lead) = body(sql);
        let request_id = uuid::Uuid::new_v4().to_string();
        let answer = self
            .attempt(resolver, |token| {
                let request_id = &request_id;
                async move {
                    self.submit(
                        &token,
                        request_id,
                        resolver,
                        Statement {
                            sql: body,
                            bindings: &[],
                            describe_only: true,
                            sent: Sent {
                                skipped: 0,
                                lead,
                                maps: true,
                            },
                        },
                    )
                    .await
                }
            })
            .await?;
        let schema = output_schema(&self.name, resolver, &answer.rowtype)?;
        Ok(schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect())
    }
}

impl Source for SnowflakeSource {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_numbers_are_the_nearest_double() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1234), None, Some(-5)]));
        let out = fixed(&a, 2).expect("decode");
        let f = out.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!(f.value(0), 12.34);
        assert!(f.is_null(1));
        assert_eq!(f.value(2), -0.05);
        let big: ArrayRef = Arc::new(
            datafusion::arrow::array::Decimal128Array::from(vec![Some(i128::from(i64::MAX) + 1)])
                .with_precision_and_scale(38, 0)
                .expect("decimal"),
        );
        assert!(fixed(&big, 0).expect_err("too wide").contains("64 bits"));
        let small: ArrayRef = Arc::new(datafusion::arrow::array::Int8Array::from(vec![
            Some(-7),
            None,
        ]));
        let out = fixed(&small, 0).expect("decode");
        assert_eq!(
            out.as_primitive::<Int64Type>(),
            &Int64Array::from(vec![Some(-7), None])
        );
        let cents: ArrayRef = Arc::new(
            datafusion::arrow::array::Decimal128Array::from(vec![Some(1234567), Some(-1)])
                .with_precision_and_scale(12, 2)
                .expect("decimal"),
        );
        let out = fixed(&cents, 2).expect("decode");
        let f = out.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!((f.value(0), f.value(1)), (12345.67, -0.01));
    }

    #[test]
    fn out_of_range_and_short_rows_are_errors() {
        let far: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::MAX / 10)]));
        assert!(
            timestamps(&far, 0)
                .expect_err("past i64 microseconds")
                .contains("out of range")
        );
        let rowtype = vec![
            RowType {
                name: "A".into(),
                kind: "fixed".into(),
                scale: 0,
            },
            RowType {
                name: "B".into(),
                kind: "text".into(),
                scale: 0,
            },
        ];
        let schema = output_schema("s", "r", &rowtype).expect("schema");
        let rows = vec![json!(["1", "x"]), json!(["2"])];
        assert!(
            decode_json(&rows, &rowtype, &schema)
                .expect_err("a short row")
                .contains("fewer values")
        );
        let ok = decode_json(&rows[..1], &rowtype, &schema).expect("a full row");
        assert_eq!(ok.num_rows(), 1);
    }

    #[test]
    fn timestamps_of_every_encoding() {
        let scaled: ArrayRef = Arc::new(Int64Array::from(vec![Some(1_500), Some(-1_500), None]));
        let t = timestamps(&scaled, 3).expect("decode");
        let t = t.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!((t.value(0), t.value(1)), (1_500_000, -1_500_000));
        assert!(t.is_null(2));
        let nanos: ArrayRef = Arc::new(Int64Array::from(vec![Some(-1)]));
        let t = timestamps(&nanos, 9).expect("decode");
        assert_eq!(
            t.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            -1,
            "cut toward the past"
        );
    }

    #[test]
    fn json_chunks() {
        let rows = json_chunk_rows(br#"["1","a"],["2",null]"#).expect("rows");
        assert_eq!(rows, vec![json!(["1", "a"]), json!(["2", null])]);
        assert!(json_chunk_rows(b"[1").is_err());
    }

    #[test]
    fn json_timestamps() {
        assert_eq!(
            json_micros("1767261600.123456789"),
            Some(1_767_261_600_123_456)
        );
        assert_eq!(
            json_micros("1767261600.5 1440"),
            Some(1_767_261_600_500_000)
        );
        assert_eq!(json_micros("-1.5"), Some(-1_500_000));
        assert_eq!(json_micros("0.0000001"), Some(0));
        assert_eq!(json_micros("x"), None);
    }

    #[test]
    fn error_positions_map_into_the_resolver() {
        // The resolver's SQL is "\nSELECT a,\n  nope FROM t" (one blank dropped before it).
        let wrapped =
            "SELECT * FROM (SELECT a,\n  nope FROM t) AS slate_incremental WHERE \"TS\" >= ?";
        let sent = Sent {
            skipped: 15,
            lead: 1,
            maps: true,
        };
        let m = "SQL compilation error: error line 2 at position 2\ninvalid identifier 'NOPE'";
        // `nope` is the 14th character of the resolver's SQL.
        assert_eq!(sent.position(wrapped, m), Some(14));
        assert_eq!(sent.position(wrapped, "no position here"), None);
        let in_wrapper = "SQL compilation error: error line 1 at position 3\nx";
        assert_eq!(sent.position(wrapped, in_wrapper), None);
    }
}
