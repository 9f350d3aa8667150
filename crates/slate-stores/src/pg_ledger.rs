//! The run ledger and the run lock in PostgreSQL, so that several services (and the CLI) of one
//! environment share one state: the watermarks, the committed and failed runs, and which of them
//! is running.
//!
//! Rows are filed under a namespace (by default `<project>/<environment>`), so that several
//! projects and environments share a database:
//!
//! - `slate_watermarks (namespace, query, resolver, micros)`
//! - `slate_runs (namespace, run_id, query, tick_micros, started_micros, record)`: committed runs
//! - `slate_failed_runs (namespace, run_id, started_micros, query, tick_micros, record)`
//!
//! `record` is the run's JSON record (`jsonb`). The tables are created when missing.
//!
//! The [`Ledger`] API is synchronous and may be called from async code, so the connection lives
//! on a thread of its own with a single-threaded runtime; calls are sent to it and wait for the
//! answer. A call whose connection failed is tried again on a new connection, up to `attempts`.
//!
//! The run lock ([`PgRunLock`]) is a session-level advisory lock on a connection of its own,
//! held for as long as the lock value lives: PostgreSQL releases it when that connection ends,
//! so a process that dies never leaves the lock behind.

use crate::StoreError;
use crate::ledger::{Ledger, RunRecord, Watermark, sort_runs};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

/// A statement parameter.
type P<'a> = &'a (dyn ToSql + Sync);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS slate_watermarks (
    namespace text NOT NULL,
    query text NOT NULL,
    resolver text NOT NULL,
    micros bigint NOT NULL,
    PRIMARY KEY (namespace, query, resolver)
);
CREATE TABLE IF NOT EXISTS slate_runs (
    namespace text NOT NULL,
    run_id text NOT NULL,
    query text NOT NULL,
    tick_micros bigint NOT NULL,
    started_micros bigint NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (namespace, run_id)
);
CREATE TABLE IF NOT EXISTS slate_failed_runs (
    namespace text NOT NULL,
    run_id text NOT NULL,
    started_micros bigint NOT NULL,
    query text NOT NULL,
    tick_micros bigint NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (namespace, run_id, started_micros)
);
";

/// The advisory lock key under which the tables are created (concurrent `CREATE TABLE IF NOT
/// EXISTS` of one table can otherwise fail in all but one session).
const SCHEMA_LOCK: i64 = 0x5_1a7e_5c4e;

/// One call of the ledger API, executed on the connection's thread.
enum Op {
    Watermark {
        query: String,
        resolver: String,
    },
    Watermarks,
    SetWatermark {
        query: String,
        resolver: String,
        micros: Option<i64>,
    },
    Commit {
        record: RunRecord,
        json: String,
        marks: Vec<(String, i64)>,
    },
    Failure {
        record: RunRecord,
        json: String,
    },
    Runs {
        with_failures: bool,
    },
    LastTick {
        query: String,
    },
    IsCommitted {
        run_id: String,
    },
}

enum Answer {
    None,
    Micros(Option<i64>),
    Watermarks(Vec<Watermark>),
    Records(Vec<String>),
    Flag(bool),
}

type Job = (Op, mpsc::SyncSender<Result<Answer, StoreError>>);

pub struct PgLedger {
    target: String,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("target", &self.target)
            .finish()
    }
}

/// The text of a tokio-postgres error with its cause (its own text is often only "db error").
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether the connection failed (another connection may succeed), rather than the statement.
fn connection_failed(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => {
            e.is_closed()
                || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().starts_with("timeout")
        }
        Some(db) => db.code().code().starts_with("08") || db.code().code().starts_with("57P"),
    }
}

struct Worker {
    config: Config,
    namespace: String,
    client: Option<Client>,
}

impl Worker {
    async fn client(&mut self) -> Result<&mut Client, tokio_postgres::Error> {
        let client = match self.client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => {
                let (mut client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await?;
                tx.batch_execute(SCHEMA).await?;
                tx.commit().await?;
                client
            }
        };
        Ok(self.client.insert(client))
    }

