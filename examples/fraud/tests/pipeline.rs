//! The fraud pipeline end to end on generated data: first run, rerun, an appended day; every
//! scored transaction's features against the brute-force reference; determinism.

use crate::common;

use arrow_array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use fraud_example::{Config, START_MICROS, write_warehouse};
use slate_aggregate::{Agg, Events, Query, Values, reference};
use slate_engine::{Engine, EngineConfig, RunSummary, SilentProgress, plan_query};
use slate_types::FixedClock;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;

fn engine(data: &Path, state: &Path, now: i64) -> Engine {
    Engine::new(EngineConfig {
        project: project(),
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(now)),
    })
    .expect("engine")
}

async fn run(data: &Path, state: &Path, now: i64) -> RunSummary {
    let e = engine(data, state, now);
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    e.run(&plan, &SilentProgress).await.expect("run")
}

fn project() -> slate_project::Project {
    slate_project::load_project(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid project")
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).expect("concat")
}

fn i64s(b: &RecordBatch, c: &str) -> Vec<i64> {
    b.column_by_name(c)
        .expect(c)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64")
        .values()
        .to_vec()
}

fn tss(b: &RecordBatch, c: &str) -> Vec<i64> {
    b.column_by_name(c)
        .expect(c)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("ts")
        .values()
        .to_vec()
}

/// The ingested (non-pending) transactions of the generated warehouse, straight from the
/// generator: (id, user, merchant, ts).
fn source_rows(cfg: &Config, days: i64) -> Vec<(i64, i64, i64, i64)> {
    fraud_example::transactions(cfg, days)
        .into_iter()
        .filter(|t| t.category != "pending")
        .map(|t| (t.id, t.user_id, t.merchant_id, t.ts))
        .collect()
}

/// Predictions in the offline store, by transaction id.
async fn predictions(state: &Path) -> RecordBatch {
    let store = slate_stores::OfflineStore::new(&state.join("offline"));
    concat(
        &store
            .read_all("run_fraud_model")
            .await
            .expect("read predictions"),
    )
}

