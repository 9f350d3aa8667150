//! `slate serve`: the HTTP API over a project's state directory.
//!
//! - `GET /healthz`: 200 when the service is ready.
//! - `POST /v1/query/online`: `{"inputs": {"transaction.id": 42}, "outputs":
//!   ["transaction.is_fraud"]}` (a key or a list of keys) → each output's value and the feature
//!   time it was computed for (`{"data": [{"key", "field", "value", "ts"}], "errors": [...]}`).
//!   Unknown features, keys of the wrong type, bad JSON and bodies over 1 MiB are 4xx with a
//!   message; a key without stored values is listed in `errors` (404 when no key has any).
//! - `POST /v1/runs`: `{"query": NAME, "idempotency_key": KEY}` → 202 with the run's id; the
//!   same key again returns the first run and says so.
//! - `GET /v1/runs`: `{"runs": [...]}`, the runs this service started (with their status) and
//!   the committed runs of the ledger.
//! - `GET /metrics`: Prometheus text, every series `slate_...`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use slate_engine::{Engine, Scheduler, SilentProgress, plan_query};
use slate_project::{FeatureKind, Project};
use slate_stores::OnlineStore;
use slate_types::{FeatureRef, ValueType};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A run started through the API.
#[derive(Debug, Clone)]
struct ApiRun {
    id: String,
    query: String,
    status: &'static str,
    idempotency_key: Option<String>,
    run_id: Option<String>,
    rows_ingested: Option<usize>,
    rows_scored: Option<usize>,
    error: Option<String>,
    /// `api` or `schedule`.
    trigger: &'static str,
}

#[derive(Default)]
struct Shared {
    runs: Vec<ApiRun>,
    by_key: HashMap<String, usize>,
    /// Prometheus counters: series (with labels) to value.
    counters: BTreeMap<String, u64>,
}

/// What every handler reads: the engine (and through it the project and stores).
pub struct AppState {
    engine: Arc<Engine>,
    online: Arc<OnlineStore>,
    shared: Mutex<Shared>,
    /// The bearer token every request but `GET /healthz` must carry, when set.
    token: Option<String>,
}

impl AppState {
    /// The service's state over `engine`, whose online store is opened once here and shared
    /// by readers and runs; with `token`, requests need `Authorization: Bearer <token>`.
    pub fn new(
        engine: Engine,
        token: Option<String>,
    ) -> Result<Arc<Self>, slate_engine::EngineError> {
        std::fs::create_dir_all(engine.state_dir()).map_err(|e| {
            slate_engine::EngineError::Store(slate_stores::StoreError::Io {
                what: "state directory",
                reason: e.to_string(),
            })
        })?;
        let online = engine.online()?;
        let engine = engine.with_online(online.clone());
        Ok(Arc::new(AppState {
            engine: Arc::new(engine),
            online,
            shared: Mutex::new(Shared::default()),
            token,
        }))
    }

    fn count(&self, series: String) {
        if let Ok(mut s) = self.shared.lock() {
            *s.counters.entry(series).or_default() += 1;
        }
    }
}

