//! Diagnostics: what is wrong, where (file:line:col) and what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a project file. Lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Span {
    pub fn new(file: impl Into<PathBuf>, line: usize, col: usize) -> Self {
        Span {
            file: file.into(),
            line,
            col,
        }
    }

    /// The whole file, for problems that have no better position.
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Span {
            file: file.into(),
            line: 1,
            col: 1,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
    /// Whether rendering shows the offending line (not for a line that holds a secret).
    pub quote: bool,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
            hint: None,
            quote: true,
        }
    }

    /// A diagnostic whose line is not shown, because it holds a secret.
    pub fn without_quote(mut self) -> Self {
        self.quote = false;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Renders the diagnostic with the offending source line, reading it from `root`.
    pub fn render(&self, root: &Path) -> String {
        let mut out = format!("error: {}\n  --> {}\n", self.message, self.span);
        let source = std::fs::read_to_string(root.join(&self.span.file)).ok();
        if let Some(line) = source
            .as_deref()
            .filter(|_| self.quote)
            .and_then(|s| s.lines().nth(self.span.line - 1))
        {
            let n = self.span.line.to_string();
            let pad = " ".repeat(n.len());
            out.push_str(&format!("{pad} |\n{n} | {line}\n{pad} | "));
            out.push_str(&" ".repeat(self.span.col.saturating_sub(1)));
            out.push_str("^\n");
        }
        if let Some(h) = &self.hint {
            out.push_str(&format!("  = hint: {h}\n"));
        }
        out
    }
}

/// All problems found in a project, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.span.file, a.span.line, a.span.col).cmp(&(&b.span.file, b.span.line, b.span.col))
        });
    }

    pub fn render(&self, root: &Path) -> String {
        let mut out: String = self.0.iter().map(|d| d.render(root) + "\n").collect();
        let n = self.0.len();
        out.push_str(&format!(
            "error: project has {n} problem{}; nothing was written\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{}: {}", d.span, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
