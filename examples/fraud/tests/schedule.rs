//! The scheduler driven by a test clock through several midnights: the fraud query runs once at
//! each tick, never twice (also after a restart), and ticks missed during a downtime follow the
//! query's catch-up policy.

use crate::common;

use fraud_example::{Config, START_MICROS, write_warehouse};
use slate_engine::{Engine, EngineConfig, Scheduler, SilentProgress};
use slate_types::FixedClock;
use std::path::Path;
use std::sync::Arc;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

fn engine(project: &Path, data: &Path, state: &Path) -> Engine {
    Engine::new(EngineConfig {
        project: slate_project::load_project(project).expect("project"),
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(START_MICROS + 40 * DAY)),
    })
    .expect("engine")
}

async fn step(e: &Engine, since: i64, now: i64) -> Vec<i64> {
    Scheduler::new(e, since)
        .step(now, &SilentProgress)
        .await
        .into_iter()
        .map(|(q, tick, r)| {
            assert_eq!(q, "run_fraud_model");
            r.expect("run");
            tick
        })
        .collect()
}

fn ledger_ticks(e: &Engine) -> Vec<i64> {
    let mut t: Vec<i64> = e
        .ledger()
        .expect("ledger")
        .runs()
        .expect("runs")
        .into_iter()
        .map(|r| r.tick_micros)
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_run_once_through_midnights_restarts_and_downtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(
        &data,
        &Config {
            users: 60,
            merchants: 20,
            seed: 8,
            activity: 1.0,
        },
        0,
        10,
    )
    .expect("data");
    let day = |d: i64| START_MICROS + d * DAY;
    let example = Path::new(env!("CARGO_MANIFEST_DIR"));

    // `latest` (the default): started at noon on day 10.
    let state = tmp.path().join("latest");
    let e = engine(example, &data, &state);
    let since = day(10) + 12 * HOUR;
    assert!(step(&e, since, day(10) + 23 * HOUR).await.is_empty());
    assert_eq!(step(&e, since, day(11) + 5).await, [day(11)]);
    assert!(
        step(&e, since, day(11) + 6).await.is_empty(),
        "a tick runs once"
    );
    assert_eq!(step(&e, since, day(12) + 1).await, [day(12)]);
    // Down from day 12 to day 14 at 03:00: of days 13 and 14, only the latest runs.
    let back = day(14) + 3 * HOUR;
    assert_eq!(step(&e, back, back).await, [day(14)]);
    // A restart at the same moment runs nothing more.
    let e = engine(example, &data, &state);
    assert!(step(&e, back + 1, back + 2).await.is_empty());
    assert_eq!(ledger_ticks(&e), [day(11), day(12), day(14)]);
    let next = Scheduler::new(&e, back).next_tick(back);
    assert_eq!(next, Some(day(15)));

    // `all` and `none`, each in a copy of the project with the policy set.
    for (policy, want) in [
        ("all", vec![day(11), day(12), day(13), day(14), day(15)]),
        ("none", vec![day(11), day(15)]),
    ] {
        let dir = tmp.path().join(format!("project-{policy}"));
        common::copy_project(&dir);
        let q = dir.join("src/queries.yaml");
        let text = std::fs::read_to_string(&q).expect("read");
        std::fs::write(
            &q,
            text.replace(
                "  incremental_resolvers:",
                &format!("  catch_up: {policy}\n  incremental_resolvers:"),
            ),
        )
        .expect("write");
        let state = tmp.path().join(policy);
        let e = engine(&dir, &data, &state);
        assert_eq!(step(&e, since, day(11) + 1).await, [day(11)]);
        // Down from day 11 to day 14 at 03:00, then on until day 15.
        step(&e, back, back).await;
        step(&e, back, day(15) + 1).await;
        assert_eq!(ledger_ticks(&e), want, "catch_up: {policy}");
    }
}
