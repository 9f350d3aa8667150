//! The fraud project in its `postgres` environment, against the PostgreSQL server at
//! 127.0.0.1:5432 (`SLATE_TEST_PG_*` override host, port and user): the warehouse tables are
//! loaded into a database of their own, and the predictions must equal the embedded run's on
//! the same data, after a first run and after an incremental one. A connection that drops
//! mid-result is retried a bounded number of times; when every attempt fails, the run fails
//! with the watermark and the stores unchanged. Fails (never skips) without a server.

use crate::common;

use fraud_example::{Config, START_MICROS, Txn, write_warehouse};
use slate_engine::{Engine, EngineError, RunSummary, SilentProgress, plan_query};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DAY: i64 = 86_400_000_000;
const QUERY: &str = "run_fraud_model";

fn pg_host() -> String {
    slate_testkit::postgres().host.clone()
}

fn pg_port() -> u16 {
    slate_testkit::postgres().port
}

fn pg_user() -> String {
    slate_testkit::postgres().user.clone()
}

async fn connect(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host(pg_host())
        .port(pg_port())
        .user(pg_user())
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL must run at {}:{} for this test (user {}, database {db}): {e}",
                pg_host(),
                pg_port(),
                pg_user()
            )
        });
    tokio::spawn(conn);
    client
}

/// A new, empty database for one test, dropped when the test ends.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create(tag: &str) -> TestDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let name = format!("slate_{tag}_{}_{nanos}", std::process::id());
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        TestDb { name }
    }

    async fn drop_now(self) {
        // The Redis keys the `postgres` environment wrote under this database's prefix.
        common::delete_redis_keys(&format!("slate-test:{}", self.name));
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop database");
    }
}

/// The warehouse's tables in PostgreSQL, typed as a warehouse would type them.
async fn create_tables(client: &tokio_postgres::Client, cfg: &Config) {
    client
        .batch_execute(
            r#"CREATE TABLE "ML.TRANSACTIONS" (
                   transaction_id bigint NOT NULL, user_id bigint NOT NULL,
                   merchant_id integer NOT NULL, amount double precision NOT NULL,
                   ts timestamptz NOT NULL, category varchar(32) NOT NULL, is_fraud boolean NOT NULL);
               CREATE TABLE "ML.USERS" (user_id bigint PRIMARY KEY, name text NOT NULL);"#,
        )
        .await
        .expect("create tables");
    let users: Vec<String> = (0..cfg.users)
        .map(|u| format!("({u}, 'user-{u:05}')"))
        .collect();
    client
        .batch_execute(&format!(
            r#"INSERT INTO "ML.USERS" VALUES {}"#,
            users.join(",")
        ))
        .await
        .expect("users");
}

/// A database of its own holding the warehouse's tables with days `[0, days)` of `cfg`'s
/// transactions, and a client connected to it.
async fn warehouse_db(tag: &str, cfg: &Config, days: i64) -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::create(tag).await;
    let client = connect(&db.name).await;
    create_tables(&client, cfg).await;
    insert_days(&client, cfg, 0, days).await;
    (db, client)
}

/// Inserts the generator's transactions of days `[from_day, to_day)`, as `write_warehouse`
/// writes them to Parquet. Times are exact microseconds, amounts their shortest exact text.
async fn insert_days(client: &tokio_postgres::Client, cfg: &Config, from_day: i64, to_day: i64) {
    let rows: Vec<Txn> = fraud_example::transactions(cfg, to_day)
        .into_iter()
        .filter(|t| t.ts >= START_MICROS + from_day * DAY)
        .collect();
    for chunk in rows.chunks(2_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|t| {
                format!(
                    "({}, {}, {}, {:?}::float8, TIMESTAMPTZ 'epoch' + {} * INTERVAL '1 microsecond', '{}', {})",
                    t.id, t.user_id, t.merchant_id, t.amount, t.ts, t.category, t.is_fraud
                )
            })
            .collect();
        client
            .batch_execute(&format!(
                r#"INSERT INTO "ML.TRANSACTIONS" VALUES {}"#,
                values.join(",")
            ))
            .await
            .expect("transactions");
    }
}

