//! One conformance suite for every run ledger: the embedded redb ledger and the PostgreSQL one
//! (the server at 127.0.0.1:5432; `SLATE_TEST_PG_HOST`, `_PORT`, `_USER` point elsewhere).
//! Watermarks set, moved by commits and dropped; committed and failed runs read back exactly and
//! in start order; last ticks; then a seeded random sequence of operations checked against a
//! model of the ledger after every step. For PostgreSQL also: namespaces that do not see each
//! other, a connection killed by the server, and the advisory run lock. Fails (never skips)
//! without a PostgreSQL server.

use slate_stores::{
    Ledger, OutputRecord, PgLedger, PgRunLock, RedbLedger, RunRecord, RunStatus, ScanRecord,
    Watermark,
};
use std::collections::BTreeMap;

fn pg_config(database: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(slate_testkit::postgres().host.clone())
        .port(slate_testkit::postgres().port)
        .user(slate_testkit::postgres().user.clone())
        .dbname(database)
        .application_name("slate")
        .connect_timeout(std::time::Duration::from_secs(5));
    c
}

/// Runs `sql` in `database` (on a runtime of its own: callers are synchronous).
fn admin(database: &str, sql: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = pg_config(database)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must run for this test (start it with `scripts/services`): {e}")
            });
        tokio::spawn(conn);
        client.simple_query(sql).await.expect("admin statement")
    })
}

/// A fresh database for one test; the ledger creates its tables there.
fn database(tag: &str) -> String {
    let name = format!("slate_ledger_{tag}_{}", std::process::id());
    admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    admin("postgres", &format!("CREATE DATABASE {name}"));
    name
}

fn drop_database(name: &str) {
    admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

fn pg_ledger(database: &str, namespace: &str) -> PgLedger {
    PgLedger::open(
        pg_config(database),
        format!("test database {database}"),
        namespace.into(),
        3,
    )
    .expect("open the PostgreSQL ledger")
}

/// A small deterministic generator, so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn record(run_id: &str, query: &str, tick: i64, started: i64, status: RunStatus) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        query: query.into(),
        tick_micros: tick,
        status,
        trigger: "schedule".into(),
        started_micros: started,
        finished_micros: started + 1_234_567,
        rows_ingested: 42,
        rows_scored: 41,
        late_rows: Some(1),
        watermark_before: Some(tick - 86_400_000_000),
        watermark_after: Some(tick),
        scans: vec![ScanRecord {
            resolver: "transactions".into(),
            rows: 42,
            bound_micros: Some(tick - 3_600_000_000),
            watermark_before: None,
            watermark_after: Some(tick),
            late_rows: None,
        }],
        outputs: vec![OutputRecord {
            feature: "transaction.is_fraud".into(),
            rows: 41,
            nulls: 0,
        }],
        // Floats that a decimal round trip would change if it were not exact.
        stages: vec![
            ("ingest".into(), 0.1 + 0.2),
            ("compute".into(), 1e-7),
            ("write".into(), 123_456.789_012_345_6),
        ],
        error: (status == RunStatus::Failed).then(|| "source `warehouse`: \"quoted\" ✓".into()),
    }
}

/// What a ledger must hold, kept by the test.
#[derive(Default)]
struct Model {
    marks: BTreeMap<(String, String), i64>,
    committed: BTreeMap<String, RunRecord>,
    failed: BTreeMap<(String, i64), RunRecord>,
}

