//! Helpers of the Snowflake tests: the emulator's address and a source on it.

use slate_project::{SnowflakeConfig, SourceConfig, Span};
use slate_sources::Source;
use std::path::Path;

/// The emulator's port (fakesnow at 127.0.0.1:8765 unless `SLATE_TEST_SNOWFLAKE_PORT` says).
pub fn emulator_port() -> u16 {
    slate_testkit::snowflake().port
}

/// A Snowflake source's settings for the server at `port` (plain HTTP) and `database`; the
/// password is in `SLATE_TEST_SNOWFLAKE_PASSWORD` (.cargo/config.toml; the emulator accepts any).
pub fn config(port: u16, database: &str) -> SnowflakeConfig {
    SnowflakeConfig {
        account: "slate-test".into(),
        user: "tester".into(),
        host: Some(slate_testkit::snowflake().host.clone()),
        port: Some(port),
        scheme: "http".into(),
        database: Some(database.into()),
        schema: Some("PUBLIC".into()),
        warehouse: Some("TEST_WH".into()),
        role: None,
        password_env: Some("SLATE_TEST_SNOWFLAKE_PASSWORD".into()),
        private_key_env: None,
        private_key_file: None,
        connect_timeout_secs: 5,
        attempts: 2,
        span: Span::file("slate.yaml"),
    }
}

pub async fn open(c: SnowflakeConfig) -> Box<dyn Source> {
    slate_sources::open(
        "warehouse",
        &SourceConfig::Snowflake(Box::new(c)),
        Path::new("."),
        None,
    )
    .await
    .expect("open")
}
