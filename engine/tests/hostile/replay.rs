//! Hostile cases: replay. A run record is untrusted input: an edited one is refused before any
//! container starts, and every replayed step runs under today's policy and defaults.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[allow(unused_imports)]
use crate::common::{hostile::*, *};

/// A project whose one run (`gen`, then `use` needing it) is recorded; the step names are unique
/// so the daemon's events tell this test's containers from others'.
struct Recorded {
    p: Project,
    host: Host,
    gen: String,
    used: String,
    run_id: String,
    record: PathBuf,
    /// The record as `engine run` wrote it.
    original: Vec<u8>,
    /// After the run: no replay container may be created after this.
    since: f64,
    /// Held for the whole case (dropped last; see [`one_at_a_time`]).
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// The escape check scans the temp dir for every `engine-*` folder but its own host's, so two
/// cases holding a [`Host`] at once would see each other's host file: these cases run one at a
/// time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the engine names a record (or a file in a run folder) of the current directory.
fn shown(id: &str, file: &str) -> PathBuf {
    PathBuf::from(".").join(".engine/runs").join(id).join(file)
}

/// `gen` writes its uid and its memory and pids limits as the kernel sees them.
const LIMITS: &str = "(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes) > o/mem; \
                      (cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max) > o/pids";

fn recorded_run(extra: &str, policy: Option<&str>) -> Recorded {
    let serial = one_at_a_time();
    let host = Host::new();
    let (gen, used) = (unique("rgen"), unique("ruse"));
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  \
         {gen}:\n    inputs: [a.txt]\n    run: 'mkdir -p o && id -u > o/uid && cp a.txt o/a && {LIMITS}'\n    outputs: [o]\n{extra}  \
         {used}:\n    needs: [{gen}]\n    run: cat o/a o/a > twice.txt\n    outputs: [twice.txt]\n"
    ));
    p.write("a.txt", "hello\n");
    let mut args = vec!["run"];
    if let Some(policy) = policy {
        p.write("run-policy.yml", policy);
        args.extend(["--policy", "run-policy.yml"]);
    }
    let o = p.run(&args);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let ids = run_ids(&p);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let run_id = ids[0].clone();
    let record = p.path().join(".engine/runs").join(&run_id).join("record.json");
    let original = std::fs::read(&record).unwrap();
    Recorded { p, host, gen, used, run_id, record, original, since: now(), _serial: serial }
}

impl Recorded {
    /// Put the original record back, then change it with `f`.
    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut r: Value = serde_json::from_slice(&self.original).unwrap();
        f(&mut r);
        std::fs::write(&self.record, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
    }

    fn restore(&self) {
        std::fs::write(&self.record, &self.original).unwrap();
    }

    fn replay(&self, args: &[&str]) -> Output {
        let mut all = vec!["replay", self.run_id.as_str()];
        all.extend(args);
        self.p.run(&all)
    }

    /// The replay was refused with exit `code`, with `message` on stderr, and no container of
    /// either step was created.
    fn refused(&self, o: &Output, exit: i32, message: &str) {
        let err = text(&o.stderr);
        assert_eq!(code(o), exit, "{}{err}", text(&o.stdout));
        assert!(err.contains(message), "expected `{message}` in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        for step in [&self.gen, &self.used] {
            assert_eq!(created(step, self.since), 0, "a container of `{step}` was created by a refused replay");
        }
    }

    /// The input files a step of the record lists, from the input manifest it names in the store.
    fn inputs_of(&self, step: &Value) -> Value {
        let digest: cache::Digest = step["inputs_manifest"].as_str().expect("an input manifest").parse().unwrap();
        let store = cache::Store::open(&self.p.cache_dir()).unwrap();
        serde_json::to_value(store.input_manifest(&digest).expect("the input manifest in the store")).unwrap()
    }

    /// Keep `inputs` as an input manifest in the store (as a run would); its digest.
    fn plant_inputs(&self, inputs: &Value) -> String {
        let inputs: Vec<cache::InputEntry> = serde_json::from_value(inputs.clone()).unwrap();
        cache::Store::open(&self.p.cache_dir()).unwrap().put_input_manifest(&inputs).unwrap().to_string()
    }

