//! The validated project: what every downstream crate works from.

use crate::diag::Span;
use slate_types::{FeatureRef, ValueType, Window};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Project {
    /// Directory holding `slate.yaml`.
    pub root: PathBuf,
    pub name: String,
    pub environments: BTreeMap<String, Environment>,
    pub classes: Vec<FeatureClass>,
    pub sql_resolvers: Vec<SqlResolver>,
    pub model_resolvers: Vec<ModelResolver>,
    pub function_resolvers: Vec<FunctionResolver>,
    pub queries: Vec<ScheduledQuery>,
    pub serve: ServeConfig,
}

/// `serve:` in slate.yaml: how `slate serve` listens and authenticates.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// Address to listen on when `--listen` is not given.
    pub listen: Option<String>,
    /// Name of the environment variable holding the bearer token every request must carry
    /// (except `GET /healthz`); no authentication when unset.
    pub auth_token_env: Option<String>,
}

/// A resolver written in Rust and registered through the library (`kind: function`): the
/// project declares its inputs and outputs; the program that runs the engine supplies the
/// function.
#[derive(Debug, Clone)]
pub struct FunctionResolver {
    pub name: String,
    pub file: PathBuf,
    pub span: Span,
    /// Features the function reads, in order; its input batch has one column per input.
    pub inputs: Vec<FeatureRef>,
    /// Scalar features of the row's own class that the function returns, in order.
    pub outputs: Vec<FeatureRef>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where embedded stores and the run ledger live, relative to the project root unless absolute.
    pub state_dir: PathBuf,
    /// How long the offline store keeps files a write replaced, for readers of older table
    /// versions (`offline_retention`, default 7 days).
    pub offline_retention_secs: i64,
    /// The memory a run's operators may hold before they spill to disk (`memory_limit`, e.g.
    /// `2GB`); unset: a share of the machine's memory.
    pub memory_limit_bytes: Option<u64>,
    /// Where the latest values are served from (`online:`; embedded redb by default).
    pub online: OnlineConfig,
    /// Where the run ledger, the watermarks and the run lock live (`metadata:`; the state
    /// directory by default).
    pub metadata: MetadataConfig,
}

#[derive(Debug, Clone, Default)]
pub enum MetadataConfig {
    /// `ledger.redb` and `run.lock` in the state directory: one machine.
    #[default]
    Embedded,
    /// Tables in a PostgreSQL database and an advisory lock there: every service of the
    /// environment shares one state, and one of them runs a given tick.
    Postgres {
        connection: PostgresConfig,
        /// What the environment's rows are filed under (default `<project>/<environment>`),
        /// so that several projects and environments share a database.
        namespace: Option<String>,
    },
}

#[derive(Debug, Clone, Default)]
pub enum OnlineConfig {
    /// `online.redb` in the state directory.
    #[default]
    Embedded,
    Redis(Box<RedisConfig>),
}

/// `online: {kind: redis, ...}`. The password, or a whole `redis://` URL, comes from the
/// environment variable named here, never from slate.yaml.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `127.0.0.1` and 6379 unless given here or in `url_env`'s URL.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The logical database number.
    pub db: Option<i64>,
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub url_env: Option<String>,
    /// What every key starts with (default `slate:<project name>`), so that several projects
    /// share a server.
    pub prefix: Option<String>,
    /// Time to live of a stored value after its write, per feature as the store names it
    /// (`transaction.is_fraud`), with `default` for the others; none when absent.
    pub ttl_secs: BTreeMap<String, i64>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Local Parquet and CSV files queried through DataFusion; a file's stem names its table.
    Embedded {
        path: PathBuf,
        dialect: String,
        span: Span,
    },
    /// A PostgreSQL database: the resolver's SQL runs there.
    Postgres(PostgresConfig),
    /// A Snowflake account: the resolver's SQL runs there.
    Snowflake(Box<SnowflakeConfig>),
}