    async fn exec(&mut self, op: &Op) -> Result<Answer, tokio_postgres::Error> {
        let ns = self.namespace.clone();
        let ns = &ns;
        let client = self.client().await?;
        Ok(match op {
            Op::Watermark { query, resolver } => Answer::Micros(
                client
                    .query_opt(
                        "SELECT micros FROM slate_watermarks WHERE namespace = $1 AND query = $2 AND resolver = $3",
                        &[ns, query, resolver],
                    )
                    .await?
                    .map(|r| r.get(0)),
            ),
            Op::Watermarks => Answer::Watermarks(
                client
                    .query(
                        "SELECT query, resolver, micros FROM slate_watermarks WHERE namespace = $1 ORDER BY query, resolver",
                        &[ns],
                    )
                    .await?
                    .iter()
                    .map(|r| Watermark {
                        query: r.get(0),
                        resolver: r.get(1),
                        micros: r.get(2),
                    })
                    .collect(),
            ),
            Op::SetWatermark {
                query,
                resolver,
                micros,
            } => {
                if let Some(m) = micros {
                    client
                        .execute(
                            "INSERT INTO slate_watermarks VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, query, resolver) DO UPDATE SET micros = EXCLUDED.micros",
                            &[ns as P, query, resolver, m],
                        )
                        .await?;
                } else {
                    client
                        .execute(
                            "DELETE FROM slate_watermarks WHERE namespace = $1 AND query = $2 AND resolver = $3",
                            &[ns, query, resolver],
                        )
                        .await?;
                }
                Answer::None
            }
            Op::Commit {
                record,
                json,
                marks,
            } => {
                let tx = client.transaction().await?;
                for (resolver, m) in marks {
                    tx.execute(
                        "INSERT INTO slate_watermarks VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, query, resolver) DO UPDATE SET micros = EXCLUDED.micros",
                        &[ns as P, &record.query, resolver, m],
                    )
                    .await?;
                }
                tx.execute(
                    "INSERT INTO slate_runs VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) ON CONFLICT (namespace, run_id) DO UPDATE SET query = EXCLUDED.query, tick_micros = EXCLUDED.tick_micros, started_micros = EXCLUDED.started_micros, record = EXCLUDED.record",
                    &[
                        ns as P,
                        &record.run_id,
                        &record.query,
                        &record.tick_micros,
                        &record.started_micros,
                        json,
                    ],
                )
                .await?;
                tx.commit().await?;
                Answer::None
            }
            Op::Failure { record, json } => {
                client
                    .execute(
                        "INSERT INTO slate_failed_runs VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) ON CONFLICT (namespace, run_id, started_micros) DO UPDATE SET record = EXCLUDED.record",
                        &[
                            ns as P,
                            &record.run_id,
                            &record.started_micros,
                            &record.query,
                            &record.tick_micros,
                            json,
                        ],
                    )
                    .await?;
                Answer::None
            }
            Op::Runs { with_failures } => {
                let sql = if *with_failures {
                    "SELECT record::text FROM slate_runs WHERE namespace = $1 UNION ALL SELECT record::text FROM slate_failed_runs WHERE namespace = $1"
                } else {
                    "SELECT record::text FROM slate_runs WHERE namespace = $1"
                };
                Answer::Records(
                    client
                        .query(sql, &[ns])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect(),
                )
            }
            Op::LastTick { query } => Answer::Micros(
                client
                    .query_one(
                        "SELECT max(tick_micros) FROM slate_runs WHERE namespace = $1 AND query = $2",
                        &[ns, query],
                    )
                    .await?
                    .get(0),
            ),
            Op::IsCommitted { run_id } => Answer::Flag(
                client
                    .query_opt(
                        "SELECT 1 FROM slate_runs WHERE namespace = $1 AND run_id = $2",
                        &[ns, run_id],
                    )
                    .await?
                    .is_some(),
            ),
        })
    }
}

