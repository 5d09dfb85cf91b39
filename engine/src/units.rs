//! Formatting of sizes and durations for messages, the inverse of what the front end parses.

use std::time::Duration;

/// `64m`, `1g`, `1536k`: the largest unit that divides exactly, in the spec's notation.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "t"), (1 << 30, "g"), (1 << 20, "m"), (1 << 10, "k")];
    for (size, suffix) in UNITS {
        if b >= size && b % size == 0 {
            return format!("{}{}", b / size, suffix);
        }
    }
    format!("{b}b")
}

/// `30s`, `10m`, `1h`, `1.5s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 {
        if secs % 3600 == 0 {
            return format!("{}h", secs / 3600);
        }
        if secs % 60 == 0 {
            return format!("{}m", secs / 60);
        }
        return format!("{secs}s");
    }
    if secs == 0 && d.subsec_millis() > 0 && d.subsec_nanos() % 1_000_000 == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(fmt_bytes(64 << 20), "64m");
        assert_eq!(fmt_bytes(1 << 30), "1g");
        assert_eq!(fmt_bytes(1536 << 10), "1536k");
        assert_eq!(fmt_bytes(1000), "1000b");
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }
}
