//! Engine-built images end to end against the real daemon: a two-stage image and a Dockerfile
//! image used by steps, nothing rebuilt on a second run, and exactly the right things rebuilt
//! and re-run when a copied file changes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn events(p: &Project) -> Vec<serde_json::Value> {
    let o = p.run(&["run", "--output", "json"]);
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn image_id(reference_glob: &str) -> String {
    let o =
        Command::new("docker").args(["images", "-q", "--no-trunc", "--filter", &format!("reference={reference_glob}")]).output().unwrap();
    let ids: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    assert!(!ids.is_empty(), "no image matches {reference_glob}");
    ids[0].clone()
}

#[test]
fn built_images_are_used_by_steps_reused_when_unchanged_and_rebuilt_from_the_changed_stage() {
    let wf = unique("imgtest").to_lowercase();
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
          - chmod 755 /opt/greet.sh && echo junk > /opt/junk
      - name: final
        from: local/busybox:1
        copy: [{{ from: build, src: /opt/greet.sh, dst: /bin/greet }}]
  {wf}-legacy:
    dockerfile: docker/Dockerfile
    context: docker
steps:
  use:
    image: {wf}-tool
    run: greet > out.txt && test ! -e /opt/junk
    outputs: [out.txt]
  plain:
    image: local/busybox:1
    run: echo plain > p.txt
    outputs: [p.txt]
  old:
    image: {wf}-legacy
    run: cat /hello > o.txt
    outputs: [o.txt]
"#
    ));
    p.write("tools/greet.sh", &format!("#!/bin/sh\necho hello from {wf}\n"));
    p.write(
        "docker/Dockerfile",
        &format!("FROM local/busybox:1 AS build\nRUN echo legacy-{wf} > /hello-build\nFROM local/busybox:1\nCOPY --from=build /hello-build /hello\n"),
    );

    let first = events(&p);
    assert!(statuses(&first).values().all(|s| s == "succeeded"), "{:?}", statuses(&first));
    let out = p.path().join(".engine/out");
    assert_eq!(std::fs::read_to_string(out.join("use/out.txt")).unwrap(), format!("hello from {wf}\n"));
    assert_eq!(std::fs::read_to_string(out.join("old/o.txt")).unwrap(), format!("legacy-{wf}\n"));
    let tool = image_id(&format!("{wf}/{wf}-tool"));
    let legacy = image_id(&format!("{wf}/{wf}-legacy"));

    // Unchanged: nothing is built, no container is created, every step is cached.
    let since = now();
    let second = events(&p);
    let until = now() + 1.0;
    let run_id = second[0]["run_id"].as_str().unwrap().to_string();
    assert!(statuses(&second).values().all(|s| s == "cached"), "{:?}", statuses(&second));
    assert_eq!(containers_created(&run_id, since, until), 0);
    assert_eq!(image_id(&format!("{wf}/{wf}-tool")), tool);

    // A copied file changes: the tool image is rebuilt, the step using it re-runs; nothing else.
    p.write("tools/greet.sh", &format!("#!/bin/sh\necho bonjour from {wf}\n"));
    let third = events(&p);
    assert_eq!(statuses(&third)["use"], "succeeded");
    assert_eq!(statuses(&third)["plain"], "cached");
    assert_eq!(statuses(&third)["old"], "cached");
    assert_eq!(std::fs::read_to_string(out.join("use/out.txt")).unwrap(), format!("bonjour from {wf}\n"));
    assert_ne!(image_id(&format!("{wf}/{wf}-tool")), tool);
    assert_eq!(image_id(&format!("{wf}/{wf}-legacy")), legacy);
    assert!(containers(&format!("engine.run={run_id}")).is_empty());
}

#[test]
fn a_failing_image_build_fails_the_steps_that_use_it_naming_the_stage() {
    let wf = unique("imgfail").to_lowercase();
    let _cleanup = Images(wf.clone());
    let p = Project::new(&format!(
        "version: 1\nname: {wf}\nimages:\n  {wf}-tool:\n    stages:\n      - {{ name: broken, from: local/busybox:1, run: [\"echo {wf}; exit 9\"] }}\nsteps:\n  s: {{ image: {wf}-tool, run: 'true' }}\n  plain: {{ image: local/busybox:1, run: echo plain }}\n"
    ));
    let o = p.run(&["run", "--keep-going"]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("broken") && err.contains("exit"), "{err}");
    let o = p.run(&["run", "--keep-going", "--output", "json"]);
    let events: Vec<serde_json::Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let st = statuses(&events);
    assert_eq!(st["s"], "failed");
    assert_eq!(st["plain"], "cached", "a step that does not use the image is not held back by it");
}