/// The example project with its `postgres` environment pointed at `db` (through `port`, a
/// proxy's when it is not the server's), its metadata in `db` under `namespace`.
fn project_for(dir: &Path, db: &str, port: u16, namespace: &str) -> slate_project::Project {
    common::copy_project(dir);
    let yaml = std::fs::read_to_string(dir.join("slate.yaml")).expect("slate.yaml");
    assert!(yaml.contains("url_env: FRAUD_WAREHOUSE_URL"));
    let yaml = yaml.replace(
        "url_env: FRAUD_WAREHOUSE_URL",
        &format!(
            "host: {}\n        port: {port}\n        database: {db}\n        user: {}\n        attempts: 3",
            pg_host(),
            pg_user()
        ),
    );
    assert!(yaml.contains("url_env: FRAUD_REDIS_URL"));
    let yaml = yaml.replace(
        "url_env: FRAUD_REDIS_URL",
        &format!(
            "host: {}\n      port: {}\n      prefix: slate-test:{db}",
            slate_testkit::redis().host,
            slate_testkit::redis().port
        ),
    );
    assert!(yaml.contains("url_env: FRAUD_METADATA_URL"));
    let yaml = yaml.replace(
        "url_env: FRAUD_METADATA_URL",
        &format!(
            "host: {}\n      port: {}\n      database: {db}\n      user: {}\n      namespace: {namespace}",
            pg_host(),
            pg_port(),
            pg_user()
        ),
    );
    std::fs::write(dir.join("slate.yaml"), yaml).expect("write slate.yaml");
    slate_project::load_project(dir).expect("valid project")
}

fn engine(project: slate_project::Project, env: &str, data: &Path, state: &Path) -> Engine {
    common::engine_at_day_40(project, env, data, state)
}

