//! The fraud project in its `snowflake` environment against a Snowflake emulator (fakesnow's
//! HTTP server at 127.0.0.1:8765; `SLATE_TEST_SNOWFLAKE_HOST` and `_PORT` point elsewhere), with
//! Redis online and the metadata in PostgreSQL as in production: the warehouse tables are loaded
//! into a database of their own in the emulator, and the predictions must equal the embedded
//! run's on the same data, after a first run and after an incremental one. Fails (never skips)
//! without the emulator, PostgreSQL or Redis.

use crate::common;

use fraud_example::{Config, START_MICROS, Txn, write_warehouse};
use slate_engine::{Engine, RunSummary, SilentProgress, plan_query};
use slate_project::{SnowflakeConfig, SourceConfig, Span};
use slate_sources::Source;
use std::path::Path;

const DAY: i64 = 86_400_000_000;
const QUERY: &str = "run_fraud_model";

fn sf_host() -> String {
    slate_testkit::snowflake().host.clone()
}

fn sf_port() -> String {
    slate_testkit::snowflake().port.to_string()
}

/// A client of the emulator in `database` (`SLATE_TEST_SNOWFLAKE_PASSWORD`, set in
/// .cargo/config.toml, holds the password it is given).
async fn client(database: &str) -> Box<dyn Source> {
    let c = SnowflakeConfig {
        account: "slate-test".into(),
        user: "loader".into(),
        host: Some(sf_host()),
        port: Some(sf_port().parse().expect("port")),
        scheme: "http".into(),
        database: Some(database.into()),
        schema: Some("PUBLIC".into()),
        warehouse: None,
        role: None,
        password_env: Some("SLATE_TEST_SNOWFLAKE_PASSWORD".into()),
        private_key_env: None,
        private_key_file: None,
        connect_timeout_secs: 5,
        attempts: 1,
        span: Span::file("test"),
    };
    slate_sources::open(
        "loader",
        &SourceConfig::Snowflake(Box::new(c)),
        Path::new("."),
        None,
    )
    .await
    .expect("client")
}

async fn exec(c: &dyn Source, sql: &str) {
    if let Err(e) = c.query("load", sql, None).await {
        panic!(
            "{sql}: {e}\n(the Snowflake emulator must run at {}:{} for this test; `scripts/services` starts it)",
            sf_host(),
            sf_port()
        );
    }
}

/// Inserts the generator's transactions of days `[from_day, to_day)`, as `write_warehouse`
/// writes them to Parquet: times in exact microseconds, amounts in their shortest exact text.
async fn insert_days(c: &dyn Source, cfg: &Config, from_day: i64, to_day: i64) {
    let rows: Vec<Txn> = fraud_example::transactions(cfg, to_day)
        .into_iter()
        .filter(|t| t.ts >= START_MICROS + from_day * DAY)
        .collect();
    for chunk in rows.chunks(2_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|t| {
                format!(
                    "({}, {}, {}, {:?}, TO_TIMESTAMP_NTZ({}, 6), '{}', {})",
                    t.id, t.user_id, t.merchant_id, t.amount, t.ts, t.category, t.is_fraud
                )
            })
            .collect();
        exec(
            c,
            &format!(
                r#"INSERT INTO "ML.TRANSACTIONS" VALUES {}"#,
                values.join(",")
            ),
        )
        .await;
    }
}

/// The example project with its `snowflake` environment pointed at the emulator's database
/// `db`, Redis keys under a prefix of the test's, metadata in PostgreSQL database `postgres`
/// under `namespace`.
fn project_for(dir: &Path, db: &str, namespace: &str) -> slate_project::Project {
    common::copy_project(dir);
    let yaml = std::fs::read_to_string(dir.join("slate.yaml")).expect("slate.yaml");
    let account = "        account: myorg-fraud\n        user: SLATE_SERVICE\n        database: ANALYTICS\n        schema: PUBLIC\n        warehouse: COMPUTE_WH\n        role: SLATE\n        private_key_env: FRAUD_SNOWFLAKE_PRIVATE_KEY\n";
    assert!(yaml.contains(account));
    let yaml = yaml.replace(
        account,
        &format!(
            "        account: slate-test\n        user: SLATE_SERVICE\n        host: {}\n        port: {}\n        scheme: http\n        database: {db}\n        schema: PUBLIC\n        password_env: SLATE_TEST_SNOWFLAKE_PASSWORD\n",
            sf_host(),
            sf_port()
        ),
    );
    let yaml = yaml.replace(
        "url_env: FRAUD_REDIS_URL",
        &format!(
            "host: {}\n      port: {}\n      prefix: slate-test:{db}",
            slate_testkit::redis().host,
            slate_testkit::redis().port
        ),
    );
    let yaml = yaml.replace(
        "url_env: FRAUD_METADATA_URL",
        &format!(
            "host: {}\n      port: {}\n      database: postgres\n      user: {}\n      namespace: {namespace}",
            slate_testkit::postgres().host,
            slate_testkit::postgres().port,
            slate_testkit::postgres().user,
        ),
    );
    std::fs::write(dir.join("slate.yaml"), yaml).expect("write slate.yaml");
    slate_project::load_project(dir).expect("valid project")
}

