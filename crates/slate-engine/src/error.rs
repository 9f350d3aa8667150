//! Engine errors: each names the object involved and says who must act.

use slate_types::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no scheduled query named `{name}`; known queries: {known}")]
    UnknownQuery { name: String, known: String },
    #[error("no environment named `{name}` in slate.yaml; known environments: {known}")]
    UnknownEnvironment { name: String, known: String },
    #[error("cannot plan `{query}`: {reason}")]
    Plan { query: String, reason: String },
    #[error("resolver `{resolver}` returned a bad value: {reason}")]
    BadValue { resolver: String, reason: String },
    #[error(transparent)]
    Source(#[from] slate_sources::SourceError),
    #[error(transparent)]
    Store(#[from] slate_stores::StoreError),
    #[error(transparent)]
    Model(#[from] slate_model::ModelError),
    /// The run lock is taken; `holder` names it (`the state directory ...`).
    #[error("another run holds {holder}; try again when it has finished")]
    Busy { holder: String },
    /// A scheduled tick that another run (another service's) committed while this one waited.
    #[error("run {run_id} has already committed")]
    TickDone { run_id: String },
    #[error("function resolver `{name}`: {reason}")]
    Function { name: String, reason: String },
    /// A setting of the environment that cannot be used (an unset variable, a bad URL).
    #[error("environment `{env}`: {reason}")]
    Environment { env: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn unknown_query(project: &slate_project::Project, name: &str) -> Self {
        let known: Vec<&str> = project.queries.iter().map(|q| q.name.as_str()).collect();
        EngineError::UnknownQuery {
            name: name.into(),
            known: known.join(", "),
        }
    }

    pub fn unknown_environment(project: &slate_project::Project, name: &str) -> Self {
        let known: Vec<&str> = project.environments.keys().map(String::as_str).collect();
        EngineError::UnknownEnvironment {
            name: name.into(),
            known: known.join(", "),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::UnknownQuery { .. }
            | EngineError::UnknownEnvironment { .. }
            | EngineError::Plan { .. }
            | EngineError::BadValue { .. }
            | EngineError::Function { .. }
            | EngineError::Environment { .. } => ErrorKind::User,
            EngineError::Busy { .. } | EngineError::TickDone { .. } => ErrorKind::External,
            EngineError::Source(e) => e.kind(),
            EngineError::Store(e) => e.kind(),
            EngineError::Model(e) => e.kind(),
            EngineError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether this is a scheduled tick found already committed (nothing ran, nothing failed).
    pub fn is_tick_done(&self) -> bool {
        matches!(self, EngineError::TickDone { .. })
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            EngineError::Source(e) => e.hint().map(str::to_string),
            EngineError::UnknownQuery { .. } => {
                Some("run `slate apply` to list the project's scheduled queries".into())
            }
            _ => None,
        }
    }
}

impl From<arrow::error::ArrowError> for EngineError {
    fn from(e: arrow::error::ArrowError) -> Self {
        EngineError::Internal(e.to_string())
    }
}
