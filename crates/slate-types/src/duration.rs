//! Durations as written in projects (`60m`, `1d`, `10d`, `1h30m`) and aggregation windows.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "`{text}` is not a duration: expected a number followed by a unit (s, m, h, d, w), e.g. `60m` or `1d`"
    )]
    Malformed { text: String },
    #[error("duration `{text}` is zero; a window or lookback must be positive")]
    Zero { text: String },
    #[error("duration `{text}` is too large")]
    Overflow { text: String },
}

/// Parses `90s`, `60m`, `1h`, `1d`, `2w` or concatenations such as `1h30m` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<i64, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed {
        text: text.to_string(),
    };
    let overflow = || DurationError::Overflow {
        text: text.to_string(),
    };
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(malformed()),
        };
        if digits.is_empty() {
            return Err(malformed());
        }
        let n: i64 = digits.parse().map_err(|_| overflow())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(overflow)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(malformed());
    }
    if total == 0 {
        return Err(DurationError::Zero {
            text: text.to_string(),
        });
    }
    Ok(total)
}

/// The span of a windowed aggregation: rows with `now - w <= ts < now`, or no lower bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Window {
    /// A bounded window; `label` is the name used in references (`"1d"`).
    Bounded {
        label: String,
        secs: i64,
    },
    All,
}

impl Window {
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        if text.trim() == "all" {
            return Ok(Window::All);
        }
        Ok(Window::Bounded {
            label: text.trim().to_string(),
            secs: parse_duration_secs(text)?,
        })
    }

    pub fn label(&self) -> &str {
        match self {
            Window::Bounded { label, .. } => label,
            Window::All => "all",
        }
    }

    /// Window length in microseconds, `None` for `all`.
    pub fn micros(&self) -> Option<i64> {
        match self {
            Window::Bounded { secs, .. } => Some(secs.saturating_mul(1_000_000)),
            Window::All => None,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration_secs("60m"), Ok(3600));
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5_400));
        assert_eq!(parse_duration_secs("2w"), Ok(1_209_600));
    }

    #[test]
    fn rejects_bad_durations() {
        assert!(matches!(
            parse_duration_secs("10x"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_secs("d"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_secs("10"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_secs("0m"),
            Err(DurationError::Zero { .. })
        ));
        assert!(matches!(parse_duration_secs(""), Err(DurationError::Empty)));
    }

    #[test]
    fn windows() {
        assert_eq!(Window::parse("all"), Ok(Window::All));
        assert_eq!(
            Window::parse("1d").map(|w| w.micros()),
            Ok(Some(86_400_000_000))
        );
    }
}
