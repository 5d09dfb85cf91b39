//! `engine provenance`: the in-toto / SLSA statement of a recorded run (built by
//! `records::provenance`), with the input manifests read from the cache store; `output::provenance`
//! prints it as pretty JSON.

use std::path::Path;

use crate::error::EnvironmentError;
use crate::record::provenance::{self, ProvenanceError};
use crate::run::StartError;

pub use crate::record::provenance::{BUILDER_ID, BUILD_TYPE, HOST_URI, PREDICATE_TYPE, STATEMENT_TYPE};

/// The statement of run `id` of the workflow in `dir`.
/// The input manifests come from the cache store in `cache_dir`; one that is gone is the
/// environment's problem (exit 3), an unfinished, exportless, edited or older record is refused
/// (exit 2).
pub fn command(id: &str, dir: &Path, cache_dir: &Path) -> Result<serde_json::Value, StartError> {
    let (_, record) = crate::record::find_current(dir, id)?;
    // The store is opened only when some attested step has inputs.
    let needs_store = record.steps.iter().any(|s| s.status.has_outputs() && s.inputs_count > 0);
    let store = if needs_store { Some(crate::run::open_store(cache_dir)?) } else { None };
    let statement = provenance::statement(&record, |d| store.as_ref()?.input_manifest(d)).map_err(|e| match e {
        ProvenanceError::InputsMissing { step, digest } => StartError::from(EnvironmentError(format!(
            "the input manifest {} of step `{step}` is no longer in the cache store {}; the provenance would be incomplete",
            digest.short(),
            cache_dir.display()
        ))),
        // Like a replay, which cannot verify such a step either: an entry from before input
        // manifests were kept (or an edit) left the record without one.
        e @ ProvenanceError::NoInputManifest { .. } => StartError::from(EnvironmentError(e.to_string())),
        ProvenanceError::OlderSchema(e) => StartError::Record(e),
        other => StartError::Invalid(other.to_string()),
    })?;
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use records::fixtures::*;

    use super::*;
    use crate::record::{RecordStatus, Recorder, StepState};

    #[test]
    fn refusals_exit_2_and_a_missing_manifest_exits_3_naming_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let empty = record(
            "6a000001bbbbbb",
            "2026-03-01T10:00:00Z",
            RecordStatus::Failed,
            vec![step("build", StepState::Failed, "local/busybox:1", "busybox", vec![])],
        );
        Recorder::create(dir.path(), empty).unwrap();
        let e = command("6a000001", dir.path(), cache.path()).unwrap_err();
        assert!(e.to_string().contains("run 6a000001bbbbbb exported no files"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::INVALID);

        // The manifest the record names is not in this store.
        Recorder::create(dir.path(), two_steps("6a000002aaaaaa", "2026-03-01T10:05:00Z")).unwrap();
        let e = command("6a000002", dir.path(), cache.path()).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::ENVIRONMENT);
        assert!(e.to_string().contains(&format!("is no longer in the cache store {}", cache.path().display())), "{e}");
        // ... and once it is, the statement is given.
        let store = cache::Store::open(cache.path()).unwrap();
        let r = crate::record::find(dir.path(), "6a000002").unwrap().1;
        for s in &r.steps {
            store.put_input_manifest(&manifest(&s.inputs_manifest.unwrap()).unwrap()).unwrap();
        }
        let v = command("6a000002", dir.path(), cache.path()).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);

        // An older engine's record: refused by name.
        let mut old = two_steps("6a000003cccccc", "2026-03-01T10:06:00Z");
        old.schema = crate::record::SCHEMA_V1.into();
        Recorder::create(dir.path(), old).unwrap();
        let e = command("6a000003", dir.path(), cache.path()).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::INVALID);
        assert!(e.to_string().contains("recorded by an older engine"), "{e}");
    }
}
