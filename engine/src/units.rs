//! Sizes and durations for people (the exact forms of limits are `dsl::units`').

/// Sizes for people: exact units when round (`512m`), else one decimal (`23.5g`, a host's
/// memory, a cache's size). [`dsl::units::format_size`] is the exact form used for limits.
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "t"), (1 << 30, "g"), (1 << 20, "m"), (1 << 10, "k")];
    for (size, suffix) in UNITS {
        if bytes >= size {
            let whole = bytes / size;
            if whole * size == bytes {
                return format!("{whole}{suffix}");
            }
            let text = format!("{:.1}", bytes as f64 / size as f64);
            return format!("{}{suffix}", text.trim_end_matches(".0"));
        }
    }
    format!("{bytes}b")
}

/// `45ms` below a second (container steps are often that short), then `1.2s`, `75.3s`: one
/// decimal of seconds, easy to compare down a column.
pub fn fmt_secs(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

/// "3s ago", "5m ago", "2h ago", "4d ago" from unix seconds.
pub fn fmt_age(unix_secs: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let age = now.saturating_sub(unix_secs);
    match age {
        0..=59 => format!("{age}s ago"),
        60..=3599 => format!("{}m ago", age / 60),
        3600..=86_399 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::fmt_size((23 << 30) + (512 << 20)), "23.5g");
        assert_eq!(super::fmt_size(512 << 20), "512m");
        assert_eq!(super::fmt_size(100), "100b");
    }
}
