//! The parts of Snowflake's protocol that the emulator (fakesnow) does not produce, through a
//! front server in this test that forwards every request to the emulator and reshapes its
//! answers as Snowflake does for large and slow queries:
//!
//! - a result split into an inline part and chunks fetched from their own URLs, one of them
//!   gzipped, each requiring the `chunkHeaders` the answer gives; in Arrow, and in Snowflake's
//!   JSON format;
//! - a query answered "in progress" (code 333334) and followed through its result URL;
//! - a session that expired (code 390112): the source logs in again and retries;
//! - a query abandoned before its end (a resolver's timeout): the source sends an
//!   `abort-request` for its request id.
//!
//! Rows still come from the emulator, so the test compares them with a direct read. Fails
//! (never skips) without the emulator at 127.0.0.1:8765 (`SLATE_TEST_SNOWFLAKE_HOST`, `_PORT`).

use crate::common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use common::{config, emulator_port, open};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};
use slate_sources::Source;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn emulator() -> String {
    format!(
        "http://{}:{}",
        slate_testkit::snowflake().host,
        emulator_port()
    )
}

/// What the front saw and how it behaves.
#[derive(Default)]
struct Front {
    /// Where the front listens (`http://127.0.0.1:port`).
    base: Mutex<String>,
    logins: Mutex<usize>,
    /// Query requests' ids, in order.
    requests: Mutex<Vec<String>>,
    /// Aborted requests' ids.
    aborts: Mutex<Vec<String>>,
    /// The next query request is refused as from an expired session.
    expire_next: Mutex<bool>,
    /// The next result comes in Snowflake's JSON format (values as text) rather than Arrow.
    json_next: Mutex<bool>,
    /// Answers kept for their result URL: (id, polls left before the answer, answer).
    pending: Mutex<Vec<(String, usize, Value)>>,
    /// Chunks served: (path, bytes).
    chunks: Mutex<Vec<(String, Vec<u8>)>>,
}

const CHUNK_KEY: &str = "x-test-chunk-key";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("front state")
}

async fn forward(path_and_query: &str, headers: &HeaderMap, body: Bytes) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path_and_query}", emulator()))
        .body(body);
    for name in ["authorization", "content-type", "accept"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    let resp = req.send().await.expect("the emulator answers");
    serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json")
}

async fn login(State(f): State<Arc<Front>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    *lock(&f.logins) += 1;
    let pq = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    axum::Json(forward(&pq, &headers, body).await).into_response()
}

/// The Arrow IPC stream of `batch`.
fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema()).expect("writer");
        w.write(batch).expect("write");
        w.finish().expect("finish");
    }
    out
}