impl SourceConfig {
    /// Where the source is defined in slate.yaml.
    pub fn span(&self) -> &Span {
        match self {
            SourceConfig::Embedded { span, .. } => span,
            SourceConfig::Postgres(c) => &c.span,
            SourceConfig::Snowflake(c) => &c.span,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Embedded { .. } => "embedded",
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Snowflake(_) => "snowflake",
        }
    }
}

/// `kind: postgres`. Secrets never appear in slate.yaml: the password (`password_env`) or a
/// whole connection string (`url_env`) is read from the environment variable named here when
/// the source is opened.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `localhost` and 5432 unless given here or in `url_env`'s connection string.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Environment variable holding a connection string (`postgresql://...` or `host=... `);
    /// the fields above, when given, override its parts.
    pub url_env: Option<String>,
    pub connect_timeout_secs: u64,
    /// Attempts of a query whose connection fails (refused, dropped mid-query), in all.
    pub attempts: u32,
    pub span: Span,
}

/// `kind: snowflake`. The password (`password_env`) or the key pair's private key
/// (`private_key_env`, a PKCS#8 PEM; or `private_key_file`, a file holding it) is read when the
/// source connects; neither is ever written in slate.yaml.
#[derive(Debug, Clone)]
pub struct SnowflakeConfig {
    /// The account identifier (`myorg-myaccount`, or a locator such as `xy12345.eu-west-1`).
    pub account: String,
    pub user: String,
    /// `<account>.snowflakecomputing.com` unless given (an emulator's host, a private link).
    pub host: Option<String>,
    /// 443 for https, 80 for http, unless given.
    pub port: Option<u16>,
    /// `https` (the default) or `http` (a local emulator).
    pub scheme: String,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub warehouse: Option<String>,
    pub role: Option<String>,
    pub password_env: Option<String>,
    /// Environment variable holding the private key's PEM text.
    pub private_key_env: Option<String>,
    /// A file holding the private key's PEM text (relative to the project directory).
    pub private_key_file: Option<PathBuf>,
    pub connect_timeout_secs: u64,
    /// Attempts of a request whose connection fails, in all.
    pub attempts: u32,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct FeatureClass {
    pub name: String,
    pub features: Vec<Feature>,
    pub primary_key: String,
    pub feature_time: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub kind: FeatureKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Scalar {
        ty: ValueType,
        default: Option<f64>,
    },
    HasOne {
        target: String,
        foreign_key: String,
    },
    HasMany {
        target: String,
        foreign_key: String,
    },
    Aggregate {
        ty: ValueType,
        agg: Aggregation,
        windows: Vec<Window>,
    },
    /// A row expression over other features of the same row (`amount * 2`,
    /// `coalesce(user.age, 0)`, `now - user.created_at`), in SQL, cast to `ty`.
    Expression {
        ty: ValueType,
        sql: String,
        refs: Vec<ExprRef>,
    },
}

/// A name in an expression: a feature reached from the expression's class (relative, with
/// `class` set to that class), or `now` when `feature` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprRef {
    /// Byte range of the name in the expression's text.
    pub start: usize,
    pub end: usize,
    pub feature: Option<FeatureRef>,
}

/// An aggregation over a has-many relation, evaluated at each row's `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    pub func: AggFunc,
    pub relation: String,
    /// The related class's feature aggregated; `None` for `count(relation)`.
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    CountDistinct,
    Sum,
    Mean,
    Min,
    Max,
    Latest,
    /// `now - latest(relation.ts)`, in seconds.
    TimeSinceLatest,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::CountDistinct => "count_distinct",
            AggFunc::Sum => "sum",
            AggFunc::Mean => "mean",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Latest => "latest",
            AggFunc::TimeSinceLatest => "time since latest",
        }
    }
}