impl Model {
    fn runs(&self) -> Vec<RunRecord> {
        let mut v: Vec<RunRecord> = self
            .committed
            .values()
            .chain(self.failed.values())
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (a.started_micros, a.tick_micros, &a.run_id).cmp(&(
                b.started_micros,
                b.tick_micros,
                &b.run_id,
            ))
        });
        v
    }

    fn check(&self, ledger: &dyn Ledger, step: usize) {
        let marks: Vec<Watermark> = self
            .marks
            .iter()
            .map(|((q, r), m)| Watermark {
                query: q.clone(),
                resolver: r.clone(),
                micros: *m,
            })
            .collect();
        let mut got = ledger.watermarks().expect("watermarks");
        got.sort_by(|a, b| (&a.query, &a.resolver).cmp(&(&b.query, &b.resolver)));
        assert_eq!(got, marks, "step {step}: watermarks");
        for ((q, r), m) in &self.marks {
            assert_eq!(ledger.watermark(q, r).expect("watermark"), Some(*m));
        }
        let runs = self.runs();
        assert_eq!(ledger.runs().expect("runs"), runs, "step {step}: runs");
        let committed: Vec<RunRecord> = runs
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded)
            .cloned()
            .collect();
        assert_eq!(
            ledger.committed_runs().expect("committed"),
            committed,
            "step {step}: committed runs"
        );
        for q in ["q1", "q2", "q3"] {
            let last = committed
                .iter()
                .filter(|r| r.query == q)
                .map(|r| r.tick_micros)
                .max();
            assert_eq!(ledger.last_tick(q).expect("last tick"), last, "step {step}");
            let latest = committed.iter().rfind(|r| r.query == q).cloned();
            assert_eq!(
                ledger.last_committed(q).expect("last committed"),
                latest,
                "step {step}"
            );
        }
        for id in self.committed.keys() {
            assert!(ledger.is_committed(id).expect("is committed"), "{id}");
        }
        for (id, _) in self.failed.keys() {
            assert_eq!(
                ledger.is_committed(id).expect("is committed"),
                self.committed.contains_key(id)
            );
        }
    }
}

fn conformance(ledger: &dyn Ledger) {
    // Empty.
    assert_eq!(ledger.watermark("q1", "r").expect("watermark"), None);
    assert!(ledger.watermarks().expect("watermarks").is_empty());
    assert!(ledger.runs().expect("runs").is_empty());
    assert_eq!(ledger.last_tick("q1").expect("last tick"), None);
    assert!(!ledger.is_committed("q1@x").expect("is committed"));

    // Set, replace and drop a watermark by hand; dropping an absent one is no error.
    ledger.set_watermark("q1", "r", Some(5)).expect("set");
    ledger.set_watermark("q1", "r", Some(-7)).expect("set");
    assert_eq!(ledger.watermark("q1", "r").expect("watermark"), Some(-7));
    assert_eq!(ledger.watermark("q1", "other").expect("watermark"), None);
    ledger.set_watermark("q1", "r", None).expect("drop");
    ledger.set_watermark("q1", "r", None).expect("drop again");
    assert_eq!(ledger.watermark("q1", "r").expect("watermark"), None);

    // A commit moves its watermarks and records the run exactly.
    let run = record("q1@1", "q1", 100, 1_000, RunStatus::Succeeded);
    ledger
        .commit_run(&run, &[("r".into(), 100), ("s".into(), i64::MIN + 1)])
        .expect("commit");
    assert_eq!(ledger.watermark("q1", "r").expect("watermark"), Some(100));
    assert_eq!(
        ledger.watermark("q1", "s").expect("watermark"),
        Some(i64::MIN + 1)
    );
    assert_eq!(ledger.runs().expect("runs"), vec![run.clone()]);

    // Failures: kept per start, never move watermarks, never count as committed.
    let f1 = record("q1@2", "q1", 200, 2_000, RunStatus::Failed);
    let f2 = record("q1@2", "q1", 200, 3_000, RunStatus::Failed);
    ledger.record_failure(&f1).expect("failure");
    ledger.record_failure(&f2).expect("failure");
    assert_eq!(
        ledger.runs().expect("runs"),
        vec![run.clone(), f1.clone(), f2.clone()]
    );
    assert_eq!(ledger.committed_runs().expect("runs"), vec![run.clone()]);
    assert_eq!(ledger.last_tick("q1").expect("last tick"), Some(100));
    assert!(!ledger.is_committed("q1@2").expect("is committed"));
    assert_eq!(ledger.watermark("q1", "r").expect("watermark"), Some(100));

    // The tick that failed commits later: both failures stay, the run is committed.
    let ok2 = record("q1@2", "q1", 200, 4_000, RunStatus::Succeeded);
    ledger
        .commit_run(&ok2, &[("r".into(), 200)])
        .expect("commit");
    assert!(ledger.is_committed("q1@2").expect("is committed"));
    assert_eq!(ledger.last_tick("q1").expect("last tick"), Some(200));
    assert_eq!(ledger.runs().expect("runs"), vec![run, f1, f2, ok2.clone()]);
    assert_eq!(
        ledger.last_committed("q1").expect("last committed"),
        Some(ok2)
    );
}

