//! Hand-built records for tests (this crate's, and the engine's renderers' through the
//! `fixtures` feature). Not for production use.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use cache::{Digest, InputEntry, KeyComponents, OutputEntry};

use crate::definition::{Command, ImageRef, StepDefinition};
use crate::schema::*;

/// Every input manifest the fixtures made, by digest (what the cache store would hold).
static MANIFESTS: LazyLock<Mutex<HashMap<Digest, Vec<InputEntry>>>> = LazyLock::new(Default::default);

/// The digest of a string's bytes.
pub fn digest(content: &str) -> Digest {
    Digest::of(content.as_bytes())
}

/// A file output entry of `content`.
pub fn file(path: &str, content: &str) -> OutputEntry {
    OutputEntry::File { path: path.into(), mode: 0o644, digest: digest(content), size: content.len() as u64 }
}

/// An input file entry of `content`.
pub fn input(path: &str, content: &str) -> InputEntry {
    InputEntry { path: path.into(), mode: 0o644, digest: digest(content) }
}

/// Give `step` these input files: an input manifest the fixtures keep (see [`manifest`]).
pub fn set_inputs(step: &mut StepRecord, inputs: Vec<InputEntry>) {
    let d = Digest::of(&serde_json::to_vec(&inputs).unwrap_or_default());
    step.inputs_count = inputs.len();
    step.inputs_manifest = Some(d);
    MANIFESTS.lock().unwrap_or_else(|e| e.into_inner()).insert(d, inputs);
}

/// An input manifest made by [`set_inputs`], as the cache store would return it.
pub fn manifest(d: &Digest) -> Option<Vec<InputEntry>> {
    MANIFESTS.lock().unwrap_or_else(|e| e.into_inner()).get(d).cloned()
}

/// A finished step of `image` (`reference`, `sha256:<hex of id>`), with `outputs`.
pub fn step(name: &str, status: StepState, reference: &str, id: &str, outputs: Vec<OutputEntry>) -> StepRecord {
    let definition = StepDefinition::new(name, ImageRef::Reference(reference.into()), Command::Shell(format!("make {name}")));
    let mut s = StepRecord::pending(definition);
    s.status = status;
    s.cached = status == StepState::Cached;
    let image_id = cache::ImageId::from_digest(&digest(id));
    s.image = Some(ImageRecord { reference: reference.into(), id: image_id.clone(), bases: Vec::new() });
    s.key = Some(cache::ActionKey::from_digest(digest(&format!("key of {name}"))));
    s.key_components = Some(KeyComponents {
        format: cache::CACHE_FORMAT_VERSION,
        image: cache::ImageIdentity::Local { id: image_id },
        command: vec!["/bin/sh".into(), "-c".into(), format!("make {name}")],
        env: [("LANG".to_string(), "C".to_string())].into(),
        workdir: "/workspace".into(),
        user: "1000:1000".into(),
        network: "none".into(),
        outputs: outputs.iter().map(|o| o.path().to_string()).collect(),
        secrets: Vec::new(),
        inputs: Vec::new(),
        upstream: Vec::new(),
    });
    s.source_date_epoch = Some(1_234_567_890);
    s.exit_code = Some(0);
    s.duration_ms = Some(if s.cached { 0 } else { 1500 });
    s.started_at = Some("2026-03-01T10:00:01Z".into());
    if status.has_outputs() {
        s.outputs_digest = Some(digest(&format!("outputs of {name}")));
        s.outputs = outputs;
    }
    let log = format!("{name} | done\n");
    s.log = Some(LogRecord { path: format!("logs/00-{name}.log"), digest: digest(&log), bytes: log.len() as u64, cut: 0 });
    s
}

/// A run of `steps` (workflow `demo`, engine 0.1.0, 4 jobs).
pub fn record(id: &str, started: &str, status: RecordStatus, steps: Vec<StepRecord>) -> RunRecord {
    RunRecord {
        schema: SCHEMA.into(),
        run_id: id.into(),
        status,
        started_at: started.into(),
        finished_at: (status != RecordStatus::Incomplete).then(|| "2026-03-01T10:00:07Z".into()),
        duration_ms: (status != RecordStatus::Incomplete).then_some(6200),
        engine: EngineInfo { name: "engine".into(), version: "0.1.0".into() },
        host: HostInfo { os: "linux".into(), arch: "x86_64".into(), docker_version: "24.0.7".into(), docker_api_version: "1.43".into() },
        workflow: WorkflowInfo {
            name: "demo".into(),
            file: "workflow.yml".into(),
            dir: "/src/demo".into(),
            digest: digest("version: 1\n"),
            modules: Vec::new(),
        },
        invocation: Invocation {
            targets: Vec::new(),
            jobs: 4,
            keep_going: false,
            no_cache: false,
            out_dir: "/src/demo/.engine/out".into(),
            remote_cache: None,
        },
        steps,
    }
}

/// `build` (executed, two files, one input) then `package` (cached, one file and a symlink).
pub fn two_steps(id: &str, started: &str) -> RunRecord {
    let mut build = step(
        "build",
        StepState::Succeeded,
        "local/busybox:1",
        "busybox",
        vec![OutputEntry::Dir { path: "out".into(), mode: 0o755 }, file("out/b.txt", "bbb"), file("out/a.txt", "a")],
    );
    set_inputs(&mut build, vec![input("src/main.c", "int main;")]);
    let mut package = step(
        "package",
        StepState::Cached,
        "local/busybox:1",
        "busybox",
        vec![file("pkg.tar", "tarball"), OutputEntry::Symlink { path: "latest.tar".into(), target: "pkg.tar".into() }],
    );
    package.definition.needs = vec!["build".into()];
    set_inputs(&mut package, vec![input("src/main.c", "int main;"), input("pkg.cfg", "cfg")]);
    record(id, started, RecordStatus::Succeeded, vec![build, package])
}
