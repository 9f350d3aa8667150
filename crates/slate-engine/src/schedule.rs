//! The scheduler: each scheduled query runs at its cron ticks (UTC), once per tick. A run is
//! identified by (query, tick) and recorded in the ledger with its tick, so a tick that has run
//! never runs again, across restarts; ticks missed while the scheduler was down follow the
//! query's `catch_up` policy. Time comes from the caller, so a test drives it through days.

use crate::{Engine, EngineError, Progress, RunSummary, plan_query};
use chrono::{DateTime, Utc};
use slate_project::CatchUp;

fn cron(text: &str) -> Result<croner::Cron, EngineError> {
    text.parse::<croner::Cron>()
        .map_err(|e| EngineError::Internal(format!("schedule `{text}`: {e}")))
}

fn at(micros: i64) -> Result<DateTime<Utc>, EngineError> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| EngineError::Internal(format!("time {micros} out of range")))
}

/// The ticks of `schedule` in `(after, until]`, in order.
pub fn ticks_between(schedule: &str, after: i64, until: i64) -> Result<Vec<i64>, EngineError> {
    let c = cron(schedule)?;
    let mut out = Vec::new();
    let mut t = at(after)?;
    loop {
        let next = c
            .find_next_occurrence(&t, false)
            .map_err(|e| EngineError::Internal(format!("schedule `{schedule}`: {e}")))?;
        let micros = next.timestamp_micros();
        if micros > until {
            return Ok(out);
        }
        out.push(micros);
        t = next;
    }
}

/// The ticks to run at `now`: `last` is the latest tick already run (from the ledger), `since`
/// when this scheduler started. Without a last tick nothing before `since` runs.
pub fn due(
    schedule: &str,
    last: Option<i64>,
    since: i64,
    now: i64,
    policy: CatchUp,
) -> Result<Vec<i64>, EngineError> {
    let after = match (policy, last) {
        (_, None) => since - 1,
        (CatchUp::None, Some(l)) => l.max(since - 1),
        (_, Some(l)) => l,
    };
    let mut ticks = ticks_between(schedule, after, now)?;
    if policy == CatchUp::Latest && ticks.len() > 1 {
        ticks.drain(..ticks.len() - 1);
    }
    Ok(ticks)
}

/// Runs every scheduled query's due ticks when asked, and says when to ask next.
pub struct Scheduler<'e> {
    engine: &'e Engine,
    since: i64,
}

impl<'e> Scheduler<'e> {
    /// A scheduler that started at `since` (microseconds).
    pub fn new(engine: &'e Engine, since: i64) -> Self {
        Scheduler { engine, since }
    }

    /// The latest tick of `query` recorded in the ledger.
    fn last_tick(&self, query: &str) -> Result<Option<i64>, EngineError> {
        if !self.engine.ledger_exists() {
            return Ok(None);
        }
        Ok(self.engine.ledger()?.last_tick(query)?)
    }

    /// Runs, in tick order per query, every tick due at `now`; returns what ran. A failed run
    /// stops that query's catch-up (its tick stays unrecorded, so the next step retries it
    /// under the same policy).
    pub async fn step(
        &self,
        now: i64,
        progress: &dyn Progress,
    ) -> Vec<(String, i64, Result<RunSummary, EngineError>)> {
        let mut out = Vec::new();
        for q in &self.engine.project().queries {
            let Some(schedule) = &q.schedule else {
                continue;
            };
            let ticks = match self
                .last_tick(&q.name)
                .and_then(|last| due(schedule, last, self.since, now, q.catch_up))
            {
                Ok(t) => t,
                Err(e) => {
                    out.push((q.name.clone(), now, Err(e)));
                    continue;
                }
            };
            for tick in ticks {
                let result = match plan_query(self.engine.project(), &q.name) {
                    Ok(plan) => {
                        self.engine
                            .run_recorded(&plan, Some(tick), progress)
                            .await
                            .1
                    }
                    Err(e) => Err(e),
                };
                // Another service ran this tick while this one waited for the lock.
                if result.as_ref().is_err_and(EngineError::is_tick_done) {
                    continue;
                }
                let failed = result.is_err();
                out.push((q.name.clone(), tick, result));
                if failed {
                    break;
                }
            }
        }
        out
    }

    /// The next tick of any scheduled query after `now`.
    pub fn next_tick(&self, now: i64) -> Option<i64> {
        self.engine
            .project()
            .queries
            .iter()
            .filter_map(|q| q.schedule.as_deref())
            .filter_map(|s| {
                let c = cron(s).ok()?;
                let next = c.find_next_occurrence(&at(now).ok()?, false).ok()?;
                Some(next.timestamp_micros())
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000_000;

    #[test]
    fn midnight_ticks_and_catch_up_policies() {
        let daily = "0 0 * * *";
        assert_eq!(
            ticks_between(daily, T0, T0 + 3 * DAY).unwrap(),
            [T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]
        );
        // Started mid-day 0, nothing run yet: the first midnight is day 1.
        let since = T0 + DAY / 2;
        assert!(
            due(daily, None, since, T0 + DAY - 1, CatchUp::Latest)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            due(daily, None, since, T0 + DAY + 5, CatchUp::Latest).unwrap(),
            [T0 + DAY]
        );
        // Day 1 ran; down over days 2 and 3; back on day 3 at noon.
        let (last, back, now) = (
            Some(T0 + DAY),
            T0 + 3 * DAY + DAY / 2,
            T0 + 3 * DAY + DAY / 2,
        );
        assert_eq!(
            due(daily, last, back, now, CatchUp::Latest).unwrap(),
            [T0 + 3 * DAY]
        );
        assert_eq!(
            due(daily, last, back, now, CatchUp::All).unwrap(),
            [T0 + 2 * DAY, T0 + 3 * DAY]
        );
        assert!(
            due(daily, last, back, now, CatchUp::None)
                .unwrap()
                .is_empty()
        );
        // Under `none`, the first midnight after coming back runs.
        assert_eq!(
            due(daily, last, back, T0 + 4 * DAY + 1, CatchUp::None).unwrap(),
            [T0 + 4 * DAY]
        );
        // A tick that ran is never due again.
        assert!(
            due(
                daily,
                Some(T0 + 4 * DAY),
                back,
                T0 + 4 * DAY + 10,
                CatchUp::All
            )
            .unwrap()
            .is_empty()
        );
    }
}
