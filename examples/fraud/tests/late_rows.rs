//! Late rows: rows that land in the warehouse after the range holding their time was read, and
//! below the next run's lookback, are counted by the run that misses them, on the summary and
//! in the ledger record, and are not ingested.

use fraud_example::{
    Config, START_MICROS, Txn, to_batch, transactions, write_parquet, write_warehouse,
};
use slate_engine::{Engine, EngineConfig, RunSummary, SilentProgress, plan_query};
use slate_types::FixedClock;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

fn project() -> slate_project::Project {
    slate_project::load_project(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid project")
}

async fn run(data: &Path, state: &Path, now: i64) -> RunSummary {
    let e = Engine::new(EngineConfig {
        project: project(),
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(now)),
    })
    .expect("engine");
    let plan = plan_query(&project(), "run_fraud_model").expect("plan");
    e.run(&plan, &SilentProgress).await.expect("run")
}

/// `n` transactions at `ts`, with ids far from the generator's.
fn late(first_id: i64, n: i64, ts: i64) -> Vec<Txn> {
    (0..n)
        .map(|i| Txn {
            id: first_id + i,
            user_id: 1 + i % 5,
            merchant_id: 1 + i % 3,
            amount: 10.0 + i as f64,
            ts: ts + i,
            category: "grocery",
            is_fraud: false,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arriving_below_the_lookback_are_counted_as_late() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("warehouse"), tmp.path().join("state"));
    let cfg = Config {
        users: 40,
        merchants: 15,
        seed: 11,
        activity: 1.0,
    };
    write_warehouse(&data, &cfg, 0, 10).expect("days 0-10");
    let first = run(&data, &state, START_MICROS + 10 * DAY).await;
    assert_eq!(first.late_rows, None, "a first run reads everything");
    let w1 = first.watermark_after.expect("watermark");

    // Day 10 arrives on time; with it, 4 rows from 3 hours before the watermark (below its
    // 60-minute lookback) and 2 from 30 minutes before it (within the lookback).
    write_warehouse(&data, &cfg, 10, 11).expect("day 10");
    let mut rows = late(9_000_000, 4, w1 - 3 * HOUR);
    rows.extend(late(9_100_000, 2, w1 - 30 * 60_000_000));
    write_parquet(
        &data.join("ML.TRANSACTIONS/part-late-1.parquet"),
        &to_batch(&rows).expect("batch"),
    )
    .expect("write");
    let second = run(&data, &state, START_MICROS + 11 * DAY).await;
    assert_eq!(second.late_rows, Some(4), "{second:?}");
    let on_day_10 = transactions(&cfg, 11)
        .iter()
        .filter(|t| t.ts >= w1 - HOUR && t.category != "pending")
        .count();
    assert_eq!(
        second.rows_ingested,
        on_day_10 + 2,
        "the rows within the lookback are read, the late ones are not"
    );
    let w2 = second.watermark_after.expect("watermark");

    // Nothing new below the bound: no late rows. Then one row of the range the second run read
    // arrives after it: the third run counts it.
    write_warehouse(&data, &cfg, 11, 12).expect("day 11");
    write_parquet(
        &data.join("ML.TRANSACTIONS/part-late-2.parquet"),
        &to_batch(&late(9_200_000, 1, w2 - 2 * HOUR)).expect("batch"),
    )
    .expect("write");
    let third = run(&data, &state, START_MICROS + 12 * DAY).await;
    assert_eq!(third.late_rows, Some(1), "{third:?}");
    assert_eq!(third.record.late_rows, Some(1));
    assert_eq!(third.record.scans[0].late_rows, Some(1));

    // The ledger keeps the counts.
    let e = Engine::new(EngineConfig {
        project: project(),
        env: "default".into(),
        data_dir: Some(data.clone()),
        state_dir: Some(state.clone()),
        clock: Arc::new(FixedClock(0)),
    })
    .expect("engine");
    let late: Vec<Option<usize>> = e
        .ledger()
        .expect("ledger")
        .runs()
        .expect("runs")
        .iter()
        .map(|r| r.late_rows)
        .collect();
    assert_eq!(late, [None, Some(4), Some(1)]);
}
