//! The Redis online store. Layout: one hash per entity key and class at
//! `<prefix>:<class>:<key>`, holding one field per feature of the class written for that key;
//! a field's value is `<feature time>:<expiry>:<JSON>` (microseconds since the epoch; the
//! server's time in milliseconds after which the value is gone, 0 for never); `<prefix>` is
//! `slate:<project>` unless configured. Class names hold no `:`, so the layout is unambiguous.
//! A write is a Lua script over a batch of keys that compares feature times per field on the
//! server (an older value never replaces a newer one, atomically per key), stamps each value
//! with its feature's TTL and lets the hash expire with its last value, and runs pipelined:
//! 512 keys per script call, 32 calls per round trip. Reads of several keys are one pipelined
//! round trip, with the server's time to drop expired values.

use crate::StoreError;
use crate::online::{OnlineRows, OnlineStore, OnlineValue, OnlineWriter, class_of, slots_by_class};
use arrow::array::StringArray;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Keys per script call and script calls per round trip.
const KEYS_PER_CALL: usize = 512;
const CALLS_PER_TRIP: usize = 32;
/// The key under the prefix that marks it as holding records, and its value. A class name
/// never starts with `.`, so it is no record's key.
const LAYOUT_KEY: &str = ".layout";
const LAYOUT: &str = "records";
/// Slots a `SCAN` call of the layout check looks at.
const LAYOUT_SCAN_COUNT: usize = 10_000;
/// Connections kept open for reuse (reads of concurrent API requests each take one).
const MAX_IDLE: usize = 64;

/// KEYS: the rows' hashes. ARGV[1]: F, the number of features; ARGV[2] whether any value of
/// the store may expire (1 or 0); ARGV[3..F+2]: the feature names; ARGV[F+3..2F+2]: their TTLs
/// in milliseconds (0: none); then per key its feature time and its F JSON values. Returns how
/// many values were written.
const UPSERT: &str = r#"
local f = tonumber(ARGV[1])
local expiring = ARGV[2] == '1'
local names = {}
local ttls = {}
for j = 1, f do
  names[j] = ARGV[2 + j]
  ttls[j] = tonumber(ARGV[2 + f + j])
