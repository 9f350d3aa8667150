//! `slate.yaml` and `src/queries.yaml`: environments, sources and scheduled queries.

use super::*;

impl Resolver {
    pub fn project_file(&mut self, node: &Node) {
        let Some(entries) = self.expect_map(node, "slate.yaml") else {
            return;
        };
        self.unknown_keys(node, "slate.yaml", &["name", "environments", "serve"]);
        if let Some(serve) = node.get("serve") {
            self.unknown_keys(serve, "`serve`", &["listen", "auth_token_env"]);
            self.serve = ServeConfig {
                listen: serve
                    .get("listen")
                    .and_then(Node::as_str)
                    .map(str::to_string),
                auth_token_env: serve
                    .get("auth_token_env")
                    .and_then(Node::as_str)
                    .map(str::to_string),
            };
        }
        self.name = node
            .get("name")
            .and_then(Node::as_str)
            .unwrap_or("slate")
            .to_string();
        let Some(envs) = node.get("environments") else {
            self.err(
                &entries
                    .first()
                    .map(|e| e.0.span.clone())
                    .unwrap_or(node.span.clone()),
                "slate.yaml has no `environments`",
                "add `environments: {default: {sources: ...}}`",
            );
            return;
        };
        let Some(envs) = self.expect_map(envs, "environments") else {
            return;
        };
        for (k, v) in envs {
            let name = k.as_str().unwrap_or_default().to_string();
            if let Some(env) = self.environment(&name, v) {
                self.environments.insert(name, env);
            }
        }
        if !self.environments.contains_key("default") && self.diags.is_empty() {
            self.err(
                &node.span,
                "no `default` environment",
                "every project needs an environment named `default`",
            );
        }
    }

    pub(super) fn environment(&mut self, name: &str, node: &Node) -> Option<Environment> {
        self.expect_map(node, "an environment")?;
        self.unknown_keys(
            node,
            "an environment",
            &[
                "state_dir",
                "offline_retention",
                "memory_limit",
                "sources",
                "online",
                "metadata",
            ],
        );
        let state_dir = node
            .get("state_dir")
            .and_then(Node::as_str)
            .unwrap_or(".slate");
        let offline_retention_secs = match node.get("offline_retention") {
            None => 7 * 86_400,
            Some(n) => match parse_duration_secs(n.as_str().unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => {
                    self.err(
                        &n.span,
                        format!("bad offline_retention: {e}"),
                        "e.g. `offline_retention: 7d` (`0s` deletes replaced files at once)",
                    );
                    7 * 86_400
                }
            },
        };
        let memory_limit_bytes = node.get("memory_limit").and_then(|n| {
            let text = n.as_str().unwrap_or_default();
            match slate_types::parse_size_bytes(text) {
                Ok(0) | Err(_) => {
                    self.err(
                        &n.span,
                        format!("bad memory_limit: `{text}` is not a positive size"),
                        "e.g. `memory_limit: 2GB` (binary units: 1 GB = 1024 MB)",
                    );
                    None
                }
                Ok(b) => Some(b),
            }
        });
        let mut sources = BTreeMap::new();
        if let Some(srcs) = node
            .get("sources")
            .and_then(|s| self.expect_map(s, "sources"))
        {
            for (k, v) in srcs {
                let sname = k.as_str().unwrap_or_default().to_string();
                let kind = v.get("kind").and_then(Node::as_str).unwrap_or("embedded");
                let config = match kind {
                    "embedded" => self.embedded_source(v),
                    "postgres" => {
                        SourceConfig::Postgres(self.postgres(v, "a postgres source", &[]))
                    }
                    "snowflake" => self.snowflake_source(v),
                    _ => {
                        self.err(
                            &v.span_of("kind"),
                            format!("source kind `{kind}` is not available"),
                            "use `kind: embedded` (local Parquet and CSV files), `kind: postgres` or `kind: snowflake`",
                        );
                        continue;
                    }
                };
                sources.insert(sname, config);
            }
        }
        let online = match node.get("online") {
            None => OnlineConfig::Embedded,
            Some(o) => self.online_store(o),
        };
        let metadata = match node.get("metadata") {
            None => MetadataConfig::Embedded,
            Some(m) => self.metadata_store(m),
        };
        Some(Environment {
            name: name.to_string(),
            sources,
            state_dir: PathBuf::from(state_dir),
            offline_retention_secs,
            memory_limit_bytes,
            online,
            metadata,
        })
    }