impl FeatureClass {
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Scalar features with their types, in declaration order: the columns a resolver can return.
    pub fn scalar_features(&self) -> impl Iterator<Item = (&str, ValueType)> {
        self.features.iter().filter_map(|f| match f.kind {
            FeatureKind::Scalar { ty, .. } => Some((f.name.as_str(), ty)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncrementalMode {
    Row,
    Group,
    Parameter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncrementalTimestamp {
    FeatureTime,
    ResolverExecutionTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    pub mode: IncrementalMode,
    pub lookback_secs: i64,
    pub column: String,
    pub timestamp: IncrementalTimestamp,
}

#[derive(Debug, Clone)]
pub struct SqlResolver {
    pub name: String,
    /// Relative to the project root.
    pub file: PathBuf,
    pub description: String,
    pub source: String,
    pub resolves: String,
    pub tags: Vec<String>,
    pub environments: Vec<String>,
    pub incremental: Option<Incremental>,
    /// `timeout`: how long the source may take to return the rows; the run fails past it.
    pub timeout_secs: Option<i64>,
    /// The query as written, after the header.
    pub sql: String,
    /// Output column names, in order, each naming a scalar feature of `resolves`.
    pub columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ModelResolver {
    pub name: String,
    pub file: PathBuf,
    /// Absolute path of the ONNX file.
    pub model_path: PathBuf,
    pub model_span: Span,
    /// Inputs in order; the first is the root class's primary key, which identifies rows and is not
    /// passed to the model.
    pub inputs: Vec<FeatureRef>,
    pub input_spans: Vec<Span>,
    /// Per model input (all but the key): the value used when the feature is null; NaN otherwise.
    pub defaults: Vec<Option<f64>>,
    /// The feature set from the model's predicted label.
    pub output: FeatureRef,
    /// Optionally, the feature set from the model's probability of the positive class.
    pub score_output: Option<FeatureRef>,
    pub tags: Vec<String>,
}

impl ModelResolver {
    pub fn model_inputs(&self) -> &[FeatureRef] {
        &self.inputs[1..]
    }
}

#[derive(Debug, Clone)]
pub struct ScheduledQuery {
    pub name: String,
    pub span: Span,
    pub schedule: Option<String>,
    pub output: Vec<FeatureRef>,
    /// Where each output is written in src/queries.yaml.
    pub output_spans: Vec<Span>,
    pub store_online: bool,
    pub store_offline: bool,
    /// Tags that choose among several resolvers of one class (a resolver carrying all of them).
    pub tags: Vec<String>,
    /// Tags every resolver the query uses must carry (Chalk's `required_resolver_tags`).
    pub required_resolver_tags: Vec<String>,
    pub incremental_resolvers: Vec<String>,
    /// What `slate serve` does with ticks missed while it was down.
    pub catch_up: CatchUp,
    /// Earliest `incremental_column` value the first run reads, in microseconds.
    pub lower_bound_micros: Option<i64>,
}

/// Ticks missed while the scheduler was down: run only the latest (the default), all of them
/// in order, or none (only ticks after the scheduler started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    #[default]
    Latest,
    All,
    None,
}

impl Project {
    pub fn class(&self, name: &str) -> Option<&FeatureClass> {
        self.classes
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn query(&self, name: &str) -> Option<&ScheduledQuery> {
        self.queries.iter().find(|q| q.name == name)
    }

    pub fn sql_resolver(&self, name: &str) -> Option<&SqlResolver> {
        self.sql_resolvers.iter().find(|r| r.name == name)
    }

    /// The function resolver that produces `feature`, if any.
    pub fn function_resolver_for(&self, feature: &FeatureRef) -> Option<&FunctionResolver> {
        self.function_resolvers
            .iter()
            .find(|f| f.outputs.iter().any(|o| same_feature(o, feature)))
    }

    /// The model resolver that produces `feature`, if any.
    pub fn model_resolver_for(&self, feature: &FeatureRef) -> Option<&ModelResolver> {
        self.model_resolvers.iter().find(|m| {
            same_feature(&m.output, feature)
                || m.score_output
                    .as_ref()
                    .is_some_and(|s| same_feature(s, feature))
        })
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.get(name)
    }
}

/// Two references name the same feature (class names compare case-insensitively).
pub fn same_feature(a: &FeatureRef, b: &FeatureRef) -> bool {
    a.class.eq_ignore_ascii_case(&b.class)
        && a.path == b.path
        && a.feature == b.feature
        && a.window == b.window
}