    /// `record <path> step `<step>`: <why>`.
    fn sentence(&self, step: &str, why: &str) -> String {
        format!("record {} step `{step}`: {why}", shown(&self.run_id, "record.json").display())
    }
}

/// Containers of step `step` created since `since` (Unix seconds), as the daemon recorded them.
fn created(step: &str, since: f64) -> usize {
    let o = Command::new("docker")
        .args(["events", "--since", &format!("{since:.3}"), "--until", &format!("{:.3}", now())])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("label=engine.step={step}"), "--format", "{{.ID}}"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).lines().count()
}

fn step_mut<'a>(r: &'a mut Value, name: &str) -> &'a mut Value {
    r["steps"].as_array_mut().unwrap().iter_mut().find(|s| s["name"] == name).unwrap()
}

/// The key of recorded key components with these input files (the cache crate's own encoding).
fn key_of(components: &Value, inputs: &Value) -> String {
    let mut c = components.clone();
    c["inputs"] = inputs.clone();
    let c: cache::KeyComponents = serde_json::from_value(c).unwrap();
    c.key().to_string()
}

/// Runs `engine` with `args` in `p`; the answer must come within `deadline` (the process is
/// killed and the test fails otherwise).
fn run_within(p: &Project, args: &[&str], deadline: Duration) -> Output {
    let mut child = p.spawn(args);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`engine {}` did not answer within {deadline:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn edited_user_network_or_command_is_refused_before_any_container() {
    let r = recorded_run("", None);
    let gen = r.gen.clone();
    let edited = |what: &str| {
        r.sentence(&gen, &format!("its definition does not match its key ({what} differs); refusing to replay an edited record"))
    };

    // The red-team's edit: the planted step as root with the network.
    r.edit(|v| step_mut(v, &gen)["definition"]["isolation"]["user"] = json!({ "uid": 0, "gid": 0 }));
    r.refused(&r.replay(&[]), 2, &edited("user"));
    r.edit(|v| step_mut(v, &gen)["definition"]["isolation"]["network"] = json!("bridge"));
    r.refused(&r.replay(&[]), 2, &edited("network"));
    // Host networking has no spelling in a record.
    r.edit(|v| step_mut(v, &gen)["definition"]["isolation"]["network"] = json!("host"));
    r.refused(
        &r.replay(&[]),
        2,
        &format!("refusing the run record {}: it does not follow the schema", shown(&r.run_id, "record.json").display()),
    );
    let planted = format!("cat {} > o/uid", r.host.secret_path().display());
    r.edit(|v| step_mut(v, &gen)["definition"]["command"] = json!({ "shell": planted }));
    r.refused(&r.replay(&[&gen]), 2, &edited("command"));
    // An image reference passed off as an engine-built image (which no image prefix checks).
    r.edit(|v| {
        let s = step_mut(v, &gen);
        s["definition"]["image"] = json!({ "kind": "built", "name": "tools" });
        s["image"]["reference"] = json!("images.tools");
    });
    r.refused(&r.replay(&[&gen]), 2, &r.sentence(&gen, "its image sha256:"));
    let o = r.replay(&[&gen]);
    assert!(
        text(&o.stderr)
            .contains("is not the engine-built image `tools` it claims (no label engine.image=tools); refusing to replay an edited record"),
        "{}",
        text(&o.stderr)
    );
    r.edit(|v| {
        let s = step_mut(v, &gen);
        s["definition"]["isolation"]["user"] = json!({ "uid": 0, "gid": 0 });
        s["definition"]["isolation"]["network"] = json!("bridge");
    });
    r.refused(&r.replay(&[]), 2, &r.sentence(&gen, "its definition does not match its key (user, network differ)"));

    // Edited consistently with the key components: the key no longer follows from them.
    r.edit(|v| {
        let s = step_mut(v, &gen);
        s["definition"]["isolation"]["user"] = json!({ "uid": 0, "gid": 0 });
        s["key_components"]["user"] = json!("0:0");
    });
    r.refused(
        &r.replay(&[]),
        2,
        &r.sentence(&gen, "its key does not match its key components and input files; refusing to replay an edited record"),
    );

    // ... and with a key recomputed to match: the store has never seen that key.
    let original: Value = serde_json::from_slice(&r.original).unwrap();
    let inputs = r.inputs_of(step_mut(&mut original.clone(), &gen));
    r.edit(|v| {
        let started = engine::record::run_started_secs(v["run_id"].as_str().unwrap());
        let s = step_mut(v, &gen);
        s["definition"]["isolation"]["user"] = json!({ "uid": 0, "gid": 0 });
        s["key_components"]["user"] = json!("0:0");
        let key = key_of(&s["key_components"], &inputs);
        s["key"] = json!(key);
        let epoch = cache::ActionKey::from_digest(key.parse().unwrap());
        s["source_date_epoch"] = json!(engine::record::source_date_epoch(&epoch, started));
    });
    let o = r.replay(&[&gen]);
    r.refused(&o, 3, &format!("step `{gen}`: the cache store {} has no entry for its key", r.p.cache_dir().display()));
    assert!(text(&o.stderr).contains("the record cannot be verified against the cache store"), "{}", text(&o.stderr));

    r.restore();
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn replay_applies_todays_policy_to_an_honest_record() {
    // Recorded under a policy that allowed root; replayed without one (root refused) and under
    // a stricter one (memory capped below the recorded step's).
    let r = recorded_run("", None);
    let strict = "version: 1\nmax_limits: { memory: 512m }\n";
    r.p.write("strict.yml", strict);
    let o = r.replay(&["--policy", "strict.yml"]);
    let over = format!("step `{}` asks for memory 1g, above the policy's maximum 512m", r.gen);
    r.refused(&o, 2, &r.sentence(&r.gen, &over));
    let err = text(&o.stderr);
    assert!(err.contains("(strict.yml:2:"), "the policy line is named: {err}");
    assert!(err.contains("refusing to replay: a recorded step must pass today's policy and rules like a workflow step"), "{err}");
    // ENGINE_POLICY too.
    let o = r.p.cmd(&["replay", &r.run_id]).env("ENGINE_POLICY", "strict.yml").output().unwrap();
    r.refused(&o, 2, &r.sentence(&r.gen, &over));
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn a_step_recorded_as_root_under_an_allowing_policy_is_refused_without_it() {
    let _serial = one_at_a_time();
    let host = Host::new();
    let name = unique("rroot");
    let p = Project::new(&format!(
        "version: 1\ndefaults: {{ image: {IMAGE} }}\nsteps:\n  {name}:\n    user: \"0:0\"\n    network: bridge\n    run: mkdir -p o && id -u > o/uid\n    outputs: [o]\n"
    ));
    p.write("allow.yml", "version: 1\nallow_root: true\n");
    let o = p.run(&["run", "--policy", "allow.yml"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let since = now();
    let id = run_ids(&p).pop().unwrap();
    let record = shown(&id, "record.json");
    let o = p.run(&["replay", &id]);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 2, "{}{err}", text(&o.stdout));
    let sentence = format!("record {} step `{name}`: step `{name}` asks to run as root (uid 0), which is not allowed", record.display());
    assert!(err.contains(&sentence), "{err}");
    assert_eq!(created(&name, since), 0);
    // Under the policy that allowed it, it replays (and reproduces).
    let o = p.run(&["replay", &id, "--policy", "allow.yml"]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("{name}  reproduced")), "{}", text(&o.stdout));
    assert_nothing_escaped(&p, &host, &[]);
}

#[test]
fn dropped_limits_get_the_defaults_and_unlimited_ones_are_refused() {
    let r = recorded_run("    limits: { memory: 64m, pids: 32 }\n", None);
    let gen = r.gen.clone();
    // Limits removed from the record: the replay runs with the built-in defaults (1g, 256),
    // never unlimited, and the outputs say so.
    r.edit(|v| {
        step_mut(v, &gen)["definition"].as_object_mut().unwrap().remove("limits");
    });
    let o = r.replay(&[&gen]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}{}", text(&o.stderr));
    assert!(out.contains("-67108864") && out.contains(&format!("+{}", 1u64 << 30)), "{out}");
    assert!(out.contains("-32") && out.contains("+256"), "{out}");
    assert!(!out.contains("+max") && !out.contains("+9223372036854771712"), "{out}");

    // Zero means "unlimited" to Docker: refused like in a workflow.
    r.edit(|v| {
        let limits = &mut step_mut(v, &gen)["definition"]["limits"];
        limits["memory"] = json!(0);
        limits["pids"] = json!(0);
    });
    let since = now();
    let o = r.replay(&[]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains(&r.sentence(&gen, "memory `0b` is below the minimum of 6m")), "{err}");
    assert!(err.contains(&r.sentence(&gen, "invalid pids `0`")), "{err}");
    assert_eq!(created(&gen, since), 0);
    assert_eq!(created(&r.used, since), 0);
    r.restore();
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn input_or_upstream_digests_the_store_does_not_match_are_refused() {
    let r = recorded_run("", None);
    let (gen, used) = (r.gen.clone(), r.used.clone());
    // Another file's content planted as the input (an input manifest listing it, kept in the store
    // as a run would have kept it, named by the record).
    let planted = cache::Digest::of(HOST_MARKER.as_bytes()).to_string();
    let original: Value = serde_json::from_slice(&r.original).unwrap();
    let mut inputs = r.inputs_of(step_mut(&mut original.clone(), &gen));
    inputs[0]["digest"] = json!(planted);
    let planted_inputs = r.plant_inputs(&inputs);
    r.edit(|v| step_mut(v, &gen)["inputs_manifest"] = json!(planted_inputs));
    r.refused(
        &r.replay(&[&gen]),
        2,
        &r.sentence(&gen, "its key does not match its key components and input files; refusing to replay an edited record"),
    );

    // The needed step's outputs (staged into `use`'s workspace) changed.
    r.edit(|v| {
        let outputs = step_mut(v, &gen)["outputs"].as_array_mut().unwrap();
        let file = outputs.iter_mut().find(|e| e["path"] == "o/a").unwrap();
        file["digest"] = json!(planted);
    });
    r.refused(&r.replay(&[&used]), 2, &r.sentence(&used, &format!("the outputs of `{gen}` it needs do not match their digest")));
    // ... with the digest recomputed too: `use`'s key covers the old one.
    r.edit(|v| {
        let up = step_mut(v, &gen);
        up["outputs"].as_array_mut().unwrap().retain(|e| e["path"] != "o/uid");
        let entries: Vec<cache::OutputEntry> = serde_json::from_value(up["outputs"].clone()).unwrap();
        let m = cache::Manifest {
            key: cache::ActionKey::from_digest(cache::Digest::from_bytes([0; 32])),
            workflow: String::new(),
            step: String::new(),
            entries,
            exit_code: 0,
            log: cache::Digest::from_bytes([0; 32]),
            created: 0,
            duration_ms: 0,
            inputs: None,
        };
        up["outputs_digest"] = json!(m.outputs_digest().to_string());
    });
    r.refused(&r.replay(&[&used]), 2, &r.sentence(&used, "its definition does not match its key (needs differs)"));

    // The store keeps the input manifest of the key; a record listing other files is refused
    // even when its key matches (here: the store's entry was changed to name another manifest).
    r.restore();
    let key = serde_json::from_slice::<Value>(&r.original).unwrap()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == gen.as_str())
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = r.p.cache_dir().join("v1/actions").join(&key[..2]).join(format!("{key}.json"));
    let saved = std::fs::read(&entry).unwrap();
    let mut manifest: Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(
        manifest["inputs"],
        original["steps"].as_array().unwrap().iter().find(|s| s["name"] == gen.as_str()).unwrap()["inputs_manifest"]
    );
    manifest["inputs"] = json!(planted_inputs);
    std::fs::write(&entry, serde_json::to_vec(&manifest).unwrap()).unwrap();
    r.refused(&r.replay(&[&gen]), 2, &r.sentence(&gen, "its input files do not match those the cache store keeps for its key"));
    std::fs::write(&entry, saved).unwrap();
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn a_fifo_huge_symlinked_or_foreign_record_is_refused_within_seconds() {
    let r = recorded_run("", None);
    let runs = r.p.path().join(".engine/runs");
    // Created in the project; returned as the engine names them.
    let fake = |id: &str| -> (PathBuf, PathBuf) {
        let dir = runs.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("record.json"), shown(id, "record.json"))
    };
    let deadline = Duration::from_secs(20);

    // A FIFO: never opened for a blocking read.
    let (fifo, fifo_shown) = fake("ffff0001fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = run_within(&r.p, &["replay", "ffff0001fifo"], deadline);
    r.refused(&o, 2, &format!("refusing the run record {}: it is not a regular file", fifo_shown.display()));
    // `engine runs` and `latest` skip it rather than hang.
    let o = run_within(&r.p, &["runs"], deadline);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&r.run_id), "{}", text(&o.stdout));

    // Larger than the cap (sparse: nothing is written, nothing may be read).
    let (huge, huge_shown) = fake("ffff0002huge");
    std::fs::File::create(&huge).unwrap().set_len((64 << 20) + 1).unwrap();
    let o = run_within(&r.p, &["replay", "ffff0002huge"], deadline);
    r.refused(
        &o,
        2,
        &format!(
            "refusing the run record {}: it is {} bytes, more than the {} bytes allowed",
            huge_shown.display(),
            (64u64 << 20) + 1,
            64u64 << 20
        ),
    );

    // A symlink to a host file is not followed, and a symlinked run folder is no run.
    let (link, link_shown) = fake("ffff0003link");
    std::os::unix::fs::symlink(r.host.secret_path(), &link).unwrap();
    let o = run_within(&r.p, &["replay", "ffff0003link"], deadline);
    r.refused(&o, 2, &format!("refusing the run record {}: it is a symlink, which is never followed", link_shown.display()));
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("record.json"), &r.original).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), runs.join("ffff0004dirlink")).unwrap();
    let o = run_within(&r.p, &["replay", "ffff0004dirlink"], deadline);
    r.refused(&o, 2, "no run `ffff0004dirlink`");

    // Another schema, or a record filed under another run's folder.
    let (other, other_shown) = fake("ffff0005schema");
    let mut v: Value = serde_json::from_slice(&r.original).unwrap();
    v["schema"] = json!("engine.run-record/v9");
    std::fs::write(&other, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = run_within(&r.p, &["replay", "ffff0005schema"], deadline);
    r.refused(
        &o,
        2,
        &format!("refusing the run record {}: schema `engine.run-record/v9` is not `engine.run-record/v2`", other_shown.display()),
    );
    let (moved, moved_shown) = fake("ffff0006moved");
    std::fs::write(&moved, &r.original).unwrap();
    let o = run_within(&r.p, &["replay", "ffff0006moved"], deadline);
    r.refused(
        &o,
        2,
        &format!("refusing the run record {}: its run id `{}` is not the name of its folder", moved_shown.display(), r.run_id),
    );

    // The honest record is still found and still reproduces.
    let o = run_within(&r.p, &["replay", &r.run_id], Duration::from_secs(120));
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.contains("2 reproduced, 0 differ"), "{out}");

    for id in ["ffff0001fifo", "ffff0002huge", "ffff0003link", "ffff0005schema", "ffff0006moved"] {
        std::fs::remove_dir_all(runs.join(id)).unwrap();
    }
    std::fs::remove_file(runs.join("ffff0004dirlink")).unwrap();
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn an_honest_record_replays_reproduced_under_a_policy_that_allows_it() {
    let policy = "version: 1\nmax_limits: { memory: 2g, pids: 512 }\nnetworks: [none]\nimage_prefixes: [\"local/\"]\n";
    let r = recorded_run("", Some(policy));
    r.p.write("policy.yml", policy);
    // The recorded `--jobs` is not checked against anything; an absurd one must not matter.
    r.edit(|v| v["invocation"]["jobs"] = json!(u64::MAX));
    let o = r.replay(&["--policy", "policy.yml"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.contains(&format!("{}  reproduced", r.gen)) || out.contains(&format!("{} reproduced", r.gen)), "{out}");
    assert!(out.contains("2 reproduced, 0 differ"), "{out}");
    // Reproduced `o/uid` too: the replay ran as the recorded non-root user.
    assert_eq!(std::fs::read_to_string(r.p.path().join(".engine/out").join(&r.gen).join("o/uid")).unwrap(), "1000\n");
    assert_nothing_escaped(&r.p, &r.host, &[]);
}

#[test]
fn a_step_on_an_engine_built_image_replays_reproduced() {
    let _serial = one_at_a_time();
    let host = Host::new();
    let (tool, step) = (unique("rtool"), unique("rbuilt"));
    let p = Project::new(&format!(
        "version: 1\nname: {tool}\nimages:\n  {tool}:\n    stages:\n      - {{ name: only, from: {IMAGE}, run: [\"echo {tool} > /marker\"] }}\n\
         steps:\n  {step}: {{ image: {tool}, run: 'mkdir -p o && cat /marker > o/m', outputs: [o] }}\n"
    ));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let id = run_ids(&p).pop().unwrap();
    let o = p.run(&["replay", &id]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.contains(&format!("{step}  reproduced")), "{out}");
    assert_nothing_escaped(&p, &host, &[]);
    // The image is this test's own.
    let ids = Command::new("docker").args(["images", "-q", "--filter", &format!("label=engine.image={tool}")]).output().unwrap();
    for image in text(&ids.stdout).lines().collect::<std::collections::BTreeSet<_>>() {
        let _ = Command::new("docker").args(["rmi", "-f", image]).output();
    }
}

#[test]
fn a_forbidden_image_passed_off_as_an_allowed_reference_is_refused() {
    let _serial = one_at_a_time();
    let host = Host::new();
    // An image of this test's own (its own ID), under a prefix the policy will not allow.
    let tag = format!("rforbidden/{}:1", unique("img"));
    let maker = unique("rmk");
    assert!(Command::new("docker").args(["run", "--name", &maker, IMAGE, "true"]).output().unwrap().status.success());
    let committed = Command::new("docker").args(["commit", "--change", &format!("ENV MADE={maker}"), &maker, &tag]).output().unwrap();
    assert!(committed.status.success(), "{}", text(&committed.stderr));
    let _ = Command::new("docker").args(["rm", &maker]).output();

    let name = unique("rimg");
    let p =
        Project::new(&format!("version: 1\nsteps:\n  {name}: {{ image: \"{tag}\", run: 'mkdir -p o && echo hi > o/x', outputs: [o] }}\n"));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let id = run_ids(&p).pop().unwrap();
    let record = p.path().join(".engine/runs").join(&id).join("record.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let s = step_mut(&mut v, &name);
    s["definition"]["image"] = json!({ "kind": "reference", "name": IMAGE });
    s["image"]["reference"] = json!(IMAGE);
    let image_id = s["image"]["id"].as_str().unwrap().to_string();
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    p.write("policy.yml", "version: 1\nimage_prefixes: [\"local/\"]\n");
    let since = now();

    let o = p.run(&["replay", &id, "--policy", "policy.yml"]);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 2, "{}{err}", text(&o.stdout));
    let sentence = format!(
        "record {} step `{name}`: its image {image_id} carries no tag the policy allows (tags: {tag}; the policy allows images starting with `local/`); refusing to replay it",
        shown(&id, "record.json").display()
    );
    assert!(err.contains(&sentence), "{err}");
    assert_eq!(created(&name, since), 0);
    // Without an image policy the edit changes nothing that runs (the ID is the key's): it replays.
    let o = p.run(&["replay", &id]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert_nothing_escaped(&p, &host, &[]);
    let _ = Command::new("docker").args(["rmi", &tag]).output();
}