    fn embedded_source(&mut self, v: &Node) -> SourceConfig {
        self.unknown_keys(v, "an embedded source", &["kind", "path", "dialect"]);
        let path = v.get("path").and_then(Node::as_str).unwrap_or("data");
        let dialect = v
            .get("dialect")
            .and_then(Node::as_str)
            .unwrap_or("snowflake")
            .to_string();
        SourceConfig::Embedded {
            path: PathBuf::from(path),
            dialect,
            span: v.span_of("path"),
        }
    }

    fn online_store(&mut self, v: &Node) -> OnlineConfig {
        if self.expect_map(v, "`online`").is_none() {
            return OnlineConfig::Embedded;
        }
        let kind = v.get("kind").and_then(Node::as_str).unwrap_or("embedded");
        match kind {
            "embedded" => {
                self.unknown_keys(v, "an embedded online store", &["kind"]);
                return OnlineConfig::Embedded;
            }
            "redis" => {}
            _ => {
                self.err(
                    &v.span_of("kind"),
                    format!("online store kind `{kind}` is not available"),
                    "use `kind: embedded` (redb in the state directory) or `kind: redis`",
                );
                return OnlineConfig::Embedded;
            }
        }
        self.unknown_keys_but(
            v,
            "a redis online store",
            &[
                "kind",
                "host",
                "port",
                "db",
                "user",
                "password_env",
                "url_env",
                "prefix",
                "ttl",
            ],
            &["password"],
        );
        self.secret_keys(v);
        let text = |k: &str| v.get(k).and_then(Node::as_str).map(str::to_string);
        let mut number = |k: &str, max: u64| {
            v.get(k)
                .and_then(|n| match n.as_str().and_then(|t| t.parse::<u64>().ok()) {
                    Some(x) if x <= max => Some(x),
                    _ => {
                        self.err(
                            &n.span,
                            format!("`{k}` must be a whole number from 0 to {max}"),
                            "e.g. `port: 6379`, `db: 0`",
                        );
                        None
                    }
                })
        };
        let port = number("port", 65_535).map(|p| p as u16);
        let db = number("db", 1 << 20).map(|d| d as i64);
        let mut ttl_secs = BTreeMap::new();
        match v.get("ttl") {
            None => {}
            Some(t) if t.as_str().is_some() => {
                if let Some(s) = self.positive_duration(t, "ttl") {
                    ttl_secs.insert("default".to_string(), s);
                }
            }
            Some(t) => {
                for (k, d) in self.expect_map(t, "`ttl`").unwrap_or_default() {
                    let feature = k.as_str().unwrap_or_default().to_ascii_lowercase();
                    if let Some(s) = self.positive_duration(d, "ttl") {
                        ttl_secs.insert(feature, s);
                    }
                }
            }
        }
        OnlineConfig::Redis(Box::new(RedisConfig {
            host: text("host"),
            port,
            db,
            user: text("user"),
            password_env: text("password_env"),
            url_env: text("url_env"),
            prefix: text("prefix"),
            ttl_secs,
            span: v.span_of("kind"),
        }))
    }

    fn positive_duration(&mut self, n: &Node, key: &str) -> Option<i64> {
        match parse_duration_secs(n.as_str().unwrap_or_default()) {
            Ok(s) if s > 0 => Some(s),
            _ => {
                self.err(
                    &n.span,
                    format!("bad `{key}`"),
                    format!("a positive duration, e.g. `{key}: 30d`"),
                );
                None
            }
        }
    }

