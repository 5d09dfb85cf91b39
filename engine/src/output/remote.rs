//! The run summary's remote cache lines: `remote cache oci://…: 3 hits (1.2 MB down), 5 uploads
//! (4.0 MB up, 12 blobs already there)`, then what was not shared and why.

use crate::events::RemoteSummary;
use crate::units::fmt_size;

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary lines of the remote cache (after the steps' table).
pub(crate) fn summary_lines(s: &RemoteSummary) -> Vec<String> {
    let mut parts = Vec::new();
    if s.mode != "write" {
        parts.push(format!("{} ({} down)", plural(s.hits, "hit", "hits"), fmt_size(s.bytes_down)));
        if s.damaged > 0 {
            parts.push(format!("{} damaged", s.damaged));
        }
    }
    if s.mode != "read" {
        parts.push(format!(
            "{} ({} up, {} already there)",
            plural(s.uploads, "upload", "uploads"),
            fmt_size(s.bytes_up),
            plural(s.blobs_skipped, "blob", "blobs")
        ));
    } else {
        parts.push("read-only, nothing uploaded".into());
    }
    if !s.images_pulled.is_empty() {
        parts.push(format!("{} pulled", plural(s.images_pulled.len() as u64, "image", "images")));
    }
    if !s.images_pushed.is_empty() {
        parts.push(format!("{} pushed", plural(s.images_pushed.len() as u64, "image", "images")));
    }
    let mut lines = vec![format!("remote cache {} ({}): {}", s.url, s.mode, parts.join(", "))];
    if !s.not_shared.is_empty() {
        let names: Vec<String> = s.not_shared.iter().map(|n| super::neutralise(n).into_owned()).collect();
        let why = match &s.unavailable {
            Some(why) => super::neutralise(why).into_owned(),
            None => "upload failed or not finished".into(),
        };
        lines.push(format!("not shared: {} ({why})", names.join(", ")));
    } else if let Some(why) = &s.unavailable {
        lines.push(format!("remote cache unavailable: {}", super::neutralise(why)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_what_was_not_shared() {
        let s = RemoteSummary {
            url: "oci://127.0.0.1:5000/cache".into(),
            mode: "readwrite".into(),
            hits: 3,
            bytes_down: 1_200_000,
            uploads: 5,
            bytes_up: 4_000_000,
            blobs_skipped: 12,
            not_shared: vec!["b".into(), "c".into()],
            unavailable: Some("registry 127.0.0.1:5000 is unavailable: connection refused".into()),
            ..RemoteSummary::default()
        };
        let lines = summary_lines(&s);
        assert!(lines[0].starts_with("remote cache oci://127.0.0.1:5000/cache (readwrite): 3 hits ("), "{lines:?}");
        assert!(lines[0].contains("5 uploads (") && lines[0].contains("12 blobs already there"), "{lines:?}");
        assert!(lines[1].starts_with("not shared: b, c (registry 127.0.0.1:5000 is unavailable: "), "{lines:?}");
        let read = RemoteSummary { mode: "read".into(), ..RemoteSummary::default() };
        assert!(summary_lines(&read)[0].contains("nothing uploaded"));
    }
}
