//! The labels and names the engine puts on what it creates, in one place: the run and step
//! labels, the owner of a container as labels ([`Owner`]: pid, process start time, host, written
//! as `engine.pid`, `engine.pid.start`, `engine.host` and read back so that `cleanup` can tell a
//! live run from one whose engine died), the cache volume label, the image labels of `images`,
//! and the one name sanitiser behind container, volume and repository names.
//!
//! Must not talk to Docker or decide what gets removed.

use std::collections::HashMap;

use crate::owner::Owner;

/// Labels every container, volume and network the engine creates carries: its run...
pub const LABEL_RUN: &str = "engine.run";
/// ...and, for a step's container, the step.
pub const LABEL_STEP: &str = "engine.step";
/// Owner of the run: the engine's pid, so that a later run can tell whether the engine that
/// created a container is still alive.
pub const LABEL_PID: &str = "engine.pid";
/// Owner of the run: the engine process's start time (guards against pid reuse).
pub const LABEL_PID_START: &str = "engine.pid.start";
/// Owner of the run: the engine's host.
pub const LABEL_HOST: &str = "engine.host";
/// Label of the persistent volume behind a `caches:` name (archive transfer). Deliberately not
/// `engine.run`: the volume outlives every run, so run cleanup must never see it.
pub const LABEL_CACHE: &str = "engine.cache";
/// On images the engine built, and on their build containers: the `images:` entry.
pub const LABEL_IMAGE: &str = "engine.image";
/// On a final built image: its image key.
pub const LABEL_IMAGE_KEY: &str = "engine.image.key";
/// On every stage image: the stage key.
pub const LABEL_STAGE_KEY: &str = "engine.stage.key";

/// `name` with anything Docker refuses in a container or volume name replaced by `-`.
pub fn sanitise(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' }).collect()
}

/// `engine-<run>-<step>`, with anything Docker refuses in a name replaced by `-`.
pub fn container_name(run_id: &str, step: &str) -> String {
    let name = sanitise(&format!("engine-{run_id}-{step}"));
    if name.ends_with(step) {
        return name;
    }
    // The step name had characters Docker refuses (a matrix step `test[x86]`): the replaced form
    // could equal another step's name (`test-x86-`), so the original name's digest keeps it unique.
    format!("{name}{}", &cache::Digest::of(step.as_bytes()).hex()[..8])
}

/// `engine-cache-<name>`: the persistent volume behind cache `name` (archive transfer), shared by
/// every step and run naming it. Anything Docker refuses in a name is replaced by `-`.
pub fn cache_volume_name(name: &str) -> String {
    sanitise(&format!("engine-cache-{name}"))
}

/// `<workflow>/<image>` as a valid repository name: lowercase, each component of `[a-z0-9]`
/// runs joined by single `.`, `_` or `-` (what [`sanitise`] allows, further narrowed).
pub fn repository(workflow: &str, image: &str) -> String {
    format!("{}{}", repository_prefix(workflow), repository_component(image))
}

/// `<workflow>/`: what every repository of workflow `workflow`'s images starts with (see
/// [`repository`]), and only theirs.
pub fn repository_prefix(workflow: &str) -> String {
    format!("{}/", repository_component(workflow))
}

fn repository_component(s: &str) -> String {
    let mut out = String::new();
    for c in sanitise(&s.to_lowercase()).chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if sep && (out.is_empty() || out.ends_with(['.', '_', '-'])) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_end_matches(['.', '_', '-']).to_string();
    if out.is_empty() {
        "image".to_string()
    } else {
        out
    }
}

/// The owner labels of this process.
pub fn owner_labels() -> HashMap<String, String> {
    let me = Owner::current();
    HashMap::from([
        (LABEL_PID.to_string(), me.pid.to_string()),
        (LABEL_PID_START.to_string(), me.start.to_string()),
        (LABEL_HOST.to_string(), me.host),
    ])
}

/// Whether the owner named by `labels` is known to be gone. Containers without readable owner
/// labels count as alive: removing a live run's containers is worse than leaving garbage.
pub fn owner_is_dead(labels: &HashMap<String, String>) -> bool {
    let (Some(host), Some(pid), Some(start)) = (labels.get(LABEL_HOST), labels.get(LABEL_PID), labels.get(LABEL_PID_START)) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) else {
        return false;
    };
    !Owner { pid, start, host: host.clone() }.is_alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_step_names_stay_distinct_from_their_sanitised_twins() {
        assert_eq!(container_name("r1", "build"), "engine-r1-build");
        let matrix = container_name("r1", "test[x86]");
        assert!(matrix.starts_with("engine-r1-test-x86-"), "{matrix}");
        assert_ne!(matrix, container_name("r1", "test-x86-"));
        assert!(matrix.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    }

    #[test]
    fn repository_names_are_valid() {
        assert_eq!(repository("My Flow", "tool_chain"), "my-flow/tool_chain");
        assert_eq!(repository("--", "A..b"), "image/a.b");
    }

    #[test]
    fn own_process_is_alive() {
        assert!(!owner_is_dead(&owner_labels()));
    }

    #[test]
    fn other_start_time_is_dead() {
        let mut labels = owner_labels();
        labels.insert(LABEL_PID_START.into(), "1".into());
        assert!(owner_is_dead(&labels));
    }

    #[test]
    fn foreign_host_or_missing_labels_are_kept() {
        let mut labels = owner_labels();
        labels.insert(LABEL_HOST.into(), "some-other-host".into());
        labels.insert(LABEL_PID_START.into(), "1".into());
        assert!(!owner_is_dead(&labels));
        assert!(!owner_is_dead(&HashMap::new()));
    }
}
