//! The PostgreSQL source against the server at 127.0.0.1:5432 (`SLATE_TEST_PG_HOST`, `_PORT`,
//! `_USER` point elsewhere): every type it reads, nulls, the incremental bound on each kind of
//! time column, batches of at most 65,536 rows, distinct counts in a range, and the errors of a
//! column it cannot read and of a wrong query. Fails (never skips) without a server.

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::DataType;
use slate_project::{PostgresConfig, SourceConfig, Span};
use slate_sources::{IncrementalBound, Source, SourceError};
use std::path::Path;

fn config(database: &str) -> PostgresConfig {
    PostgresConfig {
        host: Some(slate_testkit::postgres().host.clone()),
        port: Some(slate_testkit::postgres().port),
        database: Some(database.into()),
        user: Some(slate_testkit::postgres().user.clone()),
        password_env: None,
        url_env: None,
        connect_timeout_secs: 5,
        attempts: 2,
        span: Span::file("slate.yaml"),
    }
}

async fn admin(database: &str) -> tokio_postgres::Client {
    let c = config(database);
    let (client, conn) = tokio_postgres::Config::new()
        .host(c.host.as_deref().expect("host"))
        .port(c.port.expect("port"))
        .user(c.user.as_deref().expect("user"))
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run for this test ({c:?}): {e}"));
    tokio::spawn(conn);
    client
}

/// A database of its own for this test binary, with one table of every readable type.
async fn database() -> String {
    let name = format!("slate_src_{}", std::process::id());
    let a = admin("postgres").await;
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
    a.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let c = admin(&name).await;
    c.batch_execute(
        r#"CREATE TABLE "Typed" (
               id bigint, small smallint, medium integer, real4 real, real8 double precision,
               amount numeric(12, 2), flag boolean, label varchar(10), code char(4), body text,
               uid uuid, at timestamptz, naive timestamp, day date, doc jsonb);
           INSERT INTO "Typed" VALUES
               (1, -3, 70000, 1.5, 0.1, 12345.67, true, 'a', 'xy', 'héllo',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-09-01 10:00:00.123456+00',
                '2026-09-01 10:00:00.123456', '1999-12-31', '{}'),
               (2, NULL, NULL, NULL, NULL, -0.5, NULL, NULL, NULL, NULL, NULL,
                '2026-09-02 00:00:00+00', '2026-09-02 00:00:00', '2026-09-02', NULL),
               (3, 0, 0, 0, 0, 0, false, '', '', '', NULL,
                '2026-09-03 00:00:00+02', '2026-09-03 00:00:00', '2026-09-03', NULL);
           CREATE TABLE big AS
               SELECT g AS id, g % 97 AS k,
                      TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second' AS ts
               FROM generate_series(1, 150000) AS g;"#,
    )
    .await
    .expect("tables");
    name
}

