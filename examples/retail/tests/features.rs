//! The retail project end to end: string keys, features without a model, point-in-time has-one
//! lookups and every aggregation, each value against a brute-force reference written here from
//! the generated rows (exact float sums through fixed point, no code shared with the engine).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use retail_example::{Config, DAY, Order, START_MICROS, Warehouse, generate, write_warehouse};
use slate_engine::{Engine, EngineConfig, RunSummary, SilentProgress, plan_query};
use slate_types::FixedClock;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

const HOUR: i64 = 3_600_000_000;

fn project() -> slate_project::Project {
    slate_project::load_project(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("valid project")
}

fn engine(data: &Path, state: &Path, now: i64) -> Engine {
    Engine::new(EngineConfig {
        project: project(),
        env: "default".into(),
        data_dir: Some(data.into()),
        state_dir: Some(state.into()),
        clock: Arc::new(FixedClock(now)),
    })
    .expect("engine")
}

async fn run(data: &Path, state: &Path, now: i64, query: &str) -> RunSummary {
    let plan = plan_query(&project(), query).expect("plan");
    engine(data, state, now)
        .run(&plan, &SilentProgress)
        .await
        .expect("run")
}

async fn read(state: &Path, table: &str) -> RecordBatch {
    let batches = engine(state, state, 0)
        .offline()
        .read_all(table)
        .await
        .expect("read");
    arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat")
}

fn column(b: &RecordBatch, name: &str, ty: &DataType) -> ArrayRef {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    arrow::compute::cast(c, ty).expect("cast")
}

fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = column(b, name, &DataType::Utf8);
    c.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn ints(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    assert_eq!(
        b.column_by_name(name).map(|c| c.data_type().clone()),
        Some(DataType::Int64),
        "{name} is stored as an int"
    );
    column(b, name, &DataType::Int64)
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}

fn floats(b: &RecordBatch, name: &str) -> Vec<Option<u64>> {
    assert_eq!(
        b.column_by_name(name).map(|c| c.data_type().clone()),
        Some(DataType::Float64),
        "{name} is stored as a float"
    );
    column(b, name, &DataType::Float64)
        .as_primitive::<Float64Type>()
        .iter()
        .map(|v| v.map(f64::to_bits))
        .collect()
}

fn bools(b: &RecordBatch, name: &str) -> Vec<Option<bool>> {
    column(b, name, &DataType::Boolean)
        .as_boolean()
        .iter()
        .collect()
}

fn times(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let ty = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert!(
        matches!(
            b.column_by_name(name).map(|c| c.data_type().clone()),
            Some(DataType::Timestamp(..))
        ),
        "{name} is stored as a datetime"
    );
    column(b, name, &ty)
        .as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect()
}

/// The exact sum of the values, correctly rounded: each amount is a whole multiple of 2^-60
/// (they are at least 1.0), so the sum is exact in i128 and rounds once on conversion.
fn exact_sum(values: &[f64]) -> f64 {
    let scale = (60f64).exp2();
    let total: i128 = values
        .iter()
        .map(|v| {
            let scaled = v * scale;
            assert_eq!(scaled.fract(), 0.0, "{v} is a multiple of 2^-60");
            scaled as i128
        })
        .sum();
    total as f64 / scale
}

/// Every feature of the retail project for one customer as of `now`, computed the slow way.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    spend: [Option<u64>; 3],
    avg_basket_30d: Option<u64>,
    largest_30d: Option<u64>,
    fewest_items_7d: Option<i64>,
    items_7d: Option<i64>,
    items_all: Option<i64>,
    last_channel_30d: Option<String>,
    first_order_at: Option<i64>,
    last_gift_7d: Option<bool>,
    channels_30d: i64,
    stores_30d: i64,
    orders_1h: i64,
    orders_1d: i64,
    since_last: Option<u64>,
}

