//! Settings of the environment's services, with their secrets read from environment variables
//! at the moment they are opened (never from slate.yaml, never printed).

use crate::EngineError;
use slate_project::RedisConfig;
use slate_stores::RedisSettings;

/// The Redis online store's URL (password included, from `password_env` or `url_env`) and the
/// text that names it in messages (without the password).
pub(crate) fn redis_settings(
    c: &RedisConfig,
    project: &str,
    env: &str,
) -> Result<RedisSettings, EngineError> {
    let bad = |reason: String| EngineError::Environment {
        env: env.into(),
        reason,
    };
    let var = |key: &str, name: &str| {
        std::env::var(name).map_err(|_| {
            bad(format!(
                "`online.{key}` names the environment variable `{name}`, which is not set (or not UTF-8)"
            ))
        })
    };
    let mut url = match &c.url_env {
        Some(name) => {
            let text = var("url_env", name)?;
            // The parse error names the problem, never the URL (it may hold a password).
            url::Url::parse(&text)
                .map_err(|e| bad(format!("the URL in `{name}` is not valid: {e}")))?
        }
        None => url::Url::parse("redis://127.0.0.1:6379/0")
            .map_err(|e| EngineError::Internal(e.to_string()))?,
    };
    if !matches!(url.scheme(), "redis" | "redis+unix" | "unix") {
        return Err(bad(format!(
            "the online store's URL has the scheme `{}`; use `redis://` (TLS is not supported yet)",
            url.scheme()
        )));
    }
    let invalid = |what: &str| bad(format!("the online store's {what} is not valid in a URL"));
    if let Some(h) = &c.host {
        url.set_host(Some(h)).map_err(|_| invalid("host"))?;
    }
    if let Some(p) = c.port {
        url.set_port(Some(p)).map_err(|_| invalid("port"))?;
    }
    if let Some(db) = c.db {
        url.set_path(&format!("/{db}"));
    }
    if let Some(u) = &c.user {
        url.set_username(u).map_err(|_| invalid("user"))?;
    }
    if let Some(name) = &c.password_env {
        url.set_password(Some(&var("password_env", name)?))
            .map_err(|_| invalid("password"))?;
    }
    let target = format!(
        "{}:{}{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(6379),
        match url.path() {
            "" | "/" => "/0",
            p => p,
        }
    );
    Ok(RedisSettings {
        url: url.to_string(),
        target,
        prefix: c
            .prefix
            .clone()
            .unwrap_or_else(|| format!("slate:{project}")),
        ttl_secs: c.ttl_secs.clone(),
    })
}