end
local now = 0
if expiring then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local n = 0
local base = 3 + 2 * f
for i = 1, #KEYS do
  local at = base + (i - 1) * (f + 1)
  local t = ARGV[at]
  local tn = tonumber(t)
  local cur = redis.call('HMGET', KEYS[i], unpack(names))
  local set = {}
  for j = 1, f do
    local c = cur[j]
    local older = true
    if c then
      local ct = tonumber(string.match(c, '^(-?%d+):'))
      if ct and ct > tn then older = false end
    end
    if older then
      local expiry = 0
      if ttls[j] > 0 then expiry = now + ttls[j] end
      set[#set + 1] = names[j]
      set[#set + 1] = t .. ':' .. expiry .. ':' .. ARGV[at + j]
      n = n + 1
    end
  end
  if #set > 0 then
    redis.call('HSET', KEYS[i], unpack(set))
    if expiring then
      local last = 0
      local never = false
      for _, v in ipairs(redis.call('HVALS', KEYS[i])) do
        local e = tonumber(string.match(v, '^-?%d+:(%d+):'))
        if not e or e == 0 then never = true elseif e > last then last = e end
      end
      if never then redis.call('PERSIST', KEYS[i]) else redis.call('PEXPIREAT', KEYS[i], last) end
    end
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

/// Walks the keys matching `pattern`, one `SCAN` page of `count` slots at a time, until
/// `page` returns false or the scan ends.
fn scan_keys(
    c: &mut redis::Connection,
    target: &str,
    what: &'static str,
    pattern: &str,
    count: usize,
    mut page: impl FnMut(&mut redis::Connection, Vec<String>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query(c)
            .map_err(fail(target, what))?;
        if !page(c, keys)? || next == 0 {
            return Ok(());
        }
        cursor = next;
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
        store.check_layout(&mut c)?;
        store.release(c);
        Ok(store)
    }

    /// Refuses a prefix holding values of the layout before records (one hash per feature and
    /// key), which reads would otherwise miss without a word; then marks the prefix as records,
    /// so that later opens check one key. The first open of a prefix scans the whole database
    /// (`SCAN` visits every key of a server shared with others, whatever it matches), once.
    fn check_layout(&self, c: &mut redis::Connection) -> Result<(), StoreError> {
        let target = &self.settings.target;
        let marker = format!("{}:{LAYOUT_KEY}", self.settings.prefix);
        let layout: Option<String> = redis::cmd("GET")
            .arg(&marker)
            .query(c)
            .map_err(fail(target, "online store layout"))?;
        if layout.as_deref() == Some(LAYOUT) {
            return Ok(());
        }
        let prefix = format!("{}:", self.settings.prefix);
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut old = None;
        scan_keys(
            c,
            target,
            "online store layout",
            &pattern,
            LAYOUT_SCAN_COUNT,
            |_, keys| {
                // A key of the earlier layout starts with a feature name, which holds a `.`; a
                // record's starts with its class, which does not.
                old = keys.into_iter().find(|k| {
                    k.strip_prefix(&prefix)
                        .and_then(|rest| rest.split(':').next())
                        .is_some_and(|first| first.contains('.'))
                });
                Ok(old.is_none())
            },
        )?;
        if let Some(old) = old {
            return Err(StoreError::Redis {
                what: "online store layout",
                target: target.clone(),
                reason: format!(
                    "keys under `{prefix}` are in the layout of an earlier release (one hash per feature and key, such as `{old}`), which this release does not read; delete them (`redis-cli --scan --pattern '{prefix}*' | xargs redis-cli del`) and run the queries again from an empty state, or configure another `prefix`"
                ),
            });
        }
        redis::cmd("SET")
            .arg(&marker)
            .arg(LAYOUT)
            .query::<()>(c)
            .map_err(fail(target, "online store layout"))
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
    /// The hash of `key`'s record of `class`.
    fn key(&self, class: &str, key: &str) -> String {
        format!("{}:{class}:{key}", self.prefix)
    }

    /// The TTL of `feature`'s values in milliseconds; 0 for none.
    fn ttl_millis(&self, feature: &str) -> i64 {
        let ttl = &self.ttl_secs;
        ttl.get(&feature.to_ascii_lowercase())
            .or_else(|| ttl.get("default"))
            .map_or(0, |s| s.saturating_mul(1000))
    }

    /// Whether any value may expire; when none can, writes and reads skip expiry entirely.
    fn expiring(&self) -> bool {
        self.ttl_secs.values().any(|s| *s > 0)
    }
}

/// A run's upserts, written batch by batch as they come (each batch is idempotent).
struct RedisWriter {
    conn: redis::Connection,
    sha: String,
    settings: RedisSettings,
}

impl RedisWriter {
    fn put_records(
        &mut self,
        class: &str,
        rows: &OnlineRows<'_>,
        features: &[(&str, &StringArray)],
        order: &[u32],
    ) -> Result<usize, StoreError> {
        let expiring = if self.settings.expiring() { "1" } else { "0" };
        let mut written = 0;
        let mut pipe = redis::pipe();
        let mut calls = 0;
        let batches = order.chunks(KEYS_PER_CALL);
        let last = batches.len();
        for (b, batch) in batches.enumerate() {
            let cmd = pipe.cmd("EVALSHA").arg(&self.sha).arg(batch.len());
            for &i in batch {
                cmd.arg(self.settings.key(class, rows.keys.value(i as usize)));
            }
            cmd.arg(features.len()).arg(expiring);
            for (f, _) in features {
                cmd.arg(*f);
            }
            for (f, _) in features {
                cmd.arg(self.settings.ttl_millis(f));
            }
            for &i in batch {
                let i = i as usize;
                cmd.arg(rows.times[i]);
                for (_, v) in features {
                    cmd.arg(v.value(i));
                }
            }
            calls += 1;
            if calls == CALLS_PER_TRIP || b + 1 == last {
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
    fn put_ordered(&mut self, rows: &OnlineRows<'_>, order: &[u32]) -> Result<usize, StoreError> {
        let mut written = 0;
        for (class, features) in rows.by_class()? {
            written += self.put_records(class, rows, &features, order)?;
        }
        Ok(written)
    }

    /// Every batch is already written.
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A stored field: its feature time and value, or nothing when it expired before `now`
/// (server milliseconds).
fn parse_field(field: &str, now: i64) -> Result<Option<OnlineValue>, StoreError> {
    let bad = || StoreError::Io {
        what: "online store read",
        reason: format!(
            "a stored value `{}` is not `<feature time>:<expiry>:<JSON>`",
            field.chars().take(60).collect::<String>()
        ),
    };
    let (time, rest) = field.split_once(':').ok_or_else(bad)?;
    let (expiry, json) = rest.split_once(':').ok_or_else(bad)?;
    let feature_time = time.parse::<i64>().map_err(|_| bad())?;
    let expiry = expiry.parse::<i64>().map_err(|_| bad())?;
    if expiry != 0 && expiry <= now {
        return Ok(None);
    }
    Ok(Some(OnlineValue {
        feature_time,
        json: json.to_string(),
    }))
}

/// A reply of another shape than the read asked for.
fn unexpected(e: redis::ParsingError) -> StoreError {
    StoreError::Io {
        what: "online store read",
        reason: format!("unexpected reply: {e}"),
    }
}

/// The server's time in milliseconds, from its `TIME` reply.
fn server_millis(reply: (String, String)) -> Result<i64, StoreError> {
    let bad = || StoreError::Io {
        what: "online store read",
        reason: format!("the server's TIME reply {reply:?} is not two integers"),
    };
    let secs = reply.0.parse::<i64>().map_err(|_| bad())?;
    let micros = reply.1.parse::<i64>().map_err(|_| bad())?;
    Ok(secs * 1000 + micros / 1000)
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

    fn get_features(
        &self,
        features: &[&str],
        keys: &[&str],
    ) -> Result<Vec<Vec<Option<OnlineValue>>>, StoreError> {
        if keys.is_empty() || features.is_empty() {
            return Ok(vec![vec![None; features.len()]; keys.len()]);
        }
        // The features by class: one HMGET per key and class, all in one round trip.
        let classes = slots_by_class(features);
        let expiring = self.settings.expiring();
        let mut c = self.connection()?;
        let mut pipe = redis::pipe();
        if expiring {
            pipe.cmd("TIME");
        }
        for k in keys {
            for (class, slots) in &classes {
                let cmd = pipe.cmd("HMGET");
                cmd.arg(self.settings.key(class, k));
                for &i in slots {
                    cmd.arg(features[i]);
                }
            }
        }
        let mut replies: Vec<redis::Value> = pipe
            .query(&mut c)
            .map_err(fail(&self.settings.target, "online store read"))?;
        self.release(c);
        let now = match expiring {
            true => {
                let time = redis::from_redis_value(replies.remove(0)).map_err(unexpected)?;
                server_millis(time)?
            }
            false => i64::MIN,
        };
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for _ in keys {
            let mut row = vec![None; features.len()];
            for slots in classes.values() {
                let reply = replies.next().ok_or_else(|| StoreError::Io {
                    what: "online store read",
                    reason: "fewer replies than reads".into(),
                })?;
                let fields: Vec<Option<String>> =
                    redis::from_redis_value(reply).map_err(unexpected)?;
                for (&i, field) in slots.iter().zip(fields) {
                    if let Some(field) = field {
                        row[i] = parse_field(&field, now)?;
                    }
                }
            }
            out.push(row);
        }
        Ok(out)
    }

    fn count(&self, feature: &str) -> Result<usize, StoreError> {
        let mut c = self.connection()?;
        let target = &self.settings.target;
        let pattern = format!(
            "{}:{}:*",
            glob_escape(&self.settings.prefix),
            glob_escape(class_of(feature))
        );
        let now = server_millis(
            redis::cmd("TIME")
                .query(&mut c)
                .map_err(fail(target, "online store count"))?,
        )?;
        let mut n = 0;
        // SCAN may return a key more than once (when the server resizes its table during the
        // walk, as other clients' writes make it do): each key is counted once.
        let mut seen = std::collections::HashSet::new();
        scan_keys(
            &mut c,
            target,
            "online store count",
            &pattern,
            1000,
            |c, mut keys| {
                keys.retain(|k| seen.insert(k.clone()));
                if keys.is_empty() {
                    return Ok(true);
                }
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGET").arg(k).arg(feature);
                }
                let fields: Vec<Option<String>> =
                    pipe.query(c).map_err(fail(target, "online store count"))?;
                for f in fields.into_iter().flatten() {
                    if parse_field(&f, now)?.is_some() {
                        n += 1;
                    }
                }
                Ok(true)
            },
        )?;
        self.release(c);
        Ok(n)
    }
}