    /// `password_env` and `url_env` name environment variables; a `password` is refused
    /// without showing its line.
    fn secret_keys(&mut self, v: &Node) {
        for k in ["password_env", "url_env"] {
            if let Some(n) = v.get(k)
                && !n.as_str().is_some_and(is_env_var_name)
            {
                self.err(
                    &n.span,
                    format!("`{k}` names an environment variable (letters, digits, `_`)"),
                    "secrets are never written in slate.yaml: put the value in an environment variable and name it here",
                );
            }
        }
        if let Some((key, _)) = v
            .entries()
            .unwrap_or_default()
            .iter()
            .find(|(k, _)| k.as_str() == Some("password"))
        {
            // The line is not shown: it holds the password.
            self.diags.push(
                Diagnostic::new(key.span.clone(), "a password is never written in slate.yaml")
                    .hint("remove it, set it in an environment variable and name that variable with `password_env`")
                    .without_quote(),
            );
        }
    }

    fn snowflake_source(&mut self, v: &Node) -> SourceConfig {
        self.unknown_keys_but(
            v,
            "a snowflake source",
            &[
                "kind",
                "account",
                "user",
                "host",
                "port",
                "scheme",
                "database",
                "schema",
                "warehouse",
                "role",
                "password_env",
                "private_key_env",
                "private_key_file",
                "connect_timeout",
                "attempts",
            ],
            &["password", "private_key"],
        );
        self.secret_keys(v);
        if let Some(n) = v.get("private_key_env")
            && !n.as_str().is_some_and(is_env_var_name)
        {
            self.err(
                &n.span,
                "`private_key_env` names an environment variable (letters, digits, `_`)",
                "put the PEM text of the private key in an environment variable and name it here",
            );
        }
        if let Some((key, _)) = v
            .entries()
            .unwrap_or_default()
            .iter()
            .find(|(k, _)| k.as_str() == Some("private_key"))
        {
            self.diags.push(
                Diagnostic::new(key.span.clone(), "a private key is never written in slate.yaml")
                    .hint("put it in an environment variable and name that variable with `private_key_env`")
                    .without_quote(),
            );
        }
        let text = |k: &str| v.get(k).and_then(Node::as_str).map(str::to_string);
        let mut required = |k: &str, example: &str| match text(k) {
            Some(t) if !t.is_empty() => t,
            _ => {
                self.err(
                    &v.span_of("kind"),
                    format!("a snowflake source needs `{k}`"),
                    format!("e.g. `{k}: {example}`"),
                );
                String::new()
            }
        };
        let account = required("account", "myorg-myaccount");
        let user = required("user", "SLATE_SERVICE");
        if ["password_env", "private_key_env", "private_key_file"]
            .iter()
            .all(|k| v.get(k).is_none())
        {
            self.err(
                &v.span_of("kind"),
                "a snowflake source needs `password_env`, `private_key_env` or `private_key_file`",
                "name the environment variable that holds the password or the private key, or the file that holds the key (key-pair authentication)",
            );
        }
        let scheme = match text("scheme").as_deref() {
            None | Some("https") => "https".to_string(),
            Some("http") => "http".to_string(),
            Some(other) => {
                self.err(
                    &v.span_of("scheme"),
                    format!("scheme `{other}` is not available"),
                    "use `scheme: https` (the default) or `scheme: http` (a local emulator)",
                );
                "https".to_string()
            }
        };
        let common = self.connection_settings(v, 443);
        SourceConfig::Snowflake(Box::new(SnowflakeConfig {
            account,
            user,
            host: text("host"),
            port: common.port,
            scheme,
            database: text("database"),
            schema: text("schema"),
            warehouse: text("warehouse"),
            role: text("role"),
            password_env: text("password_env"),
            private_key_env: text("private_key_env"),
            private_key_file: text("private_key_file").map(PathBuf::from),
            connect_timeout_secs: common.connect_timeout_secs,
            attempts: common.attempts,
            span: v.span_of("kind"),
        }))
    }