impl PgLedger {
    /// Connects to the database `config` names (`target` names it in messages, without the
    /// password) and creates the tables when missing. Fails when the server cannot be reached.
    pub fn open(
        config: Config,
        target: String,
        namespace: String,
        attempts: u32,
    ) -> Result<Self, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                what: "metadata store thread",
                reason: e.to_string(),
            })?;
        let thread_target = target.clone();
        std::thread::Builder::new()
            .name("slate-ledger".into())
            .spawn(move || {
                let mut worker = Worker {
                    config,
                    namespace,
                    client: None,
                };
                // Ends when the ledger is dropped (its sender with it).
                while let Ok((op, reply)) = rx.recv() {
                    let answer = runtime.block_on(async {
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            match worker.exec(&op).await {
                                Ok(a) => return Ok(a),
                                Err(e) if connection_failed(&e) && tries < attempts.max(1) => {
                                    worker.client = None;
                                    tokio::time::sleep(Duration::from_millis(200 << tries.min(5)))
                                        .await;
                                }
                                Err(e) => {
                                    if connection_failed(&e) {
                                        worker.client = None;
                                    }
                                    return Err(StoreError::Postgres {
                                        what: "run ledger",
                                        target: thread_target.clone(),
                                        reason: pg_reason(&e),
                                    });
                                }
                            }
                        }
                    });
                    let _ = reply.send(answer);
                }
            })
            .map_err(|e| StoreError::Io {
                what: "metadata store thread",
                reason: e.to_string(),
            })?;
        let ledger = PgLedger {
            target,
            jobs: Mutex::new(jobs),
        };
        // Connects now: an unreachable server fails the open, not a later call.
        ledger.call(Op::Watermark {
            query: String::new(),
            resolver: String::new(),
        })?;
        Ok(ledger)
    }

    fn call(&self, op: Op) -> Result<Answer, StoreError> {
        let gone = || StoreError::Postgres {
            what: "run ledger",
            target: self.target.clone(),
            reason: "the metadata store's connection thread ended".into(),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .send((op, tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    fn records(&self, with_failures: bool) -> Result<Vec<RunRecord>, StoreError> {
        let Answer::Records(texts) = self.call(Op::Runs { with_failures })? else {
            return Err(self.unexpected());
        };
        let mut out = texts
            .iter()
            .map(|t| {
                serde_json::from_str(t).map_err(|e| StoreError::Io {
                    what: "ledger decode",
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<RunRecord>, _>>()?;
        sort_runs(&mut out);
        Ok(out)
    }

    fn unexpected(&self) -> StoreError {
        StoreError::Postgres {
            what: "run ledger",
            target: self.target.clone(),
            reason: "an answer of the wrong kind".into(),
        }
    }
}

fn encode(record: &RunRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Io {
        what: "ledger encode",
        reason: e.to_string(),
    })
}

impl Ledger for PgLedger {
    fn watermark(&self, query: &str, resolver: &str) -> Result<Option<i64>, StoreError> {
        match self.call(Op::Watermark {
            query: query.into(),
            resolver: resolver.into(),
        })? {
            Answer::Micros(m) => Ok(m),
            _ => Err(self.unexpected()),
        }
    }

    fn watermarks(&self) -> Result<Vec<Watermark>, StoreError> {
        match self.call(Op::Watermarks)? {
            Answer::Watermarks(w) => Ok(w),
            _ => Err(self.unexpected()),
        }
    }

    fn set_watermark(
        &self,
        query: &str,
        resolver: &str,
        micros: Option<i64>,
    ) -> Result<(), StoreError> {
        self.call(Op::SetWatermark {
            query: query.into(),
            resolver: resolver.into(),
            micros,
        })
        .map(drop)
    }

    fn commit_run(
        &self,
        record: &RunRecord,
        watermarks: &[(String, i64)],
    ) -> Result<(), StoreError> {
        self.call(Op::Commit {
            json: encode(record)?,
            record: record.clone(),
            marks: watermarks.to_vec(),
        })
        .map(drop)
    }

    fn record_failure(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.call(Op::Failure {
            json: encode(record)?,
            record: record.clone(),
        })
        .map(drop)
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.records(true)
    }

    fn committed_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.records(false)
    }

    fn last_tick(&self, query: &str) -> Result<Option<i64>, StoreError> {
        match self.call(Op::LastTick {
            query: query.into(),
        })? {
            Answer::Micros(m) => Ok(m),
            _ => Err(self.unexpected()),
        }
    }

    fn is_committed(&self, run_id: &str) -> Result<bool, StoreError> {
        match self.call(Op::IsCommitted {
            run_id: run_id.into(),
        })? {
            Answer::Flag(f) => Ok(f),
            _ => Err(self.unexpected()),
        }
    }
}

/// The run lock of a namespace, held while this value lives (on a connection of its own).
pub struct PgRunLock {
    _client: Client,
}

impl std::fmt::Debug for PgRunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRunLock")
    }
}

impl PgRunLock {
    /// Takes the run lock of `namespace` when it is free (`None`: another session holds it).
    /// Runs on the caller's runtime, which drives the lock's connection until it is dropped.
    pub async fn try_acquire(
        config: &Config,
        target: &str,
        namespace: &str,
    ) -> Result<Option<PgRunLock>, StoreError> {
        Self::acquire(config, target, namespace, None).await
    }

    /// Takes the run lock of `namespace`: at once, or (`wait` given) asking again at that
    /// interval, on one connection, until it is free. `None`: held elsewhere and not waited for.
    pub async fn acquire(
        config: &Config,
        target: &str,
        namespace: &str,
        wait: Option<Duration>,
    ) -> Result<Option<PgRunLock>, StoreError> {
        let fail = |e: tokio_postgres::Error| StoreError::Postgres {
            what: "run lock",
            target: target.into(),
            reason: pg_reason(&e),
        };
        // The connection idles for the whole run: TCP keepalives keep it known to firewalls and
        // let the server see a vanished holder within minutes.
        let mut config = config.clone();
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let (client, connection) = config.connect(NoTls).await.map_err(fail)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let key = format!("slate run lock {namespace}");
        loop {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&key],
                )
                .await
                .map_err(fail)?
                .get(0);
            match (got, wait) {
                (true, _) => return Ok(Some(PgRunLock { _client: client })),
                (false, None) => return Ok(None),
                (false, Some(interval)) => tokio::time::sleep(interval).await,
            }
        }
    }
}
