//! Runs in the service: the scheduler task, `POST /v1/runs` and `GET /v1/runs`. Runs of one
//! service go one at a time (a run triggered during another waits, `queued`); a run started
//! by hand in another process is refused by the state directory's lock.

use crate::{AppState, error, json_response};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use slate_engine::{EngineError, Progress, RunSummary, Scheduler, plan_query};
use slate_stores::RunRecord;
use slate_types::format_rfc3339;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the scheduler looks for a changed project while it waits for the next tick.
const POLL: Duration = Duration::from_secs(2);

/// A run started through the API, while the service runs.
#[derive(Debug, Clone)]
pub(crate) struct ApiRun {
    pub(crate) id: String,
    pub(crate) query: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub(crate) status: &'static str,
    pub(crate) idempotency_key: Option<String>,
    /// The ledger's id of the run, once it has ended.
    pub(crate) run_id: Option<String>,
    pub(crate) error: Option<String>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Publishes the stage a run is in, for `/metrics`.
struct ServiceProgress<'a>(&'a AppState);

impl Progress for ServiceProgress<'_> {
    fn stage(&self, name: &str) {
        if let Ok(mut s) = self.0.active.lock() {
            *s = Some(name.to_string());
        }
    }
    fn done(&self, _: &str, _: &str, _: Duration) {}
}

/// Counts a finished run in the metrics.
fn observe_run(
    state: &AppState,
    query: &str,
    trigger: &str,
    result: &Result<RunSummary, EngineError>,
) {
    let Ok(mut m) = state.metrics.lock() else {
        return;
    };
    let status = if result.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    m.add(
        "slate_runs_total",
        "Runs by query, trigger and status, since the service started.",
        crate::metrics::labels(&[("query", query), ("trigger", trigger), ("status", status)]),
        1.0,
    );
    if let Ok(s) = result {
        let l = crate::metrics::labels(&[("query", query)]);
        m.add(
            "slate_rows_ingested_total",
            "Root rows read by committed runs.",
            l.clone(),
            s.rows_ingested as f64,
        );
        m.add(
            "slate_rows_scored_total",
            "Rows whose outputs committed runs computed.",
            l.clone(),
            s.rows_scored as f64,
        );
        for scan in &s.record.scans {
            if let Some(late) = scan.late_rows {
                m.add(
                    "slate_late_rows_total",
                    "Rows that arrived after their time range was read and fell below the lookback: no run reads them.",
                    crate::metrics::labels(&[("query", query), ("resolver", &scan.resolver)]),
                    late as f64,
                );
            }
        }
        let secs = (s.record.finished_micros - s.record.started_micros) as f64 / 1e6;
        m.run_duration(query, secs);
    }
}

