//! One conformance suite for every online store: the embedded redb store and the Redis store
//! (the server at 127.0.0.1:6379; `SLATE_TEST_REDIS_URL` points elsewhere). Upserts where the
//! newest feature time wins, equal times replace, batches larger than a pipeline, keys of any
//! text, reads of many keys, counts, against a model of the store kept in the test; then
//! Redis's TTL. Fails (never skips) without a Redis server.

use arrow_array::StringArray;
use slate_stores::{
    OnlineRows, OnlineStore, OnlineValue, RedbOnlineStore, RedisOnlineStore, RedisSettings,
    key_order,
};
use std::collections::{BTreeMap, HashMap};

fn redis_url() -> String {
    slate_testkit::redis().url.clone()
}

/// Deletes the keys under a prefix when dropped (also when the test fails), so that a shared
/// server does not collect the keys of every run.
struct Cleanup(String);

impl Cleanup {
    fn delete(&self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut c);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A prefix no other test process uses: test processes of concurrent runs on one server may
/// share a process id (each in its own PID namespace), so the clock is part of it.
fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("slate-test:{tag}:{}:{nanos}", std::process::id())
}

/// A Redis store under a prefix of its own (returned with it); its keys are deleted first and
/// when the returned guard drops.
fn redis_store(tag: &str, ttl: &[(&str, i64)]) -> (RedisOnlineStore, Cleanup) {
    let prefix = unique_prefix(tag);
    let settings = RedisSettings {
        url: redis_url(),
        target: "test server".into(),
        prefix: prefix.clone(),
        ttl_secs: ttl.iter().map(|(f, s)| (f.to_string(), *s)).collect(),
    };
    let cleanup = Cleanup(prefix);
    cleanup.delete();
    let store = RedisOnlineStore::open(settings).unwrap_or_else(|e| {
        panic!(
            "Redis must run at {} for this test (start it with `scripts/services`): {e}",
            redis_url()
        )
    });
    (store, cleanup)
}

