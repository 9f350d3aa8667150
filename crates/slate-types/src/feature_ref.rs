//! Feature references in the seed's notation: `Transaction.user.num_transactions["1d"]`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureRefError {
    #[error(
        "`{text}` is not a feature reference: expected `Class.feature`, `Class.relation.feature` or `Class.feature[\"window\"]`"
    )]
    Malformed { text: String },
}

/// A parsed reference: a root class, a path of relation names, a feature and an optional window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeatureRef {
    pub class: String,
    /// Relations followed from the root class, in order (`["user"]`).
    pub path: Vec<String>,
    pub feature: String,
    pub window: Option<String>,
}

impl FeatureRef {
    pub fn parse(text: &str) -> Result<Self, FeatureRefError> {
        let malformed = || FeatureRefError::Malformed {
            text: text.to_string(),
        };
        let t = text.trim();
        let (body, window) = match t.find('[') {
            Some(open) => {
                let rest = &t[open..];
                let inner = rest
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(malformed)?
                    .trim();
                let w = inner
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                    .ok_or_else(malformed)?;
                if w.is_empty() {
                    return Err(malformed());
                }
                (&t[..open], Some(w.to_string()))
            }
            None => (t, None),
        };
        let parts: Vec<&str> = body.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| !is_identifier(p)) {
            return Err(malformed());
        }
        Ok(FeatureRef {
            class: parts[0].to_string(),
            path: parts[1..parts.len() - 1]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            feature: parts[parts.len() - 1].to_string(),
            window,
        })
    }

    /// The column name used for this reference in data frames and stores:
    /// `transaction.user.num_transactions__1d`.
    pub fn column_name(&self) -> String {
        let mut s = self.class.to_lowercase();
        for p in &self.path {
            s.push('.');
            s.push_str(p);
        }
        s.push('.');
        s.push_str(&self.feature);
        if let Some(w) = &self.window {
            s.push_str("__");
            s.push_str(w);
        }
        s
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class)?;
        for p in &self.path {
            write!(f, ".{p}")?;
        }
        write!(f, ".{}", self.feature)?;
        if let Some(w) = &self.window {
            write!(f, "[\"{w}\"]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_notation() {
        let r = FeatureRef::parse(r#"Transaction.user.num_transactions["1d"]"#).expect("parses");
        assert_eq!(r.class, "Transaction");
        assert_eq!(r.path, vec!["user".to_string()]);
        assert_eq!(r.feature, "num_transactions");
        assert_eq!(r.window.as_deref(), Some("1d"));
        assert_eq!(r.to_string(), r#"Transaction.user.num_transactions["1d"]"#);
        assert_eq!(r.column_name(), "transaction.user.num_transactions__1d");
        let plain = FeatureRef::parse("Transaction.is_fraud").expect("parses");
        assert!(plain.path.is_empty() && plain.window.is_none());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "Transaction",
            "Transaction.",
            "a..b",
            "T.x[1d]",
            "T.x[\"\"]",
            "T.x[\"1d\"",
        ] {
            assert!(FeatureRef::parse(bad).is_err(), "{bad}");
        }
    }
}
