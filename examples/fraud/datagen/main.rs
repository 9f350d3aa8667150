//! `fraud-data`: writes the fraud example's warehouse tables.

use clap::Parser;
use fraud_example::{Config, write_warehouse};
use std::path::PathBuf;

/// Generate the fraud example's warehouse (deterministic for a given seed).
#[derive(Parser, Debug)]
struct Args {
    /// Directory to write `ML.TRANSACTIONS/` and `ML.USERS.parquet` into.
    #[arg(long, default_value = "examples/fraud/data/warehouse")]
    out: PathBuf,
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    #[arg(long, default_value_t = 500)]
    merchants: usize,
    /// First day to write (0 = 2026-09-01); later days append a new part file.
    #[arg(long, default_value_t = 0)]
    from_day: i64,
    /// Day after the last one written.
    #[arg(long, default_value_t = 60)]
    to_day: i64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Multiplies each user's mean number of transactions a day (about 0.9 at 1.0).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    activity: f64,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = Config {
        users: a.users,
        merchants: a.merchants,
        seed: a.seed,
        activity: a.activity,
    };
    let n = write_warehouse(&a.out, &cfg, a.from_day, a.to_day)?;
    println!(
        "wrote {n} transactions for {} users (days {}..{}) to {}",
        a.users,
        a.from_day,
        a.to_day,
        a.out.display()
    );
    Ok(())
}
