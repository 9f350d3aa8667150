//! `slate-load`: an open-loop load generator. Each connection sends requests on a fixed
//! schedule (the total rate split across connections); a request sent more than 2 ms after its
//! scheduled time (held up by a slow response before it) counts its latency from the scheduled
//! time, so slowness shows in the percentiles (no coordinated omission), while the timer's
//! millisecond granularity does not. One JSON line of results per run.
//!
//! ```text
//! slate-load http  ADDR RATE SECONDS CONNECTIONS KEYS_FILE FEATURE [TOKEN]
//! slate-load redis ADDR RATE SECONDS CONNECTIONS KEYS_FILE PREFIX
//! slate-load redis-fill ADDR KEYS_FILE PREFIX
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, String>;

#[derive(Clone)]
enum Target {
    /// `POST /v1/query/online` for one key and one feature.
    Http {
        feature: String,
        token: Option<String>,
    },
    /// `GET PREFIX<key>` in the Redis protocol.
    Redis { prefix: String },
}

fn request(target: &Target, addr: &str, key: &str) -> Vec<u8> {
    match target {
        Target::Http { feature, token } => {
            let body = format!(
                "{{\"inputs\":{{\"{}.id\":{key}}},\"outputs\":[\"{feature}\"]}}",
                feature.split('.').next().unwrap_or("transaction")
            );
            let auth = token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            format!(
                "POST /v1/query/online HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Target::Redis { prefix } => {
            let k = format!("{prefix}{key}");
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).into_bytes()
        }
    }
}

