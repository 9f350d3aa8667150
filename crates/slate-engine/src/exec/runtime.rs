//! How a run's DataFusion operators execute: how many partitions by entity key, how much memory
//! they may hold together (DataFusion's memory pool) and where they spill when refused more.

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The execution settings of one run, and what its operators spilled.
#[derive(Debug)]
pub struct Execution {
    /// Partitions by entity key of the point-in-time operator (at least 1).
    pub partitions: usize,
    /// Bytes every stateful operator of the run reserves from together; `None`: no limit.
    pub memory_limit: Option<usize>,
    /// Where operators spill (created at the first plan that runs).
    pub spill_dir: PathBuf,
    spilled_bytes: AtomicUsize,
    spill_files: AtomicUsize,
}

impl Execution {
    pub fn new(partitions: usize, memory_limit: Option<usize>, spill_dir: PathBuf) -> Self {
        Execution {
            partitions: partitions.max(1),
            memory_limit,
            spill_dir,
            spilled_bytes: AtomicUsize::new(0),
            spill_files: AtomicUsize::new(0),
        }
    }

    /// A session whose memory pool is the run's budget, shared fairly by the operators that
    /// spill, whose spill files go under [`Self::spill_dir`], and whose operators make batches
    /// of `batch_rows` rows (see [`Self::batch_rows`]).
    pub fn session(&self, batch_rows: usize) -> Result<SessionContext, DataFusionError> {
        std::fs::create_dir_all(&self.spill_dir).map_err(|e| {
            DataFusionError::Execution(format!(
                "cannot create the spill directory {}: {e}",
                self.spill_dir.display()
            ))
        })?;
        let mut runtime = RuntimeEnvBuilder::new().with_temp_file_path(&self.spill_dir);
        let mut config = SessionConfig::new()
            .with_target_partitions(self.partitions)
            .with_batch_size(batch_rows);
        if let Some(limit) = self.memory_limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
            // Each partition's sort keeps this much aside to merge what it spilled: a share of
            // the budget, so that a small budget still leaves room for the rows themselves.
            // A quarter of it bounds the rows a sort concatenates to sort in place (which
            // needs as much again while it sorts).
            let merge = (limit / (8 * self.partitions)).clamp(64 << 10, 10 << 20);
            config = config
                .with_sort_spill_reservation_bytes(merge)
                .with_sort_in_place_threshold_bytes((merge / 4).min(1 << 20));
        }
        Ok(SessionContext::new_with_config_rt(
            config,
            runtime.build_arc()?,
        ))
    }

    /// Rows per batch fed to the operators, for rows of about `row_bytes` bytes: 65,536, or
    /// fewer under a small memory limit, so that each partition's sorts hold many batches
    /// within their share (a 256th of the budget per partition a batch at most) and can spill
    /// some of them, and a merge of many spilled runs (a batch of each in memory) stays small.
    pub fn batch_rows(&self, row_bytes: usize) -> usize {
        match self.memory_limit {
            None => 1 << 16,
            Some(limit) => {
                (limit / (256 * self.partitions * row_bytes.max(1))).clamp(1 << 7, 1 << 16)
            }
        }
    }

    /// Adds what the operators of an executed `plan` spilled to the run's totals.
    pub fn record_spills(&self, plan: &Arc<dyn ExecutionPlan>) {
        if let Some(m) = plan.metrics() {
            self.spilled_bytes
                .fetch_add(m.spilled_bytes().unwrap_or(0), Ordering::Relaxed);
            self.spill_files
                .fetch_add(m.spill_count().unwrap_or(0), Ordering::Relaxed);
        }
        for child in plan.children() {
            self.record_spills(child);
        }
    }

    /// What the operators spilled, as a run reports it (`spilled 3.2 MiB in 4 files`); `None`
    /// when nothing was.
    pub fn spilled_text(&self) -> Option<String> {
        match self.spills() {
            (0, _) => None,
            (bytes, files) => Some(format!(
                "spilled {:.1} MiB in {files} file{}",
                bytes as f64 / (1 << 20) as f64,
                if files == 1 { "" } else { "s" }
            )),
        }
    }

    /// Bytes and files spilled so far.
    pub fn spills(&self) -> (usize, usize) {
        (
            self.spilled_bytes.load(Ordering::Relaxed),
            self.spill_files.load(Ordering::Relaxed),
        )
    }
}

/// The default memory budget of a run: half of the memory this process may use (the machine's,
/// or its cgroup's limit when lower); `None` where neither can be read.
pub fn default_memory_limit() -> Option<usize> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    let total = match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };
    total.map(|t| t / 2)
}
