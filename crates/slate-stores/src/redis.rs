//! The Redis online store. Layout: one hash per (feature, key) at `<prefix>:<feature>:<key>`
//! with the fields `t` (feature time, microseconds since the epoch, decimal) and `v` (the value
//! as JSON); `<prefix>` is `slate:<project>` unless configured. Feature names hold no `:`, so
//! the layout is unambiguous. A write is a Lua script over a batch of keys that compares feature
//! times on the server (an older value never replaces a newer one, atomically per key), sets
//! the feature's TTL on what it writes, and runs pipelined: 512 keys per script call, 32 calls
//! per round trip. Reads of several keys are one pipelined round trip.

use crate::StoreError;
use crate::online::{OnlineStore, OnlineValue, OnlineWriter};
use arrow::array::StringArray;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Keys per script call and script calls per round trip.
const KEYS_PER_CALL: usize = 512;
const CALLS_PER_TRIP: usize = 32;
/// Connections kept open for reuse (reads of concurrent API requests each take one).
const MAX_IDLE: usize = 64;

/// KEYS: the rows' keys; ARGV[1]: TTL in milliseconds (0: none); then per key its feature
/// time and JSON value. Returns how many keys were written.
const UPSERT: &str = r#"
local ttl = tonumber(ARGV[1])
local n = 0
for i = 1, #KEYS do
  local t = ARGV[2 * i]
  local cur = redis.call('HGET', KEYS[i], 't')
  if not cur or tonumber(cur) <= tonumber(t) then
    redis.call('HSET', KEYS[i], 't', t, 'v', ARGV[2 * i + 1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    n = n + 1
  end
end
return n
"#;

/// How to reach the server; built by the engine from the environment's `online:` settings.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user[:password]@]host:port/db`; holds the password, so it is never printed.
    pub url: String,
    /// `host:port/db`, for messages.
    pub target: String,
    pub prefix: String,
    /// Time to live per feature (lower-case store name) and `default`, in seconds.
    pub ttl_secs: BTreeMap<String, i64>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish()
    }
}

pub struct RedisOnlineStore {
    client: redis::Client,
    settings: RedisSettings,
    /// Open connections not in use.
    idle: Mutex<Vec<redis::Connection>>,
}

impl std::fmt::Debug for RedisOnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOnlineStore")
            .field("settings", &self.settings)
            .finish()
    }
}

fn fail<'a>(target: &'a str, what: &'static str) -> impl Fn(redis::RedisError) -> StoreError + 'a {
    move |e| StoreError::Redis {
        what,
        target: target.to_string(),
        reason: e.to_string(),
    }
}

impl RedisOnlineStore {
    /// Connects once, so that a wrong address or password fails here, before a run writes.
    pub fn open(settings: RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| StoreError::Redis {
            what: "online store settings",
            target: settings.target.clone(),
            // The URL is not repeated: it may hold the password.
            reason: format!("{:?}", e.kind()),
        })?;
        let store = RedisOnlineStore {
            client,
            settings,
            idle: Mutex::new(Vec::new()),
        };
        let mut c = store.connection()?;
        redis::cmd("PING")
            .query::<String>(&mut c)
            .map_err(fail(&store.settings.target, "online store ping"))?;
        store.release(c);
        Ok(store)
    }

    fn connection(&self) -> Result<redis::Connection, StoreError> {
        if let Some(c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(c);
        }
        let target = &self.settings.target;
        let c = self
            .client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(fail(target, "online store connection"))?;
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(fail(target, "online store connection"))?;
        c.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(fail(target, "online store connection"))?;
        Ok(c)
    }

    /// Returns a connection for reuse (one that failed is dropped instead).
    fn release(&self, c: redis::Connection) {
        if let Ok(mut v) = self.idle.lock()
            && v.len() < MAX_IDLE
        {
            v.push(c);
        }
    }

    /// Loads [`UPSERT`] and returns its SHA1. Loaded by every writer, so that a server restarted
    /// since (its script cache empty) never fails a later run.
    fn load_script(&self, c: &mut redis::Connection) -> Result<String, StoreError> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(UPSERT)
            .query(c)
            .map_err(fail(&self.settings.target, "online store script"))
    }
}

