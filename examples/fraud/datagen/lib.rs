//! Deterministic synthetic data for the fraud example: users, merchants and card transactions
//! with realistic fraud patterns (bursts on compromised accounts at new merchants, large
//! one-off purchases), written as the warehouse tables `ML.TRANSACTIONS` and `ML.USERS`.
//!
//! Each user's history comes from its own random stream, generated in time order, so the first
//! `n` days are identical whatever the horizon: day 60 can be appended to a 60-day table.

use arrow_array::{
    BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

/// 2026-09-01T00:00:00Z, the first day of generated data.
pub const START_MICROS: i64 = 1_788_220_800_000_000;
const DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub users: usize,
    pub merchants: usize,
    pub seed: u64,
    /// Multiplies every user's mean number of transactions a day (1.0: about 0.9 a day); must
    /// be positive and finite (`fraud-data --activity` refuses anything else).
    pub activity: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            users: 2_000,
            merchants: 500,
            seed: 42,
            activity: 1.0,
        }
    }
}

const CATEGORIES: &[(&str, f64, f64)] = &[
    // name, log-mean amount, weight
    ("grocery", 3.6, 0.30),
    ("restaurants", 3.3, 0.22),
    ("gas", 3.7, 0.14),
    ("travel", 5.4, 0.06),
    ("electronics", 5.0, 0.08),
    ("online", 4.0, 0.17),
    ("pending", 3.8, 0.03),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    pub id: i64,
    pub user_id: i64,
    pub merchant_id: i64,
    pub amount: f64,
    pub ts: i64,
    pub category: &'static str,
    pub is_fraud: bool,
}

fn pick_category(rng: &mut StdRng) -> usize {
    let mut x: f64 = rng.random();
    for (i, c) in CATEGORIES.iter().enumerate() {
        if x < c.2 {
            return i;
        }
        x -= c.2;
    }
    0
}

fn lognormal(rng: &mut StdRng, mu: f64, sigma: f64) -> f64 {
    // Box-Muller: two uniforms to one standard normal.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mu + sigma * z).exp()
}

fn exp_gap(rng: &mut StdRng, mean_micros: f64) -> i64 {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    (-u.ln() * mean_micros) as i64
}

/// Every transaction in `[START, START + days)`, sorted by (ts, user), ids in that order.
pub fn transactions(cfg: &Config, days: i64) -> Vec<Txn> {
    let end = START_MICROS + days * DAY;
    let mut all = Vec::new();
    for user in 0..cfg.users {
        let mut rng =
            StdRng::seed_from_u64(cfg.seed ^ (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let per_day = lognormal(&mut rng, -0.45, 0.8).min(12.0) * cfg.activity;
        let favourites: Vec<i64> = (0..rng.random_range(3..9))
            .map(|_| rng.random_range(0..cfg.merchants as i64))
            .collect();
        // Users join over the first weeks, so early windows are short and some users are new.
        let mut t = START_MICROS + rng.random_range(0..20 * DAY);
        while t < end {
            t += exp_gap(&mut rng, DAY as f64 / per_day);
            // Whole seconds, so that equal timestamps occur.
            t -= t.rem_euclid(1_000_000);
            if t >= end {
                break;
            }
            if rng.random::<f64>() < 0.004 {
                // A compromised card: a burst of purchases at unfamiliar merchants.
                let burst = rng.random_range(3..9);
                let mut bt = t;
                for _ in 0..burst {
                    let c = if rng.random::<f64>() < 0.6 { 4 } else { 5 };
                    let amount = lognormal(&mut rng, CATEGORIES[c].1 + 0.6, 0.7);
                    bt += rng.random_range(30..1_800) * 1_000_000;
                    if bt >= end {
                        break;
                    }
                    let merchant = rng.random_range(0..cfg.merchants as i64);
                    all.push(Txn {
                        id: 0,
                        user_id: user as i64,
                        merchant_id: merchant,
                        amount,
                        ts: bt,
                        category: CATEGORIES[c].0,
                        is_fraud: true,
                    });
                }
                t = bt;
                continue;
            }
            let c = pick_category(&mut rng);
            let familiar = rng.random::<f64>() < 0.8;
            let merchant = if familiar {
                favourites[rng.random_range(0..favourites.len())]
            } else {
                rng.random_range(0..cfg.merchants as i64)
            };
            let amount = lognormal(&mut rng, CATEGORIES[c].1, 0.6);
            // Rare large one-off purchases are sometimes fraud too.
            let is_fraud = amount > 900.0 && !familiar && rng.random::<f64>() < 0.35;
            all.push(Txn {
                id: 0,
                user_id: user as i64,
                merchant_id: merchant,
                amount,
                ts: t,
                category: CATEGORIES[c].0,
                is_fraud,
            });
        }
    }
    all.sort_by_key(|t| (t.ts, t.user_id));
    for (i, t) in all.iter_mut().enumerate() {
        t.id = i as i64 + 1;
        t.amount = (t.amount * 100.0).round() / 100.0;
    }
    all
}

pub fn transactions_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("transaction_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("category", DataType::Utf8, false),
        Field::new("is_fraud", DataType::Boolean, false),
    ]))
}

pub fn to_batch(rows: &[Txn]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    RecordBatch::try_new(
        transactions_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| t.id))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|t| t.user_id))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| t.merchant_id),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|t| t.amount),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|t| t.ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| t.category),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|t| Some(t.is_fraud)),
            )),
        ],
    )
}

pub fn users_batch(cfg: &Config) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..cfg.users as i64)),
            Arc::new(StringArray::from_iter_values(
                (0..cfg.users).map(|u| format!("user-{u:05}")),
            )),
        ],
    )
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("parquet.tmp");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&tmp)?, batch.schema(), None)?;
    w.write(batch)?;
    w.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes days `[from_day, to_day)` as `ML.TRANSACTIONS/part-DDDD.parquet` under `dir`, plus
/// `ML.USERS.parquet`. Returns the number of transactions written.
pub fn write_warehouse(
    dir: &Path,
    cfg: &Config,
    from_day: i64,
    to_day: i64,
) -> anyhow::Result<usize> {
    let rows: Vec<Txn> = transactions(cfg, to_day)
        .into_iter()
        .filter(|t| t.ts >= START_MICROS + from_day * DAY)
        .collect();
    write_parquet(
        &dir.join(format!("ML.TRANSACTIONS/part-{from_day:04}.parquet")),
        &to_batch(&rows)?,
    )?;
    write_parquet(&dir.join("ML.USERS.parquet"), &users_batch(cfg)?)?;
    Ok(rows.len())
}