/// A small deterministic generator, so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn conformance(store: &dyn OnlineStore) {
    let f = "transaction.is_fraud";
    assert_eq!(store.get(f, "1").expect("get"), None);
    assert_eq!(store.count(f).expect("count"), 0);

    // Newest wins; an older time is ignored; an equal time replaces.
    assert_eq!(
        store
            .put(f, vec![("1".into(), 10, "true".into())])
            .expect("put"),
        1
    );
    assert_eq!(
        store
            .put(f, vec![("1".into(), 5, "false".into())])
            .expect("put"),
        0
    );
    let v = |t: i64, j: &str| {
        Some(OnlineValue {
            feature_time: t,
            json: j.into(),
        })
    };
    assert_eq!(store.get(f, "1").expect("get"), v(10, "true"));
    assert_eq!(
        store
            .put(f, vec![("1".into(), 10, "false".into())])
            .expect("put"),
        1
    );
    assert_eq!(store.get(f, "1").expect("get"), v(10, "false"));
    // Features are separate; keys are any text.
    let g = r#"user.num_transactions["1d"]"#;
    let odd = ["", "a:b", "ü*?[x]", "with space", "-0", "42"];
    let rows: Vec<(String, i64, String)> = odd
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), -(i as i64), format!("{i}")))
        .collect();
    assert_eq!(store.put(g, rows).expect("put odd keys"), odd.len());
    assert_eq!(store.count(g).expect("count"), odd.len());
    assert_eq!(store.count(f).expect("count"), 1);
    assert_eq!(store.get(g, "1").expect("get"), None);
    let got = store.get_many(g, &odd).expect("get_many");
    for (i, k) in odd.iter().enumerate() {
        assert_eq!(got[i], v(-(i as i64), &i.to_string()), "key {k:?}");
    }

    // Seeded random rounds against a model: duplicate keys within a write, times that go back,
    // writes larger than one pipeline round trip, through the run's ordered path.
    let h = "user.score";
    let mut model: HashMap<String, (i64, String)> = HashMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..4 {
        let n = [10, 1_000, 40_000, 3][round];
        let keys: Vec<String> = (0..n)
            .map(|_| format!("u{}", rng.next() % 20_000))
            .collect();
        let times: Vec<i64> = (0..n).map(|_| (rng.next() % 100) as i64).collect();
        let values: Vec<String> = (0..n)
            .map(|i| format!("{{\"r\":{round},\"i\":{i}}}"))
            .collect();
        let key_array = StringArray::from(keys.clone());
        let value_array = StringArray::from(values.clone());
        let order = key_order(&key_array, &times).expect("order");
        let mut expected = 0;
        for &i in &order {
            let i = i as usize;
            let replace = model.get(&keys[i]).is_none_or(|(t, _)| *t <= times[i]);
            if replace {
                model.insert(keys[i].clone(), (times[i], values[i].clone()));
                expected += 1;
            }
        }
        let mut w = store.writer().expect("writer");
        let rows = OnlineRows {
            keys: &key_array,
            times: &times,
            values: vec![(h, &value_array)],
        };
        let written = w.put_ordered(&rows, &order).expect("put_ordered");
        w.commit().expect("commit");
        if written != expected {
            // Which keys the store holds otherwise than the model, to tell a lost write from a
            // miscount.
            let names: Vec<&str> = model.keys().map(|k| k.as_str()).collect();
            let got = store.get_many(h, &names).expect("get_many");
            let differ: Vec<String> = names
                .iter()
                .zip(got)
                .filter(|(k, g)| *g != v(model[**k].0, &model[**k].1))
                .take(5)
                .map(|(k, g)| format!("{k}: store {g:?}, model {:?}", model[*k]))
                .collect();
            panic!("round {round}: wrote {written} values, the model {expected}; {differ:?}");
        }
        assert_eq!(store.count(h).expect("count"), model.len(), "round {round}");
    }
    let sorted: BTreeMap<&String, &(i64, String)> = model.iter().collect();
    let names: Vec<&str> = sorted.keys().map(|k| k.as_str()).collect();
    let got = store.get_many(h, &names).expect("get_many");
    for (k, g) in names.iter().zip(got) {
        let (t, j) = &model[*k];
        assert_eq!(g, v(*t, j), "key {k}");
    }

    // Several features of a class in one write share a key's record; each keeps its own time.
    let (a, b) = ("order.total", "order.items");
    let keys = StringArray::from(vec!["o1", "o2"]);
    let times = vec![5, 5];
    let totals = StringArray::from(vec!["1.5", "2.5"]);
    let items = StringArray::from(vec!["3", "4"]);
    let rows = OnlineRows {
        keys: &keys,
        times: &times,
        values: vec![(a, &totals), (b, &items)],
    };
    let mut w = store.writer().expect("writer");
    assert_eq!(w.put_ordered(&rows, &[0, 1]).expect("put"), 4);
    w.commit().expect("commit");
    assert_eq!(
        store
            .put(a, vec![("o1".into(), 4, "9".into())])
            .expect("put"),
        0
    );
    assert_eq!(
        store
            .put(b, vec![("o1".into(), 6, "7".into())])
            .expect("put"),
        1
    );
    assert_eq!(
        store
            .get_features(&[b, a, "order.none", h], &["o1", "o2", "o3"])
            .expect("get_features"),
        vec![
            vec![v(6, "7"), v(5, "1.5"), None, None],
            vec![v(5, "4"), v(5, "2.5"), None, None],
            vec![None, None, None, None],
        ]
    );
    assert_eq!(store.count(a).expect("count"), 2);
    let twice = OnlineRows {
        keys: &keys,
        times: &times,
        values: vec![(a, &totals), (a, &items)],
    };
    let mut w = store.writer().expect("writer");
    let err = w.put_ordered(&twice, &[0, 1]).expect_err("a feature twice");
    assert!(err.to_string().contains("order.total given twice"), "{err}");
}

#[test]
fn redb_online_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbOnlineStore::open(&dir.path().join("online.redb")).expect("open");
    conformance(&store);
}

#[test]
fn redis_online_store_conforms() {
    let (store, _cleanup) = redis_store("conformance", &[]);
    conformance(&store);
}

