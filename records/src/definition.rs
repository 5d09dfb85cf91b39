//! The step as the record documents it: the record's own serde types, so the record format no
//! longer changes when the engine's IR does. The JSON shape is the one `engine.run-record/v1`
//! wrote (the IR's), so both schemas read alike. The engine converts its steps to and from these.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A step as resolved from the workflow (defaults and profile applied). Limits and isolation a
/// record leaves out (or sets to null) are `None` here: the reader supplies the built-in defaults,
/// never "unlimited".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    /// The step's name.
    pub name: String,
    /// Where the step is written in its workflow file.
    pub span: Span,
    /// The image it runs in.
    pub image: ImageRef,
    /// What it runs.
    pub command: Command,
    /// Input glob patterns, relative to the workflow's folder.
    pub inputs: Vec<String>,
    /// Declared output paths under `/workspace`.
    pub outputs: Vec<String>,
    /// The steps it needs, as written.
    pub needs: Vec<String>,
    /// Its environment (no secret values: secrets are files).
    pub env: BTreeMap<String, String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// `cache: false` turned reuse off.
    pub cache: bool,
    /// `continue_on_error: true`: a failure of the step did not fail the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Persistent cache mounts.
    pub caches: Vec<CacheMount>,
    /// Working directory inside the container.
    pub workdir: String,
    /// The profile it asked for, if any (already applied to isolation and limits).
    pub profile: Option<String>,
    /// Network and user.
    #[serde(default, deserialize_with = "null_as_default")]
    pub isolation: Isolation,
    /// Resource limits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub limits: Limits,
}

impl StepDefinition {
    /// A step named `name` running `command` in `image`, with nothing else set: no inputs,
    /// outputs, needs, env, secrets or caches; cache on; workdir `/workspace`; isolation and
    /// limits left to the reader's defaults.
    pub fn new(name: impl Into<String>, image: ImageRef, command: Command) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            span: Span::default(),
            image,
            command,
            inputs: Vec::new(),
            outputs: Vec::new(),
            needs: Vec::new(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            cache: true,
            continue_on_error: false,
            caches: Vec::new(),
            workdir: "/workspace".into(),
            profile: None,
            isolation: Isolation::default(),
            limits: Limits::default(),
        }
    }

    /// The reference as the record's `image.reference` names it: the reference as written, or
    /// `images.<name>` for an engine-built image.
    pub fn image_reference(&self) -> String {
        match &self.image {
            ImageRef::Reference(r) => r.clone(),
            ImageRef::Built(n) => format!("images.{n}"),
        }
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A place in the workflow file: byte offset and length, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Span {
    /// Byte offset.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// `{"kind": "reference", "name": "local/busybox:1"}` or `{"kind": "built", "name": "tools"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ImageRef {
    /// An image reference, used as is.
    Reference(String),
    /// The name of an image the engine builds (`images:`).
    Built(String),
}

/// `{"shell": "make"}` or `{"argv": ["make", "all"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Run as `/bin/sh -c <script>`.
    Shell(String),
    /// Run as this argv.
    Argv(Vec<String>),
}

/// A persistent cache mount: `name` shared across runs, mounted at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// Shared by every step that names it.
    pub name: String,
    /// Absolute path inside the container.
    pub path: String,
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network.
    None,
    /// The daemon's bridge network.
    Bridge,
}

/// `{"uid": 1000, "gid": 1000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Network and user; a field left out is `None` (the reader's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Isolation {
    /// The network.
    #[serde(default)]
    pub network: Option<Network>,
    /// The user.
    #[serde(default)]
    pub user: Option<User>,
}

/// Resource limits; a field left out is `None` (the reader's default, never "unlimited").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Thousandths of a CPU.
    #[serde(default)]
    pub millicpus: Option<u64>,
    /// Bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Processes.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Wall time from container start, in seconds in JSON.
    #[serde(default, with = "opt_secs")]
    pub timeout: Option<Duration>,
    /// Bytes of the tmpfs at /tmp.
    #[serde(default)]
    pub tmpfs: Option<u64>,
    /// Bytes the workspace may hold.
    #[serde(default)]
    pub workspace: Option<u64>,
    /// Bytes of outputs collected.
    #[serde(default)]
    pub outputs: Option<u64>,
}

/// A duration as (fractional) seconds, as the IR writes it.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(secs) => Duration::try_from_secs_f64(secs).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_shape_is_the_one_v1_wrote() {
        let mut d = StepDefinition::new("a", ImageRef::Built("tools".into()), Command::Argv(vec!["x".into()]));
        d.limits.timeout = Some(Duration::from_millis(1500));
        d.limits.memory = Some(1 << 30);
        d.isolation.user = Some(User { uid: 1, gid: 2 });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["image"], serde_json::json!({ "kind": "built", "name": "tools" }));
        assert_eq!(v["command"], serde_json::json!({ "argv": ["x"] }));
        assert_eq!(v["limits"]["timeout"], 1.5);
        assert_eq!(v["isolation"]["user"], serde_json::json!({ "uid": 1, "gid": 2 }));
        let back: StepDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn missing_or_null_limits_and_isolation_are_left_to_the_reader() {
        let mut v = serde_json::to_value(StepDefinition::new("a", ImageRef::Reference("i".into()), Command::Shell("true".into()))).unwrap();
        v.as_object_mut().unwrap().remove("limits");
        v["isolation"] = serde_json::Value::Null;
        let back: StepDefinition = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((back.limits, back.isolation), (Limits::default(), Isolation::default()));
        v["limits"] = serde_json::json!({ "memory": 5, "timeout": -1.0 });
        assert!(serde_json::from_value::<StepDefinition>(v.clone()).is_err(), "a negative timeout is no duration");
        v["limits"] = serde_json::json!({ "memory": 5, "pids": null });
        let back: StepDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(back.limits, Limits { memory: Some(5), ..Limits::default() });
    }
}