/// Reads one response from `buf` + the stream; returns whether it was a success.
async fn response(target: &Target, s: &mut TcpStream, buf: &mut Vec<u8>) -> Res<bool> {
    loop {
        if let Some(r) = parse(target, buf)? {
            return Ok(r);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One complete response at the head of `buf` (consumed), or `None` when more bytes are needed.
fn parse(target: &Target, buf: &mut Vec<u8>) -> Res<Option<bool>> {
    match target {
        Target::Http { .. } => {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or("bad status line")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                return Ok(None);
            }
            buf.drain(..end + 4 + len);
            Ok(Some(status == 200))
        }
        Target::Redis { .. } => {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            match buf[0] {
                b'$' => {
                    let n: i64 = String::from_utf8_lossy(&buf[1..eol])
                        .parse()
                        .map_err(|_| "bad bulk length")?;
                    if n < 0 {
                        buf.drain(..eol + 2);
                        return Ok(Some(false));
                    }
                    let total = eol + 2 + n as usize + 2;
                    if buf.len() < total {
                        return Ok(None);
                    }
                    buf.drain(..total);
                    Ok(Some(true))
                }
                b'+' => {
                    buf.drain(..eol + 2);
                    Ok(Some(true))
                }
                _ => {
                    buf.drain(..eol + 2);
                    Ok(Some(false))
                }
            }
        }
    }
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: usize,
}

async fn connection(
    target: Target,
    addr: String,
    keys: Arc<Vec<String>>,
    start: tokio::time::Instant,
    offset: Duration,
    every: Duration,
    until: tokio::time::Instant,
    seed: u64,
) -> Outcome {
    let mut out = Outcome {
        latencies: Vec::new(),
        errors: 0,
    };
    let mut x = seed | 1;
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let mut i: u32 = 0;
    loop {
        let at = start + offset + every * i;
        if at >= until {
            return out;
        }
        i += 1;
        tokio::time::sleep_until(at).await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = &keys[(x % keys.len() as u64) as usize];
        if stream.is_none() {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    buf.clear();
                }
                Err(_) => {
                    out.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        // Latency runs from the scheduled time when the generator is behind it (the server
        // held it up: no coordinated omission), else from the send, so that the timer's own
        // millisecond granularity is not counted.
        let sent = tokio::time::Instant::now();
        let from = if sent.duration_since(at) > Duration::from_millis(2) {
            at
        } else {
            sent
        };
        let ok = match s.write_all(&request(&target, &addr, key)).await {
            Ok(()) => response(&target, s, &mut buf).await,
            Err(e) => Err(e.to_string()),
        };
        match ok {
            Ok(true) => out.latencies.push(from.elapsed()),
            Ok(false) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                stream = None;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

async fn load(
    target: Target,
    addr: String,
    rate: f64,
    seconds: f64,
    conns: usize,
    keys: Vec<String>,
) -> Res<String> {
    if keys.is_empty() {
        return Err("no keys".into());
    }
    let keys = Arc::new(keys);
    let every = Duration::from_secs_f64(conns as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let until = start + Duration::from_secs_f64(seconds);
    let wall = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(connection(
                target.clone(),
                addr.clone(),
                keys.clone(),
                start,
                every.mul_f64(c as f64 / conns as f64),
                every,
                until,
                0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1).wrapping_mul(0x2545_f491),
            ))
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let o = t.await.map_err(|e| e.to_string())?;
        lat.extend(o.latencies);
        errors += o.errors;
    }
    let took = wall.elapsed().as_secs_f64() - 0.2;
    lat.sort();
    let kind = match target {
        Target::Http { .. } => "slate-http",
        Target::Redis { .. } => "redis-get",
    };
    Ok(format!(
        "{{\"target\":\"{kind}\",\"rate\":{rate},\"seconds\":{seconds},\"connections\":{conns},\"ok\":{},\"errors\":{errors},\"achieved_rps\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        lat.len(),
        lat.len() as f64 / took.max(1e-9),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
    ))
}

/// Writes `SET PREFIX<key> <json>` for every key, pipelined.
async fn redis_fill(addr: &str, keys: &[String], prefix: &str) -> Res<String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let target = Target::Redis {
        prefix: prefix.into(),
    };
    let mut buf = Vec::new();
    for chunk in keys.chunks(1000) {
        let mut out = Vec::new();
        for k in chunk {
            // A value shaped like the online store's: the JSON value and its feature time.
            let key = format!("{prefix}{k}");
            let v = "{\"value\":false,\"ts\":\"2026-10-30T12:00:00Z\"}";
            out.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{v}\r\n",
                    key.len(),
                    v.len()
                )
                .as_bytes(),
            );
        }
        s.write_all(&out).await.map_err(|e| e.to_string())?;
        for _ in chunk {
            if !response(&target, &mut s, &mut buf).await? {
                return Err("SET failed".into());
            }
        }
    }
    Ok(format!("{{\"filled\":{}}}", keys.len()))
}

fn keys(path: &str) -> Res<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("{path}: {e}"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize, name: &str) -> Res<T> {
    a.get(i)
        .ok_or_else(|| format!("missing {name}"))?
        .parse()
        .map_err(|_| format!("bad {name}: {}", a[i]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let result = match a.get(1).map(String::as_str) {
        Some("http") => {
            async {
                let target = Target::Http {
                    feature: arg(&a, 7, "FEATURE")?,
                    token: a.get(8).cloned(),
                };
                load(
                    target,
                    arg(&a, 2, "ADDR")?,
                    arg(&a, 3, "RATE")?,
                    arg(&a, 4, "SECONDS")?,
                    arg(&a, 5, "CONNECTIONS")?,
                    keys(&a[6])?,
                )
                .await
            }
            .await
        }
        Some("redis") => {
            async {
                let target = Target::Redis {
                    prefix: arg(&a, 7, "PREFIX")?,
                };
                load(
                    target,
                    arg(&a, 2, "ADDR")?,
                    arg(&a, 3, "RATE")?,
                    arg(&a, 4, "SECONDS")?,
                    arg(&a, 5, "CONNECTIONS")?,
                    keys(&a[6])?,
                )
                .await
            }
            .await
        }
        Some("redis-fill") => {
            async {
                let addr: String = arg(&a, 2, "ADDR")?;
                redis_fill(&addr, &keys(&a[3])?, &arg::<String>(&a, 4, "PREFIX")?).await
            }
            .await
        }
        _ => Err("usage: slate-load http|redis|redis-fill ... (see the file's header)".into()),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("slate-load: {e}");
            std::process::exit(1);
        }
    }
}