fn expected(history: &[&Order], now: i64) -> Expected {
    let before: Vec<&Order> = history.iter().copied().filter(|o| o.ts < now).collect();
    let within =
        |w: i64| -> Vec<&Order> { before.iter().copied().filter(|o| o.ts >= now - w).collect() };
    let amounts = |rows: &[&Order]| -> Vec<f64> { rows.iter().filter_map(|o| o.amount).collect() };
    let sum = |rows: &[&Order]| {
        let a = amounts(rows);
        (!a.is_empty()).then(|| exact_sum(&a).to_bits())
    };
    let items = |rows: &[&Order]| {
        let q: Vec<i64> = rows.iter().filter_map(|o| o.quantity).collect();
        (!q.is_empty()).then(|| q.iter().sum())
    };
    let (d1, d7, d30) = (within(DAY), within(7 * DAY), within(30 * DAY));
    let a30 = amounts(&d30);
    Expected {
        spend: [sum(&d1), sum(&d7), sum(&d30)],
        avg_basket_30d: (!a30.is_empty()).then(|| (exact_sum(&a30) / a30.len() as f64).to_bits()),
        largest_30d: a30.iter().copied().reduce(f64::max).map(f64::to_bits),
        fewest_items_7d: d7.iter().filter_map(|o| o.quantity).min(),
        items_7d: items(&d7),
        items_all: items(&before),
        last_channel_30d: d30
            .iter()
            .filter_map(|o| o.channel.clone().map(|c| (o.ts, c)))
            .max()
            .map(|p| p.1),
        first_order_at: before.iter().map(|o| o.ts).min(),
        last_gift_7d: d7
            .iter()
            .filter_map(|o| o.is_gift.map(|g| (o.ts, g)))
            .max()
            .map(|p| p.1),
        channels_30d: d30
            .iter()
            .filter_map(|o| o.channel.as_deref())
            .collect::<BTreeSet<_>>()
            .len() as i64,
        stores_30d: d30
            .iter()
            .map(|o| o.store_id.as_str())
            .collect::<BTreeSet<_>>()
            .len() as i64,
        orders_1h: within(HOUR).len() as i64,
        orders_1d: d1.len() as i64,
        since_last: before
            .iter()
            .map(|o| o.ts)
            .max()
            .map(|t| ((now - t) as f64 / 1e6).to_bits()),
    }
}

/// The same features as stored in each row of a table, under `prefix` (`customer__` for a
/// feature reached through the order's customer); `full` for the order query's set.
fn stored(b: &RecordBatch, prefix: &str, full: bool) -> Vec<Expected> {
    let c = |name: &str| format!("{prefix}{name}");
    let f = |name: &str| floats(b, &c(name));
    let n = |name: &str| ints(b, &c(name));
    let count = |name: &str| -> Vec<i64> {
        n(name)
            .into_iter()
            .map(|v| v.expect("counts are never null"))
            .collect()
    };
    let rows = b.num_rows();
    let none_f = vec![None; rows];
    let none_i = vec![None; rows];
    let (spend_1d, spend_7d, spend_30d) = if full {
        (f("spend__1d"), f("spend__7d"), f("spend__30d"))
    } else {
        (none_f.clone(), none_f.clone(), f("spend__30d"))
    };
    let avg = if full {
        f("avg_basket__30d")
    } else {
        none_f.clone()
    };
    let largest = if full {
        f("largest_order__30d")
    } else {
        none_f.clone()
    };
    let fewest = if full {
        n("fewest_items__7d")
    } else {
        none_i.clone()
    };
    let items_7d = if full { n("items__7d") } else { none_i.clone() };
    let items_all = n("items__all");
    let last_channel = strs(b, &c("last_channel__30d"));
    let first = times(b, &c("first_order_at"));
    let gift = if full {
        bools(b, &c("last_gift__7d"))
    } else {
        vec![None; rows]
    };
    let zeros = vec![0; rows];
    let channels = if full {
        count("channels__30d")
    } else {
        zeros.clone()
    };
    let stores = if full {
        count("stores_visited__30d")
    } else {
        zeros.clone()
    };
    let orders_1h = if full {
        count("num_orders__1h")
    } else {
        zeros.clone()
    };
    let orders_1d = count("num_orders__1d");
    let since = f("since_last_order");
    (0..rows)
        .map(|i| Expected {
            spend: [spend_1d[i], spend_7d[i], spend_30d[i]],
            avg_basket_30d: avg[i],
            largest_30d: largest[i],
            fewest_items_7d: fewest[i],
            items_7d: items_7d[i],
            items_all: items_all[i],
            last_channel_30d: last_channel[i].clone(),
            first_order_at: first[i],
            last_gift_7d: gift[i],
            channels_30d: channels[i],
            stores_30d: stores[i],
            orders_1h: orders_1h[i],
            orders_1d: orders_1d[i],
            since_last: since[i],
        })
        .collect()
}

