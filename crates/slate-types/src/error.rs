//! Error kinds shared by every crate: who must act, and whether retrying can help.

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The project or the request is wrong; the user must change it.
    User,
    /// A source, store or service outside Slate failed; a retry may help.
    External,
    /// A bug in Slate.
    Internal,
}

impl ErrorKind {
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::External)
    }

    /// Process exit code for the CLI: 2 for user errors, 3 for external failures, 1 otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::User => 2,
            ErrorKind::External => 3,
            ErrorKind::Internal => 1,
        }
    }
}
