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
//! - `GET /v1/runs`: `{"runs": [...]}`: every run of the ledger (committed and failed, with
//!   trigger, rows, late rows, watermarks, outputs, stage timings, error), then the API's runs
//!   still `queued` or `running`.
//! - `GET /metrics`: Prometheus text, every series `slate_...`.
//!
//! The scheduler task runs each scheduled query at its cron ticks; a changed project is loaded
//! without a restart (when it is valid; otherwise the running one stays and the error is shown).

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use slate_engine::Engine;
use slate_stores::OnlineStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

mod metrics;
mod online;
mod runs;

pub use runs::spawn_scheduler;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Where the service's project comes from, so that a changed project is picked up live.
pub trait ProjectSource: Send + Sync {
    /// A value that changes whenever the project's files change.
    fn fingerprint(&self) -> u64;
    /// The project loaded and checked anew, as an engine; or every problem found.
    fn load(&self) -> Result<Engine, String>;
}

#[derive(Default)]
struct Shared {
    runs: Vec<runs::ApiRun>,
    by_key: HashMap<String, usize>,
}

/// What every handler reads: the engine (and through it the project and stores).
pub struct AppState {
    engine: RwLock<Arc<Engine>>,
    online: Arc<dyn OnlineStore>,
    ledger: Arc<dyn slate_stores::Ledger>,
    shared: Mutex<Shared>,
    metrics: Mutex<metrics::Metrics>,
    /// The bearer token every request but `GET /healthz` must carry, when set.
    token: Option<String>,
    /// Held by the run in progress: one run at a time per service.
    gate: tokio::sync::Mutex<()>,
    /// Set at shutdown: no new runs start.
    stopping: AtomicBool,
    /// The stage of the run in progress.
    active: Mutex<Option<String>>,
    source: Option<Box<dyn ProjectSource>>,
    fingerprint: Mutex<Option<u64>>,
}

impl AppState {
    /// The service's state over `engine`, whose online store is opened once here and shared
    /// by readers and runs; with `token`, requests need `Authorization: Bearer <token>`.
    pub fn new(
        engine: Engine,
        token: Option<String>,
    ) -> Result<Arc<Self>, slate_engine::EngineError> {
        Self::with_source(engine, token, None)
    }

    /// As [`AppState::new`], reloading the project from `source` when its files change.
    pub fn with_source(
        engine: Engine,
        token: Option<String>,
        source: Option<Box<dyn ProjectSource>>,
    ) -> Result<Arc<Self>, slate_engine::EngineError> {
        std::fs::create_dir_all(engine.state_dir()).map_err(|e| {
            slate_engine::EngineError::Store(slate_stores::StoreError::Io {
                what: "state directory",
                reason: e.to_string(),
            })
        })?;
        let online = engine.online()?;
        // The service holds the stores and the ledger open for its lifetime: readers, runs
        // and reloaded engines share them.
        let ledger = engine.ledger()?;
        let engine = engine
            .with_online(online.clone())
            .with_ledger(ledger.clone());
        let fingerprint = source.as_ref().map(|s| s.fingerprint());
        Ok(Arc::new(AppState {
            engine: RwLock::new(Arc::new(engine)),
            online,
            ledger,
            shared: Mutex::new(Shared::default()),
            metrics: Mutex::new(metrics::Metrics::default()),
            token,
            gate: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            active: Mutex::new(None),
            source,
            fingerprint: Mutex::new(fingerprint),
        }))
    }

    /// The engine of the current project.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Stops taking runs: queued API runs are cancelled, the scheduler takes no more ticks.
    pub fn stop_runs(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Waits until no run is in progress (after [`AppState::stop_runs`], none starts again).
    pub async fn runs_finished(&self) {
        drop(self.gate.lock().await);
    }

    /// The stage of the run in progress, if any.
    pub fn active_stage(&self) -> Option<String> {
        self.active.lock().ok().and_then(|a| a.clone())
    }

    /// Loads the project again when its files changed: the new one replaces the running one
    /// when it is valid. Returns what happened, if anything.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let source = self.source.as_ref()?;
        let fp = source.fingerprint();
        {
            let mut seen = self.fingerprint.lock().ok()?;
            if *seen == Some(fp) {
                return None;
            }
            *seen = Some(fp);
        }
        let result = source.load().map(|e| {
            let e = Arc::new(
                e.with_online(self.online.clone())
                    .with_ledger(self.ledger.clone()),
            );
            if let Ok(mut cur) = self.engine.write() {
                *cur = e;
            }
        });
        let outcome = if result.is_ok() { "loaded" } else { "rejected" };
        match &result {
            Ok(()) => eprintln!("slate serve: the project changed; the new version is loaded"),
            Err(e) => eprintln!(
                "slate serve: the project changed but is not valid; the running version stays:\n{e}"
            ),
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.add(
                "slate_project_reloads_total",
                "Project changes seen by the service, by outcome.",
                metrics::labels(&[("outcome", outcome)]),
                1.0,
            );
        }
        Some(result)
    }
}

/// Times and counts every request by route, and refuses one without the service's bearer
/// token (health checks need none).
async fn observe(
    State(s): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let t = Instant::now();
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let authorized = match &s.token {
        Some(token) if req.uri().path() != "/healthz" => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            given == Some(token.as_str())
        }
        _ => true,
    };
    let response = if authorized {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <token>`",
        )
    };
    if let Ok(mut m) = s.metrics.lock() {
        m.request(&route, &method, response.status().as_u16(), t.elapsed());
    }
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/query/online", post(online::query_online))
        .route("/v1/runs", post(runs::trigger_run).get(runs::list_runs))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
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

pub(crate) fn json_response(code: StatusCode, v: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    json_response(code, json!({"error": message.into()}))
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    // Watermarks come from the ledger, so runs of other processes count too.
    let ledger = s.ledger.clone();
    let marks = tokio::task::spawn_blocking(move || ledger.watermarks())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (queued, running) = match s.shared.lock() {
        Ok(sh) => (
            sh.runs.iter().filter(|r| r.status == "queued").count(),
            sh.runs.iter().filter(|r| r.status == "running").count(),
        ),
        Err(_) => (0, 0),
    };
    let active = s.active_stage();
    let Ok(mut m) = s.metrics.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics lock poisoned");
    };
    for w in &marks {
        let l = metrics::labels(&[("query", &w.query), ("resolver", &w.resolver)]);
        m.set(
            "slate_watermark_lag_seconds",
            "Now minus the watermark of each (query, resolver): how far behind the data the committed runs are.",
            l.clone(),
            (now - w.micros) as f64 / 1e6,
        );
        m.set(
            "slate_watermark_timestamp_seconds",
            "The watermark of each (query, resolver), as a Unix time.",
            l,
            w.micros as f64 / 1e6,
        );
    }
    m.set(
        "slate_api_runs",
        "Runs triggered through the API that have not started or not ended, by status.",
        metrics::labels(&[("status", "queued")]),
        queued as f64,
    );
    m.set(
        "slate_api_runs",
        "Runs triggered through the API that have not started or not ended, by status.",
        metrics::labels(&[("status", "running")]),
        running as f64,
    );
    for stage in ["ingest", "compute", "write"] {
        m.set(
            "slate_run_in_progress",
            "1 for the stage the run in progress is in, else 0.",
            metrics::labels(&[("stage", stage)]),
            f64::from(u8::from(active.as_deref() == Some(stage))),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}