    /// `port` (`default_port` in hints), `attempts` and `connect_timeout` of a connection to a
    /// server.
    fn connection_settings(&mut self, v: &Node, default_port: u64) -> ConnectionSettings {
        let mut number = |k: &str, default: u64, max: u64| match v.get(k) {
            None => default,
            Some(n) => match n.as_str().and_then(|t| t.parse::<u64>().ok()) {
                Some(x) if (1..=max).contains(&x) => x,
                _ => {
                    self.err(
                        &n.span,
                        format!("`{k}` must be a whole number from 1 to {max}"),
                        format!("e.g. `{k}: {default}`"),
                    );
                    default
                }
            },
        };
        let port = v
            .get("port")
            .map(|_| number("port", default_port, 65_535) as u16);
        let attempts = number("attempts", 3, 100) as u32;
        let connect_timeout_secs = match v.get("connect_timeout") {
            None => 10,
            Some(n) => match parse_duration_secs(n.as_str().unwrap_or_default()) {
                Ok(s) if s > 0 => s as u64,
                _ => {
                    self.err(
                        &n.span,
                        "bad connect_timeout",
                        "a positive duration, e.g. `connect_timeout: 10s`",
                    );
                    10
                }
            },
        };
        ConnectionSettings {
            port,
            attempts,
            connect_timeout_secs,
        }
    }

    fn metadata_store(&mut self, v: &Node) -> MetadataConfig {
        if self.expect_map(v, "`metadata`").is_none() {
            return MetadataConfig::Embedded;
        }
        let kind = v.get("kind").and_then(Node::as_str).unwrap_or("embedded");
        match kind {
            "embedded" => {
                self.unknown_keys(v, "an embedded metadata store", &["kind"]);
                MetadataConfig::Embedded
            }
            "postgres" => {
                let connection = self.postgres(v, "a postgres metadata store", &["namespace"]);
                let namespace = v.get("namespace").and_then(|n| match n.as_str() {
                    Some(t) if !t.is_empty() => Some(t.to_string()),
                    _ => {
                        self.err(
                            &n.span,
                            "`namespace` must be a non-empty text",
                            "e.g. `namespace: fraud/prod`",
                        );
                        None
                    }
                });
                MetadataConfig::Postgres {
                    connection,
                    namespace,
                }
            }
            _ => {
                self.err(
                    &v.span_of("kind"),
                    format!("metadata store kind `{kind}` is not available"),
                    "use `kind: embedded` (the state directory) or `kind: postgres`",
                );
                MetadataConfig::Embedded
            }
        }
    }

    /// A PostgreSQL connection's settings (`what` names the object in messages); `extra` are
    /// the object's other keys.
    fn postgres(&mut self, v: &Node, what: &str, extra: &[&str]) -> PostgresConfig {
        let mut known = vec![
            "kind",
            "host",
            "port",
            "database",
            "user",
            "password_env",
            "url_env",
            "connect_timeout",
            "attempts",
        ];
        known.extend_from_slice(extra);
        self.unknown_keys_but(v, what, &known, &["password"]);
        let text = |k: &str| v.get(k).and_then(Node::as_str).map(str::to_string);
        let ConnectionSettings {
            port,
            attempts,
            connect_timeout_secs,
        } = self.connection_settings(v, 5432);
        self.secret_keys(v);
        PostgresConfig {
            host: text("host"),
            port,
            database: text("database"),
            user: text("user"),
            password_env: text("password_env"),
            url_env: text("url_env"),
            connect_timeout_secs,
            attempts,
            span: v.span_of("kind"),
        }
    }

