//! Running a planned query once: ingest, compute, predict, write, commit.

use crate::EngineError;

mod stream;
use crate::compute::{self, Frame};
use crate::exec::runtime::{Execution, default_memory_limit};
use crate::frame::{dedupe_sorted, to_class_batch, ts_column};
use crate::plan::{Node, QueryPlan, Scan};
use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use slate_model::OnnxModel;
use slate_project::{IncrementalTimestamp, MetadataConfig, OnlineConfig, Project};
use slate_sources::{IncrementalBound, Source};
use slate_stores::{
    Ledger, OfflineStore, OnlineStore, OutputRecord, PgLedger, PgRunLock, RedbLedger,
    RedbOnlineStore, RedisOnlineStore, ReplaceRange, RunRecord, RunStatus, ScanRecord,
};
use slate_types::Clock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reports stage progress to whoever runs the engine (a progress bar, log lines, nothing).
pub trait Progress: Send + Sync {
    fn stage(&self, name: &str);
    fn done(&self, name: &str, detail: &str, took: Duration);
}

#[derive(Debug, Default)]
pub struct SilentProgress;

impl Progress for SilentProgress {
    fn stage(&self, _: &str) {}
    fn done(&self, _: &str, _: &str, _: Duration) {}
}

/// Where a project runs: its environment and optional overrides of data and state locations.
#[derive(Clone)]
pub struct EngineConfig {
    pub project: Project,
    pub env: String,
    /// Replaces the `path` of every embedded source.
    pub data_dir: Option<PathBuf>,
    /// Replaces the environment's `state_dir`.
    pub state_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub rows_ingested: usize,
    pub rows_scored: usize,
    /// Root rows that arrived too late to be read (`None`: not counted on this run).
    pub late_rows: Option<usize>,
    /// One entry per feature the run computed as an output, in plan order.
    pub outputs: Vec<OutputSummary>,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    pub stages: Vec<(String, Duration)>,
    /// Bytes the run's operators spilled to disk under the memory limit.
    pub spilled_bytes: usize,
    /// What the ledger recorded.
    pub record: RunRecord,
}

/// What a run computed for one output feature.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSummary {
    /// The feature, as written in the project (`Transaction.is_fraud`).
    pub feature: String,
    pub rows: usize,
    pub nulls: usize,
    /// For a boolean output, the number of rows that are true.
    pub true_count: Option<usize>,
}

impl OutputSummary {
    fn of(feature: String, values: &dyn Array) -> Self {
        OutputSummary {
            feature,
            rows: values.len(),
            nulls: values.null_count(),
            true_count: values
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|b| b.true_count()),
        }
    }

    /// For a boolean output, the share of its rows that are true (0 when there are none).
    pub fn true_share(&self) -> Option<f64> {
        self.true_count.map(|t| {
            if self.rows == 0 {
                0.0
            } else {
                t as f64 / self.rows as f64
            }
        })
    }
}

pub struct Engine {
    cfg: EngineConfig,
    state_dir: PathBuf,
    offline_retention_micros: i64,
    functions: compute::Functions,
    /// An online store shared with readers in the same process (redb opens a file once).
    shared_online: Option<Arc<dyn OnlineStore>>,
    /// The run ledger shared with the rest of the process (redb opens a file once).
    shared_ledger: Option<Arc<dyn Ledger>>,
    /// A PostgreSQL ledger, connected at its first use and kept for the engine's life.
    pg_ledger: std::sync::Mutex<Option<Arc<dyn Ledger>>>,
    /// Rows per batch of the offline record and per chunk of the online write.
    write_chunk_rows: usize,
    /// Partitions (by entity key) of the point-in-time operator.
    partitions: usize,
    /// What a run's operators may hold in memory before they spill; `None`: no limit.
    memory_limit: Option<usize>,
}

/// The run lock a run holds while it writes: one run at a time per environment's state.
#[derive(Debug)]
pub(crate) enum RunLock {
    /// `run.lock` in the state directory (the OS releases it when the process dies).
    File(#[allow(dead_code)] std::fs::File),
    /// An advisory lock in the metadata database (released when its connection ends).
    Postgres(#[allow(dead_code)] PgRunLock),
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        let env = cfg
            .project
            .environment(&cfg.env)
            .ok_or_else(|| EngineError::unknown_environment(&cfg.project, &cfg.env))?;
        let state_dir = match &cfg.state_dir {
            Some(d) => d.clone(),
            None => cfg.project.root.join(&env.state_dir).join(&cfg.env),
        };
        let offline_retention_micros = env.offline_retention_secs.saturating_mul(1_000_000);
        let memory_limit = match env.memory_limit_bytes {
            Some(b) => Some(usize::try_from(b).unwrap_or(usize::MAX)),
            None => default_memory_limit(),
        };
        Ok(Engine {
            cfg,
            state_dir,
            offline_retention_micros,
            functions: compute::Functions::default(),
            shared_online: None,
            shared_ledger: None,
            pg_ledger: std::sync::Mutex::new(None),
            write_chunk_rows: WRITE_CHUNK_ROWS,
            partitions: std::thread::available_parallelism().map_or(1, |t| t.get()),
            memory_limit,
        })
    }

    /// The engine's runs holding at most `bytes` in their operators' state (sorts, the
    /// point-in-time aggregation) before spilling under the state directory; overrides the
    /// environment's `memory_limit`. Results do not depend on it.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The execution settings of one run or dataset, spilling under `spill/<name>` in the
    /// state directory.
    pub(crate) fn execution(&self, name: &str) -> Execution {
        Execution::new(
            self.partitions,
            self.memory_limit,
            self.state_dir.join("spill").join(name),
        )
    }

    /// The engine running its point-in-time operator in `n` partitions by entity key (at
    /// least 1; default: one per core). Results do not depend on it.
    pub fn with_partitions(mut self, n: usize) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// The engine writing its outputs in batches of at most `rows` rows (default 1,048,576;
    /// at least 1). The stores end the same whatever the size; smaller batches hold less
    /// memory at once.
    pub fn with_write_chunk_rows(mut self, rows: usize) -> Self {
        self.write_chunk_rows = rows.max(1);
        self
    }

    /// The engine writing through `online`, opened once and shared with in-process readers
    /// (a server that serves while runs write).
    pub fn with_online(mut self, online: Arc<dyn OnlineStore>) -> Self {
        self.shared_online = Some(online);
        self
    }

    /// The engine recording runs through `ledger`, opened once and shared in the process.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.shared_ledger = Some(ledger);
        self
    }