async fn drop_database(name: &str) {
    admin("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
}

async fn open(db: &str) -> Box<dyn Source> {
    slate_sources::open(
        "warehouse",
        &SourceConfig::Postgres(config(db)),
        Path::new("."),
        None,
    )
    .await
    .expect("open")
}

const MICROS_2026_09_01_10H: i64 = 1_788_256_800_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source() {
    let db = database().await;
    let src = open(&db).await;

    // Every readable type, with nulls.
    let sql = r#"SELECT id, small, medium, real4, real8, amount, flag, label, code, body, uid,
                        at, naive, day FROM "Typed" ORDER BY id"#;
    let batches = src.query("typed", sql, None).await.expect("query");
    let b = concat_batches(&batches[0].schema(), &batches).expect("concat");
    assert_eq!(b.num_rows(), 3);
    let ints = |c: &str| {
        b.column_by_name(c)
            .expect(c)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .clone()
    };
    assert_eq!(ints("id").values().to_vec(), vec![1, 2, 3]);
    assert_eq!(ints("small").value(0), -3);
    assert!(ints("small").is_null(1));
    assert_eq!(ints("medium").value(0), 70_000);
    let floats = |c: &str| {
        b.column_by_name(c)
            .expect(c)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect(c)
            .clone()
    };
    assert_eq!(floats("real4").value(0), 1.5);
    assert_eq!(floats("real8").value(0), 0.1);
    assert_eq!(floats("amount").value(0), 12345.67);
    assert_eq!(floats("amount").value(1), -0.5);
    assert!(floats("real8").is_null(1));
    let flags = b
        .column_by_name("flag")
        .expect("flag")
        .as_any()
        .downcast_ref::<BooleanArray>()
        .expect("bool")
        .clone();
    assert!(flags.value(0) && flags.is_null(1) && !flags.value(2));
    let text = |c: &str| {
        b.column_by_name(c)
            .expect(c)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect(c)
            .clone()
    };
    assert_eq!(text("label").value(0), "a");
    assert_eq!(text("code").value(0), "xy  ", "char(n) keeps its padding");
    assert_eq!(text("body").value(0), "héllo");
    assert_eq!(text("body").value(2), "");
    assert!(text("body").is_null(1));
    assert_eq!(text("uid").value(0), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    let times = |c: &str| {
        b.column_by_name(c)
            .expect(c)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect(c)
            .clone()
    };
    assert_eq!(times("at").value(0), MICROS_2026_09_01_10H + 123_456);
    assert_eq!(
        times("naive").value(0),
        MICROS_2026_09_01_10H + 123_456,
        "read as UTC"
    );
    assert_eq!(
        times("at").value(2),
        MICROS_2026_09_01_10H + 2 * 86_400_000_000 - 10 * 3_600_000_000 - 2 * 3_600_000_000
    );
    assert_eq!(
        b.column_by_name("at").expect("at").data_type(),
        &DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into())
        )
    );
    let days = b
        .column_by_name("day")
        .expect("day")
        .as_any()
        .downcast_ref::<Date32Array>()
        .expect("date")
        .clone();
    assert_eq!(days.value(0), 10_956);

    // The bound, exact to the microsecond, on a zoned, a zone-less and a date column.
    let first = MICROS_2026_09_01_10H + 123_456;
    for (column, at_first, after_first) in [("at", 3, 2), ("naive", 3, 2), ("day", 2, 2)] {
        for (micros, expect) in [(first, at_first), (first + 1, after_first)] {
            let bound = IncrementalBound {
                column: column.into(),
                micros,
            };
            let got = src
                .query(
                    "typed",
                    r#"SELECT id, at, naive, day FROM "Typed";"#,
                    Some(&bound),
                )
                .await
                .expect("bounded");
            let n: usize = got.iter().map(|b| b.num_rows()).sum();
            assert_eq!(n, expect, "bound {micros} on {column}");
        }
    }

    // A large result streams in batches of at most 65,536 rows; the bound is exact.
    let from = 1_767_225_600_000_000 + 50_000 * 1_000_000; // 2026-01-01 + 50,000 s
    let bound = IncrementalBound {
        column: "ts".into(),
        micros: from,
    };
    let got = src
        .query("big", "SELECT id, k, ts FROM big", Some(&bound))
        .await
        .expect("big");
    assert!(got.iter().all(|b| b.num_rows() <= 65_536));
    assert_eq!(got.len(), 2);
    let ids: Vec<i64> = got
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids.len(), 100_001);
    assert_eq!(ids.iter().min(), Some(&50_000));

    // Distinct tuples in [from, to).
    let n = src
        .count_distinct_between(
            "big",
            "SELECT id, k, ts FROM big",
            &["k"],
            "ts",
            Some(from),
            from + 10_000_000,
        )
        .await
        .expect("distinct");
    assert_eq!(n, 10);
    let n = src
        .count_distinct_between(
            "big",
            "SELECT id, k, ts FROM big",
            &["id"],
            "ts",
            None,
            from,
        )
        .await
        .expect("distinct");
    assert_eq!(n, 49_999);

    // What the query returns, without running it.
    let cols = src
        .describe("typed", r#"SELECT id AS "Key", body, at FROM "Typed""#)
        .await
        .expect("describe");
    assert_eq!(
        cols.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["Key", "body", "at"]
    );
    assert_eq!(cols[1].1, DataType::Utf8);

    // A column Slate cannot read is named with its type, before any row is read.
    let err = src
        .query("typed", r#"SELECT id, doc FROM "Typed""#, None)
        .await
        .expect_err("jsonb");
    assert!(
        matches!(&err, SourceError::UnsupportedType { column, type_name, .. } if column == "doc" && type_name == "jsonb"),
        "{err}"
    );
    // A wrong query: the database's message and where in the resolver's SQL it points.
    let sql = "\n  SELECT id, nope FROM \"Typed\"";
    let err = src
        .describe("typed", sql)
        .await
        .expect_err("no such column");
    match &err {
        SourceError::Sql {
            reason, position, ..
        } => {
            assert!(reason.contains("nope"), "{reason}");
            let p = position.expect("a position");
            assert_eq!(sql.chars().nth(p - 1), Some('n'), "{p}");
        }
        other => panic!("{other}"),
    }
    // The same through the incremental wrapper: the position still points into the resolver's SQL.
    let bound = IncrementalBound {
        column: "at".into(),
        micros: 0,
    };
    match src.query("typed", sql, Some(&bound)).await {
        Err(SourceError::Sql { position, .. }) => {
            assert_eq!(sql.chars().nth(position.expect("position") - 1), Some('n'));
        }
        other => panic!("{other:?}"),
    }
    drop(src);
    drop_database(&db).await;
}

#[tokio::test]
async fn secrets_come_from_the_environment_only() {
    let mut c = config("postgres");
    c.password_env = Some("SLATE_TEST_SURELY_UNSET_PASSWORD".into());
    let err = slate_sources::open("wh", &SourceConfig::Postgres(c), Path::new("."), None)
        .await
        .expect_err("unset variable");
    let text = err.to_string();
    assert!(
        text.contains("SLATE_TEST_SURELY_UNSET_PASSWORD") && text.contains("not set"),
        "{text}"
    );
}
