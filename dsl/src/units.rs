//! Parsing and formatting of the human units a workflow (or policy) writes: sizes (`512m`, `1g`),
//! CPU counts (`0.5`, `2`) and durations (`30s`, `1m30s`, `500ms`).
//!
//! This module owns only the text <-> number conversion. It knows nothing about YAML, spans or
//! which values are allowed where (the minimums live with the validation that reports them).

use std::time::Duration;

/// What a size may look like; used as the `help` of every size error.
pub const SIZE_HELP: &str =
    "expected a number with an optional unit b, k, m, g, t (binary, case-insensitive; also kb/mb/gb, ki/mi/gi), e.g. 512m, 1g";
/// What a duration may look like.
pub const DURATION_HELP: &str = "expected a duration such as 30s, 10m, 1h, 500ms or 1m30s (a bare number is seconds), greater than 0";
/// What a CPU count may look like.
pub const CPUS_HELP: &str = "expected a positive number of CPUs, e.g. 0.5, 1 or 2 (at most 3 decimals)";

/// What a process count may look like.
pub const PIDS_HELP: &str = "expected a positive whole number, e.g. 256";

/// Parses a positive whole number (`pids`).
pub fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|n| *n > 0)
}

/// Splits `12.5mb` into (`12.5`, `mb`).
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// Parses a non-negative decimal into thousandths, exactly (no float rounding surprises).
fn parse_milli(num: &str) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 3 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut frac_milli: u128 = 0;
    for (i, c) in frac.chars().enumerate() {
        frac_milli += u128::from(c.to_digit(10)?) * 10u128.pow(2 - i as u32);
    }
    int.checked_mul(1000)?.checked_add(frac_milli)
}

/// Parses a size in bytes: `512m`, `1g`, `1.5GiB`, `1024` (bytes). Units are binary.
pub fn parse_size(text: &str) -> Option<u64> {
    let (num, unit) = split_number(text.trim());
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return None,
    };
    let milli = parse_milli(num)?;
    let bytes = milli.checked_mul(1u128 << shift)? / 1000;
    u64::try_from(bytes).ok()
}

/// Formats bytes with the largest unit that divides them exactly (`2g`, `512m`, `1000b`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}b")
}

/// Parses a CPU count (`0.5`, `2`) into millicpus; 0 is rejected.
pub fn parse_cpus(text: &str) -> Option<u64> {
    let milli = u64::try_from(parse_milli(text.trim())?).ok()?;
    (milli > 0).then_some(milli)
}

/// Formats millicpus as the user would write them (`1.5`, `2`).
pub fn format_cpus(millicpus: u64) -> String {
    let (int, frac) = (millicpus / 1000, millicpus % 1000);
    if frac == 0 {
        int.to_string()
    } else {
        format!("{int}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// Parses a duration: `30s`, `10m`, `1h`, `500ms`, `1m30s`; a bare number is seconds. 0 is rejected.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total_ms: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..end];
        rest = &rest[end..];
        let uend = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..uend];
        rest = &rest[uend..];
        // A bare number is only allowed alone.
        if unit.is_empty() && num.len() != text.len() {
            return None;
        }
        let ms_per_unit: u128 = match unit.to_ascii_lowercase().as_str() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        // thousandths of the unit * ms per unit / 1000
        total_ms = total_ms.checked_add(parse_milli(num)?.checked_mul(ms_per_unit)? / 1000)?;
    }
    let ms = u64::try_from(total_ms).ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Formats a duration compactly (`1m30s`, `500ms`, `10m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    // Sub-second precision only matters for short limits.
    if (ms / 1000) * 1000 != ms && ms < 60_000 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, n) in [("h", 3600), ("m", 60)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("1Gi"), Some(1 << 30));
        assert_eq!(parse_size("64Mi"), Some(64 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100b"), Some(100));
        assert_eq!(parse_size("2t"), Some(2 << 40));
        assert_eq!(parse_size("12q"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("-1g"), None);
        assert_eq!(parse_size("1.2.3g"), None);
        assert_eq!(parse_size("99999999999t"), None);
    }

    #[test]
    fn size_format_round_trips() {
        for s in ["2g", "512m", "6m", "50m", "1k", "1000b", "3t"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Some(500));
        assert_eq!(parse_cpus("2"), Some(2000));
        assert_eq!(parse_cpus("1.25"), Some(1250));
        assert_eq!(parse_cpus("0"), None);
        assert_eq!(parse_cpus("0.0001"), None);
        assert_eq!(parse_cpus("-1"), None);
        assert_eq!(parse_cpus("two"), None);
        assert_eq!(format_cpus(1500), "1.5");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(250), "0.25");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("1m30"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn duration_format() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