    pub(super) fn resolve_queries(&mut self, node: &Node) -> Vec<ScheduledQuery> {
        let items = match &node.kind {
            NodeKind::Seq(items) => items.clone(),
            _ => {
                self.err(
                    &node.span,
                    "src/queries.yaml must be a list of scheduled queries",
                    "start each query with `- name: ...`",
                );
                return vec![];
            }
        };
        let mut out = Vec::new();
        for q in &items {
            if self.expect_map(q, "a scheduled query").is_none() {
                continue;
            }
            self.unknown_keys(
                q,
                "a scheduled query",
                &[
                    "name",
                    "schedule",
                    "output",
                    "store_online",
                    "store_offline",
                    "tags",
                    "required_resolver_tags",
                    "incremental_resolvers",
                    "lower_bound",
                    "catch_up",
                    "description",
                ],
            );
            let Some(name) = q.get("name").and_then(Node::as_str).map(str::to_string) else {
                self.err(&q.span, "scheduled query has no `name`", "add `name: ...`");
                continue;
            };
            let schedule = q.get("schedule").and_then(|s| {
                let text = s.as_str().unwrap_or_default();
                match text.parse::<croner::Cron>() {
                    Ok(_) => Some(text.to_string()),
                    Err(e) => {
                        self.err(&s.span, format!("bad cron schedule `{text}`: {e}"), "five fields: minute hour day-of-month month day-of-week, e.g. `0 0 * * *`");
                        None
                    }
                }
            });
            let mut output = Vec::new();
            let mut output_spans = Vec::new();
            for o in q
                .get("output")
                .map(|n| match &n.kind {
                    NodeKind::Seq(i) => i.clone(),
                    _ => vec![n.clone()],
                })
                .unwrap_or_default()
            {
                if let Some((r, _)) = self.feature_ref(o.as_str().unwrap_or_default(), &o.span) {
                    output.push(r);
                    output_spans.push(o.span.clone());
                }
            }
            let incremental_resolvers = q
                .get("incremental_resolvers")
                .and_then(str_list)
                .unwrap_or_default();
            for r in &incremental_resolvers {
                match self.sql_resolvers.iter().find(|s| &s.name == r) {
                    Some(s) if s.incremental.is_some() => {}
                    _ if self.failed.contains(r) => {}
                    found => {
                        let span = q.span_of("incremental_resolvers");
                        let why = if found.is_some() {
                            "has no `incremental:` header"
                        } else {
                            "is not a SQL resolver of this project"
                        };
                        self.err(
                            &span,
                            format!("incremental resolver `{r}` {why}"),
                            "name a `.chalk.sql` resolver with an `incremental:` header",
                        );
                    }
                }
            }
            let lower_bound_micros = q.get("lower_bound").and_then(|n| {
                let t = n.as_str().unwrap_or_default();
                match slate_types::parse_rfc3339_micros(t) {
                    Some(v) => Some(v),
                    None => {
                        self.err(
                            &n.span,
                            format!("bad lower_bound `{t}`"),
                            "write an RFC 3339 time, e.g. `2026-01-01T00:00:00Z`",
                        );
                        None
                    }
                }
            });
            let catch_up = match q.get("catch_up") {
                None => CatchUp::Latest,
                Some(n) => match n.as_str().unwrap_or_default() {
                    "latest" => CatchUp::Latest,
                    "all" => CatchUp::All,
                    "none" => CatchUp::None,
                    other => {
                        self.err(
                            &n.span,
                            format!("unknown catch_up policy `{other}`"),
                            "`latest` (the default), `all` or `none`",
                        );
                        CatchUp::Latest
                    }
                },
            };
            out.push(ScheduledQuery {
                name,
                span: q.span.clone(),
                schedule,
                output,
                output_spans,
                store_online: q.get("store_online").and_then(as_bool).unwrap_or(false),
                store_offline: q.get("store_offline").and_then(as_bool).unwrap_or(false),
                tags: q.get("tags").and_then(str_list).unwrap_or_default(),
                required_resolver_tags: q
                    .get("required_resolver_tags")
                    .and_then(str_list)
                    .unwrap_or_default(),
                incremental_resolvers,
                lower_bound_micros,
                catch_up,
            });
        }
        out
    }
}

fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The settings every connection to a server takes.
struct ConnectionSettings {
    port: Option<u16>,
    attempts: u32,
    connect_timeout_secs: u64,
}