/// Refuses a request without the service's bearer token (health checks need none).
async fn auth(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &s.token
        && req.uri().path() != "/healthz"
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            s.count("slate_http_unauthorized_total".into());
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token>`",
            );
        }
    }
    next.run(req).await
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/query/online", post(query_online))
        .route("/v1/runs", post(trigger_run).get(list_runs))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Runs the project's schedules until `stop` turns true: at each tick, the due runs (recorded
/// as `schedule` runs), then sleeps until the next tick. A run in progress when `stop` turns
/// true finishes before the task ends.
pub fn spawn_scheduler(
    state: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        let since = now();
        loop {
            if *stop.borrow() {
                return;
            }
            let engine = state.engine.clone();
            let scheduler = Scheduler::new(&engine, since);
            for (query, tick, result) in scheduler.step(now(), &SilentProgress).await {
                let status = if result.is_ok() {
                    "succeeded"
                } else {
                    "failed"
                };
                state.count(format!(
                    "slate_runs_total{{query=\"{query}\",status=\"{status}\"}}"
                ));
                if let Ok(mut sh) = state.shared.lock() {
                    let id = format!("{query}@{}", slate_types::format_rfc3339(tick));
                    let (run_id, rows_ingested, rows_scored, error) = match result {
                        Ok(s) => (
                            Some(s.run_id),
                            Some(s.rows_ingested),
                            Some(s.rows_scored),
                            None,
                        ),
                        Err(e) => (None, None, None, Some(e.to_string())),
                    };
                    sh.runs.push(ApiRun {
                        id,
                        query,
                        status,
                        idempotency_key: None,
                        run_id,
                        rows_ingested,
                        rows_scored,
                        error,
                        trigger: "schedule",
                    });
                }
            }
            let Some(next) = scheduler.next_tick(now()) else {
                return;
            };
            let wait = std::time::Duration::from_micros((next - now()).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

/// Serves until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn json_response(code: StatusCode, v: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    json_response(code, json!({"error": message.into()}))
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    s.count("slate_http_requests_total{route=\"/healthz\",code=\"200\"}".into());
    (StatusCode::OK, "ok\n").into_response()
}

fn feature_known(project: &Project, r: &FeatureRef) -> Result<(), String> {
    let class = project
        .class(&r.class)
        .ok_or_else(|| format!("unknown class `{}`", r.class))?;
    let first = r.path.first().unwrap_or(&r.feature);
    if class.feature(first).is_none() {
        return Err(format!("`{}` has no feature `{first}`", class.name));
    }
    Ok(())
}

/// Reads the request's keys as the online store's text keys, checking their JSON type against
/// the primary key's declared type.
fn keys_of(value: &Value, int_key: bool, name: &str) -> Result<Vec<(Value, String)>, String> {
    let items: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    if items.is_empty() {
        return Err(format!("`{name}` lists no keys"));
    }
    items
        .into_iter()
        .map(|v| match (v, int_key) {
            (Value::Number(n), true) if n.is_i64() => Ok((v.clone(), n.to_string())),
            (Value::String(s), false) => Ok((v.clone(), s.clone())),
            (other, true) => Err(format!("`{name}` takes integer keys, got {other}")),
            (other, false) => Err(format!("`{name}` takes string keys, got {other}")),
        })
        .collect()
}

async fn query_online(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let (code, response) = match online_inner(&s, &body) {
        Ok(r) => (StatusCode::OK, r),
        Err((code, message)) => (code, error(code, message)),
    };
    s.count(format!(
        "slate_http_requests_total{{route=\"/v1/query/online\",code=\"{}\"}}",
        code.as_u16()
    ));
    response
}

fn online_inner(s: &AppState, body: &[u8]) -> Result<Response, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let req: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let project = s.engine.project();
    let inputs = req
        .get("inputs")
        .and_then(Value::as_object)
        .filter(|o| o.len() == 1)
        .ok_or_else(|| {
            bad(
                "`inputs` must be an object with one key feature, e.g. {\"transaction.id\": 42}"
                    .into(),
            )
        })?;
    let (input_name, input_value) = inputs.iter().next().ok_or_else(|| bad("no input".into()))?;
    let key_ref = FeatureRef::parse(input_name).map_err(|e| bad(e.to_string()))?;
    let class = project
        .class(&key_ref.class)
        .ok_or_else(|| bad(format!("unknown class `{}`", key_ref.class)))?;
    if !key_ref.path.is_empty() || key_ref.feature != class.primary_key {
        return Err(bad(format!(
            "the online store is keyed by `{}.{}`, the primary key",
            class.name.to_lowercase(),
            class.primary_key
        )));
    }
    let int_key = matches!(
        class.feature(&class.primary_key).map(|f| &f.kind),
        Some(FeatureKind::Scalar {
            ty: ValueType::Int,
            ..
        })
    );
    let keys = keys_of(input_value, int_key, input_name).map_err(bad)?;
    let outputs = req
        .get("outputs")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("`outputs` must be a non-empty list of feature names".into()))?;
    let mut refs = Vec::new();
    for o in outputs {
        let name = o
            .as_str()
            .ok_or_else(|| bad(format!("output {o} is not a feature name")))?;
        let r = FeatureRef::parse(name).map_err(|e| bad(e.to_string()))?;
        if !r.class.eq_ignore_ascii_case(&class.name) {
            return Err(bad(format!(
                "output `{name}` is not a feature of `{}`",
                class.name
            )));
        }
        feature_known(project, &r).map_err(|e| bad(format!("unknown feature `{name}`: {e}")))?;
        refs.push((name.to_string(), r));
    }
    // Stored values are JSON already; they are written into the response as stored, so a
    // float comes back with exactly the digits that were stored.
    let mut data: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (key_json, key) in &keys {
        let mut found = false;
        for (name, r) in &refs {
            let v = s.online.get(&r.column_name(), key).map_err(|e| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("online store: {e}"),
                )
            })?;
            let (value, ts) = match v {
                Some(v) => {
                    found = true;
                    let raw = serde_json::value::RawValue::from_string(v.json.clone())
                        .map(|r| r.get().to_string())
                        .unwrap_or_else(|_| Value::String(v.json).to_string());
                    (
                        raw,
                        Value::String(slate_types::format_rfc3339(v.feature_time)).to_string(),
                    )
                }
                None => ("null".to_string(), "null".to_string()),
            };
            data.push(format!(
                "{{\"key\":{key_json},\"field\":{},\"value\":{value},\"ts\":{ts}}}",
                Value::String(name.clone())
            ));
        }
        if !found {
            missing.push(format!(
                "no values for {input_name}={key_json}: no run has stored this key"
            ));
        }
    }
    // A key without values is an error of its own; the request fails only when none has any.
    if missing.len() == keys.len() {
        return Err((StatusCode::NOT_FOUND, missing.join("; ")));
    }
    let errors: Vec<String> = missing
        .into_iter()
        .map(|m| Value::String(m).to_string())
        .collect();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"data\":[{}],\"errors\":[{}]}}",
            data.join(","),
            errors.join(",")
        ),
    )
        .into_response())
}

async fn trigger_run(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let Some(query) = req.get("query").and_then(Value::as_str) else {
        return bad("`query` must name a scheduled query".into());
    };
    let project = s.engine.project();
    if project.query(query).is_none() {
        let known: Vec<&str> = project.queries.iter().map(|q| q.name.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no scheduled query `{query}`; known: {}", known.join(", ")),
        );
    }
    let plan = match plan_query(project, query) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let key = req
        .get("idempotency_key")
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = {
        let Ok(mut sh) = s.shared.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned");
        };
        if let Some(k) = &key
            && let Some(&i) = sh.by_key.get(k)
        {
            let r = &sh.runs[i];
            return json_response(
                StatusCode::OK,
                json!({"id": r.id, "query": r.query, "status": r.status, "duplicate": true}),
            );
        }
        let id = format!("api-{}", sh.runs.len() + 1);
        sh.runs.push(ApiRun {
            id: id.clone(),
            query: query.to_string(),
            status: "running",
            idempotency_key: key.clone(),
            run_id: None,
            rows_ingested: None,
            rows_scored: None,
            error: None,
            trigger: "api",
        });
        if let Some(k) = key {
            let i = sh.runs.len() - 1;
            sh.by_key.insert(k, i);
        }
        id
    };
    let state = s.clone();
    let run_id = id.clone();
    let query_name = query.to_string();
    tokio::spawn(async move {
        let result = state.engine.run(&plan, &SilentProgress).await;
        let status = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        state.count(format!(
            "slate_runs_total{{query=\"{query_name}\",status=\"{status}\"}}"
        ));
        if let Ok(mut sh) = state.shared.lock()
            && let Some(r) = sh.runs.iter_mut().find(|r| r.id == run_id)
        {
            r.status = status;
            match result {
                Ok(summary) => {
                    r.run_id = Some(summary.run_id);
                    r.rows_ingested = Some(summary.rows_ingested);
                    r.rows_scored = Some(summary.rows_scored);
                }
                Err(e) => r.error = Some(e.to_string()),
            }
        }
    });
    json_response(
        StatusCode::ACCEPTED,
        json!({"id": id, "query": query, "status": "running", "duplicate": false}),
    )
}

async fn list_runs(State(s): State<Arc<AppState>>) -> Response {
    let mut runs: Vec<Value> = Vec::new();
    if let Ok(sh) = s.shared.lock() {
        for r in &sh.runs {
            runs.push(json!({
                "id": r.id,
                "query": r.query,
                "trigger": r.trigger,
                "status": r.status,
                "idempotency_key": r.idempotency_key,
                "run_id": r.run_id,
                "rows_ingested": r.rows_ingested,
                "rows_scored": r.rows_scored,
                "error": r.error,
            }));
        }
    }
    if s.engine.state_dir().join("ledger.redb").exists() {
        match s.engine.ledger().and_then(|l| Ok(l.runs()?)) {
            Ok(records) => {
                for r in records {
                    runs.push(json!({
                        "id": r.run_id,
                        "query": r.query,
                        "trigger": "ledger",
                        "status": "succeeded",
                        "tick": slate_types::format_rfc3339(r.tick_micros),
                        "rows_ingested": r.rows_ingested,
                        "rows_scored": r.rows_scored,
                        "watermark_before": r.watermark_before.map(slate_types::format_rfc3339),
                        "watermark_after": r.watermark_after.map(slate_types::format_rfc3339),
                    }));
                }
            }
            Err(e) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, format!("ledger: {e}"));
            }
        }
    }
    json_response(StatusCode::OK, json!({"runs": runs}))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut out =
        String::from("# TYPE slate_http_requests_total counter\n# TYPE slate_runs_total counter\n");
    if let Ok(sh) = s.shared.lock() {
        for (series, v) in &sh.counters {
            out.push_str(&format!("{series} {v}\n"));
        }
        let running = sh.runs.iter().filter(|r| r.status == "running").count();
        out.push_str(&format!(
            "# TYPE slate_scheduled_runs gauge\nslate_scheduled_runs {}\n",
            sh.runs.iter().filter(|r| r.trigger == "schedule").count()
        ));
        out.push_str(&format!(
            "# TYPE slate_runs_running gauge\nslate_runs_running {running}\n"
        ));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
