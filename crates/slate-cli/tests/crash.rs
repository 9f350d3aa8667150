//! Exactly-once under SIGKILL: `slate run` killed at seeded random moments, then run again to
//! completion, leaves the stores exactly as one uninterrupted run does: no duplicate, no gap.

use crate::common;

use common::{project, stores};
use fraud_example::{Config, write_warehouse};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn slate(data: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slate"));
    c.arg("--project")
        .arg(project())
        .arg("--data-dir")
        .arg(data)
        .arg("--state-dir")
        .arg(state);
    c.args(["run", "run_fraud_model"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_rerun_to_the_same_stores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(
        &data,
        &Config {
            users: 300,
            merchants: 80,
            seed: 5,
            activity: 1.0,
        },
        0,
        20,
    )
    .expect("data");

    let reference = tmp.path().join("reference");
    let t = Instant::now();
    assert!(slate(&data, &reference).status().expect("run").success());
    let full = t.elapsed();
    let want = stores(&reference).await;
    assert!(
        want.0.num_rows() > 1_000,
        "enough rows to kill a run in the middle"
    );
    assert!(
        want.1.iter().all(Option::is_some),
        "every transaction is online"
    );

    // Seeded kill times spread over a whole run, some before the first write, some after commit.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = full.mul_f64((x % 1000) as f64 / 800.0);
        let state = tmp.path().join(format!("killed-{round}"));
        let mut child = slate(&data, &state).spawn().expect("spawn");
        std::thread::sleep(delay.min(Duration::from_secs(30)));
        let _ = child.kill(); // SIGKILL; the run may already have finished
        child.wait().expect("wait");
        let rerun = slate(&data, &state).status().expect("rerun");
        assert!(
            rerun.success(),
            "round {round}: the rerun after a kill at {delay:?} failed"
        );
        let got = stores(&state).await;
        assert_eq!(
            got.0, want.0,
            "round {round}: offline predictions differ after a kill at {delay:?}"
        );
        assert_eq!(
            got.1, want.1,
            "round {round}: online values differ after a kill at {delay:?}"
        );
    }
}

/// Files under a directory, recursively.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.path().is_dir() {
                true => files_under(&e.path()),
                false => 1,
            })
            .sum()
    })
}

/// The same under a memory limit that makes the sorts spill: runs killed while they spill
/// rerun to the stores of a run with memory to spare, and leave no spill file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_killed_while_spilling_rerun_to_the_same_stores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(
        &data,
        &Config {
            users: 6_000,
            merchants: 200,
            seed: 5,
            activity: 1.0,
        },
        0,
        20,
    )
    .expect("data");
    let reference = tmp.path().join("reference");
    assert!(slate(&data, &reference).status().expect("run").success());
    let want = stores(&reference).await;

    let limited = |state: &Path| {
        let mut c = slate(&data, state);
        c.arg("--memory-limit").arg("4MiB");
        c
    };
    let spilling = tmp.path().join("spilling");
    let t = Instant::now();
    let out = limited(&spilling)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let full = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("spilled"), "{text}");
    assert_eq!(
        stores(&spilling).await,
        want,
        "a spilling run, the same stores"
    );

    // Each round kills the run once its sorts have spill files on disk, a little later each
    // round, then reruns it.
    let mut killed_spilling = 0;
    for round in 0..4u32 {
        let state = tmp.path().join(format!("killed-{round}"));
        let mut child = limited(&state).spawn().expect("spawn");
        let started = Instant::now();
        let mut seen: Option<Instant> = None;
        let extra = Duration::from_millis(25 * u64::from(round));
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if seen.is_none() && files_under(&state.join("spill")) > 0 {
                seen = Some(Instant::now());
            }
            if seen.is_some_and(|s| s.elapsed() >= extra) || started.elapsed() > full * 4 {
                let spilling = files_under(&state.join("spill")) > 0;
                let _ = child.kill();
                if spilling && child.wait().expect("wait").code().is_none() {
                    killed_spilling += 1;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.wait();
        let rerun = limited(&state)
            .stderr(Stdio::piped())
            .output()
            .expect("rerun");
        assert!(
            rerun.status.success(),
            "round {round}: the rerun failed: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        assert_eq!(
            stores(&state).await,
            want,
            "round {round}: stores differ after a kill while spilling"
        );
        assert_eq!(
            files_under(&state.join("spill")),
            0,
            "round {round}: spill files left after the rerun"
        );
    }
    assert!(
        killed_spilling >= 2,
        "only {killed_spilling} of 4 runs were killed with spill files on disk (a run took {full:?})"
    );
}

#[test]
fn a_second_run_on_the_same_state_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("warehouse");
    write_warehouse(
        &data,
        &Config {
            users: 20,
            merchants: 10,
            seed: 3,
            activity: 1.0,
        },
        0,
        3,
    )
    .expect("data");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    // Another process's run holds the lock.
    let held = std::fs::File::create(state.join("run.lock")).expect("lock file");
    held.lock().expect("lock");
    let out = slate(&data, &state)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another run holds the state directory"),
        "{err}"
    );
    drop(held);
    assert!(
        slate(&data, &state).status().expect("run").success(),
        "runs once the lock is free"
    );
}
