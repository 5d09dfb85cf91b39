//! The boundary this crate exists for: it is the only crate of the workspace that depends on
//! bollard, and no other crate's source names it.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace folder").to_path_buf()
}

/// Every file under `dir` (not `target/`, not hidden folders) whose name ends with `suffix`.
fn files(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the workspace").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() && !name.starts_with('.') && name != "target" {
            files(&path, suffix, out);
        } else if kind.is_file() && name.ends_with(suffix) {
            out.push(path);
        }
    }
}

#[test]
fn only_the_docker_crate_depends_on_bollard() {
    let root = workspace();
    let mut manifests = Vec::new();
    files(&root, "Cargo.toml", &mut manifests);
    let mut sources = Vec::new();
    files(&root, ".rs", &mut sources);
    let own = root.join("docker");
    let offenders: Vec<String> = manifests
        .iter()
        .filter(|m| m.parent() != Some(own.as_path()) && m.parent() != Some(root.as_path()))
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains("bollard")))
        // Sources: a path into the crate (`bollard::`), not a word in a test that checks this.
        .chain(
            sources
                .iter()
                .filter(|s| !s.starts_with(&own))
                .filter(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains("bollard::"))),
        )
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(manifests.len() > 4 && sources.len() > 20, "the workspace was not found under {}", root.display());
    assert!(offenders.is_empty(), "only docker/ may use bollard; also found in {offenders:?}");
}