/// Each value expires after its feature's TTL, whatever else its key's hash holds; the hash
/// lives as long as its last value.
#[test]
fn redis_values_expire_after_their_feature_ttl() {
    let (store, cleanup) = redis_store("ttl", &[("transaction.is_fraud", 1), ("default", 3_600)]);
    let put = |f: &str, k: &str, json: &str| {
        store.put(f, vec![(k.into(), 1, json.into())]).expect("put");
    };
    let client = redis::Client::open(redis_url()).expect("client");
    let mut c = client.get_connection().expect("connection");
    let prefix = cleanup.0.clone();
    let mut pttl = |k: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(format!("{prefix}:{k}"))
            .query(&mut c)
            .expect("pttl")
    };
    put("transaction.is_fraud", "1", "true");
    let short = pttl("transaction:1");
    assert!((1..=1_000).contains(&short), "{short}");
    put("user.name", "1", "\"ann\"");
    assert!(pttl("user:1") > 3_000_000);
    put("transaction.amount", "1", "4.5");
    assert!(pttl("transaction:1") > 3_000_000);
    put("transaction.is_fraud", "2", "false");
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    assert_eq!(store.get("transaction.is_fraud", "1").expect("get"), None);
    assert_eq!(store.get("transaction.is_fraud", "2").expect("get"), None);
    assert!(store.get("transaction.amount", "1").expect("get").is_some());
    assert!(store.get("user.name", "1").expect("get").is_some());
    assert_eq!(store.count("transaction.is_fraud").expect("count"), 0);
    assert_eq!(store.count("transaction.amount").expect("count"), 1);
    assert_eq!(
        pttl("transaction:2"),
        -2,
        "the hash of an expired value alone is gone"
    );
}

/// A prefix holding hashes of the layout before records is refused at open, naming a key and
/// what to do, rather than read as if it were empty.
#[test]
fn redis_keys_of_the_earlier_layout_are_refused_at_open() {
    let (store, cleanup) = redis_store("layout", &[]);
    drop(store);
    // A prefix this release never opened: without its layout marker.
    cleanup.delete();
    let prefix = cleanup.0.clone();
    let client = redis::Client::open(redis_url()).expect("client");
    let mut c = client.get_connection().expect("connection");
    // Other keys on the same server, more than a few SCAN calls visit: the check still finds
    // the old key wherever it is.
    let noise = Cleanup(unique_prefix("layout-noise"));
    for chunk in 0..10 {
        let mut pipe = redis::pipe();
        for i in 0..5_000 {
            pipe.cmd("SET")
                .arg(format!("{}:{chunk}:{i}", noise.0))
                .arg(1)
                .ignore();
        }
        let _: () = pipe.query(&mut c).expect("set noise");
    }
    let old = format!("{prefix}:transaction.is_fraud:42");
    let _: () = redis::cmd("HSET")
        .arg(&old)
        .arg("t")
        .arg(1)
        .arg("v")
        .arg("true")
        .query(&mut c)
        .expect("hset");
    let settings = RedisSettings {
        url: redis_url(),
        target: "test server".into(),
        prefix: prefix.clone(),
        ttl_secs: BTreeMap::new(),
    };
    let err = RedisOnlineStore::open(settings.clone()).expect_err("the earlier layout");
    let text = err.to_string();
    assert!(
        text.contains(&old) && text.contains("earlier release"),
        "{text}"
    );
    let _: () = redis::cmd("DEL").arg(&old).query(&mut c).expect("del");
    let store = RedisOnlineStore::open(settings).expect("an emptied prefix opens");
    store
        .put(
            "transaction.is_fraud",
            vec![("42".into(), 1, "true".into())],
        )
        .expect("put");
    assert!(
        store
            .get("transaction.is_fraud", "42")
            .expect("get")
            .is_some()
    );
}

#[test]
fn a_dead_redis_fails_at_open_with_its_address() {
    let settings = RedisSettings {
        url: "redis://:secret-password@127.0.0.1:1/0".into(),
        target: "127.0.0.1:1/0".into(),
        prefix: "p".into(),
        ttl_secs: BTreeMap::new(),
    };
    let err = RedisOnlineStore::open(settings).expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1/0"), "{text}");
    assert!(!text.contains("secret-password"), "{text}");
}
