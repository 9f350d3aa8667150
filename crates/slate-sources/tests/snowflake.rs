//! The Snowflake source against fakesnow's HTTP server, a Snowflake emulator (at 127.0.0.1:8765;
//! `SLATE_TEST_SNOWFLAKE_HOST` and `_PORT` point elsewhere; `scripts/services` starts it):
//! login with a password and with a key pair, every type it reads (from Arrow results and from
//! JSON ones), nulls, the incremental bound as a binding, distinct counts in a range, describe,
//! and the errors of a missing table, a column type it cannot read and a dead server;
//! connections cut mid-result through a proxy (retried, then a clear error). Fails (never
//! skips) without the emulator.

use crate::common;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;

use common::{emulator_port, open};
use slate_project::SnowflakeConfig;
use slate_sources::{IncrementalBound, Source, SourceError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(database: &str) -> SnowflakeConfig {
    common::config(emulator_port(), database)
}

/// Runs statements (DDL, inserts) through the source itself.
async fn exec(source: &dyn Source, sql: &str) -> Vec<RecordBatch> {
    source
        .query("setup", sql, None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn all(source: &dyn Source, sql: &str, bound: Option<&IncrementalBound>) -> RecordBatch {
    let batches = source.query("r", sql, bound).await.expect("query");
    concat_batches(&batches[0].schema(), &batches).expect("concat")
}

/// A database of its own for this test binary, with one table of every readable type.
async fn database(tag: &str) -> (String, Box<dyn Source>) {
    let name = format!("SLATE_{tag}_{}", std::process::id()).to_uppercase();
    let admin = open(config("ADMIN")).await;
    let created = admin
        .query("setup", &format!("CREATE OR REPLACE DATABASE {name}"), None)
        .await;
    if let Err(e) = created {
        panic!(
            "the Snowflake emulator must run at {}:{} for this test (start it with `scripts/services`): {e}",
            slate_testkit::snowflake().host,
            slate_testkit::snowflake().port
        );
    }
    exec(
        &*admin,
        &format!("CREATE SCHEMA IF NOT EXISTS {name}.PUBLIC"),
    )
    .await;
    let source = open(config(&name)).await;
    exec(
        &*source,
        "CREATE OR REPLACE TABLE typed (
             id bigint, small smallint, real8 double, amount number(12, 2), flag boolean,
             label varchar(10), day date, at_ntz timestamp_ntz, at_tz timestamp_tz)",
    )
    .await;
    exec(
        &*source,
        "INSERT INTO typed VALUES
             (1, -3, 0.1, 12345.67, true, 'héllo', '1999-12-31',
              '2026-09-01 10:00:00.123456', '2026-09-01 10:00:00.123456+00:00'),
             (2, NULL, NULL, -0.5, NULL, NULL, NULL,
              '2026-09-02 00:00:00', '2026-09-02 02:00:00+02:00'),
             (3, 0, 0, 0, false, '', '2026-09-03', '2026-09-03 00:00:00', '2026-09-03 00:00:00+00:00')",
    )
    .await;
    (name, source)
}

const SEPT_1_10H: i64 = 1_788_256_800_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_source() {
    let (_db, source) = database("types").await;

    // Every type, read in lower-case names from Snowflake's upper-case ones.
    let b = all(
        &*source,
        "SELECT id, small, real8, amount, flag, label, day, at_ntz, at_tz FROM typed ORDER BY id",
        None,
    )
    .await;
    let schema = b.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "id", "small", "real8", "amount", "flag", "label", "day", "at_ntz", "at_tz"
        ]
    );
    let col = |n: &str| b.column_by_name(n).expect(n).clone();
    assert_eq!(
        col("id").as_any().downcast_ref::<Int64Array>().expect("id"),
        &Int64Array::from(vec![1, 2, 3])
    );
    assert_eq!(
        col("small")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("small"),
        &Int64Array::from(vec![Some(-3), None, Some(0)])
    );
    assert_eq!(
        col("real8")
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("real8"),
        &Float64Array::from(vec![Some(0.1), None, Some(0.0)])
    );
    assert_eq!(
        col("amount")
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("amount"),
        &Float64Array::from(vec![12345.67, -0.5, 0.0])
    );
    assert_eq!(
        col("flag")
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("flag"),
        &BooleanArray::from(vec![Some(true), None, Some(false)])
    );
    assert_eq!(
        col("label")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("label"),
        &StringArray::from(vec![Some("héllo"), None, Some("")])
    );
    assert_eq!(
        col("day")
            .as_any()
            .downcast_ref::<Date32Array>()
            .expect("day"),
        &Date32Array::from(vec![Some(10_956), None, Some(20_699)])
    );
    for c in ["at_ntz", "at_tz"] {
        let t = col(c);
        assert_eq!(
            t.data_type(),
            &DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into())
            )
        );
        let t = t
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .expect(c);
        assert_eq!(t.value(0), SEPT_1_10H + 123_456, "{c}");
        assert_eq!(t.value(1), SEPT_1_10H + 14 * 3_600_000_000, "{c}");
    }

    // The incremental bound is a binding, exact to the microsecond.
    let sql = "SELECT id, at_ntz AS ts FROM typed";
    for (micros, want) in [
        (SEPT_1_10H + 123_456, 3),
        (SEPT_1_10H + 123_457, 2),
        (SEPT_1_10H + 86_400_000_000 * 5, 0),
    ] {
        let bound = IncrementalBound {
            column: "ts".into(),
            micros,
        };
        let got = all(&*source, sql, Some(&bound)).await;
        assert_eq!(got.num_rows(), want, "rows from {micros}");
    }

    // Distinct ids in [from, to).
    let n = source
        .count_distinct_between(
            "r",
            sql,
            &["id"],
            "ts",
            Some(SEPT_1_10H + 123_457),
            SEPT_1_10H + 86_400_000_000,
        )
        .await
        .expect("count");
    assert_eq!(n, 1);
    let n = source
        .count_distinct_between("r", sql, &["id"], "ts", None, i64::MAX / 1000)
        .await
        .expect("count");
    assert_eq!(n, 3);

    // Describe: names and types without rows.
    let described = source
        .describe("r", "SELECT id, label, at_tz AS ts, amount FROM typed")
        .await
        .expect("describe");
    let described: Vec<(&str, &DataType)> =
        described.iter().map(|(n, t)| (n.as_str(), t)).collect();
    assert_eq!(described[0], ("id", &DataType::Int64));
    assert_eq!(described[1], ("label", &DataType::Utf8));
    assert_eq!(described[3], ("amount", &DataType::Float64));

    // Results in the JSON format (what a statement answers with) decode too.
    let inserted = exec(&*source, "INSERT INTO typed (id) VALUES (4), (5)").await;
    assert_eq!(
        inserted[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        2
    );

    // Errors: a missing table is the query's fault (not retried); a type Slate cannot read is
    // named; a dead server fails after the configured attempts.
    let e = source
        .query("r", "SELECT * FROM missing_table", None)
        .await
        .expect_err("missing table");
    assert!(
        matches!(&e, SourceError::Sql { reason, .. } if reason.to_uppercase().contains("MISSING_TABLE")),
        "{e}"
    );
    let e = source
        .query("r", "SELECT TO_BINARY('00ff', 'HEX') AS raw", None)
        .await
        .expect_err("binary");
    assert!(
        matches!(&e, SourceError::UnsupportedType { column, .. } if column == "raw"),
        "{e}"
    );
    let mut dead = config("X");
    dead.port = Some(1);
    let e = open(dead)
        .await
        .query("r", "SELECT 1", None)
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(&e, SourceError::Unavailable { attempts: 2, .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pair_login() {
    // A key made by openssl, as a user registers one with `ALTER USER ... SET RSA_PUBLIC_KEY`.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.p8");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let pem = std::fs::read_to_string(&key).expect("pem");
    // The fingerprint Snowflake shows for the public key (`DESC USER`: RSA_PUBLIC_KEY_FP).
    let spki = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(spki.status.success());
    let digest = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl pkey -pubout -outform DER -in {} | openssl dgst -sha256 -binary | base64",
            key.display()
        ))
        .output()
        .expect("openssl");
    let want_fp = String::from_utf8(digest.stdout).expect("utf8");
    let jwt =
        slate_sources::key_pair_jwt("myorg-acct.eu-west-1", "svc_user", &pem, 1_000).expect("jwt");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("claims")).expect("json");
    assert_eq!(
        claims["iss"],
        format!("MYORG-ACCT.SVC_USER.SHA256:{}", want_fp.trim())
    );
    assert_eq!(claims["sub"], "MYORG-ACCT.SVC_USER");
    assert_eq!(
        (claims["iat"].as_i64(), claims["exp"].as_i64()),
        (Some(1_000), Some(4_600))
    );
    // The signature verifies with the public key.
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        // SubjectPublicKeyInfo DER ends with the BIT STRING holding the PKCS#1 key.
        &spki.stdout[24..],
    );
    public
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).expect("signature"),
        )
        .expect("the signature verifies");

    // Logging in with the key (the emulator accepts any credentials, but the request must be
    // well formed): from a file, and from an environment variable that is not set.
    let mut c = config("ADMIN");
    c.password_env = None;
    c.private_key_file = Some(key.clone());
    let one = all(&*open(c.clone()).await, "SELECT 1 AS one", None).await;
    assert_eq!(one.num_rows(), 1);
    c.private_key_file = None;
    c.private_key_env = Some("SLATE_TEST_SURELY_UNSET_KEY".into());
    let missing = open(c)
        .await
        .query("r", "SELECT 1 AS one", None)
        .await
        .expect_err("the variable is not set");
    assert!(
        missing.to_string().contains("SLATE_TEST_SURELY_UNSET_KEY"),
        "{missing}"
    );
}

