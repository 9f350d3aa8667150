//! `slate serve` as a process: SIGTERM during a run (finished within the grace period, or
//! abandoned uncommitted past it, then rerun clean), a hand-started `slate run` refused while
//! the service holds the stores, a changed project picked up without a restart, and two
//! services sharing one PostgreSQL metadata store (the server at 127.0.0.1:5432, and Redis at
//! 127.0.0.1:6379; the test fails without them) where each tick runs once.

use crate::common;

use common::{project, stores};
use fraud_example::{Config, write_warehouse};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn slate(project: &Path, data: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slate"));
    c.arg("--project")
        .arg(project)
        .arg("--data-dir")
        .arg(data)
        .arg("--state-dir")
        .arg(state);
    c
}

struct Service {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
}

/// Starts `slate serve` on a free loopback port and waits until it listens.
fn start(project: &Path, data: &Path, state: &Path, extra: &[&str]) -> Service {
    let mut child = slate(project, data, state)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn slate serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    let addr = first
        .split("http://")
        .nth(1)
        .expect("listening line")
        .trim()
        .parse()
        .expect("address");
    let stdout = Arc::new(Mutex::new(String::new()));
    let sink = stdout.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let mut s = sink.lock().expect("lock");
            s.push_str(&l);
            s.push('\n');
        }
    });
    Service {
        child,
        addr,
        stdout,
    }
}

/// A test that fails does not leave its service running.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_string())
    }

    fn runs(&self) -> Vec<Value> {
        let (code, body) = self.http("GET", "/v1/runs", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls until `ok` holds (or fails the test after `secs`).
    fn wait_for(&self, secs: u64, what: &str, mut ok: impl FnMut(&Self) -> bool) {
        let t = Instant::now();
        while !ok(self) {
            assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and everything the service printed.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the service did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let out = self.stdout.lock().expect("lock").clone();
        (status, out)
    }
}

fn committed_runs(state: &Path) -> usize {
    use slate_stores::Ledger as _;
    slate_stores::RedbLedger::open(&state.join("ledger.redb"))
        .expect("ledger")
        .committed_runs()
        .expect("runs")
        .len()
}

fn warehouse(dir: &Path, users: usize, days: i64) {
    write_warehouse(
        dir,
        &Config {
            users,
            merchants: 80,
            seed: 5,
            activity: 1.0,
        },
        0,
        days,
    )
    .expect("data");
}

fn trigger(s: &Service) -> String {
    let (code, body) = s.http(
        "POST",
        "/v1/runs",
        &json!({"query": "run_fraud_model"}).to_string(),
    );
    assert_eq!(code, 202, "{body}");
    serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Whether the run is past ingest (its ingested rows are written, nothing is committed).
fn in_compute_or_write(s: &Service) -> bool {
    let (_, m) = s.http("GET", "/metrics", "");
    m.contains("slate_run_in_progress{stage=\"compute\"} 1")
        || m.contains("slate_run_in_progress{stage=\"write\"} 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_0_with_one_clean_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    warehouse(&data, 400, 30);
    let reference = tmp.path().join("reference");
    let ok = slate(&project(), &data, &reference)
        .args(["run", "run_fraud_model"])
        .stdout(Stdio::null())
        .status()
        .expect("reference run");
    assert!(ok.success());
    let want = stores(&reference).await;

    // Within the grace period: the run finishes and commits, then the service exits 0.
    let state = tmp.path().join("finished");
    let s = start(&project(), &data, &state, &[]);
    let by_hand = slate(&project(), &data, &state)
        .args(["run", "run_fraud_model"])
        .output()
        .expect("run by hand");
    assert!(!by_hand.status.success());
    let err = String::from_utf8_lossy(&by_hand.stderr);
    assert!(err.contains("open in another process"), "{err}");
    let id = trigger(&s);
    s.wait_for(120, "the run reaches compute", in_compute_or_write);
    let (status, out) = s.terminate();
    assert!(status.success(), "exit {status:?}: {out}");
    assert!(out.contains("slate serve: stopped\n"), "{out}");
    assert!(!out.contains("abandoned"), "{out}");
    assert_eq!(committed_runs(&state), 1, "{id} committed once");
    assert_eq!(stores(&state).await, want);

    // Past the grace period: abandoned uncommitted; the next run leaves one clean run.
    let state = tmp.path().join("abandoned");
    let s = start(&project(), &data, &state, &["--grace", "0s"]);
    trigger(&s);
    s.wait_for(120, "the run reaches compute", in_compute_or_write);
    let (status, out) = s.terminate();
    assert!(status.success(), "exit {status:?}: {out}");
    assert!(out.contains("abandoned after the grace period"), "{out}");
    assert_eq!(committed_runs(&state), 0);
    let rerun = slate(&project(), &data, &state)
        .args(["run", "run_fraud_model"])
        .stdout(Stdio::null())
        .status()
        .expect("rerun");
    assert!(rerun.success());
    assert_eq!(committed_runs(&state), 1);
    assert_eq!(stores(&state).await, want);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == ".slate" || name == "data" || name == "target" {
            continue;
        }
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).expect("copy");
        }
    }
}

#[test]
fn a_changed_project_is_picked_up_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    warehouse(&data, 20, 3);
    let proj = tmp.path().join("project");
    copy_dir(&project(), &proj);
    let state = tmp.path().join("state");
    let s = start(&proj, &data, &state, &[]);
    let queries = proj.join("src/queries.yaml");
    let original = std::fs::read_to_string(&queries).expect("queries");
    let ask = |s: &Service| {
        s.http(
            "POST",
            "/v1/runs",
            &json!({"query": "hourly_copy"}).to_string(),
        )
    };
    assert_eq!(ask(&s).0, 404);

    // A broken change is refused; the running project stays.
    std::fs::write(&queries, format!("{original}- name: [unclosed\n")).expect("write");
    s.wait_for(30, "the broken project is rejected", |s| {
        s.http("GET", "/metrics", "")
            .1
            .contains("slate_project_reloads_total{outcome=\"rejected\"} 1")
    });
    assert_eq!(s.http("GET", "/healthz", "").0, 200);

    // A valid change is loaded: the new query can run.
    let added = original.replace("run_fraud_model", "hourly_copy").replace(
        "schedule: \"0 0 * * *\" # every day at midnight",
        "schedule: \"0 * * * *\"",
    );
    std::fs::write(&queries, format!("{original}{added}")).expect("write");
    let mut id = String::new();
    s.wait_for(30, "the new query is known", |s| {
        let (code, body) = ask(s);
        if code == 202 {
            id = serde_json::from_str::<Value>(&body).expect("json")["id"]
                .as_str()
                .expect("id")
                .to_string();
        }
        code == 202
    });
    s.wait_for(120, "the new query's run ends", |s| {
        s.runs()
            .iter()
            .any(|r| r["id"] == json!(id) && r["status"] == "succeeded")
    });
    let (status, out) = s.terminate();
    assert!(status.success(), "{out}");
}