fn check_features_against_reference(p: &RecordBatch, rows: &[(i64, i64, i64, i64)]) {
    let ev = |with_merchant: bool| Events {
        entity: rows.iter().map(|r| r.1).collect(),
        ts: rows.iter().map(|r| r.3).collect(),
        value: Values::Int(rows.iter().map(|r| with_merchant.then_some(r.2)).collect()),
    };
    let (plain, merchants) = (ev(false), ev(true));
    let by_id: HashMap<i64, (i64, i64)> = rows.iter().map(|r| (r.0, (r.1, r.3))).collect();
    let ids = i64s(p, "id");
    let queries: Vec<Query> = ids
        .iter()
        .map(|id| {
            let (u, t) = by_id[id];
            Query { entity: u, now: t }
        })
        .collect();
    assert_eq!(
        tss(p, "feature_time"),
        queries.iter().map(|q| q.now).collect::<Vec<_>>()
    );
    for (w, label) in [(DAY, "1d"), (10 * DAY, "10d"), (30 * DAY, "30d")] {
        let n = reference::aggregate(&plain, &queries, Agg::Count, Some(w))
            .expect("count")
            .to_f64();
        let d = reference::aggregate(&merchants, &queries, Agg::CountDistinct, Some(w))
            .expect("distinct")
            .to_f64();
        let got_n = i64s(p, &format!("user__num_transactions__{label}"));
        let got_d = i64s(
            p,
            &format!("user__num_distinct_merchants_transacted__{label}"),
        );
        for i in 0..ids.len() {
            assert_eq!(
                Some(got_n[i] as f64),
                n[i],
                "num_transactions[{label}] of transaction {}",
                ids[i]
            );
            assert_eq!(
                Some(got_d[i] as f64),
                d[i],
                "num_distinct_merchants[{label}] of transaction {}",
                ids[i]
            );
        }
    }
    let since = reference::aggregate(&plain, &queries, Agg::TimeSinceLatest, None)
        .expect("since")
        .to_f64();
    let got = p
        .column_by_name("user__time_since_last_transaction")
        .expect("since")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64")
        .clone();
    for i in 0..ids.len() {
        let g = (!got.is_null(i)).then(|| got.value(i));
        assert_eq!(
            g, since[i],
            "time_since_last_transaction of transaction {}",
            ids[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_pipeline_end_to_end() {
    let cfg = Config {
        users: 150,
        merchants: 60,
        seed: 11,
        activity: 1.0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    write_warehouse(&data, &cfg, 0, 30).expect("data");
    let all30 = source_rows(&cfg, 30);
    let now = START_MICROS + 40 * DAY;

    // First run: everything.
    let first = run(&data, &state, now).await;
    assert_eq!(first.rows_ingested, all30.len());
    assert_eq!(first.rows_scored, all30.len());
    assert_eq!(first.watermark_before, None);
    let max_ts = all30.iter().map(|r| r.3).max().expect("rows");
    assert_eq!(first.watermark_after, Some(max_ts));
    let p1 = predictions(&state).await;
    assert_eq!(p1.num_rows(), all30.len());
    check_features_against_reference(&p1, &all30);
    let sha = arrow::compute::cast(
        p1.column_by_name("model_sha256").expect("sha"),
        &arrow::datatypes::DataType::Utf8,
    )
    .expect("cast");
    let sha = sha
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("str")
        .value(0)
        .to_string();
    assert_eq!(sha.len(), 64);

    // Immediate rerun: only the lookback window is read; the stores hold the same content.
    let second = run(&data, &state, now + 1_000_000).await;
    let lookback = all30
        .iter()
        .filter(|r| r.3 >= max_ts - 3_600_000_000)
        .count();
    assert_eq!(second.rows_ingested, lookback);
    assert_eq!(second.watermark_before, Some(max_ts));
    let p2 = predictions(&state).await;
    assert_eq!(
        p2.num_rows(),
        all30.len(),
        "no duplicate prediction records"
    );
    let mut keys: Vec<(i64, i64)> = i64s(&p2, "id")
        .into_iter()
        .zip(tss(&p2, "feature_time"))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all30.len());
    let by_id = |b: &RecordBatch| -> BTreeMap<i64, bool> {
        let f = b
            .column_by_name("is_fraud")
            .expect("is_fraud")
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("bool")
            .clone();
        i64s(b, "id")
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, f.value(i)))
            .collect()
    };
    assert_eq!(by_id(&p1), by_id(&p2), "a rerun changes no prediction");
    {
        let online = engine(&data, &state, now).online().expect("online");
        assert_eq!(
            online.count("transaction.is_fraud").expect("count"),
            all30.len()
        );
    }

    // A later day arrives: the next run scores exactly the new rows plus the lookback.
    write_warehouse(&data, &cfg, 30, 31).expect("day 30");
    let all31 = source_rows(&cfg, 31);
    let third = run(&data, &state, now + 2_000_000).await;
    let expected = all31
        .iter()
        .filter(|r| r.3 >= max_ts - 3_600_000_000)
        .count();
    assert_eq!(third.rows_scored, expected);
    assert!(third.rows_scored > lookback, "the new day was scored");
    let p3 = predictions(&state).await;
    assert_eq!(p3.num_rows(), all31.len());
    check_features_against_reference(&p3, &all31);
    let last = all31.last().expect("rows");
    let online = engine(&data, &state, now).online().expect("online");
    let v = online
        .get("transaction.is_fraud", &last.0.to_string())
        .expect("get")
        .expect("stored online");
    assert_eq!(v.feature_time, last.3);
    drop(online);

    // A run that crashed after writing its stores but before committing is, to the ledger, a run
    // that never happened: the watermark is still the one before it. Rerunning it leaves the
    // stores as they were: no duplicate, no gap.
    let ledger = engine(&data, &state, now).ledger().expect("ledger");
    ledger
        .set_watermark("run_fraud_model", "get_transactions_offline", Some(max_ts))
        .expect("rewind");
    drop(ledger);
    let rerun = run(&data, &state, now + 3_000_000).await;
    assert_eq!(rerun.rows_scored, third.rows_scored);
    let p4 = predictions(&state).await;
    assert_eq!(p4.num_rows(), all31.len());
    assert_eq!(by_id(&p4), by_id(&p3));

    // Nothing new past the watermark: the run ingests and scores nothing and changes nothing.
    let future = last.3 + 10 * DAY;
    let ledger = engine(&data, &state, now).ledger().expect("ledger");
    ledger
        .set_watermark("run_fraud_model", "get_transactions_offline", Some(future))
        .expect("set");
    drop(ledger);
    let idle = run(&data, &state, now + 4_000_000).await;
    assert_eq!((idle.rows_ingested, idle.rows_scored), (0, 0));
    assert_eq!(idle.watermark_after, Some(future));
    assert_eq!(by_id(&predictions(&state).await), by_id(&p3));

    // Determinism: a fresh state directory, another run time, the same bytes of features and outputs.
    let state2 = tmp.path().join("state2");
    run(&data, &state2, now + 99 * DAY).await;
    let q = predictions(&state2).await;
    assert_eq!(
        common::without_run_id_by_id(&q),
        common::without_run_id_by_id(&p3),
        "same data, same features and predictions"
    );

    // Outputs written in small batches (many offline batches, many online chunks) leave the
    // same stores as one batch.
    let state3 = tmp.path().join("state3");
    let chunked = engine(&data, &state3, now + 99 * DAY).with_write_chunk_rows(97);
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    let r = chunked
        .run(&plan, &SilentProgress)
        .await
        .expect("chunked run");
    assert!(r.rows_scored > 3 * 97, "several chunks were written");
    assert_eq!(
        common::without_run_id_by_id(&predictions(&state3).await),
        common::without_run_id_by_id(&q),
        "chunked writes, same offline record"
    );
    let ids: Vec<String> = i64s(&q, "id").iter().map(|k| k.to_string()).collect();
    let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
    let whole = engine(&data, &state2, now).online().expect("online");
    let chunked_online = chunked.online().expect("online");
    for feature in ["transaction.is_fraud", "transaction.fraud_score"] {
        assert_eq!(
            chunked_online
                .get_many(feature, &keys)
                .expect("chunked values"),
            whole.get_many(feature, &keys).expect("values"),
            "chunked writes, same online values of {feature}"
        );
    }
}

/// A backfill, and the daily runs after it, compute the same stores whatever the number of
/// partitions of their point-in-time operator (rows hash-partitioned by user) and whatever
/// their memory budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_partitions_do_not_change_the_stores() {
    let cfg = Config {
        users: 1_500,
        merchants: 40,
        seed: 5,
        activity: 1.0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    let now = START_MICROS + 21 * DAY;
    type Stores = (RecordBatch, Vec<Option<slate_stores::OnlineValue>>);
    let stores = |state: std::path::PathBuf, e: Engine| async move {
        let p = common::without_run_id_by_id(&predictions(&state).await);
        let ids: Vec<String> = i64s(&p, "id").iter().map(|k| k.to_string()).collect();
        let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
        let online = e
            .online()
            .expect("online")
            .get_many("transaction.is_fraud", &keys)
            .expect("online values");
        (p, online)
    };
    let mut first: Option<Stores> = None;
    let mut first_daily: Option<Stores> = None;
    // The last one under a memory limit small enough that the sorts spill (4 MiB: at 2 MiB a
    // sort could find the pool held by the other sorts, their merge space and the repartitions
    // before its first batch, and the run ended with an error naming it).
    for (n, limit) in [(1, None), (3, None), (16, None), (2, Some(4usize << 20))] {
        // A warehouse of its own, which grows after the backfill.
        let data = tmp.path().join(format!("warehouse{n}"));
        write_warehouse(&data, &cfg, 0, 20).expect("data");
        let state = tmp.path().join(format!("state{n}"));
        let configured = |now: i64| {
            let e = engine(&data, &state, now).with_partitions(n);
            match limit {
                Some(l) => e.with_memory_limit(l),
                None => e,
            }
        };
        let e = configured(now);
        let s = e.run(&plan, &SilentProgress).await.expect("run");
        assert_eq!(
            s.spilled_bytes > 0,
            limit.is_some(),
            "{n} partitions under {limit:?} bytes: spilled {} bytes",
            s.spilled_bytes
        );
        let (p, online) = stores(state.clone(), e).await;
        match &first {
            None => {
                check_features_against_reference(&p, &source_rows(&cfg, 20));
                first = Some((p, online));
            }
            Some((p1, o1)) => {
                assert_eq!(&p, p1, "{n} partitions, {limit:?}: the same offline record");
                assert_eq!(
                    &online, o1,
                    "{n} partitions, {limit:?}: the same online values"
                );
            }
        }

        // Two daily runs, the warehouse growing by a day before each.
        for d in 20..22 {
            write_warehouse(&data, &cfg, d, d + 1).expect("day");
            let s = configured(START_MICROS + (d + 2) * DAY)
                .run(&plan, &SilentProgress)
                .await
                .expect("daily run");
            assert!(s.watermark_before.is_some(), "an incremental run");
        }
        let (p, online) = stores(state.clone(), configured(now)).await;
        match &first_daily {
            None => {
                check_features_against_reference(&p, &source_rows(&cfg, 22));
                first_daily = Some((p, online));
            }
            Some((p1, o1)) => {
                assert_eq!(
                    &p, p1,
                    "daily runs, {n} partitions, {limit:?}: the same record"
                );
                assert_eq!(
                    &online, o1,
                    "daily runs, {n} partitions, {limit:?}: the same online values"
                );
            }
        }
    }

    let data = tmp.path().join("warehouse");
    write_warehouse(&data, &cfg, 0, 20).expect("data");
    // A budget too small to hold one batch fails the run with the operator and the bytes it
    // asked for, and commits nothing: the same run with memory to spare then ends as the others.
    let state = tmp.path().join("tiny");
    let err = engine(&data, &state, now)
        .with_partitions(2)
        .with_memory_limit(8 << 10)
        .run(&plan, &SilentProgress)
        .await
        .expect_err("8 KiB is too little");
    let text = err.to_string();
    assert!(
        text.contains("Failed to allocate additional") && text.contains("ExternalSorter"),
        "{text}"
    );
    engine(&data, &state, now)
        .run(&plan, &SilentProgress)
        .await
        .expect("rerun");
    let (p1, _) = first.expect("first run");
    assert_eq!(
        common::without_run_id_by_id(&predictions(&state).await),
        p1,
        "after a run refused for memory, the rerun"
    );
}

/// Five months of daily runs at midnight, across a new year (the 60-minute lookback crosses
/// midnight every time; checkpoints every 10 commits): every day's offline partition stays one
/// file, and the tables end equal to one run over everything; every feature matches the brute
/// force, dormant users (a pause longer than every window) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_runs_for_five_months() {
    const DAYS: i64 = 150;
    // Users whose transactions pause for longer than every window: the first seed that has one.
    let dormant = |rows: &[(i64, i64, i64, i64)]| {
        let mut last: HashMap<i64, i64> = HashMap::new();
        rows.iter()
            .filter(|r| {
                last.insert(r.1, r.3)
                    .is_some_and(|prev| r.3 - prev > 31 * DAY)
            })
            .count()
    };
    let cfg = (1..100)
        .map(|seed| Config {
            users: 6,
            merchants: 12,
            seed,
            activity: 1.0,
        })
        .find(|c| dormant(&source_rows(c, DAYS)) > 0)
        .expect("a seed with a dormant user");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    // The warehouse table grows by one file a day; each run at midnight reads the new day.
    for d in 0..DAYS {
        write_warehouse(&data, &cfg, d, d + 1).expect("day");
        run(&data, &state, START_MICROS + (d + 1) * DAY).await;
    }
    let all = source_rows(&cfg, DAYS);

    let p = predictions(&state).await;
    assert_eq!(p.num_rows(), all.len(), "no duplicate, no gap");
    check_features_against_reference(&p, &all);

    let store = slate_stores::OfflineStore::new(&state.join("offline"));
    let days_with_rows = all
        .iter()
        .map(|r| slate_stores::day_of(r.3))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    for table in ["transaction", "run_fraud_model"] {
        let files = store.file_count(table).await.expect("files");
        assert!(
            files <= days_with_rows,
            "{table}: {files} files for {days_with_rows} days of rows"
        );
    }

    // One run over everything gives the same tables.
    let state2 = tmp.path().join("state2");
    run(&data, &state2, START_MICROS + (DAYS + 1) * DAY).await;
    assert_eq!(
        common::without_run_id_by_id(&predictions(&state2).await),
        common::without_run_id_by_id(&p),
        "daily runs and one run over everything agree"
    );
    let ingested = |s: &Path| {
        let s = slate_stores::OfflineStore::new(&s.join("offline"));
        async move { concat(&s.read_all("transaction").await.expect("read")) }
    };
    let by_id = |b: RecordBatch| {
        let order =
            arrow::compute::sort_to_indices(b.column_by_name("id").expect("id"), None, None)
                .expect("sort");
        arrow::compute::take_record_batch(&b, &order).expect("take")
    };
    assert_eq!(
        by_id(ingested(&state).await),
        by_id(ingested(&state2).await),
        "the ingested table is the same"
    );
}

/// A warehouse that holds some transactions more than once (a corrected version later, with
/// another user, merchant and time; an exact copy; an older version): a first run keeps, per
/// transaction id, the version with the latest time, scores each id once, and computes every
/// feature from the kept versions only (checked against the brute-force reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_keeps_the_latest_version_of_each_transaction() {
    let cfg = Config {
        users: 400,
        merchants: 30,
        seed: 23,
        activity: 1.0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    write_warehouse(&data, &cfg, 0, 10).expect("warehouse");
    let original = fraud_example::transactions(&cfg, 10);
    let now = START_MICROS + 10 * DAY;
    let mut extra = Vec::new();
    // id -> (user, merchant, ts) of the version that must win.
    let mut kept: BTreeMap<i64, (i64, i64, i64)> = original
        .iter()
        .filter(|t| t.category != "pending")
        .map(|t| (t.id, (t.user_id, t.merchant_id, t.ts)))
        .collect();
    for (i, t) in original
        .iter()
        .filter(|t| t.category != "pending")
        .enumerate()
    {
        match i % 9 {
            // A corrected version, hours later (before the run's time, so that it is read), of
            // another user and merchant.
            0 if t.ts + 5 * 3_600_000_000 < now => {
                let mut c = t.clone();
                c.user_id = 1 + t.user_id % cfg.users as i64;
                c.merchant_id = 1 + t.merchant_id % cfg.merchants as i64;
                c.ts = t.ts + 3_600_000_000 * (1 + (i as i64 % 5));
                c.amount = t.amount + 1.0;
                kept.insert(c.id, (c.user_id, c.merchant_id, c.ts));
                extra.push(c);
            }
            // An exact copy.
            3 => extra.push(t.clone()),
            // An older version, which loses.
            6 => {
                let mut c = t.clone();
                c.user_id = 1 + (t.user_id + 7) % cfg.users as i64;
                c.ts = t.ts - 60_000_000;
                extra.push(c);
            }
            _ => {}
        }
    }
    assert!(extra.len() > 100, "{} repeated transactions", extra.len());
    fraud_example::write_parquet(
        &data.join("ML.TRANSACTIONS/part-versions.parquet"),
        &fraud_example::to_batch(&extra).expect("batch"),
    )
    .expect("write");

    let summary = run(&data, &state, now).await;
    assert_eq!(summary.rows_ingested, kept.len(), "one row per transaction");
    let p = predictions(&state).await;
    let ids = i64s(&p, "id");
    let unique: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "each transaction scored once");
    assert_eq!(
        unique,
        kept.keys().copied().collect(),
        "every transaction scored"
    );
    let rows: Vec<(i64, i64, i64, i64)> = kept
        .iter()
        .map(|(id, (u, m, ts))| (*id, *u, *m, *ts))
        .collect();
    check_features_against_reference(&p, &rows);
}