/// A TCP proxy to the emulator that cuts connections once `after` bytes of the server's replies
/// have passed (mid-result for a large result), at most `cut` of them; returns its port and the
/// number of connections it cut.
async fn cutting_proxy(after: usize, cut: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = cuts.clone();
    let upstream = format!(
        "{}:{}",
        slate_testkit::snowflake().host,
        slate_testkit::snowflake().port
    );
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut passed = 0;
                    let mut buf = vec![0u8; 8192];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        passed += n;
                        if passed > after && counter.load(Ordering::SeqCst) < cut {
                            counter.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (port, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_then_fail_cleanly() {
    let (db, source) = database("cut").await;
    exec(
        &*source,
        "CREATE OR REPLACE TABLE big AS SELECT seq4() AS id FROM TABLE(GENERATOR(ROWCOUNT => 50000))",
    )
    .await;
    let sql = "SELECT id FROM big";
    let want = all(&*source, sql, None).await;
    assert_eq!(want.num_rows(), 50_000);

    // The first connection to carry the result is cut mid-way: the retry reads it whole.
    let (port, cuts) = cutting_proxy(100_000, 1).await;
    let mut c = config(&db);
    c.port = Some(port);
    c.attempts = 3;
    let got = all(&*open(c.clone()).await, sql, None).await;
    assert_eq!(cuts.load(Ordering::SeqCst), 1);
    assert_eq!(got, want);

    // Every connection is cut: three attempts, then an error that says so.
    let (port, cuts) = cutting_proxy(100_000, usize::MAX).await;
    c.port = Some(port);
    let e = open(c)
        .await
        .query("r", sql, None)
        .await
        .expect_err("every attempt is cut");
    assert!(
        matches!(&e, SourceError::Unavailable { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(cuts.load(Ordering::SeqCst), 3, "bounded retries");
}