#[test]
fn a_step_waits_only_for_the_image_it_uses() {
    let wf = unique("imgwait").to_lowercase();
    let _cleanup = Images(wf.clone());
    // The build takes seconds on purpose; the plain step takes a fraction of one.
    let p = Project::new(&format!(
        "version: 1\nname: {wf}\nimages:\n  {wf}-slow:\n    stages:\n      - {{ name: only, from: local/busybox:1, run: [\"sleep 5; echo built-{wf}\"] }}\nsteps:\n  uses: {{ image: {wf}-slow, run: 'true' }}\n  plain: {{ image: local/busybox:1, run: echo plain-{wf} }}\n"
    ));
    let all = events(&p);
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| all.iter().position(pred).unwrap_or(usize::MAX);
    let plain_done = at(&|e| e["event"] == "step_finished" && e["step"] == "plain");
    let image_built = at(&|e| e["event"] == "log" && e["line"] == format!("built-{wf}"));
    let uses_done = at(&|e| e["event"] == "step_finished" && e["step"] == "uses");
    assert!(plain_done < image_built, "plain finished while the image was still building");
    assert!(image_built < uses_done, "uses ran after its image");
}

/// A build container of an engine killed mid-build is removed by `engine clean` (it carries the
/// owner labels), and the images the engine builds carry neither the run id nor the owner of the
/// build (containers other tools create from them are not the engine's).
#[test]
fn build_containers_of_a_killed_engine_are_cleaned_and_images_keep_no_run_labels() {
    let wf = unique("bk");
    let image = format!("{wf}-slow");
    let p = Project::new(&format!(
        "version: 1\nname: {wf}\nimages:\n  {image}:\n    stages:\n      - {{ name: s, from: {IMAGE}, run: [\"sleep 300\"] }}\n  \
         {image}-ok:\n    stages:\n      - {{ name: s, from: {IMAGE}, run: [\"echo {wf} > /made\"] }}\n\
         steps:\n  a: {{ image: {image}, run: 'true' }}\n  b: {{ image: {image}-ok, run: cat /made }}\n"
    ));
    let _images = Images(wf.clone());
    let label = format!("engine.image={image}");
    let mut victim = p.spawn(&["run", "a"]);
    wait_for("the build container", Duration::from_secs(30), || !containers(&label).is_empty());
    signal(&victim, libc::SIGKILL);
    victim.wait().unwrap();
    assert_eq!(containers(&label).len(), 1, "SIGKILL leaves the build container behind");
    let o = p.run(&["clean"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(containers(&label).is_empty(), "clean removes the dead engine's build container");

    let o = p.run(&["run", "b"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let id = image_id(&format!("{wf}/{image}-ok:*"));
    let o = Command::new("docker").args(["image", "inspect", "-f", "{{json .Config.Labels}}", &id]).output().unwrap();
    let labels: std::collections::HashMap<String, String> = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["engine.run", "engine.pid", "engine.pid.start", "engine.host"] {
        assert_eq!(labels.get(key).map(String::as_str), Some(""), "{key} in {labels:?}");
    }
    assert_eq!(labels.get("engine.image").map(String::as_str), Some(format!("{image}-ok").as_str()));
}

/// The offline busybox image (`scripts/import-busybox.sh`) has the official `busybox` image's
/// PATH, so a tool an image stage copies into /usr/local/bin is found by name, as on `busybox:1`.
#[test]
fn the_offline_busybox_image_finds_a_tool_copied_into_usr_local_bin() {
    let wf = unique("bbpath").to_lowercase();
    let base = format!("local/{wf}:1");
    let _cleanup = Images(wf.clone());
    let _base = Tag(base.clone());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/import-busybox.sh");
    let o = Command::new("bash").arg(script).arg(&base).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = Command::new("docker").args(["image", "inspect", "-f", "{{json .Config.Env}}", &base]).output().unwrap();
    let env: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(env.contains(&"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()), "{env:?}");

    let p = Project::new(&format!(
        r#"version: 1
name: {wf}
images:
  {wf}-tool:
    stages:
      - name: tool
        from: {base}
        copy: [{{ src: tools/greet.sh, dst: /usr/local/bin/greet }}]
        run: ["chmod 755 /usr/local/bin/greet"]
steps:
  use:
    image: {wf}-tool
    run: greet > out.txt
    outputs: [out.txt]
"#
    ));
    p.write("tools/greet.sh", &format!("#!/bin/sh\necho hello from {wf}\n"));
    let o = p.run(&["run"]);
    assert_eq!(code(&o), 0, "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/use/out.txt")).unwrap(), format!("hello from {wf}\n"));
}

/// Removes one tag (and its image, when that was the last tag).
struct Tag(String);

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

/// `engine images prune` removes this workflow's images only: an image it shares with another
/// workflow (the same stages give the same image, tagged once per workflow) loses this
/// workflow's tag and stays for the other, and a third workflow's image is untouched.
#[test]
fn images_prune_is_scoped_to_the_workflow_and_keeps_an_image_another_workflow_tags() {
    let base = unique("prune").to_lowercase();
    let (a, b, c) = (format!("{base}-a"), format!("{base}-b"), format!("{base}-c"));
    let shared = format!("{base}-shared");
    let _cleanup = [Images(a.clone()), Images(b.clone()), Images(c.clone())];
    let project = |wf: &str, own: &str| {
        let p = Project::new(&format!(
            "version: 1\nname: {wf}\nimages:\n  {shared}:\n    stages:\n      - {{ name: s, from: {IMAGE}, run: [\"echo {shared} > /shared\"] }}\n  \
             {own}:\n    stages:\n      - {{ name: s, from: {IMAGE}, run: [\"echo {own} > /own\"] }}\n\
             steps:\n  one: {{ image: {shared}, run: cat /shared }}\n  two: {{ image: {own}, run: cat /own }}\n"
        ));
        let o = p.run(&["run"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        p
    };
    let (pa, _pb, _pc) = (project(&a, &format!("{a}-tool")), project(&b, &format!("{b}-tool")), project(&c, &format!("{c}-tool")));
    let tags = |glob: &str| -> Vec<String> {
        let o = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--filter", &format!("reference={glob}")])
            .output()
            .unwrap();
        text(&o.stdout).lines().map(str::to_string).collect()
    };
    let shared_a = image_id(&format!("{a}/{shared}"));
    assert_eq!(shared_a, image_id(&format!("{b}/{shared}")), "the same image, tagged once per workflow");
    let (own_b, own_c) = (image_id(&format!("{b}/{b}-tool")), image_id(&format!("{c}/{c}-tool")));

    let o = pa.run(&["images", "prune"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains(&format!("workflow `{a}`: removed 2 tags")), "{out}");
    assert!(out.contains(&format!("also tagged {b}/{shared}:")), "{out}");
    assert!(tags(&format!("{a}/*")).is_empty(), "{:?}", tags(&format!("{a}/*")));
    assert_eq!(image_id(&format!("{b}/{shared}")), shared_a, "the shared image stays for b");
    assert_eq!(image_id(&format!("{b}/{b}-tool")), own_b);
    assert_eq!(image_id(&format!("{c}/{c}-tool")), own_c);

    // A run of `a` finds or rebuilds what it needs again.
    let o = pa.run(&["run"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(image_id(&format!("{a}/{shared}")), shared_a, "the shared image is found again, not rebuilt");
}

#[test]
fn a_dockerfile_image_is_kept_when_only_files_it_does_not_read_change() {
    let wf = unique("imgdf").to_lowercase();
    let _cleanup = Images(wf.clone());
    let workflow = format!(
        "version: 1\nname: {wf}\nimages:\n  {wf}-app:\n    dockerfile: Dockerfile\n    context: .\n    args: {{ GREETING: hi }}\nsteps:\n  use: {{ image: {wf}-app, run: 'cat /app/main.txt > o.txt && echo $GREETING >> o.txt', outputs: [o.txt] }}\n"
    );
    let p = Project::new(&workflow);
    p.write("Dockerfile", "FROM local/busybox:1\nARG GREETING\nENV GREETING=$GREETING\nCOPY app/ /app/\n");
    p.write("app/main.txt", "v1\n");
    p.write("README.md", "readme\n");
    let first = events(&p);
    assert_eq!(statuses(&first)["use"], "succeeded");
    let image = image_id(&format!("{wf}/{wf}-app"));
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/use/o.txt")).unwrap(), "v1\nhi\n");

    // The README and the workflow file itself are in the context, but no COPY reads them.
    p.write("README.md", "edited\n");
    p.write("workflow.yml", &format!("{workflow}# a comment\n"));
    let second = events(&p);
    assert_eq!(statuses(&second)["use"], "cached");
    assert_eq!(image_id(&format!("{wf}/{wf}-app")), image);

    // A file it copies: rebuilt, and the step re-runs.
    p.write("app/main.txt", "v2\n");
    let third = events(&p);
    assert_eq!(statuses(&third)["use"], "succeeded");
    assert_ne!(image_id(&format!("{wf}/{wf}-app")), image);
    assert_eq!(std::fs::read_to_string(p.path().join(".engine/out/use/o.txt")).unwrap(), "v2\nhi\n");
}
