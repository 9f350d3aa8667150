//! Writes the retail example's warehouse: `cargo run -p retail-example --bin retail-data`.

use clap::Parser;
use retail_example::{Config, generate, write_warehouse};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Write the retail example's warehouse tables as Parquet")]
struct Args {
    /// Where to write the tables.
    #[arg(long, default_value = "examples/retail/data/warehouse")]
    out: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    #[arg(long, default_value_t = 400)]
    customers: usize,
    #[arg(long, default_value_t = 11)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = Config {
        seed: a.seed,
        customers: a.customers,
        orders: a.orders,
        ..Config::default()
    };
    let n = write_warehouse(&a.out, &generate(&cfg), None)?;
    println!("wrote {n} orders to {}", a.out.display());
    Ok(())
}
