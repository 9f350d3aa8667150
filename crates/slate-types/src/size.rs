//! Sizes of memory as written in projects and on the command line (`2GB`, `512MiB`, `1.5G`).

/// A size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a size: expected a number with an optional unit (B, KB, MB, GB, TB; \
     1 KB = 1024 bytes; KiB, MiB, GiB, TiB and K, M, G, T mean the same), e.g. `2GB` or `512MiB`"
)]
pub struct SizeError {
    pub text: String,
}

/// Parses `2GB`, `512 MiB`, `1.5G` or `1073741824` into bytes. Units are binary (a gigabyte
/// is 2^30 bytes), as memory is counted; the result is rounded down to a whole byte.
pub fn parse_size_bytes(text: &str) -> Result<u64, SizeError> {
    let bad = || SizeError {
        text: text.to_string(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        for (text, want) in [
            ("2GB", 2u64 << 30),
            ("2 gb", 2 << 30),
            ("512MiB", 512 << 20),
            ("1.5G", 3 << 29),
            ("64k", 64 << 10),
            ("1024", 1024),
            ("7B", 7),
            ("1TB", 1 << 40),
        ] {
            assert_eq!(parse_size_bytes(text), Ok(want), "{text}");
        }
        for text in [
            "",
            "GB",
            "2XB",
            "-1GB",
            "1.GB",
            ".5G",
            "1e3",
            "2 G B",
            "99999999999TB",
        ] {
            let err = parse_size_bytes(text).expect_err(text);
            assert!(err.to_string().contains("is not a size"), "{err}");
        }
    }
}