    /// The project the engine runs.
    pub fn project(&self) -> &Project {
        &self.cfg.project
    }

    /// The engine with these Rust function resolvers available to its plans.
    pub fn with_functions(mut self, functions: compute::Functions) -> Self {
        self.functions = functions;
        self
    }

    /// Fails, before anything is written, when the plan calls a function this engine lacks.
    pub(crate) fn check_functions(&self, plan: &QueryPlan) -> Result<(), EngineError> {
        for f in plan.functions() {
            if self.functions.get(&f.name).is_none() {
                return Err(EngineError::Function {
                    name: f.name.clone(),
                    reason: "not registered with this engine: it is Rust code, run through a program that registers it with `Engine::with_functions`".into(),
                });
            }
        }
        Ok(())
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The run ledger: the shared one when set, else the environment's (the embedded file
    /// opened now, or the PostgreSQL database connected once).
    pub fn ledger(&self) -> Result<Arc<dyn Ledger>, EngineError> {
        if let Some(l) = &self.shared_ledger {
            return Ok(l.clone());
        }
        match self.metadata_config()? {
            MetadataConfig::Embedded => Ok(Arc::new(RedbLedger::open(
                &self.state_dir.join("ledger.redb"),
            )?)),
            MetadataConfig::Postgres { connection, .. } => {
                let mut slot = self
                    .pg_ledger
                    .lock()
                    .map_err(|_| EngineError::Internal("ledger slot poisoned".into()))?;
                if let Some(l) = slot.as_ref() {
                    return Ok(l.clone());
                }
                let (config, target) = self.metadata_connection()?;
                let ledger: Arc<dyn Ledger> = Arc::new(PgLedger::open(
                    config,
                    target,
                    self.metadata_namespace(),
                    connection.attempts,
                )?);
                *slot = Some(ledger.clone());
                Ok(ledger)
            }
        }
    }

    /// Whether the ledger may hold runs: the embedded one once a run created its file (a run
    /// that fails early leaves no state); a database always.
    pub fn ledger_exists(&self) -> bool {
        self.shared_ledger.is_some()
            || match self.metadata_config() {
                Ok(MetadataConfig::Embedded) => self.state_dir.join("ledger.redb").exists(),
                _ => true,
            }
    }

    fn metadata_config(&self) -> Result<&MetadataConfig, EngineError> {
        self.cfg
            .project
            .environment(&self.cfg.env)
            .map(|e| &e.metadata)
            .ok_or_else(|| EngineError::Internal("environment vanished".into()))
    }

    /// The metadata database's connection settings and its name in messages.
    fn metadata_connection(&self) -> Result<(tokio_postgres::Config, String), EngineError> {
        let MetadataConfig::Postgres { connection, .. } = self.metadata_config()? else {
            return Err(EngineError::Internal("no metadata database".into()));
        };
        slate_sources::postgres_client_config("metadata", connection).map_err(|e| {
            EngineError::Environment {
                env: self.cfg.env.clone(),
                reason: match e {
                    slate_sources::SourceError::Config { reason, .. } => {
                        format!("metadata store: {reason}")
                    }
                    e => e.to_string(),
                },
            }
        })
    }

    /// What the environment's rows are filed under in a metadata database.
    fn metadata_namespace(&self) -> String {
        match self.metadata_config() {
            Ok(MetadataConfig::Postgres {
                namespace: Some(n), ..
            }) => n.clone(),
            _ => format!("{}/{}", self.cfg.project.name, self.cfg.env),
        }
    }

    /// The online store: the shared one when set, else the environment's, opened now.
    pub fn online(&self) -> Result<Arc<dyn OnlineStore>, EngineError> {
        if let Some(o) = &self.shared_online {
            return Ok(o.clone());
        }
        Ok(match self.online_config()? {
            OnlineConfig::Embedded => {
                Arc::new(RedbOnlineStore::open(&self.state_dir.join("online.redb"))?)
            }
            OnlineConfig::Redis(c) => Arc::new(RedisOnlineStore::open(
                crate::backends::redis_settings(c, &self.cfg.project.name, &self.cfg.env)?,
            )?),
        })
    }

    fn online_config(&self) -> Result<&OnlineConfig, EngineError> {
        self.cfg
            .project
            .environment(&self.cfg.env)
            .map(|e| &e.online)
            .ok_or_else(|| EngineError::Internal("environment vanished".into()))
    }

    /// Whether the online store may hold values: the embedded one once a run created its
    /// file (reading must not create it); a server always.
    pub fn online_exists(&self) -> bool {
        match self.online_config() {
            Ok(OnlineConfig::Embedded) => self.state_dir.join("online.redb").exists(),
            _ => true,
        }
    }

    pub fn offline(&self) -> OfflineStore {
        OfflineStore::new(&self.state_dir.join("offline"))
            .with_retention(self.offline_retention_micros)
    }

    /// Takes the run lock of the environment's state: at once or `Busy`, or (`wait`) when the
    /// run holding it has finished.
    pub(crate) async fn lock(&self, wait: bool) -> Result<RunLock, EngineError> {
        let interval = Duration::from_millis(250);
        if let MetadataConfig::Postgres { .. } = self.metadata_config()? {
            let (config, target) = self.metadata_connection()?;
            let namespace = self.metadata_namespace();
            return match PgRunLock::acquire(&config, &target, &namespace, wait.then_some(interval))
                .await?
            {
                Some(lock) => Ok(RunLock::Postgres(lock)),
                None => Err(EngineError::Busy {
                    holder: format!("the run lock of `{namespace}` in the metadata store"),
                }),
            };
        }
        loop {
            if let Some(lock) = self.try_lock_file()? {
                return Ok(lock);
            }
            if !wait {
                return Err(EngineError::Busy {
                    holder: format!("the state directory {}", self.state_dir.display()),
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn try_lock_file(&self) -> Result<Option<RunLock>, EngineError> {
        let io = |e: std::io::Error| {
            EngineError::Store(slate_stores::StoreError::Io {
                what: "run lock",
                reason: e.to_string(),
            })
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.state_dir.join("run.lock"))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock::File(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Opens source `source` of this environment (embedded paths after `--data-dir`).
    pub async fn source(&self, source: &str) -> Result<Box<dyn Source>, EngineError> {
        let env = self
            .cfg
            .project
            .environment(&self.cfg.env)
            .ok_or_else(|| EngineError::Internal("environment vanished".into()))?;
        let Some(config) = env.sources.get(source) else {
            return Err(EngineError::Plan {
                query: String::new(),
                reason: format!(
                    "source `{source}` is not configured in environment `{}`",
                    self.cfg.env
                ),
            });
        };
        Ok(slate_sources::open(
            source,
            config,
            &self.cfg.project.root,
            self.cfg.data_dir.as_deref(),
        )
        .await?)
    }

    /// One run of `plan` now, on demand: its tick is its start time.
    pub async fn run(
        &self,
        plan: &QueryPlan,
        progress: &dyn Progress,
    ) -> Result<RunSummary, EngineError> {
        self.run_tick(plan, None, progress).await
    }

    /// [`Engine::run_tick`], and when the run fails, a record of the failure in the ledger
    /// (its watermarks unchanged): what a service runs, so that its history shows failures.
    /// Returns the run's id with its outcome.
    pub async fn run_recorded(
        &self,
        plan: &QueryPlan,
        tick: Option<i64>,
        progress: &dyn Progress,
    ) -> (String, Result<RunSummary, EngineError>) {
        let started = self.cfg.clock.now_micros();
        let result = self.run_tick(plan, tick, progress).await;
        let tick_micros = tick.unwrap_or(started);
        let run_id = match &result {
            Ok(s) => s.run_id.clone(),
            Err(_) => format!(
                "{}@{}",
                plan.query.name,
                slate_types::format_rfc3339(tick_micros)
            ),
        };
        if let Some(e) = result.as_ref().err().filter(|e| !e.is_tick_done()) {
            let record = RunRecord {
                run_id: run_id.clone(),
                query: plan.query.name.clone(),
                tick_micros,
                status: RunStatus::Failed,
                trigger: if tick.is_some() {
                    "schedule"
                } else {
                    "on_demand"
                }
                .into(),
                started_micros: started,
                finished_micros: self.cfg.clock.now_micros(),
                rows_ingested: 0,
                rows_scored: 0,
                late_rows: None,
                watermark_before: None,
                watermark_after: None,
                scans: vec![],
                outputs: vec![],
                stages: vec![],
                error: Some(e.to_string()),
            };
            // A failure that cannot be recorded is reported with the run's own error.
            if let Err(le) = std::fs::create_dir_all(&self.state_dir)
                .map_err(|e| e.to_string())
                .and_then(|_| self.ledger().map_err(|e| e.to_string()))
                .and_then(|l| l.record_failure(&record).map_err(|e| e.to_string()))
            {
                let e = EngineError::Internal(format!("{e}; recording the failure failed: {le}"));
                return (run_id, Err(e));
            }
        }
        (run_id, result)
    }

    /// One run of `plan` for a schedule's tick (or, with `None`, on demand); the run is
    /// identified and recorded by `query@tick`. A run that fails in a state directory it
    /// created leaves no state directory behind.
    pub async fn run_tick(
        &self,
        plan: &QueryPlan,
        tick: Option<i64>,
        progress: &dyn Progress,
    ) -> Result<RunSummary, EngineError> {
        let fresh = !self.state_dir.exists();
        let result = self.run_tick_in_state(plan, tick, progress).await;
        if result.is_err() && fresh && self.state_dir.exists() {
            // Nothing committed: what the run wrote (its lock, rows it ingested) goes with it.
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
        result
    }

    async fn run_tick_in_state(
        &self,
        plan: &QueryPlan,
        tick: Option<i64>,
        progress: &dyn Progress,
    ) -> Result<RunSummary, EngineError> {
        let started = self.cfg.clock.now_micros();
        let trigger = if tick.is_some() {
            "schedule"
        } else {
            "on_demand"
        };
        let tick = tick.unwrap_or(started);
        let run_id = format!("{}@{}", plan.query.name, slate_types::format_rfc3339(tick));
        let mut stages = Vec::new();
        let mut took = |name: &str, detail: String, took: Duration| {
            progress.done(name, &detail, took);
            stages.push((name.to_string(), took));
        };

        // Functions are checked and models loaded before anything is written, so a missing
        // function or a bad model file leaves no trace.
        self.check_functions(plan)?;
        let mut models: HashMap<String, OnnxModel> = HashMap::new();
        for m in plan.models() {
            models.insert(m.name.clone(), OnnxModel::load(&m.model_path)?);
        }

        // An online store another process holds (a running service) refuses the run now,
        // before anything is written, rather than at the write stage.
        let early_online = match (plan.query.store_online, &self.shared_online) {
            (true, None) if self.online_exists() => Some(self.online()?),
            _ => None,
        };

        // 1. Ingest every scan; the rows are persisted before anything is computed from them.
        progress.stage("ingest");
        // One run at a time writes an environment's state. A scheduled tick waits for a run in
        // progress (another service's run of the same tick, say) and then runs only if that
        // run did not commit it; a run on demand is refused at once. A lock whose holder dies
        // is released (the OS closes its file, PostgreSQL its connection).
        let _lock = self.lock(trigger == "schedule").await?;
        // The ledger is created at the first commit, so a run that fails early leaves no state.
        let ledger_exists = self.ledger_exists();
        if trigger == "schedule" && ledger_exists && self.ledger()?.is_committed(&run_id)? {
            return Err(EngineError::TickDone { run_id });
        }
        // Files a killed run spilled (its operators delete theirs when they end) go now,
        // under the lock, before this run spills its own.
        let leftover = self.state_dir.join("spill").join(RUN_SPILL);
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(|e| {
                EngineError::Internal(format!(
                    "cannot remove the spill files of an earlier run under {}: {e}",
                    leftover.display()
                ))
            })?;
        }
        let previous = match ledger_exists {
            true => self.ledger()?.last_committed(&plan.query.name)?,
            false => None,
        };
        let exec = self.execution(RUN_SPILL);
        let (root_bound, root_before) = self.bound_of(plan, &plan.scans[0], ledger_exists)?;
        let (ingested, rows_ingested, rows_scored, outputs) = if stream::streamable(plan) {
            // The looked-up classes' rows (and a daily run's new rows) are read, then stored,
            // before the plan starts; a backfill streams its root rows through the plan.
            let t = Instant::now();
            let mut related: Vec<(RecordBatch, Ingested)> = Vec::new();
            for scan in &plan.scans[1..] {
                related.push(
                    self.ingest(plan, scan, ledger_exists, started, previous.as_ref())
                        .await?,
                );
            }
            let root = match root_bound {
                None => None,
                Some(_) => {
                    let scan = &plan.scans[0];
                    Some(
                        self.ingest(plan, scan, ledger_exists, started, previous.as_ref())
                            .await?,
                    )
                }
            };
            let read = t.elapsed();
            // A daily run stores everything now; a backfill stores the looked-up classes'
            // rows once its root source has answered (a dead source leaves the stores as they
            // were).
            let (related, daily): (Vec<(Option<RecordBatch>, Ingested)>, _) = match root {
                None => (
                    related.into_iter().map(|(r, i)| (Some(r), i)).collect(),
                    None,
                ),
                Some((rows, i)) => {
                    let offline = self.offline();
                    for (scan, (rows, i)) in plan.scans[1..].iter().zip(&related) {
                        store_scan(&offline, scan, i, rows).await?;
                    }
                    store_scan(&offline, &plan.scans[0], &i, &rows).await?;
                    let all: Vec<&Ingested> = std::iter::once(&i)
                        .chain(related.iter().map(|(_, i)| i))
                        .collect();
                    took(
                        "ingest",
                        ingest_detail(&plan.scans, &all, read, t.elapsed() - read),
                        t.elapsed(),
                    );
                    let stored = related.into_iter().map(|(_, i)| (None, i)).collect();
                    (stored, Some((rows, i)))
                }
            };
            let s = self
                .run_streamed(
                    plan,
                    &run_id,
                    started,
                    root_before,
                    &models,
                    early_online,
                    &exec,
                    progress,
                    &mut took,
                    daily,
                    related,
                    read,
                )
                .await?;
            let mut ingested = vec![s.ingested];
            ingested.extend(s.related);
            (ingested, s.rows, s.rows, s.outputs)
        } else {
            self.run_framed(
                plan,
                &run_id,
                started,
                tick,
                previous.as_ref(),
                ledger_exists,
                &models,
                early_online,
                &exec,
                progress,
                &mut took,
            )
            .await?
        };

        // 4. Commit: the run record and the watermarks move together, last.
        let t = Instant::now();
        let before = ingested[0].before;
        let after = ingested[0].after;
        let commit_detail = format!(
            "watermark {}",
            after.map_or("unset".into(), slate_types::format_rfc3339)
        );
        let mut record = RunRecord {
            run_id: run_id.clone(),
            query: plan.query.name.clone(),
            tick_micros: tick,
            status: RunStatus::Succeeded,
            trigger: trigger.to_string(),
            started_micros: started,
            finished_micros: self.cfg.clock.now_micros(),
            rows_ingested,
            rows_scored,
            late_rows: ingested[0].late,
            watermark_before: before,
            watermark_after: after,
            scans: plan
                .scans
                .iter()
                .zip(&ingested)
                .map(|(s, i)| ScanRecord {
                    resolver: s.resolver.name.clone(),
                    rows: i.count,
                    bound_micros: i.bound.as_ref().map(|b| b.micros),
                    watermark_before: i.before,
                    watermark_after: i.after,
                    late_rows: i.late,
                })
                .collect(),
            outputs: outputs
                .iter()
                .map(|o| OutputRecord {
                    feature: o.feature.clone(),
                    rows: o.rows,
                    nulls: o.nulls,
                })
                .collect(),
            stages: Vec::new(),
            error: None,
        };
        // The commit's own time is the one stage the record cannot hold.
        record.stages = stages
            .iter()
            .map(|(n, d)| (n.clone(), d.as_secs_f64()))
            .collect();
        let marks: Vec<(String, i64)> = plan
            .scans
            .iter()
            .zip(&ingested)
            .filter_map(|(s, i)| i.after.map(|a| (s.resolver.name.clone(), a)))
            .collect();
        self.ledger()?.commit_run(&record, &marks)?;
        progress.done("commit", &commit_detail, t.elapsed());
        stages.push(("commit".to_string(), t.elapsed()));

        Ok(RunSummary {
            run_id,
            rows_ingested: record.rows_ingested,
            rows_scored: record.rows_scored,
            late_rows: record.late_rows,
            outputs,
            watermark_before: before,
            watermark_after: after,
            stages,
            spilled_bytes: exec.spills().0,
            record,
        })
    }

    /// The run's ingest, compute and write stages over a frame of every root row (a plan with
    /// aggregations over another class's table, or a root class without a feature time; see
    /// `stream::streamable`): returns what was ingested, the rows ingested and scored, and the
    /// outputs' summaries.
    #[allow(clippy::too_many_arguments)]
    async fn run_framed(
        &self,
        plan: &QueryPlan,
        run_id: &str,
        started: i64,
        tick: i64,
        previous: Option<&RunRecord>,
        ledger_exists: bool,
        models: &HashMap<String, OnnxModel>,
        early_online: Option<Arc<dyn OnlineStore>>,
        exec: &Execution,
        progress: &dyn Progress,
        took: &mut (dyn FnMut(&str, String, Duration) + Send),
    ) -> Result<(Vec<Ingested>, usize, usize, Vec<OutputSummary>), EngineError> {
        let t = Instant::now();
        let mut ingested = Vec::new();
        let mut scanned = Vec::new();
        for scan in &plan.scans {
            let (rows, i) = self
                .ingest(plan, scan, ledger_exists, started, previous)
                .await?;
            scanned.push(rows);
            ingested.push(i);
        }
        let offline = self.offline();
        let read_time = t.elapsed();
        // Stored, each scan's rows are released, but the root rows, which become the frame.
        let mut root_rows = None;
        for (k, ((scan, i), rows)) in plan.scans.iter().zip(&ingested).zip(scanned).enumerate() {
            store_scan(&offline, scan, i, &rows).await?;
            if k == 0 {
                root_rows = Some(rows);
            }
        }
        let rows = root_rows.ok_or_else(|| EngineError::Internal("a plan without scans".into()))?;
        took(
            "ingest",
            ingest_detail(
                &plan.scans,
                &ingested.iter().collect::<Vec<_>>(),
                read_time,
                t.elapsed() - read_time,
            ),
            t.elapsed(),
        );

        // 2. Compute the graph's nodes over the root rows, point in time.
        progress.stage("compute");
        let t = Instant::now();
        let now: Vec<i64> = match &plan.root_time {
            Some(c) => ts_column(&rows, c)?
                .into_iter()
                .map(|v| v.unwrap_or_default())
                .collect(),
            None => vec![tick; rows.num_rows()],
        };
        let rows_ingested = rows.num_rows();
        let mut frame = Frame::new(&rows, now);
        drop(rows);
        // A root scan that read everything replaced its table with exactly these rows.
        if ingested[0].bound.is_none()
            && let Some(t) = &plan.root_time
        {
            frame.whole_table = Some((plan.root_table(), t.clone()));
        }
        let predict_time = self
            .compute_nodes(&offline, plan, &mut frame, models, exec)
            .await?;
        // Models are timed apart: the features and the scoring are different costs.
        let n_models = plan.models().count();
        let n_features = plan
            .nodes
            .iter()
            .filter(|n| !matches!(n, Node::Model { .. }))
            .count();
        let spilled = match exec.spilled_text() {
            Some(t) => format!(" ({t})"),
            None => String::new(),
        };
        took(
            "compute",
            format!("{n_features} features for {rows_ingested} rows{spilled}"),
            t.elapsed().saturating_sub(predict_time),
        );
        if n_models > 0 {
            took(
                "predict",
                format!(
                    "{rows_ingested} rows scored by {n_models} model{}",
                    if n_models == 1 { "" } else { "s" }
                ),
                predict_time,
            );
        }

        // 3. Write the outputs.
        progress.stage("write");
        let t = Instant::now();
        let key_col = frame.column(&plan.root.primary_key)?.clone();
        let published = published(plan);
        let mut outputs = Vec::new();
        for (f, c) in &published {
            outputs.push(OutputSummary::of(f.to_string(), frame.column(c)?.as_ref()));
        }
        let mut parts = Vec::new();
        if plan.query.store_online {
            let w = Instant::now();
            // One feature's rows at a time, all in one transaction.
            let online = match early_online {
                Some(o) => o,
                None => self.online()?,
            };
            let keys = key_strings(&key_col)?;
            let order = slate_stores::key_order(&keys, &frame.now)?;
            drop(keys);
            let mut writer = online.writer()?;
            // The rows in key order, in chunks, each built when it is written: its keys, times
            // and JSON values (each chunk's JSON far below Arrow's 2 GiB limit per string
            // array, whatever the run's size). One chunk is built on one core while the
            // previous chunk's records are written on the other.
            let columns = published
                .iter()
                .map(|(_, c)| frame.column(c).cloned())
                .collect::<Result<Vec<_>, _>>()?;
            let names: Vec<String> = published.iter().map(|(f, _)| f.column_name()).collect();
            let now = &frame.now;
            let key_col = &key_col;
            std::thread::scope(|s| -> Result<(), EngineError> {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let order = &order;
                let chunk_rows = self.write_chunk_rows;
                s.spawn(move || {
                    for rows in order.chunks(chunk_rows) {
                        let chunk = (|| -> Result<_, EngineError> {
                            let idx = arrow::array::UInt32Array::from(rows.to_vec());
                            let keys = key_strings(&arrow::compute::take(key_col, &idx, None)?)?;
                            let times: Vec<i64> = rows.iter().map(|&i| now[i as usize]).collect();
                            let json = columns
                                .iter()
                                .map(|c| {
                                    arrow::compute::take(c, &idx, None)
                                        .map_err(EngineError::from)
                                        .and_then(|v| json_values(&v))
                                })
                                .collect::<Result<Vec<_>, _>>()?;
                            Ok((keys, times, json))
                        })();
                        if tx.send(chunk).is_err() {
                            return;
                        }
                    }
                });
                for _ in order.chunks(chunk_rows) {
                    let (keys, times, json) = rx.recv().map_err(|_| {
                        EngineError::Internal("online values thread ended".into())
                    })??;
                    let rows = slate_stores::OnlineRows {
                        keys: &keys,
                        times: &times,
                        values: names.iter().map(|n| n.as_str()).zip(&json).collect(),
                    };
                    let identity: Vec<u32> = (0..keys.len() as u32).collect();
                    writer.put_ordered(&rows, &identity)?;
                }
                Ok(())
            })?;
            writer.commit()?;
            parts.push(format!("online {:.2}s", w.elapsed().as_secs_f64()));
        }
        if plan.query.store_offline {
            let w = Instant::now();
            let record = OutputColumns::new(plan, &frame, Some(run_id), models)?;
            let rows = slate_stores::WriteRows::new(record.batches(self.write_chunk_rows));
            let replace = ingested[0].bound.as_ref().map(|b| ReplaceRange {
                column: "feature_time".into(),
                from_micros: b.micros,
            });
            offline
                .write_rows(
                    &plan.query.name,
                    rows,
                    replace.as_ref(),
                    Some("feature_time"),
                )
                .await?;
            parts.push(format!("offline {:.2}s", w.elapsed().as_secs_f64()));
        }
        took(
            "write",
            format!("{} rows ({})", frame.rows, parts.join(", ")),
            t.elapsed(),
        );

        Ok((ingested, rows_ingested, frame.rows, outputs))
    }

    /// Executes the plan's nodes over `frame`, in order; returns the time spent in models.
    pub(crate) async fn compute_nodes(
        &self,
        offline: &OfflineStore,
        plan: &QueryPlan,
        frame: &mut Frame,
        models: &HashMap<String, OnnxModel>,
        exec: &Execution,
    ) -> Result<Duration, EngineError> {
        let mut predict_time = std::time::Duration::ZERO;
        let mut done = vec![false; plan.nodes.len()];
        for i in 0..plan.nodes.len() {
            if done[i] {
                continue;
            }
            match &plan.nodes[i] {
                Node::Column { column, .. } => {
                    frame.column(column)?;
                }
                n @ Node::Lookup { column, .. } => {
                    let a = compute::lookup(offline, &*frame, n).await?;
                    frame.columns.insert(column.clone(), a);
                }
                n @ Node::Function { .. } => {
                    let arrays = compute::function(frame, n, &self.functions)?;
                    for (c, a) in n.columns().into_iter().zip(arrays) {
                        frame.columns.insert(c.to_string(), a);
                    }
                }
                n @ Node::Expression { column, .. } => {
                    let a = compute::expression(frame, n)?;
                    frame.columns.insert(column.clone(), a);
                }
                Node::Aggregate { key, table, .. } => {
                    // Every aggregate over the same history and key is computed in one pass
                    // over one read; none of them depends on a later node.
                    let group: Vec<usize> = (i..plan.nodes.len())
                        .filter(|&j| {
                            !done[j]
                                && matches!(&plan.nodes[j], Node::Aggregate { key: k, table: tb, .. } if k == key && tb == table)
                        })
                        .collect();
                    let nodes: Vec<&Node> = group.iter().map(|&j| &plan.nodes[j]).collect();
                    let arrays =
                        compute::aggregates(offline, &*frame, &nodes, &plan.query.name, exec)
                            .await?;
                    for (&j, a) in group.iter().zip(arrays) {
                        if let Node::Aggregate { column, .. } = &plan.nodes[j] {
                            frame.columns.insert(column.clone(), a);
                        }
                        done[j] = true;
                    }
                }
                n @ Node::Model { .. } => {
                    let p = Instant::now();
                    for (c, a) in compute::model(frame, n, models)? {
                        frame.columns.insert(c, a);
                    }
                    predict_time += p.elapsed();
                }
            }
            done[i] = true;
            // A column of the root rows that no remaining node reads and no output holds is
            // released (a backfill's raw columns are most of its memory).
            frame.columns.retain(|c, _| {
                c == &plan.root.primary_key
                    || plan.nodes.iter().enumerate().any(|(j, n)| {
                        n.columns().contains(&c.as_str())
                            || (!done[j] && n.inputs().contains(&c.as_str()))
                    })
            });
        }
        Ok(predict_time)
    }

    /// Where one scan starts reading: its incremental bound (`None`: every row) and the
    /// watermark it starts from.
    fn bound_of(
        &self,
        plan: &QueryPlan,
        scan: &Scan,
        ledger_exists: bool,
    ) -> Result<(Option<IncrementalBound>, Option<i64>), EngineError> {
        let r = &scan.resolver;
        let inc = r.incremental.as_ref().filter(|_| scan.incremental);
        let before = match (inc, ledger_exists) {
            (Some(_), true) => self.ledger()?.watermark(&plan.query.name, &r.name)?,
            _ => None,
        };
        let bound = match (inc, before) {
            (Some(i), Some(w)) => Some(IncrementalBound {
                column: i.column.clone(),
                micros: w - i.lookback_secs * 1_000_000,
            }),
            (Some(i), None) => plan.query.lower_bound_micros.map(|m| IncrementalBound {
                column: i.column.clone(),
                micros: m,
            }),
            (None, _) => None,
        };
        Ok((bound, before))
    }

    /// Reads one scan's rows: the new ones when it is incremental (from the watermark minus the
    /// lookback), every row otherwise; shaped to the class's types and deduplicated.
    async fn ingest(
        &self,
        plan: &QueryPlan,
        scan: &Scan,
        ledger_exists: bool,
        started: i64,
        previous: Option<&RunRecord>,
    ) -> Result<(RecordBatch, Ingested), EngineError> {
        let r = &scan.resolver;
        let inc = r.incremental.as_ref().filter(|_| scan.incremental);
        let (bound, before) = self.bound_of(plan, scan, ledger_exists)?;
        let source = self.source(&r.source).await?;
        let query = source.query(&r.name, &r.sql, bound.as_ref());
        // Past the resolver's timeout the query is dropped (with its connection, which ends it
        // on the server) and the run fails before anything is written.
        let batches = match r.timeout_secs {
            None => query.await?,
            Some(secs) => {
                match tokio::time::timeout(std::time::Duration::from_secs(secs as u64), query).await
                {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(slate_sources::SourceError::Timeout {
                            resolver: r.name.clone(),
                            source_name: r.source.clone(),
                            seconds: secs,
                        }
                        .into());
                    }
                }
            }
        };
        let class = &scan.class;
        let mut required = vec![class.primary_key.as_str()];
        required.extend(class.feature_time.as_deref());
        // The root rows are one per key; a related class with a feature time keeps its versions.
        let versions = !std::ptr::eq(scan, &plan.scans[0]);
        // Each copy is released once the next is made: at most two of the rows are held.
        let rows = {
            let all = to_class_batch(&r.name, class, batches, &required)?;
            dedupe_sorted(
                &all,
                &class.primary_key,
                class.feature_time.as_deref(),
                versions,
                &r.name,
            )?
        };
        // Late rows: the range between the previous run's bound and this one's was read by the
        // previous run; what the source holds there now beyond what was stored came too late.
        let previous_bound = previous
            .and_then(|p| p.scans.iter().find(|s| s.resolver == r.name))
            .map(|s| s.bound_micros);
        let late = match (&bound, previous_bound) {
            (Some(b), Some(from)) if from.is_none_or(|f| f < b.micros) => {
                // After a run that read everything (a backfill), the check covers the day
                // before this bound (or the lookback, when longer) rather than all history.
                let lookback = before.map_or(0, |w| w.saturating_sub(b.micros));
                let from = from.or(Some(b.micros - lookback.max(86_400_000_000)));
                let mut distinct = vec![class.primary_key.as_str()];
                if versions && let Some(t) = class.feature_time.as_deref() {
                    distinct.push(t);
                }
                let now = source
                    .count_distinct_between(&r.name, &r.sql, &distinct, &b.column, from, b.micros)
                    .await?;
                self.offline()
                    .count_distinct_between(&scan.table(), &distinct, &b.column, from, b.micros)
                    .await?
                    .map(|stored| now.saturating_sub(stored))
            }
            (Some(_), Some(_)) => Some(0),
            _ => None,
        };
        let after = match inc {
            Some(i) if i.timestamp == IncrementalTimestamp::ResolverExecutionTime => Some(started),
            Some(i) => {
                let max = ts_column(&rows, &i.column)?.into_iter().flatten().max();
                max.max(before)
            }
            None => None,
        };
        let ingested = Ingested {
            count: rows.num_rows(),
            bound,
            before,
            after,
            late,
        };
        Ok((rows, ingested))
    }

    /// The offline record of a run's rows, one batch (for a dataset).
    pub(crate) fn output_batch(
        &self,
        plan: &QueryPlan,
        frame: &Frame,
        run_id: Option<&str>,
        models: &HashMap<String, OnnxModel>,
    ) -> Result<RecordBatch, EngineError> {
        Ok(OutputColumns::new(plan, frame, run_id, models)?.batch(0..frame.rows)?)
    }
}

/// The offline record of a run's rows: run id, key and feature time, then every computed
/// column in plan order, each model's file hash before its outputs. Owned (the arrays are
/// shared with the frame), so that its batches are built while the write consumes them: the
/// repeated strings (run id, model hash) exist a batch at a time.
pub(crate) struct OutputColumns {
    schema: Arc<Schema>,
    columns: Vec<OutputColumn>,
    rows: usize,
}

enum OutputColumn {
    Array(ArrayRef),
    Repeat(String),
}

impl OutputColumns {
    pub(crate) fn new(
        plan: &QueryPlan,
        frame: &Frame,
        run_id: Option<&str>,
        models: &HashMap<String, OnnxModel>,
    ) -> Result<Self, EngineError> {
        let pk = &plan.root.primary_key;
        let key = frame.column(pk)?.clone();
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        if let Some(run_id) = run_id {
            fields.push(Field::new("run_id", DataType::Utf8, false));
            columns.push(OutputColumn::Repeat(run_id.to_string()));
        }
        fields.push(Field::new(pk, key.data_type().clone(), false));
        fields.push(Field::new("feature_time", ts_type(), false));
        columns.push(OutputColumn::Array(key));
        columns.push(OutputColumn::Array(Arc::new(
            arrow::array::TimestampMicrosecondArray::from(frame.now.clone()).with_timezone("UTC"),
        )));
        let one_model = plan.models().count() == 1;
        let mut seen: Vec<&str> = vec!["run_id", pk, "feature_time"];
        for node in &plan.nodes {
            if let Node::Model { resolver, .. } = node {
                let name = if one_model {
                    "model_sha256".to_string()
                } else {
                    format!("model_sha256__{}", resolver.name)
                };
                let sha = models
                    .get(&resolver.name)
                    .map(|m| m.sha256())
                    .unwrap_or_default();
                fields.push(Field::new(name, DataType::Utf8, false));
                columns.push(OutputColumn::Repeat(sha.to_string()));
            }
            for c in node.columns() {
                if seen.contains(&c) {
                    continue;
                }
                seen.push(c);
                let a = frame.column(c)?.clone();
                fields.push(Field::new(c, a.data_type().clone(), true));
                columns.push(OutputColumn::Array(a));
            }
        }
        Ok(OutputColumns {
            schema: Arc::new(Schema::new(fields)),
            columns,
            rows: frame.rows,
        })
    }

    /// The record of `rows`.
    pub(crate) fn batch(
        &self,
        rows: std::ops::Range<usize>,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let n = rows.len();
        let cols = self
            .columns
            .iter()
            .map(|c| match c {
                OutputColumn::Array(a) => a.slice(rows.start, n),
                OutputColumn::Repeat(s) => Arc::new(repeated(s, n)) as ArrayRef,
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), cols)
    }

    /// The columns of `rows` that vary by row (all but the run id and the model hashes): a
    /// record regrouped through files on disk holds these, and [`Self::repeats`] adds the
    /// repeated strings back once it is read.
    pub(crate) fn varying(
        &self,
        rows: std::ops::Range<usize>,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let (fields, cols): (Vec<_>, Vec<_>) = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .filter_map(|(c, f)| match c {
                OutputColumn::Array(a) => Some((f.clone(), a.slice(rows.start, rows.len()))),
                OutputColumn::Repeat(_) => None,
            })
            .unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
    }

    /// What turns a batch of [`Self::varying`] columns into the record's.
    pub(crate) fn repeats(&self) -> Repeats {
        Repeats {
            schema: self.schema.clone(),
            repeated: self
                .columns
                .iter()
                .map(|c| match c {
                    OutputColumn::Array(_) => None,
                    OutputColumn::Repeat(s) => Some(s.clone()),
                })
                .collect(),
        }
    }

    /// The record in batches of at most `chunk` rows, each built when it is asked for (one
    /// empty batch for no rows).
    pub(crate) fn batches(
        self,
        chunk: usize,
    ) -> impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send + 'static {
        let starts: Vec<usize> = match self.rows {
            0 => vec![0],
            n => (0..n).step_by(chunk.max(1)).collect(),
        };
        starts.into_iter().map(move |start| {
            let end = (start + chunk).min(self.rows);
            self.batch(start..end)
        })
    }
}

/// The record's repeated columns, added back to its varying ones ([`OutputColumns::varying`]).
#[derive(Clone)]
pub(crate) struct Repeats {
    schema: Arc<Schema>,
    /// Per record column: its one value when repeated, else `None` (the next varying column).
    repeated: Vec<Option<String>>,
}

impl Repeats {
    /// The record of `varying`'s rows.
    pub(crate) fn fill(
        &self,
        varying: &RecordBatch,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let n = varying.num_rows();
        let mut next = varying.columns().iter();
        let cols = self
            .repeated
            .iter()
            .map(|r| match r {
                Some(s) => Ok(Arc::new(repeated(s, n)) as ArrayRef),
                None => next.next().cloned().ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(
                        "a record batch lacks a varying column".into(),
                    )
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), cols)
    }
}

/// `s` `n` times: its bytes copied once into a buffer of the final size.
fn repeated(s: &str, n: usize) -> StringArray {
    let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(s.len(), n));
    let values = arrow::buffer::Buffer::from_vec(s.repeat(n).into_bytes());
    StringArray::new(offsets, values, None)
}

/// Rows per batch of a run's offline record and per chunk of its online write: string columns
/// (the run id, a model's hash of 64 bytes a row, JSON values) stay far below Arrow's 2 GiB
/// limit per array whatever the run's size.
const WRITE_CHUNK_ROWS: usize = 1 << 20;

/// The directory under `spill/` where runs spill (one run at a time holds the state).
const RUN_SPILL: &str = "run";

/// What one scan read: its row count and its watermark movement.
struct Ingested {
    /// Rows read (the rows themselves travel apart, released once stored).
    count: usize,
    bound: Option<IncrementalBound>,
    before: Option<i64>,
    after: Option<i64>,
    /// Rows that arrived too late to be read (see `ScanRecord::late_rows`).
    late: Option<usize>,
}

/// Stores one scan's ingested `rows` in its class's table: they replace the table's rows from
/// the scan's incremental bound on (every row, for a scan that read everything).
async fn store_scan(
    offline: &OfflineStore,
    scan: &Scan,
    ingested: &Ingested,
    rows: &RecordBatch,
) -> Result<(), EngineError> {
    let replace = ingested.bound.as_ref().map(|b| ReplaceRange {
        column: b.column.clone(),
        from_micros: b.micros,
    });
    offline
        .write(
            &scan.table(),
            vec![rows.clone()],
            replace.as_ref(),
            scan.class.feature_time.as_deref(),
        )
        .await?;
    Ok(())
}

/// The ingest stage's line: rows per scan, late rows, and the times to read and to store them.
fn ingest_detail(
    scans: &[Scan],
    ingested: &[&Ingested],
    read: Duration,
    stored: Duration,
) -> String {
    let detail: Vec<String> = scans
        .iter()
        .zip(ingested)
        .map(|(s, i)| match i.late {
            Some(l) if l > 0 => format!(
                "{} rows from {} ({l} late rows missed)",
                i.count, s.resolver.name
            ),
            _ => format!("{} rows from {}", i.count, s.resolver.name),
        })
        .collect();
    format!(
        "{} (read {:.2}s, stored {:.2}s)",
        detail.join(", "),
        read.as_secs_f64(),
        stored.as_secs_f64()
    )
}

/// How a first run or backfill of `plan` runs, as DataFusion's EXPLAIN shows a physical plan
/// (with `partitions` partitions); `None` for a plan that is computed over a frame of its rows.
pub(crate) fn explain_streamed(plan: &QueryPlan, partitions: usize) -> Option<String> {
    stream::explain(plan, partitions, false)
}

/// How a daily run of `plan` (its root rows after the watermark) runs, as
/// [`explain_streamed`] shows a backfill; `None` for a plan computed over a frame.
pub(crate) fn explain_daily(plan: &QueryPlan, partitions: usize) -> Option<String> {
    stream::explain(plan, partitions, true)
}

/// The outputs a run publishes, with their frame columns: the query's outputs, and a model's
/// score beside its label.
pub(crate) fn published(plan: &QueryPlan) -> Vec<(slate_types::FeatureRef, String)> {
    let mut published: Vec<(slate_types::FeatureRef, String)> = plan
        .outputs
        .iter()
        .map(|o| (o.feature.clone(), o.column.clone()))
        .collect();
    for n in &plan.nodes {
        if let Node::Model {
            resolver,
            label,
            score: Some(s),
            ..
        } = n
            && published.iter().any(|(_, c)| c == label)
            && !published.iter().any(|(_, c)| c == s)
            && let Some(r) = &resolver.score_output
        {
            published.push((r.clone(), s.clone()));
        }
    }
    published
}

/// The online store's key of each row: the primary key as text (null for a null key).
fn key_strings(keys: &ArrayRef) -> Result<StringArray, EngineError> {
    let strings = arrow::compute::cast(keys, &DataType::Utf8)?;
    strings
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| EngineError::Internal("key cast".into()))
}

/// Each value as JSON, typed: numbers, strings, booleans, datetimes as RFC 3339 strings; a
/// null or a float that JSON cannot carry (NaN, infinities) is `null`.
pub(crate) fn json_values(a: &ArrayRef) -> Result<StringArray, EngineError> {
    use arrow::array::{AsArray, StringBuilder};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
    use std::fmt::Write;
    let n = a.len();
    let mut out = StringBuilder::with_capacity(n, n * 8);
    // Writing into the builder cannot fail; `append_value("")` ends the value written.
    let mut put = |v: std::fmt::Arguments| {
        let _ = out.write_fmt(v);
        out.append_value("");
    };
    match a.data_type() {
        DataType::Boolean => {
            for v in a.as_boolean().iter() {
                match v {
                    Some(v) => put(format_args!("{v}")),
                    None => put(format_args!("null")),
                }
            }
        }
        DataType::Int64 => {
            for v in a.as_primitive::<Int64Type>().iter() {
                match v {
                    Some(v) => put(format_args!("{v}")),
                    None => put(format_args!("null")),
                }
            }
        }
        DataType::Float64 => {
            for v in a.as_primitive::<Float64Type>().iter() {
                match v {
                    Some(v) if v.is_finite() => put(format_args!("{v:?}")),
                    _ => put(format_args!("null")),
                }
            }
        }
        DataType::Timestamp(..) => {
            let t = arrow::compute::cast(a, &ts_type())?;
            for v in t.as_primitive::<TimestampMicrosecondType>().iter() {
                match v {
                    Some(v) => put(format_args!(
                        "{}",
                        json_string(&slate_types::format_rfc3339(v))
                    )),
                    None => put(format_args!("null")),
                }
            }
        }
        _ => {
            let s = arrow::compute::cast(a, &DataType::Utf8)?;
            for v in s.as_string::<i32>().iter() {
                match v {
                    Some(v) => put(format_args!("{}", json_string(v))),
                    None => put(format_args!("null")),
                }
            }
        }
    }
    Ok(out.finish())
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