fn by_customer(w: &Warehouse) -> HashMap<&str, Vec<&Order>> {
    let mut m: HashMap<&str, Vec<&Order>> = HashMap::new();
    for o in &w.orders {
        m.entry(o.customer_id.as_str()).or_default().push(o);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_features_equal_the_reference_across_an_incremental_run() {
    let cfg = Config::default();
    let w = generate(&cfg);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("data"), tmp.path().join("state"));
    // The first run sees the first 40 days; the second the rest, with history from the
    // offline store.
    let cut = START_MICROS + 40 * DAY;
    let first = write_warehouse(&data, &w, Some(cut)).expect("write");
    let s1 = run(&data, &state, cut, "order_features").await;
    assert_eq!(s1.rows_ingested, first);
    write_warehouse(&data, &w, None).expect("write");
    let s2 = run(&data, &state, START_MICROS + 50 * DAY, "order_features").await;
    assert!(
        s2.rows_ingested < w.orders.len() - first + 200,
        "the second run reads new rows"
    );
    assert_eq!(s2.outputs.len(), 24);

    let b = read(&state, "order_features").await;
    let ids = strs(&b, "id");
    assert_eq!(b.num_rows(), w.orders.len(), "every order exactly once");
    assert_eq!(
        ids.iter().flatten().collect::<BTreeSet<_>>().len(),
        w.orders.len()
    );
    let orders: HashMap<&str, &Order> = w.orders.iter().map(|o| (o.id.as_str(), o)).collect();
    let history = by_customer(&w);
    let segments: HashMap<&str, &str> = w
        .customers
        .iter()
        .map(|c| (c.id.as_str(), c.segment.as_str()))
        .collect();
    let (region, tier, segment) = (
        strs(&b, "store__region"),
        ints(&b, "store__tier"),
        strs(&b, "customer__segment"),
    );
    let amount = floats(&b, "amount");
    let features = stored(&b, "customer__", true);
    let since_first = floats(&b, "customer__seconds_since_first_order");
    let big = bools(&b, "big_order");
    let items_or_zero = ints(&b, "items_or_zero");
    let twice = floats(&b, "twice_amount_vs_avg");
    let (mut null_regions, mut null_segments, mut checked) = (0, 0, 0);
    for (i, id) in ids.iter().enumerate() {
        let o = orders[id.as_deref().expect("id")];
        assert_eq!(amount[i], o.amount.map(f64::to_bits), "amount of {}", o.id);
        // The store as of the order: its latest version before the order's time.
        let version = w
            .stores
            .iter()
            .filter(|s| s.id == o.store_id && s.updated_at < o.ts)
            .max_by_key(|s| s.updated_at);
        assert_eq!(
            region[i],
            version.map(|v| v.region.clone()),
            "region of {}",
            o.id
        );
        assert_eq!(tier[i], version.map(|v| v.tier), "tier of {}", o.id);
        null_regions += usize::from(version.is_none());
        let seg = segments.get(o.customer_id.as_str()).map(|s| s.to_string());
        null_segments += usize::from(seg.is_none());
        assert_eq!(segment[i], seg, "segment of {}", o.id);
        let want = expected(&history[o.customer_id.as_str()], o.ts);
        // Row expressions, evaluated per order with the order's own now.
        let first = want
            .first_order_at
            .map(|t| ((o.ts - t) as f64 / 1e6).to_bits());
        assert_eq!(since_first[i], first, "seconds since first of {}", o.id);
        assert_eq!(
            big[i],
            o.amount.map(|a| a >= 200.0),
            "big_order of {}",
            o.id
        );
        assert_eq!(
            items_or_zero[i],
            Some(o.quantity.unwrap_or(0)),
            "items of {}",
            o.id
        );
        let ratio = match (o.amount, want.avg_basket_30d) {
            (Some(a), Some(avg)) => Some(a / f64::from_bits(avg)),
            _ => None,
        };
        assert_eq!(
            twice[i],
            ratio.map(|r| (r * 2.0).to_bits()),
            "twice_amount_vs_avg of {}",
            o.id
        );
        assert_eq!(features[i], want, "order {}", o.id);
        checked += 1;
    }
    assert_eq!(checked, w.orders.len());
    // The data exercises the lookups' empty cases.
    assert!(
        null_regions > 0 && null_regions < w.orders.len() / 2,
        "{null_regions}"
    );
    assert!(null_segments > 0, "orders of unknown customers");

    // Online: the newest value per order id, as typed JSON.
    let online = engine(&data, &state, 0).online().expect("online");
    for i in (0..ids.len()).step_by(97) {
        let id = ids[i].as_deref().expect("id");
        let got = online
            .get("order.customer.spend__30d", id)
            .expect("get")
            .expect("stored");
        let want = floats(&b, "customer__spend__30d")[i]
            .map_or("null".to_string(), |v| format!("{:?}", f64::from_bits(v)));
        assert_eq!(got.json, want, "online spend of {id}");
        let got = online
            .get("order.store.region", id)
            .expect("get")
            .expect("stored");
        let want = region[i]
            .as_ref()
            .map_or("null".to_string(), |r| format!("\"{r}\""));
        assert_eq!(got.json, want, "online region of {id}");
    }
}

/// A first run computes the same order features whatever the number of partitions of its
/// point-in-time operator (rows hash-partitioned by customer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_partitions_do_not_change_the_features() {
    let cfg = Config {
        seed: 13,
        orders: 40_000,
        customers: 120,
        ..Config::default()
    };
    let w = generate(&cfg);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    write_warehouse(&data, &w, None).expect("write");
    let plan = plan_query(&project(), "order_features").expect("plan");
    let mut first: Option<RecordBatch> = None;
    // The last one under a memory limit small enough that the sorts spill.
    for (n, limit) in [(1, None), (3, None), (16, None), (2, Some(8usize << 20))] {
        let state = tmp.path().join(format!("state{n}"));
        let mut e = engine(&data, &state, START_MICROS + 60 * DAY).with_partitions(n);
        if let Some(l) = limit {
            e = e.with_memory_limit(l);
        }
        let s = e.run(&plan, &SilentProgress).await.expect("run");
        assert_eq!(
            s.spilled_bytes > 0,
            limit.is_some(),
            "{n} partitions under {limit:?} bytes: spilled {} bytes",
            s.spilled_bytes
        );
        let b = read(&state, "order_features").await;
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|&i| !["run_id", "slate_day"].contains(&b.schema().field(i).name().as_str()))
            .collect();
        let b = b.project(&keep).expect("project");
        let order =
            arrow::compute::sort_to_indices(b.column_by_name("id").expect("id"), None, None)
                .expect("sort");
        let b = arrow::compute::take_record_batch(&b, &order).expect("take");
        match &first {
            None => first = Some(b),
            Some(b1) => assert_eq!(&b, b1, "{n} partitions, {limit:?}: the same order features"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_features_are_computed_as_of_the_run() {
    let cfg = Config {
        seed: 5,
        orders: 6_000,
        customers: 150,
        ..Config::default()
    };
    let w = generate(&cfg);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("data"), tmp.path().join("state"));
    write_warehouse(&data, &w, None).expect("write");
    let tick = START_MICROS + 44 * DAY + 7 * HOUR;
    let s = run(&data, &state, tick, "customer_features").await;
    assert_eq!(s.rows_scored, w.customers.len());
    let b = read(&state, "customer_features").await;
    assert_eq!(b.num_rows(), w.customers.len());
    assert_eq!(times(&b, "feature_time"), vec![Some(tick); b.num_rows()]);
    let history = by_customer(&w);
    let ids = strs(&b, "id");
    let segments = strs(&b, "segment");
    let features = stored(&b, "", false);
    let since_first = floats(&b, "seconds_since_first_order");
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_deref().expect("id");
        let c = w.customers.iter().find(|c| c.id == id).expect("known");
        assert_eq!(segments[i].as_deref(), Some(c.segment.as_str()));
        let e = expected(history.get(id).map_or(&[][..], |v| v), tick);
        let e_first = e.first_order_at;
        let want = Expected {
            spend: [None, None, e.spend[2]],
            items_all: e.items_all,
            channels_30d: 0,
            last_channel_30d: e.last_channel_30d,
            first_order_at: e.first_order_at,
            orders_1d: e.orders_1d,
            since_last: e.since_last,
            ..Expected::default()
        };
        assert_eq!(features[i], want, "customer {id}");
        assert_eq!(
            since_first[i],
            e_first.map(|t| ((tick - t) as f64 / 1e6).to_bits()),
            "seconds since first order of {id}"
        );
    }
    // A rerun at the same tick gives the same table.
    run(&data, &state, tick, "customer_features").await;
    let again = read(&state, "customer_features").await;
    assert_eq!(again.num_rows(), b.num_rows());
    for name in ["spend__30d", "since_last_order"] {
        assert_eq!(floats(&again, name), floats(&b, name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_function_resolver_runs_when_registered_and_is_refused_otherwise() {
    let cfg = Config {
        seed: 9,
        orders: 3_000,
        customers: 80,
        ..Config::default()
    };
    let w = generate(&cfg);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("data"), tmp.path().join("state"));
    write_warehouse(&data, &w, None).expect("write");
    let plan = plan_query(&project(), "order_labels").expect("plan");
    let now = START_MICROS + 60 * DAY;

    // Without the function: refused before anything is written.
    let err = engine(&data, &state, now)
        .run(&plan, &SilentProgress)
        .await
        .expect_err("not registered");
    assert!(
        err.to_string().contains("`basket_class`") && err.to_string().contains("not registered"),
        "{err}"
    );
    assert!(!state.join("ledger.redb").exists());
    assert!(!state.join("online.redb").exists());

    let functions = slate_engine::Functions::new()
        .register("basket_class", retail_example::functions::basket_class);
    let s = engine(&data, &state, now)
        .with_functions(functions)
        .run(&plan, &SilentProgress)
        .await
        .expect("run");
    assert_eq!(s.rows_scored, w.orders.len());
    let online = engine(&data, &state, now).online().expect("online");
    let mut classes = BTreeSet::new();
    for o in &w.orders {
        let want = o.amount.map(|a| {
            let per_item = a / o.quantity.unwrap_or(1).max(1) as f64;
            if per_item < 20.0 {
                "small"
            } else if per_item < 100.0 {
                "medium"
            } else {
                "large"
            }
        });
        let got = online
            .get("order.basket_class", &o.id)
            .expect("get")
            .expect("stored");
        assert_eq!(
            got.json,
            want.map_or("null".to_string(), |c| format!("\"{c}\"")),
            "basket_class of {}",
            o.id
        );
        classes.insert(got.json);
        let big = online
            .get("order.big_order", &o.id)
            .expect("get")
            .expect("stored");
        assert_eq!(
            big.json,
            o.amount
                .map_or("null".to_string(), |a| (a >= 200.0).to_string()),
            "big_order of {}",
            o.id
        );
    }
    assert_eq!(classes.len(), 4, "every class and null occur: {classes:?}");
}

/// A run whose root source is dead writes nothing, though it reads other classes first: the
/// first run of the order features (a backfill with lookups, in a state directory another
/// query's run created) and a later one fail naming the table, and leave every table as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_root_source_leaves_the_stores_as_they_were() {
    const TABLES: [&str; 4] = ["store", "customer", "order", "order_features"];
    let w = generate(&Config::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, state) = (tmp.path().join("data"), tmp.path().join("state"));
    write_warehouse(&data, &w, None).expect("write");
    run(&data, &state, START_MICROS + 60 * DAY, "customer_features").await;
    let offline = engine(&state, &state, 0).offline();
    let versions = || {
        let offline = offline.clone();
        async move {
            let mut v = Vec::new();
            for table in TABLES {
                v.push(offline.version(table).await.expect("version"));
            }
            v
        }
    };
    let orders_file = data.join("SALES.ORDERS.parquet");
    let moved = tmp.path().join("orders.parquet");
    let fail = |now: i64| {
        let (data, state) = (data.clone(), state.clone());
        async move {
            let plan = plan_query(&project(), "order_features").expect("plan");
            engine(&data, &state, now)
                .run(&plan, &SilentProgress)
                .await
                .expect_err("the orders are gone")
                .to_string()
        }
    };

    // The first run: the stores and customers read, the orders source dead.
    let before = versions().await;
    assert_eq!(before[0], None, "no store table before the first run");
    std::fs::rename(&orders_file, &moved).expect("move");
    let err = fail(START_MICROS + 61 * DAY).await;
    assert!(err.contains("SALES.ORDERS"), "{err}");
    assert_eq!(
        versions().await,
        before,
        "tables written by a failed first run"
    );

    // A later run, after a first one that committed.
    std::fs::rename(&moved, &orders_file).expect("move back");
    run(&data, &state, START_MICROS + 62 * DAY, "order_features").await;
    let before = versions().await;
    assert!(before.iter().all(Option::is_some), "{before:?}");
    std::fs::rename(&orders_file, &moved).expect("move");
    let err = fail(START_MICROS + 63 * DAY).await;
    assert!(err.contains("SALES.ORDERS"), "{err}");
    assert_eq!(
        versions().await,
        before,
        "tables written by a failed later run"
    );
}
