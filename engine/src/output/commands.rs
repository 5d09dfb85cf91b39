//! The one-line reports of the smaller commands on stdout (and stderr where noted): `check`,
//! `clean`, `convert`, `fmt`, `lock` and `images`.

use std::collections::BTreeMap;
use std::path::Path;

use super::neutralise;
use crate::docker::ImageId;
use crate::units::fmt_size;

/// `engine check`: the workflow loaded and planned.
pub fn valid(file: &Path, workflow: &str, steps: usize) {
    println!("{}: workflow `{workflow}` is valid ({steps} step{})", file.display(), if steps == 1 { "" } else { "s" });
}

/// `engine clean`: what was removed.
pub fn cleaned(containers: usize, volumes: usize, folders: usize) {
    println!("removed {containers} containers, {volumes} volumes and {folders} temporary folders left by dead runs");
}

/// `engine convert`: the converted workflow text.
pub fn converted(text: &str) {
    print!("{text}");
}

/// `engine fmt --check` on a file that is not formatted: the unified diff from the file to its
/// formatted text on stdout, then the note on stderr.
pub fn not_formatted(file: &Path, text: &str, formatted: &str) {
    print!("{}", fmt_diff(file, text, formatted));
    eprintln!("{} is not formatted: run `engine fmt {}`", file.display(), file.display());
}

/// The unified diff `engine fmt --check` prints (`--- FILE` / `+++ FILE (formatted)`, three
/// lines of context). Control characters of the file are shown, never sent to the terminal.
pub fn fmt_diff(file: &Path, text: &str, formatted: &str) -> String {
    let name = file.display().to_string();
    let diff = similar::TextDiff::from_lines(text, formatted);
    let unified = diff.unified_diff().context_radius(3).header(&name, &format!("{name} (formatted)")).to_string();
    let mut out = String::with_capacity(unified.len());
    for line in unified.lines() {
        out.push_str(&super::neutralise(line));
        out.push('\n');
    }
    out
}

/// `engine fmt`: the file was rewritten.
pub fn formatted(file: &Path) {
    println!("formatted {}", file.display());
}

/// `engine lock`: each reference and its ID, then where they were written.
pub fn locked(resolved: &BTreeMap<String, ImageId>, path: &Path) {
    for (reference, id) in resolved {
        println!("{reference} -> {id}");
    }
    println!("pinned {} images in {}", resolved.len(), path.display());
}

/// `engine images build`: a line of a stage's build (the shape of `images::LogFn`).
pub fn build_line(image: &str, stage: &str, line: &str) {
    println!("{image}/{stage} | {line}");
}

/// `engine images build`: an image is ready (stderr).
pub fn built(name: &str, built: &images::BuiltImage) {
    let what = if built.stages_built == 0 { "up to date".to_string() } else { format!("{} stages built", built.stages_built) };
    eprintln!("{name}: {} ({}), {what}", built.tag, &built.id);
}

/// `engine images ls`: one line per image under a header, then the count.
pub fn images(list: &[images::ImageInfo]) {
    println!("{:<20} {:<40} {:<14} {:>9}", "image", "tag", "key", "size");
    for i in list {
        println!(
            "{:<20} {:<40} {:<14} {:>9}",
            i.name,
            i.tags.first().map(String::as_str).unwrap_or("-"),
            i.key.map(|k| k.short()).as_deref().unwrap_or("-"),
            fmt_size(i.size)
        );
    }
    println!("{} images", list.len());
}

/// `engine images prune`.
pub fn images_pruned(count: usize) {
    println!("removed {count} images");
}

/// `engine images prune` of one workflow: what was untagged and removed, and what stays because
/// another workflow tags it (or a container uses it).
pub fn workflow_images_pruned(workflow: &str, report: &images::WorkflowPrune) {
    println!("workflow `{}`: removed {} tags and {} images", neutralise(workflow), report.untagged.len(), report.removed.len());
    for (id, tags) in &report.kept {
        if tags.is_empty() {
            println!("  kept {}: still in use by a container", id.short());
        } else {
            let tags: Vec<String> = tags.iter().map(|t| neutralise(t).into_owned()).collect();
            println!("  kept {}: also tagged {}", id.short(), tags.join(", "));
        }
    }
    println!("(other workflows' images are left alone; `engine images prune --all` removes every image the engine built)");
}

/// `engine images import`.
pub fn imported(rootfs: &Path, reference: &str, id: &docker::ImageId) {
    println!("imported {} as {reference} ({id})", rootfs.display());
}