/// Runs `sql` in database `db` of the test server.
async fn pg(db: &str, sql: &str) {
    let (client, conn) = tokio_postgres::Config::new()
        .host(slate_testkit::postgres().host.clone())
        .port(slate_testkit::postgres().port)
        .user(slate_testkit::postgres().user.clone())
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must run for this test (start it with `scripts/services`): {e}")
        });
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect("statement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_metadata_store_run_each_tick_once() {
    let db = format!("slate_serve_{}", std::process::id());
    pg(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
    pg("postgres", &format!("CREATE DATABASE {db}")).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    warehouse(&data, 30, 3);
    let proj = tmp.path().join("project");
    copy_dir(&project(), &proj);
    // An environment whose services share a state: Redis online, PostgreSQL metadata, and one
    // offline directory (`--state-dir`). The query runs every 3 seconds.
    let yaml = std::fs::read_to_string(proj.join("slate.yaml")).expect("slate.yaml");
    let shared = format!(
        "  shared:\n    sources:\n      sf:\n        kind: embedded\n        path: data/warehouse\n    online:\n      kind: redis\n      host: {}\n      port: {}\n      prefix: slate-test:{db}\n    metadata:\n      kind: postgres\n      host: {}\n      port: {}\n      user: {}\n      database: {db}\n",
        slate_testkit::redis().host,
        slate_testkit::redis().port,
        slate_testkit::postgres().host,
        slate_testkit::postgres().port,
        slate_testkit::postgres().user,
    );
    std::fs::write(proj.join("slate.yaml"), format!("{yaml}{shared}")).expect("write");
    let queries = proj.join("src/queries.yaml");
    let text = std::fs::read_to_string(&queries).expect("queries");
    assert!(text.contains("schedule: \"0 0 * * *\""));
    std::fs::write(
        &queries,
        text.replace("schedule: \"0 0 * * *\"", "schedule: \"*/3 * * * * *\""),
    )
    .expect("write");
    let state = tmp.path().join("state");
    let env = ["--env", "shared"];
    let first = start(&proj, &data, &state, &env);
    let second = start(&proj, &data, &state, &env);

    let mut config = tokio_postgres::Config::new();
    config
        .host(slate_testkit::postgres().host.clone())
        .port(slate_testkit::postgres().port)
        .user(slate_testkit::postgres().user.clone())
        .dbname(&db);
    let ledger =
        slate_stores::PgLedger::open(config, db.clone(), "fraud/shared".into(), 3).expect("ledger");
    use slate_stores::Ledger as _;
    let t = Instant::now();
    while ledger.committed_runs().expect("runs").len() < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "timed out: five ticks"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (s1, out1) = first.terminate();
    let (s2, out2) = second.terminate();
    assert!(s1.success() && s2.success(), "{out1}\n{out2}");

    // Each service says which runs it committed; together they are the ledger's, each once.
    let ran = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("slate serve: scheduled run "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    };
    let mut all = ran(&out1);
    all.extend(ran(&out2));
    let committed = ledger.committed_runs().expect("runs");
    assert_eq!(
        ledger.runs().expect("runs").len(),
        committed.len(),
        "no failed run recorded: {out1}\n{out2}"
    );
    let mut ids: Vec<String> = committed.iter().map(|r| r.run_id.clone()).collect();
    ids.sort();
    all.sort();
    assert_eq!(all, ids, "each tick ran once, in one of the services");
    let mut ticks: Vec<i64> = committed.iter().map(|r| r.tick_micros).collect();
    ticks.sort();
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] >= 3_000_000),
        "{ticks:?}"
    );
    drop(ledger);
    pg(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
}
