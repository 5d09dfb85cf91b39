//! `engine plan` is a dry run: on a workflow whose images under `images:` are not built yet it
//! builds nothing and creates no container (checked with `docker events` around it and the image
//! list), and still keys the steps on those images (by the images' keys, computed without
//! building): the keys it predicts are those the run uses. Once a run has built them, the plan
//! predicts every step restored from the cache.

mod common;

use std::process::Command;

use common::*;

/// The daemon's events between `since` and `until` matching every filter given.
fn events(since: f64, until: f64, filters: &[String]) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["events", "--since", &format!("{since:.3}"), "--until", &format!("{until:.3}"), "--format", "{{json .}}"]);
    for f in filters {
        cmd.args(["--filter", f]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).lines().map(str::to_string).collect()
}

/// Every image (final, stage and intermediate) labelled as one of this workflow's.
fn images_of(wf: &str) -> Vec<String> {
    let mut all = Vec::new();
    for name in ["tool", "legacy"] {
        let filter = format!("label=engine.image={wf}-{name}");
        let o = Command::new("docker").args(["images", "-a", "-q", "--no-trunc", "--filter", &filter]).output().unwrap();
        all.extend(text(&o.stdout).lines().map(str::to_string));
    }
    all.sort();
    all
}

/// Run `engine plan --output json`; returns its steps and the daemon's events that could come
/// from it: anything labelled with its pid (containers it would create carry it), and any image
/// event of this workflow's images.
fn plan(p: &Project, wf: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let since = now();
    let child = p.cmd(&["plan", "--output", "json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let until = now() + 1.0;
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut seen = events(since, until, &[format!("label=engine.pid={pid}")]);
    for name in ["tool", "legacy"] {
        seen.extend(events(since, until, &["type=image".to_string(), format!("label=engine.image={wf}-{name}")]));
    }
    seen.extend(events(since, until, &["type=image".to_string(), "event=tag".to_string(), format!("image={wf}/{wf}-tool")]));
    (plan["steps"].as_array().unwrap().clone(), seen)
}

fn step<'a>(steps: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    steps.iter().find(|s| s["name"] == name).unwrap()
}

#[test]
fn plan_on_unbuilt_images_builds_nothing_creates_no_container_and_keys_their_steps_as_the_run_does() {
    let wf = unique("plantest").to_lowercase();
    let _cleanup = Images(wf.clone());
    let p = Project::new(&format!(
        r#"version: 1
name: {wf}
images:
  {wf}-tool:
    stages:
      - name: build
        from: local/busybox:1
        copy: [{{ src: tools/greet.sh, dst: /opt/greet.sh }}]
        run:
          - chmod 755 /opt/greet.sh
      - name: final
        from: local/busybox:1
        copy: [{{ from: build, src: /opt/greet.sh, dst: /bin/greet }}]
  {wf}-legacy:
    dockerfile: docker/Dockerfile
    context: docker
steps:
  use:
    image: {wf}-tool
    run: greet > out.txt
    outputs: [out.txt]
  after:
    image: local/busybox:1
    needs: [use]
    run: cat out.txt > again.txt
    outputs: [again.txt]
  old:
    image: {wf}-legacy
    run: cat /hello > o.txt
    outputs: [o.txt]
  plain:
    image: local/busybox:1
    run: echo plain > p.txt
    outputs: [p.txt]
"#
    ));
    p.write("tools/greet.sh", &format!("#!/bin/sh\necho hello from {wf}\n"));
    p.write("docker/Dockerfile", &format!("FROM local/busybox:1\nRUN echo legacy-{wf} > /hello\n"));

    let (steps, seen) = plan(&p, &wf);
    assert!(seen.is_empty(), "`engine plan` touched the daemon's containers or images:\n{}", seen.join("\n"));
    assert!(images_of(&wf).is_empty(), "`engine plan` built images: {:?}", images_of(&wf));
    let reasons = |name: &str| step(&steps, name)["reasons"].clone();
    assert_eq!(step(&steps, "use")["status"], "run");
    assert_eq!(reasons("use"), serde_json::json!(["never run"]));
    let predicted = |name: &str| step(&steps, name)["key"].as_str().unwrap_or_else(|| panic!("`{name}` has no key")).to_string();
    let (use_key, old_key) = (predicted("use"), predicted("old"));
    assert_eq!(reasons("old"), serde_json::json!(["never run"]));
    assert_eq!(reasons("after"), serde_json::json!(["needs `use`, which will run"]));
    assert_eq!(reasons("plain"), serde_json::json!(["never run"]));
    assert!(step(&steps, "plain")["key"].is_string());
    let explained = text(&p.run(&["cache", "explain", "use"]).stdout);
    assert!(explained.contains(&format!("key:      {use_key}")), "{explained}");
    assert!(explained.contains("image:    built sha256:"), "{explained}");

    // A run builds the images; the plan then finds them, still building nothing.
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let built = images_of(&wf);
    assert!(!built.is_empty());
    let (steps, seen) = plan(&p, &wf);
    assert!(seen.is_empty(), "`engine plan` touched the daemon's containers or images:\n{}", seen.join("\n"));
    assert_eq!(images_of(&wf), built);
    for s in &steps {
        assert_eq!(s["status"], "cached", "{s}");
    }
    assert_eq!(step(&steps, "use")["key"].as_str(), Some(use_key.as_str()), "the run keyed `use` as the plan predicted");
    assert_eq!(step(&steps, "old")["key"].as_str(), Some(old_key.as_str()), "the run keyed `old` as the plan predicted");
}

/// A failure stores nothing in the cache, but the run record has it: the plan says the step failed
/// in the last run, not that it never ran; once it succeeds, that goes away.
#[test]
fn a_step_that_failed_in_the_last_run_is_said_to_have_failed_not_never_run() {
    let p = Project::new(
        "version: 1\nname: failed-last\ndefaults: { image: local/busybox:1 }\nsteps:\n  flaky:\n    inputs: [fail.txt]\n    run: test \"$(cat fail.txt)\" = no\n  other:\n    run: 'true'\n",
    );
    p.write("fail.txt", "yes\n");
    let reasons = |p: &Project| -> std::collections::BTreeMap<String, serde_json::Value> {
        let o = p.run(&["plan", "--output", "json"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s["reasons"].clone())).collect()
    };
    assert_eq!(reasons(&p)["flaky"], serde_json::json!(["never run"]));
    let o = p.run(&["run", "--keep-going"]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let (_, record) = latest_record(&p);
    let run_id = record["run_id"].as_str().unwrap().to_string();
    assert_eq!(reasons(&p)["flaky"], serde_json::json!([format!("failed in the last run ({run_id})")]));
    assert_eq!(reasons(&p)["other"], serde_json::json!([]));
    let plain = text(&p.run(&["plan"]).stdout);
    assert!(plain.contains(&format!("failed in the last run ({run_id})")), "{plain}");

    p.write("fail.txt", "no\n");
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(reasons(&p)["flaky"], serde_json::json!([]));
}