impl RedisSettings {
    fn key(&self, feature: &str, key: &str) -> String {
        format!("{}:{feature}:{key}", self.prefix)
    }

    /// The TTL of `feature`'s values in milliseconds; 0 for none.
    fn ttl_millis(&self, feature: &str) -> i64 {
        let ttl = &self.ttl_secs;
        ttl.get(&feature.to_ascii_lowercase())
            .or_else(|| ttl.get("default"))
            .map_or(0, |s| s.saturating_mul(1000))
    }
}

/// A run's upserts, written batch by batch as they come (each batch is idempotent).
struct RedisWriter {
    conn: redis::Connection,
    sha: String,
    settings: RedisSettings,
}

impl RedisWriter {
    fn put_rows<'a>(
        &mut self,
        feature: &str,
        rows: impl Iterator<Item = (&'a str, i64, &'a str)>,
    ) -> Result<usize, StoreError> {
        let ttl = self.settings.ttl_millis(feature);
        let mut written = 0;
        let mut pipe = redis::pipe();
        let mut calls = 0;
        let mut batch: Vec<(&str, i64, &str)> = Vec::with_capacity(KEYS_PER_CALL);
        let mut rows = rows.peekable();
        while rows.peek().is_some() {
            batch.clear();
            batch.extend(rows.by_ref().take(KEYS_PER_CALL));
            let cmd = pipe.cmd("EVALSHA").arg(&self.sha).arg(batch.len());
            for (k, _, _) in &batch {
                cmd.arg(self.settings.key(feature, k));
            }
            cmd.arg(ttl);
            for (_, t, v) in &batch {
                cmd.arg(*t).arg(*v);
            }
            calls += 1;
            if calls == CALLS_PER_TRIP || rows.peek().is_none() {
                let counts: Vec<i64> = pipe
                    .query(&mut self.conn)
                    .map_err(fail(&self.settings.target, "online write"))?;
                written += counts.iter().sum::<i64>() as usize;
                pipe = redis::pipe();
                calls = 0;
            }
        }
        Ok(written)
    }
}

impl OnlineWriter for RedisWriter {
    fn put_ordered(
        &mut self,
        feature: &str,
        keys: &StringArray,
        times: &[i64],
        values: &StringArray,
        order: &[u32],
    ) -> Result<usize, StoreError> {
        self.put_rows(
            feature,
            order.iter().map(|&i| {
                let i = i as usize;
                (keys.value(i), times[i], values.value(i))
            }),
        )
    }

    /// Every batch is already written.
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Glob metacharacters escaped, for `SCAN ... MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl OnlineStore for RedisOnlineStore {
    fn writer(&self) -> Result<Box<dyn OnlineWriter>, StoreError> {
        let mut conn = self.connection()?;
        let sha = self.load_script(&mut conn)?;
        Ok(Box::new(RedisWriter {
            conn,
            sha,
            settings: self.settings.clone(),
        }))
    }

    fn get(&self, feature: &str, key: &str) -> Result<Option<OnlineValue>, StoreError> {
        Ok(self.get_many(feature, &[key])?.pop().flatten())
    }

    fn get_many(
        &self,
        feature: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<OnlineValue>>, StoreError> {
        let mut c = self.connection()?;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HMGET")
                .arg(self.settings.key(feature, k))
                .arg("t")
                .arg("v");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe
            .query(&mut c)
            .map_err(fail(&self.settings.target, "online store read"))?;
        self.release(c);
        rows.into_iter()
            .map(|(t, v)| match (t, v) {
                (Some(t), Some(json)) => {
                    let feature_time = t.parse::<i64>().map_err(|_| StoreError::Io {
                        what: "online store read",
                        reason: format!("a stored feature time `{t}` is not an integer"),
                    })?;
                    Ok(Some(OnlineValue { feature_time, json }))
                }
                _ => Ok(None),
            })
            .collect()
    }

    fn count(&self, feature: &str) -> Result<usize, StoreError> {
        let mut c = self.connection()?;
        let pattern = format!(
            "{}:{}:*",
            glob_escape(&self.settings.prefix),
            glob_escape(feature)
        );
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)
                .map_err(fail(&self.settings.target, "online store count"))?;
            n += keys.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.release(c);
        Ok(n)
    }
}