/// Runs the project's schedules until `stop` turns true: at each tick, the due runs, then a
/// wait until the next tick (looking for a changed project every few seconds). A run in
/// progress when `stop` turns true finishes before the task ends.
pub fn spawn_scheduler(
    state: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let since = now_micros();
        loop {
            if *stop.borrow() || state.stopping.load(Ordering::SeqCst) {
                return;
            }
            state.reload_if_changed();
            let engine = state.engine();
            let scheduler = Scheduler::new(&engine, since);
            {
                let _gate = state.gate.lock().await;
                if state.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let progress = ServiceProgress(&state);
                for (query, _tick, result) in scheduler.step(now_micros(), &progress).await {
                    observe_run(&state, &query, "schedule", &result);
                    match &result {
                        Ok(s) => println!(
                            "slate serve: scheduled run {} committed ({} rows ingested, {} scored)",
                            s.run_id, s.rows_ingested, s.rows_scored
                        ),
                        Err(e) => eprintln!("slate serve: scheduled run of `{query}` failed: {e}"),
                    }
                }
                if let Ok(mut a) = state.active.lock() {
                    *a = None;
                }
            }
            let wait = scheduler
                .next_tick(now_micros())
                .map_or(POLL, |next| {
                    Duration::from_micros((next - now_micros()).max(0) as u64)
                })
                .min(POLL);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

pub(crate) async fn trigger_run(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let Some(query) = req.get("query").and_then(Value::as_str) else {
        return bad("`query` must name a scheduled query".into());
    };
    let key = match req.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() => Some(k.clone()),
        Some(other) => {
            return bad(format!(
                "`idempotency_key` must be a non-empty string, got {other}"
            ));
        }
    };
    if s.stopping.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down and takes no new runs",
        );
    }
    let engine = s.engine();
    let project = engine.project();
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
            status: "queued",
            idempotency_key: key.clone(),
            run_id: None,
            error: None,
        });
        if let Some(k) = key {
            let i = sh.runs.len() - 1;
            sh.by_key.insert(k, i);
        }
        id
    };
    let state = s.clone();
    let api_id = id.clone();
    let query_name = query.to_string();
    let set = move |state: &AppState, f: &dyn Fn(&mut ApiRun)| {
        if let Ok(mut sh) = state.shared.lock()
            && let Some(r) = sh.runs.iter_mut().find(|r| r.id == api_id)
        {
            f(r);
        }
    };
    tokio::spawn(async move {
        let _gate = state.gate.lock().await;
        if state.stopping.load(Ordering::SeqCst) {
            set(&state, &|r| r.status = "cancelled");
            return;
        }
        set(&state, &|r| r.status = "running");
        let engine = state.engine();
        let progress = ServiceProgress(&state);
        let (run_id, result) = engine.run_recorded(&plan, None, &progress).await;
        if let Ok(mut a) = state.active.lock() {
            *a = None;
        }
        observe_run(&state, &query_name, "api", &result);
        let (status, err) = match &result {
            Ok(_) => ("succeeded", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        set(&state, &|r| {
            r.status = status;
            r.run_id = Some(run_id.clone());
            r.error = err.clone();
        });
    });
    json_response(
        StatusCode::ACCEPTED,
        json!({"id": id, "query": query, "status": "queued", "duplicate": false}),
    )
}

/// A ledger record as the API shows it.
fn record_json(r: &RunRecord) -> Value {
    let time = |m: i64| (m > 0).then(|| format_rfc3339(m));
    json!({
        "id": r.run_id,
        "run_id": r.run_id,
        "query": r.query,
        "tick": format_rfc3339(r.tick_micros),
        "trigger": if r.trigger.is_empty() { "unknown" } else { r.trigger.as_str() },
        "status": r.status.as_str(),
        "started_at": time(r.started_micros),
        "finished_at": time(r.finished_micros),
        "duration_seconds": (r.started_micros > 0)
            .then(|| (r.finished_micros - r.started_micros) as f64 / 1e6),
        "rows_ingested": r.rows_ingested,
        "rows_scored": r.rows_scored,
        "late_rows": r.late_rows,
        "watermark_before": r.watermark_before.map(format_rfc3339),
        "watermark_after": r.watermark_after.map(format_rfc3339),
        "scans": r.scans.iter().map(|s| json!({
            "resolver": s.resolver,
            "rows": s.rows,
            "read_from": s.bound_micros.map(format_rfc3339),
            "watermark_before": s.watermark_before.map(format_rfc3339),
            "watermark_after": s.watermark_after.map(format_rfc3339),
            "late_rows": s.late_rows,
        })).collect::<Vec<_>>(),
        "outputs": r.outputs.iter().map(|o| json!({
            "feature": o.feature, "rows": o.rows, "nulls": o.nulls,
        })).collect::<Vec<_>>(),
        "stages": r.stages.iter().map(|(n, secs)| json!({"stage": n, "seconds": secs}))
            .collect::<Vec<_>>(),
        "error": r.error,
    })
}

/// Every run in the ledger (committed and failed) in start order, then the API's runs that
/// have not ended; a ledger run the API started carries the API's id and idempotency key.
pub(crate) async fn list_runs(State(s): State<Arc<AppState>>) -> Response {
    // A ledger call may be a database round trip: off the async workers.
    let ledger = s.ledger.clone();
    let records = match tokio::task::spawn_blocking(move || ledger.runs()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("ledger: {e}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("ledger: {e}")),
    };
    let api: Vec<ApiRun> = match s.shared.lock() {
        Ok(sh) => sh.runs.clone(),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned"),
    };
    let mut runs: Vec<Value> = Vec::new();
    for r in &records {
        let mut v = record_json(r);
        // A failed tick that later succeeded has two records with one run id: the API's run
        // is the one that ended as the API says.
        if let Some(a) = api.iter().find(|a| {
            a.run_id.as_deref() == Some(r.run_id.as_str())
                && (a.status == "succeeded") == (r.status == slate_stores::RunStatus::Succeeded)
        }) {
            v["id"] = json!(a.id);
            v["trigger"] = json!("api");
            v["idempotency_key"] = json!(a.idempotency_key);
        }
        runs.push(v);
    }
    for a in api.iter().filter(|a| {
        a.run_id.is_none()
            || !records
                .iter()
                .any(|r| Some(r.run_id.as_str()) == a.run_id.as_deref())
    }) {
        runs.push(json!({
            "id": a.id,
            "run_id": a.run_id,
            "query": a.query,
            "trigger": "api",
            "status": a.status,
            "idempotency_key": a.idempotency_key,
            "error": a.error,
        }));
    }
    json_response(StatusCode::OK, json!({"runs": runs}))
}
