//! Times as written by people: RFC 3339 in UTC (`2026-10-30T23:59:32Z`), to and from
//! microseconds since the Unix epoch.

const DAY_SECS: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number, inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-01-01T00:00:00Z`, `2026-01-01T00:00:00.5Z` or a date alone, in UTC.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let t = text.trim();
    let (date, time) = t.split_once('T').unwrap_or((t, "00:00:00Z"));
    let time = time.strip_suffix('Z')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let tm: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, da], [h, mi, s]) = (d.as_slice(), tm.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(mo) || !(1..=31).contains(da) || *h > 23 || *mi > 59 || *s > 59 {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<6}").parse::<i64>().ok()?
    };
    let secs = days_from_civil(*y, *mo, *da) * DAY_SECS + h * 3600 + mi * 60 + s;
    Some(secs * 1_000_000 + micros)
}

/// RFC 3339 in UTC, with fractional seconds only when there are any.
pub fn format_rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(DAY_SECS));
    let s = secs.rem_euclid(DAY_SECS);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    );
    if frac == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{}Z", format!("{frac:06}").trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-09-01T00:00:00Z",
            "2026-10-30T23:59:32.25Z",
            "2000-02-29T12:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            let m = parse_rfc3339_micros(text).expect(text);
            assert_eq!(format_rfc3339(m), text);
        }
        assert_eq!(
            parse_rfc3339_micros("2026-09-01T00:00:00Z"),
            Some(1_788_220_800_000_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2026-09-01"),
            Some(1_788_220_800_000_000)
        );
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-09-01T24:00:00Z",
            "yesterday",
            "2026-09-01T00:00:00",
            "2026-09-01T00:00:00.1234567Z",
        ] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
    }
}