/// The rows of `b` as Snowflake's JSON format writes them: every value as text.
fn json_rows(b: &RecordBatch) -> Vec<Value> {
    use datafusion::arrow::array::{Array, AsArray};
    let texts: Vec<_> = b
        .columns()
        .iter()
        .map(|c| {
            datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Utf8)
                .expect("text")
        })
        .collect();
    (0..b.num_rows())
        .map(|r| {
            texts
                .iter()
                .map(|c| {
                    let c = c.as_string::<i32>();
                    if c.is_null(r) {
                        Value::Null
                    } else {
                        Value::String(c.value(r).to_string())
                    }
                })
                .collect()
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

async fn query(State(f): State<Arc<Front>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let pq = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    let id = pq
        .split("requestId=")
        .nth(1)
        .map(|s| s.split('&').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    lock(&f.requests).push(id.clone());
    let sent: Value = serde_json::from_slice(&body).expect("json body");
    let sql = sent["sqlText"].as_str().unwrap_or_default().to_string();
    if std::mem::take(&mut *lock(&f.expire_next)) {
        return axum::Json(json!({
            "success": false,
            "code": "390112",
            "message": "Your session has expired. Please login again.",
            "data": null,
        }))
        .into_response();
    }
    if sql.contains("/* slow */") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut answer = forward(&pq, &headers, body).await;
    // A large result: an inline part, then two chunks (the second gzipped).
    if let Some(b64) = answer["data"]["rowsetBase64"]
        .as_str()
        .filter(|b| !b.is_empty())
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let batches: Vec<RecordBatch> = StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("ipc")
            .map(|b| b.expect("batch"))
            .collect();
        let all = concat_batches(&batches[0].schema(), &batches).expect("concat");
        let n = all.num_rows();
        if n >= 3 {
            let (a, b) = (n / 3, 2 * n / 3);
            let base = lock(&f.base).clone();
            let mut chunks = Vec::new();
            for (i, (from, to)) in [(a, b), (b, n)].into_iter().enumerate() {
                let path = format!("/chunks/{id}/{i}");
                let mut bytes = ipc(&all.slice(from, to - from));
                if i == 1 {
                    bytes = gzip(&bytes);
                }
                lock(&f.chunks).push((path.clone(), bytes));
                chunks.push(json!({"url": format!("{base}{path}"), "rowCount": to - from}));
            }
            answer["data"]["rowsetBase64"] = Value::String(
                base64::engine::general_purpose::STANDARD.encode(ipc(&all.slice(0, a))),
            );
            answer["data"]["chunks"] = Value::Array(chunks);
            answer["data"]["chunkHeaders"] = json!({ CHUNK_KEY: "chunk-secret" });
            if std::mem::take(&mut *lock(&f.json_next)) {
                // The same rows as JSON text: the first third inline, the rest in two chunks
                // of comma-separated rows without brackets (the second gzipped).
                let rows = json_rows(&all);
                answer["data"]["queryResultFormat"] = json!("json");
                answer["data"]["rowsetBase64"] = Value::Null;
                answer["data"]["rowset"] = Value::Array(rows[..a].to_vec());
                let mut served = lock(&f.chunks);
                let last = served.len();
                for (i, (from, to)) in [(a, b), (b, n)].into_iter().enumerate() {
                    let text: Vec<String> = rows[from..to].iter().map(Value::to_string).collect();
                    let mut bytes = text.join(",").into_bytes();
                    if i == 1 {
                        bytes = gzip(&bytes);
                    }
                    served[last - 2 + i].1 = bytes;
                }
            }
        }
    }
    // Every query is "in progress" for two polls of its result URL.
    lock(&f.pending).push((id.clone(), 2, answer));
    axum::Json(json!({
        "success": true,
        "code": "333334",
        "message": "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
        "data": {"queryId": id, "getResultUrl": format!("/queries/{id}/result")},
    }))
    .into_response()
}

async fn result(State(f): State<Arc<Front>>, uri: Uri) -> Response {
    let id = uri.path().split('/').nth(2).unwrap_or_default().to_string();
    let mut pending = lock(&f.pending);
    let Some(pos) = pending.iter().position(|(p, _, _)| *p == id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if pending[pos].1 > 0 {
        pending[pos].1 -= 1;
        return axum::Json(json!({
            "success": true,
            "code": "333334",
            "data": {"queryId": id, "getResultUrl": format!("/queries/{id}/result")},
        }))
        .into_response();
    }
    let (_, _, answer) = pending.remove(pos);
    axum::Json(answer).into_response()
}

async fn chunk(State(f): State<Arc<Front>>, uri: Uri, headers: HeaderMap) -> Response {
    if headers.get(CHUNK_KEY).and_then(|v| v.to_str().ok()) != Some("chunk-secret") {
        return StatusCode::FORBIDDEN.into_response();
    }
    let chunks = lock(&f.chunks);
    match chunks.iter().find(|(p, _)| p == uri.path()) {
        Some((_, bytes)) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn abort(State(f): State<Arc<Front>>, body: Bytes) -> Response {
    let sent: Value = serde_json::from_slice(&body).expect("json body");
    lock(&f.aborts).push(sent["requestId"].as_str().unwrap_or_default().to_string());
    axum::Json(json!({"success": true})).into_response()
}

async fn start_front() -> (Arc<Front>, u16) {
    let front = Arc::new(Front::default());
    let app = Router::new()
        .route("/session/v1/login-request", post(login))
        .route("/queries/v1/query-request", post(query))
        .route("/queries/v1/abort-request", post(abort))
        .route("/queries/{id}/result", get(result))
        .route("/chunks/{id}/{n}", get(chunk))
        .with_state(front.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    *lock(&front.base) = format!("http://127.0.0.1:{port}");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("front");
    });
    (front, port)
}

async fn all(source: &dyn Source, sql: &str) -> RecordBatch {
    let batches = source.query("r", sql, None).await.expect("query");
    concat_batches(&batches[0].schema(), &batches).expect("concat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_progress_expiry_and_abort() {
    let db = format!("SLATE_PROTO_{}", std::process::id());
    let port = emulator_port();
    let direct = open(config(port, "ADMIN")).await;
    for sql in [
        format!("CREATE OR REPLACE DATABASE {db}"),
        format!("CREATE SCHEMA IF NOT EXISTS {db}.PUBLIC"),
        format!(
            "CREATE OR REPLACE TABLE {db}.PUBLIC.big AS SELECT seq4() AS id, 'row ' || seq4() AS label FROM TABLE(GENERATOR(ROWCOUNT => 30000))"
        ),
    ] {
        if let Err(e) = direct.query("setup", &sql, None).await {
            panic!("{sql}: {e} (the Snowflake emulator must run; `scripts/services` starts it)");
        }
    }
    let sql = "SELECT id, label FROM big ORDER BY id";
    let want = all(&*open(config(port, &db)).await, sql).await;
    assert_eq!(want.num_rows(), 30_000);

    // Through the front: in progress twice, then an inline part and two chunks.
    let (front, front_port) = start_front().await;
    let source = open(config(front_port, &db)).await;
    let got = all(&*source, sql).await;
    assert_eq!(got, want, "inline part and chunks, in order");
    assert_eq!(lock(&front.chunks).len(), 2, "the result came in chunks");
    assert!(lock(&front.pending).is_empty(), "followed to its end");
    assert_eq!(*lock(&front.logins), 1);

    // The same result in the JSON format, inline and in chunks.
    *lock(&front.json_next) = true;
    let as_json = all(&*source, sql).await;
    assert!(!*lock(&front.json_next), "the result came as JSON");
    assert_eq!(as_json, want);

    // An expired session: the source logs in again and the query runs.
    *lock(&front.expire_next) = true;
    let again = all(&*source, sql).await;
    assert_eq!(again, want);
    assert_eq!(*lock(&front.logins), 2, "logged in again");

    // Abandoned at a timeout: the query is aborted on the server, by its request id.
    let slow = "SELECT id FROM big /* slow */";
    let abandoned =
        tokio::time::timeout(Duration::from_millis(500), source.query("r", slow, None)).await;
    assert!(abandoned.is_err(), "the query was still running");
    let id = lock(&front.requests).last().cloned().expect("a request");
    let mut aborted = false;
    for _ in 0..100 {
        if lock(&front.aborts).contains(&id) {
            aborted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(aborted, "abort-request sent for {id}");
}
