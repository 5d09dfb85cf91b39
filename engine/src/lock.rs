//! `engine.lock`: an opt-in file beside the workflow that pins every base image reference (step
//! images and the `from:` of image stages) to the image ID it resolved to when `engine lock` ran.
//! While it exists, a run whose references resolve to anything else stops before starting (exit
//! 3), so a reproducibility audit knows exactly what ran.
//!
//! Reading and comparing only; resolving references is the caller's (it talks to Docker).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EnvironmentError;

pub(crate) const FILE_NAME: &str = "engine.lock";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lock {
    pub version: u32,
    /// Reference -> image ID (`sha256:...`).
    pub images: BTreeMap<String, String>,
}

pub(crate) fn path_for(workflow_dir: &Path) -> PathBuf {
    workflow_dir.join(FILE_NAME)
}

/// Every image reference the workflow starts from: step images that are not built by the
/// workflow, and the `from:` of image stages that is not an earlier stage. (Dockerfile images pin
/// their own bases inside the Dockerfile.)
pub(crate) fn base_references(workflow: &dsl::Workflow) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for step in &workflow.steps {
        if let dsl::ImageRef::Reference(r) = &step.image {
            refs.insert(r.clone());
        }
    }
    for def in workflow.images.values() {
        if let dsl::ImageDef::Stages(stages) = def {
            for (i, stage) in stages.iter().enumerate() {
                if !stages[..i].iter().any(|s| s.name == stage.from) {
                    refs.insert(stage.from.clone());
                }
            }
        }
    }
    refs
}

/// The lock beside the workflow, if there is one.
pub(crate) fn read(workflow_dir: &Path) -> Result<Option<Lock>, EnvironmentError> {
    let path = path_for(workflow_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EnvironmentError(format!("cannot read {}: {e}", path.display()))),
    };
    let lock: Lock = serde_json::from_str(&text).map_err(|e| {
        EnvironmentError(format!("{} is not a valid lock file ({e}): delete it or run `engine lock` again", path.display()))
    })?;
    if lock.version != VERSION {
        return Err(EnvironmentError(format!(
            "{} has version {}; this engine writes version {VERSION}: run `engine lock` again",
            path.display(),
            lock.version
        )));
    }
    Ok(Some(lock))
}

/// Write `engine.lock` in `workflow_dir` pinning each base image reference to its image ID
/// (temp file + rename); returns the lock file's path.
pub fn write(workflow_dir: &Path, images: BTreeMap<String, String>) -> Result<PathBuf, EnvironmentError> {
    let path = path_for(workflow_dir);
    let lock = Lock { version: VERSION, images };
    let mut text = serde_json::to_string_pretty(&lock).unwrap_or_default();
    text.push('\n');
    let dir = if workflow_dir.as_os_str().is_empty() { Path::new(".") } else { workflow_dir };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).map(|_| f))
        .map_err(|e| EnvironmentError(format!("cannot write {}: {e}", path.display())))?;
    tmp.persist(&path).map_err(|e| EnvironmentError(format!("cannot write {}: {}", path.display(), e.error)))?;
    Ok(path)
}

/// Compare what the references resolve to now with the lock. Every reference must be pinned, and
/// pinned to exactly the ID it has now.
pub(crate) fn check(lock: &Lock, resolved: &BTreeMap<String, String>) -> Result<(), EnvironmentError> {
    for (reference, id) in resolved {
        match lock.images.get(reference) {
            None => {
                return Err(EnvironmentError(format!(
                    "image `{reference}` is not pinned in {FILE_NAME}: run `engine lock` to pin it"
                )))
            }
            Some(pinned) if pinned != id => {
                return Err(EnvironmentError(format!(
                    "image `{reference}` is now {id}, but {FILE_NAME} pins {pinned}: restore the pinned image, or run `engine lock` to accept the new one"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(pairs: &[(&str, &str)]) -> Lock {
        Lock { version: 1, images: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect() }
    }

    #[test]
    fn check_accepts_exact_pins_and_names_what_differs() {
        let l = lock(&[("local/busybox:1", "sha256:aaa")]);
        let now = |id: &str| BTreeMap::from([("local/busybox:1".to_string(), id.to_string())]);
        assert!(check(&l, &now("sha256:aaa")).is_ok());
        let err = check(&l, &now("sha256:bbb")).unwrap_err().to_string();
        assert!(err.contains("local/busybox:1") && err.contains("sha256:bbb") && err.contains("sha256:aaa"), "{err}");
        let other = BTreeMap::from([("local/debian:12".to_string(), "sha256:ccc".to_string())]);
        assert!(check(&l, &other).unwrap_err().to_string().contains("not pinned"));
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let images = BTreeMap::from([("a:1".to_string(), "sha256:1".to_string())]);
        write(dir.path(), images.clone()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(Lock { version: 1, images }));
        std::fs::write(path_for(dir.path()), "{ nope").unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("not a valid lock file"));
    }
}
