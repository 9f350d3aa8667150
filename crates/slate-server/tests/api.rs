//! The HTTP API through a real socket: a run triggered with an idempotency key, then online
//! values equal to what the run stored offline; every kind of bad request gets a clear 4xx.

use fraud_example::{Config, START_MICROS, write_warehouse};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use slate_engine::{Engine, EngineConfig};
use slate_types::FixedClock;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;

/// One HTTP/1.1 request on a fresh connection: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: String) -> (u16, String) {
    let (method, path) = (method.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The server may answer (413) before reading a huge body; a broken pipe is fine then.
        let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes()));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|p| p.1.to_string()).unwrap_or_default();
        (status, body)
    })
    .await
    .expect("request")
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_online_values_over_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    let cfg = Config {
        users: 80,
        merchants: 30,
        seed: 4,
        activity: 1.0,
    };
    write_warehouse(&data, &cfg, 0, 12).expect("data");
    let project_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud");
    let project = slate_project::load_project(&project_dir).expect("project");
    let engine = Engine::new(EngineConfig {
        project,
        env: "default".into(),
        data_dir: Some(data),
        state_dir: Some(state.clone()),
        clock: Arc::new(FixedClock(START_MICROS + 20 * DAY)),
    })
    .expect("engine");
    let offline = engine.offline();
    let app = slate_server::AppState::new(engine, None).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slate_server::serve(listener, app, async {
        let _ = stopped.await;
    }));

    assert_eq!(http(addr, "GET", "/healthz", String::new()).await.0, 200);
    let ask = |ids: Value| {
        json!({"inputs": {"transaction.id": ids}, "outputs": ["transaction.is_fraud", "transaction.fraud_score"]})
            .to_string()
    };
    // Before any run: nothing stored for the key.
    let (code, body) = http(addr, "POST", "/v1/query/online", ask(json!(1))).await;
    assert_eq!(code, 404, "{body}");

    // A run, triggered twice with one idempotency key: one run.
    let trigger = json!({"query": "run_fraud_model", "idempotency_key": "nightly-1"}).to_string();
    let (code, body) = http(addr, "POST", "/v1/runs", trigger.clone()).await;
    assert_eq!(code, 202, "{body}");
    let id = json_of(&body)["id"].as_str().expect("id").to_string();
    let (code, body) = http(addr, "POST", "/v1/runs", trigger).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["id"], json!(id));
    assert_eq!(json_of(&body)["duplicate"], json!(true));
    let mut status = String::new();
    let mut run = Value::Null;
    for _ in 0..600 {
        let (_, body) = http(addr, "GET", "/v1/runs", String::new()).await;
        let runs = json_of(&body)["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mine: Vec<&Value> = runs.iter().filter(|r| r["id"] == json!(id)).collect();
        assert_eq!(mine.len(), 1, "one run for one key: {body}");
        assert_eq!(runs.len(), 1, "no other run: {body}");
        status = mine[0]["status"].as_str().unwrap_or_default().to_string();
        run = mine[0].clone();
        if status != "running" && status != "queued" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "succeeded", "{run}");
    // The record carries what the run did.
    assert_eq!(run["trigger"], json!("api"));
    assert_eq!(run["idempotency_key"], json!("nightly-1"));
    assert!(
        run["rows_ingested"].as_u64().is_some_and(|n| n > 0),
        "{run}"
    );
    assert!(
        run["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0),
        "{run}"
    );
    assert!(run["watermark_after"].is_string(), "{run}");
    assert!(
        run["outputs"].as_array().is_some_and(|o| !o.is_empty()),
        "{run}"
    );
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["stage"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(stages, ["ingest", "compute", "predict", "write"], "{run}");

    // Online values equal the offline record of the same run.
    let batches = offline.read_all("run_fraud_model").await.expect("read");
    let b = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    let col = |n: &str| b.column_by_name(n).expect(n).clone();
    let ids = arrow::compute::cast(&col("id"), &arrow::datatypes::DataType::Int64).expect("ids");
    let ids = ids
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("i64");
    let fraud = col("is_fraud");
    let fraud = fraud
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .expect("bool");
    let score = col("fraud_score");
    let score = score
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .expect("f64");
    let rows: Vec<usize> = (0..b.num_rows())
        .step_by((b.num_rows() / 7).max(1))
        .collect();
    let wanted: Vec<i64> = rows.iter().map(|&i| ids.value(i)).collect();
    let (code, body) = http(addr, "POST", "/v1/query/online", ask(json!(wanted))).await;
    assert_eq!(code, 200, "{body}");
    let data = json_of(&body)["data"].as_array().cloned().expect("data");
    // The raw text of each value, to compare floats exactly (not through a JSON parser).
    let top: HashMap<String, Box<RawValue>> = serde_json::from_str(&body).expect("raw");
    let raw_values: Vec<HashMap<String, Box<RawValue>>> =
        serde_json::from_str(top["data"].get()).expect("raw data");
    assert_eq!(data.len(), 2 * rows.len());
    for (k, &i) in rows.iter().enumerate() {
        let (f, s) = (&data[2 * k], &data[2 * k + 1]);
        assert_eq!(f["key"], json!(ids.value(i)));
        assert_eq!(f["field"], json!("transaction.is_fraud"));
        assert_eq!(
            f["value"],
            json!(fraud.value(i)),
            "is_fraud of {}",
            ids.value(i)
        );
        assert_eq!(
            raw_values[2 * k + 1]
                .get("value")
                .map(|r| r.get().parse::<f64>()),
            Some(Ok(score.value(i))),
            "score of {}, exactly",
            ids.value(i)
        );
        assert!(s["value"].is_number());
        assert!(f["ts"].as_str().is_some_and(|t| t.starts_with("20")), "{f}");
    }

    // A list with a key no run stored: its values are null and `errors` names it.
    let (code, body) = http(
        addr,
        "POST",
        "/v1/query/online",
        ask(json!([ids.value(0), 999_999_999])),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(4));
    assert_eq!(v["data"][2]["value"], Value::Null);
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{body}");
    assert!(
        errors[0].as_str().is_some_and(|e| e.contains("999999999")),
        "{body}"
    );

    // Bad requests: each a 4xx with a message.
    let cases = [
        ("/v1/query/online", "{not json".to_string(), 400),
        (
            "/v1/query/online",
            json!({"inputs": {"transaction.id": 1}, "outputs": ["transaction.no_such"]})
                .to_string(),
            400,
        ),
        (
            "/v1/query/online",
            json!({"inputs": {"transaction.id": "abc"}, "outputs": ["transaction.is_fraud"]})
                .to_string(),
            400,
        ),
        (
            "/v1/query/online",
            json!({"inputs": {"transaction.amount": 3}, "outputs": ["transaction.is_fraud"]})
                .to_string(),
            400,
        ),
        ("/v1/query/online", "x".repeat(2 << 20), 413),
        ("/v1/runs", json!({"query": "nope"}).to_string(), 404),
    ];
    for (path, body, want) in cases {
        let len = body.len();
        let (code, text) = http(addr, "POST", path, body).await;
        assert_eq!(code, want, "{path} with a {len}-byte body: {text}");
        if want != 413 {
            assert!(
                json_of(&text)["error"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{text}"
            );
        }
    }

    let (code, text) = http(addr, "GET", "/metrics", String::new()).await;
    assert_eq!(code, 200);
    assert!(
        text.contains(
            "slate_runs_total{query=\"run_fraud_model\",trigger=\"api\",status=\"succeeded\"} 1"
        ),
        "{text}"
    );
    for series in [
        "slate_rows_ingested_total{query=\"run_fraud_model\"}",
        "slate_run_duration_seconds_count{query=\"run_fraud_model\"} 1",
        "slate_watermark_lag_seconds{query=\"run_fraud_model\",resolver=",
        "slate_http_request_duration_seconds_bucket{route=\"/v1/query/online\",method=\"POST\",le=",
        "slate_http_requests_total{route=\"/v1/query/online\",method=\"POST\",code=\"400\"}",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("slate_"))
    );
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_except_for_health_checks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud");
    let engine = Engine::new(EngineConfig {
        project: slate_project::load_project(&project_dir).expect("project"),
        env: "default".into(),
        data_dir: Some(tmp.path().join("warehouse")),
        state_dir: Some(tmp.path().join("state")),
        clock: Arc::new(FixedClock(START_MICROS)),
    })
    .expect("engine");
    let app = slate_server::AppState::new(engine, Some("s3cret".into())).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slate_server::serve(listener, app, async {
        let _ = stopped.await;
    }));
    assert_eq!(http(addr, "GET", "/healthz", String::new()).await.0, 200);
    let (code, body) = http(addr, "GET", "/v1/runs", String::new()).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("Bearer"))
    );
    let authed = |path: &str| {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).expect("write");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf
        })
    };
    let reply = authed("/v1/runs").await.expect("request");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}
