//! The external services Slate's integration tests talk to (PostgreSQL, Redis, the Snowflake
//! emulator): their addresses, and a check that each answers, starting it when it does not.
//!
//! The first test of a process that needs a service connects to it; when nothing answers at
//! the default local address, it takes a machine-wide file lock (so that concurrent test
//! processes never start a second copy), looks again, and runs `scripts/services <service>`,
//! which installs and starts what is missing. A service that still does not answer fails the
//! test with one line naming the service, its address and the command that starts it.
//! An address set through a `SLATE_TEST_*` variable is only checked, never started.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A test setting from the environment (`SLATE_TEST_*`), or its default.
pub fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// The PostgreSQL server of the tests: trust authentication, a superuser role, a database per
/// test created by the tests themselves.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// The Redis server of the tests.
#[derive(Debug, Clone)]
pub struct Redis {
    pub host: String,
    pub port: u16,
    /// `redis://host:port/0`, or `SLATE_TEST_REDIS_URL` as given.
    pub url: String,
}

/// The Snowflake emulator (fakesnow's HTTP server, plain HTTP, any password).
#[derive(Debug, Clone)]
pub struct Snowflake {
    pub host: String,
    pub port: u16,
}

/// PostgreSQL at `SLATE_TEST_PG_HOST`:`SLATE_TEST_PG_PORT` (127.0.0.1:5432) as
/// `SLATE_TEST_PG_USER` (root), answering.
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = Postgres {
            host: setting("SLATE_TEST_PG_HOST", "127.0.0.1"),
            port: port_setting("SLATE_TEST_PG_PORT", 5432),
            user: setting("SLATE_TEST_PG_USER", "root"),
        };
        let overridden = ["SLATE_TEST_PG_HOST", "SLATE_TEST_PG_PORT"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        ensure(Service {
            name: "PostgreSQL",
            script_arg: "postgres",
            host: &pg.host,
            port: pg.port,
            overridden,
        });
        pg
    })
}

/// Redis at `SLATE_TEST_REDIS_URL` (redis://127.0.0.1:6379/0), answering.
pub fn redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(|| {
        let given = std::env::var("SLATE_TEST_REDIS_URL").ok();
        let (host, port) = match &given {
            Some(url) => redis_address(url),
            None => ("127.0.0.1".to_string(), 6379),
        };
        ensure(Service {
            name: "Redis",
            script_arg: "redis",
            host: &host,
            port,
            overridden: given.is_some(),
        });
        let url = given.unwrap_or_else(|| format!("redis://{host}:{port}/0"));
        Redis { host, port, url }
    })
}

/// The Snowflake emulator at `SLATE_TEST_SNOWFLAKE_HOST`:`SLATE_TEST_SNOWFLAKE_PORT`
/// (127.0.0.1:8765), answering; `openssl` is on the PATH for the key-pair tests.
pub fn snowflake() -> &'static Snowflake {
    static SF: OnceLock<Snowflake> = OnceLock::new();
    SF.get_or_init(|| {
        let sf = Snowflake {
            host: setting("SLATE_TEST_SNOWFLAKE_HOST", "127.0.0.1"),
            port: port_setting("SLATE_TEST_SNOWFLAKE_PORT", 8765),
        };
        ensure(Service {
            name: "the Snowflake emulator (fakesnow)",
            script_arg: "snowflake",
            host: &sf.host,
            port: sf.port,
            overridden: std::env::var_os("SLATE_TEST_SNOWFLAKE_HOST").is_some(),
        });
        sf
    })
}

fn port_setting(name: &str, default: u16) -> u16 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a port number")),
        Err(_) => default,
    }
}

/// Host and port of a `redis://[user:password@]host[:port][/db]` URL.
fn redis_address(url: &str) -> (String, u16) {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().unwrap_or(6379)),
        _ => (hostport.to_string(), 6379),
    }
}

struct Service<'a> {
    name: &'static str,
    script_arg: &'static str,
    host: &'a str,
    port: u16,
    /// Set by the user's environment: checked, never started.
    overridden: bool,
}

/// Returns when the service answers, else panics with one line saying how to start it.
fn ensure(s: Service<'_>) {
    if answers(s.host, s.port) {
        return;
    }
    let start = format!("scripts/services {}", s.script_arg);
    if s.overridden {
        panic!(
            "{} is not answering at {}:{} (the address set by SLATE_TEST_* variables; unset them to have the tests start a local one with `{start}`)",
            s.name, s.host, s.port
        );
    }
    let outcome = start_locked(&s);
    if answers(s.host, s.port) {
        return;
    }
    panic!(
        "{} is not answering at {}:{} and could not be started ({outcome}); start it with `{start}` from the repository root",
        s.name, s.host, s.port
    );
}

/// Runs `scripts/services <service>` under a machine-wide lock, unless the service came up
/// while this process waited for the lock. Says what happened, for the failure message.
fn start_locked(s: &Service<'_>) -> String {
    let lock_path = std::env::temp_dir().join("slate-test-services.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f));
    let _lock = match lock {
        Ok(f) => f,
        Err(e) => return format!("locking {}: {e}", lock_path.display()),
    };
    if answers(s.host, s.port) {
        return "it came up".into();
    }
    let script = repository_root().join("scripts/services");
    eprintln!(
        "slate-testkit: {} is not answering at {}:{}; running {} {}",
        s.name,
        s.host,
        s.port,
        script.display(),
        s.script_arg
    );
    match Command::new("bash")
        .arg(&script)
        .arg(s.script_arg)
        .current_dir(repository_root())
        .output()
    {
        Ok(out) if out.status.success() => "scripts/services reported success".into(),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            format!(
                "scripts/services exited with {}: {}",
                out.status,
                last.unwrap_or("no message")
            )
        }
        Err(e) => format!("running {}: {e}", script.display()),
    }
}

/// Whether something accepts TCP connections at host:port within two seconds.
fn answers(host: &str, port: u16) -> bool {
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return false,
    };
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[cfg(test)]
mod tests {
    use super::redis_address;

    #[test]
    fn redis_urls_give_their_address() {
        assert_eq!(
            redis_address("redis://127.0.0.1:6379/0"),
            ("127.0.0.1".into(), 6379)
        );
        assert_eq!(
            redis_address("redis://u:p@cache.internal:7000"),
            ("cache.internal".into(), 7000)
        );
        assert_eq!(
            redis_address("redis://localhost/2"),
            ("localhost".into(), 6379)
        );
    }
}