fn engine(project: slate_project::Project, env: &str, data: &Path, state: &Path) -> Engine {
    common::engine_at_day_40(project, env, data, state)
}

async fn run(e: &Engine) -> RunSummary {
    let plan = plan_query(e.project(), QUERY).expect("plan");
    e.run(&plan, &SilentProgress).await.expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_environment_predicts_as_the_embedded_one() {
    let cfg = Config {
        users: 60,
        merchants: 30,
        seed: 29,
        activity: 1.0,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let tag = format!("{}_{nanos}", std::process::id());
    let db = format!("SLATE_FRAUD_{tag}");
    let admin = client("ADMIN").await;
    exec(&*admin, &format!("CREATE OR REPLACE DATABASE {db}")).await;
    exec(&*admin, &format!("CREATE SCHEMA IF NOT EXISTS {db}.PUBLIC")).await;
    let wh = client(&db).await;
    exec(
        &*wh,
        r#"CREATE TABLE "ML.TRANSACTIONS" (
               transaction_id bigint NOT NULL, user_id bigint NOT NULL,
               merchant_id integer NOT NULL, amount double NOT NULL,
               ts timestamp_ntz NOT NULL, category varchar(32) NOT NULL, is_fraud boolean NOT NULL)"#,
    )
    .await;
    exec(
        &*wh,
        r#"CREATE TABLE "ML.USERS" (user_id bigint NOT NULL, name varchar NOT NULL)"#,
    )
    .await;
    let users: Vec<String> = (0..cfg.users)
        .map(|u| format!("({u}, 'user-{u:05}')"))
        .collect();
    exec(
        &*wh,
        &format!(r#"INSERT INTO "ML.USERS" VALUES {}"#, users.join(",")),
    )
    .await;
    insert_days(&*wh, &cfg, 0, 14).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(&data, &cfg, 0, 14).expect("data");
    let namespace = format!("fraud-test/{tag}");
    let project = project_for(&tmp.path().join("project"), &db, &namespace);
    let (s_emb, s_sf) = (tmp.path().join("embedded"), tmp.path().join("sf"));

    let embedded = run(&engine(project.clone(), "default", &data, &s_emb)).await;
    let sf = run(&engine(project.clone(), "snowflake", &data, &s_sf)).await;
    assert!(sf.rows_ingested > 100, "{} rows", sf.rows_ingested);
    assert_eq!(sf.rows_ingested, embedded.rows_ingested);
    assert_eq!(sf.watermark_after, embedded.watermark_after);
    assert_eq!(
        common::predictions(&s_sf).await,
        common::predictions(&s_emb).await
    );

    // A day later: the incremental bound (a binding in Snowflake) reads the same rows.
    insert_days(&*wh, &cfg, 14, 15).await;
    write_warehouse(&data, &cfg, 14, 15).expect("day 14");
    let embedded = run(&engine(project.clone(), "default", &data, &s_emb)).await;
    let e = engine(project.clone(), "snowflake", &data, &s_sf);
    let sf = run(&e).await;
    assert_eq!(sf.rows_ingested, embedded.rows_ingested);
    assert_eq!(sf.late_rows, embedded.late_rows);
    assert_eq!(
        common::predictions(&s_sf).await,
        common::predictions(&s_emb).await
    );
    // The run is in the PostgreSQL ledger (the fixed clock gives both runs one id, so the
    // second replaced the first), with its watermark.
    let ledger = e.ledger().expect("ledger");
    let runs = ledger.committed_runs().expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].rows_ingested, sf.rows_ingested);
    assert_eq!(
        ledger
            .watermark(QUERY, "get_transactions_offline")
            .expect("watermark"),
        sf.watermark_after
    );
    drop(ledger);
    drop(e);
    common::delete_redis_keys(&format!("slate-test:{db}"));
    let (pg, conn) = tokio_postgres::Config::new()
        .host(slate_testkit::postgres().host.clone())
        .port(slate_testkit::postgres().port)
        .user(slate_testkit::postgres().user.clone())
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    for table in ["slate_runs", "slate_failed_runs", "slate_watermarks"] {
        pg.execute(
            &format!("DELETE FROM {table} WHERE namespace = $1"),
            &[&namespace],
        )
        .await
        .expect("clean the metadata");
    }
    // The emulator keeps its databases in memory, and has no DROP DATABASE.
}