async fn run(e: &Engine) -> Result<RunSummary, EngineError> {
    let plan = plan_query(e.project(), QUERY).expect("plan");
    e.run(&plan, &SilentProgress).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_environment_predicts_as_the_embedded_one() {
    let cfg = Config {
        users: 120,
        merchants: 50,
        seed: 23,
        activity: 1.0,
    };
    let (db, client) = warehouse_db("fraud", &cfg, 20).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(&data, &cfg, 0, 20).expect("data");
    let project = project_for(&tmp.path().join("project"), &db.name, pg_port(), "fraud/pg");
    let (s_emb, s_pg) = (tmp.path().join("embedded"), tmp.path().join("pg"));

    let embedded = run(&engine(project.clone(), "default", &data, &s_emb))
        .await
        .expect("embedded run");
    let pg = run(&engine(project.clone(), "postgres", &data, &s_pg))
        .await
        .expect("postgres run");
    assert!(pg.rows_ingested > 500, "{} rows", pg.rows_ingested);
    let first_rows = pg.rows_ingested;
    assert_eq!(pg.rows_ingested, embedded.rows_ingested);
    assert_eq!(pg.watermark_after, embedded.watermark_after);
    assert_eq!(
        common::predictions(&s_pg).await,
        common::predictions(&s_emb).await
    );

    // A day later: the incremental bound (a bound parameter in PostgreSQL) reads the same rows.
    insert_days(&client, &cfg, 20, 21).await;
    write_warehouse(&data, &cfg, 20, 21).expect("day 20");
    let embedded = run(&engine(project.clone(), "default", &data, &s_emb))
        .await
        .expect("embedded run");
    let pg = run(&engine(project.clone(), "postgres", &data, &s_pg))
        .await
        .expect("postgres run");
    assert_eq!(pg.rows_ingested, embedded.rows_ingested);
    assert!(
        pg.rows_ingested < first_rows / 5,
        "{} rows",
        pg.rows_ingested
    );
    assert_eq!(pg.late_rows, embedded.late_rows);
    let p = common::predictions(&s_pg).await;
    assert_eq!(p, common::predictions(&s_emb).await);

    // The online values: Redis in the `postgres` environment, redb in the embedded one.
    let ids: Vec<String> = arrow::compute::cast(
        p.column_by_name("id").expect("id"),
        &arrow::datatypes::DataType::Utf8,
    )
    .expect("ids")
    .as_any()
    .downcast_ref::<arrow_array::StringArray>()
    .expect("text")
    .iter()
    .map(|k| k.expect("id").to_string())
    .collect();
    let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
    let redis = engine(project.clone(), "postgres", &data, &s_pg)
        .online()
        .expect("redis");
    let redb = engine(project.clone(), "default", &data, &s_emb)
        .online()
        .expect("redb");
    for feature in ["transaction.is_fraud", "transaction.fraud_score"] {
        let r = redis.get_many(feature, &keys).expect("redis values");
        assert!(
            r.iter().all(Option::is_some),
            "{feature}: every key in Redis"
        );
        assert_eq!(
            r,
            redb.get_many(feature, &keys).expect("redb values"),
            "{feature}"
        );
        assert_eq!(redis.count(feature).expect("count"), keys.len());
    }
    drop(client);
    db.drop_now().await;
}

/// A TCP proxy to the server that cuts connections once `after` bytes of the server's replies
/// have passed (mid-result for a query of thousands of rows), at most `cut` of them; returns
/// its port and the number of connections it cut.
async fn cutting_proxy(after: usize, cut: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = cuts.clone();
    let upstream = format!("{}:{}", pg_host(), pg_port());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = TcpStream::connect(&upstream).await.expect("upstream");
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut passed = 0;
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let k = sr.read(&mut buf).await.unwrap_or(0);
                        if k == 0 {
                            break;
                        }
                        if passed + k > after
                            && counter
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                                    (c < cut).then_some(c + 1)
                                })
                                .is_ok()
                        {
                            break;
                        }
                        passed += k;
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (port, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_then_fail_cleanly() {
    // Few users (their table passes whole through the proxy), many transactions.
    let cfg = Config {
        users: 40,
        merchants: 40,
        seed: 5,
        activity: 8.0,
    };
    let (db, client) = warehouse_db("drop", &cfg, 10).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("unused");
    let state = tmp.path().join("state");
    let direct = project_for(
        &tmp.path().join("direct"),
        &db.name,
        pg_port(),
        "drop/state",
    );
    let first = run(&engine(direct.clone(), "postgres", &data, &state))
        .await
        .expect("first run");
    let before = common::predictions(&state).await;
    insert_days(&client, &cfg, 10, 15).await;

    // Every connection is cut mid-result: three attempts, then a clear error; nothing changed.
    let (port, cuts) = cutting_proxy(20_000, usize::MAX).await;
    let flaky = project_for(&tmp.path().join("flaky"), &db.name, port, "drop/state");
    let err = run(&engine(flaky, "postgres", &data, &state))
        .await
        .expect_err("every attempt is cut");
    let text = err.to_string();
    assert!(
        text.contains("after 3 attempts") && text.contains("get_transactions_offline"),
        "{text}"
    );
    assert_eq!(cuts.load(Ordering::SeqCst), 3, "bounded retries");
    let e = engine(direct.clone(), "postgres", &data, &state);
    assert_eq!(
        e.ledger()
            .expect("ledger")
            .watermark(QUERY, "get_transactions_offline")
            .expect("watermark"),
        first.watermark_after,
        "watermark unchanged"
    );
    drop(e);
    assert_eq!(common::predictions(&state).await, before, "nothing written");

    // Only the first connection is cut: the retry succeeds and the run is complete.
    let (port, cuts) = cutting_proxy(20_000, 1).await;
    let once = project_for(&tmp.path().join("once"), &db.name, port, "drop/state");
    let second = run(&engine(once, "postgres", &data, &state))
        .await
        .expect("the second attempt succeeds");
    assert_eq!(cuts.load(Ordering::SeqCst), 1);
    let fresh = tmp.path().join("fresh");
    // Its own metadata namespace: a state of its own.
    let apart = project_for(&tmp.path().join("apart"), &db.name, pg_port(), "drop/fresh");
    let whole = run(&engine(apart, "postgres", &data, &fresh))
        .await
        .expect("one run over everything");
    assert_eq!(second.watermark_after, whole.watermark_after);
    assert_eq!(
        common::predictions(&state).await,
        common::predictions(&fresh).await
    );
    drop(client);
    db.drop_now().await;
}

/// A resolver's `timeout` bounds its query: a query that sleeps longer is abandoned at the
/// timeout, the run fails with an error saying so, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_timeout_is_abandoned() {
    let cfg = Config {
        users: 20,
        merchants: 10,
        seed: 3,
        activity: 1.0,
    };
    let (db, client) = warehouse_db("timeout", &cfg, 2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    project_for(&dir, &db.name, pg_port(), "timeout");
    let sql = dir.join("src/resolvers/sql/get_transactions_offline.chalk.sql");
    let text = std::fs::read_to_string(&sql).expect("sql");
    let text = text
        .replace("-- source: sf\n", "-- source: sf\n-- timeout: 1s\n")
        .replace(
            "WHERE category <> 'pending'",
            "WHERE category <> 'pending' AND (SELECT 1 FROM pg_sleep(60)) = 1",
        );
    assert!(text.contains("timeout: 1s") && text.contains("pg_sleep"));
    std::fs::write(&sql, text).expect("write sql");
    let project = slate_project::load_project(&dir).expect("valid project");
    let state = tmp.path().join("state");
    let started = std::time::Instant::now();
    let e = engine(project, "postgres", &tmp.path().join("unused"), &state);
    let err = run(&e)
        .await
        .expect_err("the query sleeps past its timeout");
    let text = err.to_string();
    assert!(
        text.contains("get_transactions_offline") && text.contains("timeout of 1s"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "abandoned at the timeout, not after the query's 60 s"
    );
    let ledger = e.ledger().expect("ledger");
    assert!(ledger.runs().expect("runs").is_empty(), "no run recorded");
    assert!(
        ledger.watermarks().expect("marks").is_empty(),
        "no watermark"
    );
    assert!(
        !state.join("offline").exists(),
        "nothing written to the offline store"
    );
    drop(client);
    db.drop_now().await;
}
