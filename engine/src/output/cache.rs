//! Text for the cache commands: `engine cache explain` (the full key breakdown of a step from its
//! [`Forecast`]) and `engine cache ls`, `gc` and `verify` (from the store's reports).

use std::fmt::Write as _;
use std::path::Path;

use cache::store::{EntryInfo, GcReport, Usage, VerifyReport};

use crate::executor::RunReason;
use crate::explain::Forecast;
use crate::units::{fmt_age, fmt_size};

/// `engine cache explain STEP`: status, reasons, key, and every component of the key.
pub fn explain(step: &str, forecast: &Forecast) -> String {
    let mut out = String::new();
    let status = forecast.status();
    match forecast.source() {
        Some(source) => {
            let _ = writeln!(out, "step `{step}`: {status}, from the {}", source_text(source));
        }
        None => {
            let _ = writeln!(out, "step `{step}`: {status}");
        }
    }
    if !forecast.reasons.is_empty() {
        let reasons: Vec<String> = forecast.reasons.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  why:      {}", reasons.join("; "));
    }
    let Some(c) = &forecast.components else {
        let image = forecast.reasons.iter().find_map(|r| match r {
            RunReason::ImageNotBuilt(name) => Some(name),
            RunReason::Cache(_) | RunReason::FailedLastRun(_) | RunReason::UpstreamRemote(_) | RunReason::RemoteUnavailable(_) => None,
        });
        match image {
            Some(name) => {
                let _ = writeln!(out, "  key:      not known until image `{name}` is built");
            }
            None => {
                let _ = writeln!(out, "  key:      not known until the steps it needs have run");
            }
        }
        return out;
    };
    let _ = writeln!(out, "  key:      {}", c.key());
    let _ = writeln!(out, "  components (sha256 over a canonical encoding of):");
    let _ = writeln!(out, "    format:   {}", c.format);
    let _ = writeln!(out, "    image:    {}", c.image);
    let _ = writeln!(out, "    command:  {}", serde_json::Value::from(c.command.clone()));
    if c.env.is_empty() {
        let _ = writeln!(out, "    env:      -");
    }
    for (i, (k, v)) in c.env.iter().enumerate() {
        let _ = writeln!(out, "    {:<10}{k}={v}", if i == 0 { "env:" } else { "" });
    }
    let _ = writeln!(out, "    workdir:  {}", c.workdir);
    let _ = writeln!(out, "    user:     {}", c.user);
    let _ = writeln!(out, "    network:  {}", c.network);
    let _ = writeln!(out, "    outputs:  {}", list(&c.outputs));
    let _ = writeln!(out, "    secrets:  {} (names only; values never enter a key)", list(&c.secrets));
    let _ = writeln!(out, "    inputs:   {} file{}", c.inputs.len(), if c.inputs.len() == 1 { "" } else { "s" });
    for input in &c.inputs {
        let _ = writeln!(out, "      {:06o}  {}  {}", input.mode, input.digest, input.path);
    }
    let _ = writeln!(out, "    upstream: {}", if c.upstream.is_empty() { "-" } else { "" });
    for up in &c.upstream {
        let _ = writeln!(out, "      {}  outputs of `{}`", up.outputs, up.step);
    }
    out
}

/// `local store` or `remote cache`.
pub(crate) fn source_text(source: crate::events::CacheSource) -> &'static str {
    match source {
        crate::events::CacheSource::Local => "local store",
        crate::events::CacheSource::Remote => "remote cache",
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// Prints [`explain`] on stdout.
pub fn print_explain(step: &str, forecast: &Forecast) {
    print!("{}", explain(step, forecast));
}

/// `engine cache ls`: one line per entry under a header, then the total.
pub fn print_ls(entries: &[EntryInfo], usage: &Usage, dir: &Path) {
    println!("{:<14} {:<20} {:<20} {:>9}  last used", "key", "workflow", "step", "size");
    for e in entries {
        println!("{:<14} {:<20} {:<20} {:>9}  {}", e.key.digest().short(), e.workflow, e.step, fmt_size(e.size), fmt_age(e.last_used));
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!("{} entries, {} in {}", entries.len(), fmt_size(total), dir.display());
    print_usage(usage);
}

/// What the store holds on disk, by kind (the entries' sizes above count their outputs only).
fn print_usage(u: &Usage) {
    println!("  outputs and logs:  {} blobs, {}", u.output_blobs, fmt_size(u.output_bytes));
    println!(
        "  inputs (kept for replay and provenance):  {} blobs, {}; {} input manifests, {}",
        u.input_blobs,
        fmt_size(u.input_bytes),
        u.input_manifests,
        fmt_size(u.input_manifest_bytes)
    );
    println!("  unreferenced:  {} blobs, {} (`engine cache gc` removes them)", u.unreferenced_blobs, fmt_size(u.unreferenced_bytes));
    println!("  on disk:  {} (entries {})", fmt_size(u.total_bytes()), fmt_size(u.entry_bytes));
}

/// `engine cache gc`: what was removed and what remains.
pub fn print_gc(report: &GcReport, usage: &Usage) {
    println!(
        "removed {} entries and {} blobs, freed {}; {} remain",
        report.removed_entries,
        report.removed_blobs,
        fmt_size(report.freed_bytes),
        fmt_size(report.remaining_bytes)
    );
    print_usage(usage);
}

/// `engine cache verify`: each corrupt blob and dropped entry, then the counts.
pub fn print_verify(report: &VerifyReport) {
    for blob in &report.corrupt_blobs {
        println!("corrupt blob {blob} removed");
    }
    for key in &report.dropped_entries {
        println!("entry {key} dropped");
    }
    println!(
        "checked {} blobs: {} corrupt, {} entries dropped",
        report.blobs_checked,
        report.corrupt_blobs.len(),
        report.dropped_entries.len()
    );
}

/// `engine cache push` / `pull`: each entry that could not be moved, then the counts.
pub fn print_transfer(url: &str, push: bool, report: &crate::cache_transfer::TransferReport) {
    for failed in &report.failed {
        println!("not {}: {failed}", if push { "uploaded" } else { "downloaded" });
    }
    println!("{}", transfer_line(url, push, report));
}

/// The counts line of `engine cache push` / `pull`.
pub(crate) fn transfer_line(url: &str, push: bool, r: &crate::cache_transfer::TransferReport) -> String {
    let t = &r.transfer;
    if push {
        format!(
            "pushed {} entries to {url} ({} blobs, {} up; {} blobs already there); {} failed",
            r.moved,
            t.blobs,
            fmt_size(t.bytes),
            t.skipped,
            r.failed.len()
        )
    } else {
        format!(
            "pulled {} entries from {url} ({} blobs, {} down); {} already local; {} failed",
            r.moved,
            t.blobs,
            fmt_size(t.bytes),
            r.already,
            r.failed.len()
        )
    }
}
