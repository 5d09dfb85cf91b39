//! The remote cache end to end: the real daemon and Debian's `docker-registry`
//! (`remote::testing::TestRegistry`, one per test). A second "machine" (a fresh cache dir, the
//! workflow copied to another path) gets every step from the registry with no container created;
//! a changed input uploads only the changed blobs; a registry that stops mid-run, or a tampered
//! blob, never fails a run; read-only mode uploads nothing; credentials appear nowhere.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;
use remote::testing::TestRegistry;

const CHAIN: &str = r#"version: 1
defaults: { image: local/busybox:1 }
steps:
  a:
    inputs: [src/a.txt]
    run: mkdir -p gen && cp src/a.txt gen/a.out && echo built-a
    outputs: [gen/a.out]
  b:
    needs: [a]
    run: mkdir -p res && cat gen/a.out gen/a.out > res/b.out && echo same-every-time > res/static.txt
    outputs: [res/b.out, res/static.txt]
  c:
    inputs: [src/c.txt]
    run: cp src/c.txt c.out
    outputs: [c.out]
"#;

fn project() -> Project {
    let p = Project::new(CHAIN);
    p.write("src/a.txt", "alpha\n");
    p.write("src/c.txt", "gamma\n");
    p
}

/// A Docker config folder with no credentials (the user's own `~/.docker` is not read).
fn empty_docker_config(p: &Project) -> String {
    let dir = p.path().join(".engine/docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

fn run(p: &Project, url: &str, extra: &[&str], docker_config: &str) -> Output {
    let mut args = vec!["run", "--output", "json", "--remote-cache", url];
    args.extend_from_slice(extra);
    p.cmd(&args).env("DOCKER_CONFIG", docker_config).env_remove("ENGINE_REMOTE_CACHE").output().unwrap()
}

/// `engine run --output json --remote-cache URL` in `p`, calling `at` once (with the child) on
/// the first `step_finished` event of `step` (any step: `None`); then the rest of the events
/// and the output.
fn run_until(p: &Project, url: &str, step: Option<&str>, at: impl FnOnce(&std::process::Child)) -> (Output, Vec<serde_json::Value>) {
    use std::io::BufRead;
    let mut child = p
        .cmd(&["run", "--output", "json", "--remote-cache", url])
        .env("DOCKER_CONFIG", empty_docker_config(p))
        .env_remove("ENGINE_REMOTE_CACHE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("\"event\":\"step_finished\"") && step.is_none_or(|s| line.contains(&format!("\"step\":\"{s}\"")));
        seen.push(line);
        if done {
            at(&child);
            break;
        }
    }
    seen.extend(lines.map(Result::unwrap));
    let out = child.wait_with_output().unwrap();
    let events = seen.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (out, events)
}

fn events(o: &Output, expect: i32) -> Vec<serde_json::Value> {
    assert_eq!(code(o), expect, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn remote_event(events: &[serde_json::Value]) -> &serde_json::Value {
    let n = events.len();
    assert_eq!(events[n - 2]["event"], "remote_cache", "{events:?}");
    &events[n - 2]
}

fn sources(events: &[serde_json::Value]) -> BTreeMap<String, String> {
    events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| (e["step"].as_str().unwrap().to_string(), e["source"].as_str().unwrap_or("-").to_string()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn run_id(events: &[serde_json::Value]) -> String {
    events[0]["run_id"].as_str().unwrap().to_string()
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir).into_iter().map(|f| (f.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&f).unwrap())).collect()
}

fn blob_puts(reg: &TestRegistry) -> usize {
    reg.count_requests("PUT", "/blobs/uploads/")
}

#[test]
fn a_second_machine_gets_every_step_from_the_registry_without_a_container() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let one = project();
    let first = events(&run(&one, &url, &[], &empty_docker_config(&one)), 0);
    let up = remote_event(&first);
    assert_eq!((up["uploads"].as_u64(), up["hits"].as_u64()), (Some(3), Some(0)), "{up}");
    assert_eq!(up["not_shared"], serde_json::json!([]));
    let (_, record) = latest_record(&one);
    assert_eq!(record["invocation"]["remote_cache"], serde_json::json!({ "url": url, "mode": "readwrite" }));

    // Machine 2: another folder, another cache dir (Project's own), the same registry.
    let two = Project::copy_of(one.path());
    assert_ne!(one.path(), two.path());
    let plan =
        two.cmd(&["plan", "--output", "json", "--remote-cache", &url]).env("DOCKER_CONFIG", empty_docker_config(&two)).output().unwrap();
    assert_eq!(code(&plan), 0, "{}", text(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let planned: Vec<(&str, &str)> =
        plan["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["source"].as_str().unwrap_or("-"))).collect();
    // `b` needs `a`, whose outputs are not known before the download: the plan says it runs.
    assert_eq!(planned, [("a", "remote"), ("b", "-"), ("c", "remote")]);

    let explain =
        two.cmd(&["cache", "explain", "c", "--remote-cache", &url]).env("DOCKER_CONFIG", empty_docker_config(&two)).output().unwrap();
    assert!(text(&explain.stdout).starts_with("step `c`: cached, from the remote cache"), "{}", text(&explain.stdout));

    let since = now();
    let second = events(&run(&two, &url, &[], &empty_docker_config(&two)), 0);
    let until = now() + 1.0;
    assert_eq!(statuses(&second), map(&[("a", "cached"), ("b", "cached"), ("c", "cached")]));
    assert_eq!(sources(&second), map(&[("a", "remote"), ("b", "remote"), ("c", "remote")]));
    assert_eq!(containers_created(&run_id(&second), since, until), 0, "no container on machine 2");
    let down = remote_event(&second);
    assert_eq!((down["hits"].as_u64(), down["uploads"].as_u64()), (Some(3), Some(0)), "{down}");
    assert!(down["bytes_down"].as_u64().unwrap() > 0);
    assert_eq!(tree(&one.path().join(".engine/out")), tree(&two.path().join(".engine/out")), "the same outputs");

    // A third run on machine 2 is all local.
    let third = events(&run(&two, &url, &[], &empty_docker_config(&two)), 0);
    assert_eq!(sources(&third), map(&[("a", "local"), ("b", "local"), ("c", "local")]));
}

#[test]
fn a_prefetched_key_is_asked_for_once() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    // Six steps without needs (prefetched at the start of the run) and one with (looked up in
    // its job slot); one job: most steps' slots come after their prefetch started or ended.
    let mut yaml = String::from("version: 1\ndefaults: { image: local/busybox:1 }\nsteps:\n");
    for i in 1..=6 {
        yaml.push_str(&format!("  s{i}: {{ run: 'echo {i} > o{i}', outputs: [o{i}] }}\n"));
    }
    yaml.push_str("  last: { needs: [s1, s6], run: 'cat o1 o6 > last', outputs: [last] }\n");
    let one = Project::new(&yaml);
    events(&run(&one, &url, &["--jobs", "1"], &empty_docker_config(&one)), 0);
    let manifest_gets = || reg.count_requests("GET", "/manifests/action-");
    let before = manifest_gets();

    let two = Project::copy_of(one.path());
    let second = events(&run(&two, &url, &["--jobs", "1"], &empty_docker_config(&two)), 0);
    assert!(sources(&second).values().all(|s| s == "remote"), "{:?}", sources(&second));
    let down = remote_event(&second);
    assert_eq!((down["hits"].as_u64(), down["misses"].as_u64()), (Some(7), Some(0)), "{down}");
    assert_eq!(manifest_gets() - before, 7, "one GET of each entry's manifest: {down}");
}

#[test]
fn a_changed_input_uploads_only_the_changed_blobs() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let p = project();
    let first = events(&run(&p, &url, &[], &empty_docker_config(&p)), 0);
    let puts = blob_puts(&reg);
    assert_eq!(puts as u64, remote_event(&first)["blobs_up"].as_u64().unwrap(), "every blob uploaded is one PUT");

    p.write("src/a.txt", "alpha, changed\n");
    let second = events(&run(&p, &url, &[], &empty_docker_config(&p)), 0);
    let up = remote_event(&second);
    // `a` and `b` ran again (c is a local hit); their unchanged blobs (a's log, b's static file and
    // empty log) are one HEAD each, not uploaded again.
    assert_eq!(up["uploads"].as_u64(), Some(2), "{up}");
    let new_puts = (blob_puts(&reg) - puts) as u64;
    assert_eq!(new_puts, up["blobs_up"].as_u64().unwrap(), "{up}");
    assert!(up["blobs_skipped"].as_u64().unwrap() >= 2, "{up}");
    // What changed: a's output, b's output, and each entry's config (its output manifest).
    assert_eq!(new_puts, 4, "{up}");
}

#[test]
fn a_registry_stopped_mid_run_leaves_a_successful_run_and_one_warning() {
    let Some(mut reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let p = Project::new(
        r#"version: 1
defaults: { image: local/busybox:1 }
steps:
  a:
    run: echo one > a.out
    outputs: [a.out]
  b:
    needs: [a]
    run: sleep 2 && cat a.out > b.out
    outputs: [b.out]
  c:
    needs: [b]
    run: cat b.out > c.out
    outputs: [c.out]
"#,
    );
    // Stop the registry once `a` has finished (b then runs for 2 s: its lookup or upload fails).
    let (out, events) = run_until(&p, &url, Some("a"), |_| reg.stop());
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert_eq!(statuses(&events), map(&[("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]));
    assert_eq!(stderr.matches("running locally, results not shared").count(), 1, "one warning: {stderr}");
    let summary = remote_event(&events);
    let not_shared: Vec<&str> = summary["not_shared"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(not_shared.contains(&"b") && not_shared.contains(&"c"), "{summary}");
    assert!(summary["unavailable"].is_string(), "{summary}");
}

#[test]
fn a_registry_down_before_the_run_costs_one_warning_and_the_plain_summary_says_so() {
    let Some(mut reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    reg.stop();
    let p = project();
    let o = p.cmd(&["run", "--remote-cache", &url]).env("DOCKER_CONFIG", empty_docker_config(&p)).output().unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(code(&o), 0, "{stderr}");
    assert_eq!(stderr.matches("running locally, results not shared").count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("remote cache {url} (readwrite): 0 hits")), "{stderr}");
    assert!(stderr.contains("not shared: "), "{stderr}");
}

#[test]
fn a_tampered_blob_is_detected_and_the_step_runs() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let one = project();
    events(&run(&one, &url, &[], &empty_docker_config(&one)), 0);
    // c's output `gamma\n`: same length, other bytes, in the registry's own storage: the blob,
    // and the copy embedded in the manifest of c's entry (what a reader of ours uses).
    let blob = reg.blob_data_path(&cache::Digest::of(b"gamma\n"));
    assert!(blob.is_file(), "{}", blob.display());
    std::fs::write(&blob, b"GAMMA\n").unwrap();
    let (embedded, tampered) = ("\"data\":\"Z2FtbWEK\"", "\"data\":\"R0FNTUEK\"");
    let mut changed = 0;
    for file in walkdir::WalkDir::new(reg.storage_dir()).into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
        let bytes = std::fs::read(file.path()).unwrap();
        if let Some(text) = std::str::from_utf8(&bytes).ok().filter(|t| t.contains(embedded)) {
            std::fs::write(file.path(), text.replace(embedded, tampered)).unwrap();
            changed += 1;
        }
    }
    assert_eq!(changed, 1, "c's manifest embeds its output");

    let two = Project::copy_of(one.path());
    let o = run(&two, &url, &[], &empty_docker_config(&two));
    let since = now() - 60.0;
    let second = events(&o, 0);
    let until = now() + 1.0;
    let stderr = text(&o.stderr);
    assert!(stderr.contains("step `c` is damaged"), "{stderr}");
    assert_eq!(statuses(&second)["c"], "succeeded", "c ran");
    assert_eq!(sources(&second)["a"], "remote");
    assert!(containers_created(&run_id(&second), since, until) >= 1);
    assert_eq!(std::fs::read(two.path().join(".engine/out/c/c.out")).unwrap(), b"gamma\n");
    assert_eq!(remote_event(&second)["damaged"].as_u64(), Some(1));
}

#[test]
fn read_only_mode_uploads_nothing() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let p = project();
    // Through the environment this time.
    let o = p
        .cmd(&["run", "--output", "json"])
        .env("ENGINE_REMOTE_CACHE", &url)
        .env("ENGINE_REMOTE_CACHE_MODE", "read")
        .env("DOCKER_CONFIG", empty_docker_config(&p))
        .output()
        .unwrap();
    let evs = events(&o, 0);
    let summary = remote_event(&evs);
    assert_eq!((summary["mode"].as_str(), summary["uploads"].as_u64(), summary["misses"].as_u64()), (Some("read"), Some(0), Some(3)));
    assert_eq!(reg.count_requests("PUT", ""), 0, "{}", reg.log());
    assert_eq!(reg.count_requests("POST", ""), 0, "{}", reg.log());
}

#[test]
fn a_policy_caps_the_mode_and_pins_the_url() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let p = project();
    p.write(".engine/policy.yml", &format!("version: 1\nremote_cache:\n  url: {url}\n  mode: read\n"));
    let policy = p.path().join(".engine/policy.yml").display().to_string();
    let o = p.cmd(&["run", "--policy", &policy, "--remote-cache-mode", "readwrite"]).output().unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("policy.yml:4"), "{}", text(&o.stderr));
    let other = format!("oci://{}/other", reg.registry());
    let o = p.cmd(&["plan", "--policy", &policy, "--remote-cache", &other]).output().unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("policy.yml:3"), "{}", text(&o.stderr));
    let o = p.cmd(&["run", "--remote-cache", "http://x/y"]).output().unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    // The policy's URL and mode are the defaults.
    let o = p.cmd(&["run", "--output", "json", "--policy", &policy]).env("DOCKER_CONFIG", empty_docker_config(&p)).output().unwrap();
    let evs = events(&o, 0);
    assert_eq!(remote_event(&evs)["mode"], "read");
    assert_eq!(reg.count_requests("PUT", ""), 0);
}

#[test]
fn cache_push_and_pull_move_entries_explicitly() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let p = project();
    let o = p.run(&["run", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let cfg = empty_docker_config(&p);
    let o = p.cmd(&["cache", "push", "--remote-cache", &url]).env("DOCKER_CONFIG", &cfg).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("pushed 3 entries"), "{}", text(&o.stdout));

    let two = Project::copy_of(p.path());
    let o = two.cmd(&["cache", "pull", "--remote-cache", &url]).env("DOCKER_CONFIG", &cfg).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("pulled 3 entries"), "{}", text(&o.stdout));
    // Now all local, no registry needed.
    let since = now();
    let evs = events(&two.run(&["run", "--output", "json"]), 0);
    assert_eq!(containers_created(&run_id(&evs), since, now() + 1.0), 0);
    assert_eq!(sources(&evs), map(&[("a", "local"), ("b", "local"), ("c", "local")]));

    // An unknown key: exit 1, named.
    let missing = "ab".repeat(32);
    let o = two.cmd(&["cache", "pull", "--remote-cache", &url, &missing]).env("DOCKER_CONFIG", &cfg).output().unwrap();
    assert_eq!(code(&o), 1, "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains(&missing), "{}", text(&o.stdout));
    let o = two.cmd(&["cache", "pull", "--remote-cache", &url, "nope"]).output().unwrap();
    assert_eq!(code(&o), 2);
}

#[test]
fn basic_auth_credentials_work_and_appear_nowhere() {
    const PASSWORD: &str = "pw-4f1c7e9a2b-secret";
    let Some(reg) = TestRegistry::start_with_auth("ci-user", PASSWORD) else { return };
    let url = reg.url().to_string();
    let one = project();
    let config_dir = reg.docker_config_with(&one.path().join(".engine/auth-config"), "ci-user", PASSWORD);
    let config = config_dir.display().to_string();
    let o1 = run(&one, &url, &[], &config);
    let first = events(&o1, 0);
    assert_eq!(remote_event(&first)["uploads"].as_u64(), Some(3), "{}", text(&o1.stderr));

    let two = Project::copy_of(one.path());
    let o2 = run(&two, &url, &[], &config);
    let second = events(&o2, 0);
    assert_eq!(remote_event(&second)["hits"].as_u64(), Some(3));

    // Without credentials: refused, warned once, the run still succeeds.
    let three = Project::copy_of(one.path());
    let o3 = run(&three, &url, &[], &empty_docker_config(&three));
    events(&o3, 0);
    assert!(text(&o3.stderr).contains("refused"), "{}", text(&o3.stderr));

    for o in [&o1, &o2, &o3] {
        assert!(!text(&o.stdout).contains(PASSWORD) && !text(&o.stderr).contains(PASSWORD));
    }
    for p in [&one, &two, &three] {
        for root in [p.path().join(".engine/runs"), p.cache_dir(), p.path().join(".engine/out")] {
            let found = common::hostile::files_containing(&root, PASSWORD.as_bytes());
            assert!(found.is_empty(), "the password in {found:?}");
        }
    }
}

/// An image under `images:` built on machine 1 is pushed to the registry; machine 2, which lacks
/// it, pulls it instead of building it: no build container, the step runs on the pulled image.
#[test]
fn an_engine_built_image_is_pulled_not_rebuilt_on_a_second_machine() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    let wf = unique("rimg").to_lowercase();
    let images = Images(wf.clone());
    let one = Project::new(&format!(
        "version: 1\nname: {wf}\nimages:\n  {wf}-tool:\n    stages:\n      - {{ name: main, from: local/busybox:1, run: [\"echo made-{wf} > /made\"] }}\n\
         steps:\n  use:\n    image: {wf}-tool\n    run: cat /made > out.txt\n    outputs: [out.txt]\n"
    ));
    let since = now();
    let first = events(&run(&one, &url, &[], &empty_docker_config(&one)), 0);
    // The build's container and the step's: both carry the run's label.
    assert!(containers_created(&run_id(&first), since, now() + 1.0) >= 2, "machine 1 builds the image");
    let up = remote_event(&first);
    assert_eq!(up["images_pushed"], serde_json::json!([format!("{wf}-tool")]), "{up}");
    assert_eq!(up["images_pulled"], serde_json::json!([]), "{up}");

    // Machine 2 has none of the images; `--no-cache` makes its step run, so it needs the image.
    images.remove();
    let two = Project::copy_of(one.path());
    let since = now();
    let second = events(&run(&two, &url, &["--no-cache"], &empty_docker_config(&two)), 0);
    let until = now() + 1.0;
    let down = remote_event(&second);
    assert_eq!(down["images_pulled"], serde_json::json!([format!("{wf}-tool")]), "{down}");
    assert_eq!(statuses(&second), map(&[("use", "succeeded")]));
    assert_eq!(
        containers_created(&run_id(&second), since, until),
        1,
        "the step's container only: no build container (build containers carry the run label too)"
    );
    assert_eq!(std::fs::read_to_string(two.path().join(".engine/out/use/out.txt")).unwrap(), format!("made-{wf}\n"));
}

/// Ctrl-C while a large output is still being uploaded (every step has ended): the uploads are
/// cut at once, the run ends with its steps' result and names the step not shared, and the
/// registry holds no entry a later run would trust half-written: a second machine finds
/// nothing damaged and runs the step again.
#[test]
fn an_interrupt_during_an_upload_leaves_no_half_written_entry() {
    let Some(reg) = TestRegistry::start() else { return };
    let url = reg.url().to_string();
    // 64 MiB of output: its upload is still running when the step has finished.
    let p = Project::new(
        "version: 1\ndefaults: { image: local/busybox:1 }\nsteps:\n  big:\n    run: head -c 67108864 /dev/urandom > big.bin\n    outputs: [big.bin]\n",
    );
    let (out, summary) = run_until(&p, &url, None, |child| signal(child, libc::SIGINT));
    assert_eq!(out.status.code(), Some(0), "events:\n{summary:#?}\nstderr:\n{}", text(&out.stderr));
    let shared = remote_event(&summary);
    assert_eq!(shared["uploads"].as_u64(), Some(0), "interrupted before its upload ended: {shared}");
    assert_eq!(shared["not_shared"], serde_json::json!(["big"]), "{shared}");

    // Machine 2: no damaged entry; the step is restored from a complete entry or runs again.
    let two = Project::copy_of(p.path());
    let second = events(&run(&two, &url, &[], &empty_docker_config(&two)), 0);
    assert_eq!(remote_event(&second)["damaged"].as_u64(), Some(0), "{}", remote_event(&second));
    assert_eq!(statuses(&second)["big"], "succeeded", "no entry was there to restore");
    assert_eq!(std::fs::metadata(two.path().join(".engine/out/big/big.bin")).unwrap().len(), 64 << 20);
}