/// Random operations, checked against the model after each.
fn random_sequence(ledger: &dyn Ledger, seed: u64) {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let queries = ["q1", "q2", "q3"];
    let resolvers = ["a", "b"];
    for step in 0..300 {
        let q = queries[rng.below(3) as usize];
        let r = resolvers[rng.below(2) as usize];
        let tick = rng.below(20) as i64 * 86_400_000_000;
        // Start times are unique, so the start order is total.
        let started = step as i64 * 1_000 + rng.below(1_000) as i64;
        let id = format!("{q}@{tick}");
        match rng.below(10) {
            0 => {
                let m = rng.next() as i64;
                ledger.set_watermark(q, r, Some(m)).expect("set");
                model.marks.insert((q.into(), r.into()), m);
            }
            1 => {
                ledger.set_watermark(q, r, None).expect("drop");
                model.marks.remove(&(q.to_string(), r.to_string()));
            }
            2..=4 => {
                let rec = record(&id, q, tick, started, RunStatus::Failed);
                ledger.record_failure(&rec).expect("failure");
                model.failed.insert((id, started), rec);
            }
            _ => {
                let rec = record(&id, q, tick, started, RunStatus::Succeeded);
                let marks: Vec<(String, i64)> = resolvers
                    .iter()
                    .filter(|_| rng.below(2) == 0)
                    .map(|r| (r.to_string(), tick + started))
                    .collect();
                ledger.commit_run(&rec, &marks).expect("commit");
                for (r, m) in marks {
                    model.marks.insert((q.into(), r), m);
                }
                model.committed.insert(id, rec);
            }
        }
        if step % 10 == 9 {
            model.check(ledger, step);
        }
    }
    model.check(ledger, 300);
}

#[test]
fn redb_ledger() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ledger = RedbLedger::open(&tmp.path().join("ledger.redb")).expect("open");
    conformance(&ledger);
    let random = RedbLedger::open(&tmp.path().join("random.redb")).expect("open");
    random_sequence(&random, 0x5eed1);
}

#[test]
fn postgres_ledger() {
    let db = database("conf");
    let ledger = pg_ledger(&db, "fraud/prod");
    conformance(&ledger);
    // Another namespace of the same database sees nothing of the first.
    let other = pg_ledger(&db, "fraud/staging");
    assert!(other.runs().expect("runs").is_empty());
    assert!(other.watermarks().expect("watermarks").is_empty());
    random_sequence(&other, 0x5eed1);
    // A second ledger on the same namespace (another service) sees the same state.
    let again = pg_ledger(&db, "fraud/prod");
    assert_eq!(
        again.runs().expect("runs"),
        ledger.runs().expect("runs"),
        "two services of one namespace share the ledger"
    );
    drop_database(&db);
}

#[test]
fn postgres_ledger_reconnects_after_the_server_ends_its_connection() {
    let db = database("reconnect");
    let ledger = pg_ledger(&db, "ns");
    ledger.set_watermark("q", "r", Some(1)).expect("set");
    // The server ends every session of the ledger's database (as a restart or a failover would).
    admin(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    );
    assert_eq!(
        ledger.watermark("q", "r").expect("read after the kill"),
        Some(1)
    );
    ledger
        .set_watermark("q", "r", Some(2))
        .expect("write after the kill");
    assert_eq!(ledger.watermark("q", "r").expect("read"), Some(2));
    drop(ledger);
    // An unreachable server fails the open, with its name and without hanging.
    let mut dead = pg_config(&db);
    dead.port(1);
    let err = PgLedger::open(dead, "the dead server".into(), "ns".into(), 2)
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.contains("the dead server"), "{text}");
    drop_database(&db);
}

#[test]
fn postgres_run_lock_is_held_by_one_session_and_released_with_it() {
    let db = database("lock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = pg_config(&db);
        let first = PgRunLock::try_acquire(&config, "test", "fraud/prod")
            .await
            .expect("lock")
            .expect("free");
        assert!(
            PgRunLock::try_acquire(&config, "test", "fraud/prod")
                .await
                .expect("lock")
                .is_none(),
            "a second session cannot take a held lock"
        );
        let other = PgRunLock::try_acquire(&config, "test", "fraud/staging")
            .await
            .expect("lock");
        assert!(other.is_some(), "another namespace has its own lock");
        drop(first);
        // The server releases the lock when the holder's connection ends.
        let mut again = None;
        for _ in 0..50 {
            again = PgRunLock::try_acquire(&config, "test", "fraud/prod")
                .await
                .expect("lock");
            if again.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "the lock is free once its holder is gone");
    });
    drop(rt);
    drop_database(&db);
}
