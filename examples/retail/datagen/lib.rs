//! Seeded synthetic retail data: customers, store versions and orders, with the shapes that
//! break naive feature code: heavy-tailed customers, orders at equal timestamps, nulls in every
//! aggregated field, orders of customers the customer table does not know, stores whose first
//! version comes after some of their orders.

pub mod functions;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

/// 2026-01-01T00:00:00Z.
pub const START_MICROS: i64 = 1_767_225_600_000_000;
pub const DAY: i64 = 86_400_000_000;
pub const CHANNELS: [&str; 4] = ["web", "app", "store", "phone"];

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub customers: usize,
    pub stores: usize,
    pub orders: usize,
    pub days: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 11,
            customers: 400,
            stores: 12,
            orders: 20_000,
            days: 45,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: String,
    pub customer_id: String,
    pub store_id: String,
    pub amount: Option<f64>,
    pub quantity: Option<i64>,
    pub channel: Option<String>,
    pub is_gift: Option<bool>,
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    pub segment: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreVersion {
    pub id: String,
    pub region: String,
    pub tier: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Warehouse {
    pub customers: Vec<Customer>,
    pub stores: Vec<StoreVersion>,
    pub orders: Vec<Order>,
}

pub fn generate(cfg: &Config) -> Warehouse {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let customers = (0..cfg.customers)
        .map(|i| Customer {
            id: format!("c-{i:05}"),
            segment: ["new", "regular", "vip"][rng.random_range(0..3)].to_string(),
        })
        .collect();
    let regions = ["north", "south", "east", "west"];
    let mut stores = Vec::new();
    for s in 0..cfg.stores {
        let versions = rng.random_range(1..4);
        // Most stores exist before the first order; some appear a few days in.
        let mut t = START_MICROS - DAY + rng.random_range(0..4 * DAY);
        for _ in 0..versions {
            stores.push(StoreVersion {
                id: format!("s-{s:03}"),
                region: regions[rng.random_range(0..regions.len())].to_string(),
                tier: rng.random_range(1..4),
                updated_at: t,
            });
            t += rng.random_range(DAY..cfg.days.max(2) * DAY / 2);
        }
    }
    let mut orders = Vec::with_capacity(cfg.orders);
    for n in 0..cfg.orders {
        // Heavy-tailed: a few customers place most orders; ids past the table are unknown.
        let c = (rng.random::<f64>().powi(3) * (cfg.customers + 5) as f64) as usize;
        // Minutes, so that equal timestamps are common for busy customers.
        let minute = rng.random_range(0..cfg.days * 24 * 60);
        let cents: i64 = rng.random_range(100..50_000);
        orders.push(Order {
            id: format!("o-{n:07}"),
            customer_id: format!("c-{c:05}"),
            store_id: format!("s-{:03}", rng.random_range(0..cfg.stores + 1)),
            amount: (rng.random::<f64>() > 0.03).then(|| cents as f64 / 100.0),
            quantity: (rng.random::<f64>() > 0.05).then(|| rng.random_range(1..12)),
            channel: (rng.random::<f64>() > 0.08)
                .then(|| CHANNELS[rng.random_range(0..CHANNELS.len())].to_string()),
            is_gift: (rng.random::<f64>() > 0.1).then(|| rng.random::<f64>() < 0.2),
            ts: START_MICROS + minute * 60_000_000,
        });
    }
    Warehouse {
        customers,
        stores,
        orders,
    }
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

pub fn orders_batch(orders: &[Order]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("store_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("is_gift", DataType::Boolean, true),
        ts_field("ts"),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(orders.iter().map(|o| &o.id))),
        Arc::new(StringArray::from_iter_values(
            orders.iter().map(|o| &o.customer_id),
        )),
        Arc::new(StringArray::from_iter_values(
            orders.iter().map(|o| &o.store_id),
        )),
        Arc::new(Float64Array::from_iter(orders.iter().map(|o| o.amount))),
        Arc::new(Int64Array::from_iter(orders.iter().map(|o| o.quantity))),
        Arc::new(StringArray::from_iter(
            orders.iter().map(|o| o.channel.as_deref()),
        )),
        Arc::new(BooleanArray::from_iter(orders.iter().map(|o| o.is_gift))),
        ts(orders.iter().map(|o| o.ts).collect()),
    ];
    RecordBatch::try_new(Arc::new(schema), cols)
}

pub fn customers_batch(customers: &[Customer]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(
                customers.iter().map(|c| &c.id),
            )),
            Arc::new(StringArray::from_iter_values(
                customers.iter().map(|c| &c.segment),
            )),
        ],
    )
}

pub fn stores_batch(stores: &[StoreVersion]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = Schema::new(vec![
        Field::new("store_id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("tier", DataType::Int64, false),
        ts_field("updated_at"),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(stores.iter().map(|s| &s.id))),
            Arc::new(StringArray::from_iter_values(
                stores.iter().map(|s| &s.region),
            )),
            Arc::new(Int64Array::from_iter_values(stores.iter().map(|s| s.tier))),
            ts(stores.iter().map(|s| s.updated_at).collect()),
        ],
    )
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), None)?;
    w.write(batch)?;
    w.close()?;
    Ok(())
}

/// Writes the warehouse's three tables to `dir`, with the orders whose time is before
/// `orders_before` (all of them when `None`).
pub fn write_warehouse(
    dir: &Path,
    w: &Warehouse,
    orders_before: Option<i64>,
) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let orders: Vec<Order> = w
        .orders
        .iter()
        .filter(|o| orders_before.is_none_or(|t| o.ts < t))
        .cloned()
        .collect();
    write_parquet(&dir.join("SALES.ORDERS.parquet"), &orders_batch(&orders)?)?;
    write_parquet(
        &dir.join("SALES.CUSTOMERS.parquet"),
        &customers_batch(&w.customers)?,
    )?;
    write_parquet(&dir.join("SALES.STORES.parquet"), &stores_batch(&w.stores)?)?;
    Ok(orders.len())
}
